"""Methods at matched KL (docs/method.md §10), per panel = (procedure at one N, judge).

A run joins the panel of every N of ``eval.ns`` (one sample pool evaluates them all; N = 1 and
plain sampling are the one ``standard`` panel, :meth:`~infalign.math.procedures.Procedure.reduced`),
only its trained N (and the standard panel) when its method depends on N. Each panel compares the
runs' per-prompt values (``eval.per_prompt``) with :func:`infalign.math.matched_kl.matched_kl`;
this module builds the panels and writes ``matched_kl.csv`` / ``matched_kl.md`` and the summary
sentences.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from infalign.errors import ConfigError
from infalign.math.matched_kl import Gain, MatchedKL, Run, gives_verdict, matched_kl
from infalign.math.procedures import Procedure, make_procedure
from infalign.report.collect import Job
from infalign.report.naming import (
    _dotted,
    comparison_worlds,
    kl_knob_of,
    method_of,
    number,
    other_evaluation,
    procedure_of,
    world_label,
    world_names,
)
from infalign.report.tables import fmt_ci, md_cell

MATCHED_KL_COLUMNS = ["panel", "family", "n", "judge", "metric", "kl", "method", "baseline", "win_rate",
                      "win_rate_low", "win_rate_high", "gain", "gain_low", "gain_high", "significant", "n_seeds",
                      "seed_spread", "seed_low", "seed_high", "seed_test", "n_seeds_baseline", "total_low",
                      "total_high", "prompt_significant", "chord_low", "chord_high", "theory_gain", "n_runs",
                      "n_prompts", "note"]


@dataclass
class Panel:
    """One matched-KL comparison: a procedure at one N (plain sampling for the standard win rate),
    under one judge."""

    procedure: Procedure
    judge: str
    result: MatchedKL
    # (method, baseline) -> the calibrated-space theory's gain at each common KL (report/theory_gain.py)
    theory_gain: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """``standard`` or the procedure's label, e.g. ``bon4``."""
        return "standard" if self.procedure.is_standard else self.procedure.label

    @property
    def family(self) -> str:
        return self.procedure.name

    @property
    def n(self) -> int:
        return self.procedure.n

    @property
    def metric(self) -> str:
        """The per-prompt key compared: ``standard_win_rate`` or e.g. ``bon4_win_rate``."""
        return self.procedure.metric_key()

    @property
    def title(self) -> str:
        return f"{self.name} ({self.judge})"


def panel_ns(job: Job) -> list[int]:
    """The Ns a run is compared at: every N of ``eval.ns`` (one sample pool evaluates them all);
    when the method depends on N (e.g. a transform optimal for N, a baseline trained on best-of-N
    pairs) only ``method_info.trained_n`` -- and N = 1, the standard win rate, which every policy
    has whatever it was trained for (the paper's standard-win-rate comparison includes them)."""
    rec = job.record
    info = rec.method_info if isinstance(rec.method_info, dict) else {}
    own = procedure_of(job)
    ns = set(rec.eval.ns or [own.n if own is not None else 1])
    if info.get("depends_on_n") and info.get("trained_n") is not None:
        return sorted({int(info["trained_n"])} | ({1} & ns))
    return sorted(ns)


def panel_procedures(job: Job) -> list[Procedure]:
    """The procedures (one per panel, no repeats) a finished run is compared under: its family
    (``eval.procedure``, else ``config.procedure``) at each N of :func:`panel_ns`, reduced to
    plain sampling where N = 1. Raises ConfigError for a family infalign does not know."""
    own = procedure_of(job)
    family = make_procedure(job.record.eval.procedure or (own.name if own is not None else "sample"))
    return list(dict.fromkeys(family.at(n).reduced() for n in panel_ns(job)))


