"""The paper's findings, each read off the matched-KL reports of ``infalign-paper`` with a verdict.

``infalign-paper`` writes ``OUT/findings.md`` (and ``findings.json``) after every experiment, from the
``matched_kl.csv`` files its reports wrote: one :class:`Claim` per finding of the paper (README
"Reproducing the paper"), each a set of comparisons *method - baseline* on named panels (procedure at
one N, one judge), read at the panel's middle common KL -- the KL the reports' own sentences use
(``report/matched.py: matched_kl_summary``). The statistic and its significance rule are the report's
(docs/method.md §10); this module only looks the rows up and names the outcome:

* ``expect = +1`` (the paper says the method beats the baseline) or ``-1`` (it says it trails):
  **reproduced** where the gain is significant with the paper's sign, **contradicted** where it is
  significant with the other sign, **not established** where it is not significant; **no verdict**
  with one seed per side (training noise not assessed), **not measured** when the report has no such
  row (the experiment was not run, a method has no curve, or no common KL).
* ``expect = 0`` (a control, the A/A comparison: no effect may be significant): **passes** when no
  cell -- every KL of every listed panel -- is significant, else **fails** with the count; its
  |gains| are the noise yardstick the other findings are read against (:func:`read_against_aa`): a
  significant gain of a claim trained at the A/A control's settings (:data:`AA_CONTROLS`) that is no
  larger than the control's largest |gain| on the same panel and judge, over the control's cells inside
  the claim's own common KL range, is **within A/A noise** -- two trainings of one method differ by as
  much there -- not reproduced; where there is no such yardstick (no control at these settings, the
  control not run, run with one seed, or without a cell in that KL range) the outcome says which.
* ``expect = None`` (a control whose expected outcome the paper does not fix): the outcome
  (**significant** / **not significant**; **not established** where significant but within what the
  chords make) without a verdict on the paper.
* An A/A control is read cell by cell with no correction, so under the null up to ~5 % of its cells are
  significant by chance: a "fails" says how many would be (``chance alone``).

A verdict is about the toy world and these seeds; it holds the prompt and seed intervals of the report,
and -- like the report -- makes no correction for the several panels, methods and KLs read.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from infalign.math.matched_kl import gives_verdict
from infalign.report.matched import (
    KNOB_ORDER_NOTE,
    absent_method,
    chord_note,
    no_verdict_text,
    points,
    seed_interval_text,
)

__all__ = ["Claim", "CLAIMS", "Comparison", "Finding", "read_claim", "findings", "findings_markdown",
           "findings_json", "read_against_aa", "aa_yardstick"]

EXP_T = ("expn(t=4)", "expn(t=8)", "expn(t=16)")
# claim experiment -> the experiment of the A/A controls trained at its settings, whose yardsticks apply
# (paper_null re-trains at paper_bon's, which standard shares; paper_null_won at paper_won's, with its
# worst-of-N panels; paper_null_hacking at paper_hacking's)
AA_CONTROLS = {"bon": "null", "standard": "null", "won": "null_won", "hacking": "null_hacking"}
WITHIN_AA = "within A/A noise"
EXP_T_NEG = ("expn(t=-4)", "expn(t=-8)")


@dataclass(frozen=True)
class Claim:
    """A finding of the paper: ``methods`` against ``baseline`` on ``panels`` under ``judge``, in the
    matched-KL table of the report ``OUT/<report>`` (a sweep's ``report`` or a narrower ``report_*``)."""

    experiment: str  # the infalign-paper experiment whose report holds it
    report: str  # the report dir, relative to OUT
    paper: str  # what the paper says, in a sentence
    panels: tuple[str, ...]  # e.g. ("bon2", "bon4", "bon32")
    methods: tuple[str, ...]
    baseline: str
    expect: int | None  # +1 beats, -1 trails, 0 no significant difference (control), None: not fixed
    judge: str = "reward_model"


CLAIMS: tuple[Claim, ...] = (
    Claim("bon", "bon/report_transforms", "exp(t) beats calibrated identity on the best-of-N win rate at matched KL "
          "(paper: +3-8 %)", ("bon2", "bon4", "bon32"), EXP_T, "identity", +1),
    Claim("bon", "bon/report_transforms", "exp(t) beats the raw reward on the best-of-N win rate at matched KL",
          ("bon2", "bon4", "bon32"), EXP_T, "raw", +1),
    Claim("bon", "bon/report_transforms", "judged by the gold reward, exp(t) still beats identity on best-of-N "
          "(the paper's judges are reward models: not a claim it makes)", ("bon4", "bon32"), EXP_T, "identity",
          None, judge="gold"),
    Claim("null", "null/report_identity", "A/A control: identity against an independent re-training of itself -- "
          "no gain may be significant", ("standard", "bon2", "bon4", "bon32"), ("identity[replica=1]",), "identity",
          0),
    Claim("null", "null/report_identity", "A/A control under the gold judge", ("standard", "bon2", "bon4", "bon32"),
          ("identity[replica=1]",), "identity", 0, judge="gold"),
    Claim("null", "null/report_expn", "A/A control of the treatment: exp(t=8) against an independent re-training "
          "of itself -- no gain may be significant", ("standard", "bon2", "bon4", "bon32"),
          ("expn(t=8)[replica=1]",), "expn(t=8)", 0),
    Claim("null", "null/report_expn", "A/A control of the treatment under the gold judge",
          ("standard", "bon2", "bon4", "bon32"), ("expn(t=8)[replica=1]",), "expn(t=8)", 0, judge="gold"),
    Claim("null_won", "null_won/report_identity", "A/A control on worst-of-N: identity against an independent "
          "re-training of itself", ("standard", "won2", "won4", "won8"), ("identity[replica=1]",), "identity", 0),
    Claim("null_won", "null_won/report_expn", "A/A control of the worst-of-N treatment: exp(t=-4) against an "
          "independent re-training of itself", ("standard", "won2", "won4", "won8"), ("expn(t=-4)[replica=1]",),
          "expn(t=-4)", 0),
    Claim("null_hacking", "null_hacking/report_raw", "A/A control at the hacking settings, under gold: raw against "
          "an independent re-training of itself", ("standard",), ("raw[replica=1]",), "raw", 0, judge="gold"),
    Claim("null_hacking", "null_hacking/report_identity", "A/A control at the hacking settings, under gold: "
          "identity against an independent re-training of itself", ("standard",), ("identity[replica=1]",),
          "identity", 0, judge="gold"),
    Claim("bon", "bon/report_transforms", "calibrated identity is the best on the standard win rate: exp(t) "
          "trails it", ("standard",), EXP_T, "identity", -1),
    Claim("standard", "standard/report", "the best-of-N baselines (BoN-SFT, IPO) trail calibrated identity on the "
          "standard win rate", ("standard",), ("bon_sft(N=4)", "ipo(N=4)"), "identity", -1),
    Claim("standard", "standard/report_calibration", "calibrated identity beats the raw reward on the standard "
          "win rate",
          ("standard",), ("identity",), "raw", +1),
    Claim("won", "won/report", "exp(t < 0) beats calibrated identity on the worst-of-N win rate at matched KL "
          "(paper: +4-9 %)", ("won4", "won8"), EXP_T_NEG, "identity", +1),
    Claim("won", "won/report", "exp(t < 0) beats the raw reward on the worst-of-N win rate",
          ("won4", "won8"), EXP_T_NEG, "raw", +1),
    Claim("control", "control/report", "calibrated world (nothing to calibrate in the gold reward): what is left "
          "of identity - raw", ("standard", "bon4"), ("identity", "identity[pooled]"), "raw", None),
    Claim("control", "control/report", "calibrated world: what per-prompt calibration still buys over pooled ranks "
          "(identity[pooled] - identity)", ("standard", "bon4"), ("identity[pooled]",), "identity", None),
    Claim("standard", "standard/report_calibration", "default world: what per-prompt calibration buys over "
          "pooled ranks "
          "(identity[pooled] - identity; the paper's calibration step)", ("standard", "bon4"),
          ("identity[pooled]",), "identity", -1),
    Claim("hacking", "hacking/report", "calibration makes RL more robust to reward hacking: at matched KL, "
          "calibrated RL reaches a higher gold win rate than raw", ("standard",), ("identity", "expn(t=4)"),
          "raw", +1, judge="gold"),
    Claim("hacking_control", "hacking_control/report", "no labeler length bias: identity - raw under gold",
          ("standard",), ("identity",), "raw", None, judge="gold"),
)


@dataclass
class Comparison:
    """One ``method - baseline`` on one panel, at its middle common KL (points = x100)."""

    panel: str
    method: str
    baseline: str
    kl: float | None = None
    gain: float | None = None
    low: float | None = None
    high: float | None = None
    seeds: str = ""  # "3 seeds [+1.2, +3.0], total [+0.9, +3.3]"
    significant_kls: int = 0
    significant_up: int = 0  # of them, gains > 0 (the rest < 0): a count of both signs reads as support
    num_kls: int = 0
    significant: bool = False
    n_seeds: int = 0
    n_seeds_baseline: int = 0
    seed_test: str = ""  # the report's: paired | welch | pooled | none (pooled / none: one seed on a side, no verdict)
    max_abs_gain: float | None = None  # over every KL of the panel
    cells: list[tuple[float, float]] = field(default_factory=list)  # (KL, gain) at every common KL
    aa: str = ""  # the A/A reading of a significant outcome: "within", "beyond", or "none" (no yardstick)
    chords: str = ""  # "the chords alone make [a, b]: not evidence" (report/matched.py: chord_note), or ""
    theory: float | None = None  # the calibrated-space theory's gain at the same KL (report/theory_gain.py)
    outcome: str = "not measured"
    why: str = ""
    # beside the outcome, not in it (read_against_aa reads the outcome itself): "bon_sft(N=4): KL not monotone ..."
    caveat: str = ""


@dataclass
class Finding:
    claim: Claim
    comparisons: list[Comparison] = field(default_factory=list)
    verdict: str = "not measured"


def _float(text: str | None) -> float | None:
    try:
        v = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return v if v is not None and math.isfinite(v) else None


def _read_rows(path: Path) -> list[dict] | None:
    try:
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    except OSError:
        return None


def no_verdict(c: Comparison) -> str:
    """``no verdict (...)`` of a comparison with one seed on either side (as the report: training noise not
    assessed, ``math/matched_kl.gives_verdict``)."""
    if c.seed_test in ("", "none"):
        return "no verdict (1 seed: training noise not assessed)"
    return f"no verdict ({no_verdict_text(c.seed_test, c.n_seeds, c.n_seeds_baseline)})"


def _outcome(expect: int | None, c: Comparison) -> str:
    if not gives_verdict(c.seed_test):
        return no_verdict(c)
    if not c.significant:
        return "not significant" if expect is None else "not established"
    if c.chords:  # significant, but no larger than what the runs' KL placement alone makes: not evidence
        return f"not established ({c.chords})"
    sign = 1 if (c.gain or 0.0) > 0 else -1
    if expect is None:
        return "significant"
    return "reproduced" if sign == expect else "contradicted"


def read_claim(claim: Claim, out: Path) -> Finding:
    """The claim's comparisons from ``out / claim.report / matched_kl.csv`` and its verdict."""
    finding = Finding(claim)
    path = Path(out) / claim.report / "matched_kl.csv"
    rows = _read_rows(path)
    notes = _summary_notes(Path(out) / claim.report / "summary.json")
    zigzag, left_out = _knob_order_methods(notes), _absent_methods(notes)
    for panel in claim.panels:
        for method in claim.methods:
            c = Comparison(panel, method, claim.baseline)
            finding.comparisons.append(c)
            if rows is None:
                c.why = (f"no {claim.report}/matched_kl.csv: experiment '{claim.experiment}' has a dir, but this "
                         "report of it is missing (the sweep or the report failed or was stopped: the driver's "
                         "output, paper_time.md)"
                         if (Path(out) / claim.experiment).is_dir() else
                         f"no {claim.report}/matched_kl.csv (experiment '{claim.experiment}' not run?)")
                continue
            mine = [r for r in rows if r["panel"] == panel and r["judge"] == claim.judge and r["method"] == method
                    and r["baseline"] == claim.baseline and _float(r["kl"]) is not None]
            if not mine:
                notes = {r["note"] for r in rows if r["panel"] == panel and r["judge"] == claim.judge and r["note"]}
                notes |= {left_out[m] for m in (method, claim.baseline) if m in left_out}
                c.why = "; ".join(sorted(notes)) or "no such comparison in the report (method without a curve?)"
                continue
            mine.sort(key=lambda r: float(r["kl"]))
            mid = mine[len(mine) // 2]
            c.kl, c.gain, c.low, c.high = (_float(mid[k]) for k in ("kl", "gain", "gain_low", "gain_high"))
            c.theory = _float(mid.get("theory_gain"))  # (none in reports from before it, and where no theory)
            c.n_seeds = int(_float(mid["n_seeds"]) or 0)
            c.seed_test = mid.get("seed_test") or "none"
            c.significant = mid["significant"] == "True"
            inner = ("gain_low", "seed_low", "total_low") if (c.gain or 0.0) > 0 else ("gain_high", "seed_high",
                                                                                     "total_high")
            c.chords = ("" if "chord_low" not in mid else  # a report from before the check: read as it was
                        chord_note(c.gain, _float(mid.get("chord_low")), _float(mid.get("chord_high")),
                                   [_float(mid.get(k)) for k in inner]))
            signs = [(_float(r["gain"]) or 0.0) > 0 for r in mine if r["significant"] == "True"]
            c.significant_kls, c.significant_up, c.num_kls = len(signs), sum(signs), len(mine)
            c.cells = [(float(r["kl"]), g) for r in mine if (g := _float(r["gain"])) is not None]
            c.max_abs_gain = max(abs(g) for _, g in c.cells) if c.cells else None
            # (a report from before the total interval has no total_* columns: read as it was, without them)
            bounds = (_float(mid.get(k)) for k in ("seed_low", "seed_high", "total_low", "total_high"))
            c.n_seeds_baseline = int(_float(mid.get("n_seeds_baseline")) or 0)
            c.seeds = seed_interval_text(c.seed_test, c.n_seeds, c.n_seeds_baseline, *bounds)
            c.outcome = _outcome(claim.expect, c) if claim.expect != 0 else (
                no_verdict(c) if not gives_verdict(c.seed_test) else f"{significant_text(c)} KLs significant")
            if unordered := [m for m in (method, claim.baseline) if m in zigzag]:
                c.caveat = (f"{' and '.join(unordered)}: KL not monotone in its knob -- its curve joins runs far "
                            "apart on it; matched_kl.md")
    finding.verdict = _verdict(claim, finding.comparisons)
    return finding


def _summary_notes(summary: Path) -> list[str]:
    """The notes of a report's matched-KL comparison (``summary.json``), [] without the file."""
    try:
        notes = json.loads(summary.read_text())["matched_kl"]["notes"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [n for n in notes if isinstance(n, str)] if isinstance(notes, list) else []


def _knob_order_methods(notes: Sequence[str]) -> set[str]:
    """The methods the report's notes say have a KL not monotone in their knob (``report/matched.
    knob_order_notes``: ``"<method>, seed <s>: its KL is not monotone in ..."``)."""
    return {n.split(", seed ")[0] for n in notes if KNOB_ORDER_NOTE in n}


def _absent_methods(notes: Sequence[str]) -> dict[str, str]:
    """``{method: note}`` of the methods the report left out (``report/matched.absent_note``: a narrowed sweep, or a
    method whose jobs all failed)."""
    return {m: n for n in notes if (m := absent_method(n)) is not None}


def significant_text(c: Comparison) -> str:
    """The KLs where the gain is significant, by sign: ``+4 −1 of 6``; ``not assessed (1 seed)`` with one seed
    per method, where no significance is tested (walkthrough: ``+0 −0 of 6`` read as "nowhere significant")."""
    if not gives_verdict(c.seed_test):
        return "not assessed (1 seed)" if c.seed_test in ("", "none") else "not assessed (1 seed on one side)"
    return f"+{c.significant_up} −{c.significant_kls - c.significant_up} of {c.num_kls}"


def _verdict(claim: Claim, comparisons: Sequence[Comparison]) -> str:
    measured = [c for c in comparisons if c.gain is not None]
    if not measured:
        return "not measured"
    if claim.expect == 0:
        judged = [c for c in measured if gives_verdict(c.seed_test)]
        left = [f"{n} {what}" for n, what in ((len(comparisons) - len(measured), "not measured"),
                                              (len(measured) - len(judged), "with 1 seed")) if n]
        left_text = f"; {', '.join(left)} of {len(comparisons)} comparisons" if left else ""
        if not judged:  # (walkthrough: "no verdict (1 seed; 4 with 1 seed of 4 comparisons)")
            missing = len(comparisons) - len(measured)
            return ("no verdict (1 seed: training noise not assessed" + (
                f"; {missing} of {len(comparisons)} comparisons not measured" if missing else "") + ")")
        cells = sum(c.num_kls for c in judged)
        bad = sum(c.significant_kls for c in judged)
        largest = max(c.max_abs_gain or 0.0 for c in judged)
        # (no correction for the cells read: up to ~5 % of an A/A pair's cells are significant by chance)
        head, chance = ("passes", "") if bad == 0 else (f"fails: {bad} of {cells} cells significant",
                                                          f"chance alone: ~{0.05 * cells:.1f}; ")
        return f"{head} ({chance}largest |gain| over the {cells} cells: {100 * largest:.1f} points{left_text})"
    counts: dict[str, int] = {}
    for c in measured:
        key = c.outcome.split(" (")[0]
        counts[key] = counts.get(key, 0) + 1
    order = ("reproduced", "contradicted", WITHIN_AA, "not established", "significant", "not significant",
             "no verdict")
    parts = [f"{key} {counts[key]}" for key in order if key in counts]
    notes = [f"{n} {what}" for n, what in ((len(comparisons) - len(measured), "not measured"),
                                           (sum(c.aa == "none" for c in measured), "significant without an A/A "
                                            "yardstick")) if n]
    return f"{', '.join(parts)} of {len(comparisons)}" + (f" ({'; '.join(notes)})" if notes else "")


def findings(out: Path, claims: Sequence[Claim] = CLAIMS) -> list[Finding]:
    return read_against_aa([read_claim(c, out) for c in claims])


# The fewest cells of an A/A pair a yardstick reads (aa_yardstick: widened to the nearest KLs when its range holds
# fewer): docs/method.md (10.8).
MIN_AA_CELLS = 3


def aa_yardstick(found: Sequence[Finding], control: str | None, judge: str, c: Comparison
                 ) -> tuple[float | None, str]:
    """``(yardstick, note)`` for the comparison ``c`` of a claim whose A/A controls are the ``expect = 0``
    claims of experiment ``control`` (:data:`AA_CONTROLS`): the largest |gain| of those controls' cells
    on ``c``'s panel and ``judge`` whose KL lies inside ``c``'s own common KL range (noise grows with
    KL, and a control's common KLs span its own pair's range, not the claim's) -- widened, pair by pair, to its
    nearest KLs while a pair has fewer than :data:`MIN_AA_CELLS` cells there, within a factor of 2 of the range
    (pairs without a cell in it are left out) -- with a note on the KL range,
    the cells read, and the control's seeds where they differ from ``c``'s; ``(None, why)`` when there is none."""
    if control is None:
        return None, "no A/A control at these settings"
    mine = [x for f in found if f.claim.expect == 0 and f.claim.experiment == control and f.claim.judge == judge
            for x in f.comparisons if x.panel == c.panel]
    if not mine:
        return None, "no A/A control on this panel"
    measured = [x for x in mine if x.gain is not None]
    if not measured:
        return None, f"A/A control '{control}' not measured: not run"
    judged = [x for x in measured if gives_verdict(x.seed_test)]
    if not judged:
        side = "" if all(x.seed_test in ("", "none") for x in measured) else " on one side"
        return None, f"A/A control '{control}' has 1 seed{side}: no yardstick"
    lo, hi = min(kl for kl, _ in c.cells), max(kl for kl, _ in c.cells)
    # only pairs with a cell in the range (a pair whose KLs all lie elsewhere is another regime)
    pairs = [x for x in judged if any(lo - 1e-9 <= kl <= hi + 1e-9 for kl, _ in x.cells)]
    if not pairs:
        return None, f"A/A control '{control}' has no common KL in {lo:.2f}-{hi:.2f}"
    # each pair's cells in the range, and its nearest ones outside while it has fewer than MIN_AA_CELLS there: the
    # maximum of one or two |gain|s favoured "beyond A/A noise" (a claim over KL 0.53-0.62 met one null cell per
    # pair; findings audit) -- within a factor of two of the range: noise grows with KL, and a cell at 3x the
    # range's top made an 8-point yardstick
    near = [[cell for cell in x.cells if lo / 2 - 1e-9 <= cell[0] <= 2 * hi + 1e-9] for x in pairs]
    taken = [_nearest_cells(pair, lo, hi, MIN_AA_CELLS) for pair in near]
    cells = [cell for pair in taken for cell in pair]
    a, b = min(lo, *(kl for kl, _ in cells)), max(hi, *(kl for kl, _ in cells))
    note = f"KL {lo:.2f}-{hi:.2f}, {len(cells)} cells"
    if a < lo - 1e-9 or b > hi + 1e-9:
        note += f"; widened to KL {a:.2f}-{b:.2f}: fewer than {MIN_AA_CELLS} cells per A/A pair inside"
    if any(len(pair) < MIN_AA_CELLS for pair in taken):
        note += f"; a pair with fewer than {MIN_AA_CELLS} within a factor of 2 of the range"
    seeds = sorted({x.n_seeds for x in judged})
    if seeds != [c.n_seeds]:
        note += f"; the control has {'/'.join(map(str, seeds))} seeds, this comparison {c.n_seeds}"
    return max(abs(g) for _, g in cells), note


def _nearest_cells(cells: Sequence[tuple[float, float]], lo: float, hi: float, least: int
                   ) -> list[tuple[float, float]]:
    """The ``(KL, gain)`` cells in ``[lo, hi]``, and while they are fewer than ``least`` the nearest ones outside
    (by distance to the range; all there are when the pair has fewer)."""
    def distance(cell):
        return max(lo - cell[0], cell[0] - hi, 0.0)

    ranked = sorted(cells, key=distance)
    inside = [cell for cell in ranked if distance(cell) <= 1e-9]
    return inside if len(inside) >= least else ranked[:least]


def read_against_aa(found: list[Finding]) -> list[Finding]:
    """Each significant outcome (reproduced, contradicted, significant) of a non-control claim read
    against its A/A yardstick (:func:`aa_yardstick`, the controls of :data:`AA_CONTROLS`
    ``[claim.experiment]``): no larger -> :data:`WITHIN_AA`; larger -> kept; both with the yardstick
    and the KL range it was taken over; no yardstick -> kept, saying why. The verdicts are recounted
    (and say how many significant outcomes had no yardstick)."""
    for f in found:
        if f.claim.expect == 0:
            continue
        control = AA_CONTROLS.get(f.claim.experiment)
        for c in f.comparisons:
            if c.gain is None or c.outcome not in ("reproduced", "contradicted", "significant"):
                continue
            stick, note = aa_yardstick(found, control, f.claim.judge, c)
            if stick is None:
                c.aa, c.outcome = "none", f"{c.outcome} ({note})"
            elif abs(c.gain) <= stick:
                c.aa = "within"
                c.outcome = f"{WITHIN_AA} (the A/A control's largest |gain| here: {100 * stick:.1f} points, {note})"
            else:
                c.aa = "beyond"
                c.outcome += f" (beyond the A/A control's {100 * stick:.1f} points, {note})"
        f.verdict = _verdict(f.claim, f.comparisons)
    return found


def findings_markdown(found: Sequence[Finding], out: Path | None = None) -> str:
    """``findings.md``: per claim the verdict, then one row per comparison."""
    lines = ["# The paper's findings, as this run measured them", "",
             "Each comparison is read at its panel's middle common KL (of an even count the upper of the two "
             "middle ones: of 6, the 4th) from the experiment's matched-KL report "
             "(paired prompt-bootstrap 95 % CI, the seed and total intervals; significant = all on one side of 0, "
             "docs/method.md §10). Verdict: *reproduced* / *contradicted* = significant with / against the paper's "
             "sign, *not established* = not significant, or significant but with intervals that do not clear the "
             "gain the runs' KL placement alone makes (*the chords alone make [a, b]*: each method's curve read "
             "at the other's KLs, docs/method.md §10); *no verdict* = one seed on either side (training noise not "
             "assessed: 1 seed each, or 1 against several, whose pooled interval assumes equal noise); a control "
             "*passes* when no cell is significant, and "
             "*within A/A noise* = significant, but no larger than the largest |gain| its A/A control (an "
             "independent re-training of one method) shows on that panel and judge at the KLs the comparison spans; "
             "a significant outcome without such a yardstick says why. No correction for the many panels, methods "
             "and KLs read. *theory*: the calibrated-space theory's gain at the same KL, where both methods have "
             "one (reward-model panels; not raw, the offline baselines or pooled calibration).", ""]
    if out is not None:
        lines += [f"Reports under `{out}`.", ""]
    for f in found:
        c = f.claim
        lines += [f"## {c.experiment}: {c.paper}", "",
                  f"**{f.verdict}** (`{c.report}`, judge {c.judge})", "",
                  "| panel | comparison | KL | gain, points [95 % CI] | theory | seeds | significant KLs | outcome |",
                  "|---|---|---:|---|---:|---|---:|---|"]
        for x in f.comparisons:
            if x.gain is None:
                lines.append(f"| {x.panel} | {x.method} − {x.baseline} | – | – | – | – | – | not measured: {x.why} |")
                continue
            lines.append(f"| {x.panel} | {x.method} − {x.baseline} | {x.kl:.2f} | {points(x.gain)} [{points(x.low)}, "
                         f"{points(x.high)}] | {points(x.theory)} | {x.seeds or '1 seed'} | {significant_text(x)} | "
                         f"{x.outcome}{f' ({x.caveat})' if x.caveat else ''} |")
        lines.append("")
    return "\n".join(lines)


def findings_json(found: Sequence[Finding]) -> list[dict]:
    return [{"experiment": f.claim.experiment, "paper": f.claim.paper, "report": f.claim.report,
             "judge": f.claim.judge, "expect": f.claim.expect, "verdict": f.verdict,
             "comparisons": [vars(x) for x in f.comparisons]} for f in found]
