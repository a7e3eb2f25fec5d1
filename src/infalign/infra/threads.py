"""How many CPU threads a process uses: ``threads: auto`` and the checks around an explicit count.

The rule (``threads: auto``, the default of every entry point)::

    threads = OMP_NUM_THREADS                              if set (the user's per-process limit)
            = max(1, usable_cores // concurrent_jobs)      else

- ``usable_cores`` = ``len(os.sched_getaffinity(0))``: the CPUs this process may run on (a
  ``taskset``, a cgroup cpuset or a SLURM allocation), not every CPU of the machine -- and no more
  than a cgroup CPU quota allows (``docker --cpus=2``, Kubernetes limits: ``cpu.max`` /
  ``cpu.cfs_quota_us``, rounded up);
- ``concurrent_jobs`` = the processes that share those cores = ``INFALIGN_CONCURRENT_JOBS`` (the
  joblib launcher's ``hydra.launcher.n_jobs``, exported by :func:`declare_jobs` when a multirun job
  starts; the test suite sets it to pytest-xdist's worker count) x ``LOCAL_WORLD_SIZE`` (ranks per
  node, set by ``torchrun``). Each factor is 1 when unset.

``OMP_NUM_THREADS`` wins because it is how a user (or joblib's loky workers) already says "this
many per process", e.g. on a machine that other jobs share: there a count that fits the idle
machine is far slower than 1 (OpenMP threads spin-wait for descheduled siblings). One exception:
``torchrun`` sets ``OMP_NUM_THREADS=1`` in every rank whenever it was unset (a blanket default, not
the user's choice), so under torchrun (``TORCHELASTIC_RUN_ID`` set) with several local ranks a value
of ``1`` is read as unset and the rule applies (``threads=1`` forces one thread).

An explicit integer wins over the rule; ``null`` keeps the library default. When
``threads x concurrent_jobs > usable_cores`` the cores are oversubscribed (every process then runs
slower than with fewer threads), which is logged once per process.

The count goes to torch (``torch.set_num_threads``) and, through ``threadpoolctl``, to the BLAS and
OpenMP pools numpy/scipy use (the theory engine, bootstrap CIs); ``OPENBLAS_NUM_THREADS`` and
``MKL_NUM_THREADS`` are set to it for a BLAS library loaded later (scipy's own OpenBLAS).

Processes the rule does not know of -- a second ``infalign-train`` in another terminal, someone's
build -- are not counted: each run takes every core, and their OpenMP threads spin-wait for each
other (measured 2026-12-04, 2 cores, the default toy run's 20-step training stage: 3.0 s alone, 39 s
each with two at once, 4.7 s each with ``threads=1``). The count is not changed at run time (a thread
count can change the floating-point order of parallel reductions, and a run must not depend on what
else the machine did); instead :class:`ContentionWatch` (started by :func:`set_threads` for a torch
process with several threads) samples every few seconds how much of this process's cores other
processes use (``/proc/stat`` on its affinity CPUs minus its own CPU time) and, when ``threads``
plus theirs exceed the cores, logs once what to do.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from infalign.errors import ConfigError

log = logging.getLogger(__name__)

JOBS_ENV = "INFALIGN_CONCURRENT_JOBS"
ALLOWED = "auto, null (library default) or an integer >= 1"
_warned: set[tuple[int, int, int]] = set()


def usable_cores(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where there is none), capped
    by the cgroup's CPU quota when it has one (:func:`cpu_quota`)."""
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        cores = max(1, os.cpu_count() or 1)
    quota = cpu_quota(cgroup_root)
    return min(cores, quota) if quota else cores


