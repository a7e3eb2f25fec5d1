"""Where the Hydra config tree lives, the resolvers the config uses, instantiating the Lightning
groups (``trainer``, ``callbacks``, ``logger``), and loading single entries of a config group by name."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from infalign.errors import CONFIG_ERROR_EXIT, ConfigError, error_line, require, require_type
from infalign.infra.sweeps import multirun_group
from infalign.toy.defaults import hydra_node as toy_defaults_node


def config_dir() -> str:
    """The ``conf/`` tree: ``$INFALIGN_CONFIG_DIR``, else the source checkout's top-level ``conf``."""
    env = os.environ.get("INFALIGN_CONFIG_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[3] / "conf")
    for c in candidates:
        if (c / "analyze.yaml").exists():
            return str(c)
    raise FileNotFoundError(
        f"infalign config tree not found (looked in {[str(c) for c in candidates]}); "
        "set INFALIGN_CONFIG_DIR to the repository's conf/ directory"
    )


log = logging.getLogger(__name__)
CONFIG_DIR = config_dir()
# conf/data/toy.yaml's `toy` node comes from here: the toy world's defaults are defined once, in code
ConfigStore.instance().store(group="toy", name="defaults", node=toy_defaults_node())


def _bon_beta(n) -> float:
    """beta = 1/(N-1): the log transform's KL-RL solution is then the best-of-N policy."""
    n = int(n)
    if n < 2:
        raise ConfigError("procedure.n", n, "N >= 2 for ${bon_beta:N} (beta = 1/(N-1))")
    return 1.0 / (n - 1)


def _at(values, index) -> Any:
    """``${at:[a,b,c],i}`` = the i-th value: one sweep index selects each method's own knob value."""
    values = list(values)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(values):
        raise ConfigError("kl_point", index, f"an integer in [0, {len(values) - 1}] (index into {values})")
    return values[index]


if not OmegaConf.has_resolver("bon_beta"):
    OmegaConf.register_new_resolver("bon_beta", _bon_beta)
if not OmegaConf.has_resolver("at"):
    OmegaConf.register_new_resolver("at", _at)


def run_suffix() -> str:
    """What makes a run dir unique beside its timestamp (``conf/hydra/default.yaml``).

    Under SLURM: the job id (``<job>_<array task>`` in an array), then for the ranks of one
    multi-task srun step (``SLURM_NTASKS`` > 1 with a step id and a rank: one distributed run) its step
    id -- the ranks share it -- and for any other process (a batch script's own commands, whatever its
    ``SLURM_NTASKS``) 4 random hex digits, so two runs started in the same second inside one
    allocation (``salloc``, background commands in one batch script) never share a dir. Else
    torchrun's rendezvous id, else its master port (ranks of one launch share these; two launches
    cannot share a port), else 6 random hex digits. Registered with ``use_cache``, so it is drawn
    once per config (Hydra copies the cache to every job of a multirun)."""
    import secrets

    slurm = os.environ.get("SLURM_JOB_ID")
    if slurm:
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        base = f"{slurm}_{task}" if task else slurm
        step = os.environ.get("SLURM_STEP_ID")
        if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and step is not None and "SLURM_PROCID" in os.environ:
            return f"{base}_s{step}"  # the ranks of one srun step
        return f"{base}_{secrets.token_hex(2)}"
    elastic = os.environ.get("TORCHELASTIC_RUN_ID")
    if elastic and elastic != "none":
        return elastic[:12]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and os.environ.get("MASTER_PORT"):
        return f"port{os.environ['MASTER_PORT']}"
    return secrets.token_hex(3)


if not OmegaConf.has_resolver("run_suffix"):
    OmegaConf.register_new_resolver("run_suffix", run_suffix, use_cache=True)


def run_group(sweep_name: str | None) -> str:
    """``${run_group:${sweep_name}}``, the group of a run's logger (W&B): ``sweep_name`` if set (the
    sweeps set it), else one group per multirun (``infra/sweeps.multirun_group``: ``multirun-<sweep dir
    name>-<hash of its path>``, the outermost sweep's: runs added in a dir under a sweep,
    ``hydra.sweep.dir=<sweep dir>/more``, join that sweep's group), else ``single``."""
    if sweep_name:
        return str(sweep_name)
    from hydra.core.hydra_config import HydraConfig

    mode = HydraConfig.get().mode if HydraConfig.initialized() else None  # (None under --cfg job)
    if mode is not None and mode.name == "MULTIRUN":
        return multirun_group(Path(HydraConfig.get().sweep.dir))
    return "single"


if not OmegaConf.has_resolver("run_group"):
    OmegaConf.register_new_resolver("run_group", run_group)
if not OmegaConf.has_resolver("not"):  # ${not:${save_optimizer}} (conf/callbacks/default.yaml)
    OmegaConf.register_new_resolver("not", lambda value: not value)


def slurm_tasks(devices) -> int:
    """``${slurm_tasks:${trainer.devices}}`` (conf/hydra/launcher/slurm.yaml): SLURM tasks per node, one
    per device -- a count: ``auto`` cannot size a SLURM request (ConfigError naming the key)."""
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ConfigError("trainer.devices", devices, "an integer >= 1 with hydra/launcher=slurm",
                          "SLURM is asked for that many tasks (and GPUs) per node: e.g. trainer.devices=4")
    return devices


def slurm_gpus(accelerator, devices) -> int:
    """``${slurm_gpus:${trainer.accelerator},${trainer.devices}}``: GPUs per node to ask SLURM for --
    one per task on a GPU trainer (``gpu``, ``cuda``, ``auto``), none for ``cpu`` (trainer=ddp_cpu
    asked for GPUs, landing CPU ranks on a GPU node)."""
    return slurm_tasks(devices) if str(accelerator) in ("gpu", "cuda", "auto") else 0


if not OmegaConf.has_resolver("slurm_tasks"):
    OmegaConf.register_new_resolver("slurm_tasks", slurm_tasks)
if not OmegaConf.has_resolver("slurm_gpus"):
    OmegaConf.register_new_resolver("slurm_gpus", slurm_gpus)


# Config groups whose entries define the types of their keys (below); experiment / method / sweep entries
# only set values (they are checked against these), hydra / logger / callbacks are the libraries' own.
TYPED_GROUPS = ("calibration", "data", "policy", "reward", "trainer")
UNTYPED_KEYS = ("trainer.devices", "data.toy")  # Lightning: an int, "auto" or a list; toy/build.py checks its own
# Keys whose shipped defaults do not show their type or that they may be null (no default sets null, or
# every default is null) -- the code reads null as "no limit" / "none".
EXTRA_TYPES: dict[str, tuple[type, bool]] = {
    "data.max_prompt_tokens": (int, True), "data.max_response_tokens": (int, True), "data.max_examples": (int, True),
    "objective.kl_budget": (float, True), "objective.kl_penalty": (float, False),
}


def _kind(value: Any) -> type | None:
    return type(value) if type(value) in (bool, int, float) else None


@functools.cache
def default_types() -> dict[str, tuple[type, bool]]:
    """``{key: (bool | int | float, may be null)}`` for every key whose default -- in ``conf/train.yaml``
    (its own keys) or any entry of :data:`TYPED_GROUPS` -- is a bool, an int or a float: one kind across
    the entries that set it (an int in one and a float in another: float; another mix, or a string
    anywhere: not typed), null allowed where some entry defaults to null. Interpolations are not
    defaults."""
    root = Path(CONFIG_DIR)
    sources = [("", root / "train.yaml")] + [(g, p) for g in TYPED_GROUPS for p in sorted((root / g).glob("*.yaml"))]
    seen: dict[str, set] = {}
    for prefix, path in sources:
        if _is_global(path):
            continue
        for name, value in _config_nodes(path, prefix, skip=UNTYPED_KEYS):
            if not isinstance(value, dict):
                seen.setdefault(name, set()).add(_kind(value) if value is not None else type(None))
    types = dict(EXTRA_TYPES)
    for name, kinds in seen.items():
        if name in EXTRA_TYPES:
            continue
        real = kinds - {type(None)}
        kind = float if real == {int, float} else next(iter(real)) if len(real) == 1 else None
        if kind is not None:
            types[name] = (kind, type(None) in kinds)
    return types


def check_value_types(cfg: DictConfig) -> None:
    """Every key of :func:`default_types` present in ``cfg`` holds a value of its default's type
    (``errors.require_type``): ``policy_cache=off`` -- a string, truthy -- or ``calibration.K=abc`` is a
    ConfigError naming the key before any compute, instead of silently on or a traceback later."""
    for key, (kind, optional) in default_types().items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT:
            require_type(key, value, kind, optional)


_ABSENT = object()

# Subtrees whose keys are all infalign's own (a key no config file defines is a typo, e.g. `+eval.sample=8`);
# algo.* is checked by training/algorithms (its dataclasses), data.toy.* by toy/build.py, and trainer,
# logger, callbacks, paths and hydra take whatever their libraries accept.
OWN_ROOTS = ("eval", "objective", "calibration", "data", "policy", "reward")


def _is_global(path: Path) -> bool:
    return "@package _global_" in path.read_text()


def _nodes(tree: dict, base: str = "", skip: tuple[str, ...] = ()):
    """``(key path, value)`` of every node (leaves and inner nodes) of the plain tree ``tree``, its keys
    under ``base``; at the top level without ``defaults`` and ``hydra``; a path in ``skip`` is neither
    yielded nor entered."""
    stack = [(base, tree)]
    while stack:
        at, node = stack.pop()
        for key, value in node.items():
            if not at and key in ("defaults", "hydra"):
                continue
            name = f"{at}.{key}" if at else str(key)
            if name in skip:
                continue
            yield name, value
            if isinstance(value, dict):
                stack.append((name, value))


def _config_nodes(path: Path, prefix: str, skip: tuple[str, ...] = ()):
    """:func:`_nodes` of a config file, under ``prefix`` (its group) -- absolute for an
    ``@package _global_`` file."""
    tree = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    return _nodes(tree, "" if _is_global(path) else prefix, skip)


def _files_keys(path: Path, prefix: str) -> set[str]:
    return {name for name, _ in _config_nodes(path, prefix)}


@functools.cache
def key_files() -> dict[str, frozenset[str]]:
    """Every key any file of the config tree defines, with the files that define it: ``conf/train.yaml``,
    every group entry (under its group), every ``@package _global_`` entry (experiments, methods) and the
    sweeps in ``sweeps/``."""
    root = Path(CONFIG_DIR)
    files = [(root / "train.yaml", "")]
    for group in sorted(p for p in root.iterdir() if p.is_dir()):
        files += [(path, ".".join(path.relative_to(root).parts[:-1])) for path in sorted(group.rglob("*.yaml"))]
    sweeps = root.parent / "sweeps"
    files += [(path, "") for path in (sorted(sweeps.glob("*.yaml")) if sweeps.is_dir() else ())]
    found: dict[str, set[str]] = {}
    for path, prefix in files:
        for key in _files_keys(path, prefix):
            found.setdefault(key, set()).add(str(path))
    return {key: frozenset(paths) for key, paths in found.items()}


def known_keys() -> frozenset[str]:
    """Every key any file of the config tree defines (:func:`key_files`)."""
    return frozenset(key_files())


def _misspelt(name: str, files: dict[str, frozenset[str]]) -> str | None:
    """The key ``name`` likely misspells: ``name`` is defined by one file only (not ``conf/train.yaml``), and
    that file lacks a key of the same node whose last part is spelt closely (difflib ratio >= 0.85 on the
    last parts: a shared prefix says nothing) and which ``conf/train.yaml`` or at least two other files
    define -- ``data.val_fracton`` in a new ``conf/data/*.yaml`` beside every other data entry's
    ``data.val_fraction`` (the entry's value was silently unread and the default used). A new key of a
    node (``reward.train.epochs``), or a key only one shipped file defines, is never the one flagged:
    neither is a spelling others share. None when there is no such key."""
    import difflib

    train = str(Path(CONFIG_DIR) / "train.yaml")
    defined = files.get(name, frozenset())
    if len(defined) != 1 or train in defined:
        return None
    (own,) = defined
    parent, _, leaf = name.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in files
                if k != name and k.rpartition(".")[0] == parent and own not in files[k]
                and (train in files[k] or len(files[k]) >= 2)}
    close = difflib.get_close_matches(leaf, sorted(siblings), n=1, cutoff=0.85)
    return siblings[close[0]] if close else None


