"""Every config entry composes and instantiates -- parametrised over the YAML files themselves, so
a new entry (experiment, method, transform, procedure, algo, data, policy, reward, trainer, callbacks,
logger, calibration, paths, sweep) is tested without touching this file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from infalign.apps.config import CONFIG_DIR
from infalign.math.procedures import Procedure
from infalign.math.transforms import Transform, as_transform
from pipeline_helpers import TINY_RUN, TINY_WORLD, compose_config
from sweep_helpers import compose_sweep, expand, sweep_axes

SWEEPS_DIR = Path(CONFIG_DIR).parent / "sweeps"
GROUPS = ("experiment", "method", "transform", "procedure", "algo", "algo_tau", "data", "policy", "reward",
          "trainer", "callbacks", "logger", "calibration", "paths")
# mandatory values (???) an entry leaves to the user
REQUIRED = {("policy", "hf"): ["policy.name_or_path=org/model"], ("reward", "hf"): ["reward.name_or_path=org/rm"]}


def entries(directory: Path) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.yaml"))


ENTRIES = [(group, name) for group in GROUPS for name in entries(Path(CONFIG_DIR) / group)]
# Entries whose instantiation starts a service (W&B's): ~3.5 s each, so `make test` only.
SLOW_ENTRIES = {("logger", "wandb")}


def compose_train(tmp_path: Path, *overrides: str):
    cfg = compose_config("train", *overrides)  # composed once per process (a sweep's first job is its base too)
    cfg.paths.run_dir = str(tmp_path / "run")
    return cfg


def check_validates(cfg, tmp_path):
    """apps/train.validate: procedure, transform and algorithm instantiated, every range checked."""
    from infalign.apps.train import validate
    from infalign.training.algorithms import Algorithm

    procedure, transform, algo = validate(cfg)
    assert isinstance(procedure, Procedure) and isinstance(transform, Transform) and isinstance(algo, Algorithm)
    assert algo.cfg.steps >= 1


def check_transform(cfg, tmp_path):
    transform = as_transform(instantiate(cfg.transform))
    assert isinstance(transform, Transform) and transform.label
    if transform.calibrated:
        u = np.linspace(0.01, 0.99, 9)
        assert np.all(np.isfinite(transform.centered(u, 1 - u)))


def check_procedure(cfg, tmp_path):
    procedure = instantiate(cfg.procedure)
    assert isinstance(procedure, Procedure) and procedure.name == cfg.procedure.name


def check_algo(cfg, tmp_path):
    from infalign.training.algorithms import make_algorithm

    algo = make_algorithm(OmegaConf.to_container(cfg.algo, resolve=True))
    assert algo.name == cfg.algo.name


def check_data(cfg, tmp_path):
    from infalign.data.formats import DATASETS
    from infalign.pipeline.settings import DATA_SOURCES

    assert cfg.data.source in DATA_SOURCES
    if cfg.data.source == "toy":
        from infalign.toy.build import resolve_toy_config

        resolve_toy_config(OmegaConf.to_container(cfg.data.toy, resolve=True))
    else:
        assert cfg.data.source in DATASETS


def check_model(group):
    def check(cfg, tmp_path):
        from infalign.models.builders import resolve_dtype

        node = cfg[group]
        assert node.name_or_path is None or isinstance(node.name_or_path, str)
        if "dtype" in node:
            resolve_dtype(node.dtype, f"{group}.dtype")
    return check


def check_trainer(cfg, tmp_path):
    """The entry instantiates to a Trainer factory whose accelerator and strategy exist; a CPU
    trainer is built for real, for both kinds of stage (pipeline/trainer.py)."""
    import lightning as L
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    from infalign.apps.config import instantiate_callbacks, instantiate_trainer
    from infalign.pipeline.trainer import stage_trainers

    make = instantiate_trainer(cfg.trainer)
    assert issubclass(make.func, L.Trainer) and "progress_bar" not in make.keywords
    assert make.keywords["accelerator"] in {*AcceleratorRegistry.available_accelerators(), "gpu", "auto"}
    assert make.keywords["strategy"] in {*StrategyRegistry.available_strategies(), "auto"}
    if make.keywords["accelerator"] == "cpu" and make.keywords["devices"] == 1:
        trainers = stage_trainers(make, instantiate_callbacks(cfg.callbacks))
        trainers.predict(logger=False, enable_checkpointing=False)
        trainers.fit(max_steps=1)


def check_callbacks(cfg, tmp_path):
    """Every entry instantiates to Lightning callbacks; the checkpoint callback (if any) writes into
    the run dir."""
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    from infalign.apps.config import instantiate_callbacks

    callbacks = instantiate_callbacks(cfg.callbacks)
    assert callbacks and all(isinstance(c, Callback) for c in callbacks)
    for c in callbacks:
        if isinstance(c, ModelCheckpoint):
            assert Path(c.dirpath) == (tmp_path / "run" / "checkpoints").resolve()


def check_logger(cfg, tmp_path):
    """The entry instantiates to a Lightning logger (``none``: no logger) that logs the run's summary
    and finalizes offline, writing under the run dir."""
    from lightning.pytorch.loggers import Logger

    from infalign.apps.config import instantiate_logger
    from infalign.pipeline import loggers

    logger = instantiate_logger(cfg.logger)
    if cfg.logger is None:
        assert logger is None
        return
    assert isinstance(logger, Logger)
    loggers.start(logger, {"seed": 0})
    logger.log_metrics({"eval/reward_model/kl": 0.1})
    loggers.close(logger, 0)
    assert any((tmp_path / "run").iterdir())


def check_algo_tau(cfg, tmp_path):
    """An ``algo_tau`` entry re-applies its algorithm's own KL knob after the experiment: the same value
    as the algorithm's entry (conf/algo/<name>.yaml), under every experiment, and the command line's
    when it sets one."""
    from infalign.apps.config import load_group_entry

    for name in entries(Path(CONFIG_DIR) / "algo_tau"):
        own = load_group_entry("algo", name).beta
        assert OmegaConf.load(Path(CONFIG_DIR) / "algo_tau" / f"{name}.yaml").beta == own
        for experiment in entries(Path(CONFIG_DIR) / "experiment"):
            assert compose_train(tmp_path, f"experiment={experiment}", f"algo={name}").algo.beta == own
        assert compose_train(tmp_path, f"algo={name}", "algo.beta=0.37").algo.beta == 0.37
    check_validates(cfg, tmp_path)


CHECKS = {"experiment": check_validates, "method": check_validates, "calibration": check_validates,
          "paths": check_validates, "algo_tau": check_algo_tau, "transform": check_transform,
          "procedure": check_procedure,
          "algo": check_algo, "data": check_data, "policy": check_model("policy"),
          "reward": check_model("reward"), "trainer": check_trainer, "callbacks": check_callbacks,
          "logger": check_logger}


def test_every_group_has_entries_and_a_check():
    assert set(CHECKS) == set(GROUPS)
    assert all(entries(Path(CONFIG_DIR) / g) for g in GROUPS)


@pytest.mark.parametrize("overrides", [
    TINY_WORLD + TINY_RUN,
    ["method=expn_t8", "algo.beta=0.3", "+algo.extra=1", "++algo.steps=5", "~calibration.K", "seed=2"],
    ["experiment=toy_won", "data.train_prompts=7", "logger=csv", "kl_point=3"],
    ["+sweeps=paper_bon", "kl_point=4", "transform.t=2.5"],
], ids=["tiny", "add-force-delete", "experiment", "sweep"])
def test_compose_config_applies_value_overrides_as_hydra_does(overrides):
    """The tests' two shortcuts compose what Hydra composes. pipeline_helpers.compose_config applies
    value overrides to a copy of the group choices' compose, and conftest makes every compose cheaper
    (hydra_speedups: each config file parsed once per process, no interpolation map where nothing
    interpolates, the ConfigStore not copied): the result equals Hydra's own compose of all the
    overrides, as shipped -- values, order of keys, struct flag, with the ``hydra`` node too -- and a
    value Hydra refuses is refused. (Both lean on Hydra internals: this guards an upgrade.)"""
    from hydra import compose, initialize_config_dir
    from hydra._internal import defaults_list
    from hydra._internal.core_plugins.file_config_source import FileConfigSource
    from hydra._internal.core_plugins.importlib_resources_config_source import ImportlibResourcesConfigSource
    from hydra.core.config_store import ConfigStore
    from hydra.errors import ConfigCompositionException

    from hydra_speedups import hydra_as_shipped

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        with_hydra = compose("train", overrides=overrides, return_hydra_config=True)
        # the composes parse through the memo: conf/'s files and Hydra's own (hydra/conf, a package)
        assert any(key[2].endswith("train.yaml") for key in FileConfigSource.load_config.parsed)
        assert any(key[2].endswith(os.path.join("job_logging", "default.yaml"))
                   for key in ImportlibResourcesConfigSource.load_config.parsed)
        with hydra_as_shipped():
            assert not hasattr(FileConfigSource.load_config, "parsed")
            assert not hasattr(ImportlibResourcesConfigSource.load_config, "parsed")
            assert defaults_list._create_interpolation_map.__module__ == defaults_list.__name__
            assert "__deepcopy__" not in vars(ConfigStore)
            expected = compose("train", overrides=overrides)
            expected_with_hydra = compose("train", overrides=overrides, return_hydra_config=True)
    got = compose_config("train", *overrides)
    got_with_hydra = compose_config("train", *overrides, hydra=True)
    assert OmegaConf.to_yaml(got) == OmegaConf.to_yaml(expected)
    for cfg in (with_hydra, expected_with_hydra, got_with_hydra):  # the run's cwd and the Hydra version aside
        cfg.hydra.runtime.cwd = ""
    assert OmegaConf.to_yaml(with_hydra) == OmegaConf.to_yaml(expected_with_hydra) == OmegaConf.to_yaml(got_with_hydra)
    assert OmegaConf.is_struct(got) and OmegaConf.is_struct(expected) and OmegaConf.is_struct(got_with_hydra)
    assert got.data.toy.reward.keys() == expected.data.toy.reward.keys()
    with pytest.raises(ConfigCompositionException, match="no_such_key"):
        compose_config("train", *overrides, "algo.no_such_key=1")


def test_a_config_file_rewritten_in_place_is_read_again(tmp_path):
    """hydra_speedups keys a file by its bytes (review finding: by modification time and size, a file
    rewritten at the same size within one tick of the clock would have kept its old parse)."""
    from hydra import compose, initialize_config_dir

    for value in (1, 2, 3):
        (tmp_path / "c.yaml").write_text(f"x: {value}\n")  # the same size
        os.utime(tmp_path / "c.yaml", ns=(10**18, 10**18))  # and the same modification time
        with initialize_config_dir(str(tmp_path), version_base="1.3"):
            assert compose("c").x == value


def test_a_defaults_entry_that_interpolates_still_gets_its_choice(tmp_path):
    """hydra_speedups builds the interpolation map only for a defaults list with an entry that
    interpolates (``pair: ${kind}_small``): such an entry still resolves, as in Hydra as shipped."""
    from hydra import compose, initialize_config_dir

    from hydra_speedups import hydra_as_shipped

    for kind in ("cat", "dog"):
        (tmp_path / "kind").mkdir(exist_ok=True)
        (tmp_path / "kind" / f"{kind}.yaml").write_text(f"name: {kind}\n")
        (tmp_path / "pair").mkdir(exist_ok=True)
        (tmp_path / "pair" / f"{kind}_small.yaml").write_text(f"size: {kind}-small\n")
    (tmp_path / "main.yaml").write_text("defaults:\n  - kind: cat\n  - pair: ${kind}_small\n  - _self_\n")
    with initialize_config_dir(str(tmp_path), version_base="1.3"):
        got = [OmegaConf.to_container(compose("main", overrides=o)) for o in ([], ["kind=dog"])]
        with hydra_as_shipped():
            expected = [OmegaConf.to_container(compose("main", overrides=o)) for o in ([], ["kind=dog"])]
    assert got == expected == [{"kind": {"name": "cat"}, "pair": {"size": "cat-small"}},
                               {"kind": {"name": "dog"}, "pair": {"size": "dog-small"}}]


@pytest.mark.parametrize("group, name", [
    pytest.param(g, n, id=f"{g}={n}", marks=[pytest.mark.slow] if (g, n) in SLOW_ENTRIES else [])
    for g, n in ENTRIES])
def test_config_entry_composes_and_instantiates(group, name, tmp_path):
    cfg = compose_train(tmp_path, f"{group}={name}", *REQUIRED.get((group, name), []))
    OmegaConf.to_container(cfg, resolve=False, throw_on_missing=True)  # no ??? left
    CHECKS[group](cfg, tmp_path)


@pytest.mark.parametrize("name", [n for g, n in ENTRIES if g == "transform"])
def test_a_group_entry_loaded_alone_is_the_entry_hydra_composes(name, tmp_path):
    """Review finding: infalign-analyze loads transform entries by name (apps/config.load_group_entry), and a
    plain load left the `defaults:` list of expn_t4, exp_won, ... unapplied (no _target_: a traceback). The
    entry loaded alone equals what Hydra composes under `transform`."""
    from infalign.apps.config import load_group_entry

    composed = compose_train(tmp_path, f"transform={name}").transform
    alone = load_group_entry("transform", name, root=compose_train(tmp_path, f"transform={name}"))
    assert OmegaConf.to_container(alone, resolve=False) == OmegaConf.to_container(composed, resolve=False)


def settings_keys(settings: dict, depth: int, prefix: str = "") -> list[str]:
    """Every dotted key of ``settings`` down to ``depth`` levels: those a resume compares one by one
    (``pipeline/policy_cache._differences``: deeper values are compared whole)."""
    keys = []
    for k, v in settings.items():
        keys.append(f"{prefix}{k}")
        if isinstance(v, dict) and depth > 1:
            keys += settings_keys(v, depth - 1, f"{prefix}{k}.")
    return keys


@pytest.mark.parametrize("group, name", ENTRIES, ids=[f"{g}={n}" for g, n in ENTRIES])
def test_every_setting_of_every_entry_has_a_default(group, name):
    """Review finding: reward.prompt_format, added to conf/reward/hf.yaml, had no default for a checkpoint's
    settings file or a finished run's record written before it, so every HF run written earlier was refused
    (a key only one side holds is compared with its default). Every training and evaluation setting of
    every entry -- experiments' and methods' bundles included -- has one: its value in the config composed
    from the run's config-group choices without value overrides (docs/architecture.md §4). A key an
    experiment or method adds that no group entry holds would have none. An experiment's setting the run's
    algorithm does not read (``algo.beta`` under ``algo=bon_sft``) has ``policy_cache.IGNORED``: any value
    matches (it had none, and a settings file without it was refused)."""

    from infalign.apps.config import settings_defaults
    from infalign.pipeline import policy_cache
    from infalign.training.algorithms import ALGORITHMS

    cfg = compose_config("train", f"{group}={name}", *REQUIRED.get((group, name), []), hydra=True)
    default = settings_defaults(cfg)
    keys = settings_keys({"training": policy_cache.stored_training(cfg, None)}, 3)
    keys += settings_keys(policy_cache.evaluation_settings(cfg), 2)  # a finished run's record, re-run
    ignored = {f"training.algo.{k}" for k in cfg.algo if k not in ALGORITHMS[cfg.algo.name].settings()}
    assert "training.reward.prompt_format" in keys or cfg.reward.get("prompt_format") is None
    assert [k for k in keys if not default(k)[0]] == []
    assert all(default(k)[1] is policy_cache.IGNORED for k in ignored)  # any value: the algorithm reads none


def test_algo_ipo_keeps_its_tau_not_the_experiments_rl_beta(tmp_path):
    """Walkthrough finding: `infalign-train algo=ipo` trained IPO with toy_bon's RL beta (20, for exp(4u)) as
    its tau -- a log-ratio margin of 1/(2 tau) = 0.025 nats, and a policy that did not move (standard win rate
    0.494). IPO keeps conf/algo/ipo.yaml's tau under every experiment; a method entry or the command line
    still sets it, and the RL algorithms keep the experiment's beta."""
    own = OmegaConf.load(Path(CONFIG_DIR) / "algo" / "ipo.yaml").beta
    assert compose_train(tmp_path, "algo=ipo").algo.beta == own == 0.1
    assert compose_train(tmp_path, "experiment=hh_helpful_bon", "algo=ipo").algo.beta == own
    assert compose_train(tmp_path, "method=ipo", "kl_point=0").algo.beta == 1.0  # conf/method/ipo.yaml's grid
    assert compose_train(tmp_path, "algo=ipo", "algo.beta=0.02").algo.beta == 0.02
    for algo in ("rloo", "ppo"):
        assert compose_train(tmp_path, f"algo={algo}").algo.beta == 20.0  # conf/experiment/toy_bon.yaml
        assert compose_train(tmp_path, "experiment=toy_won", f"algo={algo}").algo.beta == 0.2


