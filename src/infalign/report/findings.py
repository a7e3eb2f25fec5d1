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
  cell -- every KL of every listed panel -- is significant, else **fails** with the count; the largest
  |gain| over those cells is the noise yardstick the other findings are read against
  (:func:`read_against_aa`): a significant gain of a claim trained at the A/A control's settings
  (:data:`AA_CONTROLS`) that is no larger than the control's largest |gain| on the same panel and
  judge is **within A/A noise** -- two trainings of one method differ by as much -- not reproduced;
  where no A/A control covers the panel or the settings, the outcome says so.
* ``expect = None`` (a control whose expected outcome the paper does not fix): the outcome
  (**significant** / **not significant**) without a verdict on the paper.

A verdict is about the toy world and these seeds; it holds the prompt and seed intervals of the report,
and -- like the report -- makes no correction for the several panels, methods and KLs read.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from infalign.report.matched import chord_note, points, seed_interval_text

__all__ = ["Claim", "CLAIMS", "Comparison", "Finding", "read_claim", "findings", "findings_markdown",
           "findings_json", "read_against_aa", "aa_yardsticks"]

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
    Claim("standard", "standard/report", "calibrated identity beats the raw reward on the standard win rate",
          ("standard",), ("identity",), "raw", +1),
    Claim("won", "won/report", "exp(t < 0) beats calibrated identity on the worst-of-N win rate at matched KL "
          "(paper: +4-9 %)", ("won4", "won8"), EXP_T_NEG, "identity", +1),
    Claim("won", "won/report", "exp(t < 0) beats the raw reward on the worst-of-N win rate",
          ("won4", "won8"), EXP_T_NEG, "raw", +1),
    Claim("control", "control/report", "calibrated world (nothing to calibrate in the gold reward): what is left "
          "of identity - raw", ("standard", "bon4"), ("identity", "identity[pooled]"), "raw", None),
    Claim("control", "control/report", "calibrated world: what per-prompt calibration still buys over pooled ranks "
          "(identity[pooled] - identity)", ("standard", "bon4"), ("identity[pooled]",), "identity", None),
    Claim("standard", "standard/report", "default world: what per-prompt calibration buys over pooled ranks "
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
    seed_test: str = ""  # the report's: paired | welch | pooled | none (one seed each: no verdict)
    max_abs_gain: float | None = None  # over every KL of the panel (controls' noise yardstick)
    chords: str = ""  # "the chords alone make [a, b]: not evidence" (report/matched.py: chord_note), or ""
    outcome: str = "not measured"
    why: str = ""


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


def _outcome(expect: int | None, c: Comparison) -> str:
    if c.seed_test in ("", "none"):  # as the report: one seed on each side, training noise not assessed
        return "no verdict (1 seed: training noise not assessed)"
    if not c.significant:
        return "not significant" if expect is None else "not established"
    if c.chords:  # significant, but no larger than what the runs' KL placement alone makes
        return ("not significant" if expect is None else "not established") + f" ({c.chords})"
    sign = 1 if (c.gain or 0.0) > 0 else -1
    if expect is None:
        return "significant"
    return "reproduced" if sign == expect else "contradicted"


def read_claim(claim: Claim, out: Path) -> Finding:
    """The claim's comparisons from ``out / claim.report / matched_kl.csv`` and its verdict."""
    finding = Finding(claim)
    path = Path(out) / claim.report / "matched_kl.csv"
    rows = _read_rows(path)
    for panel in claim.panels:
        for method in claim.methods:
            c = Comparison(panel, method, claim.baseline)
            finding.comparisons.append(c)
            if rows is None:
                c.why = f"no {claim.report}/matched_kl.csv (experiment '{claim.experiment}' not run?)"
                continue
            mine = [r for r in rows if r["panel"] == panel and r["judge"] == claim.judge and r["method"] == method
                    and r["baseline"] == claim.baseline and _float(r["kl"]) is not None]
            if not mine:
                notes = {r["note"] for r in rows if r["panel"] == panel and r["judge"] == claim.judge and r["note"]}
                c.why = "; ".join(sorted(notes)) or "no such comparison in the report (method without a curve?)"
                continue
            mine.sort(key=lambda r: float(r["kl"]))
            mid = mine[len(mine) // 2]
            c.kl, c.gain, c.low, c.high = (_float(mid[k]) for k in ("kl", "gain", "gain_low", "gain_high"))
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
            gains = [abs(g) for r in mine if (g := _float(r["gain"])) is not None]
            c.max_abs_gain = max(gains) if gains else None
            bounds = (_float(mid[k]) for k in ("seed_low", "seed_high", "total_low", "total_high"))
            c.seeds = seed_interval_text(c.seed_test, c.n_seeds, int(_float(mid.get("n_seeds_baseline")) or 0),
                                         *bounds)
            c.outcome = _outcome(claim.expect, c) if claim.expect != 0 else (
                "no verdict (1 seed: training noise not assessed)" if c.seed_test == "none" else
                f"{significant_text(c)} KLs significant")
    finding.verdict = _verdict(claim, finding.comparisons)
    return finding


def significant_text(c: Comparison) -> str:
    """The KLs where the gain is significant, by sign: ``+4 −1 of 6``."""
    return f"+{c.significant_up} −{c.significant_kls - c.significant_up} of {c.num_kls}"


def _verdict(claim: Claim, comparisons: Sequence[Comparison]) -> str:
    measured = [c for c in comparisons if c.gain is not None]
    if not measured:
        return "not measured"
    if claim.expect == 0:
        judged = [c for c in measured if c.seed_test != "none"]
        if not judged:
            return "no verdict (1 seed)"
        cells = sum(c.num_kls for c in judged)
        bad = sum(c.significant_kls for c in judged)
        largest = max(c.max_abs_gain or 0.0 for c in judged)
        head = "passes" if bad == 0 else f"fails: {bad} of {cells} cells significant"
        return f"{head} (largest |gain| over the {cells} cells: {100 * largest:.1f} points)"
    counts: dict[str, int] = {}
    for c in measured:
        key = c.outcome.split(" (")[0]
        counts[key] = counts.get(key, 0) + 1
    order = ("reproduced", "contradicted", WITHIN_AA, "not established", "significant", "not significant",
             "no verdict")
    parts = [f"{key} {counts[key]}" for key in order if key in counts]
    unmeasured = len(comparisons) - len(measured)
    return f"{', '.join(parts)} of {len(comparisons)}" + (f" ({unmeasured} not measured)" if unmeasured else "")


def findings(out: Path, claims: Sequence[Claim] = CLAIMS) -> list[Finding]:
    return read_against_aa([read_claim(c, out) for c in claims])


def aa_yardsticks(found: Sequence[Finding]) -> dict[tuple[str, str, str], float]:
    """``{(experiment, judge, panel): largest |gain| over the cells of its A/A controls}`` (the
    ``expect = 0`` claims with more than one seed per side)."""
    sticks: dict[tuple[str, str, str], float] = {}
    for f in found:
        if f.claim.expect != 0:
            continue
        for c in f.comparisons:
            if c.max_abs_gain is not None and c.seed_test not in ("", "none"):
                key = (f.claim.experiment, f.claim.judge, c.panel)
                sticks[key] = max(sticks.get(key, 0.0), c.max_abs_gain)
    return sticks


def read_against_aa(found: list[Finding]) -> list[Finding]:
    """Each significant outcome (reproduced, contradicted, significant) of a non-control claim read
    against the A/A yardstick of its panel and judge (:func:`aa_yardsticks`, the controls of
    :data:`AA_CONTROLS` ``[claim.experiment]``): no larger -> :data:`WITHIN_AA` (with the yardstick);
    larger -> kept, with the yardstick; no yardstick -> kept, saying no A/A control covers it. The
    verdicts are recounted."""
    sticks = aa_yardsticks(found)
    for f in found:
        if f.claim.expect == 0:
            continue
        control = AA_CONTROLS.get(f.claim.experiment)
        for c in f.comparisons:
            if c.gain is None or c.outcome not in ("reproduced", "contradicted", "significant"):
                continue
            stick = sticks.get((control, f.claim.judge, c.panel)) if control else None
            if stick is None:
                c.outcome += (" (no A/A control on this panel)" if control else
                              " (no A/A control at these settings)")
            elif abs(c.gain) <= stick:
                c.outcome = f"{WITHIN_AA} (the A/A control's largest |gain| here: {100 * stick:.1f} points)"
            else:
                c.outcome += f" (beyond the A/A control's {100 * stick:.1f} points)"
        f.verdict = _verdict(f.claim, f.comparisons)
    return found


def findings_markdown(found: Sequence[Finding], out: Path | None = None) -> str:
    """``findings.md``: per claim the verdict, then one row per comparison."""
    lines = ["# The paper's findings, as this run measured them", "",
             "Each comparison is read at its panel's middle common KL from the experiment's matched-KL report "
             "(paired prompt-bootstrap 95 % CI, the seed and total intervals; significant = all on one side of 0, "
             "docs/method.md §10). Verdict: *reproduced* / *contradicted* = significant with / against the paper's "
             "sign, *not established* = not significant, or significant but with intervals that do not clear the "
             "gain the runs' KL placement alone makes (*the chords alone make [a, b]*: each method's curve read "
             "at the other's KLs, docs/method.md §10); a control *passes* when no cell is significant, and "
             "*within A/A noise* = significant, but no larger than the largest |gain| its A/A control (an "
             "independent re-training of one method) shows on that panel and judge. No correction for the many "
             "panels, methods and KLs read.", ""]
    if out is not None:
        lines += [f"Reports under `{out}`.", ""]
    for f in found:
        c = f.claim
        lines += [f"## {c.experiment}: {c.paper}", "",
                  f"**{f.verdict}** (`{c.report}`, judge {c.judge})", "",
                  "| panel | comparison | KL | gain, points [95 % CI] | seeds | significant KLs | outcome |",
                  "|---|---|---:|---|---|---:|---|"]
        for x in f.comparisons:
            if x.gain is None:
                lines.append(f"| {x.panel} | {x.method} − {x.baseline} | – | – | – | – | not measured: {x.why} |")
                continue
            lines.append(f"| {x.panel} | {x.method} − {x.baseline} | {x.kl:.2f} | {points(x.gain)} [{points(x.low)}, "
                         f"{points(x.high)}] | {x.seeds or '1 seed'} | {significant_text(x)} | {x.outcome} |")
        lines.append("")
    return "\n".join(lines)


def findings_json(found: Sequence[Finding]) -> list[dict]:
    return [{"experiment": f.claim.experiment, "paper": f.claim.paper, "report": f.claim.report,
             "judge": f.claim.judge, "expect": f.claim.expect, "verdict": f.verdict,
             "comparisons": [vars(x) for x in f.comparisons]} for f in found]
