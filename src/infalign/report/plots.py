"""The report's PNGs: win rate vs KL per method with CIs and theory curves
(``inference_win_rate_vs_kl.png``, ``standard_win_rate_vs_kl.png``), and the matched-KL gains
(``gain_vs_kl.png``, docs/method.md §10)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from infalign.report.matched import Panel, significant_chord_note
from infalign.report.series import Series

PLOTS = {"inference": "inference_win_rate_vs_kl.png", "standard": "standard_win_rate_vs_kl.png"}

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


def series_markers(series: Sequence[Series], marker_key) -> tuple[dict[tuple, str], set[tuple]]:
    """A marker per series, and the series drawn hollow. ``marker_key(s)`` picks the marker of a kind
    of series (its algorithm; its procedure where one panel holds several). Series that would look
    the same -- one colour (family, t), one kind, one procedure: a method and its A/A replica
    (``identity[replica=1]``), its pooled-calibration control (``identity[pooled]``), another
    setting or world -- are told apart: in label order, the first keeps its kind's marker, each
    later one takes the marker ``len(kinds)`` places on, drawn hollow."""
    kinds = sorted({marker_key(s) for s in series}, key=str)
    base = {k: i for i, k in enumerate(kinds)}
    markers: dict[tuple, str] = {}
    hollow: set[tuple] = set()
    twins = twin_index(series, marker_key)
    for s in series:
        j = twins[s.key]
        markers[s.key] = _MARKERS[(base[marker_key(s)] + j * len(kinds)) % len(_MARKERS)]
        if j:
            hollow.add(s.key)
    return markers, hollow


def twin_index(series: Sequence[Series], marker_key) -> dict[tuple, int]:
    """Per series key, its place (0, 1, ...) in label order among the series that would look the same (one
    colour -- family and t --, one kind, one procedure: :func:`series_markers`)."""
    twins: dict[tuple, list[Series]] = {}
    for s in sorted(series, key=lambda s: s.label):
        twins.setdefault((s.family, s.t, marker_key(s), s.procedure), []).append(s)
    return {s.key: j for group in twins.values() for j, s in enumerate(group)}


# The theory curve's line of each twin (twin_index): a method noted apart (``pow3 [transform.fn.loc=-1.0]``)
# shares its family's colour, and its own curve must not pass for the first one's
_THEORY_STYLES = ["--", ":", "-.", (0, (5, 1, 1, 1, 1, 1))]


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
    panels = procs if which == "inference" and len(procs) > 1 else [None]  # one row per procedure/N

    def marker_key(s: Series) -> tuple:
        # one panel holding several procedures' series (the standard plot): the procedure picks the
        # marker too, so bon4's and won4's identity (one colour: one family) are told apart
        return str(s.algo), (s.procedure if panels == [None] and len(procs) > 1 else None)

    markers, hollow = series_markers(series, marker_key)
    twins = twin_index(series, marker_key)
    colors = series_colors(series)
    ylabel = ("standard win rate" if which == "standard"
              else f"{procs[0]} win rate" if len(procs) == 1 else "inference-time win rate (run's procedure, N)")
    judges = list(judges) or ["reward_model"]
    fig, axes = plt.subplots(len(panels), len(judges), figsize=(6.4 * len(judges), 4.8 * len(panels)),
                             squeeze=False, sharey=True)
    any_theory, with_theory = False, []
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
                    ax.errorbar(x, y, xerr=xerr, yerr=yerr, color=color, marker=markers[s.key], ms=6,
                                mfc="white" if s.key in hollow else color, lw=1.4, capsize=3, elinewidth=0.9,
                                label=s.label)
                curve = s.theory.get(judge)
                if curve and curve["kl"]:
                    ax.plot(curve["kl"], curve[th_key], ls=_THEORY_STYLES[twins[s.key] % len(_THEORY_STYLES)], lw=1.3,
                            color=color, alpha=0.9)
                    any_theory = True
                    with_theory.append(ax)
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
        if handles:  # on a panel that draws the theory it names (the gold judge's have none)
            next((ax for ax in row if ax in with_theory), row[0]).legend(handles, labels, fontsize=8, loc="best")
    fig.suptitle(f"{ylabel} vs KL: trained policies (95% CI) and theory", fontsize=11)
    save_png(fig, path)


def _err(rows: list[dict], key: str, mean: np.ndarray) -> np.ndarray:
    low = np.array([r[f"{key}_low"] if r[f"{key}_low"] is not None else m for r, m in zip(rows, mean)])
    high = np.array([r[f"{key}_high"] if r[f"{key}_high"] is not None else m for r, m in zip(rows, mean)])
    from infalign.infra.plotting import error_bar_lengths

    return error_bar_lengths(mean, low, high)


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
            theories: dict[bytes, tuple[np.ndarray, tuple, list[str]]] = {}  # one dashed line per distinct curve
            for g in p.result.gains:
                c = colors[(g.method, g.baseline)]
                ax.fill_between(k, 100 * g.low, 100 * g.high, color=c, alpha=0.2, lw=0)
                total = np.isfinite(g.total_low) & np.isfinite(g.total_high)
                if total.any():  # >= 2 seeds: the total interval (prompts and training noise), dotted edges --
                    # a walkthrough read +-0.5-point prompt bands as sure where the seed intervals were +-5
                    for edge in (g.total_low, g.total_high):
                        ax.plot(k[total], 100 * edge[total], color=c, lw=0.9, ls=":")
                ax.plot(k, 100 * g.gain, color=c, lw=1.6, label=f"{g.method} - {g.baseline}")
                # filled: significant and beyond what the runs' KL placement alone makes (the chord check)
                evidence = [bool(g.significant[i]) and not significant_chord_note(g, i) for i in range(len(k))]
                ax.scatter(k, 100 * g.gain, color=c, s=22, zorder=3, facecolors=[c if e else "white" for e in evidence])
                if (theory := p.theory_gain.get((g.method, g.baseline))) is not None:  # report/theory_gain.py
                    # the theory knows the transform, not the algorithm: exp(t=-4) and exp(t=-4)+ppo over one
                    # baseline share a curve, which drawn twice hid the first (walkthrough): once, both named
                    entry = theories.setdefault(np.asarray(theory, np.float64).tobytes(), (theory, c, []))
                    entry[2].append(f"{g.method} - {g.baseline}")
            for theory, c, names in theories.values():
                ax.plot(k, 100 * theory, color=c, lw=1.2, ls="--", label=f"{', '.join(names)} (theory)")
            lo, hi = ax.get_ylim()
            if hi - lo < 2.0:  # at least +-1 point, so float-rounding-sized gains do not fill the axis
                mid = (hi + lo) / 2
                ax.set_ylim(mid - 1.0, mid + 1.0)
            if p.result.gains:
                ax.legend(fontsize=8, loc="best")
    fig.suptitle("gain at matched KL; band: paired 95% CI over prompts only; dotted: the total interval (prompts "
                 "and seeds, with >= 2 seeds); filled marker: significant by every interval, beyond the chord check; "
                 "dashed: the calibrated-space theory's gain", fontsize=11)
    save_png(fig, path)


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(str(text), width) or [""]