def cpu_quota(cgroup_root: str = "/sys/fs/cgroup") -> int | None:
    """The cgroup's CPU quota in whole CPUs, rounded up (cgroup v2 ``cpu.max`` = ``"<quota> <period>"``,
    v1 ``cpu/cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), or None without one (``max``, ``-1``, no file)."""
    import math

    def read(*parts: str) -> str | None:
        try:
            with open(os.path.join(cgroup_root, *parts)) as fh:
                return fh.read().strip()
        except OSError:
            return None

    v2 = read("cpu.max")
    if v2:
        quota, _, period = v2.partition(" ")
    else:
        quota, period = read("cpu", "cpu.cfs_quota_us") or "", read("cpu", "cpu.cfs_period_us") or ""
    try:
        q, p = int(quota), int(period or 100000)
    except ValueError:  # "max" (no limit) or unreadable
        return None
    return max(1, math.ceil(q / p)) if q > 0 and p > 0 else None


def _torchrun_default_omp(environ: Mapping[str, str]) -> bool:
    """``OMP_NUM_THREADS=1`` as torchrun sets it for several local ranks when the user left it unset."""
    return (environ.get("OMP_NUM_THREADS") == "1" and bool(environ.get("TORCHELASTIC_RUN_ID"))
            and _count(environ, "LOCAL_WORLD_SIZE") > 1)


def _count(environ: Mapping[str, str], name: str) -> int:
    try:
        return max(1, int(environ.get(name, "") or 1))
    except ValueError:
        return 1


def concurrent_jobs(environ: Mapping[str, str] | None = None) -> int:
    """Processes sharing the cores: ``INFALIGN_CONCURRENT_JOBS x LOCAL_WORLD_SIZE`` (each >= 1)."""
    env = os.environ if environ is None else environ
    return _count(env, JOBS_ENV) * _count(env, "LOCAL_WORLD_SIZE")


def declare_jobs(n_jobs: int | None) -> None:
    """Export a launcher's ``n_jobs`` (joblib semantics: ``-1`` = all cores, ``-2`` = all but one)
    as ``INFALIGN_CONCURRENT_JOBS``, for this process and the processes it starts."""
    if n_jobs is None:
        return
    n = int(n_jobs)
    jobs = n if n > 0 else usable_cores() + 1 + n
    os.environ[JOBS_ENV] = str(max(1, jobs))


def resolve_threads(value, key: str = "threads") -> int | None:
    """``value`` (``auto`` | ``None`` | integer >= 1) -> the thread count, or ``None`` to keep the
    library default. ``auto`` applies the rule of the module docstring; an explicit count that,
    times the concurrent jobs, exceeds the usable cores is logged once (oversubscription)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none")):
        return None
    cores, jobs = usable_cores(), concurrent_jobs()
    auto = isinstance(value, str) and value.strip().lower() == "auto"
    if auto:
        omp = os.environ.get("OMP_NUM_THREADS") if not _torchrun_default_omp(os.environ) else None
        threads = _count(os.environ, "OMP_NUM_THREADS") if omp else max(1, cores // jobs)
    elif isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        threads = value
    elif isinstance(value, str) and value.strip().isdigit() and int(value) >= 1:
        threads = int(value)
    else:
        raise ConfigError(key, value, ALLOWED)
    if threads * jobs > cores and (threads, jobs, cores) not in _warned:
        _warned.add((threads, jobs, cores))
        if not auto:
            why = "threads=auto fits them"
        elif jobs > cores:
            why = "more concurrent jobs than cores: fewer jobs (e.g. hydra.launcher.n_jobs) would fit"
        else:
            why = "OMP_NUM_THREADS sets this count; unset it for threads=auto's rule"
        log.warning("%s=%s: %d thread(s) x %d concurrent job(s) > %d usable core(s); the processes "
                    "will slow each other down (%s)", key, value, threads, jobs, cores, why)
    return threads


class ContentionWatch:
    """Warns once when other processes take enough of this process's cores that its ``threads``
    oversubscribe them (module docstring): ``threads + others > cores + MARGIN``, ``others`` the cores'
    busy time (:func:`busy_seconds`) minus this process's own CPU time (``os.times``), per second of
    wall time between two samples. :meth:`observe` takes one sample; :meth:`start` samples every
    ``interval`` seconds in a daemon thread (it never touches torch)."""

    MARGIN = 0.5  # cores: a shell, an editor, a logger's thread are not contention

    def __init__(self, threads: int, cores: int, busy=None, own=None, clock=None, interval: float = 5.0):
        import time

        self.threads, self.cores, self.interval = threads, cores, interval
        self._busy = busy or busy_seconds
        self._own = own or (lambda: sum(os.times()[:2]))
        self._clock = clock or time.monotonic
        self._last = (self._clock(), self._busy(), self._own())
        self.warned = False

    def observe(self) -> float | None:
        """Cores other processes used since the last sample (None: no time passed or no ``/proc``);
        warns the first time they and this process's threads exceed the cores."""
        now, busy, own = self._clock(), self._busy(), self._own()
        (t0, busy0, own0), self._last = self._last, (now, busy, own)
        if busy is None or busy0 is None or now <= t0:
            return None
        others = max(0.0, (busy - busy0) - (own - own0)) / (now - t0)
        if not self.warned and self.threads + others > self.cores + self.MARGIN:
            self.warned = True
            log.warning("other processes are using about %.1f of the %d core(s) this process runs %d threads "
                        "on: OpenMP threads spin-wait for each other, so every process sharing them runs many "
                        "times slower (two default toy runs at once: 13x). Give each process threads=N with N x "
                        "processes <= %d, or start them as one multirun with hydra/launcher=local_parallel, which "
                        "divides the cores (README: \"Threads\")", others, self.cores, self.threads, self.cores)
        return others

    def start(self) -> ContentionWatch:
        import threading
        import time

        def loop() -> None:
            while not self.warned:
                time.sleep(self.interval)
                self.observe()

        threading.Thread(target=loop, name="infalign-contention-watch", daemon=True).start()
        return self


