"""tests/conftest.py's hooks that shape how the suite runs (the thread hooks: test_threads.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
from lightning.fabric.utilities.warnings import PossibleUserWarning
from xdist.remote import serialize_warning_message

import conftest

UNSERIALIZE = """
import json, sys
from xdist.workermanage import unserialize_warning_message
w = unserialize_warning_message(json.loads(sys.stdin.read()))
print(json.dumps([w.category.__name__, str(w.message), "lightning" in sys.modules]))
"""


def recorded(category, text: str) -> warnings.WarningMessage:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warnings.warn(text, category, stacklevel=1)
    return seen[0]


def controller_reads(message: warnings.WarningMessage) -> list:
    """What the xdist controller rebuilds from a worker's report of ``message``, in a fresh
    interpreter: ``[category name, message, whether it imported Lightning]``."""
    data = serialize_warning_message(message)
    proc = subprocess.run([sys.executable, "-c", UNSERIALIZE], input=json.dumps(data), capture_output=True,
                          text=True, timeout=120, check=True)
    return json.loads(proc.stdout)


def test_a_library_warning_reaches_the_controller_as_a_builtin_one_naming_its_class(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    message = recorded(PossibleUserWarning, "few batches")
    conftest.pytest_warning_recorded(message, "runtest", "t::x", None)
    category, text, imported = controller_reads(message)
    assert category == "UserWarning" and not imported
    assert text == "lightning.fabric.utilities.warnings.PossibleUserWarning: few batches"

    builtin = recorded(DeprecationWarning, "old")  # a built-in class is left as it is
    conftest.pytest_warning_recorded(builtin, "runtest", "t::x", None)
    assert builtin.category is DeprecationWarning and str(builtin.message) == "old"


def test_the_hook_runs_before_xdists_which_sends_the_warning():
    """pluggy calls the plugin registered last first: xdist's worker plugin comes after this conftest,
    so without ``tryfirst`` the warning would reach the controller before it is rewritten."""
    assert conftest.pytest_warning_recorded.pytest_impl.get("tryfirst") is True  # (pluggy's marker attribute)


def test_a_warning_class_that_is_also_an_exception_gets_its_warning_base(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")

    class Both(ValueError, UserWarning):
        pass

    message = recorded(Both, "odd")
    conftest.pytest_warning_recorded(message, "runtest", "t::x", None)
    assert message.category is UserWarning and str(message.message).endswith("Both: odd")
    own = recorded(pytest.PytestWarning, "pytest's")  # pytest's own: the controller has it imported
    conftest.pytest_warning_recorded(own, "runtest", "t::x", None)
    assert own.category is pytest.PytestWarning


def test_outside_a_worker_the_warning_is_left_as_it_is(monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    message = recorded(PossibleUserWarning, "few batches")
    conftest.pytest_warning_recorded(message, "runtest", "t::x", None)
    assert message.category is PossibleUserWarning and str(message.message) == "few batches"


FAST_EXIT_CONFTEST = """
import os, pathlib

def pytest_configure(config):  # pytest's own cleanup, after the unconfigure hooks: skipped by the fast exit
    who = os.environ.get("PYTEST_XDIST_WORKER", "controller")
    config.add_cleanup(lambda: pathlib.Path(__file__).with_name(f"cleanup-{who}").write_text("ran"))
"""

FAST_EXIT_SESSION = """
import atexit, pathlib, threading, time

HERE = pathlib.Path(__file__).parent

def test_passes():
    atexit.register(lambda: (HERE / "atexit-ran").write_text("yes"))

    def late():  # a non-daemon thread still working when the session ends: a normal exit waits for it
        time.sleep(0.3)
        (HERE / "thread-finished").write_text("yes")

    threading.Thread(target=late).start()

def test_fails():
    assert False, "the controller must still see this failure"
"""


@pytest.mark.slow  # (an end-to-end pytest session: ~1.5 s)
def test_a_worker_leaving_by_fast_exit_still_runs_atexit_and_reports_every_result(tmp_path):
    """tests/fast_exit.py in a real xdist session (one worker, no other plugin): the controller gets the
    pass and the failure and exits 1, as without it; the worker joined its non-daemon thread and ran
    its atexit handler as a normal exit does, and left by ``os._exit`` (pytest's own cleanup, which
    runs after the unconfigure hooks, ran in the controller but not in the worker)."""
    import os
    from pathlib import Path

    (tmp_path / "conftest.py").write_text(FAST_EXIT_CONFTEST)
    (tmp_path / "test_session.py").write_text(FAST_EXIT_SESSION)
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONPATH": str(Path(__file__).parent)}
    env.pop("PYTEST_XDIST_WORKER", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "xdist.plugin", "-p", "fast_exit", "-n", "1",
                           "-p", "no:cacheprovider", "-q", "test_session.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 failed, 1 passed" in proc.stdout and "the controller must still see this failure" in proc.stdout
    assert "Not properly terminated" not in proc.stdout + proc.stderr  # xdist saw a normal end
    assert (tmp_path / "atexit-ran").read_text() == (tmp_path / "thread-finished").read_text() == "yes"
    assert (tmp_path / "cleanup-controller").exists() and not (tmp_path / "cleanup-gw0").exists()


def test_leave_finishes_the_process_then_exits_zero_only_in_a_worker(monkeypatch):
    import types

    import fast_exit

    calls = []
    monkeypatch.setattr(fast_exit, "finish_process", lambda: calls.append("finish"))

    def exit_(code):
        calls.append(("exit", code))
        raise SystemExit(code)

    monkeypatch.setattr(fast_exit.os, "_exit", exit_)
    fast_exit.pytest_unconfigure(types.SimpleNamespace())  # the controller, or no xdist: nothing
    assert calls == []
    with pytest.raises(SystemExit):
        fast_exit.pytest_unconfigure(types.SimpleNamespace(workerinput={"workerid": "gw0"}))
    assert calls == ["finish", ("exit", 0)]
    assert fast_exit.pytest_unconfigure.pytest_impl.get("trylast") is True  # after the other plugins


def test_finish_process_joins_threads_then_runs_atexit_then_flushes(monkeypatch):
    import types

    import forked_cli

    calls = []
    monkeypatch.setattr(forked_cli.threading, "_shutdown", lambda: calls.append("threads"), raising=False)
    monkeypatch.setattr(forked_cli.atexit, "_run_exitfuncs", lambda: calls.append("atexit"))
    monkeypatch.setattr(forked_cli.sys, "stdout", types.SimpleNamespace(flush=lambda: calls.append("flush")))
    forked_cli.finish_process()
    assert calls == ["threads", "atexit", "flush"]
