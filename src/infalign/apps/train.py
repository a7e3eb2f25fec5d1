"""``infalign-train``: InfAlign-CTRL end to end (world -> calibrate -> train -> evaluate -> record).

    infalign-train                                   # experiment=toy_bon: exp(t=4), best-of-4
    infalign-train experiment=toy_won                # worst-of-4, exp with t < 0
    infalign-train transform=identity algo.beta=0.1 algo=ppo
    infalign-train -m transform=identity,log,raw     # a multirun sweep
    infalign-train hydra.run.dir=outputs/train/my_run ckpt_path=last   # resume an interrupted run
    infalign-train ... -v                            # full tracebacks (as HYDRA_FULL_ERROR=1)

A ConfigError ends the run with one block (key, value, allowed values, hint) and exit code 2.
Returns the objective ``eval/<objective.judge>/<objective.metric>`` (for Optuna sweeps).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import signal
import sys
import threading
import time
import warnings
import zipfile
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from infalign.apps import sweep_stop
from infalign.apps.config import (
    CONFIG_DIR,
    check_known_keys,
    check_value_types,
    command_line_keys,
    decreasing_transform,
    entry_name,
    exit_on_config_error,
    hydra_refusals_exit_2,
    instantiate_checked,
    instantiate_group,
    launcher_jobs,
    override_key,
    task_overrides,
)
from infalign.apps.sweep_stop import RUN_LOCK
from infalign.errors import ConfigError, Terminated, require
from infalign.infra import distributed
from infalign.infra.cache import atomic_write_json
from infalign.infra.startup import import_frozen
from infalign.infra.sweeps import NOT_STARTED, mark_not_started, request_stop, stop_reason, stop_requested
from infalign.infra.threads import declare_jobs, resolve_threads
from infalign.math.calibration import SCOPES
from infalign.math.procedures import STANDARD_WIN_RATE, Procedure
from infalign.math.transforms import FLOAT32_MAX, Transform, as_transform, finite_in_float32
from infalign.pipeline import record
from infalign.pipeline.kl_target import require_spread_samples
from infalign.pipeline.run_record import RunRecord, other_eval_horizon
from infalign.pipeline.settings import (
    calibration_sampler,
    data_settings,
    eval_pool_settings,
    model_settings,
    modified_sampler,
    training_seed,
    wandb_mode,
)
from infalign.pipeline.toy_prompts import check_toy_prompt_counts
from infalign.training.algorithms import Algorithm, make_algorithm

log = logging.getLogger(__name__)
# Lightning notices about what the app does by design, which a user cannot act on: our train "dataloader"
# only counts steps (prompts and seeds are functions of the step), so a mid-epoch resume is exact; the
# checkpoint is meant to hold the post-update state; BoN-SFT trains the pre-training module, whose
# validation step (the toy build's) has no data in a run.
LIGHTNING_NOTICES = (".*dataloader is not resumable.*", ".*ModelCheckpoint with manual optimization.*",
                     ".*no `val_dataloader`.*")


def silence_lightning_notices() -> None:
    """Ignore the warnings of :data:`LIGHTNING_NOTICES` (installed when the app is imported)."""
    for pattern in LIGHTNING_NOTICES:
        warnings.filterwarnings("ignore", message=pattern)


silence_lightning_notices()


def validate(cfg: DictConfig) -> tuple[Procedure, Transform, Algorithm]:
    """Everything that can be checked without compute; raises ConfigError naming the key."""
    check_known_keys(cfg)  # a key no config file defines: a typo (`+eval.sample=8`)
    check_value_types(cfg)  # booleans, integers, numbers: of their defaults' types
    procedure: Procedure = instantiate_group(cfg, "procedure")
    transform = as_transform(instantiate_group(cfg, "transform"))
    given = {k.removeprefix("algo.") for k in command_line_keys() if k.startswith("algo.")}
    algo = make_algorithm(OmegaConf.to_container(cfg.algo, resolve=True), given)
    require(int(cfg.calibration.K) >= 1, "calibration.K", cfg.calibration.K, "K >= 1 reference samples per prompt")
    scope = cfg.calibration.get("scope", "prompt")
    require(scope in SCOPES, "calibration.scope", scope, " | ".join(SCOPES))
    require(scope == "prompt" or transform.calibrated, "calibration.scope", scope,
            f"prompt with the uncalibrated transform {transform.label} (pooled ranks only calibrated rewards)")
    if algo.online:  # (the offline baselines never compute Phi)
        check_float32_range(transform, algo.cfg.prompts_per_step * algo.cfg.group_size)
    if (why := decreasing_transform(transform, "transform", value=entry_name(cfg, "transform"))) is not None:
        log.warning(why)
    target = getattr(algo, "kl_target", None)
    require(target is None or "algo.beta" not in command_line_keys(), "algo.beta", cfg.algo.get("beta"),
            f"not given with algo.kl_target={target} (the target picks beta: this beta would be dropped)",
            "algo.kl_target=null to train at algo.beta (a method= entry sets a kl_target)")
    warn_if_the_policy_stays(transform, algo)
    if algo.needs_calibration(transform) or not algo.online:
        # drawn as RL draws: temperature, max_new_tokens, no truncation; an offline baseline's N
        # reference samples per prompt are drawn with these settings too (pipeline/fit.fit_policy)
        calibration_sampler(cfg)
    require_spread_samples(algo.kl_target, transform, scope == "pooled", int(cfg.calibration.K))
    eval_pool_settings(cfg.eval)  # eval.samples, eval.batch_size, eval.temperature / top_k / top_p
    require(int(cfg.calibration.batch_size) >= 1, "calibration.batch_size", cfg.calibration.batch_size,
            ">= 1 rows per batch")
    ns = cfg.eval.ns
    require(OmegaConf.is_list(ns) and len(ns) > 0 and all(isinstance(n, int) and not isinstance(n, bool) for n in ns),
            "eval.ns", OmegaConf.to_container(ns) if OmegaConf.is_config(ns) else ns,
            "a non-empty list of integers N, e.g. [1, 2, 4, 8]")
    require(int(cfg.eval.bootstrap) >= 40, "eval.bootstrap", cfg.eval.bootstrap,
            ">= 40 bootstrap resamples over prompts for the CIs (1000 by default)",
            "a 95 % percentile interval reads the 2.5 % and 97.5 % quantiles of the resamples: with fewer "
            "than 40 they are the extremes, and with 1 a zero-width interval beside the estimate")
    judges = ["reward_model"] + (["gold"] if cfg.data.source == "toy" else [])  # gold: the toy world's own
    require(cfg.objective.judge in judges, "objective.judge", cfg.objective.judge, f"one of {judges}",
            "real data has no gold reward" if cfg.objective.judge == "gold" else None)
    require(int(cfg.checkpoint_every) >= 1, "checkpoint_every", cfg.checkpoint_every,
            ">= 1 optimizer steps between checkpoints (callbacks.model_checkpoint=null: none)")
    require(int(cfg.log_every_n_steps) >= 1, "log_every_n_steps", cfg.log_every_n_steps, ">= 1 optimizer steps")
    budget = cfg.objective.get("kl_budget")  # (a negative penalty rewarded going over the budget)
    require(budget is None or float(budget) > 0, "objective.kl_budget", budget, "null or > 0 nats")
    require(float(cfg.objective.kl_penalty) >= 0, "objective.kl_penalty", cfg.objective.kl_penalty,
            ">= 0 (win rate lost per nat of KL over objective.kl_budget)")
    bad_n = [n for n in cfg.eval.ns if not 1 <= int(n) <= int(cfg.eval.samples)]
    require(not bad_n, "eval.ns", list(cfg.eval.ns), f"every N in [1, eval.samples={cfg.eval.samples}]")
    for n in cfg.eval.ns:  # the evaluation serves the procedure at every N: one it does not take (a family of
        try:               # odd N, say) failed only after training, naming procedure.n
            procedure.at(int(n))
        except ConfigError as exc:
            raise ConfigError("eval.ns", list(cfg.eval.ns), f"N that {procedure.name} takes ({exc.allowed})",
                              f"the evaluation serves {procedure.name} at every N of eval.ns; N={n}: {exc}") from exc
    require(procedure.n <= int(cfg.eval.samples), "procedure.n", procedure.n,
            f"at most eval.samples={cfg.eval.samples}", "the evaluation's win rate at N draws N of each prompt's "
            "eval.samples samples: raise eval.samples")
    data_settings(cfg.data)  # data.source, data.train_prompts, data.eval_prompts
    check_toy_prompt_counts(cfg.data)  # (no more than the toy world has)
    check_source_keys(cfg, command_line_keys(deletions=False))
    model_settings(cfg)  # policy.dtype, policy.train_dtype, reward.dtype, reward.input, reward.prompt_format
    training_seed(cfg)  # replica
    require(cfg.trainer.accelerator in ("cpu", "gpu", "cuda", "mps", "auto"), "trainer.accelerator",
            cfg.trainer.accelerator, "one of ['cpu', 'gpu', 'cuda', 'mps', 'auto']")
    strategy = cfg.trainer.get("strategy", "auto")
    require("fsdp" not in str(strategy).lower(), "trainer.strategy", strategy,
            "auto, ddp or ddp_spawn: not FSDP (README, 'Scale: what to expect')",
            "Lightning's FSDP runs training_step inside FSDP's forward, where RL's manual backward is refused, "
            "and its predict stages leave the sampled models' weights sharded; use trainer=ddp")
    from infalign.pipeline.policy_cache import PRECISION_ALIASES  # (Lightning's short names: 64 is 64-true)

    precision = str(cfg.trainer.get("precision", "32-true"))
    full_name = PRECISION_ALIASES.get(precision, precision)
    require(not full_name.endswith("-true") or full_name == "32-true", "trainer.precision", precision,
            "32-true, bf16-mixed or 16-mixed (half-precision weights: policy.dtype, policy.train_dtype, reward.dtype)",
            "a *-true precision converts the modules a Lightning step registers in place: the reference became "
            "bf16 when its calibration pool was drawn, and stayed float32 when the pool came from the cache")
    require(not (algo.online and float(getattr(algo.cfg, "grad_clip", 0) or 0) > 0 and precision in ("16-mixed", "16")),
            "trainer.precision", precision, "32-true or bf16-mixed with algo.grad_clip > 0 (or set algo.grad_clip=0)",
            "16-mixed scales the loss (a GradScaler), and Lightning's manual optimisation clips the gradients before "
            "it unscales them (Lightning issue #18089): the clip would act on gradients ~65536x too large")
    for key, off in (("gradient_clip_val", 0), ("accumulate_grad_batches", 1)):  # Lightning refuses them in fit
        require(not algo.online or cfg.trainer.get(key) in (None, off), f"trainer.{key}", cfg.trainer.get(key),
                f"not set with algo={algo.name}", "RL optimises manually, which Lightning's automatic clipping and "
                "accumulation do not support: set algo.grad_clip (clipping) or algo.prompts_per_step (batch)")
    require(int(cfg.seed) >= 0, "seed", cfg.seed, "an integer >= 0 (it seeds numpy and torch generators)")
    user_tags(cfg.get("tags"))
    warn_against_the_procedure(transform, procedure, algo)
    warn_if_the_knob_is_overridden(algo)
    warn_if_kl_point_is_unread(cfg)
    devices = trainer_devices(cfg.trainer.devices, str(cfg.trainer.accelerator))
    if devices == "auto" or (devices == -1 and cfg.trainer.accelerator != "cpu"):  # -1: every visible GPU
        devices = auto_device_count(cfg.trainer.accelerator)
    multi = devices != 1 or int(cfg.trainer.get("num_nodes", 1)) > 1
    require(not multi or distributed.launched_externally(), "trainer.devices", cfg.trainer.devices,
            "1, or several processes started by torchrun / SLURM (one per device)",
            "e.g. torchrun --nproc_per_node=4 $(which infalign-train) trainer=ddp trainer.devices=4 "
            "hydra.run.dir=outputs/train/my_run, or hydra/launcher=slurm")
    check_shared_run_dir()
    require(algo.kl_target is None or not optimal_transform_entry(cfg),
            "algo.kl_target", algo.kl_target,
            "null with transform=optimal (it is built for algo.beta; set algo.beta instead)")
    penalty = getattr(algo, "missing_eos_penalty", None)
    require(algo.kl_target is None or not penalty, "algo.kl_target", algo.kl_target,
            f"null with algo.missing_eos_penalty={penalty} (algo.kl_target=null algo.beta=<b>: a method= "
            "entry sets a kl_target)",
            "the penalised reward Phi(C) - p * 1{cut} is no calibrated transform, so no theory picks beta for "
            "a KL budget (docs/method.md (6.1b))")
    declare_jobs(launcher_jobs())  # threads: auto | null | N (checked; applied by the stages)
    resolve_threads(cfg.get("threads", "auto"))
    logger = cfg.get("logger")
    if logger is not None and str(logger.get("_target_", "")).endswith("RunWandbLogger"):
        wandb_mode(logger.get("mode", "offline"))  # RunWandbLogger's own default
    objective_metric(cfg, procedure)
    resolve_ckpt(cfg, Path(cfg.paths.run_dir))
    if int(cfg.data.eval_prompts) < FEW_EVAL_PROMPTS and distributed.rank() == 0:  # (once every check passed)
        log.warning("data.eval_prompts=%d: the evaluation's 95 %% intervals resample the held-out prompts, and "
                    "with fewer than %d they cover noticeably less (a percentile bootstrap of a mean covers ~80 %% "
                    "at 4 prompts, ~89 %% at 10, ~92 %% at 20: Monte Carlo, normal scores); read them as rough",
                    int(cfg.data.eval_prompts), FEW_EVAL_PROMPTS)
    if (sampler := modified_sampler(cfg.eval, "eval")) and distributed.rank() == 0:
        log.warning("%s: the evaluation samples another distribution q than the policy's, so its KL column is "
                    "E_q[log pi - log pi_ref], not KL(pi || pi_ref), and no calibrated-space theory is put beside "
                    "the run (docs/method.md (7.3)); the report compares it only with runs evaluated alike", sampler)
    if (horizon := other_eval_horizon(cfg)) and distributed.rank() == 0:
        log.warning("eval.max_new_tokens=%d but algo.max_new_tokens=%d: the evaluation's pools are responses of "
                    "another horizon than the trained and calibrated ones, so no calibrated-space theory is put "
                    "beside the run (docs/method.md §7); the report compares it only with runs evaluated alike",
                    *horizon)
    return procedure, transform, algo


def optimal_transform_entry(cfg: DictConfig) -> bool:
    """Whether the run's transform is the optimal one (``conf/transform/optimal.yaml``:
    ``math.theory.optimal_transform``, built for ``algo.beta``)."""
    return "optimal_transform" in str(cfg.transform.get("_target_"))


STAYS_KL = 0.01  # nats: an ideal tilted policy this close to the reference is a run that trains nothing


DATA_KEYS_OF_ANY_SOURCE = ("source", "train_prompts", "eval_prompts")
FEW_EVAL_PROMPTS = 20  # validate: fewer held-out prompts than this get a warning that their CIs under-cover


def check_source_keys(cfg: DictConfig, given: set[str]) -> None:
    """A command-line key the data source never reads is a ConfigError (every ``data.*`` key of any
    entry is a known key, so ``+data.seed=5`` on the toy world -- its seed is ``data.toy.seed`` -- was
    accepted and ignored): on the toy world, ``data.*`` keys of the real-data entries (files, limits,
    seed, batch size) and ``reward.train.*`` (its reward model is built); on real data, ``data.toy.*``."""
    source = cfg.data.source
    if source == "toy":
        ignored = sorted(k for k in given if (k.startswith("data.") and not k.startswith("data.toy")
                                              and k.split(".")[1] not in DATA_KEYS_OF_ANY_SOURCE)
                         or (k.startswith("reward.train.") and k != "reward.train.enabled"))  # (true: refused)
        allowed, hint = ("not set for the toy world (data.source=toy)", "read only with real data "
                         "(data=hh_*|tldr); the toy world's own settings are data.toy.* (e.g. data.toy.seed)")
    else:
        ignored = sorted(k for k in given if k.startswith("data.toy"))
        allowed, hint = f"not set for data.source={source}", "data.toy.* configures the toy world only"
    if ignored:
        raise ConfigError(ignored[0], OmegaConf.select(cfg, ignored[0]), allowed, hint)


def warn_against_the_procedure(transform: Transform, procedure: Procedure, algo: Algorithm) -> None:
    """Warn when an online algorithm's exp-family ``t`` works against the procedure
    (:meth:`~infalign.math.procedures.Procedure.against`, as ``infalign-analyze`` warns)."""
    t = getattr(transform, "t", None)
    if algo.online and isinstance(t, int | float) and (why := procedure.against(t)) is not None:
        log.warning("transform %s: %s", transform.label, why)


def warn_if_the_knob_is_overridden(algo: Algorithm) -> None:
    """Warn when a ``method=`` entry is chosen on the command line together with its algorithm's KL knob
    (``algo.steps`` for BoN-SFT, ``algo.beta`` for IPO, ``algo.kl_target`` for RL): the method sets the
    knob from ``kl_point``, so every ``kl_point`` would train the same policy. (``algo.beta`` with a
    ``kl_target`` is refused by :func:`validate`.)"""
    given = command_line_keys()
    knob = [k for k in algo.kl_knob_keys if k in given]
    if "method" in given and knob:
        log.warning("%s given with method=: it replaces the method's KL knob, which walks kl_point -- every "
                    "kl_point trains the same policy (drop %s to walk the method's curve)", ", ".join(knob),
                    ", ".join(knob))


def warn_if_kl_point_is_unread(cfg: DictConfig) -> None:
    """Warn when ``kl_point`` / ``kl_grid`` is given on the command line but no value of the composed
    config reads it (only ``method=`` entries index them): the override changes nothing."""
    given = [k for k in ("kl_point", "kl_grid") if k in command_line_keys()]
    if not given:
        return

    def reads(node) -> bool:
        if isinstance(node, dict):
            return any(reads(v) for k, v in node.items() if k not in ("kl_point", "kl_grid", "hydra"))
        if isinstance(node, list):
            return any(reads(v) for v in node)
        return isinstance(node, str) and ("kl_point" in node or "kl_grid" in node)

    if not reads(OmegaConf.to_container(cfg, resolve=False)):
        log.warning("%s given, but nothing in this run's config reads it (a method= entry sets its KL knob from "
                    "kl_point): it changes nothing", " and ".join(given))


def warn_if_the_policy_stays(transform: Transform, algo: Algorithm) -> None:
    """Warn, before compute, when an explicit ``algo.beta`` puts the ideal tilted policy of a calibrated
    transform (docs/method.md §4: ``KL(pi_beta || pi_ref)`` of the theory) within :data:`STAYS_KL`
    nats of the reference: beta is in the transform's units (exp(4u) spans ~54, identity 1), so a
    beta sized for one transform trains nothing under another -- ``transform=identity`` with
    toy_bon's ``beta=20`` moved the policy by KL 0.002 in 100 steps, silently (a walkthrough)."""
    beta = algo.beta
    if not transform.calibrated or algo.kl_target is not None or beta is None or not algo.online:
        return
    from infalign.math import theory

    try:
        phi = theory.phi_table(transform)
        kl = float(theory.tilt(phi, float(beta)).kl[0])
    except Exception:  # noqa: BLE001 - a transform the theory cannot tabulate: no prediction, no warning
        return
    if kl < STAYS_KL:
        log.warning("algo.beta=%g with %s: the theory's tilted policy is %.2g nats from the reference, so "
                    "training will barely move it (beta is in the transform's units). Set algo.kl_target=<nats> "
                    "to have beta chosen for a KL, or pick beta with infalign-analyze", beta, transform.label, kl)


