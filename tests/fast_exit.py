"""A pytest-xdist worker leaves without the interpreter's finalization (a plugin: tests/conftest.py).

A worker that has imported torch, Lightning and transformers spends ~1.3 s at exit in the final
garbage collections of the interpreter's shutdown (``make test``: ~2.5 s, measured 2026-12-05 with
py-spy --native: ``gc_collect_main`` under ``Py_FinalizeEx``), and the xdist controller waits for the
last worker to exit before it reports. By the time pytest unconfigures a worker, the worker has
sent everything the controller reads: every report, and its ``workerfinished`` event at session
finish, after which xdist treats the end of its channel as a normal shutdown. So the worker runs its
``atexit`` handlers (the CLI zygote's close, logging's flush, W&B's) and flushes its streams, as a
normal exit would, and then ends the process with ``os._exit`` -- status 0: the session's outcome
went to the controller in ``workerfinished``; the worker's own exit status is not read."""

from __future__ import annotations

import atexit
import os
import sys

import pytest


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """In an xdist worker (``config.workerinput``), :func:`leave` once the other plugins have unconfigured."""
    if hasattr(config, "workerinput"):
        leave()


def leave() -> None:
    """``atexit`` handlers, flushed streams, then ``os._exit(0)``: the end of a normal exit without the
    interpreter's teardown."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):  # closed or replaced by a capture
            pass
    os._exit(0)
