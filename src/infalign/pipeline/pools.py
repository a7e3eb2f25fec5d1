"""Sample pools: reference pools are cached by content; policy pools are drawn fresh.

A reference pool -- n samples per prompt from pi_ref, scored by each judge -- is what calibration
needs (sorted reward-model scores of K samples per training prompt) and what evaluation compares
against (M samples per held-out prompt). It depends only on the reference model, the judges, the
prompts, n, the generation settings and the seed, so it is stored under a hash of exactly those
and shared by every run and sweep job (atomic write, checksum and key inside the file, rebuilt if
corrupt or stored under another key).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from infalign.infra import distributed
from infalign.infra.cache import (
    CorruptCacheError,
    cached,
    content_key,
    file_lock,
    load_tensors,
    save_tensors,
)
from infalign.pipeline.trainer import TrainerFactory
from infalign.training.rollout import RolloutModule, gather

log = logging.getLogger(__name__)

POOL_VERSION = "pool-v1"


def draw_pool(model, tokenizer, prompts, n, scorers, gen_cfg, trainer: TrainerFactory, seed, reference=None,
              keep_responses: bool = False) -> dict:
    """Sample n responses per prompt with ``model`` and score them (``trainer(...).predict``, no logger,
    no checkpointing; ``trainer`` is the run's ``predict`` factory, ``pipeline/trainer.py``)."""
    distributed.init_from_env()
    module = RolloutModule(model, tokenizer, scorers, n, int(gen_cfg.max_new_tokens), float(gen_cfg.temperature),
                           seed, reference=reference, keep_responses=keep_responses, prompts=prompts,
                           batch_size=int(gen_cfg.batch_size))
    outputs = trainer(logger=False, enable_checkpointing=False, use_distributed_sampler=False).predict(module)
    return gather(outputs)


def reference_pool(world, prompts: list[str], n: int, judges: dict, gen_cfg, trainer: TrainerFactory, seed: int,
                   cache_dir: str | Path, tag: str) -> tuple[dict[str, torch.Tensor], bool]:
    """``({judge: [P, n] scores}, cache_hit)`` for reference samples on ``prompts``."""
    key = content_key(
        POOL_VERSION, world.reference_fingerprint,
        # the reward model by its content (whatever the judge is called), other judges by name
        {name: (world.reward_fingerprint if scorer is getattr(world, "reward", None) else name)
         for name, scorer in judges.items()},
        prompts, n, int(gen_cfg.max_new_tokens), float(gen_cfg.temperature), int(gen_cfg.batch_size), seed,
    )
    path = Path(cache_dir) / "pools" / f"{tag}-{key}.pt"

    def build() -> dict[str, torch.Tensor]:
        log.info("drawing reference pool %s: %d prompts x %d samples", tag, len(prompts), n)
        pool = draw_pool(world.reference, world.tokenizer, prompts, n, judges, gen_cfg, trainer, seed)
        return pool["scores"]

    distributed.init_from_env()

    def save(value: dict[str, torch.Tensor], p: Path) -> None:
        save_tensors(p, value, {"tag": tag}, key=key)

    if not distributed.is_distributed():
        return cached(path, build, save, lambda p: load_tensors(p, key)[0])
    # All ranks must take part in a build (sampling is sharded), so rank 0 decides hit or miss
    # for everyone; on a miss every rank draws its share, all gather it, rank 0 writes the file.
    hit = distributed.broadcast_object(_valid(path, key) if distributed.rank() == 0 else None)
    if hit:
        return load_tensors(path, key)[0], True
    value = build()
    if distributed.rank() == 0:
        with file_lock(path.with_name(path.name + ".lock")):
            save(value, path)
    distributed.barrier()
    return value, False


def _valid(path: Path, key: str) -> bool:
    try:
        load_tensors(path, key)
        return True
    except (FileNotFoundError, CorruptCacheError):
        return False
