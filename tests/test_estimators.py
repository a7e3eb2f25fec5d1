"""Per-prompt KL and bootstrap confidence intervals."""

import numpy as np
import pytest
import torch

from infalign.math.estimators import MeanCI, bootstrap_ci, kl_per_prompt, mean_and_ci


def test_kl_per_prompt_hand_computation():
    # 2 prompts x 2 samples, prompt-major; the masked entries must be ignored.
    policy = torch.tensor(
        [[-1.0, -2.0, -9.0], [-0.5, -0.5, -0.5], [-1.0, -1.0, -1.0], [-3.0, -9.0, -9.0]]
    )
    ref = torch.tensor(
        [[-1.5, -1.0, 0.0], [-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0], [-1.0, 0.0, 0.0]]
    )
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 0, 0]])
    # per sequence: (0.5 - 1.0) = -0.5; 3 * 0.5 = 1.5; 3 * 1.0 = 3.0; -2.0
    expected = torch.tensor([(-0.5 + 1.5) / 2, (3.0 - 2.0) / 2])
    got = kl_per_prompt(policy, ref, mask, torch.tensor([0, 0, 1, 1]), num_prompts=2)
    torch.testing.assert_close(got, expected)


def test_kl_per_prompt_any_row_order_and_missing_prompt():
    policy, ref = torch.tensor([[1.0], [2.0], [4.0]]), torch.zeros(3, 1)
    got = kl_per_prompt(policy, ref, torch.ones(3, 1), torch.tensor([2, 0, 2]), num_prompts=3)
    assert got[0] == 2.0 and torch.isnan(got[1]) and got[2] == 2.5


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


def test_mean_and_ci():
    res = mean_and_ci(torch.arange(10.0))
    assert isinstance(res, MeanCI) and res.n == 10 and res.mean == pytest.approx(4.5)
    assert res.low < 4.5 < res.high
    assert set(res.as_dict()) == {"mean", "low", "high", "n"}
    multi = mean_and_ci(np.ones((5, 2))).as_dict()
    assert multi["mean"] == [1.0, 1.0] and multi["low"] == [1.0, 1.0]


@pytest.mark.parametrize("kwargs", [{"level": 1.0}, {"level": 0.0}, {"num_resamples": 0}])
def test_bootstrap_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        bootstrap_ci(np.ones(3), **kwargs)


def test_bootstrap_rejects_empty():
    with pytest.raises(ValueError):
        bootstrap_ci(np.ones(0))