def panel_runs(jobs: Sequence[Job], judges: Sequence[str], methods: Sequence[str] | None = None,
               ) -> tuple[dict[tuple, list[Run]], list[str]]:
    """Per panel ``(procedure, judge)`` the :class:`Run` of every finished job with per-prompt
    statistics (``eval.per_prompt``) from the report's world (:func:`world_keys`: the one most runs
    share; runs of other models or toy-world parameters are not comparable), once per panel; notes
    for the finished jobs left out and why. A run whose values in a panel are an earlier run's to the bit
    (same method, seed, prompts and per-prompt KL and metric: one policy evaluated in a bon and in a won
    sweep gives the standard panel the same numbers twice) is that measurement again: kept once, noted."""
    panels: dict[tuple, list[Run]] = {}
    measured: dict[tuple, str] = {}  # (panel, method, seed, prompts, per-prompt values) -> the first job's
    notes = []
    world_of, main_world = comparison_worlds(jobs)  # the most runs' (records without a world id join it)
    names = world_names(jobs, world_of, main_world)
    for job in jobs:
        if job.status != "finished":
            continue
        method = method_of(job)
        if world_of[job.job] != main_world:
            key = world_of[job.job]
            named = f" ({names[key]})" if key in names else ""
            notes.append(f"job {job.job} ({method}): " + (
                f"another evaluation ({world_label(key, main_world).strip('[]')}; the report's runs are evaluated "
                "otherwise)" if other_evaluation(key, main_world) else
                f"another world{named} (world_id {key}, the report's {main_world}: other models, "
                "toy-world parameters or evaluation settings)") + ": left out of the matched-KL comparison")
            continue
        pp = job.record.eval.per_prompt
        if not isinstance(pp, dict) or not pp.get("prompt_ids"):
            notes.append(f"job {job.job} ({method}): no per-prompt statistics in metrics.json (recorded before "
                         "eval.per_prompt existed): shown in runs.csv, left out of the matched-KL comparison")
            continue
        try:
            procedures = panel_procedures(job)
        except ConfigError as exc:
            notes.append(f"job {job.job} ({method}): {exc}: left out of the matched-KL comparison")
            continue
        seed = job.record.seed if job.record.seed is not None else job.config.get("seed")
        repeated = set()
        for procedure in procedures:
            key = procedure.metric_key()
            for judge in judges:
                cols = pp.get(judge) if isinstance(pp.get(judge), dict) else {}
                if "kl" not in cols or key not in cols:
                    continue
                run = Run(method, seed if seed is not None else 0, cols["kl"], cols[key], pp["prompt_ids"], job.job)
                same = ((procedure, judge), run.method, run.seed, run.prompt_ids, run.kl.tobytes(),
                        run.metric.tobytes())
                if same in measured:  # one policy, evaluated again in another sweep: one measurement
                    repeated.add(("standard" if procedure.is_standard else procedure.label, measured[same]))
                    continue
                measured[same] = job.job
                panels.setdefault((procedure, judge), []).append(run)
        for label, first in sorted(repeated):
            notes.append(f"job {job.job} ({method}): its {label} panel values are job {first}'s to the bit (the same "
                         f"policy evaluated again, e.g. in a sweep over another procedure): counted once there")
    notes += knob_order_notes([j for j in jobs if j.status == "finished" and world_of[j.job] == main_world
                               and (methods is None or method_of(j) in methods)])  # (only the methods compared)
    return panels, notes


KNOB_ORDER_NOTE = ": its KL is not monotone in "  # knob_order_notes' text after "<method>, seed <s>" (findings)


def knob_order_notes(jobs: Sequence[Job]) -> list[str]:
    """A note per (method, seed) whose measured KL is not monotone in its KL knob (:func:`kl_knob_of`, the
    first key): ordered by the knob, its reward-model KL turns back by more than both runs' 95 % CIs
    (they do not overlap). Its matched-KL curve joins the runs in KL order, so runs far apart on the knob sit
    side by side there, and a jump of win rate between two close KLs is theirs, not a bend of one curve
    (walkthrough: BoN-SFT's SFT steps 4 / 8 / 16 / 32 / 64 gave KL 0.53 / 1.15 / 0.98 / 0.53 / 0.58, and
    steps 4 and 32, 0.007 nats apart, differed by 10 points of standard win rate)."""
    groups: dict[tuple, list[tuple[float, float, float, float]]] = {}
    knob_of: dict[tuple, str] = {}
    for job in jobs:
        knob = next(iter(kl_knob_of(job)), None)
        value = _dotted(job.config, knob) if knob else None  # (a missing key: naming's sentinel, no number)
        ci = job.record.eval.ci("reward_model", "kl") if job.record.eval is not None else None
        if not isinstance(value, int | float) or isinstance(value, bool) or ci is None:
            continue
        key = (method_of(job), job.record.seed if job.record.seed is not None else job.config.get("seed"))
        groups.setdefault(key, []).append((float(value), ci.mean, ci.low, ci.high))
        knob_of[key] = knob
    notes = []
    for (method, seed), points in sorted(groups.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))):
        points.sort()
        if len(points) < 3 or len({p[0] for p in points}) < len(points):
            continue
        rising = points[-1][1] >= points[0][1]  # the knob's overall direction
        back = [(a, b) for a, b in zip(points, points[1:])
                if (b[3] < a[2] if rising else b[2] > a[3])]  # the next run's KL CI wholly on the wrong side
        if back:
            knobs = ", ".join(f"{p[0]:g}" for p in points)
            kls = ", ".join(f"{p[1]:.2f}" for p in points)
            notes.append(f"{method}, seed {seed}{KNOB_ORDER_NOTE}{knob_of[(method, seed)]} ({knobs} -> KL "
                         f"{kls}): its matched-KL curve joins the runs in KL order, so a jump of win rate between "
                         "close KLs may be runs far apart on the knob, not a bend of one curve")
    return notes


