"""``python -m infalign.bench``: speed figures, printed as tables and written to ``bench.json``."""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from infalign.bench.common import default_output, setup_environment

SECTIONS = ("theory", "calibration", "rl", "trl", "build", "scale", "startup")


def _sections(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in SECTIONS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown section(s) {bad or value!r}; choose from {', '.join(SECTIONS)}")
    return names


def _threads(value: str) -> str | int:
    """``auto`` or an integer >= 1 (infra/threads.py checks it)."""
    from infalign.errors import ConfigError
    from infalign.infra.threads import resolve_threads

    try:
        resolve_threads(value, "--threads")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m infalign.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, few prompts/tokens, 1 repeat (what the test runs)")
    parser.add_argument("--only", type=_sections, action="append", metavar="|".join(SECTIONS),
                        help="run only these sections (repeat the flag or comma-separate)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repetitions per figure (theory calls, pool draws, timed RL steps); "
                             "default 5, 1 with --quick")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON output (default $INFALIGN_ROOT/outputs/bench/bench.json)")
    parser.add_argument("--threads", type=_threads, default="auto",
                        help="CPU threads: auto (usable cores // concurrent jobs, the default) or N")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be >= 1")
    args.sections = [s for s in SECTIONS if args.only is None or any(s in group for group in args.only)]
    args.repeats = args.repeats if args.repeats is not None else (1 if args.quick else 5)
    args.out = args.out if args.out is not None else default_output()
    return args


def _meta(args: argparse.Namespace) -> dict:
    import torch
    import transformers

    from infalign.bench.bench_trl import trl_version

    return {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl_version(),
            "python": platform.python_version(), "machine": platform.machine(), "threads": torch.get_num_threads(),
            "repeats": args.repeats, "quick": args.quick, "seed": args.seed,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "output": str(args.out)}


def run(argv: list[str] | None = None, console=None) -> dict:
    """Run the selected sections; return and write the figures.

    With ``--only``, sections already in the output file from an earlier run are kept (``meta.sections``
    records when and how each was run), so ``--only trl`` refreshes just that section.
    """
    args = parse_args(argv)
    setup_environment(args.threads)
    from infalign.bench import (
        bench_build,
        bench_calibration,
        bench_rl,
        bench_scale,
        bench_startup,
        bench_theory,
        bench_trl,
    )
    from infalign.bench.report import print_report
    from infalign.infra.cache import atomic_write_json

    runners = {"theory": bench_theory.run, "calibration": bench_calibration.run, "rl": bench_rl.run,
               "trl": bench_trl.run, "build": bench_build.run,
               "scale": bench_scale.run, "startup": bench_startup.run}
    meta = _meta(args)
    results: dict = {}
    if args.only is not None and args.out.exists():
        try:
            results = json.loads(args.out.read_text())
        except (OSError, ValueError):
            results = {}
    section_meta = dict(results.get("meta", {}).get("sections", {}))
    for name in args.sections:
        t0 = time.perf_counter()
        kwargs = {} if name == "theory" else {"seed": args.seed}
        results[name] = runners[name](args.repeats, quick=args.quick, **kwargs)
        section_meta[name] = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "quick": args.quick,
                              "repeats": args.repeats, "wall_s": time.perf_counter() - t0}
    results["meta"] = {**meta, "sections": section_meta}
    atomic_write_json(args.out, results)
    print_report({k: v for k, v in results.items() if k in args.sections or k == "meta"}, console)
    return results


def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0
