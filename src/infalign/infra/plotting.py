"""Plots shared by the apps (matplotlib, Agg backend, PNG written atomically)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from infalign.infra.cache import atomic_path  # noqa: E402


def save_png(fig, path: Path) -> None:
    """Tight layout, write the PNG atomically, close the figure."""
    fig.tight_layout(rect=(0, 0, 1, 0.97) if fig.get_suptitle() else None)  # room for a suptitle
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def error_bar_lengths(mean, low, high) -> np.ndarray:
    """``[2, n]`` lengths ``(mean - low, high - mean)`` for ``errorbar``, clipped at 0.

    A percentile interval need not contain the point estimate (skewed resamples), and at win rates
    of 1 the mean and the bounds differ by float rounding (1 - 3e-15 vs 1 - 4e-15); matplotlib
    rejects any negative length, which would fail a finished run in its last step.
    """
    mean, low, high = (np.asarray(v, np.float64) for v in (mean, low, high))
    return np.vstack([np.maximum(mean - low, 0.0), np.maximum(high - mean, 0.0)])
