"""Hydra sweeps as data: the jobs a multirun's grid launches (read by the sweep's resume check in
``apps/hydra_callbacks.py`` and by ``infalign-report``, which lists a grid's jobs that never started)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from omegaconf import DictConfig


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
