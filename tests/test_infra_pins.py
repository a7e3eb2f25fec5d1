"""Pins found by mutation testing of src/infalign/infra: ``threads.py`` (the concurrent-jobs product, a
non-positive job count, the oversubscription warning's cause, the BLAS/OpenMP pools, a contention sample
taken at the same instant), ``distributed.py`` (a one-rank group, ``auto``'s device kind, the launch rank,
srun's local id) and ``background.py`` (dropping queued calls on an error, the in-place fallback). Each test
runs in milliseconds to ~1.5 s (the srun one pays Lightning's SLURMEnvironment import once per process): no
torch process group of more than one rank, no CLI."""

from __future__ import annotations

import logging
import multiprocessing
import sys
import threading
import time

import pytest

from infalign.infra import threads

# ---------------------------------------------------------------------------------- infra/threads.py


@pytest.fixture
def cores(monkeypatch):
    """A machine with a settable number of usable CPUs, no launcher / DDP variables and fresh warn-once
    state (as tests/test_threads.py's ``machine``)."""
    for var in (threads.JOBS_ENV, "LOCAL_WORLD_SIZE", "OMP_NUM_THREADS", "TORCHELASTIC_RUN_ID", *threads.LATE_POOL_ENV):
        monkeypatch.delenv(var, raising=False)  # (set_threads exports LATE_POOL_ENV: restored after the test)
    monkeypatch.setattr(threads, "_warned", set())
    monkeypatch.setattr(threads, "cpu_quota", lambda root="": None)

    def set_cores(n: int) -> None:
        monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)

    set_cores(8)
    return set_cores


def test_concurrent_jobs_is_the_product_of_launcher_jobs_and_local_ranks(cores, monkeypatch):
    """infra/threads.py's rule: concurrent_jobs = INFALIGN_CONCURRENT_JOBS x LOCAL_WORLD_SIZE. 3 joblib
    jobs each running 2 torchrun ranks are 3 x 2 = 6 processes, so on 12 cores auto gives 12 // 6 = 2
    threads each (a sum, 3 + 2 - 1 = 4, would give 3 and oversubscribe: 3 x 6 = 18 > 12). The suite's
    (2 jobs, 2 ranks) case cannot tell them apart: 2 x 2 = 2 + 2 = 4."""
    assert threads.concurrent_jobs({threads.JOBS_ENV: "3", "LOCAL_WORLD_SIZE": "2"}) == 6
    cores(12)
    monkeypatch.setenv(threads.JOBS_ENV, "3")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert threads.resolve_threads("auto") == 12 // 6


@pytest.mark.parametrize("value", ["0", "-2"])
def test_a_non_positive_job_count_counts_as_one(cores, monkeypatch, value):
    """Each factor of concurrent_jobs is >= 1 (module docstring: "each >= 1"): an exported job count of 0
    or -2 (a stray value, not a count) is one job, so auto keeps every usable core (8 // 1 = 8) -- not a
    ZeroDivisionError (0) or a negative count."""
    monkeypatch.setenv(threads.JOBS_ENV, value)
    assert threads.concurrent_jobs() == 1
    assert threads.resolve_threads("auto") == 8


def test_oversubscription_with_as_many_jobs_as_cores_blames_omp_num_threads(cores, monkeypatch, caplog):
    """4 jobs on 4 cores fit (auto: 4 // 4 = 1 thread each): with OMP_NUM_THREADS=2 they oversubscribe
    (2 x 4 = 8 > 4), and the cause is OMP_NUM_THREADS, not "more concurrent jobs than cores" (jobs =
    cores is not more): the warning names the cause the user can act on (the branch reads jobs > cores)."""
    cores(4)
    monkeypatch.setenv(threads.JOBS_ENV, "4")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with caplog.at_level(logging.WARNING, logger=threads.__name__):
        assert threads.resolve_threads("auto") == 2
    (record,) = caplog.records
    message = record.getMessage()
    assert "2 thread(s) x 4 concurrent job(s) > 4 usable core(s)" in message
    assert "OMP_NUM_THREADS sets this count" in message and "more concurrent jobs" not in message


def test_set_threads_limits_the_blas_and_openmp_pools(cores):
    """set_threads applies the count to the BLAS / OpenMP pools numpy and scipy use (threadpoolctl; the
    theory engine runs there, not in torch): after set_threads(2, torch=False) every pool threadpoolctl
    sees reports 2 threads, and after set_threads(1) every one reports 1 (either value differs from
    the other, so a pool left alone shows). torch is not touched."""
    import numpy as np
    from threadpoolctl import threadpool_info, threadpool_limits

    np.ones((2, 2)) @ np.ones((2, 2))  # numpy's BLAS is loaded
    with threadpool_limits(limits=None):  # every pool back to its own count after (torch's OpenMP among them)
        for n in (2, 1):
            assert threads.set_threads(n, torch=False) == n
            pools = threadpool_info()
            assert pools and {p["num_threads"] for p in pools} == {n}


def test_a_contention_sample_at_the_same_instant_is_no_measurement():
    """ContentionWatch.observe divides the others' CPU time by the wall time since the last sample: two
    samples at the same clock reading (a coarse clock, a sleep cut short) measure nothing and return
    None -- no ZeroDivisionError in the watch's thread, no warning."""
    watch = threads.ContentionWatch(2, 2, busy=lambda: 10.0, own=lambda: 1.0, clock=lambda: 5.0)
    assert watch.observe() is None and not watch.warned


