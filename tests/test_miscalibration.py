"""Miscalibration statistics against hand computations and constructed worlds."""

import math

import pytest
import torch

from infalign.math.miscalibration import miscalibration_summary, spread_stats


def test_spread_stats_by_hand():
    # prompt 0: [0, 2] -> mean 1, std sqrt(2); prompt 1: [0, 4] -> mean 2, std 2*sqrt(2)
    s = spread_stats(torch.tensor([[0.0, 2.0], [0.0, 4.0]]))
    # stds [sqrt2, 2 sqrt2]: their std (n-1) is 1, their mean 1.5 sqrt2; means [1, 2] have std 1/sqrt2
    assert s["std_cv"] == pytest.approx(1 / (1.5 * math.sqrt(2)), abs=1e-12)
    assert s["mean_spread_ratio"] == pytest.approx(1 / 3, abs=1e-12)
    # var(means) = 1/2, mean(s^2) / M = (2 + 8) / 2 / 2 = 2.5 > 1/2: no offsets beyond the noise
    assert s["offset_ratio"] == 0.0
    assert s["mean_within_prompt_std"] == pytest.approx(1.5 * math.sqrt(2), abs=1e-12)


def test_calibrated_world_has_zero_cv_and_a_scaled_one_carries_gold():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(50, 16, generator=g, dtype=torch.float64)
    same = base / base.std(1, keepdim=True)  # every prompt exactly unit spread
    assert spread_stats(same)["std_cv"] == pytest.approx(0.0, abs=1e-12)
    scale = torch.exp(torch.randn(50, 1, generator=g, dtype=torch.float64))
    gold = scale * same + 3.0 * torch.randn(50, 1, generator=g, dtype=torch.float64)
    carried = miscalibration_summary(2.0 * scale * same, gold)  # rm = gold up to offset and global scale
    assert carried["log_std_corr"] == pytest.approx(1.0, abs=1e-12)
    assert carried["pairwise_accuracy"] == 1.0
    assert carried["reward_model"]["std_cv"] == pytest.approx(carried["gold"]["std_cv"], abs=1e-12)
    flat = miscalibration_summary(same, gold)  # an rm blind to the scale: cv 0, orders still right
    assert flat["reward_model"]["std_cv"] == pytest.approx(0.0, abs=1e-12)
    assert flat["pairwise_accuracy"] == 1.0
    reversed_ = miscalibration_summary(-gold, gold)
    assert reversed_["pairwise_accuracy"] == 0.0


def test_needs_two_samples():
    with pytest.raises(ValueError, match=">= 2 samples"):
        miscalibration_summary(torch.zeros(3, 1))


@pytest.mark.parametrize("sigma", [0.0, 0.5])
def test_offset_ratio_estimates_the_offsets_std_beyond_the_noise_of_a_mean(sigma):
    """Scores o_p + e_pj, offsets o ~ N(0, sigma^2), e ~ N(0, 1), P = 4000 prompts x M = 8: the
    offset ratio estimates sigma (its sd here ~0.02 at 0.5, and < 0.06 at 0 where the square
    root of a noisy ~0 is taken), while mean_spread_ratio also counts the means' noise,
    sqrt(sigma^2 + 1/8) (0.35 at sigma 0)."""
    g = torch.Generator().manual_seed(3)
    scores = sigma * torch.randn(4000, 1, generator=g, dtype=torch.float64) + torch.randn(
        4000, 8, generator=g, dtype=torch.float64)
    s = spread_stats(scores)
    # within-prompt std of 8 normals is ~0.965 on average (c4 bias), hence the 4 % tolerance on ratios.
    # At sigma 0 the estimate is sqrt(max(0, noise)) with noise sd ~0.003 in the variance: < 0.12 is
    # 4 sd (sqrt(0.012) / 0.965); at 0.5 the sd is ~0.01
    if sigma == 0:
        assert s["offset_ratio"] < 0.12
    else:
        assert s["offset_ratio"] == pytest.approx(sigma / 0.965, abs=0.04)
    assert s["mean_spread_ratio"] == pytest.approx(math.sqrt(sigma**2 + 1 / 8) / 0.965, rel=0.04)


def test_identical_samples_give_nan_spread_statistics_not_an_exception():
    """eval.temperature=0 (or a judge that scores every sample alike): every within-prompt spread is
    0. The ratios are NaN / inf (no spread to measure them in), and the run's evaluation goes on."""
    s = spread_stats(torch.arange(3.0)[:, None] * torch.ones(3, 4))
    assert math.isnan(s["std_cv"]) and math.isinf(s["mean_spread_ratio"]) and math.isinf(s["offset_ratio"])


