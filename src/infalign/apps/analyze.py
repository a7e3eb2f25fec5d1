"""``infalign-analyze``: predict win rate vs KL curves in calibrated space before training.

For the chosen procedure and N it computes, at every KL budget, the inference-time and standard
win rates of each transform family (several t at once for exp), the optimal transform's frontier,
the best t per budget, and the best-of-N policy's own point; writes ``curves.csv``,
``best_t.csv``, ``metrics.json`` and ``frontier.png`` into the run dir and prints a table. The exact
theory (``K -> inf``) by default; with ``calibration.K`` every transform and the t scan are tilted as a run
with that calibration table trains on them (``Phi_K``, docs/method.md (4.11)), the optimal frontier kept
exact (a bound for every transform of C).

A number it prints is right or says why not: points a transform cannot reach, or where the
optimal fixed point did not converge, are marked (``reachable``/``converged``/``reason`` in
``curves.csv``, ``unreach.``/``no conv.`` in the table, crosses on the plot), and a best t on the
edge of its scan is flagged ``at_scan_edge``. Bad inputs fail in one line (key, value, allowed
values, hint) with exit code 2 and no traceback.
"""

from __future__ import annotations

import logging
import math
import re
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import NamedTuple

import hydra
import numpy as np
from hydra.errors import InstantiationException
from omegaconf import DictConfig, ListConfig

from infalign.apps.analyze_plot import PLOT_SCALES, plot_frontiers
from infalign.apps.config import (
    CONFIG_DIR,
    apply_threads,
    check_analyze_keys,
    decreasing_transform,
    hydra_refusals_exit_2,
    instantiate_checked,
    instantiate_entry,
    load_group_entry,
    own_entry,
)
from infalign.errors import ConfigError, require
from infalign.infra.background import Background
from infalign.infra.cache import atomic_write_csv, atomic_write_json
from infalign.math import theory
from infalign.math.finite_k import MAX_K, seen_through_table, tilted_table
from infalign.math.procedures import BestOfN, Procedure
from infalign.math.transforms import Exp, finite_in_float32

log = logging.getLogger(__name__)

def _number(key: str, value, allowed: str, kind=float):
    """``kind(value)`` or a ConfigError naming ``key`` (``t=abc`` must not be a traceback)."""
    if isinstance(value, bool):
        raise ConfigError(key, value, allowed)
    try:
        out = kind(value)
    except (TypeError, ValueError, OverflowError):  # (OverflowError: int(inf))
        raise ConfigError(key, value, allowed) from None
    if kind is int and out != value and not (isinstance(value, str) and value.strip().lstrip("+-").isdigit()):
        raise ConfigError(key, value, allowed)
    return out


def _numbers(key: str, value, allowed: str) -> list[float]:
    items = list(value) if isinstance(value, ListConfig | list | tuple) else [value]
    return [_number(key, v, allowed) for v in items]


def expn_beta(beta: float, t: float) -> float:
    """The normalised transform's beta for the plain ``exp(t)`` one's: ``expn`` is
    ``exp(t u) / |expm1(t)|`` up to a constant (``math/transforms.Exp``), so the same tilted policy
    has ``beta_expn = beta / |expm1(t)|`` -- what ``algo.beta`` of an ``expn_t*`` entry must be."""
    return float(beta) / abs(math.expm1(float(t))) if math.isfinite(beta) and math.isfinite(t) else math.nan