def check_known_keys(cfg: DictConfig) -> None:
    """A key under :data:`OWN_ROOTS` (or at the top level) that no config file defines is a ConfigError
    with the closest known names: Hydra's hint for a mistyped key is "use +key", and with it
    ``+eval.sample=8`` or ``+sead=3`` were silently ignored. So is a key a single file defines that
    misspells a key of the same node the others define (:func:`_misspelt`: a typo inside a new entry)."""
    import difflib

    known = known_keys()
    tree = OmegaConf.to_container(cfg, resolve=False)  # unresolved: a missing mandatory value is not this check's
    found = [k for k, v in tree.items() if not isinstance(v, dict) and k != "hydra"]
    for root in OWN_ROOTS:
        # a node with a _target_ (a custom scorer, reward=<entry>) holds its target's own arguments: the
        # target's signature checks them (pipeline/custom_reward.check_custom_reward), not the config files
        if isinstance(tree.get(root), dict) and "_target_" not in tree[root]:
            found += [name for name, _ in _nodes(tree[root], root, skip=("data.toy",))]
    files = key_files()
    for name in found:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.75)
            raise ConfigError(name, OmegaConf.select(cfg, name), "a key infalign reads (no config file defines it)",
                              f"did you mean {' or '.join(close)}?" if close else "check the spelling (conf/, sweeps/)")
        if (meant := _misspelt(name, files)) is not None:
            raise ConfigError(name, OmegaConf.select(cfg, name), "a key infalign reads",
                              f"did you mean {meant}? Only {next(iter(files[name]))} defines {name}, and it lacks "
                              f"{meant}, which the others define (infalign would read {meant}'s default)")


