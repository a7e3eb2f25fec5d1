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
