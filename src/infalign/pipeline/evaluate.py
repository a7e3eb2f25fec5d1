"""Stage 3: held-out evaluation of the trained policy against the reference, with theory beside it.

Pools of M samples per held-out prompt from the policy and the reference (both cached by content,
the policy's when it has a policy-cache key: ``pipeline/pools.py``), judged
by the reward model and (toy world) the gold reward; standard and inference-time win rates for
every N in ``eval.ns`` (exact U-statistics), KL, bootstrap CIs; the per-prompt values behind them
(so runs on the same prompts can be compared pairwise, docs/method.md "matched KL"); how
miscalibrated the reward model is across prompts (from the reference pool); and the
calibrated-space theory's prediction for the same transform at every N: at the training beta (the
ideal tilted policy the run aims at) and at the KL the run actually reached (what an ideal policy
of that family achieves there); and the response lengths and EOS rates of both pools (length is
the first sign of reward hacking).
"""

from __future__ import annotations

import hashlib
import math

from infalign.math import theory
from infalign.math.miscalibration import miscalibration_summary
from infalign.math.pool_stats import pool_columns, summarize_columns
from infalign.math.procedures import STANDARD_WIN_RATE
from infalign.models.generation import response_stats
from infalign.pipeline.pools import POOL_CODE, policy_pool, reference_pool
from infalign.pipeline.run_record import CI, Evaluation, constant_reward
from infalign.pipeline.settings import modified_sampler
from infalign.pipeline.trainer import TrainerFactory

# Modules whose code turns a run's pools into its recorded numbers (win rates, KL, CIs, miscalibration, the
# theory beside them, the record): with POOL_CODE, which draws and scores the pools, what a finished run's
# results depend on beyond its trained policy (pipeline/policy_cache.finished_record_to_keep).
EVALUATION_CODE = ("infalign.pipeline.evaluate", "infalign.math.pool_stats", "infalign.math.estimators",
                   "infalign.math.procedures", "infalign.math.miscalibration", "infalign.math.theory",
                   "infalign.math.transforms", "infalign.pipeline.run_record", "infalign.pipeline.record",
                   "infalign.math.finite_k")  # (the theory beside a run tilts Phi_K: docs/method.md (4.11))


def evaluation_code_digest() -> str:
    """SHA-256 (16 hex digits) over the code of :data:`~infalign.pipeline.pools.POOL_CODE` and
    :data:`EVALUATION_CODE` (``infra/cache.modules_digest``)."""
    from infalign.infra.cache import modules_digest

    return modules_digest((*POOL_CODE, *EVALUATION_CODE), "POOL_CODE / EVALUATION_CODE")


def prompt_ids(prompts: list[str]) -> list[str]:
    """A short content id per prompt (first 12 hex digits of its SHA-1): pairs runs prompt by prompt."""
    return [hashlib.sha1(p.encode()).hexdigest()[:12] for p in prompts]


