"""Stages 1-2 of ``infalign-train``: the calibration table, then fitting the policy."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig
from torch.utils.data import DataLoader

from infalign.math.calibration import CalibrationTable
from infalign.math.transforms import Transform
from infalign.pipeline.baselines import fit_offline, offline_resumable
from infalign.pipeline.pools import reference_pool
from infalign.pipeline.settings import training_seed
from infalign.pipeline.trainer import StageTrainers, TrainerFactory
from infalign.training.algorithms import Algorithm
from infalign.training.ctrl import CTRLModule


def calibration_table(world, cfg: DictConfig, trainer: TrainerFactory,
                      cache_dir: Path) -> tuple[CalibrationTable, bool]:
    """Sorted reward-model scores of K reference samples per training prompt (cached by content),
    per prompt or pooled over prompts (``calibration.scope``, docs/method.md §2); drawn with
    ``trainer`` (a ``predict`` factory, ``pipeline/trainer.py``)."""
    pool, hit = reference_pool(world, world.train_prompts, int(cfg.calibration.K), {"reward": world.reward},
                               cfg.calibration, trainer, int(cfg.seed), cache_dir, tag="calibration")
    table = CalibrationTable.from_rewards(pool["scores"]["reward"], bool(cfg.calibration.smoothing),
                                          str(cfg.calibration.get("scope", "prompt")))
    return table, hit


def fit_policy(world, cfg: DictConfig, algo: Algorithm, transform: Transform, table: CalibrationTable | None,
               trainers: StageTrainers, ckpt_path: str | None) -> None:
    """CTRL with an online algorithm (RLOO / PPO on Phi(C_hat), resumable), or an offline baseline
    (``bon_sft``, ``ipo``; resumable in one process) on reference samples drawn with the ``calibration``
    generation settings; ``trainers.fit`` trains, ``trainers.predict`` draws the baselines' samples."""
    if not algo.online:  # (apps/train.offline_resume_step decided whether ckpt_path is continued)
        fit_offline(algo, world, cfg.calibration, trainers, training_seed(cfg), ckpt_path,
                    step_indexed=offline_resumable(cfg.get("trainer")))
        return
    module = CTRLModule(world.policy, world.reference, world.tokenizer, world.reward, transform, table,
                        world.train_prompts, algo, seed=training_seed(cfg))
    steps = algo.cfg.steps
    # the "dataloader" only counts steps: prompts and seeds are functions of the step
    trainers.fit(max_steps=steps * algo.optimizer_steps_per_batch).fit(
        module, DataLoader(range(steps), batch_size=None), ckpt_path=ckpt_path)