def kl_budgets(cfg: DictConfig) -> np.ndarray:
    """The KL grid from ``kl.list`` (sorted ascending: every table, CSV row and curve is in that
    order; a repeated budget is an error) or ``kl.start/stop/num`` (validated)."""
    allowed = "KL budgets in nats: finite numbers > 0"
    num = _number("kl.num", cfg.kl.num, "an integer >= 1", int)  # typed even when kl.list replaces them
    start = _number("kl.start", cfg.kl.start, allowed)
    stop = _number("kl.stop", cfg.kl.stop, allowed)
    if cfg.kl.get("list") is not None:
        values = _numbers("kl.list", cfg.kl.list, allowed)
        try:
            budgets = np.sort(theory._check_budgets(values))
        except ConfigError as exc:
            raise ConfigError("kl.list", exc.value, exc.allowed) from None
        require(len(np.unique(budgets)) == len(budgets), "kl.list", values, "distinct KL budgets")
        return budgets
    require(num >= 1, "kl.num", cfg.kl.num, "an integer >= 1")
    require(math.isfinite(start) and start > 0, "kl.start", cfg.kl.start, allowed)
    require(math.isfinite(stop) and (stop > start or (num == 1 and stop == start)), "kl.stop", cfg.kl.stop,
            f"a finite KL > kl.start ({start:g}) when kl.num > 1 ({num} distinct budgets)")
    return np.linspace(start, stop, num)


def auto_t(cfg: DictConfig) -> bool:
    """``t: auto`` (the exp families at 2, 4, 8, 16, negated for worst-of-N: :func:`exponents`)."""
    return isinstance(cfg.t, str) and cfg.t == "auto"


def checked_t(cfg: DictConfig) -> list[float]:
    """``t`` as numbers (ConfigError naming the key): ``auto`` (None here) or nonzero finite numbers with
    ``|t| <= 700``. Checked whether or not an exp-family transform reads it (a typo is an error either way)."""
    allowed = ("'auto' or a nonzero number with |t| <= 700 / non-empty list of them (for exp: t > 0 for bon, "
               "t < 0 for won)")
    if auto_t(cfg):
        return []
    ts = _numbers("t", cfg.t, allowed)
    require(len(ts) > 0, "t", ts, allowed)
    for t in ts:
        require(math.isfinite(t) and t != 0 and abs(t) <= 700, "t", t, allowed,
                "t = 0 is the identity transform: add identity to transforms" if t == 0 else
                "the float64 theory's exp(t u) overflows past |t| = 709; training's float32 past t = 84.6")
    return ts


AUTO_T = (2.0, 4.0, 8.0, 16.0)  # t: auto (the exp families: negated for worst-of-N)


def _is_exp(entry: DictConfig) -> bool:
    """Whether a transform entry instantiates ``exp(t u)`` (``math.transforms.Exp`` or a subclass): the family
    whose sign of ``t`` picks the end of the reference distribution it serves -- ``t: auto``'s negation for
    worst-of-N and the against-the-procedure warning are its. Another family with a ``t`` (a registered
    ``u^t``, say) is drawn at each ``t`` as given (``auto``: 2, 4, 8, 16), with no sign read into it."""
    from hydra.utils import get_object

    try:
        target = get_object(str(entry.get("_target_")))
    except Exception:  # noqa: BLE001 - instantiation says what is wrong with the entry
        return False
    return isinstance(target, type) and issubclass(target, Exp)


def exponents(cfg: DictConfig, procedure: Procedure) -> list[float]:
    """The t values for the exp families (``auto``: 2, 4, 8, 16, negated for worst-of-N), each once
    (``t=[4,4]`` draws one curve).

    A t whose sign works against the procedure (t > 0 with worst-of-N rewards the top of the
    reference distribution: a lower WoN win rate than identity at the same KL; t < 0 with best-of-N) is accepted with a
    warning: it is a legitimate comparison, rarely the intent.
    """
    if auto_t(cfg):
        sign = -1.0 if procedure.sign < 0 else 1.0
        return [sign * t for t in AUTO_T]
    ts = list(dict.fromkeys(checked_t(cfg)))  # (4 and 4.0 are one key)
    for t in ts:
        if (why := procedure.against(t)) is not None:
            log.warning(why)
    return ts


def pinned_t(name: str) -> bool:
    """Whether the transform entry ``name`` pins its own t: its file derives from another entry
    (``defaults: [exp_normalized, _self_]``) and sets ``t`` itself -- ``expn_t4``, ``expn_tm4``, ``exp_won``.
    Such an entry is drawn at its t, not at each t of the ``t`` list (it was, silently: ``transforms=[expn_tm4]``
    drew expn(t=2, 4, 8, 16)); the families ``exp`` and ``exp_normalized`` take the list."""
    own = own_entry("transform", name)
    return bool(own.get("defaults")) and "t" in own


