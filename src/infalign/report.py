"""Sweep report: collect the jobs of an ``infalign-train -m`` multirun, tabulate them, plot them.

A multirun dir holds one job dir per job (``<sweep dir>/<job num>/``), each with ``.hydra/``
(``config.yaml``, ``overrides.yaml``; written before the job runs), ``train.log`` and, once the job
has ended, ``metrics.json``. This module turns such a tree into

* :class:`Job` records (:func:`collect`): ``finished``, ``failed`` (``metrics.json`` says so, or it
  is unreadable / incomplete; the reason is the error's last line) or ``missing`` (no
  ``metrics.json``: still running, killed or crashed before writing; the reason is taken from
  the traceback at the end of ``train.log``). Nothing a broken job dir contains makes it raise;
* one table row per job (:func:`job_row`): its method (:func:`method_of`, the one field methods are
  grouped by), transform family and ``t``, beta, KL and the standard and inference-time (the
  run's own procedure and N) win rates with their 95 % CIs under each judge, timings, cache flags;
* the win-rate-vs-KL series per method with the calibrated-space theory curve of each calibrated
  method (:func:`build_series`), plotted side by side per judge (:func:`plot_series`);
* the matched-KL comparison (:func:`compare_panels`, math in :mod:`infalign.math.matched_kl`): per
  panel (procedure family, N, judge; a run joins the panel of every N in ``eval.ns`` unless its
  method depends on N) each method's win rate and its gain over the baselines at common KLs,
  with paired bootstrap CIs over the shared held-out prompts (``eval.per_prompt``);
* per run, the distance from the calibrated-space theory (:func:`theory_gap_rows`);
* ``runs.csv``, ``runs.md``, ``matched_kl.csv``, ``matched_kl.md``, ``theory_gap.csv``,
  ``summary.json`` and three PNGs, all written atomically (:func:`build_report`); W&B logging of
  the same (:func:`log_to_wandb`); rich tables and the matched-KL summary lines.

No Hydra app here: ``infalign-report`` (:mod:`infalign.apps.report`) is the command line.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from infalign.errors import require
from infalign.infra.cache import atomic_write_csv, atomic_write_json, atomic_write_text
from infalign.math.matched_kl import Gain, MatchedKL, Run, matched_kl

JUDGES = ("reward_model", "gold")
STATUSES = ("finished", "failed", "missing")
PLOTS = {"inference": "inference_win_rate_vs_kl.png", "standard": "standard_win_rate_vs_kl.png"}
THEORY_POINTS = 40  # KL grid size of each theory curve (plus the measured KLs themselves)
MIN_THEORY_KL = 1e-3  # the theory grid starts here when measured KLs are ~0 or negative
NO_TRANSFORM_ALGOS = ("bon_sft", "ipo")  # baselines that ignore config.transform
_SKIP_DIRS = {"wandb", "checkpoints", "policy", "csv", "__pycache__"}


# ----------------------------------------------------------------------------------------------
# Collecting jobs
# ----------------------------------------------------------------------------------------------


@dataclass
class Job:
    """One job dir of a multirun and what could be read from it."""

    job: str  # path relative to the multirun dir, e.g. "3"
    path: Path
    status: str  # finished | failed | missing
    reason: str = ""  # why failed / missing: the error's last line
    overrides: list[str] = field(default_factory=list)
    metrics: dict | None = None  # metrics.json (None when missing or unreadable)
    config: dict = field(default_factory=dict)  # resolved config: metrics.json's, else .hydra/config.yaml's


def find_job_dirs(root: Path, skip: Sequence[Path] = ()) -> list[Path]:
    """Every dir under ``root`` (``root`` included) that has a ``.hydra/`` child, in natural order."""
    root = Path(root)
    skip_resolved = {Path(s).resolve() for s in skip}
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        if (here / ".hydra").is_dir():
            found.append(here)
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS
                       and (here / d).resolve() not in skip_resolved]
    return sorted(found, key=lambda p: natural_key(_rel(p, root)))


def natural_key(text: str) -> tuple:
    """Sort key under which "2" < "10" (job numbers), component by component."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"[/\\]", text))


def _rel(path: Path, root: Path) -> str:
    rel = path.relative_to(root).as_posix()
    return rel if rel != "." else path.name


def collect(root: Path, skip: Sequence[Path] = ()) -> list[Job]:
    """A :class:`Job` for every job dir under ``root``; never raises on a broken job dir."""
    return [load_job(path, root) for path in find_job_dirs(root, skip)]


def load_job(path: Path, root: Path) -> Job:
    job = Job(job=_rel(path, root), path=path, status="missing", overrides=read_overrides(path))
    metrics_path = path / "metrics.json"
    if metrics_path.exists():
        try:
            metrics = json.loads(metrics_path.read_text())
            if not isinstance(metrics, dict):
                raise ValueError(f"expected a JSON object, got {type(metrics).__name__}")
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            job.status, job.reason = "failed", f"unreadable metrics.json ({type(exc).__name__}: {last_line(str(exc))})"
        else:
            job.metrics = metrics
            job.status = str(metrics.get("status") or "finished")
            if job.status == "finished":
                problem = _incomplete(metrics)
                if problem:
                    job.status, job.reason = "failed", f"incomplete metrics.json ({problem})"
            elif job.status == "failed":
                job.reason = last_line(str(metrics.get("error") or "")) or log_error(path / "train.log") \
                    or "failed (no error recorded)"
            else:  # e.g. a status this report does not know: no result to show
                job.status, job.reason = "missing", f"metrics.json has status={job.status!r}"
    else:
        job.reason = log_error(path / "train.log") or "no metrics.json (still running, killed, or crashed before writing it)"
        if (path / "train.log").exists() and job.reason and not job.reason.startswith("no metrics"):
            job.reason = f"train.log: {job.reason}"
    config = (job.metrics or {}).get("config")
    job.config = config if isinstance(config, dict) else read_hydra_config(path)
    return job


def _incomplete(metrics: dict) -> str:
    judges = (metrics.get("eval") or {}).get("judges") if isinstance(metrics.get("eval"), dict) else None
    if not isinstance(judges, dict) or not judges:
        return "no eval.judges"
    return ""


def read_overrides(path: Path) -> list[str]:
    """``.hydra/overrides.yaml`` as a list of strings ([] if absent or unreadable)."""
    try:
        from omegaconf import OmegaConf

        data = OmegaConf.to_container(OmegaConf.load(path / ".hydra" / "overrides.yaml"))
        return [str(o) for o in data] if isinstance(data, list) else []
    except Exception:  # noqa: BLE001 - a broken job dir must not stop the report
        return []


