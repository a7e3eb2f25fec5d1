"""Tests for the calibrated reward C_hat (docs/method.md §2; src/infalign/math/calibration.py).

C_hat(x, y) = (1/K) sum_i (1{r(z_i) < r(y)} + 0.5 * 1{r(z_i) = r(y)}) and the smoothed variant
(count_less + 0.5 * count_equal + 0.5) / (K + 1). All hand-computed values below are exact
dyadic/simple fractions, so they are compared with a 1e-12 tolerance (float64 round-off only).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from infalign.errors import ConfigError
from infalign.math.calibration import CalibrationTable, calibrate

EXACT = 1e-12  # hand-computed fractions; only float64 round-off separates them from the code


def _t(x, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(x, dtype=dtype)


# --------------------------------------------------------------------------------------------
# Hand-computed values, ties, smoothing
# --------------------------------------------------------------------------------------------


def test_hand_computed_with_ties_one_half_rule():
    ref = _t([1.0, 2.0, 2.0, 3.0])  # K = 4, sorted, one tie pair at 2
    query = _t([0.0, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0])
    # less / equal counts:   0/0   0/1   1/0   1/2   3/0   3/1   4/0
    expected = [0.0, 0.5 / 4, 1 / 4, 2 / 4, 3 / 4, 3.5 / 4, 1.0]
    got = calibrate(ref, query)
    assert got.shape == (7,)
    np.testing.assert_allclose(got.numpy(), expected, atol=EXACT, rtol=0)


def test_hand_computed_smoothed():
    ref = _t([1.0, 2.0, 2.0, 3.0])
    query = _t([0.0, 1.0, 2.0, 3.0, 4.0])
    # (less + 0.5 equal + 0.5) / (K + 1) with K = 4
    expected = [0.5 / 5, 1.0 / 5, 2.5 / 5, 4.0 / 5, 4.5 / 5]
    got = calibrate(ref, query, smoothing=True)
    np.testing.assert_allclose(got.numpy(), expected, atol=EXACT, rtol=0)
    # the smoothed estimate is bounded away from 0 and 1 by 0.5/(K+1) (what a log transform needs)
    assert got.min().item() >= 0.5 / 5 - EXACT and got.max().item() <= 1 - 0.5 / 5 + EXACT


def test_all_reference_values_tied():
    ref = _t([[5.0, 5.0, 5.0]])
    got = calibrate(ref, _t([[4.0, 5.0, 6.0]]))
    np.testing.assert_allclose(got.numpy(), [[0.0, 0.5, 1.0]], atol=EXACT, rtol=0)


def test_k_equals_one():
    got = calibrate(_t([[0.0]]), _t([[-1.0, 0.0, 1.0]]))
    np.testing.assert_allclose(got.numpy(), [[0.0, 0.5, 1.0]], atol=EXACT, rtol=0)


def test_output_in_unit_interval_and_dtype():
    gen = torch.Generator().manual_seed(0)
    ref = torch.sort(torch.randn(4, 16, generator=gen), dim=1).values
    q = torch.randn(4, 9, generator=gen) * 3
    for smoothing in (False, True):
        c = calibrate(ref, q, smoothing=smoothing)
        assert c.shape == (4, 9) and c.dtype == torch.float32
        assert (c >= 0).all() and (c <= 1).all()
    # integer rewards are accepted; the result is float
    ci = calibrate(torch.tensor([[1, 2, 3]]), torch.tensor([[2]]))
    assert ci.dtype == torch.float32 and abs(ci.item() - 0.5) < 1e-7


def brute_force_c(ref_row: np.ndarray, y: float, smoothing: bool) -> float:
    less = float(np.sum(ref_row < y))
    equal = float(np.sum(ref_row == y))
    k = len(ref_row)
    return (less + 0.5 * equal + 0.5) / (k + 1) if smoothing else (less + 0.5 * equal) / k


@pytest.mark.parametrize("smoothing", [False, True])
def test_batched_equals_per_prompt_loop_and_brute_force(smoothing):
    rng = np.random.default_rng(1)
    p, k, m = 7, 12, 9
    ref = np.sort(rng.integers(0, 6, size=(p, k)).astype(np.float64), axis=1)  # many ties
    q = rng.integers(-1, 7, size=(p, m)).astype(np.float64)
    batched = calibrate(_t(ref), _t(q), smoothing=smoothing).numpy()
    for i in range(p):
        row = calibrate(_t(ref[i]), _t(q[i]), smoothing=smoothing).numpy()
        np.testing.assert_allclose(batched[i], row, atol=EXACT, rtol=0)
        np.testing.assert_allclose(
            row, [brute_force_c(ref[i], y, smoothing) for y in q[i]], atol=EXACT, rtol=0
        )


# --------------------------------------------------------------------------------------------
# Invariance under strictly increasing per-prompt maps
# --------------------------------------------------------------------------------------------

MAPS = {
    "scale_offset": lambda r, i: (0.5 + 3.0 * i) * r + (10.0 * i - 7.0),
    "exp": lambda r, i: np.exp(r / (1.0 + i)),
    "cube": lambda r, i: (r - i) ** 3,
    "mixed": lambda r, i: [lambda x: 2 * x + 1, np.exp, lambda x: x**3, np.arctan][i % 4](r),
}


@pytest.mark.parametrize("map_name", sorted(MAPS))
@pytest.mark.parametrize("ties", [False, True])
def test_invariant_under_increasing_per_prompt_maps(map_name, ties):
    rng = np.random.default_rng(2)
    p, k, m = 6, 20, 15
    if ties:
        ref = rng.integers(-3, 4, size=(p, k)).astype(np.float64)
        q = rng.integers(-4, 5, size=(p, m)).astype(np.float64)
    else:
        ref, q = rng.normal(size=(p, k)), rng.normal(size=(p, m)) * 1.5
    fn = MAPS[map_name]
    ref_mapped = np.stack([fn(ref[i], i) for i in range(p)])
    q_mapped = np.stack([fn(q[i], i) for i in range(p)])
    for smoothing in (False, True):
        c0 = calibrate(torch.sort(_t(ref), dim=1).values, _t(q), smoothing)
        c1 = calibrate(torch.sort(_t(ref_mapped), dim=1).values, _t(q_mapped), smoothing)
        # C_hat takes values in multiples of 1/(2K): any change would be >= 1/(2K) = 0.025
        np.testing.assert_allclose(c1.numpy(), c0.numpy(), atol=EXACT, rtol=0)


# --------------------------------------------------------------------------------------------
# Uniformity of C_hat for fresh reference draws
# --------------------------------------------------------------------------------------------


def _fresh_query_c(shift: float, seed: int = 0, p: int = 4000, k: int = 1024) -> np.ndarray:
    """C_hat of ONE fresh draw per prompt (so pooled values are independent), heterogeneous prompts."""
    gen = torch.Generator().manual_seed(seed)
    loc = torch.randn(p, 1, generator=gen, dtype=torch.float64) * 5
    scale = torch.rand(p, 1, generator=gen, dtype=torch.float64) * 4 + 0.1
    ref = loc + scale * torch.randn(p, k, generator=gen, dtype=torch.float64)
    query = loc + scale * (torch.randn(p, 1, generator=gen, dtype=torch.float64) + shift)
    return calibrate(torch.sort(ref, dim=1).values, query).numpy().ravel()


def test_c_hat_of_fresh_reference_draws_is_uniform():
    # With no ties, C_hat of a fresh reference draw is uniform on {0, 1/K, ..., 1}; its CDF is within
    # 1/(K+1) ~ 1e-3 of Uniform[0,1], far below the KS critical distance 1.63/sqrt(4000) ~ 0.026, so the
    # continuous-uniform KS test applies. Fixed seed; significance level 0.01.
    c = _fresh_query_c(shift=0.0)
    assert abs(c.mean() - 0.5) < 4 * np.sqrt(1 / 12 / len(c))  # 4 standard errors
    assert stats.kstest(c, "uniform").pvalue > 0.01


def test_c_hat_uniformity_negative_control():
    # The same test must reject queries drawn from a distribution shifted by 0.25 sd
    # (mean C ~ 0.57, KS distance ~ 0.1 >> 0.026).
    c = _fresh_query_c(shift=0.25)
    assert stats.kstest(c, "uniform").pvalue < 1e-6


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_k_less_than_one_raises_config_error():
    with pytest.raises(ConfigError, match="calibration.K"):
        calibrate(torch.empty(3, 0), torch.zeros(3, 2))
    with pytest.raises(ConfigError, match="calibration.K"):
        CalibrationTable.from_rewards(torch.empty(3, 0))
    with pytest.raises(ConfigError, match="calibration.K"):
        CalibrationTable.from_rewards(torch.zeros(5))  # not [P, K]


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape mismatch"):
        calibrate(torch.zeros(3, 4), torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"\[P, K\]"):
        calibrate(torch.zeros(2, 3, 4), torch.zeros(2, 5))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_rewards_raise(bad):
    ref = torch.zeros(2, 4)
    ref_bad = ref.clone()
    ref_bad[1, 2] = bad
    with pytest.raises(ValueError, match=r"reference rewards.*non-finite"):
        calibrate(ref_bad, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"reference rewards.*non-finite"):
        CalibrationTable.from_rewards(ref_bad)
    q_bad = torch.zeros(2, 3)
    q_bad[0, 1] = bad
    with pytest.raises(ValueError, match=r"query rewards.*non-finite.*\(0, 1\)"):
        calibrate(ref, q_bad)
    table = CalibrationTable.from_rewards(ref)
    with pytest.raises(ValueError, match=r"query rewards.*non-finite"):
        table.calibrate(torch.tensor([0, 1]), torch.tensor([0.0, bad]))


# --------------------------------------------------------------------------------------------
# CalibrationTable
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("smoothing", [False, True])
def test_table_calibrate_with_prompt_index(smoothing):
    rng = np.random.default_rng(4)
    # small integers are exact in float32, so the table's float32 storage is not an issue here
    rewards = rng.integers(0, 5, size=(3, 8)).astype(np.float32)
    table = CalibrationTable.from_rewards(torch.from_numpy(rewards), smoothing)
    assert table.num_prompts == 3 and table.k == 8
    assert (table.sorted_rewards.diff(dim=1) >= 0).all()
    idx = torch.tensor([2, 0, 2, 1, 0, 1, 1])
    vals = torch.tensor([3.0, 0.0, 4.5, 2.0, 5.0, -1.0, 2.5])
    got = table.calibrate(idx, vals).numpy()
    expected = [
        brute_force_c(rewards[i], float(v), smoothing) for i, v in zip(idx.tolist(), vals.tolist())
    ]
    np.testing.assert_allclose(got, expected, atol=1e-7, rtol=0)  # float32 output
    assert table.calibrate(torch.tensor([], dtype=torch.long), torch.tensor([])).shape == (0,)


def test_table_calibrate_errors():
    table = CalibrationTable.from_rewards(torch.zeros(3, 4))
    with pytest.raises(IndexError, match="out of range"):
        table.calibrate(torch.tensor([0, 3]), torch.zeros(2))
    with pytest.raises(IndexError, match="out of range"):
        table.calibrate(torch.tensor([-1]), torch.zeros(1))
    with pytest.raises(ValueError, match="equal 1-D shapes"):
        table.calibrate(torch.tensor([0, 1]), torch.zeros(3))


def test_table_float64_rewards_tie_is_one_half():
    rewards = torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64)
    table = CalibrationTable.from_rewards(rewards)
    # the free function handles float64 correctly: (0 + 0.5 * 1) / 3
    assert abs(calibrate(rewards, rewards[:, :1]).item() - 0.5 / 3) < EXACT
    # the table must agree with it (it returns 0.0: 0.1 < float32(0.1) = 0.10000000149)
    assert abs(table.calibrate(torch.tensor([0]), rewards[0, :1]).item() - 0.5 / 3) < EXACT


def test_pooled_table_applies_smoothing():
    """scope="pooled" must honour ``smoothing``: C_pool = (mid + 0.5) / (P*K + 1) over all P*K = 4
    pooled rewards {0, 1, 2, 3}, whatever the prompt index. By hand: -1 has mid 0 -> 0.5/5 = 0.1;
    3.5 has mid 4 -> 4.5/5 = 0.9; 1 ties one reward, mid 1 + 0.5 = 1.5 -> 2/5 = 0.4. (Unsmoothed it
    would be 0, 1, 0.375: a pooled table that dropped ``smoothing`` feeds log(0) to a log transform.)
    Exact fractions of float64 inputs: EXACT tolerance."""
    table = CalibrationTable.from_rewards(_t([[0.0, 1.0], [2.0, 3.0]]), smoothing=True, scope="pooled")
    assert table.pooled and table.num_prompts == 2 and table.k == 4
    vals = _t([-1.0, 3.5, 1.0])
    for idx in ([0, 0, 0], [1, 1, 1], [0, 1, 0]):
        got = table.calibrate(torch.tensor(idx), vals).numpy()
        np.testing.assert_allclose(got, [0.1, 0.9, 0.4], atol=EXACT, rtol=0)


def test_tie_share_by_hand_and_its_warning(monkeypatch, caplog):
    """math/calibration.tie_share: the share of within-prompt pairs that tie, averaged over prompts -- by hand:
    [1, 1, 2, 3] ties 1 pair of 6, [5, 5, 5, 5] all 6, [1, 2, 3, 4] none: (1/6 + 1 + 0) / 3. A calibration pool
    over TIE_WARN is warned about (custom-reward walkthrough: a discrete reward's theory and kl_target beta were
    off without a word); the evaluation's miscalibration line says it too."""
    import logging

    from omegaconf import OmegaConf

    from infalign.math.calibration import TIE_WARN, tie_share
    from infalign.math.miscalibration import spread_stats
    from infalign.pipeline import fit
    from infalign.pipeline.record import miscalibration_line

    rewards = torch.tensor([[1.0, 1.0, 2.0, 3.0], [5.0, 5.0, 5.0, 5.0], [1.0, 2.0, 3.0, 4.0]])
    assert tie_share(rewards) == pytest.approx((1 / 6 + 1 + 0) / 3)
    assert tie_share(torch.randn(8, 16, generator=torch.Generator().manual_seed(0))) == 0.0
    assert math.isnan(tie_share(torch.ones(3, 1)))
    g = torch.Generator().manual_seed(3)
    for m in (2, 3, 7, 16):  # against the brute-force count of every pair (the binary searches' job)
        r = torch.randint(-2, 2, (5, m), generator=g).float()
        per_prompt = [sum(int(r[p, i] == r[p, j]) for i in range(m) for j in range(i + 1, m)) / (m * (m - 1) / 2)
                      for p in range(5)]
        assert tie_share(r) == pytest.approx(sum(per_prompt) / 5, abs=1e-12) and sum(per_prompt) > 0
    assert spread_stats(rewards)["tie_share"] == tie_share(rewards)

    pools = {"tied": rewards.repeat(1, 2), "continuous": torch.randn(3, 8, generator=torch.Generator().manual_seed(1))}
    cfg = OmegaConf.create({"calibration": {"K": 8, "smoothing": False, "scope": "prompt"}, "seed": 0})
    world = type("W", (), {"train_prompts": ["a", "b", "c"], "reward": object()})()
    for name, pool in pools.items():
        monkeypatch.setattr(fit, "reference_pool", lambda *a, pool=pool, **k: ({"scores": {"reward": pool}}, False))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="infalign.pipeline.fit"):
            fit.calibration_table(world, cfg, None, None)
        assert ("pairs of the calibration pool's rewards tie" in caplog.text) == (name == "tied")
    mis = {"n_prompts": 3, "reward_model": spread_stats(rewards)}
    assert "of within-prompt sample pairs tie" in miscalibration_line(mis) and tie_share(rewards) > TIE_WARN
    mis["reward_model"]["tie_share"] = 0.0
    assert "tie" not in miscalibration_line(mis)


