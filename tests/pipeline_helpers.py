"""Tiny settings so a whole infalign-train run takes seconds on 2 CPU cores."""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import open_dict

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


def _composed(config_name: str, overrides: tuple[str, ...], hydra: bool):
    """One compose per (config, overrides): value overrides (``algo.steps=2``; Hydra's "config
    overrides") are applied to a copy of the compose of the group choices alone (``logger=none``,
    ``+sweeps=x``), with Hydra's own parser and the function Hydra applies them with after composing
    the defaults list (``ConfigLoaderImpl._apply_overrides_to_config``): the same config (tested:
    test_config_entries) for ~5 ms instead of a compose's ~0.05 s. A compose with the ``hydra`` node
    (its ``overrides``, ``job.override_dirname``, ``runtime.choices`` record every override), an
    override of the ``hydra`` node, or a sweep composes in full; one without the node is that
    compose's copy without it (as Hydra's ``compose`` makes it). Kept, pickled, by :func:`_pickled`."""
    values = () if hydra else tuple(o for o in overrides if not _selects_group(o))
    if values and all(_value_override(o) for o in values):
        groups = tuple(o for o in overrides if o not in values)
        cfg = _copy(config_name, groups, hydra)
        ConfigLoaderImpl._apply_overrides_to_config([_parsed(o) for o in values], cfg)
        return cfg
    if not hydra:  # Hydra composes the node either way and then deletes it: share that compose
        cfg = _copy(config_name, overrides, True)
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose(config_name, overrides=list(overrides), return_hydra_config=True)


@functools.cache
def _parser() -> OverridesParser:
    return OverridesParser.create()


@functools.cache
def _parsed(override: str) -> Override:
    return _parser().parse_overrides([override])[0]


@functools.cache
def _config_groups() -> frozenset[str]:
    """The top-level config groups Hydra finds (``conf/`` dirs, the search path's, the ConfigStore's)."""
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return frozenset(GlobalHydra.instance().config_loader().list_groups(""))


def _selects_group(override: str) -> bool:
    """Hydra's rule (``defaults_list.Overrides``): an override whose key names a config group is a
    defaults-list override, any other a config (value) override."""
    return _parsed(override).key_or_group.split("/")[0] in _config_groups()


def _value_override(override: str) -> bool:
    parsed = _parsed(override)
    return not parsed.is_sweep_override() and not parsed.key_or_group.startswith("hydra")


def compose_config(config_name: str, *overrides: str, hydra: bool = False):
    """``config_name`` (``train``, ``analyze``, ...) composed with ``overrides`` as Hydra's compose API
    does (``hydra=True``: with the ``hydra`` node), from a per-process cache.

    A compose costs ~0.05 s CPU in a test process (tests/hydra_speedups.py; ~0.1 s as Hydra ships:
    its defaults tree and OmegaConf merges, half of it for the ``hydra`` node alone), as much as a
    tiny run's training step: each set of overrides is composed once and every caller gets its own
    copy, free to change."""
    return _copy(config_name, tuple(overrides), hydra)


@functools.cache
def _pickled(config_name: str, overrides: tuple[str, ...], hydra: bool) -> bytes:
    return pickle.dumps(_composed(config_name, overrides, hydra))


def _copy(config_name: str, overrides: tuple[str, ...], hydra: bool):
    """A fresh copy of :func:`_composed`'s config, unpickled: ~5x faster than ``copy.deepcopy`` for an
    OmegaConf config, and the same config (OmegaConf pickles its nodes' types, metadata and flags; the
    copies' values, order of keys and struct flag are compared with Hydra's compose in
    test_config_entries)."""
    return pickle.loads(_pickled(config_name, overrides, hydra))


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