def read_hydra_config(path: Path) -> dict:
    """The parts of ``.hydra/config.yaml`` the report uses, resolved node by node (best effort).

    The file is the composed config before the job ran; some nodes interpolate Hydra's runtime
    (``paths.run_dir``), so each top-level node is resolved on its own and dropped if it fails.
    """
    try:
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(path / ".hydra" / "config.yaml")
    except Exception:  # noqa: BLE001
        return {}
    out: dict = {}
    for key in ("transform", "procedure", "algo", "logger", "seed"):
        try:
            node = cfg[key]
            out[key] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        except Exception:  # noqa: BLE001
            continue
    return out


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def log_error(log_path: Path, max_bytes: int = 200_000) -> str:
    """The exception line of the last traceback in a log (else its last ERROR line, else '')."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - max_bytes))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = text.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith("Traceback (most recent call last)")]
    if starts:
        for ln in lines[starts[-1] + 1:]:
            if ln.strip() and not ln[:1].isspace():
                return ln.strip()
    errors = [ln.strip() for ln in lines if "[ERROR]" in ln or "Error:" in ln]
    return errors[-1] if errors else ""


# ----------------------------------------------------------------------------------------------
# One row per job
# ----------------------------------------------------------------------------------------------


def transform_family(tcfg: Any, label: str | None = None) -> tuple[str, float | None]:
    """(family, t) from a ``config.transform`` node: ``Exp`` -> ``exp`` (``expn`` if normalised)
    with its ``t``; registered classes -> their registry name; ``Custom`` -> its ``name``;
    ``optimal_transform`` -> ``optimal``. Falls back to parsing a label like ``exp(t=4)``."""
    if isinstance(tcfg, dict) and tcfg.get("_target_"):
        name = str(tcfg["_target_"]).rsplit(".", 1)[-1]
        t = _float(tcfg.get("t"))
        if name == "Exp":
            return ("expn" if tcfg.get("normalized") else "exp"), t
        if name == "Custom":
            fam = tcfg.get("name") or str(tcfg.get("fn") or "custom").rsplit(".", 1)[-1]
            return str(fam), t
        if name == "optimal_transform":
            return "optimal", t
        from infalign.math.transforms import TRANSFORMS

        by_class = {cls.__name__: kind for kind, cls in TRANSFORMS.items()}
        return by_class.get(name, name.lower()), t
    if label:
        m = re.fullmatch(r"\s*([A-Za-z_][\w-]*)\(t=([^)]+)\)\s*", str(label))
        if m:
            return m.group(1), _float(m.group(2))
        return str(label), None
    return "unknown", None


def method_of(job: Job) -> str:
    """The run's method, the one field the report groups methods by: ``metrics["method"]`` (e.g.
    ``expn(t=4)``, ``identity+ppo``, ``ipo(N=4)``); for records written before it existed, the
    transform label (``+<algo>`` when the algorithm is not rloo), or the algorithm's name alone for
    ``bon_sft`` / ``ipo`` (which use no transform)."""
    m = job.metrics or {}
    if m.get("method"):
        return str(m["method"])
    cfg = job.config or {}
    algo_cfg = cfg.get("algo") if isinstance(cfg.get("algo"), dict) else {}
    algo = str(m.get("algo") or algo_cfg.get("name") or "rloo")
    if algo in ("bon_sft", "ipo"):
        return algo
    family, t = transform_family(cfg.get("transform"), m.get("transform"))
    label = m.get("transform") or (f"{family}(t={t:g})" if t is not None else family)
    return str(label) if algo == "rloo" else f"{label}+{algo}"


def procedure_of(job: Job) -> tuple[str | None, int | None]:
    """(name, N) from ``config.procedure``, else parsed from the metrics' label (``bon4``)."""
    p = job.config.get("procedure") if isinstance(job.config, dict) else None
    if isinstance(p, dict) and p.get("name"):
        n = p.get("n", 1)
        return str(p["name"]), int(n) if isinstance(n, int | float) and not isinstance(n, bool) else None
    label = (job.metrics or {}).get("procedure")
    m = re.fullmatch(r"([A-Za-z_]+)(\d+)", str(label or ""))
    return (m.group(1), int(m.group(2))) if m else (None, None)


def inference_metric(name: str | None, n: int | None) -> str | None:
    """The eval key of the inference-time win rate at the run's N (``standard_win_rate`` for sampling)."""
    if name is None:
        return None
    if name == "sample" or n == 1:
        return "standard_win_rate"
    return f"{name}{n}_win_rate" if n is not None else None


