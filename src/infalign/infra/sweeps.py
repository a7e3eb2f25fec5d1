"""Hydra sweeps as data: the jobs a multirun's grid launches (read by the sweep's resume check in
``apps/hydra_callbacks.py`` and by ``infalign-report``, which lists a grid's jobs that never started)."""

from __future__ import annotations

from omegaconf import DictConfig


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
