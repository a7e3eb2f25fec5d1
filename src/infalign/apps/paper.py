"""``infalign-paper``: every paper experiment, one after another, each ending in its report, timed.

    infalign-paper                              # all experiments, 3 seeds, toy world
    infalign-paper --seeds 0                    # one seed (~34 minutes on 2 cores, README)
    infalign-paper --only bon,won --seeds 0,1   # a subset
    infalign-paper --dry-run                    # print the commands only
    infalign-paper -- experiment=hh_helpful_bon trainer=gpu   # extra overrides for every sweep

The experiments (README "Reproducing the paper"; the sweeps in ``sweeps/paper_*.yaml``):

==================  ===============================  ==========================================
name                what runs                        paper
==================  ===============================  ==========================================
calibration         ``infalign-calibration``          Fig. 3: reward-model miscalibration
bon                 ``+sweeps=paper_bon``             Fig. 4 bottom / Fig. 5: best-of-N
null                ``+sweeps=paper_null``            control: identity, exp(t=8) against themselves
standard            ``+sweeps=paper_standard``        Fig. 4 top: standard win rate
won                 ``+sweeps=paper_won``             Table 2 analogue: worst-of-N, t < 0
null_won            ``+sweeps=paper_null_won``        control: identity, exp(t=-4) against themselves
control             ``+sweeps=paper_control``         control: the calibrated world
hacking             ``+sweeps=paper_hacking``         reward hacking as KL grows
null_hacking        ``+sweeps=paper_null_hacking``    control: raw, identity against themselves
hacking_control     ``+sweeps=paper_hacking_control`` control: no labeler length bias
==================  ===============================  ==========================================

in this order, so that experiments reuse the policies the earlier ones trained (the policy cache,
``pipeline/policy_cache.py``: null, standard and won load raw / identity / exp(t) / the baselines from bon;
each ``null_*`` A/A control loads its replica-0 runs from the experiment it controls).
Each sweep runs with ``hydra/launcher=local_parallel`` and ``n_jobs`` = usable cores (``--n-jobs``),
into ``OUT/<name>`` (default ``$INFALIGN_ROOT/outputs/paper/<date>_<time>``), and is followed by
``infalign-report OUT/<name>`` and the experiment's narrower reports (:data:`EXPERIMENTS`'
``reports``: e.g. ``OUT/bon/report_transforms``, the README's best-of-N table: raw, identity and
the exp(t) only, so the baselines' narrower KL range does not shrink the common KLs; ``report_t``:
every t against the others). An experiment's extra sweeps (``more``: the hacking experiments' raw
runs at budgets between two of their sweep's, where raw's measured KL jumps,
``+sweeps=paper_hacking_raw`` / ``paper_null_hacking_raw`` / ``paper_hacking_control_raw``) run into
``OUT/<name>/<sweep>`` before its reports, which read every job dir under ``OUT/<name>``. A failed
step is recorded and the next one runs.

Writes ``OUT/paper_time.json`` and ``OUT/paper_time.md`` (atomically, after every step): per
experiment the exit code, wall minutes, seeds, jobs, finished jobs, policies loaded from the cache, and
the total -- the figure README's "Reproducing the paper" quotes; rows an earlier invocation into the
same ``OUT`` wrote for other experiments are kept (a re-run experiment's row is replaced). And ``OUT/findings.md`` /
``findings.json`` (also after every step): each of the paper's findings read off the reports at the
middle common KL, with a verdict -- reproduced, contradicted, not established; a control passes or
fails (``report/findings.py``) -- printed again at the end. Exit status 0 when every step
succeeded, 1 when one failed, 2 for a bad option (an unknown ``--only`` name, a bad seed list).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from infalign.errors import CONFIG_ERROR_EXIT as REFUSED
from infalign.infra.cache import atomic_write_json, atomic_write_text
from infalign.infra.threads import usable_cores
from infalign.report.findings import EXP_T  # the exp(t) methods the findings compare: one list


@dataclass(frozen=True)
class Report:
    """A narrower ``infalign-report`` of an experiment's sweep, into ``OUT/<name>/report_<suffix>``:
    only ``methods`` (their common KLs), gains over ``baselines`` (empty: the report's default)."""

    suffix: str
    methods: tuple[str, ...]
    baselines: tuple[str, ...] = ()


@dataclass(frozen=True)
class Experiment:
    name: str
    sweep: str | None  # sweeps/<sweep>.yaml; None: infalign-calibration
    paper: str
    reports: tuple[Report, ...] = ()
    # more sweeps of the same experiment, each into OUT/<name>/<sweep> (before the reports, which read
    # every job dir under OUT/<name>): runs one method needs beyond the grid the others share
    more: tuple[str, ...] = ()


EXPERIMENTS = (
    Experiment("calibration", None, "Fig. 3: reward-model miscalibration by prompt"),
    Experiment("bon", "paper_bon", "Fig. 4 bottom / 5: best-of-N, N in {2, 4, 32}",
               (Report("transforms", ("raw", "identity", *EXP_T)),
                Report("t", EXP_T, EXP_T[:2]),  # t=8 - t=4, t=16 - t=4, t=16 - t=8
                Report("baselines", ("raw", "identity", "bon_sft(N=4)", "ipo(N=4)")))),
    Experiment("null", "paper_null", "control: identity and exp(t=8), each against an independent re-training "
               "of itself (A/A)",
               (Report("identity", ("identity", "identity[replica=1]")),  # each pair on its own common KLs
                Report("expn", ("expn(t=8)", "expn(t=8)[replica=1]"), ("expn(t=8)",)))),
    Experiment("standard", "paper_standard", "Fig. 4 top: standard win rate vs KL",
               # the calibration claims at raw's and identity's common KLs: the baselines' KL knobs reach only
               # >= 0.53, which would read them there (findings audit), as report_transforms does for bon
               (Report("calibration", ("raw", "identity", "identity[pooled]")),)),
    Experiment("won", "paper_won", "worst-of-4 with t < 0 (harmlessness analogue)"),
    Experiment("null_won", "paper_null_won", "control: identity and exp(t=-4) on worst-of-N, each against an "
               "independent re-training of itself (A/A)",
               (Report("identity", ("identity", "identity[replica=1]")),
                Report("expn", ("expn(t=-4)", "expn(t=-4)[replica=1]"), ("expn(t=-4)",)))),
    Experiment("control", "paper_control", "control: the calibrated world"),
    Experiment("hacking", "paper_hacking", "reward hacking as KL grows", more=("paper_hacking_raw",)),
    Experiment("null_hacking", "paper_null_hacking", "control: raw and identity at the hacking settings, each "
               "against an independent re-training of itself (A/A)",
               # identity in raw's report bounds its common KLs to the calibrated runs' range, as in the
               # hacking report: raw alone spans KL 0.1-25 (its runaway), which would leave one of its 6
               # common KLs in the range the hacking finding reads
               (Report("raw", ("raw", "raw[replica=1]", "identity"), ("raw",)),
                Report("identity", ("identity", "identity[replica=1]"))),
               more=("paper_null_hacking_raw",)),
    Experiment("hacking_control", "paper_hacking_control", "control: no labeler length bias",
               more=("paper_hacking_control_raw",)),
)
NAMES = tuple(e.name for e in EXPERIMENTS)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="infalign-paper", description="Run every paper experiment and its report, timed.",
                                epilog="Arguments after -- are Hydra overrides added to every sweep.")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default 0,1,2)")
    p.add_argument("--only", default=",".join(NAMES), help=f"comma-separated subset of: {', '.join(NAMES)}")
    p.add_argument("--out", type=Path, default=None, help="output root (default outputs/paper/<date>_<time>)")
    p.add_argument("--n-jobs", type=int, default=None, help="jobs at a time per sweep (default: usable cores)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = p.parse_args(argv)
    args.extra = extra
    return args


def plan(args: argparse.Namespace) -> list[tuple[Experiment, list[list[str]]]]:
    """``[(experiment, [command, ...])]`` in run order; raises ``ValueError`` naming a bad option."""
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := [s for s in only if s not in NAMES]:
        raise ValueError(f"--only: unknown experiment(s) {unknown}; allowed: {', '.join(NAMES)}")
    seeds = [s.strip() for s in str(args.seeds).split(",") if s.strip()]
    if not seeds or not all(s.isdigit() for s in seeds):
        raise ValueError(f"--seeds={args.seeds!r}: need comma-separated integers >= 0, e.g. 0,1,2")
    n_jobs = args.n_jobs if args.n_jobs is not None else usable_cores()
    if n_jobs < 1:
        raise ValueError(f"--n-jobs={n_jobs}: need >= 1")
    out = args.out
    steps = []
    for e in EXPERIMENTS:
        if e.name not in only:
            continue
        target = str(out / e.name)
        if e.sweep is None:
            cmds = [["infalign-calibration", f"hydra.run.dir={target}", *single_run_overrides(args.extra)]]
        else:
            sweeps = [(e.sweep, target), *((more, f"{target}/{more}") for more in e.more)]
            cmds = [*(["infalign-train", "-m", f"+sweeps={sweep}", f"seed={','.join(seeds)}",
                       f"hydra.sweep.dir={sweep_dir}", "hydra/launcher=local_parallel",
                       f"hydra.launcher.n_jobs={n_jobs}", *args.extra]
                      for sweep, sweep_dir in sweeps),
                    ["infalign-report", target],
                    *(["infalign-report", target, "--out", f"{target}/report_{r.suffix}", "--skip-absent",
                       *(a for m in r.methods for a in ("--method", m)),
                       *(a for b in r.baselines for a in ("--baseline", b))] for r in e.reports)]
        steps.append((e, cmds))
    return steps


def single_run_overrides(extra: Sequence[str]) -> list[str]:
    """``extra`` without its sweep overrides (``kl_point=1,2,3``, ``method=raw,identity``, ``range(...)``):
    they narrow the sweeps' grids, and the single-run ``infalign-calibration`` would refuse them
    (Hydra: "Ambiguous value")."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(extra))
    return [text for text, o in zip(extra, parsed) if not o.is_sweep_override()]


def executable(name: str) -> str:
    """The console script ``name`` of this interpreter's environment (beside ``sys.executable``: a venv's
    ``bin/``, found whether or not the venv is on ``PATH``, as under ``make paper``), else ``name``."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.is_file() else name


