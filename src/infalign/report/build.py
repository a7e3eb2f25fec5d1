"""The whole report of a sweep dir: collect, tabulate, compare at matched KL, plot, write (atomically)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from infalign.errors import require
from infalign.infra.cache import atomic_write_csv, atomic_write_json, atomic_write_text
from infalign.report.collect import JUDGES, Job, collect, present_judges
from infalign.report.matched import (
    MATCHED_KL_COLUMNS,
    Panel,
    absent_note,
    compare_panels,
    matched_kl_markdown,
    matched_kl_rows,
    matched_kl_summary,
)
from infalign.report.naming import method_of
from infalign.report.plots import PLOTS, plot_gains, plot_series
from infalign.report.series import Series, build_series
from infalign.report.tables import columns, job_row, make_summary, markdown
from infalign.report.theory_gain import add_theory_gains
from infalign.report.theory_gap import THEORY_GAP_COLUMNS, median_theory_gap, theory_gap_markdown, theory_gap_rows


@dataclass
class Report:
    root: Path
    out_dir: Path
    judges: list[str]
    jobs: list[Job]
    rows: list[dict]
    series: list[Series]
    summary: dict
    paths: dict[str, Path]
    panels: list[Panel] = field(default_factory=list)
    matched_rows: list[dict] = field(default_factory=list)
    gap_rows: list[dict] = field(default_factory=list)


def build_report(root: Path, out_dir: Path, judge: str = "all", baselines: Sequence[str] | None = None,
                 num_kl: int = 6, num_resamples: int = 2000, methods: Sequence[str] | None = None,
                 skip_absent: bool = False) -> Report:
    """Collect, tabulate and plot (no W&B, no printing); write runs.csv, runs.md, the PNGs, the
    matched-KL comparison (matched_kl.csv/.md, gain_vs_kl.png) and theory_gap.csv/.md, each atomically,
    after removing the previous report's files (a report stopped midway -- Ctrl-C in the bootstrap --
    leaves some of its own files and none of the old ones beside them; ``summary.json`` comes last).

    ``baselines``: methods gains are computed against (default raw and identity, those present);
    ``num_kl``: common KLs per panel; ``num_resamples``: paired bootstrap resamples; ``methods``: the
    methods the matched-KL comparison takes (default all; every run stays in runs.csv and the plots); a method
    without finished runs, or a baseline the sweep did not run, is a ConfigError -- with ``skip_absent`` it is
    left out, and a note of the comparison says so (``report/matched.absent_note``).
    ``summary.json`` is written by :func:`write_summary` (after W&B, so it can record the run)."""
    require(num_kl >= 1, "--num-kl", num_kl, "an integer >= 1")
    require(num_resamples >= 100, "--bootstrap", num_resamples, "an integer >= 100 (percentile CIs)")
    require(judge == "all" or judge in JUDGES, "judge", judge, f"one of {', '.join(JUDGES)} or all")
    root, out_dir = Path(root), Path(out_dir)
    jobs = collect(root, skip=[out_dir])
    present = sorted({m for j in jobs if j.status == "finished" and (m := method_of(j)) is not None})
    swept = sorted({m for j in jobs if (m := method_of(j)) is not None})  # failed jobs too: their panel says so
    absent = []
    if methods is not None and (unknown := sorted(set(methods) - set(present))):  # before anything is written
        require(skip_absent, "--method", unknown, f"methods of the finished runs: {', '.join(present)}")
        absent += [absent_note("--method", m, "no finished runs") for m in unknown]
        methods = [m for m in methods if m in present]
    if baselines is not None and (unknown := sorted(set(baselines) - set(swept))):  # a typo compared nothing
        require(skip_absent, "--baseline", unknown, f"methods of the sweep's runs: {', '.join(swept)}")
        absent += [absent_note("--baseline", m, "not in the sweep") for m in unknown]
        baselines = [b for b in baselines if b in swept]
    judges = (present_judges(jobs) or list(JUDGES)) if judge == "all" else [judge]
    rows = [job_row(j, judges) for j in jobs]
    series = build_series(jobs, judges)
    paths = {"csv": out_dir / "runs.csv", "md": out_dir / "runs.md", "summary": out_dir / "summary.json",
             **{f"plot_{k}": out_dir / v for k, v in PLOTS.items()},
             "matched_kl_csv": out_dir / "matched_kl.csv", "matched_kl_md": out_dir / "matched_kl.md",
             "plot_gain": out_dir / "gain_vs_kl.png", "theory_gap_csv": out_dir / "theory_gap.csv",
             "theory_gap_md": out_dir / "theory_gap.md"}
    for path in paths.values():  # the previous report's files first: one that stops midway leaves no mix
        if path.is_file():
            path.unlink()
    atomic_write_csv(paths["csv"], rows, columns(judges))
    atomic_write_text(paths["md"], markdown(rows, judges, jobs, root))
    for which in PLOTS:
        plot_series(series, judges, which, paths[f"plot_{which}"])
    panels, notes = compare_panels(jobs, judges, baselines, num_kl, num_resamples, methods=methods)
    notes = [*absent, *notes]
    add_theory_gains(panels, jobs)
    matched = matched_kl_rows(panels)
    atomic_write_csv(paths["matched_kl_csv"], matched, MATCHED_KL_COLUMNS)
    atomic_write_text(paths["matched_kl_md"], matched_kl_markdown(panels, notes))
    plot_gains(panels, judges, paths["plot_gain"])
    gaps = theory_gap_rows(jobs)
    atomic_write_csv(paths["theory_gap_csv"], gaps, THEORY_GAP_COLUMNS)
    summary = make_summary(root, out_dir, judges, jobs, rows, series, paths)
    summary["matched_kl"] = {"notes": notes, "lines": matched_kl_summary(panels),
                             "panels": [{"panel": p.name, "judge": p.judge, "metric": p.metric,
                                         "common": p.result.common, "kl": p.result.grid.tolist(),
                                         "note": p.result.note, "excluded": p.result.excluded,
                                         "ranges": p.result.ranges} for p in panels]}
    summary["theory_gap"] = median_theory_gap(gaps)
    atomic_write_text(paths["theory_gap_md"], theory_gap_markdown(summary["theory_gap"], compared=methods))
    return Report(root, out_dir, judges, jobs, rows, series, summary, paths, panels, matched, gaps)


def write_summary(report: Report) -> None:
    atomic_write_json(report.paths["summary"], report.summary)
