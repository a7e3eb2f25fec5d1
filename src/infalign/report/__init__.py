"""Sweep report: collect the jobs of an ``infalign-train -m`` multirun, tabulate them, compare the
methods at matched KL, plot them (layer 4; ``infalign-report``, :mod:`infalign.apps.report`, is
the command line).

One module per concern, each readable alone:

* :mod:`~infalign.report.collect` -- job dirs -> :class:`Job` (finished / failed / missing, with
  the reason; each ``metrics.json`` read as a :class:`~infalign.pipeline.run_record.RunRecord`);
* :mod:`~infalign.report.naming` -- a job's method, transform family and ``t``, procedure;
* :mod:`~infalign.report.tables` -- ``runs.csv`` / ``runs.md`` rows and ``summary.json``;
* :mod:`~infalign.report.series` -- win-rate-vs-KL series per method with theory curves;
* :mod:`~infalign.report.matched` -- methods at matched KL per panel (docs/method.md §10):
  ``matched_kl.csv`` / ``matched_kl.md`` and the summary sentences;
* :mod:`~infalign.report.theory_gap` -- ``theory_gap.csv``: each run's distance from theory;
* :mod:`~infalign.report.plots` -- the three PNGs;
* :mod:`~infalign.report.build` -- :func:`build_report`: all of the above, written atomically;
* :mod:`~infalign.report.wandb_run` -- the W&B ``report`` run;
* :mod:`~infalign.report.printing` -- the rich tables and sentences on the console.
"""

from infalign.report.build import Report, build_report, write_summary
from infalign.report.collect import Job, collect, find_job_dirs, log_error
from infalign.report.matched import panel_runs
from infalign.report.naming import method_of, transform_family
from infalign.report.printing import print_tables
from infalign.report.wandb_run import log_to_wandb, wandb_settings

__all__ = [
    "Job",
    "Report",
    "build_report",
    "collect",
    "find_job_dirs",
    "log_error",
    "log_to_wandb",
    "method_of",
    "panel_runs",
    "print_tables",
    "transform_family",
    "wandb_settings",
    "write_summary",
]
