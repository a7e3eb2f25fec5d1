"""The stages of ``infalign-train`` once its config is valid: world -> calibrate -> train -> evaluate
-> record (``apps/train.run`` validates first, then imports this module: torch models, Lightning and
transformers are imported only by a run that will compute)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf, open_dict

from infalign.apps.config import (
    apply_threads,
    instantiate_callbacks,
    instantiate_logger,
    instantiate_trainer,
    settings_defaults,
    task_overrides,
)
from infalign.apps.train import (
    RESUME,
    check_checkpoint_steps,
    checkpoint_contents,
    continue_command,
    failure_record,
    interrupted,
    offline_resume_step,
    optimal_transform_entry,
    resolve_ckpt,
    write_failure,
)
from infalign.infra import distributed
from infalign.infra.cache import atomic_dir
from infalign.math.finite_k import FiniteK, seen_through_table
from infalign.math.procedures import Procedure
from infalign.math.theory import applies as theory_applies
from infalign.math.transforms import Raw, Transform
from infalign.models.hf_progress import save_model
from infalign.pipeline import loggers, record
from infalign.pipeline.evaluate import evaluate_policy
from infalign.pipeline.fit import calibration_table, check_trained_policy, fit_policy
from infalign.pipeline.kl_target import beta_for_target
from infalign.pipeline.policy_cache import (
    TRANSFORM_VALUES,
    check_finished_run,
    check_resume,
    check_resume_early,
    finished_record_to_keep,
    policy_key,
    resume_settings,
    run_code,
    same_transform_values,
    save_overrides,
    train_or_load,
    transform_values,
)
from infalign.pipeline.run_record import RunRecord, missing_eos_penalty, other_eval_horizon
from infalign.pipeline.settings import training_seed
from infalign.pipeline.trainer import probe_trainer, stage_trainers
from infalign.pipeline.world import check_ranks_agree, load_world  # load_world checks every path/name first
from infalign.training.algorithms import Algorithm

log = logging.getLogger("infalign.apps.train")


def record_effective_beta(cfg: DictConfig, beta: float, logger) -> None:
    """``algo.beta`` := the beta ``algo.kl_target`` chose, in the config the run records
    (``metrics.json``) and in its logger's (W&B's ``algo.beta`` column), which were written with the
    configured value when the run started."""
    with open_dict(cfg):
        cfg.algo.beta = float(beta)
    if logger is not None:
        logger.log_hyperparams({"algo": OmegaConf.to_container(cfg.algo, resolve=True)})


def theory_target(cfg: DictConfig, algo: Algorithm, transform: Transform) -> tuple[Transform, float] | None:
    """The theory beside the run: ``(transform, beta)`` of the tilted policy the algorithm aims at
    (``Algorithm.theory_target``), or None where the calibrated-space theory predicts nothing -- a raw
    reward, or a reward calibrated among all prompts' samples (docs/method.md (2.4); a transform-trained
    run only, :func:`~infalign.pipeline.record.pooled_calibration`: an offline baseline ranks no reward,
    so ``calibration.scope`` leaves its (5.8) prediction standing), or one with a missing-EOS penalty ``p > 0``
    (``algo.missing_eos_penalty``: the target is the tilt of ``Phi(C) - p * 1{cut}``, docs/method.md (6.1b),
    no function of C alone), or one evaluated at another horizon than it trained at
    (``pipeline/run_record.other_eval_horizon``).
    A transform-trained run's transform is the one it trains on, ``Phi`` seen through its ``calibration.K``-sample
    table (``math/finite_k.FiniteK``, docs/method.md (4.11)); an offline baseline's (5.8) target is kept."""
    target = algo.theory_target(transform)
    if target is None or not theory_applies(target[0], record.pooled_calibration(cfg, algo)):
        return None
    if missing_eos_penalty(cfg) or other_eval_horizon(cfg):
        return None
    # trained on Phi(C_hat) of a K-sample table: the theory tilts Phi_K (4.11) -- not for the offline baselines'
    # (5.8) target, nor the optimal transform, whose theory the report draws as the exact optimal frontier
    if algo.trained_n is None and not optimal_transform_entry(cfg):
        return seen_through_table(target[0], cfg.calibration), target[1]
    return target


