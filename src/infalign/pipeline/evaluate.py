"""Stage 3: held-out evaluation of the trained policy against the reference, with theory beside it.

Pools of M samples per held-out prompt from the policy (fresh) and the reference (cached), judged
by the reward model and (toy world) the gold reward; standard and inference-time win rates for
every N in ``eval.ns`` (exact U-statistics), KL, bootstrap CIs; and the calibrated-space theory's
prediction for the same transform: at the training beta (the ideal tilted policy the run aims
at) and at the KL the run actually reached (what an ideal policy of that family achieves there).
"""

from __future__ import annotations

import math

from infalign import theory
from infalign.evaluation import pool_report
from infalign.pipeline.pools import draw_pool, reference_pool


def evaluate_policy(world, cfg, procedure, transform, beta: float, trainer_kwargs, cache_dir) -> dict:
    ev = cfg.eval
    judges = {"reward_model": world.reward} | ({"gold": world.gold} if world.gold is not None else {})
    ref_scores, ref_hit = reference_pool(world, world.eval_prompts, int(ev.samples), judges, ev, trainer_kwargs,
                                         int(cfg.seed) + 101, cache_dir, tag="eval")
    pol = draw_pool(world.policy, world.tokenizer, world.eval_prompts, int(ev.samples), judges, ev, trainer_kwargs,
                    int(cfg.seed) + 202, reference=world.reference, keep_responses=int(ev.keep_responses) > 0)
    ns = sorted({int(n) for n in ev.ns} | {procedure.n})
    report = {
        judge: pool_report(pol["scores"][judge], ref_scores[judge], procedure.name, ns, pol["log_ratio"],
                           int(ev.bootstrap), seed=int(cfg.seed))
        for judge in judges
    }
    out = {"judges": report, "ns": ns, "reference_pool_cache_hit": ref_hit,
           "samples": [[p, r[0]] for p, r in zip(world.eval_prompts, pol["responses"])][: int(ev.keep_responses)],
           "theory": theory_prediction(transform, procedure, beta, report["reward_model"]["kl"]["mean"])}
    return out


def theory_prediction(transform, procedure, beta: float, measured_kl: float) -> dict | None:
    """Theory at the training beta, and at the measured KL (None for the uncalibrated ``raw``)."""
    if not transform.calibrated:
        return None
    at_beta = theory.evaluate(transform, beta, procedure)[0]
    pred = {"beta": beta, "kl": at_beta.kl, "standard_win_rate": at_beta.standard_win_rate,
            f"{procedure.label}_win_rate": at_beta.win_rate}
    if measured_kl > 0 and math.isfinite(measured_kl):
        f = theory.frontier(transform, procedure, [measured_kl])
        pred["at_measured_kl"] = {"kl": measured_kl, "reachable": bool(f.reachable[0]),
                                  "standard_win_rate": float(f.standard_win_rate[0]),
                                  f"{procedure.label}_win_rate": float(f.win_rate[0])}
    return pred