SWEEPS = entries(SWEEPS_DIR)


@pytest.mark.slow
@pytest.mark.parametrize("name", SWEEPS)
def test_every_sweep_value_composes_and_validates(name, tmp_path):
    """Every value of every swept key passes apps/train.validate (the other keys at their first
    value): a key that selects a config group (``method``, ``transform``, ...) is composed once per
    value; a plain value (``seed``, ``kl_point``, ``algo.beta``) is set on the composed config,
    where the interpolations that read it (a method's KL knob) resolve. A search space (Optuna)
    composes with its sweeper."""
    from infalign.apps.paper import EXPERIMENTS

    cfg = compose_sweep(name)
    # a sweep the paper driver runs as part of another's experiment (Experiment.more) keeps that
    # sweep's name: one W&B group, one experiment
    group = next((e.sweep for e in EXPERIMENTS if name in e.more), name)
    assert cfg.hydra.mode.name == "MULTIRUN" and cfg.sweep_name == group
    axes = sweep_axes(cfg)
    if not axes:
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
        check_validates(compose_train(tmp_path, f"+sweeps={name}"), tmp_path)
        return
    first = {k: v[0] for k, v in axes.items()}
    groups = [k for k in axes if (Path(CONFIG_DIR) / k).is_dir()]
    selections = [first, *({**first, k: v} for k in groups for v in axes[k][1:])]
    for selection in selections:
        check_validates(compose_train(tmp_path, f"+sweeps={name}", *(f"{k}={v}" for k, v in selection.items())),
                        tmp_path)
    base = compose_train(tmp_path, f"+sweeps={name}", *(f"{k}={v}" for k, v in first.items()))
    for key in (k for k in axes if k not in groups):
        for value in axes[key][1:]:
            job = base.copy()
            OmegaConf.update(job, key, yaml.safe_load(value), merge=False)
            check_validates(job, tmp_path)