def run_stages(cfg: DictConfig, procedure: Procedure, transform: Transform, algo: Algorithm, name: str) -> dict:
    """Every stage of a validated run; returns its metrics (and writes its files on rank 0). A
    failure writes the failure record (with the ``<stage>_s`` timings so far), then marks the
    logger's run failed, and propagates."""
    out_dir = Path(cfg.paths.run_dir)
    cache_dir = Path(cfg.paths.cache_dir)
    timings: dict[str, float] = {}
    logger = None
    recorded = False  # metrics.json holds this attempt's finished record: an interruption after it fails nothing
    try:
        apply_threads(cfg.threads)  # auto = usable cores // concurrent jobs (infra/threads.py)
        L.seed_everything(training_seed(cfg), workers=True, verbose=False)
        # conf/logger, conf/trainer, conf/callbacks, instantiated (a bad value fails here, before compute)
        logger = instantiate_logger(cfg.logger)
        make_trainer = instantiate_trainer(cfg.trainer)
        probe_trainer(make_trainer)  # what Lightning refuses (an unknown argument, a precision): now, not later
        trainers = stage_trainers(make_trainer, instantiate_callbacks(cfg.get("callbacks")),
                                  logger, log_every_n_steps=int(cfg.log_every_n_steps),
                                  deterministic=bool(cfg.deterministic))
        # a resume: what the config alone says about the checkpoint's settings is checked now, before compute,
        # and the logger starts only once the whole check has passed (a refused resume never touches the
        # run's W&B run)
        ckpt = resolve_ckpt(cfg, out_dir)
        fit_ckpt = ckpt  # what training continues (None: an offline algorithm that restarts from step 0)
        default = settings_defaults(cfg)  # what a setting the checkpoint's settings or the record lack stands for
        if ckpt is not None:
            check_resume_early(Path(ckpt).parent, cfg, algo.beta if algo.kl_target is None else None,
                               str(cfg.ckpt_path), default)
            # where training resumes: the checkpoint's step, or 0 for an offline algorithm that restarts
            resume_step = (check_checkpoint_steps(ckpt, algo) if algo.online
                           else offline_resume_step(ckpt, algo, cfg.trainer))
            if resume_step is None:
                fit_ckpt, resume_step = None, 0
        elif cfg.ckpt_path == "last_or_new":  # nothing to resume: a finished run here must be this config's
            check_finished_run(out_dir, cfg, default)
        keep = None  # a finished record of this run to keep as it is, once its models are known to be the record's
        if cfg.ckpt_path in RESUME and (ckpt is None or trained_steps(ckpt) >= algo.optimizer_steps):
            # a finished run here with nothing left to train: kept if evaluated as asked, under this code, from
            # the same models (below); refused if evaluated otherwise
            keep = finished_record_to_keep(out_dir, cfg, str(cfg.ckpt_path), default)
        started = logger is not None and ckpt is None and keep is None
        if started:  # the run exists from now on, so a job that fails in any stage shows up (failed)
            loggers.start(logger, OmegaConf.to_container(cfg, resolve=True), trains=True)

        with stage("world", timings, expected_world(cfg)):
            world = load_world(cfg, cache_dir)  # per process (the toy build is lock-protected, single-rank)
        if "reward_train_s" in world.stats:  # reward-model training is its own stage inside the world's
            timings["reward_train_s"] = world.stats["reward_train_s"]
        distributed.init_from_env(cfg.trainer.accelerator)  # from here on every stage sees the same ranks
        check_ranks_agree(distributed.all_gather_objects((world.reference_fingerprint, world.reward_fingerprint)))
        # the transform's values Phi(u) (a custom callable's code is in no config or digest): what the record and
        # the checkpoints' settings hold, compared by a keep and a resume
        values = transform_values(transform) if algo.online else None
        if keep is not None:  # kept only if trained on these models (a local dir's files, a hub commit) and values
            if not same_transform_values((keep.get("method_info") or {}).get(TRANSFORM_VALUES, values), values):
                log.warning("%s records this run trained on other values of its transform Phi(u) (a custom "
                            "transform's code or parameters changed): not kept", out_dir / "metrics.json")
            elif (keep.get("world") or {}).get("world_id") != world.stats["world_id"]:
                log.warning("%s records this run from other models (world_id %s, now %s: a model's files or commit "
                            "changed at the same name): running it again", out_dir / "metrics.json",
                            (keep.get("world") or {}).get("world_id"), world.stats["world_id"])
            elif (keep.get("world") or {}).get("data_id") != world.stats["data_id"]:
                log.warning("%s records this run on other prompts (data_id %s, now %s: a data file changed at the "
                            "same path, or a record from before data_id): running it again", out_dir / "metrics.json",
                            (keep.get("world") or {}).get("data_id"), world.stats["data_id"])
            else:  # nothing to do
                log.info("%s records this run, finished with these settings, code and models: nothing to do "
                         "(kept as it is)", out_dir / "metrics.json")
                if distributed.rank() == 0 and (restored := record.restore_views(out_dir, RunRecord.from_json(keep),
                                                                                 procedure)):
                    log.info("wrote the kept run's missing %s from its record", ", ".join(p.name for p in
                                                                                        restored.values()))
                log_kept_record(logger, keep, out_dir, cfg)
                if distributed.rank() == 0:  # an earlier refused attempt's failure no longer stands
                    (out_dir / record.FAILED_ATTEMPT).unlink(missing_ok=True)
                return keep
            if logger is not None and ckpt is None:
                started = True
                loggers.start(logger, OmegaConf.to_container(cfg, resolve=True), trains=True)

        table, calib_hit = None, None
        with stage("calibration", timings, f"{cfg.data.train_prompts} prompts x K={cfg.calibration.K} reference "
                   "samples (instant when cached)"):
            if algo.needs_calibration(transform):
                table, calib_hit = calibration_table(world, cfg, trainers.predict, cache_dir)
            if algo.kl_target is not None:  # (transform=optimal refused by validate)
                algo.cfg.beta = beta_for_target(algo.kl_target, transform, procedure, table)
                log.info("algo.kl_target=%g -> beta=%.4g", algo.kl_target, algo.cfg.beta)
                record_effective_beta(cfg, algo.cfg.beta, logger if started else None)

        settings = resume_settings(cfg, world, algo.beta)
        if values is not None:
            settings[TRANSFORM_VALUES] = values
        ckpt_dir = out_dir / "checkpoints"
        resumed = None  # a resume: what it continued, and whether other code trained the checkpoint
        if ckpt is not None:  # was the checkpoint (this run dir's or another's) trained with these settings?
            changed = check_resume(Path(ckpt).parent, settings, True, str(cfg.ckpt_path), default)
            resumed = {"checkpoint": str(ckpt), "from_step": resume_step, "changed": changed}
            if logger is not None:  # the logged step counts RL steps (batches), the checkpoint optimizer steps
                loggers.start(logger, OmegaConf.to_container(cfg, resolve=True),
                              resume_step=resume_step // algo.optimizer_steps_per_batch)

        def train() -> dict | None:
            # what the checkpoints about to be written here depend on (also when they continue another dir's)
            fresh_here = ckpt is None or Path(ckpt).parent.resolve() != ckpt_dir.resolve()
            if fresh_here and distributed.rank() == 0:
                check_resume(ckpt_dir, settings, False, str(cfg.ckpt_path))
                save_overrides(ckpt_dir, task_overrides() or [])
            offline = fit_policy(world, cfg, algo, transform, table, trainers, fit_ckpt)
            check_trained_policy(world)  # a diverged policy: a named error, before the policy cache stores it
            return offline

        policy_hit, policy_id = None, None  # policy_id: the trained weights' cache key (None: not cached)
        with stage("train", timings, f"{algo.cfg.steps} {algo.name} steps"):
            if cfg.get("policy_cache", True) and ckpt is None and not distributed.is_distributed():
                policy_id = policy_key(cfg, world, algo.beta, transform if algo.online else None)
                policy_hit, offline = train_or_load(world.policy, policy_id, cache_dir, train, str(out_dir))
            else:
                offline = train()

        theory_transform, theory_beta = theory_target(cfg, algo, transform) or (Raw(), 0.0)
        with stage("eval", timings, f"{cfg.data.eval_prompts} prompts x M={cfg.eval.samples} samples, "
                   "policy and reference (each instant when cached)"):
            ev = evaluate_policy(world, cfg, procedure, theory_transform, theory_beta, trainers.predict, cache_dir,
                                 policy_id)
        th = ev.theory
        if th and isinstance(theory_transform, FiniteK):  # which theory the record carries (docs/method.md §4.1)
            th["table"] = {"K": theory_transform.k, "smoothing": theory_transform.smoothing}
        kl = ev.judges["reward_model"]["kl"].mean
        info = record.method_info(cfg, algo, transform, procedure)
        if values is not None:
            info[TRANSFORM_VALUES] = values
        rec = RunRecord(
            run_name=name, procedure=procedure.label, transform=transform.label,
            method=info.pop("method"), method_info=info, algo=algo.name, beta=algo.beta,
            kl_target=algo.kl_target, steps=algo.cfg.steps, seed=int(cfg.seed), eval=ev,
            kl_ratio=(kl / th["kl"]) if th and th["kl"] > 0 else None,
            timings=timings, cache={"toy_built": world.stats.get("toy_built"), "calibration_hit": calib_hit,
                                    "policy_hit": policy_hit, "eval_reference_hit": ev.reference_pool_cache_hit,
                                    "eval_policy_hit": ev.policy_pool_cache_hit},
            resumed=resumed,
            offline=offline,  # an offline baseline's training data (pairs, N, picks cut without a stop token)
            code=run_code(),  # what a re-run must match to keep this record (policy_cache.finished_record_to_keep)
            world={k: v for k, v in world.stats.items() if isinstance(v, int | float | str | bool)},
            data_reports=world.stats.get("data_reports"),  # real data: usable / malformed / too_long
            overrides=task_overrides(),  # the report's (Hydra rewrites .hydra/ for every later attempt here)
            config=OmegaConf.to_container(cfg, resolve=True),
        )
        metrics = rec.to_json()
        if distributed.rank() != 0:  # every rank holds the gathered metrics; rank 0 records them
            return metrics
        paths = record.write_record(out_dir, rec)  # metrics.json first: a plot that fails loses nothing
        recorded = True
        if cfg.save_policy:  # after the record (which removed the previous one's): a policy/ is its record's
            with atomic_dir(out_dir / "policy") as tmp:
                save_model(world.policy, world.tokenizer, tmp)
        paths.update(record.write_views(out_dir, rec, procedure))
        try:
            record.print_summary(rec, procedure)
        except Exception as exc:  # noqa: BLE001 - the run is recorded; printing it is a courtesy
            log.error("the run is recorded in %s, but printing its summary failed: %s: %s", paths["metrics"],
                      type(exc).__name__, exc)
    except BaseException as exc:
        # the failure record first: a logger whose finish fails or hangs must not lose or replace
        # the run's own error
        if recorded:  # stopped after the record: the run is recorded whole, not a failed attempt
            log.warning("%s records this run, finished; stopped while saving its policy/ or writing its views "
                        "(%s: %s)", out_dir / "metrics.json", type(exc).__name__, exc)
        else:
            write_failure(out_dir, failure_record(cfg, name, exc, timings))
            if interrupted(exc) and distributed.rank() == 0:
                log.warning(continue_command(out_dir))
        try:
            loggers.close(logger, 1)
        except Exception as close_exc:  # noqa: BLE001 - the stage's error is the one to propagate
            log.warning("closing the logger of a failed run failed: %s", close_exc)
        raise
    # the run is recorded (metrics.json: finished): a logger that fails now loses its own copy, not the run
    logged = False  # the record went through the logger and it closed: marked, so a kept re-run skips it
    try:
        if logger is not None:
            loggers.log_record(logger, rec, paths)
            logged = True
    except Exception as exc:  # noqa: BLE001 - reported, the results stand
        log.error("the run finished and is recorded in %s, but its logger failed: %s: %s",
                  out_dir / "metrics.json", type(exc).__name__, exc)
    finally:  # always: an unfinished W&B run would be taken over by the process's next job (wandb.run)
        try:
            loggers.close(logger, 0)
        except Exception as exc:  # noqa: BLE001 - reported, the results stand
            logged = False
            log.error("closing the logger of a finished run failed: %s: %s", type(exc).__name__, exc)
        try:
            if logged:
                loggers.mark_logged(logger, out_dir)
        except Exception as exc:  # noqa: BLE001 - reported, the results stand (a kept re-run logs it again)
            log.error("the run was logged, but marking it in %s failed: %s: %s", out_dir / record.LOGGED,
                      type(exc).__name__, exc)
    return metrics


def log_kept_record(logger, keep: dict, out_dir: Path, cfg: DictConfig) -> None:
    """A kept run's record to a logger that has not recorded it (``loggers.log_kept``; rank 0). The
    record stands whatever the logger does: a failing logger is reported, not raised."""
    if logger is None or distributed.rank() != 0:
        return
    try:
        # the run's own config (with the beta an algo.kl_target chose: record_effective_beta), under this logger
        config = {**keep["config"], "logger": OmegaConf.to_container(cfg.logger, resolve=True)}
        if loggers.log_kept(logger, RunRecord.from_json(keep), record.run_files(out_dir), config, out_dir):
            log.info("the kept run's record was logged to %s (its summary; no training curves)", type(logger).__name__)
        else:
            log.info("%s has this run already (%s): not logged again", type(logger).__name__,
                     out_dir / record.LOGGED)
    except Exception as exc:  # noqa: BLE001 - reported, the record stands
        log.error("the run is kept as recorded in %s, but logging it failed: %s: %s", out_dir / "metrics.json",
                  type(exc).__name__, exc)


def trained_steps(ckpt: str) -> int:
    """The optimizer steps the checkpoint ``ckpt`` has trained (its ``global_step``)."""
    return int(checkpoint_contents(ckpt).get("global_step", 0))


@contextlib.contextmanager
def stage(name: str, timings: dict[str, float], expected: str) -> Iterator[None]:
    """Log a stage's start (with what to expect) and end, and record its wall time as
    ``timings[<name>_s]`` -- so ``train.log`` and non-TTY output show progress through a long
    first-use build."""
    log.info("stage %s: started (%s)", name, expected)
    t0 = time.perf_counter()
    yield
    timings[f"{name}_s"] = time.perf_counter() - t0
    log.info("stage %s: done in %.1fs", name, timings[f"{name}_s"])


def expected_world(cfg: DictConfig) -> str:
    """What loading the world costs: the toy world is built once per cache (minutes), then loaded."""
    if cfg.data.source == "toy":
        return ("toy world: loaded from the cache in seconds; the first use builds it -- about 1-3 min "
                "on 2 CPU cores at the default size")
    return "loading the policy, reference and reward models and the data"