def trainer_devices(devices, accelerator: str | None = None) -> int | str:
    """``trainer.devices`` as Lightning reads it -- an int, a list of device ids, ``"auto"`` or a string of
    ids (``"0,1"``, ``"-1"``) -- reduced to its count (``"auto"`` stays: one device on a CPU-only machine,
    every visible GPU on a GPU node); anything else is a ConfigError naming the key. With
    ``accelerator="cpu"`` only a count of processes >= 1 or ``"auto"``: Lightning's CPU accelerator takes
    no device ids and no -1 (it raised a TypeError under torchrun)."""
    allowed = "an integer >= 1 (or -1: all), 'auto', a list of device ids or a string of them ('0,1')"

    def count(n: int, ids: bool) -> int:  # (ids: a list or a string with a comma; a count otherwise)
        require(accelerator != "cpu" or (n >= 1 and not ids), "trainer.devices", devices,
                "with trainer.accelerator=cpu, a number of processes >= 1 or 'auto'",
                "the CPU accelerator takes no device ids and no -1")
        return n

    if isinstance(devices, bool):
        raise ConfigError("trainer.devices", devices, allowed)
    if isinstance(devices, int):
        require(devices >= 1 or devices == -1, "trainer.devices", devices, allowed)
        return count(devices, ids=False)
    if OmegaConf.is_list(devices) or isinstance(devices, list):
        require(len(devices) > 0 and all(isinstance(d, int) and not isinstance(d, bool) for d in devices),
                "trainer.devices", list(devices), allowed)
        return count(len(devices), ids=True)
    text = str(devices).strip()
    if text == "auto":  # Lightning compares the string itself: " auto" is read as a number, and refused late
        require(str(devices) == "auto", "trainer.devices", devices, "'auto' without spaces, " + allowed)
        return "auto"
    if "," not in text:  # one number: a count, as the int form ("0" and "-2" are no more valid than 0 and -2)
        require(re.fullmatch(r"-?[0-9]+", text) is not None and (int(text) >= 1 or int(text) == -1),
                "trainer.devices", devices, allowed)
        return count(int(text), ids=False)
    ids = [d.strip() for d in text.split(",") if d.strip()]  # device ids, as Lightning reads a comma ("3,": GPU 3)
    require(bool(ids) and all(re.fullmatch(r"[0-9]+", d) for d in ids) and len(set(ids)) == len(ids),
            "trainer.devices", devices, allowed)
    return count(len(ids), ids=True)


