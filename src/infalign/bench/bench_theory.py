"""Section ``theory``: the calibrated-space theory engine against the issue's time targets."""

from __future__ import annotations

import numpy as np

from infalign.bench.common import time_calls

TRANSFORMS = ("identity", "log", "exp(4)", "exp(16)")


def _transforms():
    from infalign.transforms import Exp, Identity, Log

    return [Identity(), Log(), Exp(4.0), Exp(16.0)]


def run(repeats: int, quick: bool = False) -> dict:
    from infalign import theory
    from infalign.procedures import make_procedure

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

    n_opt = 5 if quick else n_budgets
    opt_budgets = np.linspace(0.05, 4.0, n_opt)
    opt: list = []
    timing = time_calls(lambda: opt.append(theory.optimal_frontier(proc, opt_budgets)), repeats)
    results["optimal_frontier"] = {
        "label": f"optimal_frontier: {n_opt} KL budgets (bon N=4)",
        "target_s": None, **timing.as_dict(), "budgets": n_opt,
        "reachable_points": int(opt[-1].reachable.sum()),
    }
    for r in results.values():
        r["ok"] = None if r["target_s"] is None else bool(r["best_s"] < r["target_s"])
    return results