def compare_panels(jobs: Sequence[Job], judges: Sequence[str], baselines: Sequence[str] | None = None,
                   num_kl: int = 6, num_resamples: int = 2000, seed: int = 0,
                   methods: Sequence[str] | None = None) -> tuple[list[Panel], list[str]]:
    """:func:`infalign.math.matched_kl.matched_kl` on every panel (standard first, then by family, N;
    judges in report order); plus the notes of :func:`panel_runs`. ``methods``: compare only these
    (the common KLs are those every compared method covers, so a method with a narrow KL range
    narrows them for all; leave it out to compare the others over a wider range)."""
    runs, notes = panel_runs(jobs, judges, methods)
    if methods is not None:
        wanted = set(methods)
        runs = {key: kept for key, rs in runs.items() if (kept := [r for r in rs if r.method in wanted])}
    order = {j: i for i, j in enumerate(judges)}

    def sort_key(key: tuple) -> tuple:
        procedure, judge = key
        return not procedure.is_standard, procedure.name, procedure.n, order.get(judge, 99)

    out = []
    for procedure, judge in sorted(runs, key=sort_key):
        res = matched_kl(runs[(procedure, judge)], baselines, num_kl=num_kl, num_resamples=num_resamples, seed=seed)
        out.append(Panel(procedure, judge, res))
    return out, notes


def matched_kl_rows(panels: Sequence[Panel]) -> list[dict]:
    """``matched_kl.csv``: one row per panel x KL x method (``baseline`` empty: the method's win
    rate) and per panel x KL x method x baseline (with the gain); a panel without a common KL gets
    one row carrying its note."""
    rows = []
    for p in panels:
        head = {"panel": p.name, "family": p.family, "n": p.n, "judge": p.judge, "metric": p.metric,
                "n_prompts": p.result.n_prompts, "note": p.result.note or None}
        body = p.result.rows()
        at = {float(k): i for i, k in enumerate(p.result.grid)}
        for r in body:
            theory = p.theory_gain.get((r["method"], r["baseline"])) if r.get("baseline") else None
            r["theory_gain"] = number(theory[at[r["kl"]]]) if theory is not None else None
        rows += [{**head, **r} for r in body] if body else [head]
    return rows


def points(x: float | None, digits: int = 1) -> str:
    """``x`` in signed points (x100); ``–`` for None (no value). A value that rounds to zero keeps its
    sign -- ``-0.0`` for a negative one (an interval's lower end at -0.0005 printed ``+0.0`` read as
    excluding 0) -- unless it is float noise (|x| <= 1e-9: ``+0.0``)."""
    if x is None:
        return "–"
    v = round(100 * float(x), digits)
    if v == 0:
        return f"{'-' if float(x) < -1e-9 else '+'}{0:.{digits}f}"
    return f"{v:+.{digits}f}"


