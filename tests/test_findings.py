"""The paper's findings with verdicts (report/findings.py), on hand-written matched_kl.csv tables whose
verdicts are known; the columns are the report's own (report/matched.py: MATCHED_KL_COLUMNS), and
tests/test_report.py reads a finding off a real report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from infalign.report.findings import CLAIMS, Claim, findings, findings_markdown, read_claim
from infalign.report.matched import MATCHED_KL_COLUMNS

KLS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)  # the middle common KL is KLS[3] = 0.4 (grid[len // 2], as the report)


def rows(panel: str, method: str, baseline: str, gains, significant, judge: str = "reward_model",
         n_seeds: int = 3, seed_test: str | None = None, spread: float = 0.02) -> list[dict]:
    out = []
    for kl, g, sig in zip(KLS, gains, significant):
        r = dict.fromkeys(MATCHED_KL_COLUMNS, "")
        r |= {"panel": panel, "judge": judge, "kl": kl, "method": method, "baseline": baseline, "gain": g,
              "gain_low": g - spread / 2, "gain_high": g + spread / 2, "significant": str(sig), "n_seeds": n_seeds,
              "seed_test": seed_test or ("paired" if n_seeds > 1 else "none"), "n_seeds_baseline": n_seeds,
              "seed_low": g - spread, "seed_high": g + spread, "total_low": g - spread, "total_high": g + spread,
              "chord_low": 0.0, "chord_high": 0.0}  # runs at the same KLs: the chords make nothing
        out.append(r)
    return out[::-1]  # any row order: the middle KL is found by value


def write(out: Path, report: str, table: list[dict]) -> None:
    (out / report).mkdir(parents=True, exist_ok=True)
    with (out / report / "matched_kl.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MATCHED_KL_COLUMNS)
        w.writeheader()
        w.writerows(table)


CLAIM = Claim("bon", "bon/report_transforms", "exp(t) beats identity", ("bon2", "bon4"), ("expn(t=4)", "expn(t=8)"),
              "identity", +1)


def test_each_outcome_is_read_at_the_middle_kl_and_counted(tmp_path):
    t = (rows("bon2", "expn(t=4)", "identity", [0.01] * 6, [False, False, False, True, False, False], spread=0.005)
         + rows("bon2", "expn(t=8)", "identity", [-0.02] * 6, [True] * 6, spread=0.01)
         + rows("bon4", "expn(t=4)", "identity", [0.00, 0.01, 0.02, 0.03, 0.04, 0.05], [False, False] + [True] * 4)
         # the same comparison under gold and another baseline: not this claim's
         + rows("bon4", "expn(t=4)", "identity", [-0.05] * 6, [True] * 6, judge="gold")
         + rows("bon4", "expn(t=4)", "raw", [-0.05] * 6, [True] * 6))
    write(tmp_path, "bon/report_transforms", t)
    f = read_claim(CLAIM, tmp_path)
    out = {(c.panel, c.method): c for c in f.comparisons}
    assert [c.outcome for c in f.comparisons] == ["reproduced", "contradicted", "reproduced", "not measured"]
    b4 = out[("bon4", "expn(t=4)")]
    assert b4.kl == 0.4 and b4.gain == pytest.approx(0.03) and b4.significant_kls == 4 and b4.num_kls == 6
    assert b4.seeds == "3 seeds [+1.0, +5.0], total [+1.0, +5.0]"
    assert out[("bon2", "expn(t=4)")].significant_kls == 1  # significant at the middle KL only
    assert "method without a curve" in out[("bon4", "expn(t=8)")].why
    assert f.verdict == "reproduced 2, contradicted 1 of 4 (1 not measured)"
    md = findings_markdown([f])
    assert "**reproduced 2, contradicted 1 of 4 (1 not measured)**" in md
    assert "| bon4 | expn(t=4) − identity | 0.40 | +3.0 [+2.0, +4.0] | – | 3 seeds [+1.0, +5.0], total [+1.0, +5.0] " \
           "| +4 −0 of 6 | reproduced |" in md  # (–: these rows have no theory gain)
    # significant KLs are counted by sign: a count of both signs would read as support for the claim
    assert out[("bon2", "expn(t=8)")].significant_up == 0 and out[("bon2", "expn(t=8)")].significant_kls == 6
    assert "| +0 −6 of 6 | contradicted |" in md


def test_the_theory_gain_at_the_middle_kl_stands_beside_the_measured_one(tmp_path):
    """matched_kl.csv's theory_gain (report/theory_gain.py) at the comparison's middle common KL goes into the
    comparison and findings.md's theory column: measured +3.0 beside the theory's +5.1 -- what the README's
    best-of-N table shows by hand."""
    table = rows("bon4", "expn(t=4)", "identity", [0.01, 0.02, 0.025, 0.03, 0.035, 0.04], [True] * 6)
    for r in table:
        r["theory_gain"] = 0.051 if r["kl"] == 0.4 else 0.04
    write(tmp_path, "bon/report_transforms", table)
    f = read_claim(Claim("bon", "bon/report_transforms", "x", ("bon4",), ("expn(t=4)",), "identity", +1), tmp_path)
    (c,) = f.comparisons
    assert c.kl == 0.4 and c.theory == pytest.approx(0.051)
    assert "| bon4 | expn(t=4) − identity | 0.40 | +3.0 [+2.0, +4.0] | +5.1 | 3 seeds" in findings_markdown([f])


def test_not_significant_is_not_established_and_one_seed_gives_no_verdict(tmp_path):
    write(tmp_path, "bon/report_transforms",
          rows("bon2", "expn(t=4)", "identity", [0.01] * 6, [False] * 6)
          + rows("bon2", "expn(t=8)", "identity", [0.05] * 6, [False] * 6, n_seeds=1))
    f = read_claim(Claim("bon", "bon/report_transforms", "x", ("bon2",), ("expn(t=4)", "expn(t=8)"), "identity", +1),
                   tmp_path)
    assert [c.outcome for c in f.comparisons] == ["not established",
                                                  "no verdict (1 seed: training noise not assessed)"]
    assert f.comparisons[1].seeds == ""
    # a trails-claim reads the same rows with the other sign
    write(tmp_path, "standard/report", rows("standard", "ipo(N=4)", "identity", [-0.03] * 6, [True] * 6))
    g = read_claim(Claim("standard", "standard/report", "x", ("standard",), ("ipo(N=4)",), "identity", -1), tmp_path)
    assert g.comparisons[0].outcome == "reproduced" and g.verdict == "reproduced 1 of 1"


def test_a_control_passes_only_without_a_significant_cell_and_reports_the_largest_gain(tmp_path):
    claim = Claim("null", "null/report", "A/A", ("bon2", "bon4"), ("identity[replica=1]",), "identity", 0)
    write(tmp_path, "null/report", rows("bon2", "identity[replica=1]", "identity", [0.001, -0.004, 0, 0, 0, 0],
                                        [False] * 6)
          + rows("bon4", "identity[replica=1]", "identity", [0.0] * 6, [False] * 6))
    assert read_claim(claim, tmp_path).verdict == "passes (largest |gain| over the 12 cells: 0.4 points)"
    write(tmp_path, "null/report", rows("bon2", "identity[replica=1]", "identity", [0.001, -0.025, 0, 0, 0, 0],
                                        [False, True, False, False, False, False])
          + rows("bon4", "identity[replica=1]", "identity", [0.0] * 6, [False] * 6))
    f = read_claim(claim, tmp_path)
    assert f.verdict == ("fails: 1 of 12 cells significant (chance alone: ~0.6; largest |gain| over the 12 cells: "
                         "2.5 points)")
    assert f.comparisons[0].outcome == "+0 −1 of 6 KLs significant"


def test_unrun_experiments_are_not_measured_and_every_claim_names_a_paper_experiment(tmp_path):
    from infalign.apps.paper import NAMES

    found = findings(tmp_path)
    assert {f.verdict for f in found} == {"not measured"}
    assert all(c.why.startswith("no ") and "not run" in c.why for f in found for c in f.comparisons)
    assert {c.experiment for c in CLAIMS} <= set(NAMES) - {"calibration"}
    for c in CLAIMS:  # a report the driver writes: the sweep's own, or one of its narrower reports
        exp, report = c.report.split("/")
        from infalign.apps.paper import EXPERIMENTS

        suffixes = {f"report_{r.suffix}" for e in EXPERIMENTS if e.name == exp for r in e.reports}
        assert exp == c.experiment and report in {"report", *suffixes}, c


def test_a_claim_is_read_at_the_common_kls_of_its_own_methods():
    """Findings audit: the default world's calibration claims (identity - raw, identity[pooled] - identity) read
    standard/report, which also holds BoN-SFT and IPO, whose KL knobs reach only >= 0.53 -- so the claims were read
    at KL 0.53-0.62, beside the control world's at 0.42. They read a report of raw, identity and identity[pooled]
    alone; every claim on a narrower report finds its methods and baseline there."""
    from infalign.apps.paper import EXPERIMENTS

    reports = {f"{e.name}/report_{r.suffix}": set(r.methods) for e in EXPERIMENTS for r in e.reports}
    for c in CLAIMS:
        if c.report in reports:
            assert {*c.methods, c.baseline} <= reports[c.report], c
    calibration = [c for c in CLAIMS if c.experiment == "standard" and "bon_sft(N=4)" not in c.methods]
    assert len(calibration) == 2 and {c.report for c in calibration} == {"standard/report_calibration"}
    assert not reports["standard/report_calibration"] & {"bon_sft(N=4)", "ipo(N=4)"}


def test_the_paper_driver_writes_and_prints_the_findings_after_every_experiment(tmp_path):
    from infalign.apps import paper

    pairs = {"report_identity": ("identity[replica=1]", "identity"),
             "report_expn": ("expn(t=8)[replica=1]", "expn(t=8)")}

    def runner(cmd):
        if cmd[0] == "infalign-report" and "--out" in cmd:  # a narrower report: null's pairs
            out = Path(cmd[cmd.index("--out") + 1])
            if out.parent.name == "null":
                write(out.parent.parent, f"null/{out.name}", rows("bon4", *pairs[out.name], [0.0] * 6, [False] * 6))
        return 0

    lines: list[str] = []
    args = paper.parse_args(["--only", "bon,null", "--seeds", "0", "--out", str(tmp_path)])
    assert paper.run_all(args, runner=runner, echo=lines.append) == 0
    found = json.loads((tmp_path / "findings.json").read_text())["findings"]
    null = [f for f in found if f["experiment"] == "null" and f["judge"] == "reward_model"]
    assert len(null) == 2  # identity's and exp(t=8)'s A/A control, each read off its own report
    assert {f["verdict"] for f in null} == {"passes (largest |gain| over the 6 cells: 0.0 points; 3 not measured of 4 "
                                         "comparisons)"}
    assert "# The paper's findings" in (tmp_path / "findings.md").read_text()
    printed = "\n".join(lines)
    assert "null [reward_model]: A/A control" in printed and "passes" in printed
    assert "won [" not in printed  # not run: not printed (findings.md says "not measured")


def test_a_report_from_before_the_total_interval_is_read_and_a_findings_error_does_not_stop_the_driver(
        tmp_path, monkeypatch):
    """Findings audit: a matched_kl.csv written before the total_* columns existed raised KeyError in read_claim,
    and write_findings runs after every experiment with only ValueError caught -- one old report under a reused
    OUT ended infalign-paper after its first experiment. The old report is read without them; and a findings
    error is said, and the next experiment runs."""
    from infalign.apps import paper

    old = [{k: v for k, v in r.items() if not k.startswith("total_")}
           for r in rows("standard", "ipo(N=4)", "identity", [-0.03] * 6, [True] * 6)]
    write(tmp_path, "standard/report", old)
    found = read_claim(Claim("standard", "standard/report", "x", ("standard",), ("ipo(N=4)",), "identity", -1),
                       tmp_path)
    assert found.comparisons[0].outcome.startswith("reproduced")

    def broken(out):
        raise KeyError("total_low")

    monkeypatch.setattr(paper, "write_findings", broken)
    ran, lines = [], []
    args = paper.parse_args(["--only", "bon,null", "--seeds", "0", "--out", str(tmp_path / "out")])
    assert paper.run_all(args, runner=lambda cmd: ran.append(cmd) or 0, echo=lines.append) == 0
    assert {cmd[1] for cmd in ran if cmd[0] == "infalign-train"} == {"-m"} and len(
        [c for c in ran if c[0] == "infalign-train"]) == 2  # (both experiments' sweeps ran)
    assert sum("findings.md not written after" in line for line in lines) == 2


def test_one_seed_against_three_gets_the_pooled_interval_and_no_verdict(tmp_path):
    """The report gives one seed against three a pooled two-sample t (docs/method.md §10), which assumes the
    single seed trains as noisily as the three: no verdict (a statistics review: 12 % of no-gain comparisons
    called significant at 2x the noise). A report written before that rule (``significant`` True) is read under
    it; findings.py keys on the report's seed_test, and says the seed counts."""
    table = rows("bon4", "m", "identity", [0.03] * 6, [True] * 6, n_seeds=1, seed_test="pooled")
    for r in table:
        r["n_seeds_baseline"] = 3
    write(tmp_path, "r", table)
    (c,) = read_claim(Claim("bon", "r", "x", ("bon4",), ("m",), "identity", +1), tmp_path).comparisons
    assert c.outcome.startswith("no verdict (1 vs 3 seeds: the single seed's training noise is not measured")
    assert c.seeds.startswith("1 vs 3 seeds, pooled")
    (c,) = read_claim(Claim("bon", "r", "x", ("bon4",), ("m",), "identity", 0), tmp_path).comparisons
    assert c.outcome.startswith("no verdict (1 vs 3") and c.significant_kls == 6  # (as the old report said)


