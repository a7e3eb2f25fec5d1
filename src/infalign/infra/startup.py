"""A command-line process's heavy imports, without the cyclic garbage collector walking them.

Importing torch, Lightning and transformers creates ~0.7 million container objects (modules,
functions, classes, sympy and ``torch._dynamo`` tables) that live until the process exits. CPython's
cyclic GC does not know that: while they are imported it runs full (generation-2) collections over
the growing heap, every later full collection walks them all again, and the interpreter's exit
runs one more over everything. Measured on 2 cores (2026-12-03): ``import lightning`` then exit
spends 0.9-1.0 s in the exit's collection alone; a tiny ``infalign-train`` run (cached toy world)
went from 6.35 s to 4.6 s wall with :func:`import_frozen` (8 full collections, 0.8 s, became 4, 0.1 s).

:func:`import_frozen` imports a module with the GC paused and then ``gc.freeze()``\\ s every object
the process holds (CPython's permanent generation, which no collection visits; the API Python's
docs recommend for long-lived start-up state) -- including what was imported before with the GC
on (``infalign-train``'s own module brings torch in; it pauses the GC only for the stages'
Lightning and transformers, imported after validation). It does that only on the module's *first* import in
the process: a process that calls it again (a sweep's jobs in one joblib worker, the test suite)
must not freeze the garbage of earlier jobs, which would then never be collected. What is frozen
is start-up state (imported modules, the composed config) and the imports' own cyclic garbage:
~13 k objects for the training stages, under 10 MB of a ~440 MB process, kept for its lifetime
rather than paying the 0.33 s full collection that would free them first. Objects created later
are collected as usual. Nothing computed depends on when the GC runs.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def frozen_start_up() -> Iterator[None]:
    """Run the block with the cyclic GC paused and, if it completes, move every object then alive to
    the permanent generation (``gc.freeze``): for a block that creates long-lived start-up state
    (heavy imports; the test workers' collection). The GC's enabled state is restored whatever the
    block raises, and nothing is frozen then: a failed import is retried by the next job, which must
    not freeze this job's garbage."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        gc.freeze()
    finally:
        if enabled:
            gc.enable()


def import_frozen(*names: str) -> None:
    """``importlib.import_module`` each of ``names``; if any was not imported yet, inside
    :func:`frozen_start_up` (GC paused, then everything alive frozen once the imports succeeded)."""
    if all(name in sys.modules for name in names):
        return
    with frozen_start_up():
        for name in names:
            importlib.import_module(name)