def gain_clause(p: Panel, g: Gain, i: int) -> str:
    """E.g. ``expn(t=4) beats identity: +2.1 [+0.8, +3.4] points, 3 seeds [+1.2, +3.0], total [+0.9,
    +3.3] (significant at 4/6 KLs)`` at grid KL ``i`` (prompt-bootstrap CI, the seed interval and the
    total interval of docs/method.md §10): "beats" / "trails" only when significant there, else "does
    not differ significantly from"; with one seed on either side no verdict: "is ahead of" / "is behind"
    on these prompts where the estimate and the prompt CI lie on one side of 0, else "does not clearly
    differ from", "(1 seed each: training noise not assessed, no verdict)" -- or, one seed against several,
    the pooled intervals with what they assume (:func:`no_verdict_text`)."""
    if not gives_verdict(g.seed_test):
        verb = (("is ahead of" if g.gain[i] > 0 else "is behind") if g.prompt_significant[i]
                else "does not clearly differ from")
        return (f"{g.method} {verb} {g.baseline} on these prompts: {points(g.gain[i])} [{points(g.low[i])}, "
                f"{points(g.high[i])}] points ({no_verdict_text(g.seed_test, g.n_seeds, g.n_seeds_baseline)}"
                + (f"; {seed_clause(g, i)}" if g.seed_test != "none" else "") + ")"
                + (f"; {note}" if (note := significant_chord_note(g, i)) else ""))
    verb = ("does not differ significantly from" if not g.significant[i]
            else "beats" if g.gain[i] > 0 else "trails")
    return (f"{g.method} {verb} {g.baseline}: {points(g.gain[i])} [{points(g.low[i])}, {points(g.high[i])}] points, "
            f"{seed_clause(g, i)} ({significant_count(g, len(p.result.grid))})"
            + (f"; {note}" if (note := significant_chord_note(g, i)) else ""))


def absent_note(option: str, method: str, why: str) -> str:
    """The note of a ``--method`` / ``--baseline`` a report left out (``report/build.build_report``'s
    ``skip_absent``), which :func:`absent_method` reads back."""
    return f"{option} {method}: {why} -- left out of the comparison"


ABSENT = re.compile(r"^--(?:method|baseline) (?P<method>.+?): [^:]+ -- left out of the comparison$")


def absent_method(note: str) -> str | None:
    """The method an :func:`absent_note` names, None for another note."""
    return m["method"] if isinstance(note, str) and (m := ABSENT.match(note)) else None


def no_verdict_text(seed_test: str, n_seeds: int, n_base: int) -> str:
    """Why a gain with one seed on either side has no verdict (``math/matched_kl.gives_verdict``)."""
    if seed_test == "none":
        return "1 seed each: training noise not assessed, no verdict"
    return (f"{n_seeds} vs {n_base} seeds: the single seed's training noise is not measured, no verdict; the pooled "
            "intervals assume it equals the other side's")


def chord_at(g: Gain, i: int) -> tuple[float | None, float | None]:
    """``(chord_low, chord_high)`` at grid KL ``i`` (None where not computed or not defined)."""
    if g.chord_low is None or not (math.isfinite(g.chord_low[i]) and math.isfinite(g.chord_high[i])):
        return None, None
    return float(g.chord_low[i]), float(g.chord_high[i])


def chord_note(gain: float | None, low: float | None, high: float | None,
               bounds: Sequence[float | None] = ()) -> str:
    """``"the chords alone make [-0.8, +1.9], which the seed interval's lower end (+1.2) does not clear: not
    evidence"`` when the runs' KL placement alone may make the gain (``math/matched_kl.py``,
    **Interpolation check**): a gain above 0 whose intervals' lower ends (``bounds``: the prompt CI's, the
    seed and total intervals', :data:`INTERVAL_NAMES`; the gain itself when none) do not all clear ``high``
    -- the significance test with the null moved from 0 to what the chords make -- and below 0 likewise
    against ``low``, naming those that do not; else ``""``."""
    if gain is None or gain == 0:
        return ""
    if low is None or high is None:
        return ("the chord check cannot be made here (too few runs of either method inside the other's KL "
                "range to show how the curve bends: add KL points): not evidence")
    named = [(name, b) for name, b in zip(INTERVAL_NAMES if len(bounds) == len(INTERVAL_NAMES) else
                                         ("interval",) * len(bounds), bounds) if b is not None and math.isfinite(b)]
    named = named or [("gain", gain)]
    failing = [(name, b) for name, b in named if not (b > high if gain > 0 else b < low)]
    if not failing:
        return ""
    end = "lower" if gain > 0 else "upper"
    if len(failing) == 1:
        name, b = failing[0]
        which = f"the gain ({points(b)}) does" if name == "gain" else f"the {name}'s {end} end ({points(b)}) does"
    else:
        parts = [f"{name} ({points(b)})" for name, b in failing]
        which = f"the {end} ends of the {', '.join(parts[:-1])} and {parts[-1]} do"
    # (which interval fails to clear them: a walkthrough read "not evidence" beside a +10-point gain as an
    # interpolation artefact, when its seed interval's lower end (+0.2) alone fell short of +0.4)
    return f"the chords alone make [{points(low)}, {points(high)}], which {which} not clear: not evidence"