def build_transforms(cfg: DictConfig, procedure: Procedure) -> list:
    """Instantiate every requested transform up front, so bad values fail before any compute."""
    names = list(cfg.transforms) if isinstance(cfg.transforms, ListConfig | list) else [cfg.transforms]
    require(len(names) > 0, "transforms", names, "a non-empty list of conf/transform/ entries")
    out, t_read = [], False
    for name in names:
        if name in ("optimal", "raw"):
            hint = "set optimal=true instead" if name == "optimal" else "raw has no calibrated-space theory"
            raise ConfigError("transforms", name, "calibrated transform families (identity, log, exp, ...)", hint)
        try:
            entry = load_group_entry("transform", str(name))
        except ConfigError as exc:  # the user's key is `transforms`, not the config group
            raise ConfigError("transforms", name, exc.allowed, "add a YAML file to conf/transform/ for a new one") from None
        try:
            exp = _is_exp(entry)
            if entry.get("t") is not None and pinned_t(str(name)):  # drawn at its own t
                if exp and (why := procedure.against(float(entry.t))) is not None:
                    log.warning(f"transforms={name}: {why}")
                out.append(instantiate_checked("transform", name, cfg, make=instantiate_entry))
            elif entry.get("t") is not None:  # a t family: one line per t
                ts = exponents(cfg, procedure) if exp else (checked_t(cfg) or list(AUTO_T))
                out += [instantiate_checked("transform", name, cfg, make=instantiate_entry, t=t) for t in dict.fromkeys(ts)]
                t_read = True
            else:
                out.append(instantiate_checked("transform", name, cfg, make=instantiate_entry))
        except InstantiationException as exc:  # (e.g. a `t` key on an entry whose class takes none)
            raise ConfigError("transforms", name, "an entry of conf/transform/ that instantiates",
                              f"{type(exc.__cause__ or exc).__name__}: {exc.__cause__ or exc}") from None
    if not t_read and not auto_t(cfg):
        log.warning("t=%s is read by the transform families with a t key (exp, exp_normalized, ...) only, and "
                    "transforms=%s has none: not drawn (an entry such as expn_t4 pins its own t)",
                    list(checked_t(cfg)), names)
    labels = [t.label for t in out]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    require(not twice, "transforms", names, "transforms with distinct labels",
            f"{twice} would name two curves alike; a custom entry's label is its name")
    for transform in out:
        if (why := decreasing_transform(transform, "transforms")) is not None:
            log.warning(why)
        check_finite_transform(transform)
    return out


def check_finite_transform(transform) -> None:
    """The theory's own check of ``Phi`` on its grid of [0, 1] (``math/theory.phi_table``: no NaN, no +inf; -inf,
    ``log`` at 0, is density 0), run before any compute: a custom function that fails it (``numpy.arccosh``, a
    user's function with a pole) failed inside the theory's helper process with a traceback and exit 1; it is a
    ConfigError of ``transforms`` here."""
    try:
        theory.phi_table(transform)
    except ValueError as exc:
        grid = theory.DEFAULT_GRID.arrays[1]  # where, on the theory's own grid of u
        try:
            with np.errstate(all="ignore"):
                values = np.asarray(transform.centered(grid, 1.0 - grid), dtype=np.float64)
        except (ValueError, TypeError):  # (a transform that cannot be evaluated there: no place to name)
            values = np.zeros(0)
        bad = (np.isnan(values) | np.isposinf(values)) if values.shape == grid.shape else np.zeros(0, bool)
        where = (f"; first at u = {grid[bad][0]:.9g} ({int(bad.sum())} of {grid.size} grid points)"
                 if bad.any() else "")
        raise ConfigError("transforms", transform.label, "transforms the theory can tilt: no NaN or +inf on [0, 1]",
                          str(exc) + where) from exc


TABLE_ALLOWED = "null (the exact theory: K = inf) or an integer >= 1 (reference samples per prompt)"