def _float(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _ci(cols: Any, key: str | None) -> tuple[float | None, float | None, float | None, Any]:
    c = cols.get(key) if isinstance(cols, dict) and key else None
    if not isinstance(c, dict):
        return None, None, None, None
    return _float(c.get("mean")), _float(c.get("low")), _float(c.get("high")), c.get("n_prompts")


def columns(judges: Sequence[str]) -> list[str]:
    """The columns of ``runs.csv`` (judge-dependent ones for each judge in ``judges``)."""
    cols = ["job", "status", "run_name", "method", "procedure", "inference_metric", "transform", "family", "t", "beta",
            "algo", "seed", "steps"]
    for j in judges:
        for m in ("kl", "standard_win_rate", "inference_win_rate"):
            cols += [f"{j}_{m}", f"{j}_{m}_low", f"{j}_{m}_high"]
        cols.append(f"{j}_n_prompts")
    cols += ["theory_kl_at_beta", "theory_inference_win_rate_at_measured_kl", "kl_ratio",
             "world_s", "calibration_s", "train_s", "eval_s", "toy_built", "calibration_hit", "eval_reference_hit",
             "error", "overrides", "path"]
    return cols


def job_row(job: Job, judges: Sequence[str]) -> dict:
    """One ``runs.csv`` row (None where a value is unknown)."""
    m = job.metrics or {}
    cfg = job.config or {}
    name, n = procedure_of(job)
    metric = inference_metric(name, n)
    family, t = transform_family(cfg.get("transform"), m.get("transform"))
    algo_cfg = cfg.get("algo") if isinstance(cfg.get("algo"), dict) else {}
    transform_label = m.get("transform") or (f"{family}(t={t:g})" if t is not None else family)
    row: dict[str, Any] = {
        "job": job.job, "status": job.status, "run_name": m.get("run_name"), "method": method_of(job),
        "procedure": m.get("procedure") or (f"{name}{n}" if name else None), "inference_metric": metric,
        "transform": transform_label, "family": family, "t": t,
        "beta": _float(m.get("beta", algo_cfg.get("beta"))), "algo": m.get("algo") or algo_cfg.get("name"),
        "seed": m.get("seed", cfg.get("seed")), "steps": m.get("steps", algo_cfg.get("steps")),
    }
    ev = m.get("eval") if isinstance(m.get("eval"), dict) else {}
    judges_data = ev.get("judges") if isinstance(ev.get("judges"), dict) else {}
    for j in judges:
        cols = judges_data.get(j)
        n_prompts = None
        for short, key in (("kl", "kl"), ("standard_win_rate", "standard_win_rate"), ("inference_win_rate", metric)):
            mean, low, high, n_p = _ci(cols, key)
            row[f"{j}_{short}"], row[f"{j}_{short}_low"], row[f"{j}_{short}_high"] = mean, low, high
            n_prompts = n_prompts if n_prompts is not None else n_p
        row[f"{j}_n_prompts"] = n_prompts
    th = ev.get("theory") if isinstance(ev.get("theory"), dict) else {}
    label = m.get("procedure") or ""
    at = th.get("at_measured_kl") if isinstance(th.get("at_measured_kl"), dict) else {}
    row["theory_kl_at_beta"] = _float(th.get("kl"))
    row["theory_inference_win_rate_at_measured_kl"] = _float(at.get(f"{label}_win_rate"))
    row["kl_ratio"] = _float(m.get("kl_ratio"))
    timings = m.get("timings") if isinstance(m.get("timings"), dict) else {}
    for k in ("world_s", "calibration_s", "train_s", "eval_s"):
        row[k] = _float(timings.get(k))
    cache = m.get("cache") if isinstance(m.get("cache"), dict) else {}
    for k in ("toy_built", "calibration_hit", "eval_reference_hit"):
        row[k] = cache.get(k)
    row["error"] = job.reason or None
    row["overrides"] = " ".join(job.overrides)
    row["path"] = str(job.path)
    return row


def present_judges(jobs: Iterable[Job]) -> list[str]:
    """Judges found in the finished jobs' metrics, reward_model and gold first."""
    seen: list[str] = []
    for job in jobs:
        if job.status != "finished":
            continue
        for j in (job.metrics or {}).get("eval", {}).get("judges", {}):
            if j not in seen:
                seen.append(j)
    return sorted(seen, key=lambda j: (JUDGES.index(j) if j in JUDGES else len(JUDGES), j))


def swept_overrides(jobs: Sequence[Job]) -> dict[str, list[str]]:
    """Per job, the overrides not shared by every job that has any (the swept ones); all of them
    when fewer than two jobs have overrides."""
    known = [set(j.overrides) for j in jobs if j.overrides]
    if len(known) <= 1:
        return {j.job: list(j.overrides) for j in jobs}
    common = set.intersection(*known)
    return {j.job: [o for o in j.overrides if o not in common] for j in jobs}


# ----------------------------------------------------------------------------------------------
# Series and theory
# ----------------------------------------------------------------------------------------------


@dataclass
class Series:
    """Finished runs of one method (:func:`method_of`) under one procedure."""

    key: tuple
    family: str
    t: float | None
    procedure: str | None
    algo: str | None
    label: str
    jobs: list[Job]
    rows: list[dict]
    theory: dict[str, dict | None] = field(default_factory=dict)  # judge -> curve
    theory_note: str = ""


def build_series(jobs: Sequence[Job], judges: Sequence[str], theory_points: int = THEORY_POINTS) -> list[Series]:
    """Group finished jobs by (procedure, method) and compute each calibrated method's theory curve
    per judge over the KL range that judge measured."""
    finished = [j for j in jobs if j.status == "finished"]
    groups: dict[tuple, list[Job]] = {}
    for job in finished:
        row = job_row(job, judges)
        groups.setdefault((row["procedure"], row["method"]), []).append(job)
    procs = {k[0] for k in groups}
    out = []
    for key in sorted(groups, key=lambda k: (str(k[0]), k[1])):
        proc, method = key
        members = groups[key]
        rows = [job_row(j, judges) for j in members]
        label = f"{proc} {method}" if len(procs) > 1 else method
        algo = rows[0]["algo"]
        family = algo if algo in NO_TRANSFORM_ALGOS else rows[0]["family"]
        out.append(Series(key, family, rows[0]["t"], proc, algo, label, members, rows))
    for s in out:  # theory over each judge's whole measured KL range, so families compare across it
        span = {j: [(r[f"{j}_kl"], r[f"{j}_kl_low"], r[f"{j}_kl_high"]) for x in out for r in x.rows] for j in judges}
        s.theory, s.theory_note = theory_curves(s, judges, theory_points, span)
    return out


def theory_curves(s: Series, judges: Sequence[str], num: int,
                  span: dict[str, list[tuple]] | None = None) -> tuple[dict[str, dict | None], str]:
    """Calibrated-space theory (``theory.frontier``) of the series' transform at KLs spanning
    each judge's measured range (``span[judge]``: (mean, low, high) KLs of every run in the plot;
    default the series' own) plus the series' measured KLs; ``optimal`` uses the optimal frontier."""
    from infalign.math import theory
    from infalign.math.procedures import make_procedure
    from infalign.math.transforms import as_transform

    job = s.jobs[0]
    name, n = procedure_of(job)
    tcfg = (job.config or {}).get("transform")
    if s.family == "raw":
        return {j: None for j in judges}, "raw: no calibrated-space theory"
    if s.algo in NO_TRANSFORM_ALGOS:
        return {j: None for j in judges}, f"{s.algo}: trains without a transform, no calibrated-space theory"
    if name is None or not isinstance(tcfg, dict):
        return {j: None for j in judges}, "no procedure/transform config"
    try:
        procedure = make_procedure(name, int(n or 1))
        transform = None
        if s.family != "optimal":
            from hydra.utils import instantiate

            transform = as_transform(instantiate(tcfg))
            if not transform.calibrated:
                return {j: None for j in judges}, f"{s.family}: not calibrated, no theory"
    except Exception as exc:  # noqa: BLE001 - an odd transform must not stop the report
        return {j: None for j in judges}, f"theory skipped: {type(exc).__name__}: {last_line(str(exc))}"
    curves: dict[str, dict | None] = {}
    for j in judges:
        own = [(r[f"{j}_kl"], r[f"{j}_kl_low"], r[f"{j}_kl_high"]) for r in s.rows if r[f"{j}_kl"] is not None]
        if not own:
            curves[j] = None
            continue
        grid = theory_grid([k for k in (span or {}).get(j, own) if k[0] is not None] or own, num,
                           extra=[k[0] for k in own])
        try:
            f = (theory.optimal_frontier(procedure, grid) if transform is None
                 else theory.frontier(transform, procedure, grid))
        except Exception as exc:  # noqa: BLE001
            curves[j] = None
            s.theory_note = f"theory failed: {type(exc).__name__}: {last_line(str(exc))}"
            continue
        ok = np.asarray(f.valid, bool)  # reachable and converged
        curves[j] = {"transform": f.transform, "procedure": procedure.label, "kl": f.kl_budget[ok].tolist(),
                     "beta": f.beta[ok].tolist(), "standard_win_rate": f.standard_win_rate[ok].tolist(),
                     "win_rate": f.win_rate[ok].tolist(), "unreachable_kl": f.kl_budget[~ok].tolist()}
    return curves, ""


def theory_grid(kls: Sequence[tuple], num: int = THEORY_POINTS, extra: Sequence[float] = ()) -> np.ndarray:
    """KL budgets spanning the measured (mean, low, high) KLs, clipped to >= MIN_THEORY_KL, with
    the measured means (and ``extra``) included; log-spaced when the range covers over a decade."""
    vals = [v for triple in kls for v in triple if v is not None and math.isfinite(v)]
    means = [m for m in [*(k[0] for k in kls), *extra] if m is not None and m > MIN_THEORY_KL]
    lo = max(min(vals), MIN_THEORY_KL)
    hi = max(max(vals), lo * 1.5)
    grid = np.geomspace(lo, hi, num) if hi / lo > 10 else np.linspace(lo, hi, num)
    return np.unique(np.concatenate([grid, np.asarray(means, np.float64)]))


# ----------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------

_FAMILY_COLORS = {"identity": "tab:blue", "raw": "dimgray", "log": "tab:green", "optimal": "black",
                  "sqrt": "tab:brown"}
_T_CMAPS = {"exp": "Reds", "expn": "Purples"}
_OTHER_CMAPS = ["Oranges", "Greens", "Blues", "Greys"]
_MARKERS = ["o", "s", "^", "D", "v", "P"]


def series_colors(series: Sequence[Series]) -> dict[tuple, Any]:
    """A colour per series: fixed colours for families without t; for t families (exp, expn), a
    shade of the family's colormap per t (darker = larger |t|)."""
    import matplotlib

    colors: dict[tuple, Any] = {}
    fallback = iter(["tab:cyan", "tab:olive", "tab:pink", "tab:brown", "gold", "teal"] * 10)
    family_ts: dict[str, list[float]] = {}
    for s in series:
        if s.t is not None:
            family_ts.setdefault(s.family, [])
            if s.t not in family_ts[s.family]:
                family_ts[s.family].append(s.t)
    extra = iter(_OTHER_CMAPS * 10)
    cmaps = {fam: matplotlib.colormaps[_T_CMAPS.get(fam) or next(extra)] for fam in family_ts}
    plain: dict[str, Any] = {}
    for s in series:
        if s.t is None:
            if s.family not in plain:
                plain[s.family] = _FAMILY_COLORS.get(s.family) or next(fallback)
            colors[s.key] = plain[s.family]
        else:
            ts = sorted(family_ts[s.family], key=abs)
            shade = 0.85 if len(ts) == 1 else 0.45 + 0.5 * ts.index(s.t) / (len(ts) - 1)
            colors[s.key] = cmaps[s.family](shade)
    return colors


def plot_series(series: Sequence[Series], judges: Sequence[str], which: str, path: Path) -> None:
    """Win rate vs KL, one subplot per judge (and, for inference-time win rates of a sweep over
    several procedures/N, one row per procedure): points with 95 % CIs on both axes, a line through
    each series sorted by KL, and the series' theory curve dashed in the same colour.

    ``which``: ``inference`` (each run's procedure at its N) or ``standard``."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from infalign.infra.plotting import save_png

    col = "inference_win_rate" if which == "inference" else "standard_win_rate"
    th_key = "win_rate" if which == "inference" else "standard_win_rate"
    procs = sorted({s.procedure for s in series if s.procedure})
    algos = sorted({str(s.algo) for s in series})
    markers = {a: _MARKERS[i % len(_MARKERS)] for i, a in enumerate(algos)}
    colors = series_colors(series)
    ylabel = ("standard win rate" if which == "standard"
              else f"{procs[0]} win rate" if len(procs) == 1 else "inference-time win rate (run's procedure, N)")
    judges = list(judges) or ["reward_model"]
    panels = procs if which == "inference" and len(procs) > 1 else [None]  # one row per procedure/N
    fig, axes = plt.subplots(len(panels), len(judges), figsize=(6.4 * len(judges), 4.8 * len(panels)),
                             squeeze=False, sharey=True)
    any_theory = False
    for row, proc in zip(axes, panels):
        for ax, judge in zip(row, judges):
            for s in series:
                if proc is not None and s.procedure != proc:
                    continue
                pts = sorted((r for r in s.rows if r[f"{judge}_kl"] is not None and r[f"{judge}_{col}"] is not None),
                             key=lambda r: r[f"{judge}_kl"])
                color = colors[s.key]
                if pts:
                    x = np.array([r[f"{judge}_kl"] for r in pts])
                    y = np.array([r[f"{judge}_{col}"] for r in pts])
                    xerr = _err(pts, f"{judge}_kl", x)
                    yerr = _err(pts, f"{judge}_{col}", y)
                    ax.errorbar(x, y, xerr=xerr, yerr=yerr, color=color, marker=markers[str(s.algo)], ms=6,
                                lw=1.4, capsize=3, elinewidth=0.9, label=s.label)
                curve = s.theory.get(judge)
                if curve and curve["kl"]:
                    ax.plot(curve["kl"], curve[th_key], ls="--", lw=1.3, color=color, alpha=0.9)
                    any_theory = True
            ax.axhline(0.5, color="gray", lw=0.8, ls=":")
            ax.set_xlabel("KL(pi || pi_ref) [nats]")
            ax.set_ylabel(f"{proc + ' win rate' if proc else ylabel} vs reference")
            ax.set_title(f"judge: {judge}" + (f" -- {proc}" if proc else ""))
            ax.grid(alpha=0.3)
            if not series:
                ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes)
        handles, labels = row[0].get_legend_handles_labels()
        if any_theory:
            handles.append(Line2D([], [], color="gray", ls="--"))
            labels.append("theory (calibrated space)")
        if handles:
            row[-1].legend(handles, labels, fontsize=8, loc="best")
    fig.suptitle(f"{ylabel} vs KL: trained policies (95% CI) and theory", fontsize=11)
    save_png(fig, path)


def _err(rows: list[dict], key: str, mean: np.ndarray) -> np.ndarray:
    low = np.array([r[f"{key}_low"] if r[f"{key}_low"] is not None else m for r, m in zip(rows, mean)])
    high = np.array([r[f"{key}_high"] if r[f"{key}_high"] is not None else m for r, m in zip(rows, mean)])
    return np.vstack([np.maximum(mean - low, 0.0), np.maximum(high - mean, 0.0)])


# ----------------------------------------------------------------------------------------------
# Matched KL (per procedure family, N and judge) and the distance from theory
# ----------------------------------------------------------------------------------------------

MATCHED_KL_COLUMNS = ["panel", "family", "n", "judge", "metric", "kl", "method", "baseline", "win_rate",
                      "win_rate_low", "win_rate_high", "gain", "gain_low", "gain_high", "significant", "n_seeds",
                      "seed_spread", "n_runs", "n_prompts", "note"]


@dataclass
class Panel:
    """One matched-KL comparison: a procedure family at one N (``standard`` for N = 1 or plain
    sampling), under one judge."""

    name: str  # "standard" | e.g. "bon4"
    family: str  # bon | won | sample (the family of the runs' N columns)
    n: int
    judge: str
    metric: str  # the per-prompt key, e.g. "bon4_win_rate"
    result: MatchedKL

    @property
    def title(self) -> str:
        return f"{self.name} ({self.judge})"


def eval_family(job: Job) -> str | None:
    """``eval.procedure`` (bon | won | sample), else the family of the run's procedure."""
    ev = (job.metrics or {}).get("eval")
    fam = ev.get("procedure") if isinstance(ev, dict) else None
    return str(fam) if fam else procedure_of(job)[0]


def panel_ns(job: Job) -> list[int]:
    """The Ns a run is compared at: every N of ``eval.ns`` (one sample pool evaluates them all);
    when the method depends on N (e.g. a transform optimal for N, a baseline trained on best-of-N
    pairs) only ``method_info.trained_n`` -- and N = 1, the standard win rate, which every policy
    has whatever it was trained for (the paper's standard-win-rate comparison includes them)."""
    m = job.metrics or {}
    info = m.get("method_info") if isinstance(m.get("method_info"), dict) else {}
    ns = {int(n) for n in ((m.get("eval") or {}).get("ns") or [procedure_of(job)[1] or 1])}
    if info.get("depends_on_n") and info.get("trained_n") is not None:
        return sorted({int(info["trained_n"])} | ({1} & ns))
    return sorted(ns)


def panel_of(family: str, n: int) -> tuple[str, int]:
    """The panel (family, N) that N under ``family`` is compared on: N = 1 and plain sampling are
    both the standard win rate, panel ("sample", 1)."""
    return ("sample", 1) if family == "sample" or n == 1 else (family, int(n))


def panel_name(family: str, n: int) -> str:
    """``standard`` for ("sample", 1), else e.g. ``bon4``."""
    return "standard" if family == "sample" else f"{family}{n}"


def panel_metric(family: str, n: int) -> str:
    """The per-prompt key a panel compares: ``standard_win_rate`` or e.g. ``bon4_win_rate``."""
    return "standard_win_rate" if family == "sample" else f"{family}{n}_win_rate"


def panel_runs(jobs: Sequence[Job], judges: Sequence[str]) -> tuple[dict[tuple, list[Run]], list[str]]:
    """Per panel (family, N, judge; :func:`panel_of`) the :class:`Run` of every finished job with
    per-prompt statistics (``eval.per_prompt``), once per panel; notes for the finished jobs left
    out and why."""
    panels: dict[tuple, list[Run]] = {}
    notes = []
    for job in jobs:
        if job.status != "finished":
            continue
        method = method_of(job)
        pp = (job.metrics.get("eval") or {}).get("per_prompt")
        if not isinstance(pp, dict) or not pp.get("prompt_ids"):
            notes.append(f"job {job.job} ({method}): no per-prompt statistics in metrics.json (recorded before "
                         "eval.per_prompt existed): shown in runs.csv, left out of the matched-KL comparison")
            continue
        family = eval_family(job) or "sample"
        seed = (job.metrics.get("seed") if job.metrics.get("seed") is not None else job.config.get("seed"))
        for fam, n in dict.fromkeys(panel_of(family, n) for n in panel_ns(job)):
            key = panel_metric(fam, n)
            for judge in judges:
                cols = pp.get(judge) if isinstance(pp.get(judge), dict) else {}
                if "kl" not in cols or key not in cols:
                    continue
                run = Run(method, seed if seed is not None else 0, cols["kl"], cols[key], pp["prompt_ids"], job.job)
                panels.setdefault((fam, n, judge), []).append(run)
    return panels, notes


def compare_panels(jobs: Sequence[Job], judges: Sequence[str], baselines: Sequence[str] | None = None,
                   num_kl: int = 6, num_resamples: int = 2000, seed: int = 0) -> tuple[list[Panel], list[str]]:
    """:func:`infalign.math.matched_kl.matched_kl` on every panel (standard first, then by family, N;
    judges in report order); plus the notes of :func:`panel_runs`."""
    runs, notes = panel_runs(jobs, judges)
    order = {j: i for i, j in enumerate(judges)}
    out = []
    for key in sorted(runs, key=lambda k: (k[0] != "sample", k[0], k[1], order.get(k[2], 99))):
        family, n, judge = key
        res = matched_kl(runs[key], baselines, num_kl=num_kl, num_resamples=num_resamples, seed=seed)
        out.append(Panel(panel_name(family, n), family, n, judge, panel_metric(family, n), res))
    return out, notes


def matched_kl_rows(panels: Sequence[Panel]) -> list[dict]:
    """``matched_kl.csv``: one row per panel x KL x method (``baseline`` empty: the method's win
    rate) and per panel x KL x method x baseline (with the gain); a panel without a common KL gets
    one row carrying its note."""
    rows = []
    for p in panels:
        head = {"panel": p.name, "family": p.family, "n": p.n, "judge": p.judge, "metric": p.metric,
                "n_prompts": p.result.n_prompts, "note": p.result.note or None}
        body = p.result.rows()
        rows += [{**head, **r} for r in body] if body else [head]
    return rows


def _pct(x: float, digits: int = 1) -> str:
    """``x`` in signed points (x100); no ``-0.0``."""
    v = round(100 * float(x), digits)
    return f"{v + 0.0 if v != 0 else 0.0:+.{digits}f}"


def gain_clause(p: Panel, g: Gain, i: int) -> str:
    """E.g. ``expn(t=4) beats identity by +2.1 [+0.8, +3.4] points (significant at 4/6 KLs)`` at
    grid KL ``i``: "beats" / "trails" only when significant there, else "does not differ
    significantly from"."""
    verb = ("does not differ significantly from" if not g.significant[i]
            else "beats" if g.gain[i] > 0 else "trails")
    seeds = f", {g.n_seeds} seeds, spread {100 * g.seed_spread[i]:.1f}" if g.n_seeds >= 2 else ""
    return (f"{g.method} {verb} {g.baseline}: {_pct(g.gain[i])} [{_pct(g.low[i])}, {_pct(g.high[i])}] points"
            f"{seeds} (significant at {int(g.significant.sum())}/{len(p.result.grid)} KLs)")


def panel_heading(p: Panel) -> str:
    """E.g. ``bon4 (reward_model): 6 common KLs in [0.10, 0.60]; at KL 0.35`` (the middle one)."""
    grid = p.result.grid
    return (f"{p.title}: {len(grid)} common KLs in [{grid[0]:.2f}, {grid[-1]:.2f}]; "
            f"at KL {grid[len(grid) // 2]:.2f}")


def matched_kl_summary(panels: Sequence[Panel]) -> list[str]:
    """One sentence per panel and gain, at the panel's middle common KL (``bon4 (reward_model):
    ... at KL 0.35, expn(t=4) beats identity: +2.1 [+0.8, +3.4] points ...``); one line per
    panel without a comparison."""
    lines = []
    for p in panels:
        if not p.result.common:
            lines.append(f"{p.title}: {p.result.note}")
        lines += [f"{panel_heading(p)}, {gain_clause(p, g, len(p.result.grid) // 2)}" for g in p.result.gains]
    return lines


def matched_kl_markdown(panels: Sequence[Panel], notes: Sequence[str], level: float = 0.95) -> str:
    """``matched_kl.md``: per panel a table, rows = common KLs, columns = each method's win rate
    [CI] then each gain over a baseline [paired CI] in points, ``*`` = significant."""
    out = io.StringIO()
    out.write("# Methods at matched KL\n\n")
    out.write(f"Win rates and gains at KLs covered by every compared method (piecewise-linear in KL through each "
              f"method's runs, no extrapolation); {100 * level:.0f}% percentile CIs from a paired bootstrap over the "
              "shared held-out prompts. Gains in points (x100); `*` = significant: CI excludes 0 and, with >= 2 "
              "seeds, |gain| > seed spread.\n\n")
    for line in notes:
        out.write(f"- {line}\n")
    for p in panels:
        r = p.result
        out.write(f"\n## {p.title}: `{p.metric}`, {r.n_prompts} prompts\n\n")
        if r.note:
            out.write(f"{r.note}\n\n")
        for label, reason in r.excluded:
            out.write(f"- excluded job {label}: {reason}\n")
        if not r.common:
            continue
        if r.excluded:
            out.write("\n")
        methods = list(r.win_rate)
        head = ["KL", *(f"{m} (n={r.n_runs[m]}, seeds={r.n_seeds[m]})" for m in methods),
                *(f"{g.method} - {g.baseline}" for g in r.gains)]
        out.write("| " + " | ".join(_md_cell(h) for h in head) + " |\n")
        out.write("|" + "|".join("---" for _ in head) + "|\n")
        for i, k in enumerate(r.grid):
            cells = [f"{k:.3g}", *(fmt_ci(*(float(v[i]) for v in r.win_rate[m])) for m in methods)]
            cells += [f"{_pct(g.gain[i])} [{_pct(g.low[i])}, {_pct(g.high[i])}]{' *' if g.significant[i] else ''}"
                      for g in r.gains]
            out.write("| " + " | ".join(_md_cell(c) for c in cells) + " |\n")
    return out.getvalue()


def plot_gains(panels: Sequence[Panel], judges: Sequence[str], path: Path) -> None:
    """Gain over each baseline vs KL with its paired 95 % CI band and a zero line: one row of
    subplots per panel name (standard, bon2, bon4, ...), one column per judge; filled markers
    where significant."""
    import matplotlib.pyplot as plt

    from infalign.infra.plotting import save_png

    names = list(dict.fromkeys(p.name for p in panels)) or ["(none)"]
    judges = list(judges) or ["reward_model"]
    by = {(p.name, p.judge): p for p in panels}
    fig, axes = plt.subplots(len(names), len(judges), figsize=(6.4 * len(judges), 4.2 * len(names)), squeeze=False)
    pairs = list(dict.fromkeys((g.method, g.baseline) for p in panels for g in p.result.gains))
    colors = {pair: plt.get_cmap("tab10")(i % 10) for i, pair in enumerate(pairs)}
    for row, name in zip(axes, names):
        for ax, judge in zip(row, judges):
            p = by.get((name, judge))
            ax.axhline(0.0, color="gray", lw=0.9)
            ax.set_title(f"{name} win rate, judge: {judge}")
            ax.set_xlabel("KL(pi || pi_ref) [nats]")
            ax.set_ylabel("gain over baseline [points]")
            ax.grid(alpha=0.3)
            if p is None or not p.result.common:
                msg = "no runs with per-prompt statistics" if p is None else p.result.note
                ax.text(0.5, 0.5, "\n".join(_wrap(msg, 60)), ha="center", va="center", transform=ax.transAxes,
                        fontsize=8)
                continue
            k = p.result.grid
            for g in p.result.gains:
                c = colors[(g.method, g.baseline)]
                ax.fill_between(k, 100 * g.low, 100 * g.high, color=c, alpha=0.2, lw=0)
                ax.plot(k, 100 * g.gain, color=c, lw=1.6, label=f"{g.method} - {g.baseline}")
                ax.scatter(k, 100 * g.gain, color=c, s=22, zorder=3,
                           facecolors=[c if s else "white" for s in g.significant])
            lo, hi = ax.get_ylim()
            if hi - lo < 2.0:  # at least +-1 point, so float-rounding-sized gains do not fill the axis
                mid = (hi + lo) / 2
                ax.set_ylim(mid - 1.0, mid + 1.0)
            if p.result.gains:
                ax.legend(fontsize=8, loc="best")
    fig.suptitle("gain at matched KL, paired 95% CI over prompts (filled marker: significant)", fontsize=11)
    save_png(fig, path)


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(str(text), width) or [""]


THEORY_GAP_COLUMNS = ["job", "method", "procedure", "beta", "seed", "kl_measured", "kl_theory_at_beta", "kl_ratio",
                      "reachable", "metric", "measured", "theory_at_measured_kl", "gap"]


def theory_gap_rows(jobs: Sequence[Job], judge: str = "reward_model") -> list[dict]:
    """``theory_gap.csv``: per finished run with a calibrated-space prediction and per win-rate
    column the theory gives at the measured KL (standard and each N it has):
    ``kl_ratio = KL_measured / KL_theory(beta)`` and ``gap = W_measured - W_theory(KL_measured)``.
    The theory predicts the reward model's own win rates, so ``judge`` is the reward model."""
    rows = []
    for job in jobs:
        if job.status != "finished":
            continue
        m = job.metrics or {}
        ev = m.get("eval") if isinstance(m.get("eval"), dict) else {}
        th = ev.get("theory") if isinstance(ev.get("theory"), dict) else None
        cols = (ev.get("judges") or {}).get(judge) or {}
        at = th.get("at_measured_kl") if th and isinstance(th.get("at_measured_kl"), dict) else None
        if not at:
            continue
        kl = _ci(cols, "kl")[0]
        kl_th = _float(th.get("kl"))
        head = {"job": job.job, "method": method_of(job), "procedure": m.get("procedure"), "beta": _float(m.get("beta")),
                "seed": m.get("seed"), "kl_measured": kl, "kl_theory_at_beta": kl_th,
                "kl_ratio": kl / kl_th if kl is not None and kl_th else None, "reachable": at.get("reachable")}
        for key in sorted(k for k in at if k.endswith("_win_rate")):
            measured, theory_wr = _ci(cols, key)[0], _float(at.get(key))
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


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


@dataclass
class Report:
    root: Path
    out_dir: Path
    judges: list[str]
    jobs: list[Job]
    rows: list[dict]
    series: list[Series]
    summary: dict
    paths: dict[str, Path]
    panels: list[Panel] = field(default_factory=list)
    matched_rows: list[dict] = field(default_factory=list)
    gap_rows: list[dict] = field(default_factory=list)


def build_report(root: Path, out_dir: Path, judge: str = "all", baselines: Sequence[str] | None = None,
                 num_kl: int = 6, num_resamples: int = 2000) -> Report:
    """Collect, tabulate and plot (no W&B, no printing); write runs.csv, runs.md, the PNGs, the
    matched-KL comparison (matched_kl.csv/.md, gain_vs_kl.png) and theory_gap.csv.

    ``baselines``: methods gains are computed against (default raw and identity, those present);
    ``num_kl``: common KLs per panel; ``num_resamples``: paired bootstrap resamples.
    ``summary.json`` is written by :func:`write_summary` (after W&B, so it can record the run)."""
    require(num_kl >= 1, "num_kl", num_kl, "an integer >= 1")
    require(num_resamples >= 100, "num_resamples", num_resamples, "an integer >= 100 (percentile CIs)")
    require(judge == "all" or judge in JUDGES, "judge", judge, f"one of {', '.join(JUDGES)} or all")
    root, out_dir = Path(root), Path(out_dir)
    jobs = collect(root, skip=[out_dir])
    judges = (present_judges(jobs) or list(JUDGES)) if judge == "all" else [judge]
    rows = [job_row(j, judges) for j in jobs]
    series = build_series(jobs, judges)
    paths = {"csv": out_dir / "runs.csv", "md": out_dir / "runs.md", "summary": out_dir / "summary.json",
             **{f"plot_{k}": out_dir / v for k, v in PLOTS.items()},
             "matched_kl_csv": out_dir / "matched_kl.csv", "matched_kl_md": out_dir / "matched_kl.md",
             "plot_gain": out_dir / "gain_vs_kl.png", "theory_gap_csv": out_dir / "theory_gap.csv"}
    atomic_write_csv(paths["csv"], rows, columns(judges))
    atomic_write_text(paths["md"], markdown(rows, judges, jobs, root))
    for which in PLOTS:
        plot_series(series, judges, which, paths[f"plot_{which}"])
    panels, notes = compare_panels(jobs, judges, baselines, num_kl, num_resamples)
    matched = matched_kl_rows(panels)
    atomic_write_csv(paths["matched_kl_csv"], matched, MATCHED_KL_COLUMNS)
    atomic_write_text(paths["matched_kl_md"], matched_kl_markdown(panels, notes))
    plot_gains(panels, judges, paths["plot_gain"])
    gaps = theory_gap_rows(jobs)
    atomic_write_csv(paths["theory_gap_csv"], gaps, THEORY_GAP_COLUMNS)
    summary = make_summary(root, out_dir, judges, jobs, rows, series, paths)
    summary["matched_kl"] = {"notes": notes, "lines": matched_kl_summary(panels),
                             "panels": [{"panel": p.name, "judge": p.judge, "metric": p.metric,
                                         "common": p.result.common, "kl": p.result.grid.tolist(),
                                         "note": p.result.note, "excluded": p.result.excluded,
                                         "ranges": p.result.ranges} for p in panels]}
    summary["theory_gap"] = median_theory_gap(gaps)
    return Report(root, out_dir, judges, jobs, rows, series, summary, paths, panels, matched, gaps)


def write_summary(report: Report) -> None:
    atomic_write_json(report.paths["summary"], report.summary)


def fmt_ci(mean: Any, low: Any, high: Any, digits: int = 3) -> str:
    if mean is None:
        return "–"
    if low is None or high is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _md_cell(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x).replace("|", "\\|").replace("\n", " ")


def markdown(rows: list[dict], judges: Sequence[str], jobs: Sequence[Job], root: Path) -> str:
    """runs.md: counts, one table row per job (CIs as ``mean [low, high]``), failed/missing list."""
    counts = Counter(r["status"] for r in rows)
    out = io.StringIO()
    out.write(f"# Sweep report: `{root}`\n\n")
    out.write(", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES) + f" ({len(rows)} jobs)\n\n")
    head = ["job", "status", "run", "method", "procedure", "beta", "seed"]
    for j in judges:
        head += [f"KL ({j})", f"standard win ({j})", f"inference win ({j})"]
    head += ["kl_ratio", "train_s", "error"]
    out.write("| " + " | ".join(head) + " |\n")
    out.write("|" + "|".join("---" for _ in head) + "|\n")
    for r in rows:
        cells = [r["job"], r["status"], r["run_name"], r["method"], r["procedure"], r["beta"], r["seed"]]
        for j in judges:
            cells += [fmt_ci(*(r[f"{j}_{m}{s}"] for s in ("", "_low", "_high")))
                      for m in ("kl", "standard_win_rate", "inference_win_rate")]
        cells += [r["kl_ratio"], r["train_s"], r["error"]]
        out.write("| " + " | ".join(_md_cell(c) for c in cells) + " |\n")
    bad = [j for j in jobs if j.status != "finished"]
    if bad:
        out.write("\n## Failed and missing jobs\n\n")
        for j in bad:
            out.write(f"- **{j.job}** ({j.status}): {j.reason}  \n  overrides: `{' '.join(j.overrides)}`\n")
    return out.getvalue()


def make_summary(root: Path, out_dir: Path, judges: Sequence[str], jobs: Sequence[Job], rows: list[dict],
                 series: Sequence[Series], paths: dict[str, Path]) -> dict:
    counts = Counter(j.status for j in jobs)
    finished = [r for r in rows if r["status"] == "finished"]
    best = {}
    for j in judges:
        cands = [r for r in finished if r[f"{j}_inference_win_rate"] is not None]
        if cands:
            b = max(cands, key=lambda r: r[f"{j}_inference_win_rate"])
            best[j] = {"job": b["job"], "run_name": b["run_name"], "inference_win_rate": b[f"{j}_inference_win_rate"],
                       "kl": b[f"{j}_kl"]}
    return {
        "multirun_dir": str(root), "out_dir": str(out_dir), "judges": list(judges),
        "counts": {s: counts.get(s, 0) for s in STATUSES} | {"total": len(jobs)},
        "problems": [{"job": j.job, "status": j.status, "reason": j.reason, "overrides": j.overrides,
                      "path": str(j.path)} for j in jobs if j.status != "finished"],
        "best_inference_win_rate": best,
        "series": [
            {"label": s.label, "family": s.family, "t": s.t, "procedure": s.procedure, "algo": s.algo,
             "jobs": [j.job for j in s.jobs], "theory_note": s.theory_note,
             "points": {j: [{"job": r["job"], "beta": r["beta"], **{k: r[f"{j}_{k}"] for k in (
                 "kl", "kl_low", "kl_high", "standard_win_rate", "standard_win_rate_low", "standard_win_rate_high",
                 "inference_win_rate", "inference_win_rate_low", "inference_win_rate_high")}} for r in s.rows]
                        for j in judges},
             "theory": s.theory}
            for s in series
        ],
        "files": {k: str(v) for k, v in paths.items()},
    }


# ----------------------------------------------------------------------------------------------
# W&B
# ----------------------------------------------------------------------------------------------


def _offline(logger_cfg: dict) -> bool:
    """A job logged offline: ``logger.mode`` (``${oc.env:WANDB_MODE,offline}``), or the older ``offline`` flag."""
    if "mode" in logger_cfg:
        return logger_cfg["mode"] != "online"
    return bool(logger_cfg.get("offline", True))


def wandb_settings(jobs: Sequence[Job], root: Path) -> dict | None:
    """project/entity/group/offline of the sweep's W&B runs (None if no job logged to W&B).

    ``group`` is the jobs' ``logger.group``, else what ``infalign-train`` used for a multirun
    (``multirun-<sweep dir name>``, the sweep dir being the job dir's parent)."""
    wb = [j for j in jobs if isinstance(j.config.get("logger"), dict) and j.config["logger"].get("kind") == "wandb"]
    if not wb:
        return None
    groups = Counter(str(j.config["logger"].get("group") or f"multirun-{j.path.parent.name}") for j in wb)
    lg = wb[0].config["logger"]
    return {"project": lg.get("project") or "infalign", "entity": lg.get("entity"),
            "group": groups.most_common(1)[0][0],
            "offline": any(_offline(j.config["logger"]) for j in wb)}


def log_to_wandb(report: Report, settings: dict) -> dict:
    """Log the runs, matched-KL and theory-gap tables + plots to a ``report`` run (job_type=report) in the sweep's group; finish it.

    Offline when the jobs were offline or ``WANDB_MODE`` says so. Returns what was done."""
    import wandb

    env_mode = os.environ.get("WANDB_MODE", "").lower()
    mode = ("disabled" if env_mode == "disabled" else
            "offline" if settings.get("offline") or env_mode in ("offline", "dryrun") else "online")
    report.out_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=settings["project"], entity=settings.get("entity"), group=settings["group"],
                     job_type="report", name="report", dir=str(report.out_dir), mode=mode, reinit="create_new",
                     config={"multirun_dir": str(report.root), "judges": report.judges},
                     settings=wandb.Settings(console="off"))
    try:
        cols = columns(report.judges)
        table = wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in report.rows], allow_mixed_types=True)
        matched = wandb.Table(columns=MATCHED_KL_COLUMNS, allow_mixed_types=True,
                              data=[[r.get(c) for c in MATCHED_KL_COLUMNS] for r in report.matched_rows])
        gaps = wandb.Table(columns=THEORY_GAP_COLUMNS, allow_mixed_types=True,
                           data=[[r.get(c) for c in THEORY_GAP_COLUMNS] for r in report.gap_rows])
        run.log({"runs": table, "matched_kl": matched, "theory_gap": gaps,
                 "plots/gain_vs_kl": wandb.Image(str(report.paths["plot_gain"])),
                 **{f"plots/{Path(p).stem}": wandb.Image(str(report.paths[f"plot_{k}"])) for k, p in PLOTS.items()}})
        run.summary.update({f"jobs/{k}": v for k, v in report.summary["counts"].items()})
        run_dir = str(Path(run.dir).parent) if getattr(run, "dir", None) else None
        run.finish()
    except BaseException:
        run.finish(exit_code=1)
        raise
    return {"mode": mode, "project": settings["project"], "group": settings["group"], "run_dir": run_dir}