def evaluate_policy(world, cfg, procedure, transform, beta: float, trainer: TrainerFactory, cache_dir,
                    policy_id: str | None = None) -> Evaluation:
    """The run record's ``eval`` (module docstring; layout in :class:`~infalign.pipeline.run_record.Evaluation`);
    both pools are drawn with ``trainer`` (the run's ``predict`` factory, ``pipeline/trainer.py``);
    ``policy_id``: the policy's cache key (its pool is then cached too), None to draw it fresh."""
    ev = cfg.eval
    sampler = modified_sampler(ev, "eval")  # samples of another distribution than the policy's: no theory
    judges = {"reward_model": world.reward} | ({"gold": world.gold} if world.gold is not None else {})
    ref, ref_hit = reference_pool(world, world.eval_prompts, int(ev.samples), judges, ev, trainer,
                                  int(cfg.seed) + 101, cache_dir, tag="eval")
    ref_scores = ref["scores"]
    pol, pol_hit = policy_pool(world, policy_id, world.eval_prompts, int(ev.samples), judges, ev, trainer,
                               int(cfg.seed) + 202, cache_dir, keep_responses=int(ev.keep_responses) > 0)
    ns = sorted({int(n) for n in ev.ns} | {procedure.n})
    columns = {judge: pool_columns(pol["scores"][judge], ref_scores[judge], procedure.name, ns, pol["log_ratio"])
               for judge in judges}
    report = {judge: summarize_columns(cols, int(ev.bootstrap), seed=int(cfg.seed)) for judge, cols in columns.items()}
    per_prompt = {"prompt_ids": prompt_ids(world.eval_prompts)}
    per_prompt |= {judge: {k: [round(float(v), 10) for v in col] for k, col in cols.items()}
                   for judge, cols in columns.items()}
    miscalibration = miscalibration_summary(ref_scores["reward_model"], ref_scores.get("gold"))
    return Evaluation(
        judges={judge: {k: CI.from_json(c) for k, c in cols.items()} for judge, cols in report.items()},
        ns=ns, procedure=procedure.name, reference_pool_cache_hit=ref_hit, policy_pool_cache_hit=pol_hit,
        per_prompt=per_prompt,
        miscalibration=miscalibration,
        samples=[[p, r[0]] for p, r in zip(world.eval_prompts, pol["responses"])][: int(ev.keep_responses)],
        responses={"policy": response_stats(pol["lengths"], pol["ended"]),
                   "reference": response_stats(ref["lengths"], ref["ended"])},
        sampler=sampler,
        reward_cut=reward_cut(ref, pol),
        theory=None if sampler or constant_reward(miscalibration) else theory_prediction(
            transform, procedure, beta, report["reward_model"]["kl"]["mean"], ns))


def reward_cut(ref: dict, pol: dict, judge: str = "reward_model") -> dict | None:
    """``{"reference": share, "policy": share}`` of each evaluation pool's samples the reward model read cut
    at ``reward.max_length`` (their score is of less than the whole conversation), or None for a judge that
    reads no tokens (a custom scorer)."""
    cuts = {pool: p.get("cut", {}).get(judge) for pool, p in (("reference", ref), ("policy", pol))}
    if any(c is None for c in cuts.values()):
        return None
    return {pool: float(c.double().mean()) for pool, c in cuts.items()}


def theory_prediction(transform, procedure, beta: float, measured_kl: float, ns=None) -> dict | None:
    """Theory at the training beta, and at the measured KL, for the run's N and every N in ``ns``
    (keys :attr:`Procedure.win_rate_key` at each N); None for transforms without a calibrated-space
    theory (``raw``). One tilted policy per beta serves every N: only the served CDF map differs.
    Where the theory's grid does not resolve the tilted policy at the training beta (an extreme
    ``t`` or ``beta``, :func:`theory.resolved`), its figures there are NaN and ``resolved`` False."""
    if not transform.calibrated:
        return None
    procs = list(dict.fromkeys([procedure, *(procedure.at(n) for n in ns or [])]))
    phi = theory.phi_table(transform)
    at_beta = theory.tilt(phi, beta)
    ok = bool(theory.resolved(phi, [beta])[0])
    value = (lambda x: float(x)) if ok else (lambda x: math.nan)
    pred = {"beta": beta, "resolved": ok, "kl": value(at_beta.kl[0]),
            STANDARD_WIN_RATE: value(at_beta.standard_win_rate()[0])}
    pred |= {p.win_rate_key: value(at_beta.win_rate(p)[0]) for p in procs}
    if measured_kl > 0 and math.isfinite(measured_kl):
        f = theory.frontier(transform, procedure, [measured_kl])  # its beta does not depend on N
        reached = theory.tilt(phi, f.beta[0]) if f.reachable[0] else None
        pred["at_measured_kl"] = {
            "kl": measured_kl, "reachable": bool(f.valid[0]), STANDARD_WIN_RATE: float(f.standard_win_rate[0]),
            **{p.win_rate_key: float(reached.win_rate(p)[0]) if reached is not None else math.nan
               for p in procs},
        }
    return pred
