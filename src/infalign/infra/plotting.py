"""Plots shared by the apps: figures rendered with Agg, PNGs written atomically.

``figure(...)`` makes a figure without pyplot (no GUI backend, no global figure registry, and
``matplotlib.pyplot``'s import -- about a third of matplotlib's -- is skipped: the command-line
tools only ever write files). Figures made with ``pyplot`` work with ``save_png`` too.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from infalign.infra.cache import atomic_path


def figure(**kwargs):
    """A ``matplotlib.figure.Figure(**kwargs)`` for writing to a file (``fig.subplots(...)`` adds axes)."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def save_png(fig, path: Path) -> None:
    """Tight layout, write the PNG atomically (Agg), and release a pyplot figure."""
    title = getattr(fig, "_suptitle", None)  # (matplotlib's attribute for the suptitle's Text; None: none)
    if title is not None and title.get_text():
        # wrapped to the figure's width (a line past it was cut at both edges): first at ~0.6 em a character,
        # then narrower while its drawn width exceeds the figure's (wide glyphs); room for its lines (1.5 line
        # heights each) above the axes
        size, text = title.get_fontsize(), title.get_text()
        chars = max(20, int(fig.get_figwidth() * 72 / (0.6 * size)))
        renderer = None
        for _ in range(6):
            title.set_text("\n".join(textwrap.fill(line, chars) for line in text.split("\n")))
            if renderer is None:
                from matplotlib.backends.backend_agg import FigureCanvasAgg

                renderer = (fig.canvas if hasattr(fig.canvas, "get_renderer") else FigureCanvasAgg(fig)).get_renderer()
            width = title.get_window_extent(renderer).width
            if width <= 0.96 * fig.bbox.width or chars <= 20:
                break
            chars = max(20, int(chars * 0.96 * fig.bbox.width / width))
        inches = (title.get_text().count("\n") + 1) * 1.5 * size / 72
        fig.tight_layout(rect=(0, 0, 1, max(0.5, 1 - inches / fig.get_figheight())))
    else:
        fig.tight_layout()
    # tight_layout leaves a placeholder layout engine, for which savefig lays out (draws) the
    # figure once more before drawing it; the layout is done, so drop the engine
    fig.set_layout_engine(None)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    if fig.canvas.manager is not None:  # made by pyplot: drop it from pyplot's registry
        import matplotlib.pyplot as plt

        plt.close(fig)


def n_axis(ax, ns) -> None:
    """A log2 x axis ticked at the procedure's N (``1, 2, 4, 32``) in plain numbers: the default log
    ticks label powers of two as TeX ``2^k`` (a mathtext parse per label, ~40 % of a small plot's
    drawing) and skip N that are not powers of two."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted({float(n) for n in ns})))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.10g}"))  # 1048576, not 1.04858e+06
    ax.xaxis.set_minor_locator(NullLocator())


def error_bar_lengths(mean, low, high) -> np.ndarray:
    """``[2, n]`` lengths ``(mean - low, high - mean)`` for ``errorbar``, clipped at 0.

    A percentile interval need not contain the point estimate (skewed resamples), and at win rates
    of 1 the mean and the bounds differ by float rounding (1 - 3e-15 vs 1 - 4e-15); matplotlib
    rejects any negative length, which would fail a finished run in its last step.
    """
    mean, low, high = (np.asarray(v, np.float64) for v in (mean, low, high))
    return np.vstack([np.maximum(mean - low, 0.0), np.maximum(high - mean, 0.0)])
