"""Hydra callbacks (registered in ``conf/hydra/default.yaml``).

:class:`FailedJobs` makes a multirun's outcome visible: with ``continue_on_failure`` a failed job
is recorded (``metrics.json`` with ``status: failed`` and its error) and the sweep goes on; at the
end the sweep prints ``k of n jobs failed: ...`` and exits with code 1, so a shell script, CI or
SLURM dependency sees the failure instead of a silent 0.

:class:`SweepTime` makes a sweep's cost visible: at the end it prints and writes
``sweep_time.json`` (wall time from the multirun's start, the jobs' own stage times summed from
their ``metrics.json`` ``timings``, policy-cache hits), which ``infalign-report`` shows.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from infalign.apps import sweep_stop
from infalign.errors import error_line
from infalign.infra.cache import atomic_write_json
from infalign.infra.sweeps import clear_stop, not_started, sweep_jobs
from infalign.pipeline.record import FAILED_ATTEMPT, read_record

log = logging.getLogger(__name__)


def job_failure(job_dir: Path) -> str | None:
    """Why the job in ``job_dir`` did not finish (``None`` if it did): its recorded status and error,
    or a missing / unreadable ``metrics.json`` (a job killed before it could record anything)."""
    path = job_dir / "metrics.json"
    attempt = job_dir / FAILED_ATTEMPT  # a failed attempt to resume a finished run (its metrics.json stays)
    if attempt.exists():
        why = job_failure_of(attempt)
        return f"this attempt {why or 'failed'} (metrics.json keeps the earlier finished run)"
    if not path.exists():
        return not_started(job_dir) or "no metrics.json (killed?)"
    return job_failure_of(path)


def job_failure_of(path: Path) -> str | None:
    """Why the record at ``path`` is not a finished run's (``None`` if it is)."""
    try:
        record = read_record(path)
    except (OSError, ValueError) as exc:  # RecordError is a ValueError
        return f"unreadable metrics.json ({type(exc).__name__})"
    if record.finished:
        return None
    error = error_line(record.error)
    return f"{record.status}: {error}" if error else record.status


def sweep_failures(sweep_dir: Path) -> tuple[int, dict[str, str]]:
    """``(n jobs, {job dir name: reason})`` over the job dirs of a sweep (those Hydra started:
    they hold ``.hydra/``)."""
    jobs = sorted((p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()),
                  key=lambda p: (len(p.name), p.name))  # 2 before 10
    failures = {p.name: reason for p in jobs if (reason := job_failure(p)) is not None}
    return len(jobs), failures


RESUMING = ("last", "last_or_new")  # ckpt_path values that continue runs in their dirs (apps/train.RESUME)


def previous_results(sweep_dir: Path) -> list[str]:
    """Job dirs of ``sweep_dir`` that already hold a run's results (``metrics.json`` or ``checkpoints/``)."""
    if not sweep_dir.is_dir():
        return []
    jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir()), key=lambda p: (len(p.name), p.name))
    return [p.name for p in jobs if (p / "metrics.json").exists() or (p / "checkpoints").exists()]


def recorded_overrides(job_dir: Path) -> list[str] | None:
    """A job dir's own overrides: its ``metrics.json``'s (finished or not), else those saved beside its
    checkpoints; None when neither can be read (``.hydra/`` is rewritten by every attempt)."""
    from infalign.pipeline.policy_cache import load_overrides

    try:
        overrides = read_record(job_dir / "metrics.json").overrides
        if overrides is not None:
            return [str(o) for o in overrides]
    except Exception:  # noqa: BLE001 - missing or unreadable: try the checkpoints' copy
        pass
    return load_overrides(job_dir / "checkpoints")


def grid_mismatches(config: DictConfig, sweep_dir: Path, taken: list[str]) -> list[str]:
    """``"job 1: algo.beta=0.6, now algo.beta=0.3"`` for each job dir in ``taken`` whose recorded values of
    this grid's swept keys differ from this grid's job of that number: Hydra numbers jobs by their
    place in the grid, so a resumed sweep with other values would run each job into another job's dir."""
    from infalign.apps.config import override_key

    jobs = sweep_jobs(config)
    if jobs is None:
        return []

    def values(overrides) -> dict[str, str]:
        return {override_key(o): o.split("=", 1)[1] for o in overrides if "=" in o}

    grid = [values(job) for job in jobs]
    swept = [k for k in grid[0] if len({job.get(k) for job in grid}) > 1] if len(grid) > 1 else []
    out = []
    for name in taken:
        old = recorded_overrides(sweep_dir / name) if name.isdigit() else None
        if old is None:
            continue
        i, recorded = int(name), values(old)
        new = grid[i] if i < len(grid) else {}
        differ = [k for k in swept if recorded.get(k) != new.get(k)]
        if i >= len(grid) or differ:
            was = ", ".join(f"{k}={recorded.get(k)}" for k in differ) or "a job"
            now = ", ".join(f"{k}={new.get(k)}" for k in differ) if i < len(grid) else "no such job"
            out.append(f"job {name}: {was}, now {now}")
    return out