@pytest.mark.slow
def test_every_claimed_method_is_a_name_runs_are_recorded_under():
    """Claims name methods as the run records do (pipeline/record.method_info): ``identity[pooled]``, not
    the config entry's ``identity_pooled`` (a misnamed method is never measured)."""
    from infalign.apps.train import validate
    from infalign.pipeline.record import method_info
    from pipeline_helpers import compose_train

    recorded = set()
    for entry in ("raw", "identity", "identity_pooled", "expn_t4", "expn_t8", "expn_t16", "expn_tm4", "expn_tm8",
                  "bon_sft", "ipo"):
        cfg = compose_train(Path("/tmp/c"), Path("/tmp/r"), f"method={entry}")
        procedure, transform, algo = validate(cfg)
        recorded.add(method_info(cfg, algo, transform, procedure)["method"])
    claimed = {m for c in CLAIMS for m in (*c.methods, c.baseline)}
    replicas = {m for m in claimed if m.endswith("[replica=1]")}
    assert replicas == {"identity[replica=1]", "expn(t=8)[replica=1]", "expn(t=-4)[replica=1]", "raw[replica=1]"}
    assert {m.removesuffix("[replica=1]") for m in replicas} <= recorded  # a replica is its method re-trained
    assert claimed - replicas <= recorded, claimed - recorded


