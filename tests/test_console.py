"""infra/console.py: tables printed to a file or a pipe (a SLURM log, ``| tee``) are not wrapped at
rich's 80-column fallback; a terminal, an explicit width and ``COLUMNS`` keep theirs."""

import io

from rich.table import Table

from infalign.infra.console import PIPED_WIDTH, console


def test_a_piped_console_is_wide_unless_told_otherwise(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert console(file=io.StringIO()).width == PIPED_WIDTH == 150
    assert console(file=io.StringIO(), width=90).width == 90
    assert console(file=io.StringIO(), width=None).width == PIPED_WIDTH  # None: "no width given"
    monkeypatch.setenv("COLUMNS", "100")  # rich's own override, honoured
    assert console(file=io.StringIO()).width == 100
    monkeypatch.setenv("COLUMNS", "abc")  # not a number: rich ignores it, so do we
    assert console(file=io.StringIO()).width == PIPED_WIDTH


def test_a_terminal_keeps_its_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "70")  # what the terminal reports
    assert console(file=io.StringIO(), force_terminal=True).width == 70


def test_a_run_summary_row_stays_on_one_line_in_a_log(monkeypatch):
    """Four columns of 'value [low, high]', as infalign-train's closing table: one line per row."""
    monkeypatch.delenv("COLUMNS", raising=False)
    buf = io.StringIO()
    table = Table()
    for col in ("judge", "KL (nats)", "standard win rate", "bon4 win rate"):
        table.add_column(col)
    table.add_row("reward_model", "0.304 [0.270, 0.339]", "0.686 [0.669, 0.704]", "0.768 [0.741, 0.794]")
    console(file=buf).print(table)
    assert any("reward_model" in line and "0.768 [0.741, 0.794]" in line for line in buf.getvalue().splitlines())