def busy_seconds(stat: str = "/proc/stat", cpus=None) -> float | None:
    """CPU-seconds the CPUs ``cpus`` (default: this process's affinity) have been busy (``/proc/stat``:
    user, nice, system, irq, softirq, steal), or None where there is no such file (not Linux)."""
    try:
        with open(stat) as fh:
            lines = fh.read().splitlines()
        cpus = set(os.sched_getaffinity(0)) if cpus is None else set(cpus)
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, AttributeError, ValueError):
        return None
    busy = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            v = [int(x) for x in rest.split()]
            busy += v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)
    return busy / ticks


_watch: ContentionWatch | None = None


def set_threads(value, key: str = "threads", torch: bool = True, watch: bool = True) -> int | None:
    """Resolve ``value`` (:func:`resolve_threads`) and apply it to torch (unless ``torch=False``: a
    numpy-only process such as ``infalign-analyze``, which must not pay torch's import) and the
    BLAS/OpenMP pools; with torch and more than one thread, start the process's
    :class:`ContentionWatch` (once; not with ``watch=False``). Returns the count set, or ``None`` when
    the library defaults were kept."""
    threads = resolve_threads(value, key)
    if threads is None:
        return None
    from threadpoolctl import threadpool_limits

    global _watch
    if torch:
        import torch as torch_module

        torch_module.set_num_threads(threads)
        if watch and threads > 1 and _watch is None and busy_seconds() is not None:
            _watch = ContentionWatch(threads, usable_cores()).start()
    threadpool_limits(limits=threads)
    for var in LATE_POOL_ENV:  # a BLAS library loaded later (scipy's own OpenBLAS) reads these at its start
        os.environ[var] = str(threads)
    return threads


# threadpoolctl limits the pools already loaded; a library loaded later -- scipy bundles an OpenBLAS of its own,
# first loaded by the theory engine's banded solve -- starts with as many threads as the machine has cores,
# unless these say otherwise (OMP_NUM_THREADS is not among them: :func:`resolve_threads` reads it as the user's).
LATE_POOL_ENV = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