def auto_device_count(accelerator: str) -> int:
    """The devices ``trainer.devices=auto`` gives on this machine, as Lightning counts them: one CPU
    process, one MPS device, every visible CUDA GPU for ``gpu`` / ``cuda`` (and for ``auto`` when
    there is one; else one CPU). A single-GPU machine is one device, so ``devices=auto`` there runs
    without a launcher; several GPUs need one process per GPU (torchrun / SLURM). No GPU at all counts
    as one: Lightning's own refusal of a GPU accelerator then names the problem (``probe_trainer``)."""
    if distributed.accelerator_kind(accelerator) in ("cpu", "mps"):
        return 1
    import torch

    return max(1, torch.cuda.device_count())


def check_shared_run_dir() -> None:
    """The ranks of one torchrun / srun launch must write one run dir, but the default dir's timestamp
    is each process's own clock: ranks started either side of a second would split the run. So a
    launched single run (not a sweep job: its dir is the launcher's) names its dir."""
    from hydra.core.hydra_config import HydraConfig

    if not (distributed.launched_externally() and HydraConfig.initialized()):
        return
    hydra_cfg = HydraConfig.get()
    named = any(override_key(o) == "hydra.run.dir" for o in hydra_cfg.overrides.hydra)
    require(hydra_cfg.mode.name != "RUN" or named, "hydra.run.dir", hydra_cfg.run.dir,
            "an explicit run dir when torchrun / srun starts one process per rank",
            "each rank's timestamp is its own, so ranks could land in different dirs: add "
            "hydra.run.dir=outputs/train/<name>")


