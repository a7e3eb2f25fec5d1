"""Hydra callbacks (registered in ``conf/hydra/default.yaml``).

:class:`FailedJobs` makes a multirun's outcome visible: with ``continue_on_failure`` a failed job
is recorded (``metrics.json`` with ``status: failed`` and its error) and the sweep goes on; at the
end the sweep prints ``k of n jobs failed: ...`` and exits with code 1, so a shell script, CI or
SLURM dependency sees the failure instead of a silent 0.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def job_failure(job_dir: Path) -> str | None:
    """Why the job in ``job_dir`` did not finish (``None`` if it did): its recorded status and error,
    or a missing / unreadable ``metrics.json`` (a job killed before it could record anything).
    A ``metrics.json`` without a ``status`` (``infalign-analyze``) counts as finished."""
    path = job_dir / "metrics.json"
    if not path.exists():
        return "no metrics.json (killed?)"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return f"unreadable metrics.json ({type(exc).__name__})"
    status = metrics.get("status", "finished")
    if status == "finished":
        return None
    error = str(metrics.get("error") or "").strip().splitlines()
    return f"{status}: {error[-1]}" if error else str(status)


def sweep_failures(sweep_dir: Path) -> tuple[int, dict[str, str]]:
    """``(n jobs, {job dir name: reason})`` over the job dirs of a sweep (those Hydra started:
    they hold ``.hydra/``)."""
    jobs = sorted((p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()),
                  key=lambda p: (len(p.name), p.name))  # 2 before 10
    failures = {p.name: reason for p in jobs if (reason := job_failure(p)) is not None}
    return len(jobs), failures


class FailedJobs(Callback):
    """At the end of a multirun: ``k of n jobs failed: <job>: <reason>; ...`` and exit code 1."""

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
