"""Hydra sweeps as data: the jobs a multirun's grid launches (read by the sweep's resume check in
``apps/hydra_callbacks.py`` and by ``infalign-report``, which lists a grid's jobs that never started), and a
stopped parallel sweep's files (its stop marker, its jobs' ``NOT_STARTED``: ``apps/sweep_stop.py``)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from omegaconf import DictConfig

from infalign.infra.cache import atomic_write_json

STOP_MARKER = ".stop_requested"  # in the sweep dir: {"signal": "SIGINT" | "SIGTERM", "by": who}
NOT_STARTED = "NOT_STARTED"  # in a job dir the stopped sweep did not start: why


def outermost_sweep_dir(sweep_dir: Path) -> Path:
    """``sweep_dir``, or the outermost directory above it that holds a sweep (Hydra writes its
    ``multirun.yaml`` there): the sweep whose runs a dir added under it extends."""
    top = sweep_dir
    for parent in Path(os.path.abspath(sweep_dir)).parents:
        if (parent / "multirun.yaml").is_file():
            top = parent
    return top


def multirun_group(sweep_dir: Path) -> str:
    """The logger group of a multirun's jobs without a ``sweep_name``: ``multirun-<name>-<hash>``, the name and
    a short hash of the real path of its :func:`outermost_sweep_dir` -- two sweeps whose dirs end alike
    (``outputs/expA/sweep``, ``outputs/expB/sweep``) were one group (``multirun-sweep``), their runs averaged
    together on a dashboard (W&B walkthrough); runs added under a sweep (``<dir>/more``) join its group."""
    top = Path(os.path.realpath(outermost_sweep_dir(Path(sweep_dir))))  # (one through a link or a relative path)
    return f"multirun-{top.name}-{hashlib.sha1(str(top).encode()).hexdigest()[:6]}"


def sweep_jobs(config: DictConfig) -> list[list[str]] | None:
    """The job overrides Hydra's basic sweeper will launch, in job-number order (its ``params`` then the
    command line's, expanded as ``BasicSweeper.split_arguments`` does); None for another sweeper
    (Optuna: its jobs are not a grid)."""
    sweeper = config.hydra.get("sweeper") or {}
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    task = (config.hydra.get("overrides") or {}).get("task") or []
    parsed = OverridesParser.create().parse_overrides([*params, *task])
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def stop_requested(where: Path) -> dict | None:
    """The stop marker of the sweep in ``where`` (``{"signal", "by"}``), ``None`` without one. An unreadable
    marker (a write cut short cannot happen -- it is written atomically -- but a hand-made one can) still
    stops the sweep."""
    path = where / STOP_MARKER
    if not path.exists():
        return None
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        marker = None
    return marker if isinstance(marker, dict) else {"signal": "SIGINT", "by": "an unreadable stop marker"}


def request_stop(where: Path, signal_name: str, by: str) -> None:
    """Write the stop marker of the sweep in ``where`` (atomically; the first request's stays)."""
    if stop_requested(where) is None:
        atomic_write_json(where / STOP_MARKER, {"signal": signal_name, "by": by})


def clear_stop(where: Path) -> None:
    """Remove the sweep's stop marker (a multirun in ``where`` starts, or ended)."""
    (where / STOP_MARKER).unlink(missing_ok=True)


def stop_reason(marker: dict) -> str:
    """``the sweep was stopped (SIGINT from the sweep's command)``."""
    return f"the sweep was stopped ({marker.get('signal', 'SIGINT')} from {marker.get('by', 'its command')})"


def mark_not_started(out_dir: Path, marker: dict) -> None:
    """A job the stopped sweep did not start: ``NOT_STARTED`` in its dir, unless the dir holds a record (a job
    an earlier invocation of the sweep finished or left interrupted: its record says what it is)."""
    if not (out_dir / "metrics.json").exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / NOT_STARTED).write_text(f"not started: {stop_reason(marker)}\n")


def not_started(job_dir: Path) -> str | None:
    """Why the job in ``job_dir`` was not started (its ``NOT_STARTED``), ``None`` if it was."""
    try:
        return (job_dir / NOT_STARTED).read_text().strip() or "not started: the sweep was stopped"
    except OSError:
        return None