def check_float32_range(transform: Transform, rows: int = 1) -> None:
    """Training computes ``Phi(C)`` in float32 and sums a step's ``rows`` (P x G: each RLOO group's
    baseline, the logged mean): a transform that overflows there (``exp(t u)`` past ``t`` = 88.7 - ln(rows),
    the normalised form's ``expm1(t)`` past 88.7) would turn every advantage into NaN. Probed on a grid of
    ``[0, 1]`` before compute (:func:`~infalign.math.transforms.finite_in_float32`); the theory
    (``infalign-analyze``, float64) takes ``|t| <= 700``."""
    if not transform.calibrated or finite_in_float32(transform, terms=rows):
        return
    t = getattr(transform, "t", None)
    if t is None:  # a custom function (transform.fn), e.g. numpy.arccosh: infinite or NaN somewhere on [0, 1]
        why = ("the function is infinite or NaN somewhere on [0, 1]" if not finite_in_float32(transform) else
               f"a sum of the {rows} rewards of a step overflows float32")
        raise ConfigError("transform", transform.label, "a transform finite on [0, 1] in float32 (training's "
                          "precision)", why)
    limit = math.log(FLOAT32_MAX / rows)
    raise ConfigError("transform.t", t, f"a transform whose step sums stay finite in float32 (training's precision): "
                      f"t <= {limit:.2f} for exp with {rows} rows per step (88.72 - ln {rows})",
                      "larger t is for the float64 theory only (infalign-analyze)")


def objective_metric(cfg: DictConfig, procedure: Procedure) -> str:
    """The evaluation column ``objective`` reads: ``objective.metric``, or when it is null the
    procedure's own win rate at ``procedure.n`` (:meth:`Procedure.metric_key`: ``bon4_win_rate``,
    ``standard_win_rate`` when serving is plain sampling). A name the evaluation does not write is a
    ConfigError (it used to fall back to the standard win rate silently)."""
    metric = cfg.objective.get("metric")
    if metric is None:
        return procedure.metric_key()
    columns = {STANDARD_WIN_RATE} | {procedure.at(int(n)).win_rate_key for n in cfg.eval.ns if procedure.uses_n}
    require(metric in columns, "objective.metric", metric, f"null (the procedure's own) or one of {sorted(columns)}",
            "the evaluation writes a win rate for every N in eval.ns")
    return str(metric)


RESUME = ("last", "last_or_new")  # ckpt_path values that continue the run in this run dir
RUN_ARTEFACTS = ("metrics.json", "checkpoints")  # what makes a run dir another run's
# what an earlier attempt in a run dir leaves besides Hydra's files: set aside when a new run takes the dir
ATTEMPT_FILES = (*(p.name for p in record.run_files(Path(), existing=False).values()),  # record and its views
                 "checkpoints", "policy", "wandb", "csv", record.LOGGED, record.FAILED_ATTEMPT)


