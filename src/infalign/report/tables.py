"""``runs.csv`` / ``runs.md`` / ``summary.json``: one row per job, and the sweep's summary.

A row holds the job's status, method, procedure, transform family and ``t`` (empty for the offline
baselines, IPO and BoN-SFT, which train on no transform), beta, algorithm,
per judge the KL and the standard and inference-time win rates (the run's own procedure at its N,
:meth:`~infalign.math.procedures.Procedure.metric_key`) with their 95 % CIs, the theory at beta
and at the measured KL, ``kl_ratio``, the mean response length and EOS rate of the evaluated policy
and of the reference (``eval.responses``; empty for records before version 2), timings, cache flags,
the error and the overrides.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from infalign.math.procedures import STANDARD_WIN_RATE
from infalign.report.collect import STATUSES, Job, flagged
from infalign.report.naming import (
    algo_of,
    comparison_worlds,
    method_of,
    number,
    procedure_of,
    record_theory_applies,
    transform_family,
    transform_label,
    uses_transform,
)

# (column suffix, value) pairs of a CI in a row
_CI_PARTS = (("", "mean"), ("_low", "low"), ("_high", "high"))
RATES = ("kl", "standard_win_rate", "inference_win_rate")  # the judge-dependent columns of a row
# eval.responses of the record -> columns <pool>_<stat>
RESPONSE_STATS = tuple((pool, stat) for pool in ("policy", "reference") for stat in ("response_len_mean", "eos_rate"))
# eval.reward_cut -> columns <pool>_reward_cut: the share of the pool's samples the reward model read cut
REWARD_CUT_POOLS = ("policy", "reference")


def columns(judges: Sequence[str]) -> list[str]:
    """The columns of ``runs.csv`` (judge-dependent ones for each judge in ``judges``)."""
    cols = ["job", "status", "run_name", "method", "procedure", "inference_metric", "transform", "family",
            "t", "beta", "algo", "seed", "steps"]
    for j in judges:
        for m in RATES:
            cols += [f"{j}_{m}{suffix}" for suffix, _ in _CI_PARTS]
        cols.append(f"{j}_n_prompts")
    cols += ["theory_kl_at_beta", "theory_inference_win_rate_at_measured_kl", "kl_ratio",
             *(f"{pool}_{stat}" for pool, stat in RESPONSE_STATS), *(f"{pool}_reward_cut" for pool in REWARD_CUT_POOLS),
             "world_s", "calibration_s", "train_s", "resumed_from_step", "eval_s", "toy_built", "calibration_hit",
             "eval_reference_hit",
             "error", "overrides", "path"]
    return cols


def job_row(job: Job, judges: Sequence[str]) -> dict:
    """One ``runs.csv`` row (None where a value is unknown)."""
    rec, cfg = job.record, job.config or {}
    procedure = procedure_of(job)
    metric = procedure.metric_key() if procedure is not None else None
    # the offline baselines (IPO, BoN-SFT) train on no transform: their config's default one is not
    # theirs, so transform, family and t stay empty (a filter on family or t must not find them)
    trained_on_transform = uses_transform(job)
    family, t = (transform_family(cfg.get("transform"), rec.transform if rec else None) if trained_on_transform
                 else (None, None))
    algo_cfg = cfg.get("algo") if isinstance(cfg.get("algo"), dict) else {}

    def recorded(name: str, fallback: Any) -> Any:
        value = getattr(rec, name) if rec is not None else None
        return value if value is not None else fallback

    row: dict[str, Any] = {
        "job": job.job, "status": job.status, "run_name": rec.run_name if rec else None, "method": method_of(job),
        "procedure": (rec.procedure if rec else None) or (procedure.label if procedure else None),
        "inference_metric": metric, "transform": transform_label(job) if trained_on_transform else None,
        "family": family, "t": t,
        "beta": number(recorded("beta", algo_cfg.get("beta"))), "algo": algo_of(job),
        "seed": recorded("seed", cfg.get("seed")), "steps": recorded("steps", algo_cfg.get("steps")),
    }
    ev = rec.eval if rec is not None else None
    for j in judges:
        n_prompts = None
        for short, key in (("kl", "kl"), ("standard_win_rate", STANDARD_WIN_RATE), ("inference_win_rate", metric)):
            ci = ev.ci(j, key) if ev is not None else None
            for suffix, part in _CI_PARTS:
                row[f"{j}_{short}{suffix}"] = number(getattr(ci, part)) if ci is not None else None
            n_prompts = n_prompts if n_prompts is not None else (ci.n_prompts if ci is not None else None)
        row[f"{j}_n_prompts"] = n_prompts
    # no theory for pooled calibration or an evaluation with a modified sampler (older records carry one)
    theory = ev is not None and record_theory_applies(job)
    th = (ev.theory if theory else None) or {}
    at = th.get("at_measured_kl") if isinstance(th.get("at_measured_kl"), dict) else {}
    row["theory_kl_at_beta"] = number(th.get("kl"))
    row["theory_inference_win_rate_at_measured_kl"] = number(at.get(procedure.win_rate_key)) if procedure else None
    row["kl_ratio"] = number(rec.kl_ratio) if rec and theory else None
    responses = (ev.responses if ev is not None else None) or {}
    for pool, stat in RESPONSE_STATS:
        row[f"{pool}_{stat}"] = number((responses.get(pool) or {}).get(stat))
    cut = (ev.reward_cut if ev is not None else None) or {}
    for pool in REWARD_CUT_POOLS:
        row[f"{pool}_reward_cut"] = number(cut.get(pool))
    timings = rec.timings if rec is not None else {}
    for k in ("world_s", "calibration_s", "train_s", "eval_s"):
        row[k] = number(timings.get(k))
    # a run that continued a checkpoint: its train_s is the last attempt's, the steps after this one
    resumed = rec.resumed if rec is not None and isinstance(rec.resumed, dict) else {}
    row["resumed_from_step"] = resumed.get("from_step")
    cache = rec.cache if rec is not None else {}
    for k in ("toy_built", "calibration_hit", "eval_reference_hit"):
        row[k] = cache.get(k)
    row["error"] = job.reason or None
    row["overrides"] = " ".join(job.overrides)
    row["path"] = str(job.path)
    return row


def fmt_ci(mean: Any, low: Any, high: Any, digits: int = 3) -> str:
    if mean is None:
        return "–"
    if low is None or high is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def row_ci(row: dict, judge: str, rate: str) -> str:
    """A row's CI of ``rate`` under ``judge`` as ``mean [low, high]``."""
    return fmt_ci(*(row[f"{judge}_{rate}{suffix}"] for suffix, _ in _CI_PARTS))


