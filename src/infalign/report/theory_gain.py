"""The calibrated-space theory's gain beside each measured one (docs/method.md §10).

On a panel of the judge the theory predicts (the reward model's: ``series.THEORY_JUDGE``), a gain of
method ``m`` over baseline ``b`` at a common KL ``κ`` has a prediction

    theory_gain(κ) = W_Φm(κ) - W_Φb(κ),

``W_Φ(κ)`` the win rate under the panel's procedure of the Φ-tilted reference policy at KL ``κ``
(``theory.frontier``: the curve each series draws). It exists when both methods trained on a
calibrated transform (:func:`series.theory_transform`); raw, the offline baselines and pooled calibration have
no calibrated-space theory, and the optimal transform's frontier is its theory only under its own
procedure. The README's tables put the theory's gain beside the measured one by hand; the report now
does (``theory_gain`` in matched_kl.csv, ``theory`` in matched_kl.md, dashed in gain_vs_kl.png).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from infalign.report.collect import Job
from infalign.report.matched import Panel
from infalign.report.naming import comparison_worlds, method_of, procedure_of
from infalign.report.series import THEORY_JUDGE, theory_frontier, theory_transform


def add_theory_gains(panels: Sequence[Panel], jobs: Sequence[Job]) -> None:
    """Fill ``panel.theory_gain[(method, baseline)]`` (points as fractions, NaN where the theory has no
    point: a KL its curve cannot reach) on every panel of :data:`THEORY_JUDGE` with common KLs."""
    worlds, main = comparison_worlds(jobs)
    first: dict[str, Job] = {}
    for job in jobs:  # each method's transform: its first finished run in the report's world
        if job.status == "finished" and worlds[job.job] == main and (m := method_of(job)) is not None:
            first.setdefault(m, job)
    curves: dict[tuple, np.ndarray | None] = {}

    def curve(method: str, panel: Panel) -> np.ndarray | None:
        key = (method, panel.procedure.label, panel.result.grid.tobytes())
        if key not in curves:
            curves[key] = _win_rates(first.get(method), panel)
        return curves[key]

    for p in panels:
        if p.judge != THEORY_JUDGE or not p.result.common:
            continue
        for g in p.result.gains:
            wm, wb = curve(g.method, p), curve(g.baseline, p)
            if wm is not None and wb is not None:
                p.theory_gain[(g.method, g.baseline)] = wm - wb


def _win_rates(job: Job | None, panel: Panel) -> np.ndarray | None:
    """The theory's win rates of ``job``'s transform under ``panel``'s procedure at its common KLs (NaN where
    a KL is unreachable), or None without a theory."""
    if job is None:
        return None
    transform, _ = theory_transform(job)
    if transform is None:
        return None
    grid = np.asarray(panel.result.grid, np.float64)
    out = np.full(grid.shape, np.nan)
    positive = np.isfinite(grid) & (grid > 0)  # (a common KL of 0: runs that barely moved; the theory takes KL > 0)
    if not positive.any():
        return out
    if transform == "optimal":  # its frontier is its theory under the procedure it was solved for only
        own = procedure_of(job)
        if own is None or own.label != panel.procedure.label:
            return None
    try:
        f = theory_frontier(transform, panel.procedure, grid[positive])
    except Exception:  # noqa: BLE001 - a theory that fails leaves the measured gain without a prediction
        return None
    out[positive] = np.where(np.asarray(f.valid, bool), np.asarray(f.win_rate, np.float64), np.nan)
    return out
