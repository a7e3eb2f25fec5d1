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

from hydra_speedups import speed_up_composes  # noqa: E402
from infalign.infra.startup import frozen_start_up  # noqa: E402
from infalign.infra.threads import JOBS_ENV, LATE_POOL_ENV, set_threads  # noqa: E402  (after the variables above)

pytest_plugins = ("fast_exit",)  # an xdist worker leaves without the interpreter's teardown (tests/fast_exit.py)


def pytest_configure(config):
    """Threads for the processes that run tests: usable cores // xdist workers (or OMP_NUM_THREADS).

    The workers share the cores, so each declares the xdist worker count as the concurrent jobs
    (``INFALIGN_CONCURRENT_JOBS``, also inherited by the CLIs the tests start) -- always, not only when
    unset: the controller's environment, which the workers inherit, must not decide it (it once set
    1, and every worker ran 2 threads on 2 cores). The xdist controller runs no tests, so it skips
    this and never imports torch (~3 CPU-s that would compete with the workers' own start-up).
    Hydra's composes are made cheaper in the test processes (``hydra_speedups.speed_up_composes``)."""
    worker_count = os.environ.get("PYTEST_XDIST_WORKER_COUNT") if os.environ.get("PYTEST_XDIST_WORKER") else None
    controller = worker_count is None and getattr(config.option, "numprocesses", None)
    if controller:
        return
    if worker_count is not None:
        os.environ[JOBS_ENV] = worker_count
    else:
        os.environ.setdefault(JOBS_ENV, "1")
    set_threads("auto", "tests", watch=False)  # workers share the cores by design
    speed_up_composes()


@pytest.hookimpl(hookwrapper=True)
def pytest_collection(session):
    """Collection imports torch, Lightning and transformers (~0.7 M objects that live until the
    worker exits): it runs with the cyclic GC paused, and what it created is then frozen (as
    ``infra/startup.import_frozen`` does for the CLIs), so no later full collection -- nor the
    worker's exit -- walks them again (``make test-fast``: ~2 s less of ~31 s, measured 2026-12-03).
    (An old-style hookwrapper: collection errors come back in the outcome, not raised at the yield.)"""
    with frozen_start_up():
        yield


# The modules that take longest, longest first (`pytest -p no:xdist --durations=0`, summed per module, on 2
# quiet cores): `make test` sends whole modules to its workers (--dist loadscope) in collection order
# (--no-loadscope-reorder: xdist would sort them by their number of tests), so these go first and the
# short ones fill in at the end -- collected alphabetically, test_train_pipeline (~1/5 of the suite)
# started last and one worker ran it alone. A stale list only costs balance. test_toy_world leads: in a
# fresh clone (CI) it builds the default toy world into outputs/cache (~1 min of one worker, the longest
# module there; seconds once cached). test_config_entries comes third, the second worker's second module:
# it needs no toy world, so that worker does not wait for the `tiny_world` fixture the first is building.
LONGEST_FIRST = (
    "test_toy_world.py", "test_train_pipeline.py", "test_config_entries.py", "test_faults.py", "test_report.py",
    "test_cli.py", "test_algorithms.py", "test_distributed.py", "test_ctrl_learns.py", "test_generation.py",
    "test_bench.py", "test_analyze_cli.py", "test_sweeps.py", "test_theory.py", "test_policy_cache.py",
    "test_matched_kl.py", "test_layers.py", "test_loggers.py", "test_procedures.py", "test_config_types.py",
    "test_real_models.py", "test_real_data_experiments.py", "test_calibration_app.py", "test_hub_revisions.py",
    "test_data.py",
)


