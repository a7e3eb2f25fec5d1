"""Tests for the 1-D calibrated-space theory engine (docs/method.md §4-5; src/infalign/math/theory.py).

Reference values come from sources independent of the engine: the closed forms of docs/method.md §4,
closed-form CDFs of the exp transform (exponential integrals E1 / Ei), scipy / mpmath quadrature,
and Monte-Carlo simulation of best-of-N / worst-of-N against Uniform reference draws.
"""

from __future__ import annotations

import math
import warnings

import mpmath as mp
import numpy as np
import pytest
from scipy import integrate, special
from scipy.integrate import cumulative_simpson

from infalign.errors import ConfigError
from infalign.math import theory
from infalign.math.procedures import BestOfN, Sample, WorstOfN, make_procedure
from infalign.math.transforms import Custom, Exp, Identity, Log, Tabulated

CLOSED = 1e-6  # the tolerance for every closed form of docs/method.md §4
BETAS = np.geomspace(1e-3, 10, 13)


def proc(name: str, n: int):
    return Sample() if name == "sample" else make_procedure(name, n)


@pytest.fixture(autouse=True)
def _restore_mpmath_precision():
    """Tests below raise mpmath's global precision; give it back so no other test is affected."""
    dps = mp.mp.dps
    yield
    mp.mp.dps = dps


# --------------------------------------------------------------------------------------------
# Independent reference formulas
# --------------------------------------------------------------------------------------------


def identity_kl_and_mean(beta: float) -> tuple[float, float]:
    """docs/method.md §4: lam = 1/beta, E[u] = 1/(1 - e^-lam) - 1/lam, KL = lam E[u] - log((e^lam - 1)/lam)."""
    lam = 1.0 / beta
    mean = 1.0 / (-math.expm1(-lam)) - 1.0 / lam
    # log((e^lam - 1)/lam) written without overflow for lam = 1000
    log_norm = lam + math.log(-math.expm1(-lam)) - math.log(lam)
    return lam * mean - log_norm, mean


def identity_cdf(beta: float, u: np.ndarray) -> np.ndarray:
    lam = 1.0 / beta
    # (e^{lam u} - 1)/(e^lam - 1) = e^{lam (u-1)} (1 - e^{-lam u}) / (1 - e^{-lam})
    return np.exp(lam * (u - 1)) * (-np.expm1(-lam * u)) / (-math.expm1(-lam))


def identity_log_density(beta: float, u: np.ndarray) -> np.ndarray:
    lam = 1.0 / beta
    return math.log(lam) + lam * (u - 1) - math.log(-math.expm1(-lam))


def exp_cdf(t: float, beta: float, u: np.ndarray) -> np.ndarray:
    """CDF of f ∝ exp(sign(t) e^{tu}/beta) via exponential integrals (c = 1/beta).

    t < 0: ∫_0^u exp(-c e^{tv}) dv = (E1(c e^{tu}) - E1(c))/|t|;
    t > 0: ∫_0^u exp(+c e^{tv}) dv = (Ei(c e^{tu}) - Ei(c))/t   (moderate c e^t only).
    """
    c = 1.0 / beta
    u = np.asarray(u, np.float64)
    if t < 0:
        # E1(x) underflows to 0 for x > ~700, i.e. only where F < e^-700 anyway
        num = special.exp1(c * np.exp(t * u)) - special.exp1(c)
        den = special.exp1(c * math.exp(t)) - special.exp1(c)
    else:
        num = special.expi(c * np.exp(t * u)) - special.expi(c)
        den = special.expi(c * math.exp(t)) - special.expi(c)
    return num / den


def exp_kl_mpmath(t: float, beta: float, dps: int = 30) -> float:
    """KL of f ∝ exp(sign(t) e^{tu}/beta) by mpmath quadrature with breakpoints at the mass.

    t > 0 (and t < 0 once beta < e^t, where the mass reaches u = 1): in s = 1 - u with
    g(s) = ±e^t expm1(-t s)/beta, mass at s ~ beta/(|t| e^t);
    t < 0 otherwise: in u with g(u) = -e^{tu}/beta, the density rises from ~0 to its plateau around
    u0 = log(1/beta)/|t| over a width ~1/|t|.
    """
    mp.mp.dps = dps
    t_, b_ = mp.mpf(t), mp.mpf(beta)
    if t > 0 or math.log(1 / beta) > abs(t):  # mass near u = 1: work in s = 1 - u, Phi(1-s) - Phi(1)
        sign = 1 if t > 0 else -1
        g = lambda x: sign * mp.e**t_ * mp.expm1(-t_ * x) / b_  # noqa: E731
        scale = b_ / (abs(t_) * mp.e**t_)
        pts = sorted({mp.mpf(0), mp.mpf(1), *[min(mp.mpf(1), scale * 10**k) for k in range(-2, 6)]})
    else:
        g = lambda x: -mp.exp(t_ * x) / b_  # noqa: E731
        u0 = mp.log(1 / b_) / abs(t_)
        pts = sorted(
            {
                mp.mpf(0),
                mp.mpf(1),
                *[min(mp.mpf(1), max(mp.mpf(0), u0 + k / abs(t_))) for k in range(-4, 8)],
            }
        )
    z = mp.quad(lambda x: mp.exp(g(x)), pts)
    return float(mp.quad(lambda x: g(x) * mp.exp(g(x)), pts) / z - mp.log(z))


def win_rates_by_quad(cdf, n: int) -> dict[str, float]:
    """Standard, BoN_N, WoN_N win rates of a policy with CDF ``cdf`` vs Uniform, by scipy quad."""
    kw = {"epsabs": 1e-13, "epsrel": 1e-12, "limit": 400, "points": [0.05, 0.15, 0.5, 0.9, 0.99]}
    std = 1 - integrate.quad(lambda u: cdf(u), 0, 1, **kw)[0]
    bon = 1 - n * integrate.quad(lambda u: cdf(u) ** n * u ** (n - 1), 0, 1, **kw)[0]
    won = (
        1
        - n * integrate.quad(lambda u: (1 - (1 - cdf(u)) ** n) * (1 - u) ** (n - 1), 0, 1, **kw)[0]
    )
    return {"sample": std, "bon": bon, "won": won}


# --------------------------------------------------------------------------------------------
# Closed forms (docs/method.md §4), all to 1e-6
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 4, 8, 16, 64])
def test_bon_policy_point_closed_forms(n):
    pt = theory.bon_policy_point(n)
    assert pt.kl == pytest.approx(math.log(n) - (n - 1) / n, abs=CLOSED)
    assert pt.standard_win_rate == pytest.approx(n / (n + 1), abs=CLOSED)
    # BoN_N of the BoN_N policy (CDF u^N) vs BoN_N of Uniform: 1 - N ∫ u^{N^2} u^{N-1} = N/(N+1)
    assert pt.win_rate == pytest.approx(n / (n + 1), abs=CLOSED)
    assert pt.beta == pytest.approx(1 / (n - 1), rel=1e-15, abs=0) and pt.procedure == f"bon{n}"


def test_bon_policy_point_rejects_n_below_two():
    for bad in (1, 0, 2.0):
        with pytest.raises(ConfigError, match=r"procedure\.n"):
            theory.bon_policy_point(bad)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_log_transform_at_beta_one_over_n_minus_one_is_the_bon_policy(n):
    """pi ∝ pi_ref exp(log(u)/beta) with beta = 1/(N-1) has density N u^{N-1}: same density, KL, win rates."""
    beta = 1.0 / (n - 1)
    tr = Log(floor=0.0)
    u = np.linspace(0.01, 1.0, 100)
    # density: exp(phi/beta - log Z) with log Z from the engine's grid; relative 1e-9 (log Z error)
    np.testing.assert_allclose(theory.density(tr, beta, u), n * u ** (n - 1), rtol=1e-9)
    for m in (1, 2, 3, 8):
        for name in ("sample", "bon", "won") if m > 1 else ("sample",):
            pt = theory.evaluate(tr, beta, proc(name, m))[0]
            assert pt.kl == pytest.approx(math.log(n) - (n - 1) / n, abs=CLOSED)
            assert pt.standard_win_rate == pytest.approx(n / (n + 1), abs=CLOSED)
            # the BoN_N policy's CDF is u^N: quadrature of the §4 formulas, independent of the engine
            expected = win_rates_by_quad(lambda x: x**n, m)[name]
            assert pt.win_rate == pytest.approx(expected, abs=CLOSED)
            if name == "bon":
                assert pt.win_rate == pytest.approx(n / (n + 1), abs=CLOSED)  # BoN_M: still N/(N+1)