def test_a_significant_gain_the_chords_alone_could_make_is_not_established(tmp_path):
    """docs/method.md §10, interpolation check: +3 points significant, but the runs' KL placement alone
    makes up to +2.5 and the seed interval's lower end (+1.0) does not clear it; with the chords at
    +0.5 the same gain is reproduced, and chords pushing the other way never demote it."""
    def table(chord_low, chord_high):
        t = rows("bon4", "expn(t=4)", "identity", [0.03] * 6, [True] * 6)
        for r in t:
            r |= {"chord_low": chord_low, "chord_high": chord_high}
        return t

    cannot = ("not established (the chord check cannot be made here (too few runs of either method inside the "
              "other's KL range to show how the curve bends: add KL points): not evidence)")
    for (lo, hi), outcome in (((0.0, 0.025), "not established (the chords alone make [+0.0, +2.5], which the lower "
                                            "ends of the prompt CI (+2.0), seed interval (+1.0) and total interval "
                                            "(+1.0) do not clear: not evidence)"),
                              ((0.0, 0.005), "reproduced"), ((-0.04, 0.0), "reproduced"), (("", ""), cannot)):
        write(tmp_path, "bon/report_transforms", table(lo, hi))
        claim = Claim("bon", "bon/report_transforms", "exp(t) beats identity", ("bon4",), ("expn(t=4)",),
                      "identity", +1)
        assert read_claim(claim, tmp_path).comparisons[0].outcome == outcome
    # a report written before the check (no chord columns) is read as it was
    old = [{k: v for k, v in r.items() if not k.startswith("chord_")} for r in table(0.0, 0.0)]
    with (tmp_path / "bon/report_transforms" / "matched_kl.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[c for c in MATCHED_KL_COLUMNS if not c.startswith("chord_")])
        w.writeheader()
        w.writerows(old)
    assert read_claim(claim, tmp_path).comparisons[0].outcome == "reproduced"


def test_significant_gains_are_read_against_the_aa_yardstick_of_their_panel(tmp_path):
    """A claim was called reproduced while its own run's A/A control showed gains as large (a reviewer's
    find): a significant gain no larger than the A/A control's largest |gain| on the same panel and
    judge is within A/A noise; larger, it stays with the yardstick named; settings no A/A control
    covers are said to be uncovered, and the verdict counts those significant outcomes."""
    from infalign.report.findings import WITHIN_AA

    aa = Claim("null", "null/report_identity", "A/A", ("bon2", "bon4"), ("identity[replica=1]",), "identity", 0)
    write(tmp_path, "null/report_identity",
          rows("bon2", "identity[replica=1]", "identity", [0.009, -0.002, 0, 0, 0, 0], [True] + [False] * 5)
          + rows("bon4", "identity[replica=1]", "identity", [0.004, 0, 0, 0, 0, 0], [False] * 6))
    bon = Claim("bon", "bon/report_transforms", "exp beats identity", ("bon2", "bon4"), ("expn(t=4)",), "identity", +1)
    write(tmp_path, "bon/report_transforms",
          rows("bon2", "expn(t=4)", "identity", [0.007] * 6, [True] * 6, spread=0.004)  # 0.7 <= 0.9: noise
          + rows("bon4", "expn(t=4)", "identity", [0.03] * 6, [True] * 6))  # 3.0 > 0.4
    hacking = Claim("hacking_control", "hacking_control/report", "robust", ("standard",), ("identity",), "raw", +1,
                    judge="gold")
    write(tmp_path, "hacking_control/report", rows("standard", "identity", "raw", [0.02] * 6, [True] * 6,
                                                    judge="gold", spread=0.01))
    f_aa, f_bon, f_hack = findings(tmp_path, [aa, bon, hacking])
    assert f_aa.verdict.startswith("fails: 1 of 12")  # the control itself is read as before
    assert [c.outcome for c in f_bon.comparisons] == [
        f"{WITHIN_AA} (the A/A control's largest |gain| here: 0.9 points, KL 0.10-0.60, 6 cells)",
        "reproduced (beyond the A/A control's 0.4 points, KL 0.10-0.60, 6 cells)"]
    assert f_bon.verdict == f"reproduced 1, {WITHIN_AA} 1 of 2"
    assert f_hack.comparisons[0].outcome == "reproduced (no A/A control at these settings)"
    assert f_hack.verdict == "reproduced 1 of 1 (1 significant without an A/A yardstick)"
    # without the A/A experiment's report, the bon gains are not judged against anything: said so
    (tmp_path / "null" / "report_identity" / "matched_kl.csv").unlink()
    f_aa, f_bon = findings(tmp_path, [aa, bon])
    assert {c.outcome for c in f_bon.comparisons} == {"reproduced (A/A control 'null' not measured: not run)"}
    assert f_bon.verdict == "reproduced 2 of 2 (2 significant without an A/A yardstick)"
    assert "*within A/A noise* = significant, but no larger" in findings_markdown([f_bon])


def test_a_narrow_claim_reads_its_yardstick_from_at_least_three_cells_per_control_pair(tmp_path, monkeypatch):
    """Findings audit: the baselines' claim on the standard panel spans KL 0.53-0.62, where the null grid (6 KLs
    over 0.06-0.80) has one cell per A/A pair -- by luck a quiet one (0.1 points) while the pair differs by 1.2-1.5
    points a few hundredths of a nat away; the claim's -0.5 points read "reproduced (beyond the A/A control's 0.2
    points)". Each pair now gives at least 3 cells, its nearest outside the range when fewer lie inside, and the
    note counts them: the -0.5 points are within A/A noise."""
    import test_findings as here
    from infalign.report.findings import WITHIN_AA

    aa = Claim("null", "null/report_identity", "A/A", ("standard",), ("identity[replica=1]",), "identity", 0)
    claim = Claim("standard", "standard/report", "baselines trail", ("standard",), ("ipo(N=4)",), "identity", +1)
    monkeypatch.setattr(here, "KLS", (0.06, 0.21, 0.36, 0.50, 0.56, 0.80))
    write(tmp_path, "null/report_identity", rows("standard", "identity[replica=1]", "identity",
                                                 [0.015, -0.012, 0.014, -0.013, 0.001, 0.015], [False] * 6))
    monkeypatch.setattr(here, "KLS", (0.53, 0.548, 0.566, 0.584, 0.602, 0.62))
    write(tmp_path, "standard/report", rows("standard", "ipo(N=4)", "identity", [-0.005] * 6, [True] * 6,
                                            spread=0.002))
    # review: a pair with no cell in the range (another KL regime: here 1-3 nats, |gains| of 8 points) is left
    # out, and no pair is widened past a factor of 2 of the range
    aa_exp = Claim("null", "null/report_expn", "A/A", ("standard",), ("expn(t=8)[replica=1]",), "expn(t=8)", 0)
    monkeypatch.setattr(here, "KLS", (1.0, 1.4, 1.8, 2.2, 2.6, 3.0))
    write(tmp_path, "null/report_expn", rows("standard", "expn(t=8)[replica=1]", "expn(t=8)", [0.08] * 6,
                                             [False] * 6))
    _, _, f = findings(tmp_path, [aa, aa_exp, claim])
    assert f.comparisons[0].outcome == (f"{WITHIN_AA} (the A/A control's largest |gain| here: 1.4 points, KL "
                                        "0.53-0.62, 3 cells; widened to KL 0.36-0.62: fewer than 3 cells per A/A "
                                        "pair inside)")


def test_the_yardstick_is_taken_over_the_claims_kl_range_and_names_a_missing_one(tmp_path):
    """The hacking A/A control's raw pair spans KL 0.1-25 (raw's runaway), its |gains| there several
    points, while the hacking finding reads KLs up to ~4.4 (a reviewer's find): the yardstick is the
    control's largest |gain| at KLs inside the comparison's own range; a control with one seed, or
    without a KL in that range, gives no yardstick, and says so; differing seed counts are named."""
    from infalign.report.findings import WITHIN_AA

    aa = Claim("null_hacking", "null_hacking/report_raw", "A/A", ("standard",), ("raw[replica=1]",), "raw", 0,
               judge="gold")
    hack = Claim("hacking", "hacking/report", "robust", ("standard",), ("identity",), "raw", +1, judge="gold")
    control = rows("standard", "raw[replica=1]", "raw", [0.002, 0.004, 0.003, 0.05, 0.04, 0.03], [False] * 6,
                   judge="gold")
    for r, kl in zip(control[::-1], (0.1, 1.0, 2.0, 10.0, 18.0, 25.0)):
        r["kl"] = kl
    write(tmp_path, "null_hacking/report_raw", control)
    claim_rows = rows("standard", "identity", "raw", [0.013] * 6, [True] * 6, judge="gold", spread=0.004)
    write(tmp_path, "hacking/report", claim_rows)  # KLs 0.1-0.6: the control's cells at 0.1 only
    _, f = findings(tmp_path, [aa, hack])
    # (one control cell in 0.1-0.6: widened to its nearest within a factor of 2, KL 1 -- not to 2, 3x the top)
    assert f.comparisons[0].outcome == ("reproduced (beyond the A/A control's 0.4 points, KL 0.10-0.60, 2 cells; "
                                        "widened to KL 0.10-1.00: fewer than 3 cells per A/A pair inside; a pair "
                                        "with fewer than 3 within a factor of 2 of the range)")
    for r, kl in zip(claim_rows[::-1], (0.5, 1.0, 1.5, 2.0, 3.0, 4.4)):
        r["kl"] = kl
    write(tmp_path, "hacking/report", claim_rows)  # 1.3 > 0.4 (KL 1, 2), not against the 5.0 at KL 10
    _, f = findings(tmp_path, [aa, hack])
    assert f.comparisons[0].outcome == ("reproduced (beyond the A/A control's 0.4 points, KL 0.50-4.40, 2 cells; "
                                        "a pair with fewer than 3 within a factor of 2 of the range)")
    for r, kl in zip(claim_rows[::-1], (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)):
        r["kl"] = kl
    write(tmp_path, "hacking/report", claim_rows)
    _, f = findings(tmp_path, [aa, hack])
    assert f.comparisons[0].outcome == "reproduced (A/A control 'null_hacking' has no common KL in 0.30-0.80)"
    for r, kl in zip(claim_rows[::-1], (1.0, 2.0, 4.0, 6.0, 8.0, 10.0)):
        r["kl"] = kl  # the control's cells at 1, 2 and 10: 5.0 points, larger than the gain
    write(tmp_path, "hacking/report", claim_rows)
    _, f = findings(tmp_path, [aa, hack])
    assert f.comparisons[0].outcome == (f"{WITHIN_AA} (the A/A control's largest |gain| here: 5.0 points, "
                                        "KL 1.00-10.00, 3 cells)")
    write(tmp_path, "null_hacking/report_raw", [r | {"n_seeds": 2, "n_seeds_baseline": 2} for r in control])
    _, f = findings(tmp_path, [aa, hack])
    assert f.comparisons[0].outcome.endswith("KL 1.00-10.00, 3 cells; the control has 2 seeds, this comparison 3)")
    write(tmp_path, "null_hacking/report_raw", [r | {"n_seeds": 1, "n_seeds_baseline": 1, "seed_test": "none"}
                                                 for r in control])
    f_aa, f = findings(tmp_path, [aa, hack])
    assert f.comparisons[0].outcome == "reproduced (A/A control 'null_hacking' has 1 seed: no yardstick)"
    # one seed against several: no verdict in the control either, so no yardstick (its pooled interval assumes
    # equal training noise)
    write(tmp_path, "null_hacking/report_raw", [r | {"n_seeds": 1, "n_seeds_baseline": 3, "seed_test": "pooled"}
                                                 for r in control])
    _, f = findings(tmp_path, [aa, hack])
    assert f.comparisons[0].outcome == "reproduced (A/A control 'null_hacking' has 1 seed on one side: no yardstick)"
    write(tmp_path, "null_hacking/report_raw", [r | {"n_seeds": 1, "n_seeds_baseline": 1, "seed_test": "none"}
                                                 for r in control])
    f_aa, f = findings(tmp_path, [aa, hack])
    assert f_aa.verdict == "no verdict (1 seed: training noise not assessed)"  # (was: "1 seed; 1 with 1 seed of 1
    # comparisons"), and its significant-KLs cell says none were tested, not "+0 −0 of 6" (walkthrough)
    from infalign.report.findings import significant_text

    assert [significant_text(c) for c in f_aa.comparisons if c.gain is not None] == ["not assessed (1 seed)"]


def test_every_mapped_claim_has_a_control_comparison_on_its_panel_and_judge(tmp_path):
    """AA_CONTROLS wires each claim's experiment to the A/A controls trained at its settings (bon and
    standard to null, won to null_won, hacking to null_hacking): every panel and judge of a mapped
    claim is one its control measures, and every mapped control is an A/A claim -- so renaming either
    side, or dropping a panel, fails here rather than reading "no A/A control" in a real run."""
    from infalign.report.findings import AA_CONTROLS

    controls = {c.experiment for c in CLAIMS if c.expect == 0}
    assert set(AA_CONTROLS.values()) <= controls
    assert set(AA_CONTROLS) == {c.experiment for c in CLAIMS if c.expect != 0} - {"control", "hacking_control"}
    covered = {(c.experiment, c.judge, p) for c in CLAIMS if c.expect == 0 for p in c.panels}
    for claim in CLAIMS:
        if claim.experiment in AA_CONTROLS and claim.expect != 0:
            for panel in claim.panels:
                assert (AA_CONTROLS[claim.experiment], claim.judge, panel) in covered, (claim.paper, panel)
    # and the real reports are read that way: a won claim against null_won's reports
    write(tmp_path, "null_won/report_expn", rows("won4", "expn(t=-4)[replica=1]", "expn(t=-4)", [0.01] * 6,
                                                  [False] * 6))
    write(tmp_path, "won/report", rows("won4", "expn(t=-4)", "identity", [0.017] * 6, [True] * 6, spread=0.004))
    found = findings(tmp_path)
    won = next(f for f in found if f.claim.experiment == "won" and f.claim.baseline == "identity")
    assert won.comparisons[0].outcome == "reproduced (beyond the A/A control's 1.0 points, KL 0.10-0.60, 6 cells)"


def test_a_comparison_significant_only_away_from_the_middle_kl_is_not_established(tmp_path):
    """The verdict is read at the middle common KL (KLS[3] = 0.4), as the report's sentences are: +3
    points significant at KL 0.1 only is *not established*, not "reproduced" -- a comparison significant
    at any one of its KLs would be called reproduced by the one KL of six that chance clears."""
    write(tmp_path, "b", rows("bon4", "m", "identity", [0.03] * 6, [True] + [False] * 5))
    (c,) = read_claim(Claim("bon", "b", "x", ("bon4",), ("m",), "identity", +1), tmp_path).comparisons
    assert c.outcome == "not established"
    assert (c.kl, c.significant, c.significant_kls, c.num_kls) == (0.4, False, 1, 6)  # counted, not the verdict


AA = Claim("null", "null/report_identity", "A/A", ("bon4",), ("identity[replica=1]",), "identity", 0)


def test_the_aa_yardstick_is_the_control_under_the_claims_own_judge(tmp_path):
    """The A/A control re-trains under both judges; a gold claim is read against the gold control only.
    Here the reward-model control moves by 5.0 points, the gold one by 0.1: a gold gain of +2.0 points
    (interval [+1.6, +2.4], clear of 0 and of the chords' 0) is significant beyond the gold control's
    0.1 -- against the reward model's 5.0 it would wrongly read as within A/A noise."""
    aa_gold = Claim("null", "null/report_identity", "A/A gold", ("bon4",), ("identity[replica=1]",), "identity", 0,
                    judge="gold")
    write(tmp_path, "null/report_identity",
          rows("bon4", "identity[replica=1]", "identity", [0.05] * 6, [False] * 6)
          + rows("bon4", "identity[replica=1]", "identity", [0.001] * 6, [False] * 6, judge="gold"))
    gold = Claim("bon", "bon/report_transforms", "gold", ("bon4",), ("expn(t=4)",), "identity", None, judge="gold")
    write(tmp_path, "bon/report_transforms", rows("bon4", "expn(t=4)", "identity", [0.02] * 6, [True] * 6,
                                                  judge="gold", spread=0.004))
    _, _, f = findings(tmp_path, [AA, aa_gold, gold])
    assert f.comparisons[0].outcome == "significant (beyond the A/A control's 0.1 points, KL 0.10-0.60, 6 cells)"
    assert f.comparisons[0].aa == "beyond"


def test_a_contradiction_no_larger_than_the_aa_noise_is_within_it(tmp_path):
    """A significant gain with the sign against the paper's is read against the A/A yardstick too: -0.7
    points (interval [-0.9, -0.5]) where the control moves by 0.9 is within A/A noise, not a
    "contradicted" finding -- two trainings of one method differ by as much there."""
    from infalign.report.findings import WITHIN_AA

    write(tmp_path, "null/report_identity", rows("bon4", "identity[replica=1]", "identity", [0.009] * 6, [False] * 6))
    claim = Claim("bon", "bon/report_transforms", "x", ("bon4",), ("expn(t=4)",), "identity", +1)
    write(tmp_path, "bon/report_transforms",
          rows("bon4", "expn(t=4)", "identity", [-0.007] * 6, [True] * 6, spread=0.004))
    _, f = findings(tmp_path, [AA, claim])
    assert f.comparisons[0].outcome == (f"{WITHIN_AA} (the A/A control's largest |gain| here: 0.9 points, "
                                        "KL 0.10-0.60, 6 cells)")
    assert f.verdict == f"{WITHIN_AA} 1 of 1"


def test_a_gain_equal_to_the_aa_yardstick_is_within_it(tmp_path):
    """"Within A/A noise" is *no larger than* the control's largest |gain|: +0.9 points (interval
    [+0.7, +1.1]) against a control that moves by exactly 0.9 (the same CSV text, the same float) is
    within it -- a tie is not evidence of an effect beyond what a re-training makes."""
    from infalign.report.findings import WITHIN_AA

    write(tmp_path, "null/report_identity", rows("bon4", "identity[replica=1]", "identity", [0.009] * 6, [False] * 6))
    claim = Claim("bon", "bon/report_transforms", "x", ("bon4",), ("expn(t=4)",), "identity", +1)
    write(tmp_path, "bon/report_transforms",
          rows("bon4", "expn(t=4)", "identity", [0.009] * 6, [True] * 6, spread=0.004))
    _, f = findings(tmp_path, [AA, claim])
    assert f.comparisons[0].outcome.startswith(f"{WITHIN_AA} (the A/A control's largest |gain| here: 0.9 points")
    assert f.comparisons[0].aa == "within"


def test_a_comparison_with_a_method_whose_kl_is_not_monotone_in_its_knob_says_so(tmp_path):
    """Walkthrough finding: BoN-SFT's KL went 0.53 / 1.15 / 0.98 / 0.53 / 0.58 over its SFT steps, and its
    matched-KL curve joined steps 4 and 32 (0.007 nats apart, 10 points of win rate apart). The report's note
    (``report/matched.knob_order_notes``) reaches the finding's outcome for that method only."""
    import json

    from infalign.report.findings import read_claim

    write(tmp_path, "standard/report", rows("standard", "bon_sft(N=4)", "identity", [-0.05] * 6, [True] * 6)
          + rows("standard", "expn(t=4)", "identity", [-0.05] * 6, [True] * 6))
    (tmp_path / "standard/report" / "summary.json").write_text(json.dumps({"matched_kl": {"notes": [
        "bon_sft(N=4), seed 0: its KL is not monotone in algo.steps (4, 8, 16 -> KL 0.53, 1.15, 0.98): ..."]}}))
    claim = Claim("standard", "standard/report", "identity is a strong baseline", ("standard",),
                  ("bon_sft(N=4)", "expn(t=4)"), "identity", -1)
    bon_sft, expn = read_claim(claim, tmp_path).comparisons
    assert bon_sft.outcome == expn.outcome == "reproduced"  # beside the outcome, not in it (below)
    assert bon_sft.caveat.startswith("bon_sft(N=4): KL not monotone in its knob") and expn.caveat == ""
    # ... so the A/A yardstick still reads it (review finding: appended to the outcome, it switched the A/A
    # reading off and a gain within A/A noise stayed "reproduced"); findings.md shows both
    from infalign.report.findings import WITHIN_AA, findings_markdown

    write(tmp_path, "null/report_identity", rows("standard", "identity[replica=1]", "identity", [0.08] * 6,
                                                 [False] * 6))
    aa = Claim("null", "null/report_identity", "A/A", ("standard",), ("identity[replica=1]",), "identity", 0)
    _, f = findings(tmp_path, [aa, claim])
    assert [c.outcome.split(" (")[0] for c in f.comparisons] == [WITHIN_AA, WITHIN_AA]
    assert f.verdict == f"{WITHIN_AA} 2 of 2"
    assert "KL not monotone in its knob" in findings_markdown([f])
