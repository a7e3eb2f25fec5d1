"""``infalign-analyze``'s plot, ``frontier.png``: in a module of its own so the helper process
(infra/background.py) finds ``plot_frontiers`` by its import path even when ``infalign.apps.analyze``
runs as ``__main__`` (``python -m``, a joblib launcher's worker)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

PLOT_SCALES = ("auto", "linear", "logodds")


SATURATION = 1e-12  # the log-odds axis shows win rates in [1e-12, 1 - 1e-12]; beyond, on its edge


def _logit(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(p) - np.log1p(-p)


def _y(values: np.ndarray, scale: str) -> np.ndarray:
    """Plotted y of win rates: as they are, or their log-odds with a win rate within 1e-12 of 0 or 1
    (exactly 1 in float64 where a curve saturates) clipped to that edge, so a valid point is drawn
    (on the edge) instead of vanishing as +-inf."""
    return _logit(np.clip(values, SATURATION, 1 - SATURATION)) if scale == "logodds" else values


def line_points(f, key: str, scale: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of frontier ``f``'s line of ``key``: the KL achieved and the plotted win rate where the
    budget is reached (``f.valid``), the budget and NaN where not -- matplotlib breaks a line at NaN, so no
    segment bridges budgets the theory did not compute (walkthrough: worst-of-4 exp(t=-300) drew a straight
    line from KL 0.01 to 3.3 across 0.21-3.08, showing 0.67 at KL 1 where the theory gives 0.99)."""
    ok = np.asarray(f.valid, bool)
    x = np.where(ok, f.kl, f.kl_budget)
    y = np.where(ok, _y(np.where(ok, getattr(f, key), 0.5), scale), np.nan)
    return x, y


def _separation(frontiers: list, key: str, scale: str) -> float:
    """Median over KL budgets of the spread between curves, as a fraction of the y axis span."""
    ys = _y(np.array([np.where(f.valid, getattr(f, key), np.nan) for f in frontiers]), scale)
    ys = ys[:, np.isfinite(ys).any(axis=0)]  # budgets some transform reaches (an all-NaN column: no spread)
    if ys.size == 0:
        return 0.0
    span = np.nanmax(ys) - np.nanmin(ys)
    spread = np.nanmax(ys, axis=0) - np.nanmin(ys, axis=0)
    return float(np.nanmedian(spread) / span) if span > 0 else 0.0


def choose_scale(frontiers: list, requested: str = "auto") -> str:
    """``linear`` or ``logodds`` y axis: the requested one, or (``auto``) the one whose curves
    are further apart (win rates crowd against 1 on a linear axis, where 0.93 vs 0.95 matters)."""
    if requested != "auto":
        return requested
    return max(("linear", "logodds"), key=lambda sc: _separation(frontiers, "win_rate", sc))


def plot_frontiers(frontiers: list, path: Path, procedure: str, bon_point: tuple[float, float] | None = None,
                   scale: str = "auto", table_note: str | None = None) -> str:
    """Two panels, inference-time and standard win rate vs the KL *achieved*, one line per transform.

    The optimal frontier is black dashed, identity a thick dotted line drawn on top (it is often
    under the others); points a transform cannot reach or where the optimal solve did not
    converge are crosses at their KL budget on the bottom edge, never part of a line (the line breaks
    there; a valid point between two such gaps is a dot). ``scale``:
    ``linear``, ``logodds`` (y = log(w / (1 - w)), ticks labelled in win rate) or ``auto``.
    ``table_note``: said above the panels (the transforms seen through a K-sample table). Returns the scale used.
    """
    from infalign.infra.plotting import figure, save_png

    scale = choose_scale(frontiers, scale)
    fig = figure(figsize=(12, 4.8))
    axes = fig.subplots(1, 2, sharex=True)
    saturated = False
    for ax, key, title in ((axes[0], "win_rate", f"{procedure} win rate"),
                           (axes[1], "standard_win_rate", "standard win rate")):
        for f in frontiers:
            ok = f.valid
            if f.transform.startswith("optimal"):
                style = dict(color="black", ls="--", lw=2, zorder=3)
            elif f.transform == "identity":
                style = dict(color="dimgray", ls=":", lw=3, zorder=4)
            else:
                style = dict(lw=1.5, zorder=2)
            y = getattr(f, key)[ok]
            if ok.sum() <= 1:  # a line needs two points: one valid point is a marker
                style |= dict(marker="o", ms=5)
            (line,) = ax.plot(*line_points(f, key, scale), label=f.transform, **style)
            alone = ok & ~np.r_[False, ok[:-1]] & ~np.r_[ok[1:], False]  # a valid point between two gaps: a marker
            if alone.any() and ok.sum() > 1:
                ax.plot(f.kl[alone], _y(getattr(f, key)[alone], scale), ls="none", marker="o", ms=4,
                        color=line.get_color(), zorder=style.get("zorder", 2))
            if scale == "logodds":
                saturated |= bool(((y <= SATURATION) | (y >= 1 - SATURATION)).any())
            bad = ~ok
            if bad.any():
                ax.plot(f.kl_budget[bad], np.zeros(bad.sum()), ls="none", marker="x", ms=7, color=line.get_color(),
                        transform=ax.get_xaxis_transform(), clip_on=False, zorder=5)
        star = None if bon_point is None or key != "win_rate" else _y(np.array(bon_point[1]), scale)
        if star is not None and np.isfinite(star):
            ax.plot(bon_point[0], star, marker="*", ms=14, color="crimson", ls="none", label="best-of-N policy",
                    zorder=6)
        if scale == "logodds":
            ticks = np.array([0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, *(1 - 10.0 ** -np.arange(3, 13))])
            labels = [f"{t:g}" if t <= 0.99 else f"1-1e-{k}" if k > 4 else f"{t:.{k}f}"
                      for t, k in zip(ticks, [0] * 8 + list(range(3, 13)))]
            lo, hi = ax.get_ylim()
            keep = (_logit(ticks) >= lo) & (_logit(ticks) <= hi)
            if keep.sum() > 10:  # thin out: at most ~10 labelled ticks
                keep &= np.isin(np.arange(len(ticks)), np.flatnonzero(keep)[:: int(math.ceil(keep.sum() / 10))])
            ax.set_yticks(_logit(ticks[keep]), [lab for lab, k in zip(labels, keep) if k])
        ax.set_xlabel("KL(pi || pi_ref) achieved [nats]")
        ax.set_ylabel(title + (" (log-odds axis)" if scale == "logodds" else ""))
        ax.set_title(title + " vs KL (calibrated-space theory)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    notes = [table_note] if table_note else []
    if any((~f.valid).any() for f in frontiers):
        notes.append("x on the bottom edge: KL budget unreachable or not converged (reason in curves.csv)")
    if saturated:
        notes.append("win rates within 1e-12 of 1 (or 0) are drawn on that edge of the log-odds axis")
    if notes:
        fig.suptitle("; ".join(notes), fontsize=9)
    save_png(fig, path)
    return scale
