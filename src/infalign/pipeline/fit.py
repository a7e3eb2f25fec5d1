"""Stages 1-2 of ``infalign-train``: the calibration table, then fitting the policy."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from infalign.math.calibration import TIE_WARN, CalibrationTable, tie_share
from infalign.math.transforms import Transform
from infalign.pipeline.baselines import fit_offline, offline_resumable
from infalign.pipeline.pools import reference_pool
from infalign.pipeline.settings import training_seed
from infalign.pipeline.trainer import StageTrainers, TrainerFactory, fit_steps
from infalign.training.algorithms import Algorithm
from infalign.training.ctrl import CTRLModule

log = logging.getLogger(__name__)


def calibration_table(world, cfg: DictConfig, trainer: TrainerFactory,
                      cache_dir: Path) -> tuple[CalibrationTable, bool]:
    """Sorted reward-model scores of K reference samples per training prompt (cached by content),
    per prompt or pooled over prompts (``calibration.scope``, docs/method.md §2); drawn with
    ``trainer`` (a ``predict`` factory, ``pipeline/trainer.py``)."""
    pool, hit = reference_pool(world, world.train_prompts, int(cfg.calibration.K), {"reward": world.reward},
                               cfg.calibration, trainer, int(cfg.seed), cache_dir, tag="calibration")
    ties = tie_share(pool["scores"]["reward"])
    if ties > TIE_WARN:
        log.warning("%.1f%% of within-prompt pairs of the calibration pool's rewards tie (a discrete or rule-based "
                    "reward, or scores rounded by reward.dtype=bfloat16?): C_hat is not uniform under the reference, "
                    "so the calibrated-space theory beside the run -- and the beta a kl_target picks from it -- hold "
                    "only roughly (docs/method.md §2)", 100 * ties)
    table = CalibrationTable.from_rewards(pool["scores"]["reward"], bool(cfg.calibration.smoothing),
                                          str(cfg.calibration.get("scope", "prompt")))
    return table, hit


def fit_policy(world, cfg: DictConfig, algo: Algorithm, transform: Transform, table: CalibrationTable | None,
               trainers: StageTrainers, ckpt_path: str | None) -> dict | None:
    """CTRL with an online algorithm (RLOO / PPO on Phi(C_hat), resumable), or an offline baseline
    (``bon_sft``, ``ipo``; resumable in one process) on reference samples drawn with the ``calibration``
    generation settings; ``trainers.fit`` trains, ``trainers.predict`` draws the baselines' samples.
    Returns an offline baseline's training data (``pipeline/baselines.fit_offline``: pairs, N, picks cut
    at ``max_new_tokens``; ``metrics.json``'s ``offline``), None for an online algorithm."""
    if not algo.online:  # (apps/train.offline_resume_step decided whether ckpt_path is continued)
        return fit_offline(algo, world, cfg.calibration, trainers, training_seed(cfg), ckpt_path,
                           step_indexed=offline_resumable(cfg.get("trainer")))
    module = CTRLModule(world.policy, world.reference, world.tokenizer, world.reward, transform, table,
                        world.train_prompts, algo, seed=training_seed(cfg))
    # the "dataloader" only counts steps: prompts and seeds are functions of the step
    fit_steps(trainers, module, DataLoader(range(algo.cfg.steps), batch_size=None), algo.optimizer_steps,
              algo.cfg.steps, ckpt_path)
    return None


PROBE_PROMPTS = 4  # training prompts whose next-token distribution check_trained_policy checks


def check_trained_policy(world) -> None:
    """Raise ``FloatingPointError`` naming the stage when the trained ``world.policy`` has diverged:
    a non-finite weight, or NaN / +inf next-token logits, or none finite (``-inf`` alone masks a token: a
    legitimate logit), after the first :data:`PROBE_PROMPTS`
    training prompts, read as the sampler reads them (``models/generation.policy_prompt_ids``; one
    forward each, in eval mode; finite but exploded weights give those, and
    sampling from them failed later with torch's "probability tensor contains either inf, nan"). Run
    right after training, before the policy is stored in the policy cache or evaluated, so a diverged
    policy is never cached."""
    from infalign.models.generation import policy_prompt_ids

    policy, tokenizer = world.policy, world.tokenizer
    bad = [name for name, p in policy.named_parameters() if not bool(torch.isfinite(p).all())]
    broken = f"non-finite weights ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})" if bad else ""
    if not broken:
        device = next(policy.parameters()).device
        # as the sampler reads them before its first new token (leading special tokens, no trailing eos; cut
        # from the left keeping BOS)
        probes, _ = policy_prompt_ids(policy, tokenizer, list(world.train_prompts[:PROBE_PROMPTS]), 1)
        was_training = policy.training
        policy.eval()
        try:
            with torch.no_grad():
                for i, ids in enumerate(probes):
                    ids = torch.tensor([ids], dtype=torch.long, device=device)
                    logits = policy(input_ids=ids).logits[:, -1]
                    # -inf masks a token (legitimate); NaN, +inf or no finite logit in a row is divergence
                    if bool(torch.isnan(logits).any() or torch.isposinf(logits).any()
                            or not torch.isfinite(logits).any(-1).all()):
                        broken = f"NaN or infinite next-token logits on training prompt {i}"
                        break
        finally:
            policy.train(was_training)
    if broken:
        raise FloatingPointError(f"stage train: the trained policy has diverged: {broken}; it is not cached "
                                 "nor evaluated (lower algo.lr, or check the rewards)")

