"""math/pool_stats.py: per-prompt win-rate / KL columns of two pools and their bootstrap summaries."""

import numpy as np
import pytest
import torch

from infalign.math.estimators import bootstrap_ci
from infalign.math.pool_stats import pool_report, summarize_columns


def test_summarize_columns_counts_prompts_and_honours_level_and_seed():
    """Each column's CI is bootstrap_ci's over the same resamples (all columns at once, at the level and
    seed asked), n_prompts is the number of rows; a 50 % interval is narrower than the default 95 %."""
    rng = np.random.default_rng(0)
    cols = {"a": torch.tensor(rng.normal(size=30)), "b": torch.tensor(rng.normal(size=30))}
    r = summarize_columns(cols, num_resamples=400, level=0.5, seed=11)
    assert r["a"]["n_prompts"] == 30
    est, low, high = bootstrap_ci(np.stack([cols["a"].numpy(), cols["b"].numpy()], 1), 400, 0.5, 11)
    assert (r["a"]["low"], r["a"]["high"]) == (low[0], high[0])
    assert (r["b"]["low"], r["b"]["high"]) == (low[1], high[1])
    ref = torch.tensor(rng.normal(size=(30, 4)))
    wide = pool_report(ref + 0.3, ref, "bon", [2], num_resamples=400)
    narrow = pool_report(ref + 0.3, ref, "bon", [2], num_resamples=400, level=0.5)

    def width(c):
        return c["standard_win_rate"]["high"] - c["standard_win_rate"]["low"]

    assert width(narrow) < width(wide)
    assert narrow["standard_win_rate"]["n_prompts"] == 30


def _bon_win_rate_by_hand(pol, ref, n):
    """Best-of-n of the policy's pool against best-of-n of the reference's, exactly: over every pair of
    n-subsets, 1{max > max} + 0.5 * 1{max = max} (docs/method.md §7), one prompt."""
    from itertools import combinations

    wins = [float(max(a) > max(b)) + 0.5 * float(max(a) == max(b))
            for a in combinations(pol, n) for b in combinations(ref, n)]
    return sum(wins) / len(wins)


def test_pool_columns_put_each_ns_win_rate_in_its_own_column_and_kl_is_the_mean_log_ratio():
    """columns[f"bon{n}_win_rate"] must hold the win rate at that n (not another n's), checked against
    an exhaustive count over all n-subsets; and "kl" is the mean over the policy samples of the
    per-sample log-ratio sums (not their sum). P = 3 prompts, M = 4 policy / M' = 3 reference samples
    with ties, n = 1, 2, 3 (the win rate changes with n here, so a column reading another n fails).
    Rational values, float64: 1e-12."""
    from infalign.math.pool_stats import pool_columns

    pol = torch.tensor([[0.1, 0.5, 0.9, 0.3], [0.2, 0.2, 0.8, 0.4], [0.6, 0.0, 0.1, 0.7]], dtype=torch.float64)
    ref = torch.tensor([[0.4, 0.6, 0.2], [0.2, 0.9, 0.5], [0.7, 0.3, 0.1]], dtype=torch.float64)
    log_ratio = torch.tensor([[1.0, 2.0, 0.5, -0.5], [0.0, 0.0, 4.0, 0.0], [0.25, 0.25, 0.25, 1.25]],
                             dtype=torch.float64)
    cols = pool_columns(pol, ref, "bon", [1, 2, 3], log_ratio)
    by_hand = {n: [_bon_win_rate_by_hand(pol[i].tolist(), ref[i].tolist(), n) for i in range(3)] for n in (1, 2, 3)}
    for n in (1, 2, 3):
        np.testing.assert_allclose(cols[f"bon{n}_win_rate"].numpy(), by_hand[n], atol=1e-12, rtol=0)
    np.testing.assert_allclose(cols["standard_win_rate"].numpy(), by_hand[1], atol=1e-12, rtol=0)
    assert not np.allclose(by_hand[1], by_hand[3])  # the case tells n = 1 from n = 3
    np.testing.assert_allclose(cols["kl"].numpy(), [0.75, 1.0, 0.5], atol=1e-12, rtol=0)  # row means by hand
    report = pool_report(pol, ref, "bon", [1, 2, 3], log_ratio, num_resamples=50)
    assert report["kl"]["mean"] == pytest.approx(0.75, abs=1e-12)  # mean over prompts of 0.75, 1, 0.5
    assert report["bon3_win_rate"]["mean"] == pytest.approx(np.mean(by_hand[3]), abs=1e-12)