def check_analyze_keys(cfg: DictConfig) -> None:
    """infalign-analyze's config holds only keys ``conf/analyze.yaml`` defines (besides its ``procedure``,
    ``paths`` and ``hydra`` groups): a ConfigError names any other, with the closest known names.
    Hydra's hint for a key it does not know is "use +key", and with it ``+transform=expn_t4`` (a train
    group: analyze compares ``transforms=[...]``) or ``+best_t.budget=[2.0]`` ran the default table."""
    import difflib

    known = _files_keys(Path(CONFIG_DIR) / "analyze.yaml", "")
    tree = OmegaConf.to_container(cfg, resolve=False)
    for name, _ in _nodes(tree, skip=("procedure", "paths")):
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
            hint = ("infalign-analyze compares transforms=[identity,log,exp] (their t: t=auto or t=[...]); "
                    "transform= is infalign-train's" if name.split(".")[0] == "transform" else
                    f"did you mean {' or '.join(close)}?" if close else "see conf/analyze.yaml")
            raise ConfigError(name, OmegaConf.select(cfg, name), "a key infalign-analyze reads (conf/analyze.yaml)",
                              hint)


def full_errors() -> bool:
    """Full tracebacks asked for (``HYDRA_FULL_ERROR=1``, or ``-v`` on the command line)."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def config_error_block(exc: ConfigError, program: str = "infalign-train") -> str:
    """The one block a ConfigError prints instead of a traceback (``-v``: infalign-train's flag)."""
    lines = [f"{program}: configuration error", f"  key:     {exc.key}", f"  value:   {exc.value!r}",
             f"  allowed: {exc.allowed}"]
    if exc.hint:
        lines.append(f"  hint:    {exc.hint}")
    lines.append("(full traceback: HYDRA_FULL_ERROR=1" + (" or -v)" if program == "infalign-train" else ")"))
    return "\n".join(lines)


def decreasing_transform(transform, key: str, points: int = 1025, value: object = None) -> str | None:
    """A calibrated transform probed on a grid of ``[0, 1]`` before compute (numpy, else torch, as training
    and the theory call it): a callable that raises there is a ConfigError of ``key`` with its error as the
    hint (it failed mid-run, or inside the theory's worker processes); one that decreases somewhere gives
    the warning to log -- RL on a decreasing ``Phi`` moves the policy toward *lower*-ranked responses, which
    every inference-time win rate (best-of-N, worst-of-N, plain sampling) counts as worse. ``exp(t u)``
    with ``t < 0`` is increasing in its signed form (``sign(t) exp(t u)``), as every built-in transform is;
    a custom ``fn`` is not checked anywhere else. None when nothing is wrong. ``value``: what the error names
    (the entry chosen, :func:`entry_name`; by default the transform's label, which for a custom transform is
    its ``name`` -- possibly another, valid entry's)."""
    import numpy as np

    from infalign.pipeline.policy_cache import phi_called_on_grid

    try:
        with np.errstate(all="ignore"):
            values = phi_called_on_grid(transform, points)
    except Exception as exc:  # noqa: BLE001 - what it raises is the user's to see
        numpy_exc = exc.__context__  # (a numpy array is tried first, then a torch tensor)
        raise ConfigError(key, value or getattr(transform, "label", transform), "a function of u in [0, 1] (numpy "
                          "arrays or torch tensors)", f"it raised {type(numpy_exc).__name__}: {numpy_exc} on a "
                          f"numpy array and {type(exc).__name__}: {exc} on a torch tensor") from exc
    if values is None:
        return None
    grid = np.linspace(0.0, 1.0, points)
    finite = np.isfinite(values)
    if values.shape != grid.shape or not finite.any():
        return None  # (not elementwise, or not finite: check_float32_range's to refuse)
    steps = np.diff(values[finite])
    span = float(np.ptp(values[finite])) or 1.0
    if (steps < -1e-9 * span).any():
        at = grid[finite][1:][int(np.argmin(steps))]
        return (f"{key}: the transform {getattr(transform, 'label', transform)} decreases on [0, 1] (the most at u = "
                f"{at:.3g}: Phi(0) = {values[finite][0]:.4g}, Phi(1) = {values[finite][-1]:.4g}); RL on it moves the "
                "policy toward lower-ranked responses, which every inference-time win rate counts as worse -- "
                "was an increasing function meant?")
    return None


def exit_on_config_error(exc: ConfigError, program: str = "infalign-train") -> None:
    """Print :func:`config_error_block` and exit with code 2 (with full errors asked for, return:
    the caller re-raises the original exception and Hydra prints the whole traceback)."""
    if full_errors():
        return
    import sys

    print(config_error_block(exc, program), file=sys.stderr)
    raise SystemExit(CONFIG_ERROR_EXIT)


def instantiate_checked(node: Any, *args: Any, make: Any = None, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(node, **kwargs)`` -- or ``make(node, *args, **kwargs)``, another Hydra
    instantiation -- that surfaces our ConfigError instead of Hydra's wrapper."""
    try:
        return (make or instantiate)(node, *args, **kwargs)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, ConfigError):
            raise exc.__cause__ from None
        raise


def entry_name(cfg: DictConfig, group: str) -> str:
    """The config-group entry ``cfg`` chose for ``group`` (``pow3typo``), else the group's node as written."""
    choice = (config_choices(cfg) or {}).get(group)
    return choice if choice else str(OmegaConf.to_container(cfg[group], resolve=False))


def instantiate_group(cfg: DictConfig, group: str) -> Any:
    """:func:`instantiate_checked` of ``cfg[group]`` (``transform``, ``procedure``): an error of the entry's own
    -- an argument its class does not take (``nmae: pow3``), a class that does not import -- is a ConfigError
    naming the group and the entry chosen (extensibility walkthrough: Hydra's raw traceback and exit 1, where
    ``infalign-analyze`` gave one block)."""
    return instantiate_named(cfg[group], group, entry_name(cfg, group), f"an entry of conf/{group}/ that instantiates")


def instantiate_named(node: Any, key: str, value: Any, allowed: str, **kwargs: Any) -> Any:
    """:func:`instantiate_checked` of ``node``, whose instantiation error -- an argument its class does not take or
    refuses (``+logger.bogus=1``, ``callbacks.model_checkpoint.every_n_train_steps=-1``), a class that does not
    import -- is a ConfigError of ``key`` (``value``, ``allowed``) with the error's first line as its hint."""
    try:
        return instantiate_checked(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        raise ConfigError(key, value, allowed, f"{type(cause).__name__}: {error_line(str(cause))}") from exc


# L.Trainer arguments every stage passes itself (pipeline/trainer.py: stage_trainers, the fit stages'
# max_steps): set under ``trainer`` they would be overridden without a word; where to set each instead.
STAGE_TRAINER_KEYS = {
    "deterministic": "deterministic (top level)", "log_every_n_steps": "log_every_n_steps (top level)",
    "logger": "logger=<entry> (conf/logger/)", "callbacks": "callbacks.<name> (conf/callbacks/)",
    "enable_progress_bar": "trainer.progress_bar=rich|tqdm|none",
    "enable_checkpointing": "callbacks.model_checkpoint=null (none) or checkpoint_every",
    "max_steps": "algo.steps (each training stage sets its own)",
}


# L.Trainer arguments that stop a stage's loop early: the pools and policies it made would be cached as the
# whole prompt set's and the whole run's
TRUNCATING_TRAINER_KEYS = {
    "limit_predict_batches": "the sampling stages (calibration and evaluation pools, the offline baselines' "
                             "samples) would draw only their first batches of prompts",
    "fast_dev_run": "every stage would run one batch (training one step)",
}


def instantiate_trainer(trainer_cfg: DictConfig, extra_keys: tuple[str, ...] = ("progress_bar",)):
    """``conf/trainer/`` as a trainer factory: ``instantiate(cfg.trainer, _partial_=True)`` without
    infalign's own keys (``extra_keys``: ``progress_bar``, read by ``conf/callbacks/``), i.e.
    ``functools.partial(<_target_>, accelerator=..., devices=..., ...)`` that each stage calls with
    its own arguments (``pipeline/trainer.py``). A key among those arguments
    (:data:`STAGE_TRAINER_KEYS`: ``+trainer.deterministic=true`` ...) is a ConfigError naming where
    it is set: the stage's own value would silently replace it; so is one that stops a stage early
    (:data:`TRUNCATING_TRAINER_KEYS`)."""
    for key, where in STAGE_TRAINER_KEYS.items():
        if key in trainer_cfg:
            raise ConfigError(f"trainer.{key}", OmegaConf.select(trainer_cfg, key),
                              "not set under trainer: every stage passes its own", f"set {where}")
    for key, why in TRUNCATING_TRAINER_KEYS.items():
        value = trainer_cfg.get(key)  # (their "off" values pass: fast_dev_run=false, limit_predict_batches=1.0)
        if value not in (None, False, 0) and not (key == "limit_predict_batches" and value == 1.0
                                                   and isinstance(value, float)):
            raise ConfigError(f"trainer.{key}", OmegaConf.select(trainer_cfg, key), "not set", f"{why}, and cache "
                              "the result as the whole; for a smaller run set data.train_prompts, "
                              "data.eval_prompts, calibration.K, eval.samples or algo.steps")
    node = OmegaConf.to_container(trainer_cfg, resolve=True)
    for key in extra_keys:
        node.pop(key, None)
    return instantiate_checked(node, _partial_=True)


def _require_target(node: Any, key: str) -> None:
    if not (isinstance(node, DictConfig) and "_target_" in node):
        raise ConfigError(key, node if not isinstance(node, DictConfig) else OmegaConf.to_container(node),
                          "a node with a _target_ (a class to instantiate), or null",
                          f"see the entries in conf/{key.split('.')[0]}/")


def instantiate_callbacks(callbacks_cfg: DictConfig | None) -> list:
    """``conf/callbacks/``: every named entry instantiated, in order (plain containers as arguments);
    an entry set to null (switched off) or instantiated to None (``progress_bar`` with
    ``trainer.progress_bar=none``) is left out. An entry without ``_target_`` is a ConfigError."""
    callbacks = []
    for name, node in (callbacks_cfg or {}).items():
        if node is None:
            continue
        _require_target(node, f"callbacks.{name}")
        callback = instantiate_named(node, f"callbacks.{name}", node._target_,
                                     f"settings {node._target_} accepts (conf/callbacks/)", _convert_="all")
        if callback is not None:
            callbacks.append(callback)
    return callbacks


def instantiate_logger(logger_cfg: DictConfig | None):
    """``conf/logger/``: the Lightning logger its ``_target_`` names (plain containers as arguments),
    or None (``logger=none`` sets ``logger: null``)."""
    if logger_cfg is None:
        return None
    _require_target(logger_cfg, "logger")
    return instantiate_named(logger_cfg, "logger", logger_cfg._target_,
                             f"settings {logger_cfg._target_} accepts (conf/logger/)", _convert_="all")


def hydra_refused(exc: BaseException) -> bool:
    """Whether ``exc`` is Hydra's exit after refusing the command line itself -- an unknown config-group
    option (``transform=nosuch``), an unparsable override, a config that does not compose: Hydra prints
    its message and exits 1 (``SystemExit(1)`` raised while handling that error). The apps exit 2 for
    it instead, as for every configuration refused before compute (``errors.CONFIG_ERROR_EXIT``)."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    refusals = (ConfigCompositionException, MissingConfigException, OverrideParseException)
    return isinstance(exc, SystemExit) and exc.code == 1 and isinstance(exc.__context__, refusals)


@contextlib.contextmanager
def hydra_refusals_exit_2() -> Iterator[None]:
    """Around an app's Hydra entry point: a command line Hydra itself refuses (:func:`hydra_refused`)
    exits with ``errors.CONFIG_ERROR_EXIT`` after Hydra's message, as the apps' own config errors do."""
    try:
        yield
    except BaseException as exc:
        if hydra_refused(exc):
            raise SystemExit(CONFIG_ERROR_EXIT) from None
        raise


def task_overrides() -> list[str] | None:
    """This job's overrides (Hydra's task overrides, ``hydra.overrides.task``: the command line's and a
    sweep's parameters); None outside a Hydra app (the compose API, tests)."""
    from hydra.core.hydra_config import HydraConfig

    return [str(o) for o in HydraConfig.get().overrides.task] if HydraConfig.initialized() else None


def override_key(override: str) -> str:
    """The key a command-line override sets: ``+algo.beta=0.3`` -> ``algo.beta`` (``+``/``++``/``~`` stripped)."""
    return override.split("=", 1)[0].lstrip("+~")


def command_line_keys(deletions: bool = True) -> set[str]:
    """The keys this job's overrides set (:func:`task_overrides`, :func:`override_key`); empty outside a
    Hydra app. ``deletions=False``: without the keys deleted (``~data.seed``)."""
    return {override_key(o) for o in task_overrides() or [] if deletions or not o.startswith("~")}


def launcher_jobs() -> int | None:
    """``hydra.launcher.n_jobs`` when this process is a job of a multirun under the joblib launcher
    (``hydra/launcher=local_parallel``), else ``None``: the jobs that share this machine's cores."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode is None or hc.mode.name != "MULTIRUN" or "joblib" not in str(hc.launcher.get("_target_", "")).lower():
        return None
    return hc.launcher.get("n_jobs")


def apply_threads(value, key: str = "threads", torch: bool = True) -> int | None:
    """``threads: auto | null | N`` for an app's process (``infra/threads.py``: auto = usable cores //
    concurrent jobs), after exporting the joblib launcher's ``n_jobs`` as the concurrent jobs;
    ``torch=False``: leave torch alone (not even imported)."""
    from infalign.infra import threads

    threads.declare_jobs(launcher_jobs())
    return threads.set_threads(value, key, torch=torch)


def group_entries(group: str) -> list[str]:
    """Names of the entries of config group ``group`` (its YAML files)."""
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


def load_group_entry(group: str, name: str, root: DictConfig | None = None, **overrides: Any) -> DictConfig:
    """``conf/<group>/<name>.yaml`` (its ``defaults:`` list resolved, :func:`_entry`) merged with
    ``overrides``, resolvable against ``root``."""
    entry = OmegaConf.merge(_entry(group, name), overrides)
    if root is None:
        return entry
    merged = OmegaConf.create(OmegaConf.to_container(root, resolve=False))
    OmegaConf.set_struct(merged, False)
    merged[group] = entry
    return merged[group]


def own_entry(group: str, name: str) -> DictConfig:
    """``conf/<group>/<name>.yaml`` as written: its own keys, its ``defaults:`` list unresolved."""
    own = OmegaConf.load(_entry_path(group, name))
    return own if isinstance(own, DictConfig) else OmegaConf.create({})


def _entry_path(group: str, name: str) -> Path:
    """``conf/<group>/<name>.yaml``; a ConfigError naming ``group`` and its entries when there is none."""
    path = Path(CONFIG_DIR) / group / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(group, name, f"one of {group_entries(group)} (files in conf/{group}/)")
    return path


def _entry(group: str, name: str, seen: tuple[str, ...] = ()) -> DictConfig:
    """``conf/<group>/<name>.yaml`` with its ``defaults:`` list applied as Hydra composes an entry of the
    same group: each listed entry of the group merged in order, ``_self_`` where it stands (at the end
    when not listed). (A plain load left ``expn_t4`` -- ``defaults: [exp_normalized, _self_]`` -- without
    its ``_target_``, which infalign-analyze then failed on.)"""
    path = _entry_path(group, name)
    require(name not in seen, group, name, "an entry whose defaults list does not include itself")
    own = OmegaConf.load(path)
    defaults = own.pop("defaults", None) if isinstance(own, DictConfig) else None
    if not defaults:
        return own
    items = list(defaults) if "_self_" in list(defaults) else [*defaults, "_self_"]
    parts = []
    for item in items:
        require(isinstance(item, str), f"{group}/{name}.yaml defaults", item,
                "names of other entries of the same group and _self_")
        parts.append(own if item == "_self_" else _entry(group, item, (*seen, name)))
    return OmegaConf.merge(*parts)


def instantiate_entry(group: str, name: str, root: DictConfig | None = None, **overrides: Any) -> Any:
    return instantiate(load_group_entry(group, name, root, **overrides))


# Defaults of the settings a resume or a finished run's re-run compares (pipeline/policy_cache): a settings key
# only one side of a comparison holds (a checkpoint's settings file or a finished run's record written before the
# key existed, or a ``+trainer.*`` / ``+callbacks.*`` key given on one side only) stands for its default
# (settings_default): the value the key has in the config composed from the run's own config-group
# choices without value overrides -- the group entries (conf/<group>/<entry>.yaml) and train.yaml, without the
# bundles of values an experiment, a method or a sweep sets (``@package _global_`` entries: they are overrides)
# -- so a key added to an entry with the value that keeps the old behaviour (reward.prompt_format: full in
# conf/reward/hf.yaml) lets every older checkpoint and record resume and re-run as themselves, with no table to
# keep. docs/architecture.md §4.


def config_choices(cfg: DictConfig | None) -> dict[str, str | None] | None:
    """The config-group choices ``cfg`` was composed from (Hydra's ``runtime.choices``: ``{"reward": "hf",
    "experiment": "hh_helpful_bon", ...}``): those of its own ``hydra`` node when it has one (the compose API
    with ``return_hydra_config=True``), else the running Hydra app's (every ``infalign-train`` run); None when
    neither is known (a config composed without its ``hydra`` node, outside an app)."""
    node = OmegaConf.select(cfg, "hydra.runtime.choices") if isinstance(cfg, DictConfig) else None
    if node is None:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return None
        node = HydraConfig.get().runtime.choices
    return {str(k): (None if v is None else str(v)) for k, v in node.items()}


def settings_default(key: str, choices: dict[str, str | None] | None) -> tuple[bool, object]:
    """``(known, default)`` of the dotted settings ``key`` (``training.<config key>...``, the keys of
    ``pipeline/policy_cache.evaluation_settings``): its value in the config composed from the config-group
    ``choices`` (:func:`config_choices`) without value overrides, as the settings hold it
    (``policy_cache.stored_training``, ``policy_cache.evaluation_settings``). With ``choices`` unknown, the
    choice of the key's own group ranges over the group's entries (the other groups at train.yaml's
    choices): the key has a default when every entry that defines it gives it the same value. A key no such
    config holds has the default of what reads it: a ``trainer`` argument Lightning's (the trainer is
    instantiated with the given arguments only), a ``callbacks`` entry none (no such callback), an ``algo``
    setting the run's algorithm does not read ``policy_cache.IGNORED`` (any value matches); any other key
    has none (it is a difference)."""
    path = key.split(".")
    group = path[1] if path[0] == "training" and len(path) > 1 else path[0]
    found = []
    for overrides in _default_compositions(group, choices):
        node = _composed_defaults(overrides)
        for name in path:
            node = node.get(name, _ABSENT) if isinstance(node, dict) else _ABSENT
        if node is not _ABSENT:
            found.append(node)
    if found:
        return (True, found[0]) if all(v == found[0] for v in found) else (False, None)
    if path[:2] == ["training", "trainer"] and len(path) == 3:
        defaults = _trainer_defaults()
        return (True, defaults[path[2]]) if path[2] in defaults else (False, None)
    if path[:2] == ["training", "callbacks"] and len(path) == 3:
        return True, None
    if path[:2] == ["training", "algo"] and len(path) == 3 and _ignored_by_algorithm(path[2], choices):
        from infalign.pipeline.policy_cache import IGNORED

        return True, IGNORED
    return False, None


def _ignored_by_algorithm(name: str, choices: dict[str, str | None] | None) -> bool:
    """Whether ``algo.<name>`` is a setting the run's algorithm (``choices["algo"]``) does not read
    (``Algorithm.settings``; ``make_algorithm`` ignores the others) -- e.g. ``algo.beta`` an experiment
    sets for ``algo=bon_sft``."""
    from infalign.training.algorithms import ALGORITHMS

    algorithm = ALGORITHMS.get((choices or {}).get("algo"))
    return algorithm is not None and name not in algorithm.settings()


_ABSENT = object()


def _default_compositions(group: str, choices: dict[str, str | None] | None) -> list[tuple[str, ...]]:
    """The overrides of ``train`` whose compositions give a key of config node ``group`` its default
    (:func:`settings_default`): the run's group ``choices`` -- every group that fills the config node of its
    name (``reward=hf``, ``toy@data.toy=defaults``) -- with train.yaml's bundles of values removed
    (``~experiment``); without ``choices``, each entry of ``group`` in turn (train.yaml's own choices when
    ``group`` is no config group)."""
    root = _root_choices()
    bundles = tuple(f"~{name}" for name, value in root.items() if value is not None and _is_bundle(name))
    if choices is None:
        return [(*bundles, f"{group}={entry}") for entry in group_entries(group)] if group in root else [bundles]
    picked = [f"{name}={value}" if value is not None else f"~{name}" for name, value in sorted(choices.items())
              if not name.startswith("hydra") and not _is_bundle(name) and (value is not None or name in root)]
    return [(*bundles, *picked)]


def _is_bundle(name: str) -> bool:
    """Whether config group ``name`` (a ``runtime.choices`` key) holds bundles of values for other groups'
    nodes (``@package _global_``: experiment, method, sweeps) rather than the node of its own name."""
    return "@" not in name and not name.startswith("hydra") and name not in _root_nodes()


@functools.cache
def _root_config() -> DictConfig:
    """``conf/train.yaml`` composed without overrides, with the ``hydra`` node (composed either way)."""
    return _compose_train((), hydra=True)


@functools.cache
def _root_choices() -> dict[str, str | None]:
    """train.yaml's own config-group choices (its defaults list)."""
    return config_choices(_root_config()) or {}