INTERVAL_NAMES = ("prompt CI", "seed interval", "total interval")  # chord_note's bounds, in this order


def significant_chord_note(g: Gain, i: int) -> str:
    """:func:`chord_note` of a gain at grid KL ``i`` where it is significant -- with one seed on either side,
    where its prompt CI clears 0 ("is ahead of" / "is behind") -- else ``""``: what the report's
    sentences and ``matched_kl.md`` append."""
    claimed = g.significant[i] if gives_verdict(g.seed_test) else g.prompt_significant[i]
    return chord_note(g.gain[i], *chord_at(g, i), gain_bounds(g, i)) if claimed else ""


def gain_bounds(g: Gain, i: int) -> list[float]:
    """The inner ends of the gain's intervals at grid KL ``i`` (lower ends for a gain above 0)."""
    ends = (g.low[i], g.seed_low[i], g.total_low[i]) if g.gain[i] > 0 else (g.high[i], g.seed_high[i], g.total_high[i])
    return [float(e) for e in ends]


def significant_count(g: Gain, num_kls: int) -> str:
    """``significant at 3 of 6 KLs: +2 −1``: by sign, since a count of both signs reads as support."""
    up = int((g.significant & (g.gain > 0)).sum())
    return f"significant at {int(g.significant.sum())} of {num_kls} KLs: +{up} −{int(g.significant.sum()) - up}"


def seed_clause(g: Gain, i: int) -> str:
    """The seed and total intervals at grid KL ``i`` (:func:`seed_interval_text`)."""
    return seed_interval_text(g.seed_test, g.n_seeds, g.n_seeds_baseline, g.seed_low[i], g.seed_high[i],
                              g.total_low[i], g.total_high[i])


def seed_interval_text(seed_test: str, n_seeds: int, n_base: int, seed_low: float, seed_high: float,
                       total_low: float, total_high: float) -> str:
    """``3 seeds [+1.2, +3.0], total [+0.9, +3.3]`` (paired by seed) or ``3 vs 2 seeds, welch [+0.4,
    +3.8], total [...]`` (unpaired: docs/method.md §10); empty without them (``seed_test`` none: one
    seed per method). Shared by the report's sentences and ``report/findings.py``."""
    if seed_test == "none":
        return ""
    who = f"{n_seeds} seeds" if seed_test == "paired" else f"{n_seeds} vs {n_base} seeds, {seed_test}"
    return f"{who} [{points(seed_low)}, {points(seed_high)}], total [{points(total_low)}, {points(total_high)}]"


def panel_heading(p: Panel) -> str:
    """E.g. ``bon4 (reward_model): 6 common KLs in [0.10, 0.60]; at KL 0.35`` (the middle one)."""
    grid = p.result.grid
    return (f"{p.title}: {len(grid)} common KLs in [{grid[0]:.2f}, {grid[-1]:.2f}]; "
            f"at KL {grid[len(grid) // 2]:.2f}")


_EXCLUDED = re.compile(r"^(?P<method>.*?)(?: seed (?P<seed>\S+))?: (?P<why>.*)$")


def left_out(result: MatchedKL) -> list[str]:
    """What a panel's comparison leaves out, one line per method and reason (``bon_sft(N=4): 15 runs
    left out (seeds 0, 1, 2): fewer than 2 runs with distinct KL, no curve``), so a method that finished
    but has no curve is never silently missing from the sentences; plus the panel's note when it still
    has a comparison (e.g. a baseline without a curve)."""
    groups: dict[tuple[str, str], tuple[int, list[str]]] = {}
    for _, reason in result.excluded:
        m = _EXCLUDED.match(reason)
        method, seed, why = (m["method"], m["seed"], m["why"]) if m else ("", None, reason)
        n, seeds = groups.get((method, why), (0, []))
        groups[(method, why)] = (n + 1, seeds + ([seed] if seed is not None and seed not in seeds else []))
    lines = [f"{method}: {n} run{'s' if n > 1 else ''} left out"
             + (f" (seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)})" if seeds else "") + f": {why}"
             for (method, why), (n, seeds) in groups.items()]
    return ([result.note] if result.common and result.note else []) + lines