def test_a_reward_whose_every_pair_ties_gets_no_theory():
    """Robustness walkthrough: a constant reward (a custom scorer returning 1.0) calibrates every response to 1/2,
    so training has no signal (measured KL ~0, win rates 1/2), yet the summary's theory row read KL 0.363 and a bon4
    win rate of 0.817 -- the uniform-C theory's numbers at beta. Every pair tied (tie_share 1): no theory, and the
    miscalibration line says why; a partly tied reward keeps its theory (with the "holds only roughly" note)."""
    from infalign.math.calibration import tie_share
    from infalign.math.miscalibration import spread_stats
    from infalign.pipeline.record import miscalibration_line
    from infalign.pipeline.run_record import constant_reward

    constant = torch.ones(4, 8)
    assert tie_share(constant) == 1.0
    mis = {"n_prompts": 4, "reward_model": spread_stats(constant)}
    assert constant_reward(mis) and "there is no theory prediction" in miscalibration_line(mis)
    partly = constant.clone()
    partly[0, 0] = 2.0
    mis = {"n_prompts": 4, "reward_model": spread_stats(partly)}
    assert not constant_reward(mis) and "holds only roughly" in miscalibration_line(mis)
    assert not constant_reward({"n_prompts": 4, "reward_model": {}})  # (records before tie_share)
