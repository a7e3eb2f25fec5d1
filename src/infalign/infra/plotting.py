"""Plots shared by the apps (matplotlib, Agg backend, PNG written atomically)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from infalign.infra.cache import atomic_path  # noqa: E402


def save_png(fig, path: Path) -> None:
    """Tight layout, write the PNG atomically, close the figure."""
    fig.tight_layout(rect=(0, 0, 1, 0.97) if fig.get_suptitle() else None)  # room for a suptitle
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
