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

import logging
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from infalign.infra.cache import atomic_write_json
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
        return "no metrics.json (killed?)"
    return job_failure_of(path)


def job_failure_of(path: Path) -> str | None:
    """Why the record at ``path`` is not a finished run's (``None`` if it is)."""
    try:
        record = read_record(path)
    except (OSError, ValueError) as exc:  # RecordError is a ValueError
        return f"unreadable metrics.json ({type(exc).__name__})"
    if record.finished:
        return None
    error = str(record.error or "").strip().splitlines()
    return f"{record.status}: {error[-1]}" if error else record.status


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


class FailedJobs(Callback):
    """At the start of a multirun: refuse a sweep dir that holds another sweep's results unless the
    sweep resumes (``ckpt_path=last`` / ``last_or_new``): each job would refuse its dir (it is another
    run's) *after* Hydra rewrote the job's ``.hydra/`` files, and the old ``metrics.json`` would count
    as this sweep's finished job. At the end: ``k of n jobs failed: <job>: <reason>; ...`` and exit
    code 1."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        taken = previous_results(sweep_dir)
        if taken and config.get("ckpt_path") not in RESUMING:
            from infalign.apps.config import exit_on_config_error
            from infalign.errors import CONFIG_ERROR_EXIT, ConfigError

            error = ConfigError("hydra.sweep.dir", str(sweep_dir), "a directory without another sweep's results",
                                f"job dirs {taken[:8]}{' ...' if len(taken) > 8 else ''} hold results; leave "
                                "hydra.sweep.dir unset for a new unique dir, or resume that sweep (same overrides) "
                                "with ckpt_path=last_or_new")
            exit_on_config_error(error)
            # full errors asked for: Hydra turns a callback's exception into a warning and runs the sweep
            # anyway (each job then refuses its dir and the old records count as this sweep's): print the
            # traceback, but stop
            import traceback

            traceback.print_exception(error)
            raise SystemExit(CONFIG_ERROR_EXIT)

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


def sweep_time_summary(sweep_dir: Path, wall_s: float) -> dict:
    """``{"wall_s", "jobs", "finished", "policy_cache_hits", "eval_pool_hits", "stage_s": {stage: summed seconds}}``
    over the job dirs of ``sweep_dir`` (jobs without a readable ``metrics.json`` count as jobs only)."""
    jobs = [p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()]
    stages: dict[str, float] = {}
    finished = hits = pool_hits = 0
    for job in jobs:
        try:
            record = read_record(job / "metrics.json")
        except (OSError, ValueError):
            continue
        finished += record.finished
        hits += bool(record.cache.get("policy_hit"))
        pool_hits += bool(record.cache.get("eval_policy_hit"))
        for key, value in record.timings.items():
            stage = key.removesuffix("_s")
            stages[stage] = stages.get(stage, 0.0) + float(value)
    return {"wall_s": round(wall_s, 1), "jobs": len(jobs), "finished": finished, "policy_cache_hits": hits,
            "eval_pool_hits": pool_hits, "stage_s": {k: round(v, 1) for k, v in sorted(stages.items())}}


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
        summary = sweep_time_summary(sweep_dir, time.time() - self.start)
        atomic_write_json(sweep_dir / "sweep_time.json", summary)
        stages = ", ".join(f"{k} {v / 60:.1f}" for k, v in summary["stage_s"].items())
        log.info("sweep: %d jobs (%d finished, %d trained policies and %d policy evaluation pools loaded from the "
                 "cache) in %.1f min wall; job stage minutes summed: %s", summary["jobs"], summary["finished"],
                 summary["policy_cache_hits"], summary["eval_pool_hits"], summary["wall_s"] / 60, stages)
