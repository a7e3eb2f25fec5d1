"""What ``infalign-report`` prints: jobs by status, finished runs per judge (by method, then KL),
the matched-KL sentences and the distance from theory, and the files written."""

from __future__ import annotations

import math

from infalign.report.build import Report
from infalign.report.collect import flagged, swept_overrides
from infalign.report.matched import gain_clause, left_out, panel_heading, theory_text
from infalign.report.tables import RATES, row_ci, status_counts
from infalign.report.theory_gap import runs_cell


def print_matched_kl(report: Report, console) -> None:
    """The matched-KL summary lines and the median distance from theory per method."""
    from rich.markup import escape

    console.print("[bold]matched KL[/] (gain over baseline in points, paired 95% CI; matched_kl.md has every KL)")
    for p in report.panels:
        if not p.result.common:
            console.print(f"  {escape(p.title)}: {escape(p.result.note)}")
            for line in left_out(p.result):
                console.print(f"    [yellow]{escape(line)}[/]")
            continue
        console.print(f"  {escape(panel_heading(p))}:")
        i = len(p.result.grid) // 2
        for g in p.result.gains:
            console.print(f"    {escape(gain_clause(p, g, i) + theory_text(p, g, i))}")
        for line in left_out(p.result):
            console.print(f"    [yellow]{escape(line)}[/]")
    for line in (report.summary.get("matched_kl") or {}).get("notes", []):
        console.print(f"  {escape(line)}")
    if not report.panels:
        console.print("  no finished runs with per-prompt statistics")
    gap = report.summary.get("theory_gap") or {}
    if gap:
        console.print("[bold]distance from theory[/] (reward model, median |measured - theory at measured KL|; "
                      "median KL measured/theory at beta)")
        for method, g in gap.items():
            cells = ", ".join(f"{k.removesuffix('_win_rate')} {v:.3f}" for k, v in g["median_abs_gap"].items())
            ratio = "–" if g["median_kl_ratio"] is None else f"{g['median_kl_ratio']:.2f}"
            console.print(f"  {escape(method)} ({escape(runs_cell(g))} runs): {escape(cells)}; KL ratio {ratio}")
            console.print(f"    {escape(g['reading'])}")


def print_tables(report: Report, console=None, wandb_info: dict | None = None) -> None:
    """Rich tables: failed/missing jobs (swept overrides, reason); finished runs sorted by family
    then KL; the files written."""
    from rich.markup import escape
    from rich.table import Table

    from infalign.infra.console import console as rich_console

    console = console or rich_console()
    bad = [j for j in report.jobs if flagged(j)]
    counts = report.summary["counts"]
    console.print(f"[bold]{escape(str(report.root))}[/]: {counts['total']} jobs: {status_counts(counts)}")
    if bad:
        swept = swept_overrides(report.jobs)
        t = Table(title="failed, interrupted, missing and flagged jobs", show_lines=True)
        for c in ("job", "status", "overrides (swept)", "reason"):
            t.add_column(c, overflow="fold")
        for j in bad:
            t.add_row(escape(j.job), f"[red]{j.status}[/]" if j.status == "failed" else f"[yellow]{j.status}[/]",
                      escape(" ".join(swept.get(j.job) or j.overrides)) or "–", escape(j.reason))
        console.print(t)
    finished = [r for r in report.rows if r["status"] == "finished"]
    for j in report.judges if finished else []:
        finished.sort(key=lambda r, j=j: (str(r["method"]), r[f"{j}_kl"] if r[f"{j}_kl"] is not None else math.inf))
        constant = {c: {r[c] for r in finished} for c in ("procedure", "seed")}
        shown = [c for c in ("procedure", "seed") if len(constant[c]) > 1]
        fixed = ", ".join(f"{next(iter(v))}" if c == "procedure" else f"{c} {next(iter(v))}"
                          for c, v in constant.items() if len(v) == 1 and next(iter(v)) is not None)
        t = Table(title=f"{j}: finished runs ({fixed + '; ' if fixed else ''}95% CI; by method, KL)")
        for c in ("job", *shown, "method", "beta"):
            t.add_column(c, justify="right" if c == "beta" else "left", no_wrap=c == "method")
        procs = constant["procedure"]
        for c in ("KL", "standard win", f"{next(iter(procs))} win" if len(procs) == 1 else "inference win"):
            t.add_column(c, justify="right", no_wrap=True)
        for r in finished:
            cells = [r["job"], *("" if r[c] is None else r[c] for c in shown), r["method"],
                     "" if r["beta"] is None else f"{r['beta']:g}"]
            cells += [row_ci(r, j, m).replace(" [", "\n[", 1).replace(", ", ",")
                      for m in RATES]
            t.add_row(*[escape(str(c)) for c in cells])
        console.print(t)
    print_matched_kl(report, console)
    console.print("[bold]wrote[/]")
    for p in report.paths.values():
        console.print(f"  {escape(str(p))}")
    if wandb_info:
        for line in wandb_lines(wandb_info):
            console.print(f"  {escape(line)}")


def wandb_lines(info: dict) -> list[str]:
    """The printed lines of the report's W&B run (``report/wandb_run.log_to_wandb``'s ``info``): its mode, name,
    group and dir; and, when the reported runs are in several groups (a report over a dir of sweeps), that the
    report run joined the most runs' group, naming the others."""
    lines = [f"W&B {info['mode']} run {info.get('name', 'report')!r} in group {info['group']}: {info['run_dir']}"]
    others = [g for g in info.get("groups", []) if g != info["group"]]
    if others:
        lines.append(f"(the reported runs are in {len(others) + 1} W&B groups; the report run joined the most "
                     f"runs' -- the others: {', '.join(others)})")
    return lines
