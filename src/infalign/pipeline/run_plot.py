"""The run's win-rate plot (``win_rates.png``, written by :func:`infalign.pipeline.record.write_files`).

A module of its own, outside ``pipeline/evaluate.EVALUATION_CODE`` (the code a finished run's record
is kept under: a resume re-evaluates a finished run whose evaluation code changed): how the plot is
drawn never changes what is evaluated, so an edit here keeps finished runs as they are.
"""

from __future__ import annotations

from pathlib import Path

from infalign.math.procedures import STANDARD_WIN_RATE
from infalign.pipeline.run_record import RunRecord


def theory_points(theory: dict, procedure, ns) -> tuple[list[int], list[float]]:
    """``(N, predicted win rate)`` at N = 1 (the standard win rate) and at every N of ``ns`` and the
    procedure's own N that ``theory`` predicts (``pipeline/evaluate.theory_prediction`` keeps one per
    evaluated N), in increasing N: the theory line passes through each measured N instead of joining
    N = 1 to the procedure's N by a chord."""
    points = {1: theory.get(STANDARD_WIN_RATE)}
    for n in sorted({*ns, procedure.n}):
        points.setdefault(n, theory.get(procedure.metric_key(n)))
    found = [(n, v) for n, v in sorted(points.items()) if v is not None]
    return [n for n, _ in found], [v for _, v in found]


def plot_win_rates(rec: RunRecord, procedure, path: Path) -> None:
    """Win rate vs N (with 95% CIs) per judge, and the theory's prediction beside them."""
    from infalign.infra.plotting import error_bar_lengths, figure, n_axis, save_png

    ev = rec.eval
    fig = figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    for judge, cols in ev.judges.items():
        found = [(n, c) for n in ev.ns if (c := cols.get(procedure.metric_key(n))) is not None]
        xs = [n for n, _ in found]
        ys = [c.mean for _, c in found]
        yerr = error_bar_lengths(ys, [c.low for _, c in found], [c.high for _, c in found])
        ax.errorbar(xs, ys, yerr=yerr, marker="o", capsize=3, label=f"trained policy ({judge})")
    th = ev.theory
    if th:
        ax.plot(*theory_points(th, procedure, ev.ns), "k*--", ms=10, label=f"theory at beta={th['beta']:g}")
        if "at_measured_kl" in th:
            m = th["at_measured_kl"]
            ax.plot(*theory_points(m, procedure, ev.ns), "s:", color="gray", ms=7,
                    label=f"theory at measured KL={m['kl']:.3g}")
    ax.axhline(0.5, color="gray", lw=0.8)
    n_axis(ax, [1, *ev.ns, procedure.n])
    ax.set_xlabel(f"N ({procedure.name}; N=1 is the standard win rate)")
    ax.set_ylabel("win rate vs reference")
    ax.set_title(rec.run_name or "")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_png(fig, path)
