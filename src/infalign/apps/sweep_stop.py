"""Stopping a parallel sweep without losing its running jobs' records (``hydra/launcher=local_parallel``).

Under the joblib launcher a sweep's jobs run in worker processes. Left to itself, a Ctrl-C or SIGTERM makes
joblib abort: it SIGKILLs the workers, and a job killed while writing its record left none. Instead:

* the sweep's parent (:class:`ParallelStop`, installed by ``hydra_callbacks.GracefulStop`` for the multirun)
  takes the first SIGINT / SIGTERM: it writes the stop marker ``<sweep dir>/.stop_requested``, forwards the
  signal once to the workers running a job (the pids in the jobs' run locks, ``.run.lock``), and lets
  joblib go on collecting the jobs; a second signal aborts as before (the workers are killed);
* a worker ignores SIGINT / SIGTERM outside a job (:func:`ignore_stop_signals`, its initializer: the loky
  backend registered for the multirun, :func:`use_stoppable_backend`) -- a terminal's Ctrl-C reaches every
  process of its group, and a worker idle or between jobs that raised ``KeyboardInterrupt`` broke the pool,
  which made joblib abort all the same;
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
import time
from pathlib import Path

from infalign.errors import Terminated
from infalign.infra.sweeps import NOT_STARTED, request_stop, stop_requested

log = logging.getLogger(__name__)

RUN_LOCK = ".run.lock"  # in a run dir, flocked by the run (``apps/train.run_dir_lock``): its pid while it runs
SIGNAL_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


class NotStarted(BaseException):  # noqa: N818 - a stop, not an error (BaseException: no job's failure handler takes it)
    """Raised by a parallel sweep's job that finds the sweep stopped once it holds its run dir
    (``apps/train.run``): the stop came between the job's first look and its lock, after the parent had
    forwarded the signal to the jobs it knew. Carries the stop marker."""

    def __init__(self, marker: dict) -> None:
        super().__init__(marker)
        self.marker = marker


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
    ``/proc``; without it (macOS) a live process's pid is taken (a run empties its lock when it ends, so only a
    killed run's pid, reused since, could be another process's)."""
    pids = set()
    for lock in where.rglob(RUN_LOCK):
        try:
            pid = int(lock.read_text().strip() or 0)
        except (OSError, ValueError):
            continue
        if pid > 0 and (parent_of(pid) == os.getpid() or not PROC.is_dir() and _alive(pid)):
            pids.add(pid)
    return sorted(pids)


PROC = Path("/proc")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # (gone, or another user's: not ours)
        return False
    return True


def parent_of(pid: int) -> int | None:
    """The parent pid of process ``pid`` (``/proc/<pid>/stat``), ``None`` when it is gone or unknown."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
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
        self.started = time.time()
        self.outcome: dict[str, int] | None = None  # (:meth:`finish`)
        self.previous: dict[int, object] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # (signal handlers belong to the main thread)
        for signum in SIGNAL_NAMES:
            self.previous[signum] = signal.signal(signum, self.handle)

    def finish(self) -> None:
        """At the multirun's end: the stop a job requested when this process's handlers did not see the signal
        (a job's own signal; ``n_jobs=1``, whose jobs run here under their one-shot handlers), and what the
        stop left (:func:`stop_outcome`) -- the closing line says what happened, not what should have."""
        marker = stop_requested(self.where)
        if self.signal_name is None and marker is not None:
            self.signal_name = str(marker.get("signal") or "SIGINT")
        if self.signal_name is not None:
            self.outcome = stop_outcome(self.where, self.started)

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


def ignore_stop_signals() -> None:
    """A sweep worker's initializer: SIGINT and SIGTERM ignored while it runs no job (:func:`one_shot_stop` takes
    them within one, and puts this back after it). Joblib's abort kills workers with SIGKILL, which nothing
    ignores."""
    for signum in SIGNAL_NAMES:
        signal.signal(signum, signal.SIG_IGN)


_REPLACED_BACKEND: list = []  # the loky backend use_stoppable_backend replaced (restore_backend puts it back)


def use_stoppable_backend() -> None:
    """Register, for this process's multirun, joblib's loky backend with :func:`ignore_stop_signals` as its
    workers' initializer (Hydra's joblib launcher asks for ``backend="loky"`` by name and takes no initializer;
    ``joblib.register_parallel_backend`` is joblib's way to change what a name gives). An initializer the
    launcher passes is kept, after this one."""
    import joblib
    from joblib._parallel_backends import LokyBackend
    from joblib.parallel import BACKENDS

    class StoppableLokyBackend(LokyBackend):
        def configure(self, *args, **kwargs):
            user = kwargs.pop("initializer", None)
            kwargs["initializer"] = ignore_stop_signals if user is None else _chained(user)
            return super().configure(*args, **kwargs)

    if not _REPLACED_BACKEND:
        _REPLACED_BACKEND.append(BACKENDS.get("loky"))
        joblib.register_parallel_backend("loky", StoppableLokyBackend)


def restore_backend() -> None:
    """Undo :func:`use_stoppable_backend` (the multirun ended)."""
    import joblib

    if _REPLACED_BACKEND:
        previous = _REPLACED_BACKEND.pop()
        if previous is not None:
            joblib.register_parallel_backend("loky", previous)


def _chained(user):
    """An initializer: :func:`ignore_stop_signals`, then ``user``'s (picklable: a partial of module functions)."""
    import functools

    return functools.partial(_run_both, user)