def check_run_dir(cfg: DictConfig, out_dir: Path) -> None:
    """A run writes only into a fresh dir, or into its own to resume it: a dir that already holds a
    run's ``metrics.json`` or a checkpoint (``checkpoints/*.ckpt``) is refused unless ``ckpt_path`` is
    ``last`` / ``last_or_new`` (so a reused ``hydra.run.dir`` never overwrites another run's results). A
    ``metrics.json`` of an attempt that neither finished nor left a checkpoint (a config error, a
    missing model, Ctrl-C before the first checkpoint) holds no results and nothing to resume: the dir is
    free (a walkthrough's fixed run dir was refused twice after a typo: once for the record, once by
    ``ckpt_path=last`` for the missing checkpoint). A new run (not ``last`` / ``last_or_new``) that
    takes a dir holding such an attempt's files first moves them into ``previous_attempt-<k>/``
    (:func:`set_aside_attempt`): its W&B run id, ``policy/`` or CSV history would otherwise pass as the
    new run's."""
    taken = [name for name in RUN_ARTEFACTS if (out_dir / name).exists()]
    if "checkpoints" in taken and not any((out_dir / "checkpoints").glob("*.ckpt")):
        taken.remove("checkpoints")  # only the settings a run writes before its first checkpoint
    if taken == ["metrics.json"] and _unfinished_attempt(out_dir / "metrics.json"):
        taken = []
    require(not taken or cfg.ckpt_path in RESUME, "hydra.run.dir", str(out_dir),
            "a directory without another run's results (metrics.json, checkpoints/*.ckpt)",
            f"it holds {taken}; resume that run with ckpt_path=last, or leave hydra.run.dir unset "
            "for a new unique dir")
    if not taken and cfg.ckpt_path not in RESUME and distributed.launch_rank() == 0:
        set_aside_attempt(out_dir)


def set_aside_attempt(out_dir: Path) -> Path | None:
    """Move what an earlier, unfinished attempt left in ``out_dir`` (:data:`ATTEMPT_FILES`) into
    ``out_dir/previous_attempt-<k>`` (the next free ``k``; nothing is deleted) and return that dir (None:
    nothing to move)."""
    left = [name for name in ATTEMPT_FILES if (out_dir / name).exists() or (out_dir / name).is_symlink()]
    if not left:
        return None
    k = 1
    while (out_dir / f"previous_attempt-{k}").exists():
        k += 1
    aside = out_dir / f"previous_attempt-{k}"
    aside.mkdir()
    for name in left:
        os.replace(out_dir / name, aside / name)
    log.warning("%s held an unfinished attempt's files (%s): moved into %s, so the new run does not take them "
                "(its W&B run id, policy/ or CSV history) as its own", out_dir, ", ".join(left), aside)
    return aside


def _unfinished_attempt(path: Path) -> bool:
    """Whether ``path`` (a ``metrics.json``) records a run that failed or was interrupted (an unreadable
    file is no such record: it may be a run's)."""
    try:
        return record.read_record(path).status in ("failed", "interrupted")
    except FileNotFoundError:  # gone since it was seen: set aside by rank 0 of this launch (set_aside_attempt),
        return True  # which moves only an unfinished attempt's record
    except Exception:  # noqa: BLE001
        return False


def resolve_ckpt(cfg: DictConfig, out_dir: Path) -> str | None:
    """The checkpoint ``fit`` starts from: ``null`` -> none; ``last`` -> ``<run dir>/checkpoints/
    last.ckpt``, which must exist; ``last_or_new`` -> it if it exists, else none (a sweep that
    resumes the jobs that got far enough); anything else -> that file, which must exist."""
    if cfg.ckpt_path is None:
        return None
    if cfg.ckpt_path in RESUME:
        last = out_dir / "checkpoints" / "last.ckpt"
        require(last.is_file() or cfg.ckpt_path == "last_or_new", "ckpt_path", cfg.ckpt_path,
                f"'last' needs {last}",
                "no checkpoint to resume in this run dir: set hydra.run.dir to the interrupted run's dir, "
                "or pass ckpt_path=last_or_new to start fresh when there is none (a run whose policy came "
                "from the policy cache trained nothing and has no checkpoint; policy_cache=false trains)")
        return check_checkpoint(last) if last.is_file() else None
    require(Path(cfg.ckpt_path).is_file(), "ckpt_path", cfg.ckpt_path,
            "null, 'last' / 'last_or_new' (this run dir's checkpoints/last.ckpt) or an existing checkpoint file")
    return check_checkpoint(Path(cfg.ckpt_path))


CHECKPOINT_HINT = "delete it to start over, or set ckpt_path to an earlier checkpoint"  # an unusable checkpoint


def check_checkpoint(path: Path) -> str:
    """``path`` if it is a complete, intact ``torch.save`` archive -- a zip (its central directory is
    the last thing written, so a truncated file fails) whose members all match their CRCs (flipped
    bytes fail) -- holding what a resume needs (the optimizer state: a weights-only checkpoint cannot
    continue training), else a ConfigError instead of an error deep inside ``fit`` or, for flipped
    bytes in a tensor, silently corrupted weights."""
    require(zipfile.is_zipfile(path), "ckpt_path", str(path), "a readable checkpoint (a torch.save archive)",
            f"the file is truncated or corrupt (killed while it was written?): {CHECKPOINT_HINT}")
    if distributed.launch_rank() == 0:  # one full read is enough: the ranks of a launch share the file
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        require(bad is None, "ckpt_path", str(path), "a readable checkpoint (a torch.save archive)",
                f"its member {bad} does not match its checksum (the file is corrupt): {CHECKPOINT_HINT}")
    return str(path)


def checkpoint_contents(path: Path | str) -> dict:
    """The Lightning checkpoint's top-level dict, memory-mapped (tensors are not read)."""
    import torch

    return torch.load(path, map_location="cpu", mmap=True, weights_only=False)


def check_checkpoint_steps(path: str, algo: Algorithm, contents: dict | None = None) -> int:
    """What a resume needs from its checkpoint: the optimizer state (a weights-only checkpoint cannot
    continue training), and no more steps than ``algo.steps`` (a resume with fewer steps would be
    recorded as a ``steps``-step policy while holding more training). Returns the checkpoint's global
    step, where training resumes. (``contents``: the checkpoint, if already read.)"""
    contents = checkpoint_contents(path) if contents is None else contents
    require(bool(contents.get("optimizer_states")), "ckpt_path", path,
            "a checkpoint with the optimizer state (a weights-only checkpoint cannot resume training)",
            CHECKPOINT_HINT)
    done = int(contents.get("global_step", 0))
    require(done <= algo.optimizer_steps, "algo.steps", algo.cfg.steps,
            f"at least the checkpoint's {done // algo.optimizer_steps_per_batch} steps ({path} has trained that "
            "far: a run with fewer would record its policy as a shorter run's)")
    return done


