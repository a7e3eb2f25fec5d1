"""Section ``theory``: the calibrated-space theory engine against its time targets (default analyze
<= 3 s, optimal frontier N=64 x 50 KLs <= 5 s).

Targets (medians of the repeats, printed not asserted): default ``infalign-analyze`` end to end
<= 3 s, optimal frontier for N = 64 at 50 KL points <= 5 s, on 2 shared cores.
"""

from __future__ import annotations

import numpy as np

from infalign.bench.common import time_calls

TRANSFORMS = ("identity", "log", "exp(4)", "exp(16)")


def _transforms():
    from infalign.math.transforms import Exp, Identity, Log

    return [Identity(), Log(), Exp(4.0), Exp(16.0)]


def run(repeats: int, quick: bool = False) -> dict:
    from infalign.math import theory
    from infalign.math.procedures import make_procedure

    proc = make_procedure("bon", 4)
    n_budgets = 10 if quick else 50
    n_t = 10 if quick else 40
    budgets = np.linspace(0.05, 4.0, n_budgets)
    transforms = _transforms()
    results: dict[str, dict] = {}

    frontiers: list = []
    timing = time_calls(lambda: frontiers.append([theory.frontier(t, proc, budgets) for t in transforms]), repeats)
    reachable = int(sum(int(f.reachable.sum()) for f in frontiers[-1]))
    results["frontier"] = {
        "label": f"frontier: {len(transforms)} transforms x {n_budgets} KL budgets (bon N=4)",
        "target_s": 2.0, **timing.as_dict(), "transforms": list(TRANSFORMS), "budgets": n_budgets,
        "reachable_points": reachable,
    }

    tables: list = []
    timing = time_calls(lambda: tables.append(theory.optimal_transform("bon", 4, 0.1)),
                        repeats, before=theory._optimal_cached.cache_clear)
    results["optimal_transform"] = {
        "label": "optimal_transform (bon N=4, beta=0.1, cache cleared)",
        "target_s": 1.0, **timing.as_dict(), "iterations": int(tables[-1].iterations),
    }

    ts = theory.default_t_grid(proc, n_t)
    best: list = []
    timing = time_calls(lambda: best.append(theory.best_t(proc, [1.0], ts)), repeats)
    results["best_t"] = {
        "label": f"best_t: {n_t}-point t grid at KL=1 (bon N=4)",
        "target_s": 1.0, **timing.as_dict(), "t_points": n_t, "best_t": float(best[-1].t[0]),
    }

    n_opt = 5 if quick else 50
    n_big = 8 if quick else 64
    opt_proc = make_procedure("bon", n_big)
    opt_budgets = np.linspace(0.05, 4.0, n_opt)
    opt: list = []
    timing = time_calls(lambda: opt.append(theory.optimal_frontier(opt_proc, opt_budgets)), repeats)
    results["optimal_frontier"] = {
        "label": f"optimal_frontier: {n_opt} KL budgets (bon N={n_big})",
        "target_s": None if quick else 5.0, **timing.as_dict(), "budgets": n_opt,
        "reachable_points": int(opt[-1].reachable.sum()), "converged_points": int(opt[-1].valid.sum()),
    }

    results["analyze_end_to_end"] = _analyze_end_to_end(repeats, quick)
    for r in results.values():
        r["ok"] = None if r["target_s"] is None else bool(r["median_s"] < r["target_s"])
    return results


def _analyze_end_to_end(repeats: int, quick: bool) -> dict:
    """``infalign-analyze`` with its defaults, process start to files written (a subprocess per
    run; ``quick``: a tiny KL grid, no optimal frontier, no plot). Printed, never asserted: the
    machine is shared, so the median of the runs is the figure."""
    import os
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    from infalign.bench.common import Timing

    overrides = ["kl.num=5", "optimal=false", "best_t.num=4", "best_t.budgets=[0.5]", "plot=false"] if quick else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    script = Path(sys.executable).parent / "infalign-analyze"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "infalign.apps.analyze"]
    timing = Timing()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(max(1, repeats)):
            t0 = time.perf_counter()
            subprocess.run([*cmd, *overrides, f"hydra.run.dir={tmp}/run{i}"], check=True, env=env,
                           capture_output=True, timeout=600)
            timing.times.append(time.perf_counter() - t0)
    return {"label": "infalign-analyze end to end" + (" (quick settings)" if quick else " (defaults)"),
            "target_s": None if quick else 3.0, **timing.as_dict()}