@functools.cache
def _root_nodes() -> frozenset[str]:
    """The top-level keys of the composed train config."""
    return frozenset(str(k) for k in _root_config() if k != "hydra")


def _compose_train(overrides: tuple[str, ...], hydra: bool = False) -> DictConfig:
    """``conf/train.yaml`` composed with ``overrides`` (Hydra's compose API: through the running app's search
    path when there is one, else :data:`CONFIG_DIR`)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose("train", overrides=list(overrides), return_hydra_config=hydra)
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra)


@functools.lru_cache(maxsize=64)
def _composed_defaults(overrides: tuple[str, ...]) -> dict:
    """``{"training": _stored_training(...), **evaluation_settings(...)}`` of train composed with ``overrides``
    (:func:`_default_compositions`); ``{}`` when that config does not compose or resolve (an entry that needs
    a value only a bundle or the command line gives): it defines no defaults."""
    from infalign.pipeline.policy_cache import evaluation_settings, stored_training

    try:
        cfg = _compose_train(overrides)
        return {"training": stored_training(cfg, None), **evaluation_settings(cfg)}
    except Exception as exc:  # noqa: BLE001 - a default that cannot be composed is no default
        log.debug("no settings defaults from train composed with %s: %s: %s", list(overrides), type(exc).__name__,
                  exc)
        return {}


@functools.cache
def _trainer_defaults() -> dict:
    """``lightning.Trainer``'s keyword defaults, as the training settings hold them (JSON-normalised, an
    int-or-fraction argument's float tagged: ``policy_cache.comparable_training``)."""
    import inspect

    import lightning as L

    from infalign.pipeline.policy_cache import _as_json, comparable_training

    params = inspect.signature(L.Trainer.__init__).parameters.values()
    defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    return comparable_training({"trainer": _as_json(defaults)})["trainer"]


def settings_defaults(cfg: DictConfig | None) -> Callable[[str], tuple[bool, object]]:
    """``key -> (known, default)``: :func:`settings_default` under the config-group choices of the run's
    config ``cfg`` (:func:`config_choices`) -- the ``default`` of ``pipeline/policy_cache``'s resume and
    finished-run checks."""
    return functools.partial(settings_default, choices=config_choices(cfg))