def matched_kl_summary(panels: Sequence[Panel]) -> list[str]:
    """One sentence per panel and gain, at the panel's middle common KL (``bon4 (reward_model):
    ... at KL 0.35, expn(t=4) beats identity: +2.1 [+0.8, +3.4] points ...``); one line per
    panel without a comparison, and one per method and reason the panel left out (:func:`left_out`)."""
    lines = []
    for p in panels:
        if not p.result.common:
            lines.append(f"{p.title}: {p.result.note}")
        i = len(p.result.grid) // 2
        lines += [f"{panel_heading(p)}, {gain_clause(p, g, i)}{theory_text(p, g, i)}" for g in p.result.gains]
        lines += [f"{p.title}: {line}" for line in left_out(p.result)]
    return lines


def matched_kl_markdown(panels: Sequence[Panel], notes: Sequence[str], level: float = 0.95) -> str:
    """``matched_kl.md``: per panel a table, rows = common KLs, columns = each method's win rate
    [CI] then each gain over a baseline [paired CI] in points, ``*`` = significant."""
    out = io.StringIO()
    out.write("# Methods at matched KL\n\n")
    out.write("Win rates and gains at KLs covered by every compared method (piecewise-linear in KL through "
              "each method's runs; point estimates are not extrapolated, bootstrap resamples continue the end "
              f"segments); {100 * level:.0f}% percentile CIs from a paired bootstrap over the shared held-out "
              "prompts; with >= 2 seeds on a side, each gain's seed interval follows (Student-t over the per-seed "
              "gains, or an unpaired two-sample t when the seed sets differ: training noise, which the prompt "
              "bootstrap does not see), then the total interval (both noises: docs/method.md §10). Gains in points "
              "(x100); `*` = significant: the estimate, the CI, the seed interval and the total interval on one side "
              "of 0 (never with one seed on either side: training noise not assessed -- one seed against several "
              "gets the pooled interval, which assumes the single seed trains as noisily as the others). \"the "
              "chords alone make [a, b]: not evidence\": a significant gain (with one seed on either side, one whose "
              "prompt CI clears 0) "
              "whose intervals do not clear the gain the runs' KL "
              "placement alone makes in its direction (each curve read at the other's KLs; `chord_low` / "
              "`chord_high` in matched_kl.csv). \"theory\": the calibrated-space theory's gain at that KL (the "
              "win rate of each method's transform-tilted reference policy, docs/method.md §4; reward-model panels, "
              "methods trained on a calibrated transform; `theory_gain` in matched_kl.csv).\n\n")
    for line in notes:
        out.write(f"- {line}\n")
    for p in panels:
        r = p.result
        out.write(f"\n## {p.title}: `{p.metric}`, {r.n_prompts} prompts\n\n")
        if r.note:
            out.write(f"{r.note}\n\n")
        for label, reason in r.excluded:
            out.write(f"- excluded job {label}: {reason}\n")
        if not r.common:
            continue
        if r.excluded:
            out.write("\n")
        methods = list(r.win_rate)
        head = ["KL", *(f"{m} (n={r.n_runs[m]}, seeds={r.n_seeds[m]})" for m in methods),
                *(f"{g.method} - {g.baseline}" for g in r.gains)]
        out.write("| " + " | ".join(md_cell(h) for h in head) + " |\n")
        out.write("|" + "|".join("---" for _ in head) + "|\n")
        footnotes: dict[str, int] = {}  # a chord note once below the table, its number in the cells (a walkthrough
        # found the same ~150-character note in every cell of a column, the table unreadable)
        for i, k in enumerate(r.grid):
            cells = [f"{k:.3g}", *(fmt_ci(*(float(v[i]) for v in r.win_rate[m])) for m in methods)]
            cells += [f"{points(g.gain[i])} [{points(g.low[i])}, {points(g.high[i])}]"
                      + (f" {clause}" if (clause := seed_clause(g, i)) else "")
                      + (" *" if g.significant[i] else "")
                      + (f" (note {footnotes.setdefault(note, len(footnotes) + 1)})"
                         if (note := significant_chord_note(g, i)) else "")
                      + theory_text(p, g, i) for g in r.gains]
            out.write("| " + " | ".join(md_cell(c) for c in cells) + " |\n")
        if footnotes:
            out.write("\n" + "".join(f"- note {n}: {text}\n" for text, n in footnotes.items()))
    return out.getvalue()


def theory_text(p: Panel, g: Gain, i: int) -> str:
    """`` (theory +5.1)``: the theory's gain at the i-th common KL, when there is one."""
    theory = p.theory_gain.get((g.method, g.baseline))
    return f" (theory {points(float(theory[i]))})" if theory is not None and np.isfinite(theory[i]) else ""
