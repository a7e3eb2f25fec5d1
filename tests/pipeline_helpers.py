"""Tiny settings so a whole infalign-train run takes seconds on 2 CPU cores."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

from hydra import compose, initialize_config_dir

from infalign.apps.config import CONFIG_DIR

TINY_WORLD = [
    "data.toy.reference.size=tiny",
    "data.toy.reference.n_prompts=150",
    "data.toy.reference.per_prompt=2",
    "data.toy.reference.val_prompts=10",
    "data.toy.reference.max_steps=15",
    "data.toy.reference.batch_size=32",
    "data.toy.reward.n_prompts=60",
    "data.toy.reward.val_prompts=10",
    "data.toy.reward.max_steps=8",
    "data.toy.progress_bar=false",
]
TINY_RUN = [
    "data.train_prompts=6",
    "data.eval_prompts=5",
    "calibration.K=4",
    "algo.steps=2",
    "algo.prompts_per_step=2",
    "++algo.group_size=2",  # ++: also for offline algorithms, which ignore it (training/algorithms/base.py)
    "eval.samples=4",
    "eval.ns=[1,2,4]",
    "eval.bootstrap=50",
    "logger=none",
    "trainer.progress_bar=none",
    "save_policy=false",
    "checkpoint_every=1",
    "threads=null",
]


@functools.cache
def _composed(config_name: str, overrides: tuple[str, ...], hydra: bool):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose(config_name, overrides=list(overrides), return_hydra_config=hydra)


def compose_config(config_name: str, *overrides: str, hydra: bool = False):
    """``config_name`` (``train``, ``analyze``, ...) composed with ``overrides`` as Hydra's compose API
    does (``hydra=True``: with the ``hydra`` node), from a per-process cache.

    A compose costs ~0.2 s CPU (Hydra's defaults tree and OmegaConf merges, half of it for the
    ``hydra`` node alone), as much as a tiny run's training: each set of overrides is composed once
    and every caller gets its own deep copy, free to change."""
    return copy.deepcopy(_composed(config_name, tuple(overrides), hydra))


def compose_train(cache_dir: Path, run_dir: Path, *overrides: str, toy: bool = True):
    """The train config as the CLI would compose it, with tiny settings and explicit paths
    (:func:`compose_config`), the paths set on the copy (an override of a path wins)."""
    world = TINY_WORLD if toy else []
    cfg = compose_config("train", *world, *TINY_RUN, *overrides)
    for key, value in (("cache_dir", cache_dir), ("run_dir", run_dir)):
        if not any(o.startswith(f"paths.{key}=") for o in overrides):
            cfg.paths[key] = str(value)
    return cfg


def build_tiny_world(cache_dir: Path) -> Path:
    """Build (or find) the toy world of :data:`TINY_WORLD` in ``cache_dir``; its directory."""
    from omegaconf import OmegaConf

    from infalign.toy import build_toy_world

    toy = compose_train(cache_dir, cache_dir).data.toy
    return build_toy_world(OmegaConf.to_container(toy, resolve=True), cache_dir).root


def seeded_cache(cache_dir: Path, world_dir: Path) -> Path:
    """``cache_dir`` holding a copy of the built toy world ``world_dir`` (and nothing else), so a run
    with :data:`TINY_WORLD` loads it instead of building it again (the build dominates a tiny run)."""
    import shutil

    cache_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(world_dir, cache_dir / world_dir.name)
    return cache_dir
