"""Percentile-bootstrap confidence intervals over prompts."""

import numpy as np
import pytest
import torch

from infalign.math.estimators import bootstrap_ci


def test_bootstrap_scalar_contains_estimate_and_is_reproducible():
    x = np.random.default_rng(1).normal(size=50)
    est, low, high = bootstrap_ci(x)
    assert isinstance(est, float) and low < est < high
    assert est == pytest.approx(x.mean())
    assert bootstrap_ci(x, seed=0) == (est, low, high)
    assert bootstrap_ci(torch.tensor(x)) == pytest.approx((est, low, high))


def test_bootstrap_coverage_is_nominal():
    # 200 repeated experiments, P = 60 prompts from N(0.3, 1): the 95% interval should cover
    # the true mean in ~95% of them (binomial sd ~1.5%; percentile bootstrap runs slightly low).
    rng = np.random.default_rng(123)
    hits = 0
    for rep in range(200):
        _, low, high = bootstrap_ci(rng.normal(0.3, 1.0, size=60), num_resamples=1000, seed=rep)
        hits += low <= 0.3 <= high
    assert 0.90 <= hits / 200 <= 0.99


def test_bootstrap_width_shrinks_like_one_over_sqrt_p():
    rng = np.random.default_rng(0)
    widths = {}
    for num in (100, 1600):
        intervals = [bootstrap_ci(rng.normal(size=num), seed=s) for s in range(20)]
        widths[num] = np.mean([high - low for _, low, high in intervals])
    assert widths[100] / widths[1600] == pytest.approx(4.0, rel=0.15)  # sqrt(1600/100)
    assert widths[100] == pytest.approx(2 * 1.96 / 10, rel=0.15)


def test_bootstrap_multi_column_matches_per_column():
    rng = np.random.default_rng(2)
    cols = rng.uniform(size=(40, 3, 2))  # e.g. win rates for several N and two procedures
    est, low, high = bootstrap_ci(cols, num_resamples=500, seed=7)
    assert est.shape == low.shape == high.shape == (3, 2)
    # Same seed -> same resampled prompts for every column, so each column equals its own run.
    for i in range(3):
        for j in range(2):
            e, lo, hi = bootstrap_ci(cols[:, i, j], num_resamples=500, seed=7)
            assert (est[i, j], low[i, j], high[i, j]) == pytest.approx((e, lo, hi))
    assert np.all(low <= est) and np.all(est <= high)


def test_bootstrap_other_statistic():
    x = np.random.default_rng(3).exponential(size=201)
    est, low, high = bootstrap_ci(x, stat=np.median)
    assert est == pytest.approx(np.median(x)) and low < est < high


@pytest.mark.parametrize("kwargs", [{"level": 1.0}, {"level": 0.0}, {"num_resamples": 0}])
def test_bootstrap_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        bootstrap_ci(np.ones(3), **kwargs)


def test_bootstrap_rejects_empty():
    with pytest.raises(ValueError):
        bootstrap_ci(np.ones(0))


def test_one_prompt_has_no_interval():
    """Review finding: P = 1 gave the zero-width "95 %" interval [v, v], read downstream as certainty
    (matched KL called such a gain significant on these prompts). Its bounds are NaN; data.eval_prompts
    must be >= 2 (tests/test_cli.py)."""
    est, low, high = bootstrap_ci(np.array([0.7]))
    assert est == 0.7 and np.isnan(low) and np.isnan(high)
    est, low, high = bootstrap_ci(np.array([[0.7, 0.2]]))
    np.testing.assert_array_equal(est, [0.7, 0.2])
    assert np.all(np.isnan(low)) and np.all(np.isnan(high))


# ---------------------------------------------------------------- guards found by mutation testing


def test_bootstrap_of_a_constant_is_that_constant():
    """The resampled mean divides by P: a constant's CI is the constant itself."""
    est, low, high = bootstrap_ci(np.full(5, 2.0), num_resamples=200)
    assert (est, low, high) == (2.0, 2.0, 2.0)


def test_bootstrap_resamples_every_prompt_including_the_last():
    """P = 2, values [0, 1]: a resample holds only the last prompt with probability 1/4, so of 1000
    resamples far more than 2.5 % do and the 97.5 % quantile is exactly 1 (deterministic at seed 0)."""
    _, low, high = bootstrap_ci(np.array([0.0, 1.0]), num_resamples=1000, seed=0)
    assert low == 0.0 and high == 1.0


def test_bootstrap_generic_stat_path_equals_the_mean_fast_path():
    """A stat passed as a function takes the generic path (stat over each resample's rows): for the
    mean it must give the fast path's numbers (same resamples, same seed)."""
    x = np.random.default_rng(4).normal(size=(201, 2))
    fast = bootstrap_ci(x, num_resamples=500, seed=3)
    generic = bootstrap_ci(x, num_resamples=500, seed=3, stat=lambda v, axis: np.mean(v, axis=axis))
    for a, b in zip(fast, generic):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_bootstrap_interval_is_the_linearly_interpolated_percentile():
    """The interval is np.quantile's default (linear) interpolation of the resampled means: with B = 200
    resamples the 2.5 % quantile sits at sorted position 0.025 * 199 = 4.975, i.e. s[4] + 0.975 (s[5] -
    s[4]), and the 97.5 % one at 194.025, s[194] + 0.025 (s[195] - s[194]) -- not s[4] / s[194] (a
    'lower' rule). The resampling is rebuilt by hand (one [B, P] index draw from default_rng(seed)).
    Same float64 data on both sides; only summation order differs: 1e-12."""
    v = np.random.default_rng(1).normal(size=10)
    est, low, high = bootstrap_ci(v, 200, seed=0)
    index = np.random.default_rng(0).integers(0, 10, size=(200, 10))
    s = np.sort(v[index].mean(1))
    assert est == pytest.approx(v.mean(), abs=1e-12)
    assert low == pytest.approx(s[4] + 0.975 * (s[5] - s[4]), abs=1e-12)
    assert high == pytest.approx(s[194] + 0.025 * (s[195] - s[194]), abs=1e-12)
    np.testing.assert_allclose([low, high], np.quantile(v[index].mean(1), [0.025, 0.975]), atol=1e-12, rtol=0)
    assert s[5] - s[4] > 1e-6 and s[195] - s[194] > 1e-6  # the interpolation is visible in this draw