def calibration_table(cfg: DictConfig) -> dict | None:
    """``calibration: {K, smoothing}`` as the theory reads it (``math/finite_k.seen_through_table``: each
    transform tilted as ``Phi_K``, docs/method.md (4.11)), or None for the exact theory (``K: null``); a ConfigError
    names a bad key. (A K past ``finite_k.MAX_K`` is kept: the theory is then exact, as beside a trained run.)"""
    node = cfg.get("calibration") or {}
    smoothing = node.get("smoothing", False)
    require(isinstance(smoothing, bool), "calibration.smoothing", smoothing, "true or false")
    if node.get("K") is None:
        require(not smoothing, "calibration.smoothing", smoothing, "false while calibration.K is null (the exact "
                "theory has no table to smooth)", "set calibration.K too (training's default table: 32)")
        return None
    k = _number("calibration.K", node.get("K"), TABLE_ALLOWED, int)
    require(k >= 1, "calibration.K", k, TABLE_ALLOWED)
    return {"K": k, "smoothing": smoothing}


def seen_through(transforms: list, table: dict | None) -> list:
    """Each transform as a run with ``table`` trains on it (``Phi_K``); a transform not finite at the table's
    values (``log`` without a floor at ``C_hat = 0``) is a ConfigError of ``calibration.K``."""
    try:
        return [seen_through_table(transform, table) for transform in transforms]
    except ValueError as exc:
        raise ConfigError("calibration.K", table["K"], "a table whose values every transform maps to finite numbers",
                          f"{exc}; calibration.smoothing=true keeps C_hat off 0 and 1") from None


class Checked(NamedTuple):
    """What :func:`validate` checked, ready for compute."""

    procedure: Procedure
    transforms: list  # seen through the calibration table when one is given
    budgets: np.ndarray
    bt_budgets: np.ndarray  # the best-t scan's budgets
    num: int  # the t scan's size
    calibration: dict | None  # :func:`calibration_table`


def validate(cfg: DictConfig) -> Checked:
    """Everything that can be checked before compute."""
    check_analyze_keys(cfg)  # a key analyze does not read: a typo, or a train setting (`+transform=...`)
    procedure: Procedure = instantiate_checked(cfg.procedure)
    checked_t(cfg)  # also when no exp-family transform reads it
    table = calibration_table(cfg)
    transforms = seen_through(build_transforms(cfg, procedure), table)
    budgets = kl_budgets(cfg)
    values = _numbers("best_t.budgets", cfg.best_t.budgets, "a non-empty list of KL budgets > 0 (nats)")
    try:
        bt_budgets = theory._check_budgets(values)
    except ConfigError as exc:
        raise ConfigError("best_t.budgets", exc.value, exc.allowed) from None
    require(len(np.unique(bt_budgets)) == len(bt_budgets), "best_t.budgets", values,
            "distinct KL budgets (a repeated one gives duplicate rows)")
    num = _number("best_t.num", cfg.best_t.num, "an integer >= 2 (points of the t scan)", int)
    require(num >= 2, "best_t.num", cfg.best_t.num, "an integer >= 2 (points of the t scan)")
    for key in ("optimal", "plot", "parallel"):
        require(isinstance(cfg[key], bool), key, cfg[key], "true or false")
    require(cfg.get("plot_scale", "auto") in PLOT_SCALES, "plot_scale", cfg.get("plot_scale"), f"one of {list(PLOT_SCALES)}")
    return Checked(procedure, transforms, budgets, bt_budgets, num, table)


def table_note(table: dict | None) -> str | None:
    """What the curves tilt, said beside them: None for the exact theory."""
    if table is None:
        return None
    if tilted_table(table) is None:
        return f"calibration K = {table['K']} > {MAX_K}: the exact theory (Phi_K = Phi within its resolution)"
    smoothed = ", smoothed" if table["smoothing"] else ""
    return (f"transforms seen through a K = {table['K']} calibration table{smoothed} (Phi_K, docs/method.md (4.11)); "
            "the optimal frontier stays exact: a bound for every transform of C")