@pytest.mark.parametrize("beta", BETAS)
def test_log_transform_closed_forms(beta):
    a = 1 + 1 / beta
    pts = theory.evaluate(Log(floor=0.0), beta, BestOfN(2))
    assert pts[0].kl == pytest.approx(math.log(a) - (a - 1) / a, abs=CLOSED)
    assert pts[0].standard_win_rate == pytest.approx(a / (a + 1), abs=CLOSED)
    for n in (1, 2, 4, 8, 32):  # BoN_N win rate equals the standard win rate for EVERY N
        pt = theory.evaluate(Log(floor=0.0), beta, BestOfN(n))[0]
        assert pt.win_rate == pytest.approx(a / (a + 1), abs=CLOSED)
    # density f = a u^{a-1}, compared in log space (it underflows for small beta)
    u = np.linspace(0.05, 1.0, 20)
    with np.errstate(divide="ignore"):
        log_f = np.log(theory.density(Log(floor=0.0), beta, u))
    expected = math.log(a) + (a - 1) * np.log(u)
    ok = expected > -700  # where f is representable
    np.testing.assert_allclose(log_f[ok], expected[ok], atol=1e-8)  # log Z to ~1e-9


@pytest.mark.parametrize("beta", BETAS)
def test_identity_closed_forms(beta):
    kl, mean = identity_kl_and_mean(beta)
    pt = theory.evaluate(Identity(), beta, Sample())[0]
    assert pt.kl == pytest.approx(kl, abs=CLOSED)
    assert pt.standard_win_rate == pytest.approx(mean, abs=CLOSED)  # standard win rate = E[u]
    assert pt.win_rate == pt.standard_win_rate
    u = np.linspace(0, 1, 41)
    with np.errstate(divide="ignore"):
        log_f = np.log(theory.density(Identity(), beta, u))
    expected = identity_log_density(beta, u)
    ok = expected > -700
    np.testing.assert_allclose(log_f[ok], expected[ok], atol=1e-8)


def test_evaluate_vectorised_over_betas_matches_scalar_calls():
    pts = theory.evaluate(Exp(4.0), list(BETAS), BestOfN(4))
    assert [p.beta for p in pts] == pytest.approx(list(BETAS), rel=1e-15, abs=0)
    for b, p in zip(BETAS, pts):
        q = theory.evaluate(Exp(4.0), float(b), BestOfN(4))[0]
        assert (p.kl, p.win_rate) == pytest.approx((q.kl, q.win_rate), abs=1e-14)


@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0, 10.0])
@pytest.mark.parametrize("n", [2, 4, 8])
def test_identity_inference_time_win_rates_by_quadrature(beta, n):
    ref = win_rates_by_quad(lambda u: identity_cdf(beta, u), n)
    for name in ("bon", "won"):
        pt = theory.evaluate(Identity(), beta, proc(name, n))[0]
        # quad is accurate to ~1e-12; the engine to ~1e-8 (logit-grid running integrals)
        assert pt.win_rate == pytest.approx(ref[name], abs=1e-7)


@pytest.mark.parametrize(
    "t,beta", [(3.0, 10.0), (3.0, 1.0), (-3.0, 0.2), (-8.0, 0.05), (-50.0, 1e-3)]
)
def test_exp_transform_cdf_and_win_rates_vs_exponential_integrals(t, beta):
    tr = Exp(t)
    u_nodes = theory.DEFAULT_GRID.arrays[1]
    u_nodes = u_nodes[(u_nodes > 1e-6) & (u_nodes < 1 - 1e-6)]
    ref_cdf = exp_cdf(t, beta, u_nodes)
    # at the grid nodes the engine's 4th-order running integral is within 1e-6 (measured ~1e-7)
    np.testing.assert_allclose(theory.cdf(tr, beta, u_nodes), ref_cdf, atol=1e-6)
    for n in (2, 4):
        ref = win_rates_by_quad(lambda u: exp_cdf(t, beta, u), n)
        pts = {name: theory.evaluate(tr, beta, proc(name, n))[0] for name in ("bon", "won")}
        assert pts["bon"].standard_win_rate == pytest.approx(ref["sample"], abs=1e-7)
        for name in ("bon", "won"):
            assert pts[name].win_rate == pytest.approx(ref[name], abs=1e-7)


# --------------------------------------------------------------------------------------------
# density / cdf at arbitrary points
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [1e-3, 0.1, 1.0, 10.0])
def test_density_and_cdf_at_points(beta):
    rng = np.random.default_rng(0)
    u = np.concatenate([np.sort(rng.random(500)), [0.0, 1.0]])
    # density is evaluated exactly at the points (only log Z comes from the grid): relative 1e-9
    f = theory.density(Identity(), beta, u)
    expected = np.exp(identity_log_density(beta, u))
    big = expected > 1e-300
    np.testing.assert_allclose(f[big], expected[big], rtol=1e-9)
    # cdf is linearly interpolated in z = logit(u) between nodes 0.05 apart: error <= h^2/8 max|F_zz|
    # ~ 3e-4 * 0.3 ~ 1e-4; assert 2e-4 (measured up to 9.3e-5)
    F = theory.cdf(Identity(), beta, u)
    np.testing.assert_allclose(F, identity_cdf(beta, u), atol=2e-4)
    assert F[-2] == 0.0 and F[-1] == 1.0 and np.all(np.diff(F[:-2]) >= 0)
    a = 1 + 1 / beta
    np.testing.assert_allclose(theory.cdf(Log(floor=0.0), beta, u), u**a, atol=2e-4)


# --------------------------------------------------------------------------------------------
# Monte Carlo: simulate BoN_N / WoN_N of policy draws vs Uniform reference draws
# --------------------------------------------------------------------------------------------


def draw_policy(kind: str, param: float, beta: float, size: tuple[int, int], rng) -> np.ndarray:
    """Draws of u from f ∝ exp(Phi(u)/beta), by methods independent of the engine."""
    if kind == "identity":  # inverse CDF of (e^{lam u} - 1)/(e^lam - 1)
        lam = 1 / beta
        return np.log1p(rng.random(size) * math.expm1(lam)) / lam
    if kind == "log":  # inverse CDF of u^a
        return rng.random(size) ** (1 / (1 + 1 / beta))
    # exp(t): Phi increasing with max at u = 1; rejection from Uniform with acceptance
    # exp((Phi(u) - Phi(1))/beta) <= 1
    t, sign = param, math.copysign(1.0, param)
    need, out = size[0] * size[1], []
    while need > 0:
        u = rng.random(4 * need + 1000)
        keep = u[rng.random(u.size) < np.exp(sign * (np.exp(t * u) - math.exp(t)) / beta)]
        out.append(keep[:need])
        need -= len(out[-1])
    return np.concatenate(out).reshape(size)


MC_CASES = [
    ("identity", 0.0, 0.25, "bon", 4),
    ("identity", 0.0, 0.25, "won", 4),
    ("identity", 0.0, 0.1, "sample", 1),
    ("log", 0.0, 0.5, "bon", 8),
    ("log", 0.0, 0.5, "won", 2),
    ("exp", 3.0, 10.0, "bon", 4),
    ("exp", -3.0, 0.2, "won", 4),
    ("exp", -3.0, 0.2, "bon", 2),
    ("exp", 3.0, 10.0, "won", 8),
]


@pytest.mark.parametrize("kind,param,beta,name,n", MC_CASES)
def test_monte_carlo_win_rates(kind, param, beta, name, n):
    rng = np.random.default_rng(12345)
    trials = 100_000
    tr = {"identity": Identity(), "log": Log(floor=0.0)}.get(kind) or Exp(param)
    pt = theory.evaluate(tr, beta, proc(name, n))[0]
    x = draw_policy(kind, param, beta, (trials, n), rng)
    y = rng.random((trials, n))
    serve = np.min if name == "won" else np.max
    wins = serve(x, axis=1) > serve(y, axis=1)  # continuous draws: ties have probability 0
    se = math.sqrt(pt.win_rate * (1 - pt.win_rate) / trials)
    assert abs(wins.mean() - pt.win_rate) < 4 * se  # 4 standard errors, fixed seed
    # the standard win rate from the same policy draws
    std_wins = x[:, 0] > rng.random(trials)
    se_std = math.sqrt(pt.standard_win_rate * (1 - pt.standard_win_rate) / trials)
    assert abs(std_wins.mean() - pt.standard_win_rate) < 4 * se_std


