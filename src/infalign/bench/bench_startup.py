"""Section ``startup``: what every ``infalign-train`` process pays before its first job step.

A fresh interpreter imports the training stages (torch, Lightning, transformers: what a run, a
sweep job in a new worker, or a torchrun rank loads) and exits, timed from the parent: the import
(measured inside the child) and the exit (the rest of the wall time: interpreter teardown, whose
final garbage collection walks every object still tracked). Two variants, interleaved
``repeats`` times so that machine drift hits both alike:

* ``plain``  -- ``import infalign.apps.train_stages`` (the cyclic GC on throughout);
* ``frozen`` -- what ``infalign-train`` does: ``import infalign.apps.train`` (the CLI module, which
  brings torch in with the GC on), then, after validation, ``infra/startup.import_frozen(
  "infalign.apps.train_stages")``: Lightning and transformers with the GC paused, then everything
  alive frozen (``gc.freeze``).

Figures: best, median and worst seconds of each part (:class:`~infalign.bench.common.Timing`);
``ratio`` = plain / frozen median wall.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from infalign.bench.common import Timing

MODULE = "infalign.apps.train_stages"
VARIANTS = {
    "plain": f"import {MODULE}",
    "frozen": ("import infalign.apps.train; from infalign.infra.startup import import_frozen; "
               f"import_frozen({MODULE!r})"),
}
# the child prints when its import ended (wall clock, comparable across processes)
CHILD = "import time, sys; t0 = time.time(); {stmt}; t1 = time.time(); print(t0, t1); sys.stdout.flush()"


def time_process(stmt: str) -> dict:
    """One child: seconds of interpreter start, import, and exit (parent-side wall minus the rest)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    start = time.time()
    proc = subprocess.run([sys.executable, "-c", CHILD.format(stmt=stmt)], capture_output=True, text=True, env=env)
    end = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"the start-up child failed ({proc.returncode}): {stmt}\n{proc.stderr[-2000:]}")
    t0, t1 = (float(x) for x in proc.stdout.split()[-2:])
    return {"wall": end - start, "start": t0 - start, "import": t1 - t0, "exit": end - t1}


def run(repeats: int, quick: bool = False, seed: int = 0) -> dict:
    del seed  # nothing random
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    time_process("import infalign")  # warm the page cache and bytecode for both variants alike
    for _ in range(max(1, repeats if not quick else 1)):
        for name, stmt in VARIANTS.items():
            runs[name].append(time_process(stmt))
    variants = {name: {part: Timing([r[part] for r in rs]).as_dict() for part in ("wall", "start", "import", "exit")}
                for name, rs in runs.items()}
    return {"module": MODULE, "repeats": len(runs["plain"]), "variants": variants,
            "ratio": variants["plain"]["wall"]["median_s"] / variants["frozen"]["wall"]["median_s"]}