SWEEP_COUNTS = {"jobs": "jobs", "finished": "finished", "policies_loaded": "policy_cache_hits",
                "pools_loaded": "eval_pool_hits"}  # paper_time column -> sweep_time.json key


def sweep_counts(sweep_dir: Path, more: Sequence[str] = (), since: float | None = None) -> dict:
    """Jobs, finished jobs, policies and policy evaluation pools loaded from the cache of a finished sweep
    (its ``sweep_time.json``, written by ``apps/hydra_callbacks.SweepTime``), summed with those of the
    sweeps ``sweep_dir/<more>`` (a column is None when no sweep recorded it); ``{}`` if none finished.
    ``since`` (a time stamp): only files written since then -- a sweep that crashed before writing its
    own must not be counted with an earlier invocation's."""
    found = []
    for d in (sweep_dir, *(sweep_dir / m for m in more)):
        try:
            path = d / "sweep_time.json"
            if since is not None and path.stat().st_mtime < since:
                continue
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    if not found:
        return {}
    counts = {}
    for column, key in SWEEP_COUNTS.items():
        values = [t[key] for t in found if isinstance(t.get(key), int)]
        counts[column] = sum(values) if values else None
    return counts


def earlier_rows(out: Path) -> list[dict]:
    """The time-table rows earlier invocations into ``out`` wrote (``OUT/paper_time.json``), each with
    its seeds: invocations into one ``OUT`` add up to one table, as their reports add up to one
    ``findings.md`` (:func:`time_table`); an unreadable table gives ``[]``."""
    try:
        data = json.loads((out / "paper_time.json").read_text())
        rows = [r for r in data["experiments"] if isinstance(r, dict) and r.get("experiment") in NAMES]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [{**r, "seeds": r.get("seeds", data.get("seeds"))} for r in rows]