# --------------------------------------------------------------------------------------------
# Extreme parameters: t = ±50, beta = 1e-3
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [50.0, -50.0])
@pytest.mark.parametrize("normalized", [False, True])
def test_extreme_t_and_beta_are_finite_without_warnings(t, normalized):
    tr = Exp(t, normalized=normalized)
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        for name, n in (("sample", 1), ("bon", 4), ("won", 4), ("bon", 64), ("won", 64)):
            pt = theory.evaluate(tr, 1e-3, proc(name, n))[0]
            assert math.isfinite(pt.kl) and pt.kl >= 0
            for w in (pt.win_rate, pt.standard_win_rate):
                assert math.isfinite(w) and 0.0 <= w <= 1.0
        # t = -50 caps the reachable KL near 0.31 nats (beta >= 1e-6 x range): budgets below it
        budgets = [0.1, 1.0, 5.0] if t > 0 else [0.01, 0.05, 0.2]
        fr = theory.frontier(tr, BestOfN(4), budgets)
        assert fr.reachable.all() and np.all(np.isfinite(fr.win_rate))
        np.testing.assert_allclose(fr.kl, budgets, atol=1e-8)
        assert np.all(np.diff(fr.win_rate) > 0)


def test_exp_t50_kl_matches_mpmath():
    """KL of f ∝ exp(e^{50u}/1e-3) by 40-digit quadrature in s = 1 - u, where all mass sits in s < 1e-25."""
    mp.mp.dps = 40
    t, beta = 50, mp.mpf("1e-3")
    et = mp.e**t
    g = lambda s: et * mp.expm1(-t * s) / beta  # noqa: E731  (Phi(1-s) - Phi(1))/beta
    rate = t * et / beta  # near s = 0, f ~ Exp(rate): KL -> log(rate) - 1
    pts = [0] + [mp.mpf(10) ** k / rate for k in range(-2, 4)] + [1]
    z = mp.quad(lambda s: mp.exp(g(s)), pts)
    kl_mp = mp.quad(lambda s: g(s) * mp.exp(g(s)), pts) / z - mp.log(z)
    mean_s = mp.quad(lambda s: s * mp.exp(g(s)), pts) / z  # 1 - standard win rate ~ 1/rate
    # asymptotic sanity check of the reference itself (corrections are O(t s) ~ 1e-25)
    assert float(kl_mp) == pytest.approx(float(mp.log(rate) - 1), rel=1e-15, abs=0)
    pt = theory.evaluate(Exp(50.0), 1e-3, Sample())[0]
    # trapezoid on the logit grid is spectrally accurate: 1e-12 relative (KL ~ 59.8)
    assert pt.kl == pytest.approx(float(kl_mp), rel=1e-12, abs=0)
    # 1 - W ~ 3.9e-27 is below float64 resolution of W ~ 1: only 1e-15 absolute is meaningful
    assert 1 - pt.standard_win_rate == pytest.approx(float(mean_s), abs=1e-15)


def test_exp_t_minus_50_kl_matches_mpmath():
    mp.mp.dps = 40
    t, beta = -50, mp.mpf("1e-3")
    g = lambda u: -mp.exp(t * u) / beta  # noqa: E731
    pts = [0, 0.1, 0.13, 0.14, 0.15, 0.2, 1]
    z = mp.quad(lambda u: mp.exp(g(u)), pts)
    kl_mp = mp.quad(lambda u: g(u) * mp.exp(g(u)), pts) / z - mp.log(z)
    # E_f[Phi/beta] ~ 1/beta = 1e3 and log Z ~ 1e3 cancel in KL = E[Phi/beta] - log Z; float64 rounding
    # then costs ~eps * (1/beta)^2 ~ 2e-10 (measured 4e-11), so 1e-9 absolute
    assert theory.evaluate(Exp(-50.0), 1e-3, WorstOfN(4))[0].kl == pytest.approx(
        float(kl_mp), abs=1e-9
    )


# --------------------------------------------------------------------------------------------
# KL budgets and frontiers
# --------------------------------------------------------------------------------------------

FRONTIER_TRANSFORMS = [
    Identity(),
    Log(),
    Log(floor=0.0),
    Exp(4.0),
    Exp(-4.0),
    Exp(20.0, normalized=True),
    Custom(np.sqrt),
]


@pytest.mark.parametrize("transform", FRONTIER_TRANSFORMS, ids=repr)
def test_frontier_hits_kl_budget(transform):
    budgets = [1e-3, 0.05, 0.3, 1.0, 2.5]
    for procedure in (BestOfN(4), WorstOfN(4), Sample()):
        fr = theory.frontier(transform, procedure, budgets)
        assert fr.reachable.all(), fr.reason
        # beta_for_kl stops at 1e-10 relative; 1e-8 is the stated tolerance
        np.testing.assert_allclose(fr.kl, budgets, rtol=0, atol=1e-8)
        # recompute KL at the returned beta from scratch
        again = theory.evaluate(transform, list(fr.beta), procedure)
        np.testing.assert_allclose([p.kl for p in again], budgets, rtol=0, atol=1e-8)
        np.testing.assert_allclose([p.win_rate for p in again], fr.win_rate, atol=1e-12)
        # win rates increase with the KL budget
        assert np.all(np.diff(fr.win_rate) > 0) and np.all(np.diff(fr.standard_win_rate) > 0)
        assert fr.procedure == procedure.label and fr.transform == transform.label
        assert all(r == "" for r in fr.reason)


# Regression: KL used to carry an absolute error ~ eps*(Phi/beta)^2 (log_z rounding).


def test_kl_accurate_when_phi_over_beta_is_large_custom_sqrt():
    # f ∝ exp(sqrt(u)/beta), beta = 1e-6: mass within ~1e-6 of u = 1 where Phi/beta ~ 1e6
    beta = 1e-6
    mp.mp.dps = 40
    g = lambda x: (mp.sqrt(1 - x) - 1) / mp.mpf(beta)  # noqa: E731  in s = 1 - u, shifted by Phi(1)
    pts = [0, beta, 10 * beta, 100 * beta, 1000 * beta, 1]
    z = mp.quad(lambda x: mp.exp(g(x)), pts)
    kl_ref = float(mp.quad(lambda x: g(x) * mp.exp(g(x)), pts) / z - mp.log(z))  # 12.1223653774...
    # engine: 12.12237400 (error 8.6e-6; 9e-3 at beta = 1e-7)
    assert theory.evaluate(Custom(np.sqrt), beta, Sample())[0].kl == pytest.approx(kl_ref, abs=1e-8)


def test_frontier_kl_equals_budget_near_the_kl_cap():
    fr = theory.frontier(Exp(-20.5), WorstOfN(4), [1.0])
    # the returned beta (~1.42e-6) is right: independent quadrature gives KL = 1 - 5e-11
    assert exp_kl_mpmath(-20.5, float(fr.beta[0]), dps=40) == pytest.approx(1.0, abs=1e-8)
    # and the reported KL equals the budget (it once read 0.9999948: a regression guard)
    assert fr.kl[0] == pytest.approx(1.0, abs=1e-8)


def test_frontier_identity_beta_matches_closed_form_kl():
    budgets = [0.01, 0.1, 1.0, 3.0]
    fr = theory.frontier(Identity(), Sample(), budgets)
    for b, beta in zip(budgets, fr.beta):
        assert identity_kl_and_mean(float(beta))[0] == pytest.approx(b, abs=1e-8)


def test_frontier_large_budget_is_reachable():
    fr = theory.frontier(Exp(8.0), BestOfN(8), [5.0, 10.0])
    assert fr.reachable.all()
    np.testing.assert_allclose(fr.kl, [5.0, 10.0], rtol=1e-8)


@pytest.mark.slow  # > 1 s (docs/architecture.md §7)
def test_very_negative_t_reaches_large_kl_budgets():
    """Regression: the beta search used to stop at 1e-6 x range(Phi), so exp(t=-20) was labelled
    'the transform caps the reachable KL' at 5 nats. Any non-constant bounded Phi reaches every KL as
    beta -> 0; the returned beta is checked by independent 40-digit quadrature (1e-8)."""
    fr = theory.frontier(Exp(-20.0), WorstOfN(4), [0.5, 5.0, 12.0])
    assert fr.reachable.all() and all(r == "" for r in fr.reason), fr.reason
    for b, beta in zip([0.5, 5.0, 12.0], fr.beta):
        assert exp_kl_mpmath(-20.0, float(beta), dps=40) == pytest.approx(b, rel=1e-8)

    assert np.all(np.diff(fr.win_rate) > 0)