def offline_resume_step(path: str, algo: Algorithm, trainer_cfg) -> int | None:
    """Where an offline algorithm continues the checkpoint ``path``: its step (:func:`check_checkpoint_steps`),
    or None -- it trains from step 0 again, as before offline runs resumed, with a warning: the result equals
    an uninterrupted run's -- when its fit does not read step-indexed batches
    (``pipeline/baselines.offline_resumable``: DDP, gradient accumulation, an epoch or batch limit), when the
    checkpoint has no optimizer state, or when the algorithm's learning rate decays over ``algo.steps``
    (``resume_may_extend`` false) and the checkpoint does not record over how many steps (written by an
    older infalign). A recorded length other than ``algo.steps`` is refused: the run would be neither."""
    from infalign.pipeline.baselines import offline_resumable

    why, contents = None, None
    if not offline_resumable(trainer_cfg):
        why = "its batches are not a function of the step under DDP, gradient accumulation or an epoch/batch limit"
    else:
        contents = checkpoint_contents(path)
        total = contents.get("schedule_steps")
        if not contents.get("optimizer_states"):
            why = "the checkpoint holds no optimizer state"
        elif not algo.resume_may_extend and total is None:
            why = "the checkpoint does not record the length of its learning-rate schedule (an older checkpoint)"
        elif not algo.resume_may_extend:
            require(int(total) == algo.cfg.steps, "algo.steps", algo.cfg.steps,
                    f"the checkpoint's {total}: {algo.name}'s learning rate decays over algo.steps, so a resume "
                    "with another number would be neither run", "set it back, or delete the checkpoints to start over")
    if why is not None:
        log.warning("ckpt_path=%s: %s trains from step 0 again (%s); the result equals an uninterrupted run's",
                    path, algo.name, why)
        return None
    return check_checkpoint_steps(path, algo, contents)


def user_tags(tags) -> list[str]:
    """``tags`` as a list: one string is one tag (``tags=baseline`` was split into letters), a list of
    strings as given; anything else is a ConfigError naming ``tags``."""
    if tags is None:
        return []
    if isinstance(tags, str):
        return [tags]
    values = OmegaConf.to_container(tags) if OmegaConf.is_config(tags) else tags
    require(isinstance(values, list) and all(isinstance(t, str | int | float) and not isinstance(t, bool)
                                             for t in values),
            "tags", values, "a list of strings (or one string), e.g. tags=[baseline,v2]")
    return [str(t) for t in values]


def name_run(cfg: DictConfig, procedure: Procedure, transform: Transform, algo: Algorithm) -> str:
    """The run's name -- ``run_name`` if set, else :func:`record.run_name` (e.g. ``bon4-exp-t4-b20``;
    ``-pooled`` appended for a reward calibrated among all prompts' samples (``calibration.scope=pooled``,
    the method ``identity[pooled]``)), then ``-s<seed>`` for a seed other than 0 and ``-r<r>`` for
    ``replica`` r > 0, so a method's control, the seeds and the replicas of a sweep's W&B group are told
    apart (a given ``run_name`` too) -- and
    its tags -- ``tags`` then procedure, transform and ``t=<t>`` (an online algorithm's: an offline
    baseline reads none), algo, ``beta=<b>`` (``kl_target=<k>`` when set), ``steps=<n>`` (BoN-SFT's KL
    knob), ``calibration=pooled``, data source, ``seed=<s>`` and ``replica=<r>`` -- written into
    ``cfg.run_name`` / ``cfg.tags``, where logger entries read them (``name: ${run_name}``)."""
    replica = int(cfg.get("replica", 0))  # an independent re-training (A/A control): its own name and tag
    seed = int(cfg.get("seed", 0))
    pooled = record.pooled_calibration(cfg, algo)  # the method identity[pooled]: its own name and tag
    # the seed and replica suffixes also on a run_name given (a seed sweep named its runs alike)
    name = ((cfg.get("run_name") or (record.run_name(procedure, transform, algo) + ("-pooled" if pooled else "")))
            + (f"-s{seed}" if seed else "") + (f"-r{replica}" if replica else ""))
    # the KL knob: kl_target when set (the beta it picks is known only after calibration), else beta
    knob = getattr(algo, "kl_target", None)
    beta = ([f"kl_target={knob:g}"] if knob is not None else [f"beta={algo.beta:g}"] if algo.beta is not None
            else [])
    # the transform (and its t) only where the algorithm trains on one: an offline baseline's config keeps
    # the default transform it never reads; BoN-SFT's knob is its step count
    reads = [transform.kind, *([f"t={transform.t:g}"] if isinstance(getattr(transform, "t", None), float | int)
                               else [])] if algo.online else []
    steps = [f"steps={algo.cfg.steps}"] if "algo.steps" in algo.kl_knob_keys else []
    generated = [procedure.label, *reads, algo.name, *beta, *steps, *(["calibration=pooled"] if pooled else []),
                 cfg.data.source, f"seed={seed}", *([f"replica={replica}"] if replica else [])]
    with open_dict(cfg):
        cfg.run_name = name
        cfg.tags = list(dict.fromkeys([*user_tags(cfg.get("tags")), *generated]))
    return name


def run(cfg: DictConfig) -> dict:
    """All stages; returns metrics. Any failure -- an invalid config included -- leaves a
    ``metrics.json`` with ``status: failed`` (``interrupted`` for Ctrl-C) and its error, and the
    logger, once started, is finished (marked failed; a run refused before it starts has no logger run)."""
    out_dir = Path(cfg.paths.run_dir)
    # SIGTERM -> Terminated here too: a sweep's jobs run in joblib workers, which main() does not reach (a
    # parallel sweep's job has hydra_main's one-shot handlers instead: apps/sweep_stop.py)
    parallel = sweep_stop.parallel_job()
    with contextlib.nullcontext() if parallel else terminate_on_sigterm(), run_dir_lock(out_dir):
        try:  # before the try below: never write a failure record into another run's dir
            check_run_dir(cfg, out_dir)
        except ConfigError:  # a bad value is named first (review: seed=abc in a taken dir named only the dir)
            validate(cfg)
            raise
        if parallel and (marker := stop_requested(sweep_stop.sweep_dir())) is not None:
            raise sweep_stop.NotStarted(marker)  # (stopped since parallel_job looked: the parent knew no pid here)
        (out_dir / NOT_STARTED).unlink(missing_ok=True)  # (a stopped sweep's job, now started)
        name = None
        try:
            procedure, transform, algo = validate(cfg)
            name = name_run(cfg, procedure, transform, algo)
            # the config is valid: now the heavy imports (torch models, Lightning, transformers), frozen
            import_frozen("infalign.apps.train_stages")
            from infalign.apps import train_stages
        except BaseException as exc:
            # a failed job leaves a record a sweep report can list
            write_failure(out_dir, failure_record(cfg, name, exc, {}))
            raise
        return train_stages.run_stages(cfg, procedure, transform, algo, name)  # records its own failures