def md_cell(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x).replace("|", "\\|").replace("\n", " ")


def status_counts(counts) -> str:
    """``4 finished, 2 failed, 0 interrupted, 2 missing``: a count per job status (:data:`STATUSES`;
    ``duplicate`` only when there is one)."""
    return ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES if s != "duplicate" or counts.get(s))


def markdown(rows: list[dict], judges: Sequence[str], jobs: Sequence[Job], root: Path) -> str:
    """runs.md: counts, one table row per job (CIs as ``mean [low, high]``), failed/missing list."""
    counts = Counter(r["status"] for r in rows)
    out = io.StringIO()
    out.write(f"# Sweep report: `{root}`\n\n")
    out.write(status_counts(counts) + f" ({len(rows)} jobs)\n\n")
    head = ["job", "status", "run", "method", "procedure", "beta", "seed"]
    for j in judges:
        head += [f"KL ({j})", f"standard win ({j})", f"inference win ({j})"]
    head += ["kl_ratio", "train_s", "error"]
    out.write("| " + " | ".join(head) + " |\n")
    out.write("|" + "|".join("---" for _ in head) + "|\n")
    for r in rows:
        cells = [r["job"], r["status"], r["run_name"], r["method"], r["procedure"], r["beta"], r["seed"]]
        for j in judges:
            cells += [row_ci(r, j, m) for m in RATES]
        train_s = r["train_s"] if r.get("resumed_from_step") is None else \
            f"{md_cell(r['train_s'])} (resumed at step {r['resumed_from_step']})"
        cells += [r["kl_ratio"], train_s, r["error"]]
        out.write("| " + " | ".join(md_cell(c) for c in cells) + " |\n")
    bad = [j for j in jobs if flagged(j)]
    if bad:
        out.write("\n## Failed, missing and flagged jobs\n\n")
        for j in bad:
            out.write(f"- **{j.job}** ({j.status}): {j.reason}  \n  overrides: `{' '.join(j.overrides)}`\n")
    return out.getvalue()


def make_summary(root: Path, out_dir: Path, judges: Sequence[str], jobs: Sequence[Job], rows: list[dict],
                 series: Sequence, paths: dict[str, Path]) -> dict:
    """``summary.json`` (before the matched-KL and theory-gap parts and the W&B run are added):
    counts, failed/missing jobs, the run with the highest inference-time win rate per judge among the runs of
    the report's world and evaluation (each at its own KL and procedure: a pointer, not a comparison -- methods
    are compared at matched KL, ``matched_kl``), every series' points and theory curve."""
    counts = Counter(j.status for j in jobs)
    worlds, main = comparison_worlds(jobs)  # (a run of another world or evaluation is no candidate)
    finished = [r for r in rows if r["status"] == "finished" and worlds.get(r["job"], main) == main]
    best = {}
    for j in judges:
        cands = [r for r in finished if r[f"{j}_inference_win_rate"] is not None]
        if cands:
            b = max(cands, key=lambda r: r[f"{j}_inference_win_rate"])
            best[j] = {"job": b["job"], "run_name": b["run_name"], "procedure": b.get("procedure"),
                       "inference_win_rate": b[f"{j}_inference_win_rate"], "kl": b[f"{j}_kl"],
                       "note": "at its own KL and procedure: a pointer to a run, not a comparison of methods "
                               "(matched_kl compares them at the same KL)"}
    point_keys = [f"{m}{suffix}" for m in RATES for suffix, _ in _CI_PARTS]
    return {
        "multirun_dir": str(root), "out_dir": str(out_dir), "judges": list(judges),
        "counts": {s: counts.get(s, 0) for s in STATUSES} | {"total": len(jobs)},
        "problems": [{"job": j.job, "status": j.status, "reason": j.reason, "overrides": j.overrides,
                      "path": str(j.path)} for j in jobs if flagged(j)],
        "highest_inference_win_rate": best,
        "series": [
            {"label": s.label, "family": s.family, "t": s.t, "procedure": s.procedure, "algo": s.algo,
             "jobs": [j.job for j in s.jobs], "theory_note": s.theory_note,
             "points": {j: [{"job": r["job"], "beta": r["beta"], **{k: r[f"{j}_{k}"] for k in point_keys}}
                            for r in s.rows] for j in judges},
             "theory": s.theory}
            for s in series
        ],
        "files": {k: str(v) for k, v in paths.items()},
    }