def _refuse(allowed: str, hint: str, sweep_dir: Path) -> None:
    """Stop the multirun before any job: ``hydra.sweep.dir`` refused (one block, exit code 2). With full
    errors asked for, Hydra would turn a callback's exception into a warning and run the sweep anyway
    (each job then refusing its dir, the old records counting as this sweep's): the traceback is
    printed, and the sweep still stops."""
    import traceback

    from infalign.apps.config import exit_on_config_error
    from infalign.errors import CONFIG_ERROR_EXIT, ConfigError

    error = ConfigError("hydra.sweep.dir", str(sweep_dir), allowed, hint)
    exit_on_config_error(error)
    traceback.print_exception(error)
    raise SystemExit(CONFIG_ERROR_EXIT)


# Set when this process started a multirun (``-m``, or a sweep entry's ``hydra.mode: MULTIRUN``)
MULTIRUN_STARTED = threading.Event()


class FailedJobs(Callback):
    """At the start of a multirun: refuse a sweep dir that holds another sweep's results unless the
    sweep resumes (``ckpt_path=last`` / ``last_or_new``): each job would refuse its dir (it is another
    run's) *after* Hydra rewrote the job's ``.hydra/`` files, and the old ``metrics.json`` would count
    as this sweep's finished job. At the end: ``k of n jobs failed: <job>: <reason>; ...`` and exit
    code 1."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        MULTIRUN_STARTED.set()  # (this process launches a sweep's jobs: apps/train's closing line reads it)
        sweep_dir = Path(config.hydra.sweep.dir)
        taken = previous_results(sweep_dir)
        if taken and config.get("ckpt_path") not in RESUMING:
            _refuse("a directory without another sweep's results",
                    f"job dirs {taken[:8]}{' ...' if len(taken) > 8 else ''} hold results; leave hydra.sweep.dir "
                    "unset for a new unique dir, or resume that sweep (same overrides) with ckpt_path=last_or_new",
                    sweep_dir)
        mismatched = grid_mismatches(config, sweep_dir, taken) if taken else []
        if mismatched:
            _refuse("the same grid as the sweep it resumes",
                    f"{'; '.join(mismatched[:4])}{' ...' if len(mismatched) > 4 else ''}: Hydra numbers jobs by "
                    "their place in the grid, so other values would run into other jobs' dirs. To add runs, sweep "
                    f"them into a dir of their own under it (hydra.sweep.dir={sweep_dir}/more): infalign-report "
                    f"{sweep_dir} reads every job dir below it", sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        n, failures = sweep_failures(sweep_dir)
        if not failures:
            log.info("all %d jobs finished (%s)", n, sweep_dir)
            return
        listing = "; ".join(f"{job}: {reason}" for job, reason in failures.items())
        message = f"{len(failures)} of {n} jobs failed: {listing} (sweep dir {sweep_dir})"
        log.error(message)
        raise SystemExit(message)  # printed on stderr, exit code 1


def sweep_time_summary(sweep_dir: Path, wall_s: float, since: float | None = None) -> dict:
    """``{"wall_s", "jobs", "finished", "kept", "policy_cache_hits", "eval_pool_hits", "stage_s": {stage: summed
    seconds}}`` over the job dirs of ``sweep_dir`` (jobs without a readable ``metrics.json`` count as jobs only):
    the records' figures, those of jobs an earlier invocation finished included -- ``kept``: the finished records
    written before ``since`` (this invocation's start; a sweep run again with ``ckpt_path=last_or_new`` keeps
    them), whose stage times are that invocation's, not this one's; the cache hits are this invocation's jobs'
    alone (a kept job loaded nothing)."""
    jobs = [p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()]
    stages: dict[str, float] = {}
    finished = kept = hits = pool_hits = 0
    for job in jobs:
        try:
            record = read_record(job / "metrics.json")
            written = (job / "metrics.json").stat().st_mtime
        except (OSError, ValueError):
            continue
        finished += record.finished
        old = bool(record.finished and since is not None and written < since)
        kept += old
        hits += bool(record.cache.get("policy_hit")) and not old  # (a kept job loaded nothing this time)
        pool_hits += bool(record.cache.get("eval_policy_hit")) and not old
        for key, value in record.timings.items():
            stage = key.removesuffix("_s")
            stages[stage] = stages.get(stage, 0.0) + float(value)
    return {"wall_s": round(wall_s, 1), "jobs": len(jobs), "finished": finished, "kept": kept,
            "policy_cache_hits": hits, "eval_pool_hits": pool_hits,
            "stage_s": {k: round(v, 1) for k, v in sorted(stages.items())}}


def _earlier_walls(path: Path) -> list[float]:
    """The wall times of the sweep's earlier invocations in its dir (``ckpt_path=last_or_new`` continues a
    sweep there): the previous ``sweep_time.json``'s ``earlier_wall_s`` and its ``wall_s``, which the new file
    would otherwise overwrite with the last invocation's alone; [] without a readable one."""
    try:
        previous = json.loads(path.read_text())
        walls = [float(w) for w in previous.get("earlier_wall_s", [])] + [float(previous["wall_s"])]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return []
    return walls