def _optimal_frontier(procedure: Procedure, budgets: np.ndarray, bt_budgets: np.ndarray):
    """The optimal frontier at the plotted budgets, and its win rate at the best-t budgets (one solve)."""
    both = np.unique(np.concatenate([budgets, bt_budgets]))
    opt = theory.optimal_frontier(procedure, both)
    at = {float(b): (w if ok else math.nan) for b, w, ok in zip(both, opt.win_rate, opt.valid)}
    keep = np.isin(both, budgets)
    plotted = theory.Frontier(
        opt.transform, opt.procedure, opt.kl_budget[keep], opt.beta[keep], opt.kl[keep],
        opt.standard_win_rate[keep], opt.win_rate[keep], opt.reachable[keep],
        [r for r, k in zip(opt.reason, keep) if k], opt.converged[keep])
    return plotted, at


# what the helper process imports while this one computes (matplotlib: ~0.7 s of a run's start-up)
PLOT_MODULES = ("matplotlib.figure", "matplotlib.backends.backend_agg", "infalign.apps.analyze_plot")


def analyze(cfg: DictConfig, out_dir: Path, helper: Background | None = None) -> dict:
    """Compute everything; write CSVs, plot and metrics into ``out_dir``; return the metrics.

    (Whatever goes to the helper is a function of an importable module, never of this one: run as
    ``python -m``, this module is ``__main__``, which a launcher's worker cannot import.)

    With ``parallel`` (default) a helper process (infra/background.py; ``helper``, else one started
    here) imports matplotlib, runs the best-t scan and the transform frontiers, then draws the
    plot, while this process solves the optimal frontier (the longest job) and prints the tables;
    the numbers and files are those of the serial run (``parallel=false``). ``metrics.json`` is
    written last.
    """
    procedure, transforms, budgets, bt_budgets, num, table = validate(cfg)
    parallel = cfg.get("parallel", True)
    own = helper is None or not parallel
    with Background(PLOT_MODULES if cfg.plot else (), enabled=parallel) if own else nullcontext(helper) as helper:
        if not own:  # started before the config existed: give it this run's thread counts first
            helper.submit(apply_threads, cfg.get("threads"), torch=False)
        best_job = helper.submit(theory.best_t, procedure, bt_budgets, theory.default_t_grid(procedure, num),
                                 extend=True, calibration=table)
        frontier_job = helper.submit(theory.frontiers, transforms, procedure, budgets)
        optimal_at: dict[float, float] = {}
        opt = None
        if cfg.optimal:
            opt, optimal_at = _optimal_frontier(procedure, budgets, bt_budgets)
        # the best-of-N policy as a point of the best-of-N plot (under worst-of-N it wins trivially: 1.0)
        bon_point = theory.bon_policy_point(procedure.n) if isinstance(procedure, BestOfN) and procedure.n >= 2 else None
        bon_point_win = (theory.evaluate(_log_exact(), 1.0 / (procedure.n - 1), procedure)[0].win_rate
                         if bon_point else None)
        frontiers = frontier_job.result() + ([opt] if opt is not None else [])
        best = best_job.result()

        # the table each curve tilts through: the transforms' (inf: exact), the optimal frontier's always exact
        table_k, smoothed = tilted_table(table) or (math.inf, False)
        rows = [row | {"n": procedure.n, "calibration_K": math.inf if f is opt else table_k,
                       "calibration_smoothing": False if f is opt else smoothed}
                for f in frontiers for row in f.rows()]
        atomic_write_csv(out_dir / "curves.csv", rows)
        best_rows = [
            {"procedure": procedure.label, "calibration_K": table_k, "calibration_smoothing": smoothed,
             "kl_budget": b, "best_t": t, "beta": be,
             "beta_expn": expn_beta(be, t), "win_rate": w,
             "at_scan_edge": bool(edge), "flat": bool(flat), "trainable": untrainable_reason(t, be) is None,
             "optimal_win_rate": optimal_at.get(float(b), math.nan)}
            for b, t, be, w, edge, flat in zip(best.kl_budget, best.t, best.beta, best.win_rate, best.at_edge,
                                               best.flat)
        ]
        atomic_write_csv(out_dir / "best_t.csv", best_rows)
        metrics = {
            "procedure": procedure.label,
            "transforms": [f.transform for f in frontiers],
            "kl_budgets": budgets.tolist(),
            "calibration": table,  # null: the exact theory (K = inf)
            "best_t": best_rows,
            "unreachable": [r for r in rows if not r["reachable"]],
            "not_converged": [r for r in rows if r["reachable"] and not r["converged"]],
            "bon_policy": None if bon_point is None else {"kl": bon_point.kl, "win_rate": bon_point_win},
        }
        if cfg.plot:
            plot_job = helper.submit(plot_frontiers, frontiers, out_dir / "frontier.png", procedure.label,
                                     None if bon_point is None else (bon_point.kl, bon_point_win),
                                     cfg.get("plot_scale", "auto"), table_note(table))
        else:  # a run dir used before: its plot is another analysis's (beside this one's tables)
            (out_dir / "frontier.png").unlink(missing_ok=True)
        _print_tables(procedure, frontiers, best_rows, bool(cfg.optimal), num, table,  # while the helper draws
                      len(best.ts))
        if cfg.plot:
            metrics["plot_scale"] = plot_job.result()
    atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics


def _log_exact():
    from infalign.math.transforms import Log

    return Log(floor=0.0)


def _cell(f: theory.Frontier, i: int) -> str:
    if not f.reachable[i]:
        return "unreach."
    return f"{f.win_rate[i]:.4f}" if f.converged[i] else "no conv."


TABLE_BUDGETS = 18  # the printed win-rate tables show every KL budget up to this many


def _print_tables(procedure: Procedure, frontiers: list, best_rows: list[dict], optimal: bool = True,
                  scan_num: int = 40, calibration: dict | None = None, scanned: int | None = None) -> None:
    from rich.table import Table

    from infalign.infra.console import console as rich_console

    console = rich_console()
    budgets = frontiers[0].kl_budget
    # every budget up to TABLE_BUDGETS (a kl.list), in tables of at most 6 columns (80 characters), else 6
    # evenly spaced ones -- said so
    if len(budgets) <= TABLE_BUDGETS:
        picks = np.arange(len(budgets))
        shown = None
    else:
        picks = np.unique(np.linspace(0, len(budgets) - 1, 6).round().astype(int))
        shown = f"{len(picks)} of the {len(budgets)} KL budgets, evenly spaced; every one in curves.csv"
    for part, columns in enumerate(np.array_split(picks, math.ceil(len(picks) / 6))):
        table = Table(title=f"{procedure.label} win rate vs pi_ref at KL budget (nats)" + (" (cont.)" if part else ""),
                      caption=shown)
        table.add_column("transform")
        for i in columns:
            table.add_column(f"KL={budgets[i]:.3g}", justify="right")
        for f in frontiers:
            table.add_row(f.transform, *[_cell(f, i) for i in columns])
        console.print(table)
    for f in frontiers:  # one line per transform and reason, listing its budgets
        grouped: dict[str, list[str]] = {}
        for b, r in zip(f.kl_budget, f.reason):
            if r:
                grouped.setdefault(re.sub(r"^KL budget \S+ ", "", r), []).append(f"{b:.3g}")
        for why, bs in grouped.items():
            console.print(f"  unreach. {f.transform} at KL {', '.join(bs)}: {why}", highlight=False)
    if any(not f.converged[i] for f in frontiers for i in picks if f.reachable[i]):
        console.print("  no conv.: the optimal fixed point did not converge there (see curves.csv)", highlight=False)
    scan = np.abs(theory.default_t_grid(procedure, scan_num))
    step = (scan.max() / scan.min()) ** (1 / max(1, scan_num - 1))
    bt = Table(title=f"best exp t for {procedure.label} (beta: transform=exp; beta expn: the normalised "
                     "expn_t* entries)",
               caption=f"best of {scan_num} log-spaced |t| in [{scan.min():g}, {scan.max():g}], each "
                       f"{100 * (step - 1):.0f} % above the last (best_t.num; extended past an end the best sits "
                       "on" + (f": {scanned} t in all" if scanned and scanned > scan_num else "")
                       + "): a pick is good to about that step")
    # the optimal frontier's column whenever it was computed (optimal=true); a budget it cannot reach: unreach.
    for col in ("KL budget", "best t", "beta", "beta expn", "win rate", *(("optimal",) if optimal else ())):
        bt.add_column(col, justify="right")
    for r in best_rows:
        t = (f"{r['best_t']:.4g}" + (" (at scan edge)" if r["at_scan_edge"] else "")
             + (f" (flat: other t within {theory.FLAT_TOL:g})" if r["flat"] else "")
             + (f" ({untrainable_reason(r['best_t'], r['beta'])})" if not r["trainable"] else ""))
        rates = [r["win_rate"], *([r["optimal_win_rate"]] if optimal else [])]
        bt.add_row(f"{r['kl_budget']:.4g}", t, f"{r['beta']:.4g}", f"{r['beta_expn']:.4g}",
                   *(f"{w:.4f}" if np.isfinite(w) else "unreach." for w in rates))
    console.print(bt)
    if (note := table_note(calibration)) is not None:
        console.print(f"  {note}", highlight=False)


FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32, ~1.18e-38


# rows of a training step at algo's defaults (prompts_per_step x group_size, training/algorithms/rloo.py): training
# refuses an exp(t u) whose sum over them overflows float32 (apps/train.check_float32_range)
DEFAULT_STEP_ROWS = 16 * 4


def untrainable_reason(t: float, beta: float) -> str | None:
    """Why training (float32) cannot run a best-t row's ``exp(t u)`` at its ``beta`` -- None when it can:
    no t reaches the KL budget (``t`` NaN); ``exp(t u)`` summed over a default step's rows overflows float32
    (``t`` > 88.72 - ln 64 = 84.6); or
    ``beta`` (and so ``beta * KL``) is below float32's normal range, where the KL term of the shaped
    reward rounds away (large-KL worst-of-N rows pick t ~ -130 at beta ~ 1e-56). ``beta`` is
    ``transform=exp``'s; the normalised ``expn_t*`` entries' ``beta / |e^t - 1|`` is below it for
    ``t > log 2`` (by ``e^t - 1``: far below float32's range only for the large t such rows pick) and
    above it for ``t < log 2``."""
    if not math.isfinite(t):
        return "no t reaches this KL"
    if not finite_in_float32(Exp(float(t)), terms=DEFAULT_STEP_ROWS):
        return f"training refuses it: float32 overflow (a step's sum of {DEFAULT_STEP_ROWS} rewards, algo's default 16 x 4)"
    if not beta >= FLOAT32_TINY:
        return f"beta {beta:.3g} underflows float32: training's KL term would vanish"
    return None


def _fail(exc: ConfigError) -> None:
    print(f"infalign-analyze: error: {exc}", file=sys.stderr)
    sys.exit(2)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="analyze")
def _app(cfg: DictConfig) -> dict:
    out_dir = Path(cfg.paths.run_dir)
    try:
        # numpy's BLAS pool (auto = usable cores // concurrent jobs); the theory needs no torch
        apply_threads(cfg.get("threads"), torch=False)
        metrics = analyze(cfg, out_dir, Background.shared)
    except ConfigError as exc:
        _fail(exc)
    log.info("wrote %s", out_dir)
    return metrics


def main() -> None:
    """``infalign-analyze``: start the helper process first, so that its matplotlib import overlaps
    Hydra's composition of the config, then run the Hydra app (every job of a multirun in this
    process shares the helper)."""
    with Background(PLOT_MODULES) as helper:
        Background.shared = helper  # (a class attribute: a launcher pickles _app, never the helper)
        try:
            with hydra_refusals_exit_2():  # (Hydra's own refusal of the command line: exit 2, as the app's)
                _app()
        finally:
            Background.shared = None


if __name__ == "__main__":
    main()