def time_table(earlier: list[dict], rows: list[dict]) -> list[dict]:
    """This invocation's ``rows`` and the ``earlier`` rows of experiments it has not (yet) re-run, in
    the experiments' order: an experiment's earlier row stays until its new one replaces it, so an
    invocation stopped before re-running it loses nothing."""
    done = {r["experiment"] for r in rows}
    return sorted([r for r in earlier if r["experiment"] not in done] + rows,
                  key=lambda r: NAMES.index(r["experiment"]))


def total_seconds(table: list[dict], rows: list[dict], start: float) -> float:
    """The time ``table``'s total: its earlier invocations' rows (not this one's ``rows``) and this
    invocation's wall time since ``start``."""
    return sum(r["wall_s"] for r in table if r not in rows) + time.time() - start


def time_markdown(rows: list[dict], total_s: float, seeds: str) -> str:
    seeds = " / ".join(dict.fromkeys(str(r.get("seeds", seeds)) for r in rows)) or seeds
    lines = [f"# infalign-paper: time per experiment (seeds {seeds}, {usable_cores()} usable cores)", "",
             "| experiment | exit | minutes | jobs | finished | policies loaded from cache | eval pools loaded |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cells = ["–" if r.get(k) is None else str(r[k])
                 for k in ("jobs", "finished", "policies_loaded", "pools_loaded")]
        lines.append(f"| {r['experiment']} | {r['exit']} | {r['wall_s'] / 60:.1f} | " + " | ".join(cells) + " |")
    lines.append(f"| **total** | | **{total_s / 60:.1f}** | | | | |")
    return "\n".join(lines) + "\n"