# ----------------------------------------------------------------------------------------------
# Printing
# ----------------------------------------------------------------------------------------------


def print_matched_kl(report: Report, console) -> None:
    """The matched-KL summary lines and the median distance from theory per method."""
    from rich.markup import escape

    console.print("[bold]matched KL[/] (gain over baseline in points, paired 95% CI; matched_kl.md has every KL)")
    for p in report.panels:
        if not p.result.common:
            console.print(f"  {escape(p.title)}: {escape(p.result.note)}")
            continue
        console.print(f"  {escape(panel_heading(p))}:")
        for g in p.result.gains:
            console.print(f"    {escape(gain_clause(p, g, len(p.result.grid) // 2))}")
    for line in (report.summary.get("matched_kl") or {}).get("notes", []):
        console.print(f"  {escape(line)}")
    if not report.panels:
        console.print("  no finished runs with per-prompt statistics")
    gap = report.summary.get("theory_gap") or {}
    if gap:
        console.print("[bold]distance from theory[/] (reward model, median |measured - theory at measured KL|; "
                      "median KL measured/theory at beta)")
        for method, g in gap.items():
            cells = ", ".join(f"{k.removesuffix('_win_rate')} {v:.3f}" for k, v in g["median_abs_gap"].items())
            ratio = "–" if g["median_kl_ratio"] is None else f"{g['median_kl_ratio']:.2f}"
            console.print(f"  {escape(method)} ({g['runs']} runs): {escape(cells)}; KL ratio {ratio}")


