"""``infalign-report``: one report for a whole ``infalign-train -m`` sweep.

    infalign-report MULTIRUN_DIR [--out DIR] [--judge reward_model|gold|all] [--wandb | --no-wandb]
                    [--baseline METHOD ...] [--method METHOD ...] [--num-kl K] [--bootstrap B]

    infalign-report outputs/multirun/train/2026-11-22_08-21-00            # -> <dir>/report/
    infalign-report outputs/multirun/train/<date> --judge gold --no-wandb
    infalign-report outputs/multirun/train/<date> --out reports/sweep1 --wandb

``MULTIRUN_DIR`` is a sweep dir (every dir below it that has a ``.hydra/`` or a run's ``metrics.json`` is a
job; a single run dir works too; symlinks are followed, so a dir of links to several sweeps -- e.g. seeds added
by a later sweep -- is reported as one). Jobs are ``finished``, ``failed`` (``metrics.json`` with
``status: failed``, or an unreadable one; reason = the error's last line), ``missing`` (no ``metrics.json``:
running, killed or crashed; reason = the exception line of the traceback in ``train.log``) or ``duplicate``
(the same run as an earlier job -- settings, seed, models, prompts, code and results: a baseline arm in two
sweeps reported together -- counted once; ``report/collect.mark_duplicates``).
Broken job dirs are reported, never fatal.

Writes into ``--out`` (default ``MULTIRUN_DIR/report/``), atomically:

* ``runs.csv`` -- one row per job: status, run name, procedure, transform family and ``t``, beta,
  algo, per judge KL / standard win rate / inference-time win rate at the run's procedure N
  (mean, low, high of the 95 % bootstrap CI), theory at beta and at the measured KL, kl_ratio,
  timings, cache flags, error, overrides;
* ``runs.md`` -- the same as a readable markdown table (CIs as ``mean [low, high]``);
* ``inference_win_rate_vs_kl.png`` and ``standard_win_rate_vs_kl.png`` -- win rate vs KL, one
  subplot per judge: a colour per transform family (per ``t`` for exp families), CI error bars
  on both axes, lines through each family sorted by KL, the calibrated-space theory curve of the
  family dashed in the same colour (none for ``raw``);
* ``matched_kl.csv`` / ``matched_kl.md`` / ``gain_vs_kl.png`` -- methods compared at matched KL
  (:mod:`infalign.math.matched_kl`), per panel = (procedure family, N, judge): each method's win rate
  on ``--num-kl`` KLs covered by every method's runs (piecewise-linear in KL; point estimates are
  not extrapolated) and its gain over each ``--baseline`` (default raw and identity) with a paired
  bootstrap CI over the shared held-out prompts (``--bootstrap`` resamples), a seed interval and a
  total interval (prompts and seeds); significant when the estimate, the CI, the seed interval and the
  total interval lie on one side of 0, never with one seed on either side (docs/method.md §10). A run joins the
  panel of every N of ``eval.ns`` (one sample pool evaluates them all), only its trained N when its
  method depends on N. Runs without ``eval.per_prompt`` (older records) stay in runs.csv and are
  listed as left out;
* ``theory_gap.csv`` -- per calibrated run and win-rate column: KL measured / theory at beta and
  win rate measured - theory at the measured KL (reward model), with the run's CI half-width;
* ``theory_gap.md`` -- per method the median |gap| per column and KL ratio, and what limits it
  (on target, under-tilted, thin tail, noise, ...; docs/method.md §10.1), also printed and in
  ``summary.json``;
* ``summary.json`` -- counts, failed/missing jobs with reasons, the run with the highest win rate
  per judge (at its own KL), every series' points and theory curve, W&B run (written last).

``--judge``: which judges get columns and subplots (default ``all``: those in the metrics).
``--wandb`` (default: on if any job logged to W&B, ``logger=wandb``): log the table and plots to a
run named ``report`` (``job_type=report``) in the jobs' group, offline if the jobs were (or if
``WANDB_MODE=offline``), under ``--out``. Exit status 0 when the report is written (even if jobs
failed), 2 when ``MULTIRUN_DIR`` does not exist or holds no job dirs, or an option is out of range
(``--num-kl`` >= 1, ``--bootstrap`` >= 100). The printed summary ends with one matched-KL line per
panel and gain (at the middle common KL) and the median distance from theory per method.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from infalign import report as rep
from infalign.errors import ConfigError

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="infalign-report", description="Tabulate and plot an infalign-train multirun (sweep) dir.",
        epilog="Writes runs.csv, runs.md, matched_kl.csv, matched_kl.md, theory_gap.csv, theory_gap.md, summary.json, "
               "inference_win_rate_vs_kl.png, standard_win_rate_vs_kl.png, gain_vs_kl.png.")
    p.add_argument("multirun_dir", type=Path, help="the sweep dir (hydra.sweep.dir) or any dir above job dirs")
    p.add_argument("--out", type=Path, default=None, help="output dir (default: MULTIRUN_DIR/report)")
    p.add_argument("--judge", choices=["reward_model", "gold", "all"], default="all",
                   help="judge(s) to tabulate and plot (default: all found)")
    p.add_argument("--wandb", action=argparse.BooleanOptionalAction, default=None,
                   help="log to a W&B 'report' run in the sweep's group (default: on if the jobs used W&B)")
    p.add_argument("--baseline", action="append", default=None, metavar="METHOD",
                   help="method to compute matched-KL gains against, repeatable (default: raw and identity)")
    p.add_argument("--method", action="append", default=None, metavar="METHOD",
                   help="compare only these methods at matched KL, repeatable (default: all; the common KLs are "
                        "those every compared method covers)")
    p.add_argument("--skip-absent", action="store_true",
                   help="leave out, with a note, a --method without finished runs and a --baseline the sweep did not "
                        "run (default: an error, as for a typo); infalign-paper's reports pass it, so a narrowed or "
                        "partly failed sweep still gets them")
    p.add_argument("--num-kl", type=int, default=6, help="common KLs per matched-KL panel (default 6)")
    p.add_argument("--bootstrap", type=int, default=2000, help="paired bootstrap resamples (default 2000)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root: Path = args.multirun_dir
    if not root.is_dir():
        print(f"infalign-report: {root} is not a directory", file=sys.stderr)
        return 2
    out_dir = args.out if args.out is not None else root / "report"
    if not rep.find_job_dirs(root, skip=[out_dir]):
        print(f"infalign-report: no job dirs (dirs containing .hydra/ or a run's metrics.json) under {root}",
              file=sys.stderr)
        return 2
    try:
        report = rep.build_report(root, out_dir, args.judge, args.baseline, args.num_kl, args.bootstrap,
                                  methods=args.method, skip_absent=args.skip_absent)
    except ConfigError as exc:
        print(f"infalign-report: {exc}", file=sys.stderr)
        return 2
    settings = rep.wandb_settings(report.jobs, root)
    use_wandb = args.wandb if args.wandb is not None else settings is not None
    wandb_info = None
    if use_wandb:
        from infalign.infra.sweeps import multirun_group

        settings = settings or {"project": "infalign", "entity": None, "group": multirun_group(root), "offline": True}
        wandb_info = rep.log_to_wandb(report, settings)
    report.summary["wandb"] = wandb_info
    rep.write_summary(report)
    rep.print_tables(report, wandb_info=wandb_info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