def run_all(args: argparse.Namespace, runner: Callable[[list[str]], int] | None = None,
            echo: Callable[[str], None] = print) -> int:
    """Run :func:`plan`'s steps with ``runner`` (default: a subprocess each), writing the time table
    after every experiment; returns the exit status (module docstring)."""
    steps = plan(args)
    if args.dry_run:
        for _, cmds in steps:
            for cmd in cmds:
                echo(shlex.join(cmd))
        return 0
    runner = runner or (lambda cmd: run_child([executable(cmd[0]), *cmd[1:]]))
    args.out.mkdir(parents=True, exist_ok=True)
    rows, start = [], time.time()
    before = earlier_rows(args.out)
    for e, cmds in steps:
        t0, codes, refused = time.time(), [], False
        for cmd in cmds:
            echo(f"[infalign-paper] {e.name}: {shlex.join(cmd)}")
            codes.append(int(runner(cmd)))
            if cmd[0] == "infalign-train" and codes[-1] == REFUSED:
                refused = True
                # refused before any job (a config error; a sweep dir holding an earlier invocation's
                # results): its report and counts would be that earlier run's, presented as this one's
                echo(f"[infalign-paper] {e.name}: the sweep was refused (exit {REFUSED}, its message above); "
                     "its reports are not run (a dir holding earlier results: another --out, or remove it)")
                break
        rc = next((c for c in codes if c != 0), 0)
        row = {"experiment": e.name, "paper": e.paper, "exit": rc, "wall_s": round(time.time() - t0, 1),
               "seeds": args.seeds}
        # (2 s of slack: a file system that keeps mtimes to the second)
        rows.append(row | (sweep_counts(args.out / e.name, e.more, since=t0 - 2.0) if e.sweep and not refused
                           else {}))
        table = time_table(before, rows)
        total = total_seconds(table, rows, start)
        seeds = " / ".join(dict.fromkeys(str(r["seeds"]) for r in table))  # each row has its own
        atomic_write_json(args.out / "paper_time.json", {"seeds": seeds, "usable_cores": usable_cores(),
                                                         "total_s": round(total, 1), "experiments": table})
        atomic_write_text(args.out / "paper_time.md", time_markdown(table, total, args.seeds))
        try:
            write_findings(args.out)
        except Exception as exc:  # noqa: BLE001 - a findings defect must not stop the experiments after it
            echo(f"[infalign-paper] findings.md not written after {e.name} ({type(exc).__name__}: {exc}); "
                 "the next experiment runs")
    table = time_table(before, rows)
    echo(time_markdown(table, total_seconds(table, rows, start), args.seeds))
    for line in findings_summary(args.out):
        echo(line)
    return 0 if all(r["exit"] == 0 for r in rows) else 1


