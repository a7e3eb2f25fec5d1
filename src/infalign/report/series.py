"""Win-rate-vs-KL series: the finished runs of one method under one procedure, with the
calibrated-space theory curve of the method's transform (docs/method.md §4-§5) over the KL range
the sweep measured."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from infalign.errors import error_line
from infalign.math.finite_k import seen_through_table
from infalign.pipeline.run_record import missing_eos_penalty, other_eval_horizon
from infalign.report.collect import Job
from infalign.report.naming import (
    algo_of,
    comparison_worlds,
    constant_reward_run,
    eval_sampler,
    pooled_calibration,
    procedure_of,
    transform_family,
    uses_transform,
    world_label,
    world_names,
)
from infalign.report.tables import job_row

THEORY_POINTS = 40  # KL grid size of each theory curve (plus the measured KLs themselves)
# The judge the calibrated-space theory predicts: it tilts the reward model's calibrated reward, so
# it forecasts that judge's win rates; a gold (or any other) judge's panel gets no curve.
THEORY_JUDGE = "reward_model"
MIN_THEORY_KL = 1e-3  # the theory grid starts here when measured KLs are ~0 or negative


@dataclass
class Series:
    """Finished runs of one method (:func:`~infalign.report.naming.method_of`) under one procedure."""

    key: tuple
    family: str  # transform family, or the algorithm for runs trained without a transform
    t: float | None
    procedure: str | None
    algo: str | None
    label: str
    jobs: list[Job]
    rows: list[dict]
    theory: dict[str, dict | None] = field(default_factory=dict)  # judge -> curve
    theory_note: str = ""
    uses_transform: bool = True


def build_series(jobs: Sequence[Job], judges: Sequence[str], theory_points: int = THEORY_POINTS) -> list[Series]:
    """Group finished jobs by (procedure, method, world: :func:`~infalign.report.naming.comparison_worlds`,
    which holds another evaluation's note too) and compute each calibrated method's theory curve per
    judge over the KL range that judge measured."""
    groups: dict[tuple, list[Job]] = {}
    worlds, main = comparison_worlds(jobs)
    names = world_names(jobs, worlds, main)
    for job in jobs:
        if job.status == "finished":
            row = job_row(job, judges)
            groups.setdefault((row["procedure"], row["method"], worlds[job.job]), []).append(job)
    procs = {k[0] for k in groups}
    out = []
    for key in sorted(groups, key=lambda k: (str(k[0]), k[1], k[2] != main, k[2])):
        proc, method, world = key
        members = groups[key]
        rows = [job_row(j, judges) for j in members]
        where = world_label(world, main, names)
        label = (f"{proc} {method}" if len(procs) > 1 else method) + (f" {where}" if where else "")
        algo, trained_on_transform = rows[0]["algo"], uses_transform(members[0])
        family = rows[0]["family"] if trained_on_transform else algo
        out.append(Series(key, family, rows[0]["t"], proc, algo, label, members, rows,
                          uses_transform=trained_on_transform))
    for s in out:  # theory over each judge's whole measured KL range, so families compare across it
        span = {j: [(r[f"{j}_kl"], r[f"{j}_kl_low"], r[f"{j}_kl_high"]) for x in out for r in x.rows] for j in judges}
        s.theory, s.theory_note = theory_curves(s, judges, theory_points, span)
    return out


def theory_transform(job: Job) -> tuple[object | None, str]:
    """``(transform, "")``: the transform whose calibrated-space theory a run of ``job``'s method has -- an
    instance, or ``"optimal"`` (the optimal frontier) -- else ``(None, why not)``: raw and uncalibrated
    transforms, the offline baselines (no transform), pooled calibration (not uniform within a prompt), a reward
    that tied in every pair (:func:`constant_reward_run`), a missing-EOS penalty (docs/method.md (6.1b))."""
    from infalign.math.transforms import as_transform

    tcfg = (job.config or {}).get("transform")
    rec = job.record
    family = transform_family(tcfg, rec.transform if rec is not None else None)[0]
    if not uses_transform(job):
        return None, f"{algo_of(job)}: trains without a transform, no calibrated-space theory"
    if family == "raw":
        return None, "raw: no calibrated-space theory"
    if pooled_calibration(job):
        return None, "pooled calibration: not uniform within a prompt, no calibrated-space theory"
    if sampler := eval_sampler(job):
        return None, f"evaluated with {sampler}: samples of another distribution than the policy's, no theory"
    if horizon := other_eval_horizon(job.config):
        return None, (f"evaluated at eval.max_new_tokens={horizon[0]}, trained at {horizon[1]}: pools of another "
                      "horizon than the theory's, no theory")
    if constant_reward_run(job):
        return None, "every within-prompt pair of its reward ties: a constant calibrated reward, no theory"
    if penalty := missing_eos_penalty(job.config):
        return None, (f"missing_eos_penalty={penalty:g}: its reward Phi(C) - p * 1{{cut}} is no function of C "
                      "alone, no calibrated-space theory")
    if procedure_of(job) is None or not isinstance(tcfg, dict):
        return None, "no procedure/transform config"
    if family == "optimal":
        return "optimal", ""
    try:
        from hydra.utils import instantiate

        transform = as_transform(instantiate(tcfg))
    except Exception as exc:  # noqa: BLE001 - an odd transform must not stop the report
        return None, f"theory skipped: {type(exc).__name__}: {error_line(str(exc))}"
    if not transform.calibrated:
        return None, f"{family}: not calibrated, no theory"
    # as the run trains on it: Phi of its K-sample calibration table's C_hat, in expectation (docs/method.md (4.11))
    return seen_through_table(transform, (job.config or {}).get("calibration")), ""


def theory_frontier(transform, procedure, grid: np.ndarray):
    """The theory's frontier of a :func:`theory_transform` under ``procedure`` at the KLs ``grid``: the
    optimal frontier for ``"optimal"``, else ``theory.frontier`` of the transform."""
    from infalign.math import theory

    return (theory.optimal_frontier(procedure, grid) if transform == "optimal"
            else theory.frontier(transform, procedure, grid))


def theory_curves(s: Series, judges: Sequence[str], num: int,
                  span: dict[str, list[tuple]] | None = None) -> tuple[dict[str, dict | None], str]:
    """Calibrated-space theory (``theory.frontier``) of the series' transform (:func:`theory_transform`), for
    the judge it predicts (:data:`THEORY_JUDGE`; None for the others), at KLs spanning that judge's measured
    range (``span[judge]``: (mean, low, high) KLs of every run in the plot; default the series' own) plus
    the series' measured KLs; ``optimal`` uses the optimal frontier (:func:`theory_frontier`)."""
    job = s.jobs[0]
    procedure = procedure_of(job)
    transform, why = theory_transform(job)
    if transform is None:
        return {j: None for j in judges}, why
    curves: dict[str, dict | None] = {}
    note = ""
    for j in judges:
        own = [(r[f"{j}_kl"], r[f"{j}_kl_low"], r[f"{j}_kl_high"]) for r in s.rows if r[f"{j}_kl"] is not None]
        if not own or j != THEORY_JUDGE:
            curves[j] = None
            continue
        grid = theory_grid([k for k in (span or {}).get(j, own) if k[0] is not None] or own, num,
                           extra=[k[0] for k in own])
        try:
            f = theory_frontier(transform, procedure, grid)
        except Exception as exc:  # noqa: BLE001
            curves[j] = None
            note = f"theory failed: {type(exc).__name__}: {error_line(str(exc))}"
            continue
        ok = np.asarray(f.valid, bool)  # reachable and converged
        curves[j] = {"transform": f.transform, "procedure": procedure.label, "kl": f.kl_budget[ok].tolist(),
                     "beta": f.beta[ok].tolist(), "standard_win_rate": f.standard_win_rate[ok].tolist(),
                     "win_rate": f.win_rate[ok].tolist(), "unreachable_kl": f.kl_budget[~ok].tolist()}
    return curves, note


def theory_grid(kls: Sequence[tuple], num: int = THEORY_POINTS, extra: Sequence[float] = ()) -> np.ndarray:
    """KL budgets spanning the measured (mean, low, high) KLs, clipped to >= MIN_THEORY_KL, with
    the measured means (and ``extra``) included; log-spaced when the range covers over a decade."""
    vals = [v for triple in kls for v in triple if v is not None and math.isfinite(v)]
    means = [m for m in [*(k[0] for k in kls), *extra] if m is not None and m > MIN_THEORY_KL]
    lo = max(min(vals), MIN_THEORY_KL)
    hi = max(max(vals), lo * 1.5)
    grid = np.geomspace(lo, hi, num) if hi / lo > 10 else np.linspace(lo, hi, num)
    return np.unique(np.concatenate([grid, np.asarray(means, np.float64)]))