@contextlib.contextmanager
def run_dir_lock(out_dir: Path):
    """Hold an exclusive, non-blocking ``flock`` on ``<run dir>/.run.lock`` for the whole run: a second
    run started on the same dir (a repeated command, a resume while the first still runs) is a
    ConfigError before it touches anything -- two runs had interleaved their checkpoints and the
    second's record replaced the first's. The ranks of one distributed run share the dir: only rank 0
    locks. The lock goes with the process (no stale lock after a kill). While the run holds it the file
    holds its pid (opened without truncating: a refused second run leaves it), which a parallel sweep's parent
    signals to stop the run (``apps/sweep_stop.running_job_pids``); it is emptied when the run ends."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        fcntl = None
    if fcntl is None or distributed.launch_rank() != 0:
        yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / RUN_LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError("hydra.run.dir", str(out_dir), "a directory no other run is using",
                              "another infalign-train process is running in it; wait for it, or leave "
                              "hydra.run.dir unset for a new unique dir") from None
        except OSError as exc:  # a filesystem without flock (Lustre noflock, NFS without lockd)
            log.warning("cannot lock %s (%s): running without the run-dir lock", out_dir / RUN_LOCK, exc)
            locked = False  # (the pid is still written: a parallel sweep's parent finds the run to stop)
        else:
            locked = True
        _write_pid(handle, f"{os.getpid()}\n")
        try:
            yield
        finally:
            _write_pid(handle, "")
            if locked:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _write_pid(handle, text: str) -> None:
    """The run lock's content (:func:`run_dir_lock`): the running process's pid, or nothing."""
    with contextlib.suppress(OSError):
        handle.seek(0)
        handle.truncate()
        handle.write(text)
        handle.flush()


def write_failure(out_dir: Path, rec: dict) -> Path:
    """Record a failed / interrupted run in ``metrics.json`` -- unless that already records a finished run
    (a resume refused in a finished run's dir, a failure after the record was written): the finished
    results stay, and the attempt's record goes to ``record.FAILED_ATTEMPT`` (a sweep lists it as failed)."""
    path = out_dir / "metrics.json"
    if record.is_finished(path):
        path = out_dir / record.FAILED_ATTEMPT
        log.warning("%s records a finished run: kept; this attempt's failure is recorded in %s",
                    out_dir / "metrics.json", path)
    atomic_write_json(path, rec)
    return path


def continue_command(out_dir: Path) -> str:
    """What to run to continue the interrupted run in ``out_dir``: the run's own overrides with its
    dir and ``ckpt_path=last`` (when it left a checkpoint; without one the dir is free for a new run:
    :func:`check_run_dir`), or for a sweep's job the sweep again in its dir with ``last_or_new``."""
    from infalign.pipeline.policy_cache import continue_command_line

    where = f"recorded as interrupted in {out_dir / 'metrics.json'}"
    if (sweep := sweep_stop.sweep_dir()) is not None:
        return (f"{where}; continue the sweep with the same command and hydra.sweep.dir={sweep} "
                "ckpt_path=last_or_new (finished jobs are kept, this one resumes)")
    command, ckpt = continue_command_line(out_dir, task_overrides())
    return f"{where}{'' if ckpt else ' (before its first checkpoint)'}; continue with: {command}"


SIGTERM_EXIT = 143
SIGINT_EXIT = 130  # 128 + SIGINT: the shell's status of a command stopped by Ctrl-C (Lightning exits 1 instead)


@contextlib.contextmanager
def terminate_on_sigterm():
    """Within: SIGTERM raises :class:`Terminated` (in the main thread; elsewhere nothing changes).
    Lightning's own SIGTERM handling during ``fit`` (``SIGTERMException``, a ``SystemExit`` with no
    code: exit status 0) is counted as the same by :func:`terminated`.

    Python drops an exception raised where nothing can receive it -- in a ``__del__``, a weakref or
    ``gc`` callback, a generator's ``finally`` when it is collected -- printing "Exception ignored"
    (``sys.unraisablehook``); a SIGTERM arriving there was lost and the run went on to exit 0 (seen
    in Lightning's ``Profiler.__del__``). Within this block such a dropped :class:`Terminated` is
    delivered again ``SIGTERM_RETRY_S`` later, outside the finaliser; and a block that still ends
    normally after a SIGTERM (a retry not yet due, an exception CPython clears without any hook)
    raises :class:`Terminated` as it exits, so a SIGTERM always ends the process with 143."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    retries: list[threading.Timer] = []
    previous_hook = sys.unraisablehook

    def handler(signum, frame):
        received.append(signum)
        raise Terminated("terminated by SIGTERM")

    def unraisable(info):
        if isinstance(info.exc_value, Terminated):  # the handler's exception, dropped: send it again
            retry = threading.Timer(SIGTERM_RETRY_S, os.kill, (os.getpid(), signal.SIGTERM))
            retry.daemon = True
            retries.append(retry)
            retry.start()
            return
        previous_hook(info)

    previous = signal.signal(signal.SIGTERM, handler)
    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        for retry in retries:
            retry.cancel()
        sys.unraisablehook = previous_hook
        signal.signal(signal.SIGTERM, previous)
    if received:  # the block ended normally although a SIGTERM came: its exception was swallowed
        raise Terminated("terminated by SIGTERM")


SIGTERM_RETRY_S = 0.05


def terminated(exc: BaseException) -> bool:
    """SIGTERM: :class:`Terminated`, the ``SystemExit`` Lightning raises after handling one, or
    Lightning's own ``SIGTERMException``."""
    return (isinstance(exc, Terminated) or isinstance(exc.__context__, Terminated)
            or type(exc).__name__ == "SIGTERMException")


def interrupted(exc: BaseException) -> bool:
    """Ctrl-C or SIGTERM: a ``KeyboardInterrupt`` (:class:`Terminated` included), the ``SystemExit(1)``
    Lightning raises after handling one, or its ``SIGTERMException``."""
    return isinstance(exc, KeyboardInterrupt) or terminated(exc) or (
        isinstance(exc, SystemExit) and isinstance(exc.__context__, KeyboardInterrupt))


def failure_record(cfg: DictConfig, name: str | None, exc: BaseException, timings: dict) -> dict:
    """``metrics.json`` of a run that did not finish: ``status`` (``failed`` / ``interrupted``), the
    error, the stage timings so far, the run's overrides and the config (unresolvable values left as
    written)."""
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # the error may be in resolving the config itself
        config = OmegaConf.to_container(cfg, resolve=False)
    if terminated(exc):
        status, error = "interrupted", "Terminated: stopped by SIGTERM (kill, or a scheduler's time limit)"
    elif interrupted(exc):
        status, error = "interrupted", "KeyboardInterrupt: interrupted by the user (Ctrl-C)"
    else:
        status, error = "failed", f"{type(exc).__name__}: {exc}"
    return RunRecord(run_name=name, status=status, error=error, timings=timings, overrides=task_overrides(),
                     config=config).to_json()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    if sweep_stop.parallel_job():
        with sweep_stop.one_shot_stop() as received:
            return parallel_job(cfg, received)
    return train_job(cfg)


def parallel_job(cfg: DictConfig, received: list[int]) -> float | None:
    """A job of a parallel sweep (``hydra/launcher=local_parallel``; apps/sweep_stop.py): not started once the
    sweep is stopped (``NOT_STARTED``); interrupted, it is recorded as always, stops the sweep, and returns no
    objective instead of raising (joblib would abort the sweep and kill the other running jobs)."""
    where, run_dir = sweep_stop.sweep_dir(), Path(cfg.paths.run_dir)
    who, started = f"job {run_dir.name}", time.time()
    try:
        if (marker := stop_requested(where)) is not None:
            raise sweep_stop.NotStarted(marker)
        return train_job(cfg)
    except sweep_stop.NotStarted as stopped:
        mark_not_started(run_dir, stopped.marker)
        log.warning("not started: %s", stop_reason(stopped.marker))
        return None
    except BaseException as exc:
        if not interrupted(exc):
            raise
        name = "SIGTERM" if terminated(exc) else "SIGINT"
        request_stop(where, name, who)
        if sweep_stop.recorded_since(run_dir, started):
            log.warning("job stopped by %s and recorded; the sweep stops: no new job starts (%s)", name, where)
        else:  # (the signal came before the run could record anything: while it took its dir, a few ms; review)
            mark_not_started(run_dir, stop_requested(where) or {"signal": name, "by": who})
            log.warning("job stopped by %s before it started: %s; the sweep stops: no new job starts (%s)", name,
                        "its earlier record stands" if (run_dir / "metrics.json").exists() else "not started", where)
        return None
    finally:
        if received:  # (a stop this job took without an exception reaching here: the sweep stops all the same)
            request_stop(where, sweep_stop.SIGNAL_NAMES[received[0]], who)


def train_job(cfg: DictConfig) -> float | None:
    """One run (:func:`run`) as a Hydra job: its objective, or ``None`` for a failed job of a sweep that goes on."""
    from hydra.core.hydra_config import HydraConfig

    try:
        metrics = run(cfg)
        distributed.shutdown()
    except Exception as exc:
        # In a sweep one failed job must not cancel the rest: it is recorded (metrics.json with
        # status=failed, W&B run marked failed) and returns no objective (None); the sweep's end lists
        # the failed jobs and exits non-zero (apps/hydra_callbacks.py). A single run fails loudly.
        # None, not NaN: the Optuna sweeper records a trial without a float objective as FAIL and goes
        # on, while for NaN its fallback `tell(FAIL, values=[nan])` raised and ended the whole study.
        if HydraConfig.get().mode.name == "MULTIRUN" and cfg.continue_on_failure:
            log.error("job failed; continuing the sweep (continue_on_failure=true): %s: %s",
                      type(exc).__name__, exc, exc_info=config_error_in(exc) is None)
            return None
        config_error = config_error_in(exc)
        if config_error is not None:
            exit_on_config_error(config_error)
        raise
    return objective(cfg, metrics)


def config_error_in(exc: BaseException) -> ConfigError | None:
    """``exc`` if it is a ConfigError, else the one it wraps (e.g. raised by a resolver such as
    ``${bon_beta:N}`` and re-raised by OmegaConf as an InterpolationResolutionError), else None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ConfigError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def main() -> None:
    """``infalign-train``: Hydra's command line, plus ``-v`` (full tracebacks, as ``HYDRA_FULL_ERROR=1``).
    A run stopped by SIGTERM exits with 143 (:class:`Terminated`), by Ctrl-C with 130 (as the shell reports a
    command Ctrl-C stopped; Lightning would exit 1, the status of a failure)."""
    if "-v" in sys.argv[1:]:
        sys.argv.remove("-v")
        os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        with terminate_on_sigterm(), hydra_refusals_exit_2():
            hydra_main()
    except BaseException as exc:
        sweep_stop.finish_stops()  # (Hydra skips the end callbacks after an exception)
        if terminated(exc) or sweep_stop.parent_stop_signal() == "SIGTERM":
            print(f"infalign-train: stopped by SIGTERM ({_stopped_note()})", file=sys.stderr)
            raise SystemExit(SIGTERM_EXIT) from None
        if interrupted(exc) or sweep_stop.parent_stop_signal() == "SIGINT":
            print(f"infalign-train: interrupted (Ctrl-C; {_stopped_note()})", file=sys.stderr)
            raise SystemExit(SIGINT_EXIT) from None
        raise
    if stopped := sweep_stop.parent_stop_signal():  # a parallel sweep stopped, every job of it finished
        print(f"infalign-train: stopped by {stopped} ({_stopped_note()})", file=sys.stderr)
        raise SystemExit(SIGTERM_EXIT if stopped == "SIGTERM" else SIGINT_EXIT)


def _stopped_note() -> str:
    """What a stopped command left (a sweep: ``-m``, or a sweep entry's ``hydra.mode: MULTIRUN``, whose start
    the sweep's callback marks): a run is recorded as interrupted, and so is every job of a sweep that was
    running -- under a parallel launcher too (apps/sweep_stop.py), unless a second signal aborted it (joblib
    then SIGKILLs its running jobs, which may leave no record: their checkpoints stand). The sweep again with
    ``ckpt_path=last_or_new`` continues them."""
    from infalign.apps.hydra_callbacks import MULTIRUN_STARTED

    if not MULTIRUN_STARTED.is_set() and not {"-m", "--multirun"} & set(sys.argv[1:]):
        return "recorded as interrupted; once the run had started, the command that continues it is logged above"
    sweep = sweep_stop.stopped_sweep_dir()
    again = (f"the same command with {f'hydra.sweep.dir={sweep} ' if sweep else 'its hydra.sweep.dir and '}"
             "ckpt_path=last_or_new continues every job from its last checkpoint")
    if sweep_stop.parent_aborted():
        return (f"aborted by a second signal: the parallel launcher killed the running jobs, which may have left no "
                f"record; {again}")
    if summary := sweep_stop.stop_summary():  # (a stopped parallel sweep: what its records say)
        return f"{summary}; {again}"
    return f"a job that was running is recorded as interrupted; {again}"


def objective(cfg: DictConfig, metrics: dict) -> float:
    """``eval/<objective.judge>/<metric>`` (:func:`objective_metric`), minus
    ``objective.kl_penalty * max(0, KL - objective.kl_budget)`` when a budget is set."""
    cols = metrics["eval"]["judges"][cfg.objective.judge]
    value = float(cols[objective_metric(cfg, instantiate_checked(cfg.procedure))]["mean"])
    budget = cfg.objective.get("kl_budget")
    if budget is not None:  # over-budget runs lose kl_penalty per nat of excess KL
        value -= float(cfg.objective.kl_penalty) * max(0.0, cols["kl"]["mean"] - float(budget))
    return value


if __name__ == "__main__":
    main()