@pytest.mark.slow  # > 1 s (docs/architecture.md §7)
def test_negative_t_keeps_its_digits_at_tiny_beta():
    """Regression: for t < 0 Phi was tabulated as Phi(u) - Phi(0), so near u = 1 (where the mass is
    as beta -> 0) Phi(u) - Phi(1) lost all digits: KL off by 1.1e-7 relative at 12 nats (beta ~1e-13),
    by ~1e-3 at beta ~1e-17. Reference: 50-digit quadrature in s = 1 - u."""
    for beta in (1e-13, 1e-17):
        kl = theory.evaluate(Exp(-20.0), beta, WorstOfN(4))[0].kl
        assert kl == pytest.approx(exp_kl_mpmath(-20.0, beta, dps=50), rel=1e-10)



def test_unreachable_budget_reason_is_the_grid_not_the_transform():
    """Past ~100 nats the tilted mass lies within e^-100 of u = 1, beyond the default z-grid: the
    budget is unreachable *on this grid*, the reason says so, and a wider grid reaches it."""
    fr = theory.frontier(Identity(), Sample(), [0.5, 150.0])
    assert list(fr.reachable) == [True, False]
    assert fr.reason[0] == "" and "z-grid" in fr.reason[1] and "150" in fr.reason[1]
    assert "caps" not in fr.reason[1]
    assert np.isnan(fr.beta[1]) and np.isnan(fr.win_rate[1]) and np.isfinite(fr.win_rate[0])
    rows = fr.rows()
    assert rows[1]["reachable"] is False and rows[1]["reason"] == fr.reason[1]
    wide = theory.frontier(Identity(), Sample(), [150.0], grid=theory.Grid(z_max=200.0, step=0.05))
    assert wide.reachable[0]
    # identity closed form KL = lam E[u] - log((e^lam - 1)/lam), lam = 1/beta, is log(lam) - 1 up to
    # O(e^-lam) terms (lam ~ e^151 here)
    assert math.log(1 / float(wide.beta[0])) - 1 == pytest.approx(150.0, rel=1e-10)


def test_tiny_budgets_are_reached_precisely():
    """Regression: KL at large beta was a difference of two O(Phi/beta) numbers, so budgets below
    ~1e-12 were 'below the KL at the largest beta'; the expm1/log1p form keeps them exact."""
    budgets = [1e-20, 1e-12, 1e-6]
    fr = theory.frontier(Identity(), Sample(), budgets)
    assert fr.reachable.all(), fr.reason
    # identity at large beta: KL = Var_uniform(u)/(2 beta^2) (1 + O(1/beta^2)) = 1/(24 beta^2)
    # (the O(1/beta^2) correction is 1e-6 relative at 1e-6 nats). At 1e-20 nats Phi/beta ~ 5e-11 and its
    # float64 rounding (~1e-26 per node) is ~1e-6 of the KL, so 1e-5 there.
    for b, beta, rtol in zip(budgets, fr.beta, (1e-5, 1e-6, 2e-6)):
        assert 1 / (24 * beta**2) == pytest.approx(b, rel=rtol)
    # before the fix: 1e-20 was 'below the KL at beta=1e6 x range', and the search stopped at
    # |KL - budget| < 1e-10 absolute, i.e. 1e-12 was hit only to 1e-4 relative
    for b, kl, rtol in zip(budgets, fr.kl, (1e-6, 1e-8, 1e-8)):
        assert kl == pytest.approx(b, rel=rtol)
    # at 1e-30 nats the KL is rounding noise: said so, not returned
    low = theory.frontier(Identity(), Sample(), [1e-30])
    assert not low.reachable[0] and "precision" in low.reason[0]


@pytest.mark.parametrize("bad", [[0.0], [-1.0], [0.5, -0.1], [float("nan")], [float("inf")], []])
def test_bad_budgets_raise_config_error(bad):
    with pytest.raises(ConfigError, match="kl_budgets") as info:
        theory.frontier(Identity(), BestOfN(2), bad)
    assert info.value.key == "kl_budgets"
    with pytest.raises(ConfigError, match="kl_budgets"):
        theory.best_t(BestOfN(2), bad)
    with pytest.raises(ConfigError, match="kl_budgets"):
        theory.optimal_frontier(BestOfN(2), bad)


@pytest.mark.parametrize("bad", [0.0, -0.5, float("nan"), float("inf")])
def test_bad_beta_raises_config_error(bad):
    calls = [
        lambda: theory.evaluate(Identity(), bad, BestOfN(2)),
        lambda: theory.evaluate(Identity(), [0.1, bad], BestOfN(2)),
        lambda: theory.cdf(Identity(), bad, np.array([0.5])),
        lambda: theory.tilt(theory.phi_table(Identity()), bad),
        lambda: theory.optimal_transform("bon", 2, bad),
    ]
    if bad <= 0:  # density only checks the sign
        calls.append(lambda: theory.density(Identity(), bad, np.array([0.5])))
    for call in calls:
        with pytest.raises(ConfigError, match="beta") as info:
            call()
        assert info.value.key == "beta"


def test_constant_transform_is_rejected():
    with pytest.raises(ConfigError, match="transform"):
        theory.frontier(Custom(lambda u: np.zeros_like(u), name="zero"), BestOfN(2), [0.1])


def test_bad_transform_output_is_rejected():
    with pytest.raises(ValueError, match="NaN"):
        theory.frontier(Custom(lambda u: np.full_like(u, np.nan), name="nan"), BestOfN(2), [0.1])


def test_results_are_stable_under_grid_refinement():
    """Discretisation check: halving the logit-grid step changes KL and win rates by < 1e-7.

    KL (full-line trapezoid, spectrally accurate) moves by ~1e-15; win rates (4th-order running
    integrals for F) by up to 2e-8 at the default step 0.05 and 16x less at 0.025.
    """
    fine = theory.Grid(step=0.025)
    for tr in (Identity(), Exp(12.0), Exp(-6.0), Log()):
        for p in (BestOfN(8), WorstOfN(8)):
            a = theory.evaluate(tr, [0.01, 0.3], p)
            b = theory.evaluate(tr, [0.01, 0.3], p, grid=fine)
            for pa, pb in zip(a, b):
                assert (pa.kl, pa.standard_win_rate, pa.win_rate) == pytest.approx(
                    (pb.kl, pb.standard_win_rate, pb.win_rate), abs=1e-7
                )
                assert pa.kl == pytest.approx(pb.kl, abs=1e-12)


def test_identity_is_best_for_standard_win_rate():
    """Section 3: for T = identity, RL on C with the identity transform is optimal at every KL."""
    budgets = [0.05, 0.3, 1.0, 2.0]
    ident = theory.frontier(Identity(), Sample(), budgets).win_rate
    for tr in (Log(), Exp(4.0), Exp(-4.0), Exp(16.0), Custom(np.sqrt)):
        other = theory.frontier(tr, Sample(), budgets).win_rate
        assert np.all(ident >= other - 1e-9)  # engine accuracy ~1e-9


# --------------------------------------------------------------------------------------------
# best_t
# --------------------------------------------------------------------------------------------

BUDGETS_T = [0.05, 0.3, 1.0, 2.0, 4.0]


@pytest.mark.slow
@pytest.mark.parametrize("name,n", [("bon", 2), ("bon", 4), ("won", 4)])
def test_best_t_is_argmax_of_its_table(name, n):
    p = make_procedure(name, n)
    bt = theory.best_t(p, BUDGETS_T)
    assert bt.table.shape == (len(bt.ts), len(BUDGETS_T))
    # the default scan, extended past its ends only where the best t sat on one (never silently)
    np.testing.assert_array_equal(bt.ts[:40], theory.default_t_grid(p))
    assert np.all(np.abs(bt.ts[40:]) > 64) and not bt.at_edge.any()
    for j in range(len(BUDGETS_T)):
        col = bt.table[:, j]
        assert bt.win_rate[j] == np.nanmax(col)
        assert bt.t[j] in bt.ts
        assert bt.table[list(bt.ts).index(bt.t[j]), j] == bt.win_rate[j]
        # the returned beta hits the KL budget (independent mpmath quadrature, 1e-8) and reproduces
        # the win rate
        assert exp_kl_mpmath(float(bt.t[j]), float(bt.beta[j])) == pytest.approx(
            BUDGETS_T[j], abs=1e-8
        )
        pt = theory.evaluate(Exp(float(bt.t[j])), float(bt.beta[j]), p)[0]
        assert pt.win_rate == pytest.approx(bt.win_rate[j], abs=1e-12)
    assert np.all(bt.t > 0) if name == "bon" else np.all(bt.t < 0)


