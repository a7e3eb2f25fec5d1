"""``threads: auto`` (infra/threads.py): usable cores // concurrent jobs, at least 1; an explicit
count wins; oversubscription is logged once; the apps read the joblib launcher's n_jobs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from threadpoolctl import threadpool_limits

from infalign.apps.config import CONFIG_DIR, launcher_jobs
from infalign.errors import ConfigError
from infalign.infra import threads


@pytest.fixture
def machine(monkeypatch):
    """A machine with ``cores`` usable CPUs and no launcher/DDP variables; fresh warn-once state."""
    monkeypatch.delenv(threads.JOBS_ENV, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    for var in threads.LATE_POOL_ENV:  # set_threads exports them: restored after the test
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(threads, "_warned", set())
    monkeypatch.setattr(threads, "cpu_quota", lambda root="": None)  # no cgroup CPU quota on this machine

    def set_cores(n: int) -> None:
        monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)

    set_cores(8)
    return set_cores


@pytest.mark.parametrize(("cores", "jobs", "ranks", "expected"), [
    (8, None, None, 8),   # alone on the machine: every usable core
    (8, "2", None, 4),    # joblib launcher, 2 jobs
    (8, None, "4", 2),    # torchrun, 4 ranks per node
    (8, "2", "2", 2),     # both share the cores
    (6, "4", None, 1),    # floor(6/4) = 1
    (2, "5", None, 1),    # more jobs than cores: still at least 1
    (1, None, None, 1),
])
def test_auto_is_usable_cores_over_concurrent_jobs(machine, monkeypatch, cores, jobs, ranks, expected):
    machine(cores)
    if jobs:
        monkeypatch.setenv(threads.JOBS_ENV, jobs)
    if ranks:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", ranks)
    assert threads.resolve_threads("auto") == expected


def test_omp_num_threads_is_the_users_limit(machine, monkeypatch):
    """OMP_NUM_THREADS (a user's or loky's per-process limit) wins over the division."""
    machine(8)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.resolve_threads("auto") == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.resolve_threads("auto") == 3
    assert threads.resolve_threads(2) == 2  # an explicit count still wins


def test_affinity_not_cpu_count(machine, monkeypatch):
    """A process pinned to 3 CPUs of a 64-CPU machine gets 3, not 64."""
    machine(3)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 64)
    assert threads.usable_cores() == 3 and threads.resolve_threads("auto") == 3


def test_falls_back_to_cpu_count_without_affinity(machine, monkeypatch):
    monkeypatch.delattr(threads.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 5)
    assert threads.usable_cores() == 5


def test_explicit_count_wins_and_null_keeps_the_default(machine, monkeypatch):
    monkeypatch.setenv(threads.JOBS_ENV, "4")
    assert threads.resolve_threads(3) == 3
    assert threads.resolve_threads("3") == 3
    assert threads.resolve_threads(None) is None and threads.resolve_threads("null") is None


@pytest.mark.parametrize("bad", ["abc", 0, -2, "0", 1.5, True, "", [2]])
def test_bad_value_names_the_key_and_the_allowed_values(machine, bad):
    with pytest.raises(ConfigError) as err:
        threads.resolve_threads(bad, "data.toy.num_threads")
    assert err.value.key == "data.toy.num_threads" and "auto" in err.value.allowed


def test_oversubscription_is_logged_once(machine, monkeypatch, caplog):
    machine(4)
    monkeypatch.setenv(threads.JOBS_ENV, "2")
    with caplog.at_level(logging.WARNING, logger=threads.__name__):
        assert threads.resolve_threads(2) == 2      # 2 x 2 = 4 cores: fits, silent
        assert not caplog.records
        for _ in range(3):
            assert threads.resolve_threads(4) == 4  # 4 x 2 > 4: warned, once
    assert len(caplog.records) == 1
    assert "4 thread(s) x 2 concurrent job(s) > 4 usable core(s)" in caplog.records[0].getMessage()


@pytest.mark.parametrize(("n_jobs", "expected"), [(3, "3"), (-1, "8"), (-2, "7"), (-20, "1")])
def test_declare_jobs_follows_joblib_semantics(machine, n_jobs, expected):
    threads.declare_jobs(n_jobs)
    assert threads.os.environ[threads.JOBS_ENV] == expected


def test_declare_nothing_without_a_launcher(machine):
    threads.declare_jobs(None)
    assert threads.JOBS_ENV not in threads.os.environ


def test_set_threads_applies_to_torch(machine, monkeypatch):
    machine(4)
    monkeypatch.setenv(threads.JOBS_ENV, "4")
    before = torch.get_num_threads()
    try:
        assert threads.set_threads("auto") == 1 and torch.get_num_threads() == 1
        assert threads.set_threads(None) is None and torch.get_num_threads() == 1  # left alone
    finally:
        threads.set_threads(before)


def test_set_threads_without_torch_never_imports_it(machine, monkeypatch):
    """``torch=False`` (infalign-analyze: numpy only) sets the BLAS/OpenMP pools without importing
    torch (``import torch`` fails here, as it would cost ~2 s of the app's start-up)."""
    machine(4)
    monkeypatch.setenv(threads.JOBS_ENV, "4")
    monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` now raises ImportError
    with threadpool_limits(limits=None):  # every pool back to its count after (torch's OpenMP among them)
        assert threads.set_threads("auto", torch=False) == 1
        with pytest.raises(ImportError):
            threads.set_threads("auto")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="OpenBLAS starts with one thread per core: 1 here")
def test_a_blas_library_loaded_after_set_threads_starts_with_its_count():
    """threadpoolctl limits the pools already loaded; scipy's own OpenBLAS is first loaded later (the
    theory engine's banded solve) and would start with one thread per core -- 2 per job in a 2-job sweep
    on 2 cores. set_threads exports the count (OPENBLAS_NUM_THREADS), so that library starts with 1 here.
    In a fresh process: this one has scipy loaded already."""
    code = ("from infalign.infra.threads import set_threads; set_threads(1, torch=False)\n"
            "import sys; assert 'scipy.linalg' not in sys.modules\n"
            "from scipy.linalg import lapack\n"
            "from threadpoolctl import threadpool_info\n"
            "print(sorted({p['num_threads'] for p in threadpool_info() if 'scipy.libs' in p['filepath']}))")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", *threads.LATE_POOL_ENV)}
    env.pop(threads.JOBS_ENV, None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[1]"], out.stdout + out.stderr


def _hydra(mode: RunMode, *overrides: str):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("analyze", overrides=list(overrides), return_hydra_config=True)
    cfg.hydra.mode = mode
    return cfg


@pytest.mark.parametrize(("mode", "overrides", "expected"), [
    (RunMode.MULTIRUN, ["hydra/launcher=local_parallel", "hydra.launcher.n_jobs=3"], 3),
    (RunMode.RUN, ["hydra/launcher=local_parallel", "hydra.launcher.n_jobs=3"], None),  # no -m: one job
    (RunMode.MULTIRUN, [], None),                                                        # basic launcher: sequential
])
def test_launcher_jobs_reads_the_joblib_launcher(mode, overrides, expected):
    hc = HydraConfig.instance()
    saved = hc.cfg
    try:
        hc.set_config(_hydra(mode, *overrides))
        assert launcher_jobs() == expected
    finally:
        hc.cfg = saved


def test_xdist_auto_starts_one_worker_per_usable_core(monkeypatch):
    """``make test`` runs ``-n auto``: tests/conftest.py counts the cores of the affinity mask."""
    import os

    import conftest

    monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert conftest.pytest_xdist_auto_num_workers(None) == 3
    monkeypatch.setenv("PYTEST_XDIST_AUTO_NUM_WORKERS", "5")
    assert conftest.pytest_xdist_auto_num_workers(None) is None  # xdist's own hook reads it


@pytest.mark.parametrize(("worker", "count", "inherited", "jobs", "expected"), [
    ("gw1", "2", "1", "2", 2),   # an xdist worker: its share, whatever the controller's environment held
    ("gw0", "4", None, "4", 1),
    (None, None, None, "1", 4),  # one process (-n 0): alone on the machine
    (None, None, "3", "3", 1),   # one process inside a job that declared 3 concurrent jobs
])
def test_test_processes_declare_the_xdist_workers_as_concurrent_jobs(machine, monkeypatch, worker, count, inherited,
                                                                     jobs, expected):
    """tests/conftest.py: each pytest-xdist worker sets INFALIGN_CONCURRENT_JOBS to the worker count
    (inherited by the CLIs its tests start) and takes usable cores // workers threads. It once kept a
    ``1`` inherited from the controller, so both workers ran 2 threads on 2 cores."""
    from types import SimpleNamespace

    import conftest

    machine(4)
    for name, value in (("PYTEST_XDIST_WORKER", worker), ("PYTEST_XDIST_WORKER_COUNT", count),
                        (threads.JOBS_ENV, inherited)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    seen = []
    monkeypatch.setattr(conftest, "set_threads",
                        lambda value, key, watch=True: seen.append(threads.resolve_threads(value, key)))
    conftest.pytest_configure(SimpleNamespace(option=SimpleNamespace(numprocesses=None)))
    assert threads.os.environ[threads.JOBS_ENV] == jobs and seen == [expected]


def test_this_worker_runs_its_share_of_the_cores():
    """The live check of the rule above, in the process running this test."""
    import os

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.skip("runs only in a pytest-xdist worker (make test)")
    assert os.environ[threads.JOBS_ENV] == os.environ["PYTEST_XDIST_WORKER_COUNT"]
    torch = pytest.importorskip("torch")
    cores, jobs = threads.usable_cores(), int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    if not os.environ.get("OMP_NUM_THREADS"):
        assert torch.get_num_threads() == max(1, cores // jobs)


@pytest.mark.parametrize(("files", "expected"), [
    ({"cpu.max": "200000 100000"}, 2),                  # cgroup v2: docker --cpus=2
    ({"cpu.max": "150000 100000"}, 2),                  # 1.5 CPUs: rounded up
    ({"cpu.max": "max 100000"}, None),                  # no limit
    ({"cpu/cpu.cfs_quota_us": "300000", "cpu/cpu.cfs_period_us": "100000"}, 3),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
    ({}, None),                                         # no cgroup files
])
def test_a_cgroup_cpu_quota_caps_the_usable_cores(tmp_path, monkeypatch, files, expected):
    """A container limited to 2 CPUs on a 64-core host must not get 64 threads (it would be throttled)."""
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text + "\n")
    assert threads.cpu_quota(str(tmp_path)) == expected
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert threads.usable_cores(str(tmp_path)) == (expected or 64)


def test_torchruns_blanket_omp_default_does_not_pin_every_rank_to_one_thread(machine, monkeypatch):
    """torchrun exports OMP_NUM_THREADS=1 to every rank when the user left it unset: with 4 ranks on 64
    cores that is not the user's limit, so auto gives 64 // 4; outside torchrun, or with one local rank,
    an OMP_NUM_THREADS of 1 is the user's and wins."""
    machine(64)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert threads.resolve_threads("auto") == 1  # not torchrun: the user's 1
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    assert threads.resolve_threads("auto") == 16
    assert threads.resolve_threads(1) == 1  # threads=1 still forces one
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.resolve_threads("auto") == 2  # a value torchrun never sets: the user's


def test_oversubscription_under_auto_names_the_cause(machine, monkeypatch, caplog):
    """auto cannot fit more jobs than cores, or an OMP_NUM_THREADS above the cores: the warning says
    which, instead of advising threads=auto."""
    machine(2)
    monkeypatch.setenv(threads.JOBS_ENV, "4")
    with caplog.at_level(logging.WARNING, logger=threads.__name__):
        threads.resolve_threads("auto")
        monkeypatch.setenv(threads.JOBS_ENV, "1")
        monkeypatch.setenv("OMP_NUM_THREADS", "8")
        threads.resolve_threads("auto")
    first, second = (r.getMessage() for r in caplog.records)
    assert "more concurrent jobs than cores" in first and "threads=auto fits" not in first
    assert "OMP_NUM_THREADS sets this count" in second


@pytest.mark.parametrize("local_ranks", [None, "1"])
def test_torchrun_with_one_local_rank_keeps_the_users_omp_num_threads_1(machine, monkeypatch, local_ranks):
    """torchrun sets OMP_NUM_THREADS=1 only for several local ranks: with one, a 1 is the user's and wins."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    if local_ranks:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_ranks)
    assert threads.resolve_threads("auto") == 1


class _Clock:
    """Fake samples for ContentionWatch: wall seconds, the cores' busy CPU-seconds, this process's own."""

    def __init__(self):
        self.now = self.busy = self.own = 0.0

    def advance(self, seconds: float, own_cores: float, other_cores: float) -> None:
        self.now += seconds
        self.own += own_cores * seconds
        self.busy += (own_cores + other_cores) * seconds


def test_contention_watch_warns_once_when_other_processes_take_the_cores(caplog):
    """2 threads on 2 cores: others' busy time is the cores' minus this process's own. A shell's
    0.3 of a core is no contention; another run's full core is (warned once, with what to do);
    1 thread never warns (nothing spin-waits on a sibling)."""
    clock = _Clock()
    watch = threads.ContentionWatch(2, 2, busy=lambda: clock.busy, own=lambda: clock.own, clock=lambda: clock.now)
    with caplog.at_level(logging.WARNING, logger="infalign.infra.threads"):
        clock.advance(5, own_cores=1.9, other_cores=0.3)
        assert watch.observe() == pytest.approx(0.3) and not caplog.records
        clock.advance(5, own_cores=1.0, other_cores=1.0)
        assert watch.observe() == pytest.approx(1.0)
        clock.advance(5, own_cores=1.0, other_cores=1.0)
        watch.observe()
    (record,) = caplog.records
    assert "about 1.0 of the 2 core(s)" in record.getMessage() and "threads=N" in record.getMessage()
    assert "hydra/launcher=local_parallel" in record.getMessage() and watch.warned
    single = threads.ContentionWatch(1, 2, busy=lambda: clock.busy, own=lambda: clock.own, clock=lambda: clock.now)
    clock.advance(5, own_cores=1.0, other_cores=1.0)
    assert single.observe() == pytest.approx(1.0) and not single.warned
    assert threads.ContentionWatch(2, 2, busy=lambda: None, own=lambda: 0.0).observe() is None  # no /proc


def test_busy_seconds_reads_the_affinity_cpus_of_proc_stat(tmp_path):
    """user + nice + system + irq + softirq + steal of the given CPUs only (idle and iowait are not
    busy), in seconds; a missing file is None. On this machine the real file reads and grows."""
    import os

    stat = tmp_path / "stat"
    stat.write_text("cpu  900 0 900 9000 0 0 0 0 0 0\n"
                    "cpu0 100 10 20 5000 7 1 2 3 0 0\n"
                    "cpu1 400 40 80 5000 7 4 8 12 0 0\n"
                    "intr 1 2 3\n")
    hz = os.sysconf("SC_CLK_TCK")
    assert threads.busy_seconds(str(stat), cpus=[0]) == pytest.approx((100 + 10 + 20 + 1 + 2 + 3) / hz)
    assert threads.busy_seconds(str(stat), cpus=[0, 1]) == pytest.approx((136 + 544) / hz)
    assert threads.busy_seconds(str(tmp_path / "missing")) is None
    if sys.platform.startswith("linux"):
        first = threads.busy_seconds()
        sum(i * i for i in range(2_000_000))  # ~0.1 s of this CPU
        assert first is not None and threads.busy_seconds() > first


def test_set_threads_starts_one_watch_for_a_torch_process_with_threads_to_spare(machine, monkeypatch):
    started = []
    monkeypatch.setattr(threads, "_watch", None)
    monkeypatch.setattr(threads.ContentionWatch, "start", lambda self: started.append(self) or self)
    before = torch.get_num_threads()
    try:
        machine(2)
        threads.set_threads("auto", watch=False)
        threads.set_threads("auto", torch=False)
        threads.set_threads(1)
        assert not started
        threads.set_threads("auto")
        threads.set_threads("auto")
        assert len(started) == 1 and started[0].threads == 2 and started[0].cores == 2
    finally:
        threads.set_threads(before, watch=False)  # torch's and the BLAS pools' count as they were


def test_oversubscription_by_one_thread_is_logged(machine, caplog):
    """``threads x concurrent_jobs > usable_cores`` is the rule, with no slack: 3 threads on 2 cores
    (one job) oversubscribe them by one thread and are logged, once."""
    machine(2)
    with caplog.at_level(logging.WARNING, logger=threads.__name__):
        assert threads.resolve_threads(3) == 3
    assert len(caplog.records) == 1
    assert "3 thread(s) x 1 concurrent job(s) > 2 usable core(s)" in caplog.records[0].getMessage()
