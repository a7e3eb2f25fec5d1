"""Test-wide environment: never touch the network, never log to a W&B account, and never
oversubscribe the cores (pytest-xdist workers share them; infra/threads.py)."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from infalign.infra.threads import JOBS_ENV, set_threads  # noqa: E402  (after the variables above)

os.environ.setdefault(JOBS_ENV, os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


def pytest_configure(config):
    """Threads for the processes that run tests: usable cores // xdist workers (or OMP_NUM_THREADS).
    The xdist controller runs none, so it skips this and never imports torch (~3 CPU-s that would
    compete with the workers' own start-up)."""
    controller = not os.environ.get("PYTEST_XDIST_WORKER") and getattr(config.option, "numprocesses", None)
    if not controller:
        set_threads("auto", "tests")


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """The toy world of ``pipeline_helpers.TINY_WORLD``, built once per session (shared by the
    pytest-xdist workers through the cache's own lock) and copied by :func:`tiny_cache`."""
    from pipeline_helpers import build_tiny_world

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    return build_tiny_world(shared / "tiny-world-cache")


@pytest.fixture
def tiny_cache(tmp_path, tiny_world) -> Path:
    """``tmp_path / "cache"`` with the tiny toy world already in it: what a run with ``TINY_WORLD``
    would build is loaded instead (pools and policies are still this test's own)."""
    from pipeline_helpers import seeded_cache

    return seeded_cache(tmp_path / "cache", tiny_world)


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (``make test``): one worker per usable core (``infra/threads.usable_cores``: the
    affinity mask of a taskset, cgroup cpuset or SLURM allocation), not xdist's count of the
    machine's physical cores. ``PYTEST_XDIST_AUTO_NUM_WORKERS`` still wins (``None``: xdist reads it)."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    from infalign.infra.threads import usable_cores

    return usable_cores()
