"""Tests for inference-time procedures and the pool win-rate estimator (docs/method.md §1, §4, §7).

The pool estimator is checked three ways: exact brute-force enumeration of all N-subsets on small
pools with ties, direct Monte-Carlo re-drawing of N-subsets on large pools, and the closed-form
population value of a log-transform policy (whose BoN_N win rate is a/(a+1) for every N).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from infalign.errors import ConfigError
from infalign.math.procedures import (
    BestOfN,
    Sample,
    WorstOfN,
    make_procedure,
    pool_win_rates,
    served_win_rate,
)

EXACT = 1e-12  # float64 sums of at most a few hundred terms of size <= 1


def _win(x: float, y: float) -> float:
    return 1.0 if x > y else 0.5 if x == y else 0.0


def brute_force_pool_win_rate(name: str, n: int, xs: list[float], ys: list[float]) -> float:
    """Average of 1{T(S) > T(S')} + 0.5 1{=} over ALL N-subsets S of xs and S' of ys."""
    serve = {"sample": lambda s: s[0], "bon": max, "won": min}[name]
    total, count = 0.0, 0
    for s in itertools.combinations(xs, n):
        for t in itertools.combinations(ys, n):
            total += _win(serve(s), serve(t))
            count += 1
    return total / count


def _proc(name: str, n: int):
    return Sample() if name == "sample" else make_procedure(name, n)


# --------------------------------------------------------------------------------------------
# Construction and errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3"])
def test_bad_n_names_procedure_n(bad):
    with pytest.raises(ConfigError, match=r"procedure\.n") as info:
        BestOfN(bad)
    assert info.value.key == "procedure.n"


def test_sample_requires_n_one():
    assert Sample().n == 1
    with pytest.raises(ConfigError, match=r"procedure\.n.*sample"):
        Sample(n=2)


def test_make_procedure():
    assert make_procedure("bon", 4) == BestOfN(4) and make_procedure("won", 2) == WorstOfN(2)
    assert make_procedure("sample") == Sample()
    assert BestOfN(np.int64(3)).n == 3  # numpy integers (e.g. from a config sweep) are accepted
    assert (
        BestOfN(8).label == "bon8" and WorstOfN(2).label == "won2" and Sample().label == "sample1"
    )
    with pytest.raises(ConfigError, match=r"procedure\.name") as info:
        make_procedure("nope", 2)
    for name in ("bon", "won", "sample"):
        assert name in str(info.value)


# --------------------------------------------------------------------------------------------
# Served CDF maps (calibrated space)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_served_cdf_closed_forms(n):
    f = np.linspace(0, 1, 101)
    s = 1 - f
    g, gs = BestOfN(n).served_cdf(f, s)
    np.testing.assert_allclose(g, f**n, atol=1e-14)  # round-off of n-fold products
    np.testing.assert_allclose(gs, 1 - f**n, atol=1e-14)
    g, gs = WorstOfN(n).served_cdf(f, s)
    np.testing.assert_allclose(g, 1 - (1 - f) ** n, atol=1e-14)
    np.testing.assert_allclose(gs, (1 - f) ** n, atol=1e-14)
    g, gs = Sample().served_cdf(f, s)
    np.testing.assert_array_equal(g, f)


def test_served_cdf_keeps_precision_in_the_tails():
    # F = 1 - 1e-20 is not representable; S = 1e-20 is. 1 - F^N = N * 1e-20 to first order.
    n = 7
    _, gs = BestOfN(n).served_cdf(np.array([1.0]), np.array([1e-20]))
    assert gs[0] == pytest.approx(n * 1e-20, rel=1e-12, abs=0)
    g, _ = WorstOfN(n).served_cdf(np.array([1e-20]), np.array([1.0]))
    assert g[0] == pytest.approx(n * 1e-20, rel=1e-12, abs=0)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_log_map_derivative_and_reference_density(n):
    u = np.linspace(0.01, 0.99, 99)
    s = 1 - u
    # G'(F) = N F^{N-1} (BoN), N (1-F)^{N-1} (WoN): relative 1e-13 (log/exp round trip)
    np.testing.assert_allclose(
        np.exp(BestOfN(n).log_map_derivative(u, s)), n * u ** (n - 1), rtol=1e-13
    )
    np.testing.assert_allclose(
        np.exp(WorstOfN(n).log_map_derivative(u, s)), n * s ** (n - 1), rtol=1e-13
    )
    ref = np.exp(BestOfN(n).reference_log_density(np.log(u), np.log(s)))
    np.testing.assert_allclose(ref, n * u ** (n - 1), rtol=1e-13)
    np.testing.assert_array_equal(Sample().log_map_derivative(u, s), np.zeros_like(u))


# --------------------------------------------------------------------------------------------
# Selection weights
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 2, 5, 20, 100])
def test_selection_weights_match_binomials(m):
    for n in sorted({1, min(2, m), min(5, m), m // 2 or 1, m}):
        wb = BestOfN(n).selection_weights(m)
        ww = WorstOfN(n).selection_weights(m)
        assert wb.dtype == torch.float64 and wb.shape == (m,)
        exact_b = [math.comb(k - 1, n - 1) / math.comb(m, n) for k in range(1, m + 1)]
        exact_w = [math.comb(m - k, n - 1) / math.comb(m, n) for k in range(1, m + 1)]
        # lgamma-based: relative error ~1e-13 even for C(100, 50) ~ 1e29; 1e-10 leaves margin
        np.testing.assert_allclose(wb.numpy(), exact_b, rtol=1e-10, atol=1e-300)
        np.testing.assert_allclose(ww.numpy(), exact_w, rtol=1e-10, atol=1e-300)
        assert abs(wb.sum().item() - 1) < 1e-12 and abs(ww.sum().item() - 1) < 1e-12
        assert (wb >= 0).all() and (ww >= 0).all()
    ws = Sample().selection_weights(m)
    np.testing.assert_allclose(ws.numpy(), np.full(m, 1 / m), rtol=1e-15)


def test_selection_weights_n_equals_m_is_the_extreme():
    w = BestOfN(6).selection_weights(6).numpy()
    np.testing.assert_allclose(w, [0, 0, 0, 0, 0, 1], atol=1e-15)
    w = WorstOfN(6).selection_weights(6).numpy()
    np.testing.assert_allclose(w, [1, 0, 0, 0, 0, 0], atol=1e-15)


# --------------------------------------------------------------------------------------------
# Pool win rates: exact enumeration on small pools with ties
# --------------------------------------------------------------------------------------------

SMALL_POOLS = [
    ([3, 1, 2, 2, 0, 3, 1], [2, 2, 1, 3, 0, 1]),  # many ties, M = 7, M' = 6
    ([1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]),  # all tied: every win rate is 1/2
    ([5, 4, 9, 0, 7, 7], [3, 8, 8, 1, 6, 6, 2, 0]),  # M' > M
]


@pytest.mark.parametrize("pool_id", range(len(SMALL_POOLS)))
@pytest.mark.parametrize("name", ["bon", "won"])
def test_pool_win_rates_equal_brute_force_enumeration(pool_id, name):
    xs, ys = SMALL_POOLS[pool_id]
    m = min(len(xs), len(ys))
    x = torch.tensor([xs], dtype=torch.float64)
    y = torch.tensor([ys], dtype=torch.float64)
    rates = pool_win_rates(name, x, y)  # default ns = 1..min(M, M')
    assert rates.shape == (m, 1)
    for i, n in enumerate(range(1, m + 1)):
        exact = brute_force_pool_win_rate(name, n, xs, ys)
        assert rates[i, 0].item() == pytest.approx(exact, abs=EXACT)
        assert _proc(name, n).pool_win_rate(x, y)[0].item() == pytest.approx(exact, abs=EXACT)
    if pool_id == 1:
        np.testing.assert_allclose(rates.numpy(), 0.5, atol=EXACT)


@pytest.mark.parametrize("pool_id", range(len(SMALL_POOLS)))
def test_pool_sample_win_rate_equals_pairwise_average(pool_id):
    xs, ys = SMALL_POOLS[pool_id]
    x = torch.tensor([xs], dtype=torch.float64)
    y = torch.tensor([ys], dtype=torch.float64)
    exact = brute_force_pool_win_rate("sample", 1, xs, ys)
    assert pool_win_rates("sample", x, y, [1])[0, 0].item() == pytest.approx(exact, abs=EXACT)
    assert Sample().pool_win_rate(x, y)[0].item() == pytest.approx(exact, abs=EXACT)
    # N = 1 of BoN / WoN is plain sampling
    assert pool_win_rates("bon", x, y, [1])[0, 0].item() == pytest.approx(exact, abs=EXACT)
    assert pool_win_rates("won", x, y, [1])[0, 0].item() == pytest.approx(exact, abs=EXACT)


def test_pool_win_rates_batched_over_prompts_and_integer_scores():
    rng = np.random.default_rng(0)
    p, m, mr = 5, 6, 7
    xs = rng.integers(0, 4, size=(p, m))
    ys = rng.integers(0, 4, size=(p, mr))
    ns = [1, 2, 3, 6]
    for name in ("bon", "won"):
        rates = pool_win_rates(name, torch.from_numpy(xs), torch.from_numpy(ys), ns)
        assert rates.shape == (len(ns), p) and rates.dtype == torch.float64
        for j in range(p):
            for i, n in enumerate(ns):
                exact = brute_force_pool_win_rate(name, n, xs[j].tolist(), ys[j].tolist())
                assert rates[i, j].item() == pytest.approx(exact, abs=EXACT)


def test_pool_win_rate_antisymmetry():
    # W(X > Y) + W(Y > X) = 1 exactly (ties count one half on both sides)
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.integers(0, 5, size=(4, 9)).astype(np.float64))
    y = torch.from_numpy(rng.integers(0, 5, size=(4, 11)).astype(np.float64))
    for name in ("bon", "won"):
        a = pool_win_rates(name, x, y, [1, 3, 9])
        b = pool_win_rates(name, y, x, [1, 3, 9])
        np.testing.assert_allclose((a + b).numpy(), 1.0, atol=EXACT)


def test_served_win_rate_with_explicit_weights():
    x = torch.tensor([[0.0, 1.0, 2.0]])
    y = torch.tensor([[1.0, 3.0]])
    wx = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)  # serve min / max
    wy = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)  # serve max / min
    out = served_win_rate(x, y, wx, wy)
    assert out.shape == (2, 1)
    # row 0: 0 vs 3 -> 0; row 1: 2 vs 1 -> 1
    np.testing.assert_allclose(out.numpy(), [[0.0], [1.0]], atol=EXACT)


# --------------------------------------------------------------------------------------------
# Pool win rates: large pools
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name,n", [("bon", 4), ("won", 3), ("bon", 16)])
def test_pool_win_rate_agrees_with_direct_subset_simulation(name, n):
    """Re-drawing random N-subsets of the same pools converges to the pool U-statistic."""
    rng = np.random.default_rng(2)
    m, mr = 300, 250
    xs = np.round(rng.normal(0.2, 1.0, m), 1)  # rounded: ties across pools
    ys = np.round(rng.normal(0.0, 1.0, mr), 1)
    exact = (
        _proc(name, n)
        .pool_win_rate(torch.from_numpy(xs[None]), torch.from_numpy(ys[None]))[0]
        .item()
    )
    trials = 40_000
    ix = np.argsort(rng.random((trials, m)), axis=1)[:, :n]  # uniform N-subsets without replacement
    iy = np.argsort(rng.random((trials, mr)), axis=1)[:, :n]
    serve = np.max if name == "bon" else np.min
    sx, sy = serve(xs[ix], axis=1), serve(ys[iy], axis=1)
    wins = (sx > sy) + 0.5 * (sx == sy)
    se = wins.std() / math.sqrt(trials)
    assert abs(wins.mean() - exact) < 4 * se  # 4 standard errors, fixed seed


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_pool_bon_unbiased_for_log_policy_closed_form(n):
    """Policy u with CDF u^a (log transform), reference Uniform: BoN_N win rate = a/(a+1) for all N."""
    rng = np.random.default_rng(3 + n)
    a = 3.0
    p, m = 200, 64
    x = torch.from_numpy(rng.random((p, m)) ** (1 / a))
    y = torch.from_numpy(rng.random((p, m)))
    per_prompt = BestOfN(n).pool_win_rate(x, y).numpy()
    se = per_prompt.std(ddof=1) / math.sqrt(p)
    # unbiased U-statistic: the prompt mean is within 4 standard errors of the population value
    assert abs(per_prompt.mean() - a / (a + 1)) < 4 * se


# --------------------------------------------------------------------------------------------
# Pool errors
# --------------------------------------------------------------------------------------------


def test_pool_n_larger_than_pool_names_procedure_n():
    x, y = torch.zeros(2, 4), torch.zeros(2, 6)
    with pytest.raises(ConfigError, match=r"procedure\.n.*M=4") as info:
        BestOfN(5).pool_win_rate(x, y)
    assert info.value.key == "procedure.n"
    with pytest.raises(ConfigError, match=r"procedure\.n"):
        WorstOfN(5).pool_win_rate(y, x)  # reference pool is the small one
    with pytest.raises(ConfigError, match=r"procedure\.n"):
        pool_win_rates("bon", x, y, [2, 5])
    BestOfN(4).pool_win_rate(x, y)  # N = M is fine


def test_pool_bad_inputs():
    with pytest.raises(ValueError, match="same P"):
        pool_win_rates("bon", torch.zeros(2, 4), torch.zeros(3, 4), [1])
    with pytest.raises(ValueError, match="same P"):
        BestOfN(2).pool_win_rate(torch.zeros(4), torch.zeros(4))
    bad = torch.zeros(2, 4)
    bad[1, 1] = float("nan")
    with pytest.raises(ValueError, match="policy scores contain NaN"):
        pool_win_rates("bon", bad, torch.zeros(2, 4), [2])
    with pytest.raises(ValueError, match="reference scores contain NaN"):
        pool_win_rates("won", torch.zeros(2, 4), bad, [2])
    with pytest.raises(ConfigError, match=r"procedure\.name"):
        pool_win_rates("nope", torch.zeros(2, 4), torch.zeros(2, 4), [1])


def test_pool_win_rates_sample_with_default_ns():
    x = torch.tensor([[0.0, 1.0, 2.0]])
    y = torch.tensor([[1.0, 1.0, 3.0]])
    rates = pool_win_rates("sample", x, y)
    assert rates[0, 0].item() == pytest.approx(
        brute_force_pool_win_rate("sample", 1, [0, 1, 2], [1, 1, 3]), abs=EXACT
    )


# ------------------------------------------------------------------ a procedure owns its names
def test_procedure_names_keys_and_reduction():
    assert BestOfN(4).win_rate_key == "bon4_win_rate" == BestOfN(4).metric_key()
    assert BestOfN(4).metric_key(1) == "standard_win_rate"  # best of one sample is one sample
    assert WorstOfN(4).metric_key(8) == "won8_win_rate" and WorstOfN(4).at(8) == WorstOfN(8)
    assert Sample().at(4) == Sample() and Sample().metric_key(4) == "standard_win_rate"
    assert BestOfN(1).is_standard and WorstOfN(1).reduced() == Sample() and not BestOfN(2).is_standard
    assert BestOfN(2).reduced() == BestOfN(2) and Sample().reduced() == Sample()


@pytest.mark.parametrize("name", ["sample", "bon", "won"])
def test_sign_is_the_end_of_the_samples_the_procedure_serves(name):
    """sign = +1: the served reward is stochastically larger than one sample's (G(F) < F), -1:
    smaller, 0: the same -- so 'exp with t * sign > 0' is the tilt that helps the procedure."""
    p = make_procedure(name, 1 if name == "sample" else 4)
    f = np.linspace(0.05, 0.95, 19)
    g, _ = p.served_cdf(f, 1 - f)
    assert np.all(np.sign(f - g) == p.sign)


@pytest.mark.parametrize("name,n", [("sample", 1), ("bon", 4), ("won", 3)])
def test_pool_columns_are_named_by_the_procedure(name, n):
    """Every N of eval.ns has its win rate under metric_key(N) -- the key the report reads."""
    from infalign.math.pool_stats import pool_columns

    g = torch.Generator().manual_seed(0)
    pol, ref = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    ns = [1, 2, 4] if make_procedure(name, n).uses_n else [1]
    cols = pool_columns(pol, ref, name, ns)
    for m in ns:
        key = make_procedure(name, n).metric_key(m)
        expected = pool_win_rates(name, pol, ref, [m])[0] if m > 1 else pool_win_rates("sample", pol, ref, [1])[0]
        torch.testing.assert_close(cols[key], expected.double(), rtol=0, atol=EXACT)


def test_a_transform_against_the_procedure_says_which_end_of_the_reference_distribution_it_serves():
    """exp(t u) with t < 0 under best-of-N punishes the bottom of the reference distribution and t > 0 under
    worst-of-N rewards its top; both serve a lower win rate than identity at the same KL (the
    theory, up to saturation: checked at N = 2, 4, 32 and KL 0.01-4). With the procedure's sign: no warning."""
    from infalign.math.procedures import BestOfN, WorstOfN

    assert BestOfN(4).against(-2.0) == ("t=-2 with bon4: exp(t<0) punishes the bottom of the reference distribution, "
                                        "which gives a lower bon4 win rate than identity or t > 0 at the same KL; "
                                        "the usual choice is t > 0")
    assert WorstOfN(4).against(2.0) == ("t=2 with won4: exp(t>0) rewards the top of the reference distribution, "
                                        "which gives a lower won4 win rate than identity or t < 0 at the same KL; "
                                        "the usual choice is t < 0")
    assert BestOfN(4).against(2.0) is None and WorstOfN(4).against(-2.0) is None
