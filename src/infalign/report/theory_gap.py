"""``theory_gap.csv`` / ``theory_gap.md``: how far each calibrated run is from the calibrated-space
theory (docs/method.md §4-§5) -- its KL against the ideal tilted policy's at the training beta, its
win rates against the theory's at the KL it measured -- and, per method, what limits the distance
(:func:`diagnose`, docs/method.md §10.1)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from infalign.math.procedures import STANDARD_WIN_RATE
from infalign.report.collect import Job
from infalign.report.naming import (
    comparison_worlds,
    method_of,
    number,
    procedure_of,
    record_theory_applies,
)

THEORY_GAP_COLUMNS = ["job", "run", "method", "procedure", "beta", "seed", "world_id", "kl_measured",
                      "kl_theory_at_beta", "kl_ratio", "reachable", "metric", "measured", "theory_at_measured_kl",
                      "gap", "ci_half_width", "exact_theory_record", "note", "repeat_of"]
# docs/method.md §10.1: the distance from theory a method's runs should reach (win-rate points, median
# |gap| per metric), and the KL ratio below which its runs count as stopping short of their beta's KL.
THEORY_TARGET = 0.02
KL_SHORT = 0.9


EXACT_THEORY_NOTE = ("recorded with the exact theory (K = inf), before the theory beside a run tilted Phi_K "
                     "(docs/method.md §4.1; the curves tilt Phi_K)")


def exact_theory_record(job: Job) -> bool:
    """Whether the run's record carries the exact (``K = inf``) theory where the report tilts ``Phi_K``, its
    transform seen through its calibration table (docs/method.md §4.1): a run whose theory the report tilts
    through a table (``series.theory_transform`` gives a :class:`~infalign.math.finite_k.FiniteK`), whose
    ``eval.theory`` has no ``table`` marker, and whose recorded theory KL at its beta is the exact transform's
    rather than ``Phi_K``'s (review: records of the code between the two changes tilted ``Phi_K`` without the
    marker) -- two tilts, no record date needed."""
    from infalign.math import theory
    from infalign.math.finite_k import FiniteK
    from infalign.report.series import theory_transform

    th = job.record.eval.theory if job.record is not None and job.record.eval is not None else None
    if not isinstance(th, dict) or "table" in th:
        return False
    transform, _ = theory_transform(job)
    beta, kl, procedure = number(th.get("beta")), number(th.get("kl")), procedure_of(job)
    if not isinstance(transform, FiniteK) or beta is None or beta <= 0 or kl is None or procedure is None:
        return False
    exact, finite = (theory.evaluate(t, beta, procedure)[0].kl for t in (transform.base, transform))
    return abs(kl - exact) < abs(kl - finite)


def theory_gap_rows(jobs: Sequence[Job], judge: str = "reward_model") -> list[dict]:
    """Per finished run with a calibrated-space prediction and per win-rate column the theory gives
    at the measured KL (standard, and the run's procedure at each N it was evaluated at):
    ``kl_ratio = KL_measured / KL_theory(beta)`` and ``gap = W_measured - W_theory(KL_measured)``.
    The theory predicts the reward model's own win rates, so ``judge`` is the reward model.

    A run with a prediction at its beta but none at its measured KL is not dropped: it gets rows
    without ``gap`` and a ``note`` -- no theory point when the measured KL is <= 0, or the theory cannot
    reach that KL (``reachable`` false) -- and counts as such in :func:`median_theory_gap`. A run of no
    world (a record written before ``world_id``) is counted in the world most runs share.

    ``run``: the first job of the same measurement -- one policy evaluated again, e.g. an N-independent method
    in a sweep over ``procedure.n`` (same world, method, seed, beta and measured KL to the bit). A row of a metric
    that job gave already is kept with ``repeat_of`` (that job) and a note, and :func:`median_theory_gap` leaves
    it out: one policy is not weighed once per N in the medians.

    ``exact_theory_record``: the run's record carries the exact theory where the curves tilt ``Phi_K``
    (:func:`exact_theory_record`; the row's note says so). Of a measurement recorded both ways (a cached policy
    evaluated again by the newer code) the ``Phi_K`` record is the one weighed, whatever the jobs' order; the rows
    keep the jobs' order."""
    rows = []
    worlds, _ = comparison_worlds(jobs)
    first_of: dict[tuple, str] = {}  # the measurement -> its first job
    given: set[tuple] = set()  # (run, metric) rows given
    finished = [job for job in jobs if job.status == "finished"]
    exact_of = {job.job: exact_theory_record(job) for job in finished}
    order = {job.job: i for i, job in enumerate(finished)}
    for job in sorted(finished, key=lambda j: exact_of[j.job]):  # (stable: a Phi_K record first)
        rec, procedure = job.record, procedure_of(job)
        # (older records carry one for pooled calibration, and for an evaluation with a modified sampler)
        th = rec.eval.theory if record_theory_applies(job) else None
        if not th or procedure is None:
            continue  # no calibrated-space prediction (raw, pooled, offline baselines, a modified sampler)
        at = th.get("at_measured_kl") if isinstance(th.get("at_measured_kl"), dict) else {}
        kl_ci = rec.eval.ci(judge, "kl")
        kl = number(kl_ci.mean) if kl_ci is not None else None
        kl_th = number(th.get("kl"))
        head = {"job": job.job, "method": method_of(job), "procedure": rec.procedure, "beta": number(rec.beta),
                "seed": rec.seed, "world_id": worlds[job.job] or None, "kl_measured": kl,
                "kl_theory_at_beta": kl_th, "kl_ratio": kl / kl_th if kl is not None and kl_th else None,
                "reachable": at.get("reachable")}
        same = (worlds[job.job], head["method"], rec.seed, head["beta"], kl) if kl is not None else (job.job,)
        head["run"] = run = first_of.setdefault(same, job.job)

        exact = exact_of[job.job]  # its rows say so: the curves tilt Phi_K
        head["exact_theory_record"] = exact

        def repeat(metric, note, run=run, exact=exact) -> dict:
            """The row's note; a row of a metric this measurement gave already is kept, not weighed."""
            if (run, metric) not in given:
                given.add((run, metric))
                return {"note": "; ".join(filter(None, [note, EXACT_THEORY_NOTE if exact else None])) or None}
            return {"repeat_of": run, "note": f"the same measurement as job {run}: counted once"}

        if not at:
            rows.append({**head, "metric": None, "measured": None, "theory_at_measured_kl": None, "gap": None,
                         "ci_half_width": None, **repeat(None, "no theory point: the measured KL is <= 0")})
            continue
        # N = 1 is the standard win rate itself (one column, not two)
        keys = {STANDARD_WIN_RATE} | {procedure.at(n).win_rate_key for n in [procedure.n, *rec.eval.ns] if n > 1}
        for key in sorted(keys & set(at)):
            ci = rec.eval.ci(judge, key)
            measured, theory_wr = (number(ci.mean) if ci is not None else None), number(at.get(key))
            if measured is None:
                continue
            high, low = number(ci.high), number(ci.low)
            half = (high - low) / 2 if high is not None and low is not None else None
            note = None if theory_wr is not None else "the theory does not reach the measured KL"
            rows.append({**head, "metric": key, "measured": measured, "theory_at_measured_kl": theory_wr,
                         "gap": measured - theory_wr if theory_wr is not None else None, "ci_half_width": half,
                         **repeat(key, note)})
    return sorted(rows, key=lambda r: order[r["job"]])


def median_theory_gap(rows: Sequence[dict]) -> dict[str, dict]:
    """Per method: per metric the median ``|gap|``, the median signed gap and the median CI
    half-width of the measured win rate over its runs; the median KL ratio; and :func:`diagnose`'s
    ``limits`` and ``reading``. Runs of different worlds (``world_id``: other models or toy-world
    parameters) are separate entries, ``method [world_id]``, when the rows hold more than one.

    A method's runs recorded with the exact theory where the curves tilt ``Phi_K`` (rows'
    ``exact_theory_record``: older records) are not pooled with its ``Phi_K`` runs -- their KL ratios differ by
    up to ~1.8x for a smoothed table (docs/method.md §4.1): they are left out (``runs_exact_theory_left_out``:
    runs with no ``Phi_K`` row) when a ``Phi_K`` row has a gap, and make its medians, marked ``exact_theory``,
    when none does (its ``Phi_K`` runs then count among those without a theory point)."""
    rows = [r for r in rows if not r.get("repeat_of")]  # (a measurement counted once)
    worlds = {r.get("world_id") for r in rows}
    group = (lambda r: r["method"]) if len(worlds) <= 1 else (lambda r: f"{r['method']} [{r.get('world_id')}]")
    out: dict[str, dict] = {}
    for method in sorted({group(r) for r in rows}):
        every = [r for r in rows if group(r) == method]
        # row by row (an exact record's extra metric carries the run of the Phi_K record of its policy)
        finite = [r for r in every if not r.get("exact_theory_record")]
        exact_only = len(finite) < len(every) and not any(r["gap"] is not None for r in finite)
        kept = every if exact_only else finite
        left_out = {_run(r) for r in every} - {_run(r) for r in kept}
        every = kept
        mine = [r for r in every if r["gap"] is not None]
        ratios = {_run(r): r["kl_ratio"] for r in mine if r["kl_ratio"] is not None}
        entry = {"median_abs_gap": _median_by_metric(mine, lambda r: abs(r["gap"])),
                 "median_gap": _median_by_metric(mine, lambda r: r["gap"]),
                 "median_ci_half_width": _median_by_metric(mine, lambda r: r["ci_half_width"]),
                 "median_kl_ratio": float(np.median(list(ratios.values()))) if ratios else None,
                 "runs": len({_run(r) for r in mine}),
                 # runs with a prediction at beta but no theory point at their measured KL (rows' note)
                 "runs_without_theory": len({_run(r) for r in every} - {_run(r) for r in mine}),
                 # runs of one seed share the evaluation's reference pool (drawn with seed + 101), so
                 # their gaps share its noise: the independent estimates are the seeds, not the runs
                 "seeds": len({r.get("seed") for r in mine}),
                 "exact_theory": exact_only, "runs_exact_theory_left_out": len(left_out)}
        out[method] = entry | diagnose(entry)
    return out


def _run(row: dict) -> str:
    """The measurement a row belongs to (:func:`theory_gap_rows`' ``run``; its job for rows without one)."""
    return row.get("run") or row["job"]


def _median_by_metric(rows: Sequence[dict], value) -> dict[str, float]:
    """``{metric: median of value(row) over the rows of that metric}``, rows whose value is None skipped."""
    out = {}
    for metric in sorted({r["metric"] for r in rows}, key=_column_order):
        values = [v for r in rows if r["metric"] == metric and (v := value(r)) is not None]
        if values:
            out[metric] = float(np.median(values))
    return out


def diagnose(entry: dict, target: float = THEORY_TARGET, kl_short: float = KL_SHORT) -> dict:
    """What limits a method's distance from theory (docs/method.md §10.1), from its medians
    (:func:`median_theory_gap`): ``{"limits": [codes], "reading": one sentence}``. Codes:

    * ``on_target`` -- every metric's median ``|gap| <= target`` (with ``under_tilted`` too when the
      KL ratio is short: a run that barely moved sits on the curve near KL 0, where every win rate
      is close to the reference's, so "on target" then says little);
    * ``noise`` -- a metric off target whose median gap is inside ``1.25 h / sqrt(n)``, ``h`` the
      runs' median 95 % CI half-width and ``n`` the independent evaluations among them (the seeds:
      the runs of one seed share one reference pool; at most the runs): the 95 % half-width of a
      median of ``n`` independent run-level estimates (the median's standard error is
      ``sqrt(pi/2) ~ 1.25`` times the mean's), so the finite evaluation pools cannot tell the gap
      from the theory;
    * ``under_tilted`` -- median KL ratio ``< kl_short``: the runs stop short of the KL of the
      tilted policy their beta targets (optimisation: more steps or a larger step size);
    * ``thin_tail`` -- the standard win rate is on target but an inference-time one (N > 1) is
      below theory beyond noise: the runs reach the theory's mean calibrated reward but not the
      tail (top for best-of-N, bottom for worst-of-N) the transform pays for. A pattern, not a
      cause: one candidate is that an RL batch of G samples per prompt rarely visits that tail
      (untested: no sweep here varies G);
    * ``below`` / ``above`` -- off target beyond noise in a way the codes above do not explain;
    * ``scattered`` -- a metric whose median |gap| is off target while its median signed gap is within
      ``target`` (and beyond noise): its runs sit on both sides of the theory, each off by more than the
      target, in no one direction (it had no code, and its reading ended after the colon).
    """
    gaps, signed, half = entry["median_abs_gap"], entry["median_gap"], entry.get("median_ci_half_width", {})
    if not gaps:
        return {"limits": ["no_theory_point"], "reading": "no run has a theory point at its measured KL"}
    off = {k: v for k, v in gaps.items() if v > target}
    ratio = entry.get("median_kl_ratio")
    short = ratio is not None and ratio < kl_short
    if not off:
        if short:  # near KL 0 every win rate is near the reference's and on the curve: little is shown
            return {"limits": ["on_target", "under_tilted"],
                    "reading": f"on the theory curve (every median |gap| <= {target:g}) but at {ratio:.2f} of the KL "
                               "its beta targets (under-tilted): it is on target only where it stopped"}
        return {"limits": ["on_target"], "reading": f"on target: every median |gap| <= {target:g}"}
    pools = max(1, min(int(entry.get("runs") or 1), int(entry.get("seeds") or entry.get("runs") or 1)))
    noise = {k for k in off if k in half and abs(signed[k]) <= 1.25 * half[k] / np.sqrt(pools)}
    real = {k: signed[k] for k in off if k not in noise}
    limits, parts = [], []
    if short:
        limits.append("under_tilted")
        parts.append(f"its runs stop at {ratio:.2f} of the KL their beta targets (under-tilted: the optimisation "
                     "stopped short)")
    tail = sorted(k for k, g in real.items() if k != STANDARD_WIN_RATE and g < -target)
    if tail and STANDARD_WIN_RATE in gaps and gaps[STANDARD_WIN_RATE] <= target:
        limits.append("thin_tail")
        parts.append(f"standard win rate on target ({gaps[STANDARD_WIN_RATE]:.3f}) but {_names(tail)} below "
                     "theory: the mean calibrated reward is reached, the tail the transform pays for is not")
    rest = {k: g for k, g in real.items() if not ("thin_tail" in limits and k in tail)}
    if below := sorted(k for k, g in rest.items() if g < -target):
        limits.append("below")
        parts.append(f"{_names(below)} below theory at the measured KL")
    if above := sorted(k for k, g in rest.items() if g > target):
        limits.append("above")
        parts.append(f"{_names(above)} above theory at the measured KL")
    if scattered := sorted(k for k, g in rest.items() if abs(g) <= target):
        limits.append("scattered")
        parts.append(f"{_names(scattered)} off by more than {target:g} run by run but on both sides of theory "
                     f"(median signed gap within {target:g})")
    if noise:
        limits.append("noise")
        parts.append(f"{_names(sorted(noise))} off by less than the evaluation noise of {pools} independent "
                     f"reference pool{'' if pools == 1 else 's'}")
    worst = max(off, key=off.get)
    return {"limits": limits, "reading": f"off target (worst: {worst.removesuffix('_win_rate')} {off[worst]:.3f}): "
                                         + "; ".join(parts)}


def _column_order(key: str) -> tuple:
    """The standard win rate first, then the inference-time ones in the order of N (bon2 < bon4 < bon32)."""
    return key != STANDARD_WIN_RATE, len(key), key


def _names(keys) -> str:
    """``bon2, bon4, bon32``: column names without the suffix, in the order of N."""
    return ", ".join(k.removesuffix("_win_rate") for k in sorted(keys, key=_column_order))


def theory_gap_markdown(summary: dict[str, dict], target: float = THEORY_TARGET,
                        compared: Sequence[str] | None = None) -> str:
    """``theory_gap.md``: per method the median |gap| per metric, the KL ratio and the reading; ``compared``:
    the methods a ``--method`` report compares at matched KL (the table keeps every method's runs, as
    runs.csv does, and says so: a walkthrough read a method the comparison left out as part of it)."""
    if not summary:
        return "# Distance from theory\n\nNo calibrated run with a theory prediction at its measured KL.\n"
    metrics = sorted({k for e in summary.values() for k in e["median_abs_gap"]}, key=_column_order)
    # (an entry of another world is "method [world]": its method is the part before)
    others = [m for m in summary if compared is not None and m.split(" [", 1)[0] not in compared]
    header = ["method", "runs", *(k.removesuffix("_win_rate") for k in metrics), "KL ratio", "reading"]
    lines = ["# Distance from theory", "",
             "Reward model; median over each method's runs of |measured win rate - theory at the measured KL| "
             f"(target <= {target:g}), median KL measured / theory at beta; what limits it "
             "(docs/method.md §10.1)." + (f" Every method's runs, also those this report's matched-KL comparison "
                                          f"leaves out (--method): {', '.join(others)}." if others else ""), "",
             "| " + " | ".join(header) + " |",
             "|---|---:|" + "---:|" * len(metrics) + "---:|---|"]  # (as many columns as the header)
    for method, e in summary.items():
        cells = [f"{e['median_abs_gap'][k]:.3f}" if k in e["median_abs_gap"] else "–" for k in metrics]
        ratio = "–" if e["median_kl_ratio"] is None else f"{e['median_kl_ratio']:.2f}"
        lines.append("| " + " | ".join([method, runs_cell(e), *cells, ratio, e["reading"]]) + " |")
    return "\n".join(lines) + "\n"


def runs_cell(entry: dict) -> str:
    """``3``, ``3 (+1 without a theory point)``, ``3 (+2 of the exact theory, left out)`` or ``3 (exact theory)``
    (:func:`median_theory_gap`)."""
    extra, left_out = entry.get("runs_without_theory") or 0, entry.get("runs_exact_theory_left_out") or 0
    notes = [f"+{extra} without a theory point" if extra else "",
             f"+{left_out} of the exact theory, left out" if left_out else "",
             "exact theory: older records" if entry.get("exact_theory") else ""]
    return f"{entry['runs']}" + "".join(f" ({n})" for n in notes if n)
