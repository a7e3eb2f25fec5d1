"""Trained policies cached by content: no policy is trained twice (docs/method.md §8).

A sweep often asks for the same trained policy more than once: the same (method, KL knob, seed)
in two experiments that differ only in how they evaluate (N, eval pool size, procedure). The
trained weights depend only on

* the world (reference and reward-model fingerprints -- a local dir's files, a hub model's commit, a
  Bradley-Terry model's files -- and the training prompts),
* everything in the config that training reads (:func:`training_settings`): ``algo`` with the
  effective beta, ``transform``, ``calibration``, ``seed``, ``deterministic``, ``replica`` (when > 0);
  ``policy`` and ``reward`` without their ``revision`` and without :data:`KEYED_BY_THE_WORLD` -- where
  the models and the data are read from and where a reward model trains, which lead to the fingerprints and
  prompts above, so a model dir or data file moved or copied elsewhere is the same policy; ``data`` without
  :data:`NOT_TRAINING_DATA_KEYS` and the toy build's runtime options; of ``trainer`` every key but
  :data:`NOT_TRAINING_TRAINER_KEYS` (an int-or-fraction argument's float tagged as a fraction,
  :func:`comparable_training`); of ``callbacks`` every entry but :data:`NOT_TRAINING_CALLBACKS` --
  resolved, numbers by value (``infra/cache.content_key``), so an interpolation such as
  ``${procedure.n}`` counts exactly when a method uses it -- less what the run's algorithm never reads
  (:func:`without_unread`: another algorithm's ``algo`` settings, and an offline baseline's transform and
  reward calibration), so a setting it ignores costs no retraining,
* the training code (a digest of the syntax of the modules listed in :data:`TRAINING_CODE`),
* the transform's values ``Phi(u)`` on a fixed grid of ``u`` (:func:`transform_fingerprint`; not for an
  offline baseline): a tabulated ``Phi`` (the optimal transform, which the theory engine computes when the config is
  instantiated) or a user's callable is keyed by what it is, not by the code that made it,

and are stored under ``cache_dir/policies/<hash of all that>.pt`` (atomic, checksummed, one
builder per key). Evaluation, logging, paths and the procedure's own settings are not part of the
key. Runs that resume a checkpoint, and multi-process runs, bypass the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from infalign.infra.cache import cached, content_key, load_tensors, modules_digest, save_tensors
from infalign.infra.cache import code_fingerprint as _code_fingerprint  # noqa: F401 (tests)

log = logging.getLogger(__name__)

POLICY_CACHE_VERSION = "policy-v1"
# Modules whose code can change a trained policy. Their digest is taken over the parsed syntax tree
# without docstrings, so comment and docstring edits (and line moves) keep cached policies valid.
TRAINING_CODE = (
    "infalign.training.ctrl", "infalign.training.rollout", "infalign.training.pretrain", "infalign.training.ipo",
    "infalign.training.algorithms.base", "infalign.training.step_batches",
    "infalign.math.rl_objectives", "infalign.models.generation", "infalign.models.decode_step",
    "infalign.math.calibration", "infalign.math.procedures",
    "infalign.math.transforms", "infalign.pipeline.fit", "infalign.pipeline.baselines",
    "infalign.pipeline.kl_target", "infalign.models.reward", "infalign.models.builders",
    "infalign.data.batches", "infalign.pipeline.pools", "infalign.pipeline.settings",
    # the reward model reads the last user turn of an HH prompt (reward.prompt_format), split here
    "infalign.data.formats",
)
# Top-level config keys that never change the trained weights (``trainer`` and ``callbacks`` are
# keyed by the parts that can: all but NOT_TRAINING_TRAINER_KEYS, and the callbacks not in
# NOT_TRAINING_CALLBACKS).
NOT_TRAINING = frozenset({
    "eval", "logger", "paths", "procedure", "objective", "sweep_name", "ckpt_path", "save_policy",
    "checkpoint_every", "log_every_n_steps", "threads", "continue_on_failure", "kl_grid", "kl_point",
    "policy_cache", "hydra", "run_name", "tags", "save_optimizer", "trainer", "callbacks",
})
# The L.Trainer settings that never change a trained policy (display, logging, validation,
# debugging). Every other trainer key enters the key: accelerator, devices, num_nodes, strategy,
# precision, and whatever a user adds (gradient_clip_val, accumulate_grad_batches, max_epochs,
# limit_train_batches change the offline baselines, which Lightning optimises automatically) -- an
# unknown key costs a retraining, never a wrong cache hit.
NOT_TRAINING_TRAINER_KEYS = frozenset({
    "_target_", "progress_bar", "enable_model_summary", "enable_progress_bar", "enable_checkpointing", "logger",
    "log_every_n_steps", "default_root_dir", "profiler", "num_sanity_val_steps", "val_check_interval",
    "check_val_every_n_epoch", "limit_val_batches", "limit_test_batches", "limit_predict_batches", "benchmark",
    "detect_anomaly", "barebones", "inference_mode", "callbacks",
})
# conf/callbacks/ entries that never change the weights; any other callback enters the key.
NOT_TRAINING_CALLBACKS = frozenset({"model_checkpoint", "progress_bar"})
# ``data`` keys that never change the weights: the held-out evaluation prompts (another split,
# scored after training), and the toy build's runtime options (toy/defaults.RUNTIME_DEFAULTS:
# progress bar, threads), which the toy world's own key leaves out too.
NOT_TRAINING_DATA_KEYS = frozenset({"eval_prompts"})


def code_digest() -> str:
    """SHA-256 (16 hex digits) over the training modules' code (:data:`TRAINING_CODE`, and the
    module of every registered algorithm; :func:`infalign.infra.cache.modules_digest`).

    A module that cannot be found is an error (a renamed module must be renamed here too).
    """
    from infalign.training.algorithms import ALGORITHMS

    return modules_digest(TRAINING_CODE + tuple(sorted({cls.__module__ for cls in ALGORITHMS.values()})),
                          "TRAINING_CODE")


def _plain(value):
    """A config node as plain, resolved containers (other values as they are)."""
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


def training_settings(cfg: DictConfig, beta: float | None) -> dict:
    """The part of the config a trained policy depends on (module docstring), resolved: every
    top-level key but :data:`NOT_TRAINING`, ``trainer`` without :data:`NOT_TRAINING_TRAINER_KEYS`, the
    callbacks not in :data:`NOT_TRAINING_CALLBACKS` (only when there are some), ``data`` without
    :data:`NOT_TRAINING_DATA_KEYS` and the toy build's runtime options, ``replica`` only
    when > 0 (so replica 0, every run's default, keeps the keys of policies cached before the key
    existed), ``policy.revision`` / ``reward.revision`` left out (the commit they resolve to is in the
    world's fingerprints: pinning the commit ``main`` pointed to gives the same key), a float given to one
    of :data:`INT_OR_FRACTION_TRAINER_KEYS` tagged as a fraction and ``trainer.accelerator`` as the device
    kind (:func:`comparable_training`), and ``algo.beta`` set to the effective ``beta`` (``algo.kl_target``
    may have set it)."""
    training = {k: _plain(cfg[k]) for k in cfg if k not in NOT_TRAINING and not (k == "replica" and not cfg[k])}
    if cfg.get("trainer") is not None:
        training["trainer"] = {k: _plain(cfg.trainer[k]) for k in cfg.trainer if k not in NOT_TRAINING_TRAINER_KEYS}
    callbacks = {name: _plain(node) for name, node in (cfg.get("callbacks") or {}).items()
                 if name not in NOT_TRAINING_CALLBACKS and node is not None}
    if callbacks:
        training["callbacks"] = callbacks
    for group in ("policy", "reward"):
        if isinstance(training.get(group), dict):
            training[group].pop("revision", None)
    comparable_training(training)
    if beta is not None:
        training["algo"]["beta"] = float(beta)
    return training


def comparable_training(training: dict) -> dict:
    """``training`` (training settings) in place, as the policy key and every comparison read them: without
    :data:`NOT_TRAINING_DATA_KEYS` in ``data`` nor the toy build's runtime options
    (toy/defaults.RUNTIME_DEFAULTS) in ``data.toy``, and with a float given to one of
    :data:`INT_OR_FRACTION_TRAINER_KEYS` tagged ``{"fraction": x}`` -- numbers are otherwise compared and
    keyed by value (``1 == 1.0``; ``infra/cache.content_key``), while Lightning reads ``1`` as one batch and
    ``1.0`` as the whole epoch; ``trainer.accelerator`` as the device kind it runs on
    (``infra/distributed.accelerator_kind``: ``auto`` is ``cpu`` on a CPU node and ``cuda`` where a GPU is
    visible -- another device draws other rollouts, so a policy trained on a GPU under ``auto`` is not a
    CPU node's; ``gpu`` is ``cuda``; a trainer without the key runs Lightning's default, ``auto``). Also
    applied to a settings file as read (one written before these rules: its checkpoint still resumes, and
    ``limit_train_batches=1`` there is not ``1.0`` here)."""
    trainer = training.get("trainer") if isinstance(training, dict) else None
    if isinstance(trainer, dict):
        for name in INT_OR_FRACTION_TRAINER_KEYS & set(trainer):
            if isinstance(trainer[name], float):
                trainer[name] = {"fraction": trainer[name]}
        precision = trainer.get("precision")
        if isinstance(precision, int | str) and not isinstance(precision, bool):  # Lightning's aliases: one key
            trainer["precision"] = PRECISION_ALIASES.get(str(precision), precision)
        accelerator = trainer.get("accelerator", "auto")  # (absent: Lightning's default, auto)
        if isinstance(accelerator, str):  # the device kind it runs on: auto resolved here
            from infalign.infra.distributed import accelerator_kind  # (torch: not at the config check's import)

            trainer["accelerator"] = accelerator_kind(accelerator)
    data = training.get("data") if isinstance(training, dict) else None
    if isinstance(data, dict):
        from infalign.toy.defaults import RUNTIME_DEFAULTS

        for name in NOT_TRAINING_DATA_KEYS:
            data.pop(name, None)
        if isinstance(data.get("toy"), dict):
            for name in RUNTIME_DEFAULTS:
                data["toy"].pop(name, None)
    return training


# Lightning's short names of its precisions (trainer.precision=32 trains as 32-true): keyed as the full name
PRECISION_ALIASES = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}

RESUME_FILE = "run_settings.json"  # beside a run's checkpoints: what they were trained with


def resume_settings(cfg: DictConfig, world, beta: float | None) -> dict:
    """What a run's checkpoints depend on: the world's models (fingerprints), its training prompts
    (:func:`training_prompts_id`) and
    :func:`training_settings` (effective ``beta``), without ``algo.steps`` -- a resumed run may be
    asked to train longer -- unless the algorithm's schedule depends on it (``resume_may_extend``
    false: BoN-SFT's learning rate decays over ``algo.steps``); and the code that trains
    (:data:`CODE_RECORD`: the training code's digest, :func:`code_digest`, and the versions of
    :data:`LIBRARIES`). JSON-normalised as the settings file stores it (:func:`_as_json`), as
    :func:`check_resume` compares it."""
    return _as_json({"world": [world.reference_fingerprint, world.reward_fingerprint],
                     "prompts": training_prompts_id(world),
                     "hub": world.stats.get("hub_commits", {}),
                     "training": _resume_training(cfg, beta),
                     "code": code_digest(), "versions": library_versions()})


def training_prompts_id(world) -> str:
    """Content key of the training prompts as the policy and the reward read them (``World.reward_reads``): a
    checkpoint trained on others (a data file edited at the same path) is not continued (review finding: a
    finished run re-run on edited data resumed its final checkpoint, trained nothing, and recorded the old
    policy under the new data)."""
    prompts = list(world.train_prompts)
    reads = getattr(world, "reward_reads", lambda prompts: None)(prompts)
    return content_key(prompts, reads)


# Libraries whose version can change what a resumed training computes (kernels, optimizer and loop code).
LIBRARIES = ("torch", "transformers", "lightning")
# Settings-file keys that say which code trained the checkpoint: a resume under other code is warned about
# and recorded (metrics.json ``resumed.changed``), not refused (docs/architecture.md §4).
CODE_RECORD = ("code", "versions")
# Settings-file keys a resume does not compare: the code (above), and ``hub`` -- the hub commits the run read,
# which the ``world`` fingerprints already hold (pipeline/world._fingerprint); kept to name the commit to pin.
NOT_COMPARED = (*CODE_RECORD, "hub")
# The transform's values Phi(u) (:func:`transform_values`) -- a custom callable's code is in no config and
# no digest -- beside an online run's settings and in its record (``method_info``): a resume and a kept
# finished run must have been trained with them (:func:`same_transform_values`). A settings file or record
# written before they were recorded is not compared.
TRANSFORM_VALUES = "transform_values"
TRANSFORM_VALUE_POINTS = 257  # u = 0, 1/256, ..., 1 (a custom transform's kink moved by 0.01 falls between none)


def library_versions() -> dict[str, str | None]:
    """The installed version of each of :data:`LIBRARIES` (None: not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {name: installed(name) for name in LIBRARIES}


def code_changes(stored: dict, settings: dict) -> dict:
    """``{what: {"checkpoint": stored value, "run": this run's}}`` for the training code's digest
    (``code``) and each library of :data:`LIBRARIES` whose value differs between a checkpoint's settings
    file and this run's settings; a file written before they were recorded gives ``checkpoint: None``."""
    versions = stored.get("versions") if isinstance(stored.get("versions"), dict) else {}
    pairs = [("code", stored.get("code"), settings.get("code"))]
    pairs += [(name, versions.get(name), (settings.get("versions") or {}).get(name)) for name in LIBRARIES]
    return {name: {"checkpoint": old, "run": new} for name, old, new in pairs if old != new}


def stored_training(cfg: DictConfig, beta: float | None) -> dict:
    """:func:`training_settings` as a settings file stores them, JSON-normalised, with ``replica`` and
    ``callbacks`` always written (0 and ``{}`` when unset, where the policy key leaves them out)."""
    training = training_settings(cfg, beta)
    training["replica"] = int(cfg.get("replica") or 0)
    training.setdefault("callbacks", {})
    return _as_json(training)


def _resume_training(cfg: DictConfig, beta: float | None) -> dict:
    """:func:`stored_training` without ``algo.steps`` when the algorithm may train longer on resume."""
    from infalign.training.algorithms import ALGORITHMS

    training = stored_training(cfg, beta)
    algo = training.get("algo")
    if isinstance(algo, dict) and getattr(ALGORITHMS.get(algo.get("name")), "resume_may_extend", True):
        algo.pop("steps", None)
    return training


def _as_json(settings: dict) -> dict:
    """``settings`` as a settings file (``infra/cache.atomic_write_json``) stores them: tuples as lists,
    NaN and infinities as None (``json_safe``: e.g. ``trainer.gradient_clip_val=inf``, which must
    match itself on resume), keys as strings, other values as strings."""
    from infalign.infra.cache import json_safe

    return json.loads(json.dumps(json_safe(settings, default=str)))


Default = Callable[[str], tuple[bool, object]]  # dotted settings key -> (known, its default)
IGNORED = object()  # a Default's value for a key the run never reads (an algorithm's unused setting): any value


def no_defaults(key: str) -> tuple[bool, object]:
    """The :data:`Default` under which a key only one side holds is always a difference (none is known)."""
    return False, None


def _differences(a, b, default: Default, prefix: str = "", depth: int = 3) -> list[str]:
    """Dotted keys whose values differ between the stored settings ``a`` and this run's ``b``. A key only
    one side holds is compared with its ``default`` (the run's: ``apps/config.settings_defaults``; it
    differs when there is none): a settings file that predates ``reward.prompt_format`` matches ``full``,
    the value conf/reward/hf.yaml gives it, and one that leaves out ``replica`` 0 matches replica 0, not
    replica 1. A key whose default is :data:`IGNORED` (``algo.beta`` held by one side of an ``algo=bon_sft``
    run, which reads none) matches whatever the other side holds."""
    if isinstance(a, dict) and isinstance(b, dict) and depth > 0:
        out = []
        for k in sorted(set(a) | set(b), key=str):
            key = f"{prefix}{k}"
            if (k in a) != (k in b):
                known, value = default(key)
                if not known:
                    out.append(key)
                    continue
                if value is IGNORED:  # read by nothing the run does: no value of it can differ
                    continue
                out += _differences(a.get(k, value), b.get(k, value), default, key + ".", depth - 1)
                continue
            out += _differences(a[k], b[k], default, key + ".", depth - 1)
        return out
    return [] if a == b else [prefix.rstrip(".")]


def check_resume(ckpt_dir: Path, settings: dict, resuming: bool, ckpt_path: str, default: Default = no_defaults,
                 ) -> dict:
    """Starting fresh: write ``settings`` to ``ckpt_dir/RESUME_FILE``. Resuming (``ckpt_path=last`` /
    ``last_or_new`` found a checkpoint): the checkpoint must have been trained with the same settings,
    else a ``ConfigError`` naming ``ckpt_path`` and the settings that differ -- a resume with missing or
    other overrides would continue another configuration's policy and record it as this one. A key only
    one side holds stands for its ``default`` (the run's: ``apps/config.settings_defaults``; with
    :func:`no_defaults` it is a difference). ``hub`` is not compared (the commits it lists are in the ``world``
    fingerprints; it names the revision to pin when they moved). A checkpoint without the file (written
    before it existed) is resumed with a warning.

    The code that trained the checkpoint (:data:`CODE_RECORD`) is not refused when it differs -- the
    digest covers every syntax change of the training modules, behaviour-neutral ones included, and a
    refusal would strand the run -- but warned about and returned (:func:`code_changes`; ``{}`` when the
    same, or when starting fresh), for the run's record to say that its policy was trained by two
    versions of the code."""
    from infalign.infra.cache import atomic_write_json

    path = Path(ckpt_dir) / RESUME_FILE
    if not resuming:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, settings)
        return {}
    if not path.is_file():
        log.warning("%s not found: cannot check that the checkpoint was trained with this run's settings", path)
        return {}
    stored = _read_settings(path, ckpt_path)
    comparable_training(stored.get("training"))
    # (a settings file from before the prompts were kept: not compared, as one without a transform's values)
    skip = (*NOT_COMPARED, TRANSFORM_VALUES) + (() if "prompts" in stored else ("prompts",))
    compared = [{k: v for k, v in side.items() if k not in skip} for side in (stored, settings)]
    differ = _differences(*compared, default)
    if differ == ["prompts"]:  # (not the generic advice: the overrides are not what changed)
        from infalign.errors import ConfigError

        raise ConfigError("ckpt_path", ckpt_path, "a checkpoint trained on this run's training prompts",
                          f"{path} records other training prompts (as the policy and the reward read them: a data "
                          "file changed at the same path, or other data): resuming would train one policy on two "
                          "prompt sets. Train on these prompts in a new run dir (without ckpt_path), or delete this "
                          "dir's checkpoints; the checkpoint is left as it is")
    _refuse_if_different(path, differ, ckpt_path, _moved_hub_models(stored.get("hub"), settings.get("hub")) + (
        "; 'prompts': the training prompts differ too (a data file changed?)" if "prompts" in differ else ""))
    if TRANSFORM_VALUES in stored and not same_transform_values(stored[TRANSFORM_VALUES],
                                                                settings.get(TRANSFORM_VALUES)):
        from infalign.errors import ConfigError

        raise ConfigError("ckpt_path", ckpt_path, "a checkpoint trained on this run's transform",
                          f"{path} records other values of the transform Phi(u) (a custom transform's code changed, "
                          "or its parameters): resuming would train the policy on two transforms; delete the "
                          "checkpoints, or start a new run dir")
    changed = code_changes(stored, settings)
    if any(v["checkpoint"] is not None for v in changed.values()):
        log.warning("RESUMING UNDER OTHER CODE: the checkpoint in %s was trained by other code than this run's (%s). "
                    "Training continues (its settings match), so the policy is trained by both; metrics.json "
                    "records it under resumed.changed. Delete the checkpoints to train with this code alone.",
                    path.parent, "; ".join(f"{name} {v['checkpoint']} -> {v['run']}" for name, v in changed.items()))
    elif changed:
        log.warning("%s does not record the code that trained the checkpoint (an older infalign wrote it): "
                    "resuming without knowing whether the training code or %s changed since (recorded in "
                    "metrics.json under resumed.changed)", path, ", ".join(LIBRARIES))
    return changed


def _moved_hub_models(stored, current) -> str:
    """A hint when a hub model's commit differs between the checkpoint's run and this one (``hub``:
    ``{group: "<name>@<commit>"}``, ``world.stats["hub_commits"]``): its ``main`` moved since the run
    started, and pinning the stored commit resumes it."""
    if not (isinstance(stored, dict) and isinstance(current, dict)):
        return ""
    pins = [f"{group}.revision={str(old).rsplit('@', 1)[1]}" for group, old in sorted(stored.items())
            if "@" in str(old) and current.get(group) != old]
    return f"; the hub model moved since the run started: resume with {' '.join(pins)}" if pins else ""


def check_resume_early(ckpt_dir: Path, cfg: DictConfig, beta: float | None, ckpt_path: str,
                       default: Default = no_defaults) -> None:
    """Before any compute (and before the run's logger starts, so a refused resume never takes over the
    run's W&B run): the part of :func:`check_resume` the config alone decides -- the training settings,
    with ``algo.beta`` only when ``beta`` is given (``algo.kl_target`` picks it after calibration; a key
    only one side holds: its ``default``). The world's fingerprints and a kl_target's beta are checked by
    :func:`check_resume` once known."""
    path = Path(ckpt_dir) / RESUME_FILE
    if not path.is_file():
        return
    stored = comparable_training(_read_settings(path, ckpt_path).get("training", {}))
    current = _resume_training(cfg, beta)
    _refuse_if_different(path, _training_differences(stored, current, beta is None, default), ckpt_path)


def check_finished_run(run_dir: Path, cfg: DictConfig, default: Default = no_defaults) -> None:
    """``ckpt_path=last_or_new`` found no checkpoint, but the dir may hold a finished run that trained
    none (its policy came from the policy cache, or checkpointing was off): that run may be re-run
    (same training settings: the same policy, the same record) but not replaced by another
    configuration's: :func:`training_settings` compared (``algo.steps`` included: nothing resumes here),
    ``algo.beta`` left out only when ``algo.kl_target`` picks it (the record holds the picked value); a
    key only one side holds stands for its ``default``."""
    from infalign.pipeline.record import finished_record

    path = Path(run_dir) / "metrics.json"
    differ = _finished_training_differences(finished_record(path), cfg, default)
    if differ:
        _refuse_if_different(path, differ, "last_or_new")


def _finished_training_differences(rec, cfg: DictConfig, default: Default) -> list[str] | None:
    """The training settings (dotted keys) in which the finished run ``rec`` (``record.finished_record``)
    differs from ``cfg`` (:func:`check_finished_run`); None when there is no finished run with a config."""
    config = rec.config if rec is not None else None
    if not isinstance(config, dict) or not config:
        return None
    stored, current = (_as_json(training_settings(c, None)) for c in (OmegaConf.create(config), cfg))
    # the record holds the beta a kl_target picked; this run picks it later
    return _training_differences(stored, current, cfg.algo.get("kl_target") is not None, default)


def evaluation_settings(cfg: DictConfig | dict) -> dict:
    """What a run's record depends on beyond its trained policy: ``procedure``, ``eval`` and the
    held-out prompts (``data.eval_prompts``, :data:`NOT_TRAINING_DATA_KEYS`), resolved and
    JSON-normalised (:func:`_as_json`)."""
    cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    data = cfg.get("data") or {}
    return _as_json({"procedure": _plain(cfg.get("procedure")), "eval": _plain(cfg.get("eval")),
                     "data": {name: _plain(data.get(name)) for name in sorted(NOT_TRAINING_DATA_KEYS)}})


def run_code() -> dict[str, str]:
    """The code a run's results come from, as ``metrics.json`` records it (``code``): ``training``
    (:func:`code_digest`, what trained the policy) and ``evaluation``
    (``pipeline/evaluate.evaluation_code_digest``: what drew and scored its pools and computed its numbers)."""
    from infalign.pipeline.evaluate import evaluation_code_digest

    return {"training": code_digest(), "evaluation": evaluation_code_digest()}


def finished_record_to_keep(run_dir: Path, cfg: DictConfig, ckpt_path: str, default: Default = no_defaults,
                            ) -> dict | None:
    """A resume (``ckpt_path=last`` / ``last_or_new``) into a dir whose ``metrics.json`` records a finished
    run of this config's training (:func:`training_settings`, ``algo.steps`` included) -- which the caller
    has found trained as far as this run asks -- would train nothing and evaluate again. Its evaluation
    settings (:func:`evaluation_settings`; a setting the record lacks stands for its ``default``, as in a
    resume) must be the record's, else a ``ConfigError`` naming those that
    differ: re-evaluating would replace the finished run's results with another evaluation's. With them the
    record (``metrics.json``'s object) is a candidate to keep as it is -- when the code it records
    (``code``, :func:`run_code`) is this run's and the run asks for nothing it lacks (``save_policy`` with
    no ``policy/`` dir); otherwise None, and the run runs again as it would have before finished runs were
    kept (a policy-cache run retrains under other training code; the evaluation is drawn again). The
    caller keeps it only once the world is loaded and is the record's (``world.world_id``: the models'
    fingerprints, which a model dir changed at the same path changes). None too when the dir records no
    finished run with evaluation results of this training (a run asking for more steps continues the
    checkpoint)."""
    from infalign.errors import ConfigError
    from infalign.pipeline.record import finished_record

    path = Path(run_dir) / "metrics.json"
    rec = finished_record(path)
    if _finished_training_differences(rec, cfg, default) != []:
        return None
    if rec.eval is None or not rec.eval.judges:
        return None
    differ = _differences(evaluation_settings(rec.config), evaluation_settings(cfg), default, depth=2)
    if differ:
        raise ConfigError("ckpt_path", ckpt_path, "this dir's finished run, evaluated with the same settings",
                          f"{path} records a finished run of these training settings, evaluated with other values of "
                          f"{differ[:8]}: evaluating again would replace its results. Evaluate its policy in a new "
                          "run dir instead (ckpt_path=<this dir>/checkpoints/last.ckpt there trains no further; "
                          "a policy from the policy cache is found by the same training settings), or set "
                          "these settings back")
    code = run_code()
    if rec.code != code:
        log.info("%s records a finished run of these settings, but not under this code (%s -> %s): running it "
                 "again", path, rec.code, code)
        return None
    if cfg.get("save_policy") and not (Path(run_dir) / "policy").is_dir():
        log.info("%s records a finished run of these settings without the policy/ dir save_policy=true asks for: "
                 "running it again", path)
        return None
    return rec.to_json()


def _training_differences(stored: dict, current: dict, without_beta: bool, default: Default) -> list[str]:
    """:func:`_differences` of two training settings (as ``training.<key>``), ``algo.beta`` left out of both
    (in place) when ``without_beta`` -- ``algo.kl_target`` picks it after calibration, so the early check has
    none yet and a finished run's record holds the one it picked; a key only one side holds stands for its
    ``default``."""
    if without_beta:
        for settings in (stored, current):
            if isinstance(settings.get("algo"), dict):
                settings["algo"].pop("beta", None)
    return _differences({"training": stored}, {"training": current}, default)


def _read_settings(path: Path, ckpt_path: str) -> dict:
    """The settings file :data:`RESUME_FILE` at ``path``; an unreadable one (a crash of the machine
    before it reached the disk, an edit) is a ConfigError naming ``ckpt_path``, not a JSON traceback."""
    from infalign.errors import ConfigError

    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # (UnicodeDecodeError and JSONDecodeError are ValueErrors)
        raise ConfigError("ckpt_path", ckpt_path, "a checkpoint whose settings file can be read",
                          f"{path} is unreadable ({type(exc).__name__}: {exc}); delete the checkpoints to start "
                          "over") from None
    if not isinstance(stored, dict):
        raise ConfigError("ckpt_path", ckpt_path, "a checkpoint whose settings file can be read",
                          f"{path} holds no settings; delete the checkpoints to start over")
    return stored


def _refuse_if_different(path: Path, differ: list[str], ckpt_path: str, hint: str = "") -> None:
    from infalign.errors import ConfigError

    if differ:
        overrides = path.parent / OVERRIDES_FILE
        where = f"({overrides})" if overrides.is_file() else "(its .hydra/overrides.yaml, or metrics.json's config)"
        raise ConfigError("ckpt_path", ckpt_path, "a checkpoint trained with this run's settings",
                          f"{path} records other values of {differ[:8]} (a key only one side records stands "
                          "for its default: its value in the config composed from this run's config-group choices "
                          f"without overrides): resume with the interrupted run's own overrides {where}, or start "
                          f"a new run{hint}")


OVERRIDES_FILE = "run_overrides.yaml"  # beside the checkpoints: the command-line overrides they were trained with


def save_overrides(ckpt_dir: Path, overrides: list[str]) -> None:
    """Write the run's command-line overrides beside its checkpoints (a refused resume attempt rewrites
    the run dir's ``.hydra/overrides.yaml``; this copy is only written by a run that trains from scratch)."""
    from infalign.infra.cache import atomic_write_text

    Path(ckpt_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(ckpt_dir) / OVERRIDES_FILE, "".join(f"- {json.dumps(o)}\n" for o in overrides) or "[]\n")


def load_overrides(ckpt_dir: Path) -> list[str] | None:
    """The overrides :func:`save_overrides` wrote in ``ckpt_dir``; None when absent or unreadable."""
    import yaml

    try:
        data = yaml.safe_load((Path(ckpt_dir) / OVERRIDES_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return None
    return [str(o) for o in data] if isinstance(data, list) else None


def continue_command_line(run_dir: Path, overrides) -> tuple[str, bool]:
    """``(command, has_checkpoint)``: the ``infalign-train`` command that continues the lone (not multirun)
    run in ``run_dir`` -- its command-line ``overrides`` without a ``hydra.run.dir`` or ``ckpt_path``, then its
    dir, and ``ckpt_path=last`` only once it left ``checkpoints/last.ckpt`` (``last`` is refused without one;
    without one the dir is free for a new run). What the run logs when it stops and what the report says."""
    import shlex

    ckpt = (Path(run_dir) / "checkpoints" / "last.ckpt").is_file()
    keep = [str(o) for o in overrides or [] if not str(o).startswith(("hydra.run.dir=", "ckpt_path="))]
    command = ["infalign-train", *keep, f"hydra.run.dir={run_dir}", *(["ckpt_path=last"] if ckpt else [])]
    return shlex.join(command), ckpt


FINGERPRINT_POINTS = 1025  # u = 0, 1/1024, ..., 1


def transform_fingerprint(transform) -> str | None:
    """SHA-256 of ``Phi(u)`` (float64) at :data:`FINGERPRINT_POINTS` equally spaced ``u`` in [0, 1]
    (:func:`phi_on_grid`); None without a transform or for ``raw``. A change to a table or formula shows in
    these values unless it is confined between grid points (the config and the code digest key those too)."""
    values = phi_on_grid(transform, FINGERPRINT_POINTS)
    return None if values is None else hashlib.sha256(values.tobytes()).hexdigest()


def phi_on_grid(transform, points: int):
    """``Phi(u)`` as a contiguous float64 array at ``points`` equally spaced ``u`` in [0, 1]
    (:func:`phi_called_on_grid`, broadcast to the grid); None without a transform or for ``raw``."""
    import numpy as np

    values = phi_called_on_grid(transform, points)
    return None if values is None else np.ascontiguousarray(np.broadcast_to(values, (points,)))


def phi_called_on_grid(transform, points: int):
    """What ``Phi`` returns for ``points`` equally spaced ``u`` in [0, 1] (a numpy array, or -- if ``Phi``
    rejects one -- a torch tensor), as a float64 array of whatever shape it has; None without a transform or
    for ``raw``. What it raises on both is raised (the numpy attempt's error as its context)."""
    if transform is None or not getattr(transform, "calibrated", True):
        return None
    import numpy as np

    u = np.linspace(0.0, 1.0, points)
    try:
        values = transform(u)
    except Exception:  # noqa: BLE001 - a torch-only callable
        import torch

        values = transform(torch.as_tensor(u)).detach().cpu().numpy()
    return np.asarray(values, np.float64)


def transform_values(transform) -> list[float] | None:
    """``Phi(u)`` at :data:`TRANSFORM_VALUE_POINTS` equally spaced ``u`` in [0, 1] (:func:`phi_on_grid`), what
    a run records of its transform (:data:`TRANSFORM_VALUES`); None without a transform or for ``raw``."""
    values = phi_on_grid(transform, TRANSFORM_VALUE_POINTS)
    return None if values is None else [float(v) for v in values]


def same_transform_values(a, b) -> bool:
    """Whether two :func:`transform_values` records are one transform: both None, or equal point by point to
    within ``1e-9`` relative (``1e-12`` absolute near 0) -- not bit for bit: numpy's ``exp`` / ``log`` round
    the last bit differently by CPU (AVX-512 or not) and version (2e-16 relative on 37 of 1,025 points of
    exp(4u)), which would refuse a run's own checkpoint on another node; an edit of a formula or a
    parameter moves them by far more. A record of the earlier format (a SHA-256 string) is not compared."""
    import numpy as np

    if isinstance(a, str) or isinstance(b, str):
        return True
    if a is None or b is None:
        return a is None and b is None
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return x.shape == y.shape and bool(np.allclose(x, y, rtol=1e-9, atol=1e-12, equal_nan=True))


# L.Trainer arguments whose type is part of their meaning: an int counts batches, a float is a fraction
# of the epoch (``limit_train_batches=1`` trains on one batch, ``1.0`` on all of them)
INT_OR_FRACTION_TRAINER_KEYS = frozenset({
    "limit_train_batches", "overfit_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
    "val_check_interval",
})


# Training settings the policy key leaves out because the key holds what they lead to: where the policy /
# reference and the reward model are read from (their contents are the world's fingerprints in the key:
# pipeline/world.fingerprint_dir of a local dir, ``hub:<name>@<commit>`` of a hub name), and the device a
# Bradley-Terry reward model trains on (runtime only: the model it trains is keyed by its files, the reward
# fingerprint). A resume and a finished run's re-run still compare them (training_settings): they are
# checked before the world, and so its fingerprints, is loaded.
# reward.pad_token too: what it changes -- where the score is read -- is in the reward fingerprint (the input
# format says "pad == eos" exactly when the rows are padded with the eos), and keyed here its null, new in
# conf/reward/hf.yaml, would have retired every real-data policy cached before it existed.
KEYED_BY_THE_WORLD = (("policy", "name_or_path"), ("reward", "name_or_path"), ("reward", "train", "accelerator"),
                      ("reward", "pad_token"),
                      # where the prompts are read from: the key holds the prompts themselves (and the text the
                      # reward reads), a trained reward model its files -- the same data copied elsewhere is the
                      # same policy (walkthrough: it was trained again)
                      ("data", "train_file"), ("data", "test_file"), ("data", "name_or_path"), ("data", "data_dir"))


# The calibration settings only an online algorithm's reward reads (an offline baseline draws its
# reference samples with the others: temperature, max_new_tokens, batch_size, ...; pipeline/fit.fit_policy).
CALIBRATION_OF_THE_REWARD = ("K", "scope", "smoothing")


def _algorithm_class(training: dict):
    from infalign.training.algorithms import ALGORITHMS

    algo = training.get("algo")
    return ALGORITHMS.get(algo.get("name")) if isinstance(algo, dict) else None


def without_unread(training: dict) -> dict:
    """``training`` (:func:`training_settings`) in place without what the run's algorithm never reads, so
    a setting it ignores costs no retraining: ``algo`` keys outside its ``settings()`` (``algo.beta`` an
    experiment sets for ``algo=bon_sft``), and for an offline baseline, which trains on no transform and
    ranks no reward, the ``transform`` and :data:`CALIBRATION_OF_THE_REWARD`. An unknown algorithm keeps
    everything."""
    algorithm = _algorithm_class(training)
    if algorithm is None:
        return training
    read = {"name", *algorithm.settings()}
    training["algo"] = {k: v for k, v in training["algo"].items() if k in read}
    if not algorithm.online:
        training.pop("transform", None)
        if isinstance(training.get("calibration"), dict):
            training["calibration"] = {k: v for k, v in training["calibration"].items()
                                       if k not in CALIBRATION_OF_THE_REWARD}
    return training


def policy_key(cfg: DictConfig, world, beta: float | None, transform=None) -> str:
    """The content key of the policy this config trains on ``world`` with ``transform`` (the run's
    instantiated Phi; module docstring), without :data:`KEYED_BY_THE_WORLD` (a model dir moved or copied
    elsewhere is the same policy). Numbers are keyed by value (``infra/cache.content_key``:
    ``transform.t=4`` and ``t: 4.0`` are one policy), except a float given to one of
    :data:`INT_OR_FRACTION_TRAINER_KEYS`, which is keyed as a fraction (:func:`training_settings`)."""
    training = without_unread(training_settings(cfg, beta))
    for *parents, name in KEYED_BY_THE_WORLD:
        node = training
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(name, None)
    algorithm = _algorithm_class(training)
    if algorithm is not None and not algorithm.online:  # an offline baseline trains on no transform
        transform = None
    return content_key(POLICY_CACHE_VERSION, code_digest(), world.reference_fingerprint, world.reward_fingerprint,
                       training_prompts_id(world), training, transform_fingerprint(transform))


def train_or_load(policy, key: str, cache_dir: str | Path, train: Callable[[], dict | None], origin: str,
                  ) -> tuple[bool, dict | None]:
    """Load ``policy``'s weights from the cache entry ``key``, or call ``train()`` and store them.

    Returns ``(hit, fit)``: the cache hit flag and what ``train()`` returned about the training (an offline
    baseline's training data, ``pipeline/fit.fit_policy``), which the entry keeps with the weights -- a hit
    returns the training's own (None from an entry written before it was kept). ``origin`` (the run dir that
    trained it) is recorded in the entry.
    """
    path = Path(cache_dir) / "policies" / f"{key}.pt"

    def build():
        fit = train()
        return {k: v.detach().cpu() for k, v in policy.state_dict().items()}, fit

    def save(value, p: Path) -> None:
        state, fit = value
        save_tensors(p, state, {"trained_in": origin, "fit": fit}, key=key)

    def load(p: Path):
        state, meta = load_tensors(p, key)
        return state, meta.get("fit")

    # the key stored in the file is checked on load: a file under the wrong name is retrained
    (state, fit), hit = cached(path, build, save, load)
    if hit:
        policy.load_state_dict(state)
        log.info("trained policy cache hit: %s", path)
    return hit, fit
