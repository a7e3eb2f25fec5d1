"""What limits a method's distance from theory (report/theory_gap.py: diagnose, docs/method.md §10.1),
on hand-built medians and rows whose diagnosis is known."""

import pytest

from infalign.report.theory_gap import THEORY_TARGET, diagnose, median_theory_gap, theory_gap_markdown

S, B4, B32 = "standard_win_rate", "bon4_win_rate", "bon32_win_rate"


def entry(gaps: dict, half: dict | None = None, ratio: float | None = 1.0, runs: int = 9, seeds: int = 9) -> dict:
    return {"median_abs_gap": {k: abs(v) for k, v in gaps.items()}, "median_gap": dict(gaps),
            "median_ci_half_width": half or {k: 0.01 for k in gaps}, "median_kl_ratio": ratio, "runs": runs,
            "seeds": seeds}


def test_on_target_at_and_below_the_target():
    assert diagnose(entry({S: 0.005, B4: -THEORY_TARGET}))["limits"] == ["on_target"]
    assert diagnose(entry({S: 0.005, B4: -(THEORY_TARGET + 1e-6)}))["limits"] != ["on_target"]


def test_thin_tail_needs_the_standard_win_rate_on_target():
    d = diagnose(entry({S: -0.008, B4: -0.026, B32: -0.032}))
    assert d["limits"] == ["thin_tail"] and "bon4, bon32 below theory" in d["reading"]
    assert "worst: bon32 0.032" in d["reading"]
    # the standard win rate off too: the same N > 1 gaps are plain "below"
    assert diagnose(entry({S: -0.03, B4: -0.026}))["limits"] == ["below"]


def test_under_tilted_from_the_kl_ratio_and_only_below_point_nine():
    assert diagnose(entry({S: -0.03}, ratio=0.7))["limits"] == ["under_tilted", "below"]
    assert "0.70 of the KL" in diagnose(entry({S: -0.03}, ratio=0.7))["reading"]
    assert diagnose(entry({S: -0.03}, ratio=0.9))["limits"] == ["below"]
    assert diagnose(entry({S: -0.03}, ratio=None))["limits"] == ["below"]


def test_on_target_but_far_short_of_the_kl_is_said_to_be_under_tilted():
    """A run that barely trained (KL ratio 0.05) sits on the theory curve near KL 0, where every win rate
    is about the reference's: "on target" alone read as success."""
    d = diagnose(entry({S: 0.004, B4: -0.01}, ratio=0.05))
    assert d["limits"] == ["on_target", "under_tilted"] and "0.05 of the KL" in d["reading"]
    assert diagnose(entry({S: 0.004, B4: -0.01}, ratio=0.9))["limits"] == ["on_target"]


def test_noise_band_shrinks_with_the_number_of_runs():
    # half-width 0.08: 1.25 * 0.08 / sqrt(4) = 0.05 covers a 0.04 gap; / sqrt(25) = 0.02 does not
    assert diagnose(entry({B32: 0.04}, half={B32: 0.08}, runs=4, seeds=4))["limits"] == ["noise"]
    assert diagnose(entry({B32: 0.04}, half={B32: 0.08}, runs=25, seeds=25))["limits"] == ["above"]
    # 25 runs of 4 seeds: the runs of a seed share one reference pool, 4 independent evaluations
    assert diagnose(entry({B32: 0.04}, half={B32: 0.08}, runs=25, seeds=4))["limits"] == ["noise"]
    assert "noise of 4 independent reference pools" in diagnose(entry({B32: 0.04}, half={B32: 0.08}, runs=4,
                                                                        seeds=4))["reading"]
    # one run: one pool (the walkthrough read "of 1 independent reference pools"); 1.25 * 0.08 covers 0.04
    assert diagnose(entry({B32: 0.04}, half={B32: 0.08}, runs=1, seeds=1))["reading"].endswith(
        "noise of 1 independent reference pool")


def row(job, method, metric, gap, half=0.01, ratio=1.0, seed=0):
    return {"job": job, "method": method, "metric": metric, "gap": gap, "ci_half_width": half, "kl_ratio": ratio,
            "seed": seed}