class SweepTime(Callback):
    """At the end of a multirun: ``sweep: n jobs in m min wall (...)`` and ``sweep_time.json``."""

    def __init__(self) -> None:
        self.start = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.start = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        summary = sweep_time_summary(sweep_dir, time.time() - self.start, since=self.start)
        if earlier := _earlier_walls(sweep_dir / "sweep_time.json"):  # the sweep run again in its dir (a resume)
            summary["earlier_wall_s"] = earlier
        atomic_write_json(sweep_dir / "sweep_time.json", summary)
        log.info(sweep_time_line(summary))


def sweep_time_line(summary: dict) -> str:
    """The end-of-sweep line of :func:`sweep_time_summary`'s ``summary``: the wall time is this invocation's (with
    the earlier invocations' total when the sweep was run again in its dir), the job figures the records' --
    kept jobs' included, and said so."""
    stages = ", ".join(f"{k} {v / 60:.1f}" for k, v in summary["stage_s"].items())
    earlier = summary.get("earlier_wall_s") or []
    wall = f"{summary['wall_s'] / 60:.1f} min wall" + (
        f" (this invocation; {(summary['wall_s'] + sum(earlier)) / 60:.1f} over its {len(earlier) + 1} invocations "
        "in this dir, sweep_time.json)" if earlier else "")
    kept = summary.get("kept", 0)
    head = (f"sweep: {summary['jobs']} jobs ({summary['finished']} finished"
            + (f", {kept} of them kept from an earlier invocation" if kept else ""))
    if not summary["stage_s"]:  # records without stages (infalign-analyze's multirun): no caches or stages to count
        return f"{head}) in {wall}"
    return (f"{head}, {summary['policy_cache_hits']} trained policies and {summary['eval_pool_hits']} policy "
            f"evaluation pools loaded from the cache{' by the others' if kept else ''}) in {wall}; job stage minutes "
            "summed" + (" over every record, the kept ones' included" if kept else "") + f": {stages}")


class GracefulStop(Callback):
    """Under a parallel launcher (joblib: ``hydra/launcher=local_parallel``), a Ctrl-C or SIGTERM stops the sweep
    without losing its running jobs' records (apps/sweep_stop.py): the parent's handlers for the multirun,
    and its stop marker cleared when the multirun starts and ends. Other launchers are left alone (the basic
    launcher runs the jobs in this process, which records them itself)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if "joblib" not in str(config.hydra.launcher.get("_target_", "")).lower():
            return
        where = Path(config.hydra.sweep.dir)
        clear_stop(where)  # (a stopped invocation's: this one runs its jobs)
        stop = sweep_stop.ParallelStop(where)
        stop.install()
        sweep_stop.CURRENT.append(stop)
        sweep_stop.use_stoppable_backend()  # (its workers ignore the signals outside a job)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        for stop in sweep_stop.CURRENT:
            stop.uninstall()
            stop.finish()  # (what the stop left: the command's closing line and exit status read it)
        sweep_stop.restore_backend()
        clear_stop(Path(config.hydra.sweep.dir))