def print_tables(report: Report, console=None, wandb_info: dict | None = None) -> None:
    """Rich tables: failed/missing jobs (swept overrides, reason); finished runs sorted by family
    then KL; the files written."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    bad = [j for j in report.jobs if j.status != "finished"]
    counts = report.summary["counts"]
    console.print(f"[bold]{escape(str(report.root))}[/]: {counts['total']} jobs: {counts['finished']} finished, "
                  f"{counts['failed']} failed, {counts['missing']} missing")
    if bad:
        swept = swept_overrides(report.jobs)
        t = Table(title="failed and missing jobs", show_lines=True)
        for c in ("job", "status", "overrides (swept)", "reason"):
            t.add_column(c, overflow="fold")
        for j in bad:
            t.add_row(escape(j.job), f"[red]{j.status}[/]" if j.status == "failed" else f"[yellow]{j.status}[/]",
                      escape(" ".join(swept.get(j.job) or j.overrides)) or "–", escape(j.reason))
        console.print(t)
    finished = [r for r in report.rows if r["status"] == "finished"]
    for j in report.judges if finished else []:
        finished.sort(key=lambda r, j=j: (str(r["method"]), r[f"{j}_kl"] if r[f"{j}_kl"] is not None else math.inf))
        constant = {c: {r[c] for r in finished} for c in ("procedure", "seed")}
        shown = [c for c in ("procedure", "seed") if len(constant[c]) > 1]
        fixed = ", ".join(f"{next(iter(v))}" for c, v in constant.items() if len(v) == 1 and next(iter(v)) is not None)
        t = Table(title=f"{j}: finished runs ({fixed}; 95% CI; by method, KL)")
        for c in ("job", *shown, "method", "beta"):
            t.add_column(c, justify="right" if c == "beta" else "left", no_wrap=c == "method")
        procs = constant["procedure"]
        for c in ("KL", "standard win", f"{next(iter(procs))} win" if len(procs) == 1 else "inference win"):
            t.add_column(c, justify="right", no_wrap=True)
        for r in finished:
            cells = [r["job"], *("" if r[c] is None else r[c] for c in shown), r["method"],
                     "" if r["beta"] is None else f"{r['beta']:g}"]
            cells += [fmt_ci(*(r[f"{j}_{m}{s}"] for s in ("", "_low", "_high"))).replace(" [", "\n[", 1).replace(", ", ",")
                      for m in ("kl", "standard_win_rate", "inference_win_rate")]
            t.add_row(*[escape(str(c)) for c in cells])
        console.print(t)
    print_matched_kl(report, console)
    console.print("[bold]wrote[/]")
    for p in report.paths.values():
        console.print(f"  {escape(str(p))}")
    if wandb_info:
        console.print(f"  W&B {wandb_info['mode']} run 'report' in group {wandb_info['group']}: {wandb_info['run_dir']}")