def test_grid_expansion_is_the_product_of_the_axes():
    """The public-API expansion (tests/sweep_helpers.py) gives every (transform, beta) once."""
    cfg = compose_sweep("bon_transforms")
    jobs = expand(cfg)
    assert len(jobs) == 6 * 3 == len({tuple(j) for j in jobs})
    assert sweep_axes(cfg)["transform"] == ["raw", "identity", "log", "expn_t2", "expn_t4", "expn_t8"]


def test_the_sweeps_search_path_holds_only_sweeps():
    """The plugin puts a dir holding only sweeps/ on the search path -- not the repository root, whose
    every top-level dir (.venv: ~50k files) became a config group that `infalign-train --help` walked
    for minutes -- and +sweeps=<name> still composes."""
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl
    from hydra.core.config_search_path import ConfigSearchPath
    from hydra.core.plugins import Plugins
    from hydra.plugins.search_path_plugin import SearchPathPlugin

    from hydra_plugins.infalign_sweeps import InfalignSweepsSearchPathPlugin

    found = Plugins.instance().discover(SearchPathPlugin)  # (Hydra imports plugins its own way)
    assert "InfalignSweepsSearchPathPlugin" in {c.__name__ for c in found}

    search_path: ConfigSearchPath = ConfigSearchPathImpl()
    search_path.append("main", f"file://{CONFIG_DIR}")
    InfalignSweepsSearchPathPlugin().manipulate_search_path(search_path)
    added = [e.path for e in search_path.get_path() if e.provider == "infalign-sweeps"]
    assert len(added) == 1
    folder = Path(added[0].removeprefix("file://"))
    assert sorted(p.name for p in folder.iterdir()) == ["sweeps"]
    assert (folder / "sweeps").resolve() == (Path(CONFIG_DIR).parent / "sweeps").resolve()


