"""Plots shared by the apps (matplotlib, Agg backend, PNG written atomically)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from infalign.cache import atomic_path  # noqa: E402


def plot_frontiers(frontiers: list, path: Path, procedure: str, bon_point: tuple[float, float] | None = None) -> None:
    """Two panels: inference-time and standard win rate vs KL, one line per transform.

    The optimal transform's frontier (if present, named ``optimal(...)``) is drawn black dashed;
    ``bon_point`` = (KL, win rate) of the best-of-N policy itself is a star.
    """
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True)
    for ax, key, title in ((axes[0], "win_rate", f"{procedure} win rate"), (axes[1], "standard_win_rate", "standard win rate")):
        for f in frontiers:
            y = getattr(f, key)
            ok = np.asarray(f.reachable, bool)
            style = dict(color="black", ls="--", lw=2) if f.transform.startswith("optimal") else dict(lw=1.5)
            ax.plot(f.kl_budget[ok], y[ok], label=f.transform, **style)
        if bon_point is not None and key == "win_rate":
            ax.plot(*bon_point, marker="*", ms=14, color="crimson", ls="none", label="best-of-N policy")
        ax.set_xlabel("KL(pi || pi_ref) [nats]")
        ax.set_ylabel(title)
        ax.set_title(title + " vs KL (calibrated-space theory)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    save_png(fig, path)


def save_png(fig, path: Path) -> None:
    """Tight layout, write the PNG atomically, close the figure."""
    fig.tight_layout(rect=(0, 0, 1, 0.97) if fig.get_suptitle() else None)  # room for a suptitle
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
