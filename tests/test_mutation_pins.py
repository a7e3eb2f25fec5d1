"""Pins from a mutation-testing round (117 mutants of math/calibration, math/rl_objectives, math/matched_kl,
training/ctrl and pipeline/evaluate with its helpers): each test here kills a mutant that every other test let
live -- named in its docstring -- and states its expected value and how it was computed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import tiny_policy as tp
from infalign.errors import ConfigError
from infalign.math.matched_kl import Run, _end_slopes, chord_bias, matched_kl


def test_record_intervals_are_95_percent_by_default():
    """evaluate_policy relies on summarize_columns' default level: 0.9 there made every record's "95 %" interval a
    90 % one (test_pools compares with the same default, so it moved along). The default is bootstrap_ci's 0.95:
    on 0, 0.1, ..., 0.9 with 1000 resamples (seed 0) the interval is [0.27, 0.64] ([0.30, 0.60] at 90 %)."""
    from infalign.math.estimators import bootstrap_ci
    from infalign.math.pool_stats import summarize_columns

    values = torch.arange(10, dtype=torch.float64) / 10
    got = summarize_columns({"x": values}, 1000, seed=0)["x"]
    low, high = bootstrap_ci(values.numpy(), 1000, level=0.95, seed=0)[1:]
    assert (got["low"], got["high"]) == pytest.approx((low, high), abs=1e-12)
    assert (got["low"], got["high"]) == pytest.approx((0.27, 0.64), abs=1e-9)


def _line_runs(methods, kls, ids=None, p=3):
    """Runs whose per-prompt KL is the KL and win rate 0.5 + 0.1 KL + offset (no noise)."""
    return [Run(m, 0, np.full(p, kl), np.full(p, 0.5 + 0.1 * kl + off), ids, label=f"{m}{kl}")
            for m, off in methods for kl in kls]


def test_a_run_with_a_non_finite_per_prompt_kl_is_excluded_not_the_panel():
    """_check_prompts excludes a run with a NaN among its per-prompt KLs (not only its metric): kept, the run
    made the panel read "no common KL" (its seeds' KL ranges do not overlap). Exp is identity + 0.05 on a line."""
    runs = _line_runs((("identity", 0.0), ("exp", 0.05)), (0.5, 1.0, 2.0))
    bad = runs[1].kl.copy()
    bad[1] = np.nan
    runs.append(Run("identity", 0, bad, runs[1].metric, label="badkl"))
    r = matched_kl(runs, baselines=["identity"], num_kl=3, num_resamples=50)
    assert r.excluded == [("badkl", "identity: non-finite per-prompt values")]
    assert r.common and r.gains[0].gain == pytest.approx([0.05] * 3, abs=1e-12)


def test_the_panels_prompts_are_the_most_common_not_the_first_runs():
    """_check_prompts keeps the runs on the most common prompt_ids: the first run's ids instead (one odd run on
    other prompts listed first) excluded all four runs on the panel's prompts ("no method has a curve")."""
    odd = Run("identity", 0, [1.0, 1.0, 1.0], [0.6, 0.6, 0.6], ("a", "b", "c"), label="odd")
    runs = [odd, *_line_runs((("identity", 0.0), ("exp", 0.05)), (0.5, 1.0), ids=("x", "y", "z"))]
    r = matched_kl(runs, baselines=["identity"], num_kl=2, num_resamples=50)
    assert r.excluded == [("odd", "identity: prompt_ids differ from the panel's 3 prompts")]
    assert r.common and r.gains[0].gain == pytest.approx([0.05, 0.05], abs=1e-12)


def test_a_methods_win_rate_is_the_mean_over_its_seeds_as_its_gain_is():
    """The win-rate column averages the seeds' curves, as the gain does: identity seeds shifted 0, 0, +0.3 on
    0.5 + 0.1 KL give 0.6 + 0.1 KL (0.65 / 0.70 at KL 0.5 / 1); a median (0.55 / 0.60) sat beside a gain of
    -0.1 from the mean."""
    runs = [Run("identity", s, np.full(10, kl), np.full(10, 0.5 + 0.1 * kl + shift))
            for s, shift in enumerate((0.0, 0.0, 0.3)) for kl in (0.5, 1.0)]
    runs += [Run("exp", s, np.full(10, kl), np.full(10, 0.5 + 0.1 * kl)) for s in range(3) for kl in (0.5, 1.0)]
    r = matched_kl(runs, baselines=["identity"], num_kl=2, num_resamples=50)
    assert r.win_rate["identity"][0] == pytest.approx([0.65, 0.70], abs=1e-12)
    assert r.gains[0].gain == pytest.approx([-0.1, -0.1], abs=1e-12)


def test_the_chord_check_pairs_seeds_when_both_sides_have_the_same_seeds():
    """chord_bias with seeds 0 and 1 on both sides pairs seed with seed: each pair has one estimate that sees the
    bend at KL 1 (a vertex at (1, 1) on a chord from (0, 0) to (2, 1): 1 - 0.5), so the range is (-0.5, +0.5).
    All four (method, baseline) pairs instead averaged in two zeros per side: +-0.167."""
    a = lambda *v: np.array(v, float)  # noqa: E731
    method = {0: (a(0, 1, 2), a(0, 1, 1)), 1: (a(0, 2), a(0, 1))}
    baseline = {0: (a(0, 2), a(0, 1)), 1: (a(0, 1, 2), a(0, 1, 1))}
    low, high = chord_bias(method, baseline, a(1.0))
    assert (float(low[0]), float(high[0])) == pytest.approx((-0.5, 0.5), abs=1e-12)


def test_a_bootstrap_curve_is_continued_with_its_end_segment_when_it_is_long_enough():
    """_end_slopes: the end segment from KL 0 to 0.07 is 7 % of the span (>= MIN_SLOPE_RUN = 5 %): its slope
    (0.57 - 0.5) / 0.07 = 1 continues the left end; a 10 % threshold took the chord to KL 1 instead (0.1)."""
    left, _ = _end_slopes(np.array([0.0, 0.07, 1.0]), np.array([0.5, 0.57, 0.6]))
    assert left == pytest.approx(1.0, rel=1e-12)


def test_the_theory_standard_win_rate_at_beta_is_the_tilted_policys():
    """theory_prediction's standard win rate at the training beta, by hand: identity's tilt pi(u) ~ e^(u/b)
    beats a reference sample with probability E_pi[u] = 1 - b + 1/expm1(1/b) = 0.656518 at b = 0.5 (the
    best-of-4 win rate, 0.687, was recorded there instead). A measured KL of exactly 0 (a policy equal to the
    reference) has no point at the measured KL -- it crashed in theory.frontier([0.0])."""
    from infalign.math.procedures import BestOfN
    from infalign.math.transforms import Identity
    from infalign.pipeline.evaluate import theory_prediction

    b = 0.5
    pred = theory_prediction(Identity(), BestOfN(4), b, 0.0)
    assert pred["standard_win_rate"] == pytest.approx(1 - b + 1 / math.expm1(1 / b), abs=1e-6)
    assert pred["bon4_win_rate"] > pred["standard_win_rate"] + 0.02
    assert "at_measured_kl" not in pred


def test_a_pooled_table_has_the_prompts_of_its_rows_not_its_samples():
    """CalibrationTable.from_rewards(scope="pooled") on P = 3 prompts x K = 2 samples has 3 prompts (K made every
    run with P != K refused: "calibration table has 2 prompts, training set has 3") and calibrates prompt 2."""
    from infalign.math.calibration import CalibrationTable

    table = CalibrationTable.from_rewards(torch.rand(3, 2, generator=torch.Generator().manual_seed(0)), scope="pooled")
    assert table.num_prompts == 3
    assert table.calibrate(torch.tensor([2]), torch.tensor([0.5])).shape == (1,)


def test_the_training_module_refuses_a_table_that_does_not_fit_its_prompts():
    """CTRLModule: a calibrated transform without a table is a ConfigError (else an AttributeError at the first
    rollout); a table of 3 prompts for a training set of 2 a ValueError (else the wrong rows, or an IndexError
    mid-run)."""
    from infalign.math.calibration import CalibrationTable
    from infalign.math.transforms import Identity

    with pytest.raises(ConfigError, match="calibration table for a calibrated transform"):
        tp.ctrl_module(transform=Identity(), table=None)
    with pytest.raises(ValueError, match="calibration table has 3 prompts, training set has 2"):
        tp.ctrl_module(prompts=tp.PROMPTS[:2], transform=Identity(), table=CalibrationTable.from_rewards(
            torch.rand(3, 4, generator=torch.Generator().manual_seed(0))))


def test_ppo_treats_its_advantages_as_constants():
    """ppo_loss detaches the advantages (as rloo_loss does): no gradient reaches them."""
    from infalign.math.rl_objectives import ppo_loss

    logprobs = torch.tensor([[-1.0, -2.0], [-0.5, -1.5]], requires_grad=True)
    adv = torch.tensor([1.0, -1.0], requires_grad=True)
    loss, _ = ppo_loss(logprobs, logprobs.detach() + 0.1, adv, torch.ones(2, 2), 0.2)
    loss.backward()
    assert adv.grad is None and logprobs.grad is not None