def test_medians_per_method_feed_the_diagnosis_and_the_markdown():
    rows = [row("1", "expn(t=4)", S, -0.01, ratio=0.8), row("1", "expn(t=4)", B4, -0.05, ratio=0.8),
            row("2", "expn(t=4)", S, 0.00, ratio=0.8), row("2", "expn(t=4)", B4, -0.03, ratio=0.8),
            row("3", "expn(t=4)", S, 0.004, ratio=1.0), row("3", "expn(t=4)", B4, -0.04, ratio=1.0),
            row("4", "identity", S, 0.001, half=None), row("4", "identity", B4, -0.002, half=None)]
    out = median_theory_gap(rows)
    e = out["expn(t=4)"]
    assert e["median_abs_gap"] == {S: pytest.approx(0.004), B4: pytest.approx(0.04)}
    assert e["median_gap"][B4] == pytest.approx(-0.04) and e["median_kl_ratio"] == pytest.approx(0.8)
    assert e["runs"] == 3 and e["seeds"] == 1 and e["limits"] == ["under_tilted", "thin_tail"]
    assert out["identity"]["median_ci_half_width"] == {} and out["identity"]["limits"] == ["on_target"]
    md = theory_gap_markdown(out)
    assert md.splitlines()[4].startswith("| method | runs | standard | bon4 | KL ratio | reading |")
    assert "| expn(t=4) | 3 | 0.004 | 0.040 | 0.80 |" in md
    assert "No calibrated run" in theory_gap_markdown({})
    # a --method report: every method stays, and those its comparison leaves out are named (walkthrough finding)
    assert "--method" not in md and "--method" not in theory_gap_markdown(out, compared=["expn(t=4)", "identity"])
    narrowed = theory_gap_markdown(out, compared=["expn(t=4)"])
    assert "matched-KL comparison leaves out (--method): identity." in narrowed and "| identity |" in narrowed
    # entries of another world ("method [world]") are their method's (review finding: all were named)
    worlds = {"identity [A]": out["identity"], "identity [B]": out["identity"], "expn(t=4) [A]": e}
    assert "--method" not in theory_gap_markdown(worlds, compared=["identity", "expn(t=4)"])
    assert "leaves out (--method): identity [A], identity [B]." in theory_gap_markdown(worlds, compared=["expn(t=4)"])


def test_runs_of_other_worlds_get_their_own_medians():
    """Identity in two worlds (e.g. the default and the control toy world linked into one report):
    one median over both would mix two theories' distances; each world gets its own entry."""
    rows = [row("1", "identity", S, 0.05) | {"world_id": "A"}, row("2", "identity", S, 0.07) | {"world_id": "A"},
            row("3", "identity", S, -0.01) | {"world_id": "B"}]
    out = median_theory_gap(rows)
    assert set(out) == {"identity [A]", "identity [B]"}
    assert out["identity [A]"]["median_gap"][S] == pytest.approx(0.06) and out["identity [A]"]["runs"] == 2
    assert out["identity [B]"]["median_gap"][S] == pytest.approx(-0.01)
    # one world: the method's name alone, as before
    assert set(median_theory_gap([r for r in rows if r["world_id"] == "A"])) == {"identity"}


def test_the_kl_ratio_median_counts_only_runs_with_a_theory_point():
    from infalign.report.theory_gap import median_theory_gap

    def row(job, gap, ratio):
        return {"job": job, "method": "identity", "metric": S, "gap": gap, "ci_half_width": 0.01, "kl_ratio": ratio,
                "seed": int(job)}

    e = median_theory_gap([row("1", 0.01, 1.0), row("2", None, 0.2), row("3", None, 0.3)])["identity"]
    assert e["median_kl_ratio"] == pytest.approx(1.0) and e["limits"] == ["on_target"]
    assert (e["runs"], e["runs_without_theory"]) == (1, 2)


def test_thin_tail_only_below_theory_and_only_with_a_standard_column():
    from infalign.report.theory_gap import diagnose

    def entry(gaps):
        return {"median_abs_gap": {k: abs(v) for k, v in gaps.items()}, "median_gap": dict(gaps),
                "median_ci_half_width": {k: 0.01 for k in gaps}, "median_kl_ratio": 1.0, "runs": 9, "seeds": 9}

    assert diagnose(entry({S: 0.005, B4: 0.05}))["limits"] == ["above"]
    assert diagnose(entry({B4: -0.05}))["limits"] == ["below"]
