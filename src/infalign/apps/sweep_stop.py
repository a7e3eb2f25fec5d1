"""Stopping a parallel sweep without losing its running jobs' records (``hydra/launcher=local_parallel``).

Under the joblib launcher a sweep's jobs run in worker processes. Left to itself, a Ctrl-C or SIGTERM makes
joblib abort: it SIGKILLs the workers, and a job killed while writing its record left none. Instead:

* the sweep's parent (:class:`ParallelStop`, installed by ``hydra_callbacks.GracefulStop`` for the multirun)
  takes the first SIGINT / SIGTERM: it writes the stop marker ``<sweep dir>/.stop_requested``, forwards the
  signal once to the workers running a job (the pids in the jobs' run locks, ``.run.lock``), and lets
  joblib go on collecting the jobs; a second signal aborts as before (the workers are killed);
* a running job (``apps/train.run``) takes its first SIGINT / SIGTERM as always -- its record says
  ``interrupted`` and its checkpoints stand -- and ignores further ones (:func:`one_shot_stop`), so the
  forwarded copy of a terminal's Ctrl-C cannot cut the record short; it then returns to the launcher
  instead of raising (an exception would make joblib abort) and writes the stop marker too;
* a job that starts after the marker was written runs nothing: its dir gets ``NOT_STARTED`` (why), which
  the sweep's closing line and ``infalign-report`` show, and the same command with ``ckpt_path=last_or_new``
  runs it.

At the end the parent exits as a stopped command does (130 for Ctrl-C, 143 for SIGTERM). The marker is
removed when a multirun in that dir starts and when it ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from infalign.errors import Terminated
from infalign.infra.sweeps import request_stop

log = logging.getLogger(__name__)

RUN_LOCK = ".run.lock"  # in a run dir, flocked by the run (``apps/train.run_dir_lock``): its pid while it runs
SIGNAL_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


def parallel_job() -> bool:
    """Whether this process runs a job of a multirun under the joblib launcher (``config.launcher_jobs``)."""
    from infalign.apps.config import launcher_jobs

    return launcher_jobs() is not None


def sweep_dir() -> Path | None:
    """The sweep dir of this multirun job (``hydra.sweep.dir``), ``None`` outside one."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    return Path(hc.sweep.dir) if hc.mode is not None and hc.mode.name == "MULTIRUN" else None


def running_job_pids(where: Path) -> list[int]:
    """The processes running a job of the sweep in ``where``, each a child of this process: the pids the jobs'
    run locks hold (a run writes its pid there while it runs and empties it when it ends; a pid of a process
    that died, or that is not this process's child -- a reused pid -- is left out). Linux reads the parent from
    ``/proc``; elsewhere no pid is given (a terminal's Ctrl-C reaches the workers of its process group)."""
    pids = set()
    for lock in where.rglob(RUN_LOCK):
        try:
            pid = int(lock.read_text().strip() or 0)
        except (OSError, ValueError):
            continue
        if pid > 0 and parent_of(pid) == os.getpid():
            pids.add(pid)
    return sorted(pids)


def parent_of(pid: int) -> int | None:
    """The parent pid of process ``pid`` (``/proc/<pid>/stat``), ``None`` when it is gone or unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # (the command in parentheses may hold spaces)
    return int(fields[1]) if len(fields) > 1 else None


class ParallelStop:
    """The sweep parent's SIGINT / SIGTERM handlers while a parallel multirun runs (module docstring): the first
    signal writes the stop marker and forwards itself to the running jobs; the next one restores the previous
    handlers and raises as they would (``KeyboardInterrupt`` / :class:`~infalign.errors.Terminated`), which makes
    joblib abort. :attr:`signal_name` is the first signal's name (``None`` while none came)."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self.signal_name: str | None = None
        self.aborted = False  # (a second signal came)
        self.previous: dict[int, object] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # (signal handlers belong to the main thread)
        for signum in SIGNAL_NAMES:
            self.previous[signum] = signal.signal(signum, self.handle)

    def uninstall(self) -> None:
        for signum, previous in self.previous.items():
            signal.signal(signum, previous)
        self.previous = {}

    def handle(self, signum, frame) -> None:
        name = SIGNAL_NAMES[signum]
        if self.signal_name is not None:  # the second signal: abort
            self.aborted = True
            self.uninstall()
            print(f"infalign-train: {name} again: aborting the sweep; its running jobs are killed and may leave "
                  "no record", file=sys.stderr, flush=True)
            if signum == signal.SIGTERM:
                raise Terminated("terminated by SIGTERM")
            raise KeyboardInterrupt
        self.signal_name = name
        request_stop(self.where, name, "the sweep's command")
        pids = running_job_pids(self.where)
        for pid in pids:
            with contextlib.suppress(OSError):  # (it ended meanwhile)
                os.kill(pid, signum)
        print(f"infalign-train: {name}: stopping the sweep -- its {len(pids)} running job(s) record themselves as "
              f"interrupted, no new job starts ({name} again aborts at once; running jobs may then leave no "
              "record)", file=sys.stderr, flush=True)


# The parent's handlers of the multirun this process runs (``hydra_callbacks.GracefulStop``), read by
# ``apps/train.main`` for its exit status and closing line.
CURRENT: list[ParallelStop] = []


def parent_stop_signal() -> str | None:
    """The signal that stopped this process's parallel sweep (``SIGINT`` / ``SIGTERM``), ``None`` if none did."""
    return next((stop.signal_name for stop in CURRENT if stop.signal_name), None)


def parent_aborted() -> bool:
    """Whether a second signal aborted this process's parallel sweep (joblib killed its running jobs)."""
    return any(stop.aborted for stop in CURRENT)


@contextlib.contextmanager
def one_shot_stop():
    """Within (a parallel sweep's job, main thread): the first SIGINT raises ``KeyboardInterrupt`` as Python's
    default handler does, the first SIGTERM :class:`~infalign.errors.Terminated` (as ``apps/train.
    terminate_on_sigterm``), and every SIGINT / SIGTERM after the first is ignored -- the sweep's parent
    forwards a signal that a terminal's Ctrl-C also sent the job itself, and a second interrupt while the job
    writes its record would leave none. Lightning's own handlers, while they are installed, come first. Yields
    the signals taken (at most one)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum, frame):
        if received:
            return  # (one stop is enough: the record is being written)
        received.append(signum)
        if signum == signal.SIGTERM:
            raise Terminated("terminated by SIGTERM")
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, handler) for signum in SIGNAL_NAMES}
    try:
        yield received
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