@pytest.mark.slow  # > 1 s (docs/architecture.md §7)
def test_best_t_grows_with_budget_and_n_for_bon():
    ts = np.concatenate(
        [-np.geomspace(0.25, 64, 20), np.geomspace(0.25, 64, 20)]
    )  # both signs offered
    best = {n: theory.best_t(BestOfN(n), BUDGETS_T, ts=ts).t for n in (2, 4, 8)}
    for n, t in best.items():
        assert np.all(t > 0), (n, t)
        assert np.all(np.diff(t) >= 0), (n, t)  # non-decreasing in the KL budget
    for j in range(len(BUDGETS_T)):
        assert best[2][j] <= best[4][j] <= best[8][j]  # and in N


@pytest.mark.slow  # > 1 s (docs/architecture.md §7)
def test_best_t_is_negative_for_won_when_both_signs_are_offered():
    ts = np.concatenate([-np.geomspace(0.25, 64, 20), np.geomspace(0.25, 64, 20)])
    for n in (2, 4, 8):
        assert np.all(theory.best_t(WorstOfN(n), BUDGETS_T, ts=ts).t < 0)


def test_best_t_unreachable_everywhere_gives_nan():
    bt = theory.best_t(WorstOfN(4), [0.5, 150.0], ts=[-20.0])
    assert (
        np.isfinite(bt.t[0])
        and np.isnan(bt.t[1])
        and np.isnan(bt.win_rate[1])
        and np.isnan(bt.beta[1])
    )


# --------------------------------------------------------------------------------------------
# The optimal transform
# --------------------------------------------------------------------------------------------

OPT_BUDGETS = [0.05, 0.3, 1.0, 2.0]
OPT_CASES = [(name, n) for name in ("bon", "won") for n in (2, 4, 8)]
DOMINANCE_TOL = (
    1e-7  # optimal-frontier win rates are accurate to ~1e-8 (KL within 1e-8 of the budget)
)


@pytest.fixture(scope="module")
def optimal_frontiers():
    return {case: theory.optimal_frontier(make_procedure(*case), OPT_BUDGETS) for case in OPT_CASES}


@pytest.mark.slow
@pytest.mark.parametrize("case", OPT_CASES, ids=lambda c: f"{c[0]}{c[1]}")
def test_optimal_frontier_dominates_other_transforms(case, optimal_frontiers):
    p = make_procedure(*case)
    opt = optimal_frontiers[case]
    assert opt.reachable.all(), opt.reason
    # optimal_frontier iterates to KL within 1e-8 (relative to max(1, budget)) of each budget
    np.testing.assert_allclose(opt.kl, OPT_BUDGETS, rtol=0, atol=1e-8 * max(OPT_BUDGETS))
    assert np.all(np.diff(opt.win_rate) > 0)
    for tr in (Identity(), Log(), Log(floor=0.0)):
        other = theory.frontier(tr, p, OPT_BUDGETS).win_rate
        assert np.all(opt.win_rate >= other - DOMINANCE_TOL), (tr, opt.win_rate - other)
    bt = theory.best_t(p, OPT_BUDGETS)  # every exp(t) on the default 40-point t grid
    assert np.all(
        opt.win_rate[None, :] >= np.where(np.isnan(bt.table), -np.inf, bt.table) - DOMINANCE_TOL
    )
    assert np.all(opt.win_rate >= bt.win_rate - DOMINANCE_TOL)


def test_optimal_frontier_for_sampling_is_the_identity_frontier():
    opt = theory.optimal_frontier(Sample(), OPT_BUDGETS)
    ident = theory.frontier(Identity(), Sample(), OPT_BUDGETS)
    np.testing.assert_allclose(opt.win_rate, ident.win_rate, atol=1e-7)
    np.testing.assert_allclose(opt.beta, ident.beta, rtol=1e-5)


@pytest.mark.parametrize("procedure", [Sample(), BestOfN(1), WorstOfN(1)], ids=repr)
@pytest.mark.parametrize("beta", [0.05, 0.5])
def test_optimal_transform_for_n_one_is_identity_up_to_a_constant(procedure, beta):
    table = theory.optimal_transform(procedure, beta=beta)
    _, u, s, *_ = theory.DEFAULT_GRID.arrays
    # Phi* = ∫_0^u 1 dv = u, by a 4th-order running integral in z with step 0.05: error ~2e-8
    assert np.ptp(table.phi - u) < 1e-6
    assert np.ptp(table.centered(u, s) - u) < 1e-6


def _mass_region(table: Tabulated, beta: float, lo: float = 1e-6):
    tl = theory.tilt(table.phi, beta)
    return tl.cdf[0], tl.sf[0], (tl.cdf[0] > lo) & (tl.sf[0] > lo)


@pytest.mark.parametrize("case", OPT_CASES, ids=lambda c: f"{c[0]}{c[1]}")
@pytest.mark.parametrize("beta", [0.05, 0.3])
def test_optimal_phi_is_increasing_and_convex_or_concave(case, beta):
    table = theory.optimal_transform(case[0], case[1], beta)
    assert table.label == f"optimal({case[0]}{case[1]})" and table.beta == beta
    _, u, s, *_ = theory.DEFAULT_GRID.arrays
    _, _, mass = _mass_region(table, beta)
    du = np.where(u[:-1] < 0.5, np.diff(u), -np.diff(s))  # accurate spacing near both ends
    slope = np.diff(table.phi) / du
    cells = mass[:-1] & mass[1:]
    assert np.all(slope[cells] >= 0)
    curvature = np.diff(slope)[cells[:-1] & cells[1:]]
    # divided differences of a quadrature result: allow noise of 1e-8 x the largest slope (measured
    # down to -3e-11 where Phi* is flat at small u)
    noise = 1e-8 * slope[cells].max()
    if case[0] == "bon":
        assert curvature.min() >= -noise
    else:
        assert curvature.max() <= noise
    # Phi*' = N^2 F^{N-1} u^{N-1} (BoN) or N^2 (1-F)^{N-1} (1-u)^{N-1} (WoN) never exceeds N^2; for BoN
    # it reaches N^2 at u -> 1 where F -> 1 (within 10% inside the mass region)
    n2 = case[1] ** 2
    assert slope[cells].max() <= n2 * (1 + 1e-6)
    if case[0] == "bon":
        assert slope[cells].max() >= 0.9 * n2


@pytest.mark.parametrize("case", OPT_CASES, ids=lambda c: f"{c[0]}{c[1]}")
@pytest.mark.parametrize("beta", [0.05, 0.3])
def test_optimal_phi_is_a_fixed_point(case, beta):
    p = make_procedure(*case)
    table = theory.optimal_transform(p, beta=beta)
    assert table.iterations < 3000
    grid = theory.DEFAULT_GRID
    _, u, s, log_u, log_s, log_jac, _ = grid.arrays
    F, S, mass = _mass_region(table, beta)
    # Phi_new(u) = ∫_0^u G'(F(v)) g(v) dv, integrated in z with du = u(1-u) dz
    integrand = np.exp(p.log_map_derivative(F, S) + p.reference_log_density(log_u, log_s) + log_jac)
    # (a) with the engine's own quadrature: the iteration stopped at TV < 1e-10, so Phi moves < 1e-8
    engine = -theory._cumulate(theory._running_integral(integrand, grid.step))[1]
    assert np.ptp((engine - table.phi)[mass]) < 1e-8
    # (b) with scipy's Simpson rule (independent quadrature, error O(h^4): measured <= 5e-6 at h = 0.05,
    # 16x smaller at h = 0.025); relative to the range of Phi*
    simpson = cumulative_simpson(integrand, dx=grid.step, initial=0.0)
    assert np.ptp((simpson - table.phi)[mass]) < 2e-6 * np.ptp(table.phi)
    # (c) the explicit forms of docs/method.md §5: BoN N^2 ∫ F^{N-1} v^{N-1}, WoN N^2 ∫ (1-F)^{N-1} (1-v)^{N-1}
    n = case[1]
    explicit = (
        n * n * (F ** (n - 1) * u ** (n - 1) if case[0] == "bon" else S ** (n - 1) * s ** (n - 1))
    )
    np.testing.assert_allclose(integrand, explicit * np.exp(log_jac), rtol=1e-12, atol=1e-300)


