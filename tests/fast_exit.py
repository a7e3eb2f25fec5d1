"""A pytest-xdist worker leaves without the interpreter's finalization (a plugin: tests/conftest.py).

A worker that has imported torch, Lightning and transformers spends ~1.3 s at exit in the final
garbage collections of the interpreter's shutdown (``make test``: ~2.5 s, measured 2026-12-05 with
py-spy --native: ``gc_collect_main`` under ``Py_FinalizeEx``), and the xdist controller waits for the
last worker to exit before it reports. By the time pytest unconfigures a worker, the worker has
sent everything the controller reads: every report, and its ``workerfinished`` event at session
finish, after which xdist treats the end of its channel as a normal shutdown. So the worker does
what a normal exit does before the teardown (``forked_cli.finish_process``: joins its non-daemon
threads, runs threading's exit callbacks and its ``atexit`` handlers -- the CLI zygote's close,
logging's flush, W&B's -- and flushes its streams) and ends the process with ``os._exit`` -- status
0: the session's outcome went to the controller in ``workerfinished``; the worker's own exit status
is not read. Also skipped: what pytest itself would undo after the unconfigure hooks
(``config.add_cleanup``: capture, monkeypatch, the unraisable-exception hooks), none of which the
controller reads, and any ``pytest_unconfigure`` that runs after this ``trylast`` one."""

from __future__ import annotations

import os

import pytest

from forked_cli import finish_process


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """In an xdist worker (``config.workerinput``), :func:`leave` once the other plugins have unconfigured."""
    if hasattr(config, "workerinput"):
        leave()


def leave() -> None:
    """A normal exit's work (``forked_cli.finish_process``), then ``os._exit(0)``: no interpreter teardown."""
    finish_process()
    os._exit(0)