class Stopped(Exception):  # noqa: N818 - the driver was stopped, no error
    """A Ctrl-C or SIGTERM stopped the driver (:func:`run_child`); the step's child stopped first."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def run_child(argv: list[str]) -> int:
    """Run one step's command and return its exit status. The child runs in a session of its own, so a
    terminal's Ctrl-C reaches the driver alone, which forwards each SIGINT / SIGTERM to it (a SIGHUP -- the
    terminal closed -- as SIGTERM) and waits: the child's first signal stops its sweep with its running jobs
    recorded (``apps/sweep_stop.py``), a second aborts it. On Linux the child also gets SIGTERM when the driver
    dies (``PR_SET_PDEATHSIG``: a SIGKILL, the OOM killer), so it never runs on unattended. ``subprocess.run``
    SIGKILLed the child 0.25 s after a Ctrl-C (no record, no closing line, its workers orphaned), and a SIGTERM
    killed the driver alone. Raises :class:`Stopped` once the child has ended."""
    child = subprocess.Popen(argv, start_new_session=True, preexec_fn=_stop_with_parent(os.getpid()))
    received: list[int] = []

    def forward(signum, frame) -> None:
        received.append(signum)
        try:
            child.send_signal(signal.SIGTERM if signum == signal.SIGHUP else signum)
        except ProcessLookupError:  # (it ended meanwhile)
            pass

    # (a signal the driver was started ignoring -- nohup's SIGHUP, a script's background SIGINT -- stays ignored)
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
                if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        code = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        raise Stopped(received[0])
    return code


def _stop_with_parent(parent: int):
    """A ``preexec_fn``: in the child, ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` -- SIGTERM when the driver dies -- and
    SIGTERM at once if it died already; None where there is no ``prctl`` (not Linux)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def set_death_signal() -> None:
        prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # (the driver died before the line above)
            os.kill(os.getpid(), signal.SIGTERM)

    return set_death_signal


def write_findings(out: Path) -> None:
    """``OUT/findings.md`` / ``findings.json``: every paper finding with its verdict, from the reports
    written so far (``report/findings.py``; a finding whose experiment has not run reads "not measured")."""
    from infalign.report.findings import findings, findings_json, findings_markdown

    found = findings(out)
    atomic_write_json(out / "findings.json", {"out": str(out), "findings": findings_json(found)})
    atomic_write_text(out / "findings.md", findings_markdown(found, out))


def findings_summary(out: Path) -> list[str]:
    """One line per finding whose experiment ran (``findings.json``), for the driver's closing output."""
    try:
        found = json.loads((out / "findings.json").read_text())["findings"]
    except (OSError, ValueError, KeyError):
        return []
    lines = [f"findings ({out / 'findings.md'} has every comparison):"]
    lines += [f"  {f['experiment']} [{f['judge']}]: {f['paper']}: {f['verdict']}" for f in found
              if f["verdict"] != "not measured"]
    return lines if len(lines) > 1 else []


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.out is None:
        root = Path(os.environ.get("INFALIGN_ROOT", "."))  # as conf/paths/default.yaml
        # a random suffix: two drivers started in the same second (e.g. `--only bon &` and `--only won &`)
        # would share the dir, overwrite each other's time tables and, for one experiment, its job dirs
        args.out = root / "outputs" / "paper" / f"{datetime.now().strftime('%Y-%m-%d_%H-%M-%S')}_{secrets.token_hex(3)}"
    try:
        code = run_all(args)
    except ValueError as exc:
        print(f"infalign-paper: {exc}", file=sys.stderr)
        code = 2
    except Stopped as stop:  # (the step's own closing line says what it left and how to continue it)
        name = signal.Signals(stop.signum).name
        print(f"infalign-paper: stopped by {name}: the running step stopped first (its lines above); the "
              f"steps after it did not run ({args.out / 'paper_time.md'} has those before it)", file=sys.stderr)
        code = 128 + stop.signum
    sys.exit(code)


if __name__ == "__main__":
    main()
