"""One helper process for work that can overlap the caller's own (``infalign-analyze``: the best-t
scan and the plot, with matplotlib's import, run beside the optimal frontier).

``Background(preload)`` starts a single worker process -- forked where the platform allows it, so
it shares every module the caller has already imported -- that first imports ``preload`` (while
the caller computes), then runs the submitted calls in order. ``submit(fn, *args)`` returns a
``concurrent.futures.Future``; ``fn`` and its arguments are pickled (module-level functions,
plain data), and an exception raised by ``fn`` is re-raised by ``future.result()``. The results
are those of calling ``fn`` in the caller: same code, same inputs.

``Background(enabled=False)`` runs each call at once in the caller (no process): the serial
reference, and the fallback where a process cannot be started.
"""

from __future__ import annotations

import importlib
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, ClassVar


def _preload(modules: tuple[str, ...]) -> None:
    for name in modules:
        importlib.import_module(name)


class Background:
    """A one-process pool whose worker imports ``preload`` first (see the module docstring).

    ``Background.shared``: one started ahead of the work that will use it (``infalign-analyze``'s
    ``main()`` starts it before Hydra composes the config), for the code that runs later in this
    process; ``None`` elsewhere (e.g. in a launcher's worker process).
    """

    shared: ClassVar[Background | None] = None

    def __init__(self, preload: Sequence[str] = (), enabled: bool = True) -> None:
        self._pool: ProcessPoolExecutor | None = None
        if enabled:
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else None)
            try:
                self._pool = ProcessPoolExecutor(1, mp_context=context, initializer=_preload,
                                                 initargs=(tuple(preload),))
                self._pool.submit(int)  # start the worker (and its preloads) now, not at the first real call
            except (OSError, NotImplementedError):  # no processes here (sandbox, some platforms): serial
                self._pool = None

    @property
    def parallel(self) -> bool:
        return self._pool is not None

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        if self._pool is not None:
            return self._pool.submit(fn, *args, **kwargs)
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # delivered by future.result(), as from the process
            future.set_exception(exc)
        return future

    def close(self, cancel: bool = False) -> None:
        """Wait for the worker to finish (``cancel``: drop calls not yet started) and end it."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=cancel)
            self._pool = None

    def __enter__(self) -> Background:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(cancel=exc_type is not None)