# Modules whose console-script runs fork from one pre-imported zygote per test worker (forked_cli): one
# work unit, so one worker runs them all and starts one zygote (an interpreter start, ~7 CPU-s) for all
# of them, not one in each worker. Adjacent in LONGEST_FIRST, so the unit's tests run in a row.
FORKED_CLI_MODULES = ("test_faults.py", "test_report.py", "test_cli.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadscope`` with :data:`FORKED_CLI_MODULES` as one scope (xdist's scope is the module)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if Path(nodeid.split("::", 1)[0]).name in FORKED_CLI_MODULES:
                return "forked-cli-modules"
            return super()._split_scope(nodeid)

    return Scheduling(config, log)


def pytest_collection_modifyitems(session, config, items):
    """Modules in :data:`LONGEST_FIRST` order, then the rest as collected; each module's tests keep
    their order (a stable sort: every worker collects the same order, as xdist requires)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


_CONTROLLER_HAS = ("builtins", "pytest", "_pytest")  # modules of warning classes the xdist controller has imported


@pytest.hookimpl(tryfirst=True)
def pytest_warning_recorded(warning_message, when, nodeid, location):
    """In a pytest-xdist worker, a warning whose class a library defines (Lightning's
    ``PossibleUserWarning``, ...) is reported as its nearest built-in base, the library's class named in
    the message: the controller rebuilds a reported warning by importing its class's module, and one
    Lightning warning made it import Lightning, torch, torchmetrics and transformers (~6 CPU-s of
    ``make test``, on the cores the workers share). The summary still names the class. ``tryfirst``:
    xdist's worker plugin, registered after this conftest, would otherwise send the warning first.
    pytest's own classes (``pytest``, ``_pytest``: imported by the controller anyway) are left as they are."""
    category = warning_message.category
    if not os.environ.get("PYTEST_XDIST_WORKER") or category.__module__.split(".")[0] in _CONTROLLER_HAS:
        return
    base = next(c for c in category.__mro__ if c.__module__ == "builtins" and issubclass(c, Warning))
    warning_message.message = base(f"{category.__module__}.{category.__name__}: {warning_message.message}")
    warning_message.category = base


@pytest.fixture(autouse=True)
def _thread_counts_kept():
    """Every test leaves torch's intra-op thread count as it found it (the count pytest_configure
    set: the cores' share of this worker). Setting a BLAS/OpenMP pool through threadpoolctl also sets
    torch's OpenMP pool, so a test that calls ``set_threads`` and restores "the largest pool's count"
    can leave torch at 2 threads in each of two workers on 2 cores: every later test oversubscribes
    (two pin tests once did, and ``make test-fast`` took ~43 s instead of ~32). Such a test is put
    right and fails here, naming the counts; ``threadpool_limits(limits=None)`` as a context restores
    every pool. The BLAS thread counts ``set_threads`` exports (``threads.LATE_POOL_ENV``) likewise."""
    import sys

    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    env = {var: os.environ.get(var) for var in LATE_POOL_ENV}  # (set_threads exports them)
    yield
    changed = {var: os.environ.get(var) for var in LATE_POOL_ENV if os.environ.get(var) != env[var]}
    for var in changed:
        os.environ.pop(var, None) if env[var] is None else os.environ.__setitem__(var, env[var])
    if before is not None and (after := torch.get_num_threads()) != before:
        torch.set_num_threads(before)
        pytest.fail(f"the test left torch at {after} intra-op threads (it found {before}); restore them "
                    "(threadpoolctl's `with threadpool_limits(limits=None):` restores every pool)")
    if changed:
        pytest.fail(f"the test left {changed} in the environment (it found {env}): a BLAS library loaded later "
                    "starts with them; monkeypatch.delenv them first, as tests/test_threads.py's `machine` does")


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


@pytest.hookimpl(optionalhook=True)  # (a hook of pytest-xdist: unknown under -p no:xdist)
def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (``make test``): one worker per usable core (``infra/threads.usable_cores``: the
    affinity mask of a taskset, cgroup cpuset or SLURM allocation), not xdist's count of the
    machine's physical cores. ``PYTEST_XDIST_AUTO_NUM_WORKERS`` still wins (``None``: xdist reads it)."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    from infalign.infra.threads import usable_cores

    return usable_cores()