# ------------------------------------------------------------------------------ infra/distributed.py


def test_a_one_rank_process_group_is_not_distributed():
    """distributed.py: the helpers are no-ops in a single process -- also inside a process group of one
    rank (a torchrun --nproc_per_node=1 launch): is_distributed() is false (world size 1 is not > 1), so
    the policy cache stays on (apps/train_stages.py skips it for a distributed run), rank 0 of 1, and a
    gather is [obj]."""
    import torch.distributed as dist

    from infalign.infra import distributed

    assert not dist.is_initialized()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        assert distributed.is_distributed() is False
        assert (distributed.rank(), distributed.world_size()) == (0, 1)
        assert distributed.all_gather_objects({"a": 1}) == [{"a": 1}]
    finally:
        dist.destroy_process_group()
    assert (distributed.rank(), distributed.world_size()) == (0, 1)  # no group at all


@pytest.mark.parametrize(("gpus", "mps", "kind"), [(0, False, "cpu"), (0, True, "mps"), (2, False, "cuda"),
                                                 (1, True, "cuda")])
def test_auto_runs_on_cuda_only_when_a_gpu_is_visible(monkeypatch, gpus, mps, kind):
    """accelerator_kind("auto"), Lightning's order: cuda when torch.cuda.device_count() > 0, else mps when
    available, else cpu -- a machine without a GPU is not a CUDA machine (its ranks would get an NCCL
    group and a GPU each: init_from_env). gpu means cuda; the others are as given."""
    from infalign.infra import distributed

    monkeypatch.setattr(distributed.torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(distributed.torch.backends.mps, "is_available", lambda: mps)
    assert distributed.accelerator_kind("auto") == kind
    assert [distributed.accelerator_kind(a) for a in ("gpu", "cpu", "mps")] == ["cuda", "cpu", "mps"]


def _clear_launcher_env(monkeypatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE",
                "TORCHELASTIC_RUN_ID", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"):
        monkeypatch.setenv(var, "")  # set, then deleted: monkeypatch restores them unset after the test
        monkeypatch.delenv(var)


def test_the_launch_rank_is_torchruns_rank_before_slurms_task_id(monkeypatch):
    """launch_rank: ``RANK`` (torchrun's global rank), else ``SLURM_PROCID``, else 0. torchrun started by
    srun (one task per node) sees both: task 1 of the srun step runs global ranks 2..3, and rank 3 is
    RANK=3 with SLURM_PROCID=1 -- the task id would make two processes rank 1 (and none 3)."""
    from infalign.infra import distributed

    _clear_launcher_env(monkeypatch)
    assert distributed.launch_rank() == 0
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert distributed.launch_rank() == 1
    monkeypatch.setenv("RANK", "3")
    assert distributed.launch_rank() == 3


# ------------------------------------------------------------------------------- infra/background.py


def _scaled(x: int, factor: int = 1) -> int:
    return x * factor


_EVENTS = None  # (started, gate): fork-inherited multiprocessing.Events, set per test


def _wait_for_the_gate() -> bool:
    started, gate = _EVENTS
    started.set()
    return gate.wait(timeout=30)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="the events are inherited by fork")
def test_an_error_in_the_with_block_drops_the_calls_not_yet_started(monkeypatch):
    """``Background.__exit__`` on an exception: close(cancel=True) -- the helper finishes the call it is
    running and drops the queued ones (the caller failed: their results would never be read). The first
    call signals that it runs, then waits for a gate that opens only once the last of the 6 calls queued
    behind it is cancelled (or after 5 s); the with-block fails while the first call runs. A process pool
    forwards at most workers + 1 = 2 calls ahead of the running one, so the last is still pending then:
    cancelled, while the running call completes. (No timing: the events order the steps.)"""
    from infalign.infra.background import Background

    fork = multiprocessing.get_context("fork")
    started, gate = fork.Event(), fork.Event()
    monkeypatch.setattr(sys.modules[__name__], "_EVENTS", (started, gate))  # before the helper forks
    futures = []

    def open_gate() -> None:
        deadline = time.monotonic() + 5
        while not (futures and futures[-1].cancelled()) and time.monotonic() < deadline:
            time.sleep(0.01)
        gate.set()

    opener = threading.Thread(target=open_gate)
    with pytest.raises(RuntimeError), Background() as helper:
        assert helper.parallel
        futures.extend([helper.submit(_wait_for_the_gate), *(helper.submit(_scaled, k) for k in range(6))])
        assert started.wait(timeout=60)  # the first call runs in the helper
        opener.start()
        raise RuntimeError("the caller failed")
    opener.join()
    assert futures[0].result() is True
    assert futures[-1].cancelled()


def test_no_process_here_falls_back_to_running_in_place(monkeypatch):
    """background.py: where a process cannot be started (a sandbox: OSError; some platforms:
    NotImplementedError) Background runs each call in the caller, with the same results."""
    from infalign.infra import background

    def refuse(*args, **kwargs):
        raise OSError("no processes here")

    monkeypatch.setattr(background, "ProcessPoolExecutor", refuse)
    with background.Background(["json"]) as helper:
        assert not helper.parallel
        assert helper.submit(_scaled, 2, factor=4).result() == 8
