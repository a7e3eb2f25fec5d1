"""The rich ``Console`` every CLI prints its tables to.

On a terminal rich uses the terminal's width. Written to a file or a pipe -- a SLURM job's log,
``infalign-train ... | tee run.log``, a CI log -- rich falls back to 80 columns, and the run's
summary table (judge, KL and win rates with their intervals) breaks every row over two or three
lines. There the console is :data:`PIPED_WIDTH` columns wide, unless ``COLUMNS`` is set (rich
honours it, so a user who wants another width sets it).
"""

from __future__ import annotations

import os

from rich.console import Console

PIPED_WIDTH = 150


def console(**kwargs) -> Console:
    """``rich.console.Console(**kwargs)``; :data:`PIPED_WIDTH` columns wide when its output is not
    a terminal and neither ``width`` nor a valid ``COLUMNS`` (digits, as rich reads it) says otherwise."""
    con = Console(**kwargs)
    if not con.is_terminal and kwargs.get("width") is None and not os.environ.get("COLUMNS", "").isdigit():
        con = Console(**{**kwargs, "width": PIPED_WIDTH})
    return con