def test_optimal_transform_is_cached_and_reusable_in_frontier():
    a = theory.optimal_transform("bon", 4, 0.2)
    b = theory.optimal_transform(BestOfN(4), beta=0.2)
    np.testing.assert_array_equal(a.phi, b.phi)
    # plugging the tabulated Phi* back into the generic frontier at its own beta reproduces the point
    pt = theory.evaluate(a, 0.2, BestOfN(4))[0]
    fr = theory.frontier(a, BestOfN(4), [pt.kl])
    assert fr.beta[0] == pytest.approx(0.2, rel=1e-6) and fr.win_rate[0] == pytest.approx(
        pt.win_rate, abs=1e-9
    )


# --------------------------------------------------------------------------------------------
# Regressions: reachability and best t for worst-of-N
# --------------------------------------------------------------------------------------------


def test_readme_won_exponents_reach_every_budget():
    """README: `infalign-analyze procedure=won procedure.n=8 t=[-1,-4,-16] kl.stop=2` marked exp(t=-16)
    unreachable (the fixed beta range, not the transform). Every budget is reached, KL to 1e-8."""
    budgets = np.linspace(0.02, 2.0, 8)
    for t in (-1.0, -4.0, -16.0):
        fr = theory.frontier(Exp(t), WorstOfN(8), budgets)
        assert fr.reachable.all(), fr.reason
        np.testing.assert_allclose(fr.kl, budgets, rtol=1e-8)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_best_t_for_won_is_monotone_in_budget_and_n(n):
    """docs/method.md §5: the best |t| grows with the KL budget and with N; for WoN t < 0, so best t is
    non-increasing in the budget (budgets where the win rate is not yet within 1e-6 of 1: beyond,
    every t ties and the argmax is rounding)."""
    budgets = [0.05, 0.3, 1.0, 2.0]
    ts = -np.geomspace(0.25, 64, 24)
    bt = theory.best_t(WorstOfN(n), budgets, ts=ts, extend=True)
    live = bt.win_rate < 1 - 1e-6
    t = bt.t[live]
    assert np.all(np.diff(t) <= 0), (n, bt.t)
    if n > 2:
        smaller = theory.best_t(WorstOfN(n // 2), budgets, ts=ts, extend=True)
        both = live & (smaller.win_rate < 1 - 1e-6)
        assert np.all(bt.t[both] <= smaller.t[both]), (bt.t, smaller.t)


def test_best_t_flags_a_scan_edge_instead_of_sitting_on_it():
    """Regression: with the default scan |t| <= 64, bon4 at KL 4 returned t = 64 silently (the
    optimum lies beyond). The scan now extends (ratio of the grid) and flags what stays on an edge."""
    bt = theory.best_t(BestOfN(4), [1.0, 4.0])
    assert bt.t[1] > 64 and not bt.at_edge[1]
    fixed = theory.best_t(BestOfN(4), [4.0], ts=[2.0, 8.0, 32.0, 64.0])  # a user grid: not extended
    assert fixed.t[0] == 64.0 and fixed.at_edge[0]


def test_a_best_t_beside_an_unreachable_t_is_flagged_as_an_edge():
    """Theory walkthrough: worst-of-4 at KL 0.3 with a 2-point scan [-0.25, -64] picked t = -64 (win rate 0.860,
    below exp(-8)'s 0.883) as an interior best, because the scan's extension to -512 is past what the grid
    resolves there (NaN). The edge is the end of the t that reach the budget."""
    bt = theory.best_t(WorstOfN(4), [0.3], ts=[-0.25, -64.0], extend=True)
    assert np.isnan(bt.table[np.abs(bt.ts) == 512.0]).all()  # the extension did not reach the budget
    assert bt.t[0] == -64.0 and bt.at_edge[0]
    assert bt.win_rate[0] < theory.best_t(WorstOfN(4), [0.3], ts=[-8.0]).win_rate[0]  # a better t lies inside


def test_ladder_start_interpolates_log_densities_in_log_beta():
    """Warm starts of the optimal frontier (theory._ladder_start): Phi/beta interpolated linearly
    in log beta between the two neighbouring rungs; a Phi proportional to beta is reproduced."""
    g0, g1 = np.linspace(-1.0, 0.0, 5), np.linspace(-3.0, 0.0, 5) ** 3 / 9
    lbs = np.array([1.0, 0.0, -1.0])  # decreasing, as the ladder stores it
    phis = np.stack([math.exp(lb) * g for lb, g in zip(lbs, (g0, g0, g1))])
    lb = np.array([0.5, -0.25, -1.0])
    start = theory._ladder_start(lbs, phis, lb)
    np.testing.assert_allclose(start[0], math.exp(0.5) * g0, rtol=1e-14)  # both rungs: log density g0
    np.testing.assert_allclose(start[1], math.exp(-0.25) * (0.75 * g0 + 0.25 * g1), rtol=1e-14)
    np.testing.assert_allclose(start[2], math.exp(-1.0) * g1, rtol=1e-14)


@pytest.mark.parametrize("case", [("bon", 4), ("won", 8)], ids=lambda c: f"{c[0]}{c[1]}")
def test_optimal_tangent_is_the_log_beta_derivative(case):
    """The tangent w of theory._optimal_phi ((I - J) w = -Phi, from the Newton step's factorisation)
    is d(Phi*/beta)/dlog beta times beta, and _tangent_log_kl_slope turns it into d log KL / dlog beta:
    both checked against central differences of converged solutions at beta e^(+-eps). They drive the
    optimal frontier's first-order warm starts and its Newton steps in log beta."""
    p, beta, eps = make_procedure(*case), 0.05, 1e-3
    grid = theory.DEFAULT_GRID
    phis = {k: theory.optimal_transform(p, beta=beta * math.exp(k * eps)).phi for k in (-1, 0, 1)}
    tan = np.full((1, len(grid.z)), np.nan)
    start = phis[0] * 1.01  # off the fixed point: the solve takes Newton steps and fills the tangent
    phi, _, tv = theory._optimal_phi(p, np.array([beta]), grid, phi0=start[None], tangent=tan)
    assert tv[0] < 1e-10 and np.isfinite(tan).all()
    _, q, _, _ = theory._tilt_stats(phi, np.array([beta]), grid)
    mass = q[0] > 1e-8 * q[0].max()
    dp = (phis[1] / (beta * math.exp(eps)) - phis[-1] / (beta * math.exp(-eps))) / (2 * eps)  # d(Phi/beta)/dlog beta
    d = (dp - tan[0] / beta)[mass]
    assert np.ptp(d) < 2e-3 * np.ptp(dp[mass])  # up to a constant (Phi is defined up to one)
    kl, slope = theory._tangent_log_kl_slope(phi, tan, np.array([beta]), grid)
    kls = {k: theory.Tilted(phis[k][None], np.array([beta * math.exp(k * eps)]), grid).kl[0] for k in (-1, 1)}
    assert slope[0] < 0 and slope[0] == pytest.approx((math.log(kls[1]) - math.log(kls[-1])) / (2 * eps), rel=2e-3)


@pytest.mark.parametrize("case", [("bon", 4), ("won", 8), ("bon", 64)], ids=lambda c: f"{c[0]}{c[1]}")
def test_newton_step_on_the_window_between_the_tails_is_the_full_step(case, monkeypatch):
    """theory._newton_step solves its banded system only where h/2 e or h/2 |q| exceed NEWTON_TAIL
    and extends the solution analytically over the tails: the step (and the tangent solved beside
    it) equal the full-grid solve to rounding, and the window is much shorter than the grid."""
    p, grid = make_procedure(*case), theory.DEFAULT_GRID
    beta = np.array([0.05, 0.5])
    phi = np.stack([theory.optimal_transform(p, beta=float(b)).phi * 1.02 for b in beta])  # off the fixed point
    tilted, new_phi, dint = theory._fixed_point_map(p, phi, beta, grid)
    args = (new_phi - phi, tilted, dint, grid, -phi[None])
    step, tan = theory._newton_step(*args)
    e = tilted.density_z / beta[:, None]
    big = ((grid.step / 2 * e > theory.NEWTON_TAIL) | (grid.step / 2 * np.abs(dint) > theory.NEWTON_TAIL)).any(axis=0)
    assert big.sum() < 0.8 * len(grid.z)
    monkeypatch.setattr(theory, "NEWTON_TAIL", -1.0)  # every node in the window: the full system
    full_step, full_tan = theory._newton_step(*args)
    for a, b in ((step, full_step), (tan[0], full_tan[0])):
        scale = np.abs(b).max(axis=1, keepdims=True)
        assert np.abs(a - b).max() <= 1e-12 * scale.max(), np.abs(a - b).max()  # measured <= 3e-15


def test_ladder_start_with_tangents_is_the_cubic_hermite():
    """With the rungs' tangents, theory._ladder_start interpolates P = Phi/beta by the cubic Hermite in
    log beta: a P that is cubic in log beta is reproduced exactly between rungs."""
    g = np.linspace(-1.0, 0.0, 5)
    lbs = np.array([1.0, 0.0, -1.0])

    def p_of(lb):  # a log density cubic in lb, and its derivative
        return (1 + 0.3 * lb - 0.2 * lb**2 + 0.1 * lb**3) * g + lb * g**2, (0.3 - 0.4 * lb + 0.3 * lb**2) * g + g**2

    phis = np.stack([math.exp(lb) * p_of(lb)[0] for lb in lbs])
    tangents = np.stack([math.exp(lb) * p_of(lb)[1] for lb in lbs])  # w = beta dP/dlog beta
    lb = np.array([0.7, -0.4])
    start = theory._ladder_start(lbs, phis, lb, tangents)
    for i, x in enumerate(lb):
        np.testing.assert_allclose(start[i], math.exp(x) * p_of(x)[0], rtol=1e-12, atol=1e-14)
    linear = theory._ladder_start(lbs, phis, lb)
    assert np.abs(linear[0] - math.exp(0.7) * p_of(0.7)[0]).max() > 1e-3  # the linear start is not exact


@pytest.mark.parametrize("n", [4, 8])
def test_optimal_frontier_won_converges_where_a_scaled_start_is_far_off(n):
    """Worst-of-N at large KL: a warm start with the previous solution's log density is far from
    Phi* where f is negligible (near u = 0 Phi* hardly depends on beta), so its Newton steps are
    cut to nothing; those rows restart from the previous Phi (``fallback``) and still converge."""
    budgets = [1.0, 2.5, 4.0]
    opt = theory.optimal_frontier(make_procedure("won", n), budgets)
    assert opt.valid.all(), opt.reason
    np.testing.assert_allclose(opt.kl, budgets, rtol=1e-8)


def test_optimal_frontier_needs_few_newton_solves(monkeypatch):
    """The warm starts keep the optimal frontier cheap: for best-of-64 at 50 KL budgets, about
    630 row evaluations of the fixed-point map (1734 with nearest-rung starts and plain secant
    steps on KL); the bound leaves room for platform rounding, not for losing the warm starts."""
    calls = []
    real = theory._fixed_point_map

    def counting(procedure, phi, beta, grid):
        calls.append(phi.shape[0])
        return real(procedure, phi, beta, grid)

    monkeypatch.setattr(theory, "_fixed_point_map", counting)
    opt = theory.optimal_frontier(make_procedure("bon", 64), np.linspace(0.05, 4.0, 50))
    assert opt.valid.all()
    assert sum(calls) < 900, sum(calls)


def test_run_theory_prediction_is_nan_where_the_grid_does_not_resolve_the_tilt():
    """Beside a run (pipeline/evaluate.py): at a resolved beta the prediction is theory.evaluate's; at
    exp(t=100), beta=1 -- mass piled beyond the grid's end -- the KL would read the grid's cap
    (~104 nats) as if it were a number: it must be NaN and flagged instead."""
    import math

    from infalign.math.procedures import BestOfN
    from infalign.math.transforms import Exp, Identity
    from infalign.pipeline.evaluate import theory_prediction

    pred = theory_prediction(Identity(), BestOfN(n=4), 0.1, math.nan, ns=[2])
    point = theory.evaluate(Identity(), 0.1, BestOfN(n=4))[0]
    assert pred["resolved"] and pred["kl"] == pytest.approx(point.kl, rel=1e-9)
    assert pred["bon4_win_rate"] == pytest.approx(point.win_rate, rel=1e-9) and "bon2_win_rate" in pred
    extreme = theory_prediction(Exp(t=100.0), BestOfN(n=4), 1.0, math.nan)
    assert extreme["resolved"] is False
    assert math.isnan(extreme["kl"]) and math.isnan(extreme["bon4_win_rate"])


def test_run_theory_at_the_measured_kl_is_reachable_only_where_its_numbers_are_right(monkeypatch):
    """``at_measured_kl.reachable`` is the frontier's ``valid`` (reachable *and* converged), the flag
    the report's theory gap reads: an unconverged iterative solve that reached the KL is still not a
    point to compare with. Stub frontiers: reachable and converged / reachable but unconverged."""
    import math

    from infalign.math.procedures import BestOfN
    from infalign.math.transforms import Identity
    from infalign.pipeline import evaluate

    real = theory.frontier

    def stub(converged):
        def frontier(transform, procedure, budgets, *a, **k):
            f = real(transform, procedure, budgets, *a, **k)
            f.converged = np.array([converged])
            return f
        return frontier

    for converged in (True, False):
        monkeypatch.setattr(evaluate.theory, "frontier", stub(converged))
        at = evaluate.theory_prediction(Identity(), BestOfN(n=4), 0.1, 0.2)["at_measured_kl"]
        assert at["reachable"] is converged and at["kl"] == 0.2
        assert math.isfinite(at["bon4_win_rate"])  # reached: the tilt's numbers are there, only flagged


def test_best_t_flags_a_pick_other_ts_match_within_flat_tol():
    """Where worst-of-8's win rate saturates (KL 2, 4: 1 - 1e-8 and less), other scanned t's reach the
    best win rate within FLAT_TOL (1e-6, ~5x the engine's worst measured error) and the argmax is float noise: flagged
    ``flat``. Control: best-of-4 at KL 0.3, a clear interior optimum, is not."""
    from infalign.math.procedures import make_procedure

    saturated = theory.best_t(make_procedure("won", 8), [2.0, 4.0])
    assert saturated.flat.tolist() == [True, True] and (1 - saturated.win_rate < 1e-7).all()
    clear = theory.best_t(make_procedure("bon", 4), [0.3])
    assert clear.flat.tolist() == [False] and not clear.at_edge[0]


@pytest.mark.parametrize("transform,beta", [(Exp(-2.0), 0.5), (Custom(np.sqrt, name="sqrt"), 0.1),
                                            (Exp(-8.0, normalized=True), 0.1), (Exp(8.0), 50.0)])
def test_density_integrates_to_one_and_matches_the_closed_form(transform, beta):
    """f(u) = exp(Phi(u)/beta) / Z with Z by adaptive quadrature (scipy, independent of the grid):
    relative 1e-8. The grid's log Z is shifted by the table's maximum, which for exp with t < 0
    and for custom transforms is not where ``centered`` puts its constant: density() used to be
    off by a constant factor there (5.6 for exp(-2) at beta 0.5, e^{1/beta} for sqrt)."""
    def phi(u):
        return float(np.asarray(transform(np.array([u]))).ravel()[0])

    top = max(phi(0.0), phi(1.0))
    z = integrate.quad(lambda u: math.exp((phi(u) - top) / beta), 0.0, 1.0, epsabs=0, epsrel=1e-10, limit=200)[0]
    u = np.linspace(0.0, 1.0, 41)
    expected = np.array([math.exp((phi(x) - top) / beta) / z for x in u])
    np.testing.assert_allclose(theory.density(transform, beta, u), expected, rtol=1e-8)


def test_evaluate_gives_nan_where_the_grid_does_not_resolve_the_policy():
    """exp(64) at beta 1e-20 concentrates its mass beyond the z-grid: the grid's KL (~103.7 at
    1e-20 and at 1e-40 alike, against ~113 and ~159) is the grid's, not the policy's."""
    points = theory.evaluate(Exp(64.0), [1e-20, 1e-40, 0.5], proc("bon", 4))
    assert all(math.isnan(p.kl) and math.isnan(p.win_rate) and math.isnan(p.standard_win_rate)
               for p in points[:2])
    assert points[2].kl == pytest.approx(exp_kl_mpmath(64.0, 0.5), rel=1e-6)


def test_a_reachable_kl_is_the_policys_even_for_a_step_spanning_few_nodes():
    """exp(t = -302.6) at worst-of-4, budget 0.3: the density's rise spans ~1/302 in u, one or two
    z-nodes; the even-node half grid happened to agree with the full grid to 1e-4 absolute while
    the true KL was 0.30039 (1.3e-3 relative off). Now the frontier's point is either unreachable
    or its beta gives the budget to 1e-5 relative (mpmath)."""
    f = theory.frontier(Exp(-302.6), make_procedure("won", 4), [0.3])
    if f.reachable[0]:
        assert exp_kl_mpmath(-302.6, float(f.beta[0]), dps=40) == pytest.approx(0.3, rel=1e-5)
    else:  # the grid's step, not a cap on the KL (larger budgets resolve)
        assert "too steeply for the z-grid's step" in f.reason[0]
    # a steep transform at a budget the grid does resolve: reachable, and the KL is the policy's
    g = theory.frontier(Exp(-64.0), make_procedure("won", 8), [2.0])
    assert g.reachable[0]
    assert exp_kl_mpmath(-64.0, float(g.beta[0]), dps=40) == pytest.approx(2.0, rel=1e-5)


def test_the_optimal_transform_is_a_copy_of_the_cached_table():
    """optimal_transform is cached per (procedure, N, beta, grid); a caller editing its table must
    not change what the next call returns."""
    a = theory.optimal_transform("bon", 4, 0.5)
    before = a.phi.copy()
    a.phi[:] = 0.0
    np.testing.assert_array_equal(theory.optimal_transform("bon", 4, 0.5).phi, before)


def test_a_grid_step_must_divide_the_range_into_an_even_number_of_cells():
    """A step that does not divide 2 z_max laid the nodes out at another spacing while the quadrature
    weights kept the nominal step: every win rate was scaled by step / spacing (the uniform policy's
    win rate, exactly 1/2, read 0.500025 at step 0.03) and the half-grid resolution check was skipped.
    Now such a grid is refused, naming a step that works; a dividing step gives 1/2 to 1e-8."""
    for z_max, step in ((100.0, 0.03), (100.0, 0.07), (60.0, 0.045)):
        with pytest.raises(ValueError, match=r"whole number of cells.*e\.g\. step="):
            theory.Grid(z_max=z_max, step=step)
    with pytest.raises(ValueError, match=r"even number"):  # whole but odd: no half-grid check
        theory.resolved(np.zeros((1, 4000)), np.array([1.0]), theory.Grid(z_max=99.975, step=0.05))
    grid = theory.Grid(step=0.025)
    assert grid.cells == 8000
    for procedure in (Sample(), make_procedure("bon", 4)):  # beta -> infinity: the reference itself
        assert theory.evaluate(Identity(), 1e12, procedure, grid)[0].win_rate == pytest.approx(0.5, abs=1e-8)


# ---------------------------------------------------------------- guards found by mutation testing


def test_resolved_rejects_a_tilt_whose_mass_reaches_past_z_max():
    """Identity at beta = e^-90: the tilt's mass above u_max = sigmoid(100) is 1 - exp(-(1-u_max)/beta) ~
    e^-10 = 4.5e-5, off the grid, while the half-grid KLs still agree (KL ~ 89): only the edge-mass check
    refuses it. Control: beta = e^-60 leaves ~ e^-40 beyond the grid."""
    beta = math.exp(-90.0)
    assert -math.expm1(-math.exp(-100.0) / beta) > 1e-5
    phi = theory.phi_table(Identity())
    assert not theory.resolved(phi, [beta])[0]
    assert theory.resolved(phi, [math.exp(-60.0)])[0]


def test_resolved_needs_both_half_grids_for_a_two_node_spike():
    """phi = A on node j (even), A + c on j + 1, c solved so the even half grid's KL equals the full grid's:
    the odd half grid differs by ~0.05, and only it shows that the grid does not resolve the tilt."""
    from scipy.optimize import brentq

    grid = theory.DEFAULT_GRID
    j = int(np.searchsorted(grid.z, -10.0)) // 2 * 2
    beta = np.array([1.0])

    def phi(c):
        p = np.zeros(len(grid.z))
        p[j], p[j + 1] = 200.0, 200.0 + c
        return p[None]

    def kls(c):
        ph = phi(c)
        full = theory._tilt_stats(ph, beta, grid)[3][0]
        even = theory._tilt_stats(np.ascontiguousarray(ph[:, ::2]), beta, theory.Grid(grid.z_max, 2 * grid.step))[3][0]
        odd = theory._tilt_stats(np.ascontiguousarray(ph[:, 1::2]), beta,
                                 theory.Grid(grid.z_max - grid.step, 2 * grid.step))[3][0]
        return full, even, odd

    c = brentq(lambda c: kls(c)[1] - kls(c)[0], -0.6, -0.2, xtol=1e-14)
    full, even, odd = kls(c)
    assert abs(full - even) < 1e-9 and abs(full - odd) > 1e-2
    assert not theory.resolved(phi(c), beta, grid)[0]


def test_best_t_flags_flat_when_exactly_one_other_t_matches():
    near = theory.best_t(make_procedure("bon", 4), [0.3], ts=[2.0, 2.0 + 1e-9])
    assert near.flat.tolist() == [True]
    apart = theory.best_t(make_procedure("bon", 4), [0.3], ts=[2.0, 4.0])
    assert apart.flat.tolist() == [False]


def test_theory_prediction_at_measured_kl_reports_the_standard_win_rate():
    """Identity at beta 0.5, closed forms: E_f[u] = 1/(1-e^{-1/b}) - b, KL = E_f[u]/b - log(b expm1(1/b)),
    standard win rate 1 - b + 1/expm1(1/b); the best-of-4 win rate beside it is another number."""
    from infalign.pipeline.evaluate import theory_prediction

    b = 0.5
    mean = 1.0 / (1.0 - math.exp(-1.0 / b)) - b
    kl = mean / b - math.log(b * math.expm1(1.0 / b))
    std = 1.0 - b + 1.0 / math.expm1(1.0 / b)
    at = theory_prediction(Identity(), BestOfN(n=4), 1.0, kl, ns=[1, 4])["at_measured_kl"]
    assert at["reachable"] and at["standard_win_rate"] == pytest.approx(std, rel=1e-6)
    assert at["bon4_win_rate"] > std + 0.02


@pytest.mark.parametrize("proc,n,t,kl", [("won", 32, -50.0, 0.139), ("won", 4, -64.0, 0.2)])
def test_flat_tol_exceeds_the_grid_error_of_steep_tilts(proc, n, t, kl):
    """FLAT_TOL must exceed the engine's own error where it is largest -- steep tilts: worst-of-32,
    exp(-50 u) at beta 1e-3 (KL 0.139; a reviewer measured 1.95e-7 against mpmath) and worst-of-4,
    exp(-64 u) at KL 0.2 (9.5e-8, the largest over a t = +-0.25..512, N = 2..1024, KL 0.05..32 scan) --
    else best_t calls one t better than another on grid error. Measured here: the default grid
    against a 4x finer one, which must stay below FLAT_TOL / 3."""
    from infalign.math.procedures import make_procedure

    procedure = make_procedure(proc, n)
    fine = theory.Grid(step=theory.DEFAULT_GRID.step / 4)
    coarse, finer = (theory.frontier(Exp(t), procedure, [kl], g).win_rate[0] for g in (theory.DEFAULT_GRID, fine))
    gap = abs(coarse - finer)
    assert np.isfinite(gap) and 5e-8 < gap < theory.FLAT_TOL / 3, gap  # (> 5e-8: still a steep case)


def test_optimal_transform_raises_when_the_solver_did_not_converge(monkeypatch):
    """optimal_transform refuses a fixed point whose TV residual exceeds 1e-8 (OPTIMAL_TV_TOL): a solve
    that stalled at TV 1e-5 must raise, naming the procedure and its residual, not return a wrong Phi*.
    The cached solver is replaced by one that reports (phi, iterations, tv) directly; a residual of
    5e-9, under the threshold, is accepted and its phi returned."""
    grid = theory.DEFAULT_GRID

    def fake(tv):
        return lambda name, n, beta, g: (np.zeros((1, g.z.size)), 7, np.array([tv]))

    monkeypatch.setattr(theory, "_optimal_cached", fake(1e-5))
    with pytest.raises(RuntimeError, match=r"optimal transform did not converge \(.*beta=0\.3\): TV 1\.00e-05"):
        theory.optimal_transform("bon", 4, 0.3, grid)
    monkeypatch.setattr(theory, "_optimal_cached", fake(5e-9))
    table = theory.optimal_transform("bon", 4, 0.3, grid)
    assert table.iterations == 7 and np.all(table.phi == 0.0)
