"""``theory_gap.csv``: how far each calibrated run is from the calibrated-space theory
(docs/method.md §4-§5) -- its KL against the ideal tilted policy's at the training beta, and its
win rates against the theory's at the KL it measured."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from infalign.math.procedures import STANDARD_WIN_RATE
from infalign.report.collect import Job
from infalign.report.naming import method_of, number, procedure_of

THEORY_GAP_COLUMNS = ["job", "method", "procedure", "beta", "seed", "kl_measured", "kl_theory_at_beta", "kl_ratio",
                      "reachable", "metric", "measured", "theory_at_measured_kl", "gap"]


def theory_gap_rows(jobs: Sequence[Job], judge: str = "reward_model") -> list[dict]:
    """Per finished run with a calibrated-space prediction and per win-rate column the theory gives
    at the measured KL (standard, and the run's procedure at each N it was evaluated at):
    ``kl_ratio = KL_measured / KL_theory(beta)`` and ``gap = W_measured - W_theory(KL_measured)``.
    The theory predicts the reward model's own win rates, so ``judge`` is the reward model."""
    rows = []
    for job in jobs:
        if job.status != "finished":
            continue
        rec, procedure = job.record, procedure_of(job)
        th = rec.eval.theory
        at = th.get("at_measured_kl") if th and isinstance(th.get("at_measured_kl"), dict) else None
        if not at or procedure is None:
            continue
        kl_ci = rec.eval.ci(judge, "kl")
        kl = number(kl_ci.mean) if kl_ci is not None else None
        kl_th = number(th.get("kl"))
        head = {"job": job.job, "method": method_of(job), "procedure": rec.procedure, "beta": number(rec.beta),
                "seed": rec.seed, "kl_measured": kl, "kl_theory_at_beta": kl_th,
                "kl_ratio": kl / kl_th if kl is not None and kl_th else None, "reachable": at.get("reachable")}
        keys = {STANDARD_WIN_RATE} | {procedure.at(n).win_rate_key for n in [procedure.n, *rec.eval.ns]}
        for key in sorted(keys & set(at)):
            ci = rec.eval.ci(judge, key)
            measured, theory_wr = (number(ci.mean) if ci is not None else None), number(at.get(key))
            if measured is None or theory_wr is None:
                continue
            rows.append({**head, "metric": key, "measured": measured, "theory_at_measured_kl": theory_wr,
                         "gap": measured - theory_wr})
    return rows


def median_theory_gap(rows: Sequence[dict]) -> dict[str, dict]:
    """Per method: per metric the median ``|gap|`` over its runs, and the median KL ratio."""
    out: dict[str, dict] = {}
    for method in sorted({r["method"] for r in rows}):
        mine = [r for r in rows if r["method"] == method]
        by_metric = {k: float(np.median([abs(r["gap"]) for r in mine if r["metric"] == k]))
                     for k in sorted({r["metric"] for r in mine})}
        ratios = {r["job"]: r["kl_ratio"] for r in mine if r["kl_ratio"] is not None}
        out[method] = {"median_abs_gap": by_metric, "median_kl_ratio": float(np.median(list(ratios.values())))
                       if ratios else None, "runs": len({r["job"] for r in mine})}
    return out