def _run_both(user, *args) -> None:
    ignore_stop_signals()
    user(*args)


def stop_outcome(where: Path, since: float) -> dict[str, int]:
    """``{"interrupted", "failed", "not_started", "no_record", "finished"}``: the jobs of the sweep in ``where``
    (its job dirs: they hold ``.hydra/``) whose record this invocation wrote as interrupted or as failed (a
    continue runs those again, and they fail again), that it did not start (``NOT_STARTED``, or an unfinished
    record of an earlier invocation), that left none (killed), and that are finished."""
    from infalign.pipeline.record import FAILED_ATTEMPT, read_record

    out = {"interrupted": 0, "failed": 0, "not_started": 0, "no_record": 0, "finished": 0}
    if not where.is_dir():  # (no job started)
        return out
    for job in (p for p in where.iterdir() if (p / ".hydra").is_dir()):
        path = job / "metrics.json"
        try:
            record, written = read_record(path), path.stat().st_mtime
        except (OSError, ValueError):
            out["not_started" if (job / NOT_STARTED).exists() else "no_record"] += 1
            continue
        if record.finished:  # an attempt of this invocation over the finished run is its FAILED_ATTEMPT (review)
            attempt = _attempt_since(job / FAILED_ATTEMPT, since)
            out[attempt if attempt in ("interrupted", "failed") else "finished"] += 1
        elif record.status in ("interrupted", "failed") and written >= since:
            out[record.status] += 1
        else:
            out["not_started"] += 1
    return out


def _attempt_since(path: Path, since: float) -> str | None:
    """The status of the attempt recorded in ``path`` (a finished run's ``FAILED_ATTEMPT``) if written since
    ``since``, else None."""
    from infalign.pipeline.record import read_record

    try:
        return read_record(path).status if path.stat().st_mtime >= since else None
    except (OSError, ValueError):
        return None


# A job's own record counts as written since it started within this margin (file times have a coarse clock,
# a few ms behind time.time(); an earlier invocation's record is seconds older at least)
RECORD_CLOCK_SLACK = 1.0


def recorded_since(run_dir: Path, started: float) -> bool:
    """Whether the job in ``run_dir`` started at ``started`` recorded itself (``metrics.json``, or the attempt
    beside a finished run's record, ``FAILED_ATTEMPT``): a stop that came while it took its dir did not."""
    from infalign.pipeline.record import FAILED_ATTEMPT

    for name in ("metrics.json", FAILED_ATTEMPT):
        try:
            if (run_dir / name).stat().st_mtime >= started - RECORD_CLOCK_SLACK:
                return True
        except OSError:
            pass
    return False


def stopped_sweep_dir() -> Path | None:
    """The dir of the sweep this process stopped (the parallel sweep's, else a job's ``hydra.sweep.dir``)."""
    return next((stop.where for stop in CURRENT), None) or sweep_dir()


def stop_summary() -> str | None:
    """``2 running jobs recorded as interrupted, 1 not started`` (:func:`stop_outcome` of this process's stopped
    sweep; ``, 1 left no record`` when a job was killed), ``None`` without a stopped sweep."""
    outcome = next((stop.outcome for stop in CURRENT if stop.outcome is not None), None)
    if outcome is None:
        return None
    parts = [f"{outcome['interrupted']} running job{'' if outcome['interrupted'] == 1 else 's'} recorded as "
             f"interrupted", f"{outcome['not_started']} not started"]
    if outcome["failed"]:
        parts.append(f"{outcome['failed']} failed (a continue runs {'it' if outcome['failed'] == 1 else 'them'} "
                     "again: the report lists why)")
    if outcome["no_record"]:
        parts.append(f"{outcome['no_record']} left no record (killed: its checkpoints stand)")
    if outcome["finished"]:
        parts.append(f"{outcome['finished']} finished")
    return ", ".join(parts)


# The parent's handlers of the multirun this process runs (``hydra_callbacks.GracefulStop``), read by
# ``apps/train.main`` for its exit status and closing line.
CURRENT: list[ParallelStop] = []


def finish_stops() -> None:
    """:meth:`ParallelStop.finish` for the stops whose multirun ended without Hydra's end callbacks (an exception:
    a worker killed after the stop breaks the pool), so the closing line still counts what the records say."""
    for stop in CURRENT:
        if stop.outcome is None:
            stop.finish()


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
