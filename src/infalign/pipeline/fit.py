"""Stages 1-2 of ``infalign-train``: the calibration table, then fitting the policy."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from infalign.math.calibration import CalibrationTable
from infalign.math.transforms import Transform
from infalign.pipeline.baselines import fit_offline
from infalign.pipeline.pools import reference_pool
from infalign.training.algorithms import Algorithm
from infalign.training.ctrl import CTRLModule


def calibration_table(world, cfg: DictConfig, trainer_kwargs: dict, cache_dir: Path) -> tuple[CalibrationTable, bool]:
    """Sorted reward-model scores of K reference samples per training prompt (cached by content),
    per prompt or pooled over prompts (``calibration.scope``, docs/method.md §2)."""
    pool, hit = reference_pool(world, world.train_prompts, int(cfg.calibration.K), {"reward": world.reward},
                               cfg.calibration, trainer_kwargs, int(cfg.seed), cache_dir, tag="calibration")
    table = CalibrationTable.from_rewards(pool["scores"]["reward"], bool(cfg.calibration.smoothing),
                                          str(cfg.calibration.get("scope", "prompt")))
    return table, hit


def fit_policy(world, cfg: DictConfig, algo: Algorithm, transform: Transform, table: CalibrationTable | None,
               fit_kwargs: dict, calibration_kwargs: dict, ckpt_path: str | None) -> None:
    """CTRL with an online algorithm (RLOO / PPO on Phi(C_hat), resumable), or an offline baseline
    (``bon_sft``, ``ipo``) on reference samples drawn with the ``calibration`` generation settings."""
    if not algo.online:
        fit_offline(algo, world, cfg.calibration, calibration_kwargs, fit_kwargs, int(cfg.seed))
        return
    module = CTRLModule(world.policy, world.reference, world.tokenizer, world.reward, transform, table,
                        world.train_prompts, algo, seed=int(cfg.seed))
    steps = algo.cfg.steps
    # the "dataloader" only counts steps: prompts and seeds are functions of the step
    L.Trainer(max_steps=steps * algo.optimizer_steps_per_batch, **fit_kwargs).fit(
        module, DataLoader(range(steps), batch_size=None), ckpt_path=ckpt_path)