def readme_train_commands() -> list[list[str]]:
    """The ``infalign-train`` lines of the README's command list (the bash block that opens with
    ``infalign-train``), each as its overrides (no placeholders: ``<its overrides>``)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b.split("```", 1)[0] for b in readme.split("```bash")[1:] if b.lstrip().startswith("infalign-train"))
    lines = [ln.split("#", 1)[0].split() for ln in block.splitlines() if ln.startswith("infalign-train")]
    return [ln[1:] for ln in lines if "<" not in " ".join(ln)]


@pytest.mark.parametrize("overrides", readme_train_commands(), ids=" ".join)
def test_the_readmes_quick_start_runs_validate_and_move_the_policy(overrides, tmp_path, caplog):
    """Each quick-start line (a sweep: each of its jobs) composes and validates, and none has a beta
    that leaves the policy where it is (a walkthrough ran `transform=raw` with toy_bon's beta=20)."""
    import itertools
    import logging

    if overrides and overrides[0] == "-m":
        axes = [[f"{o.split('=')[0]}={v}" for v in o.split("=", 1)[1].split(",")] for o in overrides[1:]]
        jobs = [list(job) for job in itertools.product(*axes)]
    else:
        jobs = [overrides]
    assert jobs
    with caplog.at_level(logging.WARNING, logger="infalign.apps.train"):
        for job in jobs:
            check_validates(compose_config("train", *job, f"paths.run_dir={tmp_path}"), tmp_path)
    assert not [r for r in caplog.records if "barely move" in r.getMessage()]