@pytest.mark.parametrize("spread_sigma", [0.0, 0.3])
def test_std_cv_denoised_removes_the_noise_floor_of_m_sample_spreads(spread_sigma):
    """P = 4000 prompts x M = 16 normal scores with spread sigma_p = exp(spread_sigma z_p): the spreads'
    true CV is sqrt(exp(spread_sigma^2) - 1) (0 and 0.307). std_cv adds the noise of 16-sample stds,
    ~1/sqrt(2 * 15) = 0.18 at 0; std_cv_denoised (split halves) estimates the true CV: at 0 it is
    sqrt(max(0, cov)) with cov's sd ~0.0011 (halves of 8: var(s) ~ 1/14, / sqrt(4000)), so < 0.08 is
    beyond 4 sd of the square root's scale; at 0.3 its sd is ~0.01, hence abs 0.03."""
    g = torch.Generator().manual_seed(5)
    sigma = torch.exp(spread_sigma * torch.randn(4000, 1, generator=g, dtype=torch.float64))
    s = spread_stats(sigma * torch.randn(4000, 16, generator=g, dtype=torch.float64))
    true_cv = math.sqrt(math.exp(spread_sigma**2) - 1)
    if spread_sigma == 0:
        assert s["std_cv"] == pytest.approx(1 / math.sqrt(30), rel=0.1)  # the floor
        assert s["std_cv_denoised"] < 0.08
    else:
        assert s["std_cv_denoised"] == pytest.approx(true_cv, abs=0.03)
        assert s["std_cv"] > true_cv + 0.03  # the plain estimate keeps the floor
    assert math.isnan(spread_stats(torch.randn(5, 3, generator=g))["std_cv_denoised"])  # M < 4: no halves


# ---------------------------------------------------------------- guards found by mutation testing


def test_offset_ratio_by_hand_with_unequal_spreads():
    """prompt 0 [0, 2]: mean 1, s^2 = 2; prompt 1 [10, 14]: mean 12, s^2 = 8. var(means) = 60.5 minus the
    noise mean(s^2)/M = 5/2 -> 58; mean(s) = 1.5 sqrt 2."""
    s = spread_stats(torch.tensor([[0.0, 2.0], [10.0, 14.0]]))
    assert s["offset_ratio"] == pytest.approx(math.sqrt(58) / (1.5 * math.sqrt(2)), rel=1e-12)


def test_std_cv_denoised_by_hand():
    """Halves (even / odd columns): prompt 0 [0,0,2,4] -> sds a = sqrt 2, b = 2 sqrt 2; prompt 1 [0,0,6,6] ->
    a = b = 3 sqrt 2. cov(a, b) over prompts (P - 1 = 1) = 2; mean((a+b)/2) = 2.25 sqrt 2 -> 1/2.25."""
    s = spread_stats(torch.tensor([[0.0, 0.0, 2.0, 4.0], [0.0, 0.0, 6.0, 6.0]]))
    assert s["std_cv_denoised"] == pytest.approx(1 / 2.25, rel=1e-12)


def test_pairwise_accuracy_skips_pairs_tied_under_either_judge():
    from infalign.math.miscalibration import pairwise_accuracy

    assert pairwise_accuracy(torch.tensor([[1.0, 1.0, 2.0]]), torch.tensor([[1.0, 2.0, 3.0]])) == 1.0
    assert pairwise_accuracy(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0, 1.0, 2.0]])) == 1.0


@pytest.mark.parametrize("bad", ["scores", "gold"])
def test_pairwise_accuracy_refuses_a_non_finite_score(bad):
    """A NaN pair is neither tied nor ordered: it raises (it was counted as a wrong ordering, 0.867 here
    against 0.889 for the NaN-free pairs)."""
    from infalign.math.miscalibration import pairwise_accuracy

    rm = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 2.0, 3.0], [1.0, 0.0, 3.0, 2.0]])
    gold = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0]])
    assert pairwise_accuracy(rm, gold) == pytest.approx(16 / 18)  # rows 1-2: 12 pairs right; row 3: 2 of 6 wrong
    (rm if bad == "scores" else gold)[0, 3] = float("nan")
    with pytest.raises(ValueError, match=f"{bad} contains 1 non-finite"):
        pairwise_accuracy(rm, gold)


def test_log_std_corr_is_scale_free_and_needs_three_usable_prompts():
    """log sd of the reward model = 2 log sd of gold: a correlation of exactly 1 (slope 2); a prompt whose
    reward-model samples are all equal is dropped (log sd = -inf), not a NaN; two usable prompts give NaN."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(20, 8, generator=g, dtype=torch.float64)
    same = base / base.std(1, keepdim=True)
    scale = torch.exp(torch.randn(20, 1, generator=g, dtype=torch.float64))
    out = miscalibration_summary(scale**2 * same, scale * same)
    assert out["log_std_corr"] == pytest.approx(1.0, abs=1e-12)
    rm = scale**2 * same
    rm[0] = 1.0
    assert miscalibration_summary(rm, scale * same)["log_std_corr"] == pytest.approx(1.0, abs=1e-12)
    two = miscalibration_summary(scale[:2] * same[:2], scale[:2] * same[:2])
    assert math.isnan(two["log_std_corr"])
