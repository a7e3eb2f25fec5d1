"""math/finite_k.py: Phi_K(u) = E[Phi(C_hat) | C = u], the reward a run trains on seen through its K-sample
calibration table (docs/method.md (4.11)), against closed forms, a Monte Carlo of the table's definition, its
K -> inf limit, and where the theory beside a run and the report use it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from infalign.math import theory
from infalign.math.finite_k import FiniteK, calibration_nodes, seen_through_table, table_settings
from infalign.math.procedures import BestOfN
from infalign.math.transforms import Exp, Identity, Log

U = np.linspace(0.0, 1.0, 21)


def test_bernstein_closed_forms():
    """Bernstein polynomials reproduce linear functions (sum_L (L/K) Bin(L; K, u) = u), and for exp the
    binomial theorem gives E[e^(t L / K)] = (1 - u + u e^(t/K))^K. Tolerances: float64 sums of 33 terms."""
    k, t = 32, 16.0
    np.testing.assert_allclose(FiniteK(Identity(), k)(U), U, atol=1e-13)
    np.testing.assert_allclose(FiniteK(Identity(), k, smoothing=True)(U), (k * U + 0.5) / (k + 1), atol=1e-13)
    mgf = (1 - U + U * math.exp(t / k)) ** k
    np.testing.assert_allclose(FiniteK(Exp(t, normalized=True), k)(U), (mgf - 1) / math.expm1(t), atol=1e-13)
    # plain exp: values up to e^16 ~ 9e6, summed as differences from Phi(c_K) = e^16 -- float error ~1e-16 of that
    np.testing.assert_allclose(FiniteK(Exp(t), k)(U), mgf, rtol=0, atol=1e-13 * math.exp(t))
    np.testing.assert_allclose(FiniteK(Exp(-8.0), k)(U), -(1 - U + U * math.exp(-8.0 / k)) ** k, atol=1e-13)
    np.testing.assert_allclose(calibration_nodes(4, False), [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(calibration_nodes(4, True), [0.1, 0.3, 0.5, 0.7, 0.9])


@pytest.mark.parametrize("base, smoothing", [(Log(), True), (Exp(16.0, normalized=True), False)])
def test_phi_k_is_the_mean_reward_over_calibration_tables_monte_carlo(base, smoothing):
    """The definition: a response at exact quantile u, a table of K reference samples (Uniform(0, 1) in C),
    L of them below it, reward Phi(C_hat(L)). 200k tables per u; tolerance 5 standard errors."""
    rng = np.random.default_rng(3)
    k, tables = 8, 200_000
    nodes = calibration_nodes(k, smoothing)
    for u in (0.05, 0.5, 0.93):
        below = (rng.random((tables, k)) < u).sum(1)
        rewards = np.asarray(base(nodes[below]), np.float64)
        se = rewards.std() / math.sqrt(tables)
        assert FiniteK(base, k, smoothing)(np.array([u]))[0] == pytest.approx(rewards.mean(), abs=5 * se + 1e-12)


def test_centered_is_exact_near_one():
    """centered(u, s) with s = 1 - u below float resolution: Phi_K(1 - s) - Phi(c_K) = -s K (Phi(c_K) -
    Phi(c_{K-1})) + O(s^2), which ``u`` itself could not resolve (1 - 1e-20 == 1)."""
    k, base = 32, Exp(16.0, normalized=True)
    slope = k * (base(1.0) - base(1.0 - 1.0 / k))
    for s in (1e-20, 1e-12):
        got = FiniteK(base, k).centered(np.array([1.0 - s]), np.array([s]))[0]
        assert got == pytest.approx(-s * slope, rel=1e-6, abs=0)  # (abs=0: pytest's default 1e-12 would pass 0)


def test_large_k_recovers_the_exact_theory_and_small_k_moves_it():
    """K -> inf: Phi_K -> Phi, and the theory's frontier with it (K = 4096: win rates within 2e-3, KL at a
    given beta within 1 %). At the default K = 32 the steep expn(t=16)'s frontier barely moves (BoN-4 at KL 0.7
    within 0.005 of the exact one) but, smoothed, its KL at the exact theory's beta falls to ~0.56 of the target
    (docs/method.md §4.1: the nodes span [1/2, K + 1/2] / (K + 1))."""
    base, bon4 = Exp(16.0, normalized=True), BestOfN(4)
    exact = theory.frontier(base, bon4, [0.7])
    beta = float(exact.beta[0])
    near = theory.frontier(FiniteK(base, 4096), bon4, [0.7])
    assert float(near.win_rate[0]) == pytest.approx(float(exact.win_rate[0]), abs=2e-3)
    assert float(near.beta[0]) == pytest.approx(beta, rel=1e-2)
    k32 = theory.frontier(FiniteK(base, 32), bon4, [0.7])
    assert abs(float(k32.win_rate[0]) - float(exact.win_rate[0])) < 5e-3
    from infalign.pipeline.evaluate import theory_prediction

    smoothed = theory_prediction(FiniteK(base, 32, smoothing=True), bon4, beta, 0.3)["kl"]
    assert smoothed / 0.7 == pytest.approx(0.56, abs=0.02)
    assert theory_prediction(base, bon4, beta, 0.3)["kl"] == pytest.approx(0.7, rel=1e-3)


def test_table_settings_read_a_runs_calibration_node():
    assert table_settings({"K": 16, "smoothing": True}) == (16, True)
    assert table_settings({"K": 16}) == (16, False)
    for bad in (None, {}, {"K": 0}, {"K": True}, {"K": 2.5}, {"K": "16"}):
        assert table_settings(bad) is None
    wrapped = seen_through_table(Identity(), {"K": 8, "smoothing": False})
    assert isinstance(wrapped, FiniteK) and (wrapped.k, wrapped.smoothing, wrapped.label) == (8, False, "identity")
    assert isinstance(seen_through_table(Identity(), None), Identity)


def test_the_theory_beside_a_run_tilts_the_reward_it_trains_on(tmp_path):
    """apps/train_stages.theory_target: an RL run's transform is seen through its calibration table (its K and
    smoothing); an offline baseline's best-of-N target (5.8) is not (it ranks no reward)."""
    import infalign.apps.train as train_app
    from infalign.apps.train_stages import theory_target
    from pipeline_helpers import compose_train

    def target(*overrides):
        cfg = compose_train(tmp_path, tmp_path, *overrides)
        _, transform, algorithm = train_app.validate(cfg)
        return theory_target(cfg, algorithm, transform)

    phi, beta = target("transform=expn_t8", "calibration.K=16", "calibration.smoothing=true", "algo.beta=0.3")
    assert isinstance(phi, FiniteK) and (phi.k, phi.smoothing, phi.base.label, beta) == (16, True, "expn(t=8)", 0.3)
    baseline, _ = target("algo=bon_sft", "calibration.K=16")
    assert isinstance(baseline, Log)
    # the optimal transform: the report draws its exact optimal frontier, so the record's theory is exact too
    optimal, _ = target("transform=optimal", "calibration.K=16", "algo.beta=0.3")
    assert not isinstance(optimal, FiniteK)


def test_steep_transforms_through_a_table_keep_their_precision():
    """Review: exp with t < 0 referenced to Phi(0) rounded every Phi(c_L) - Phi(c_K) above c ~ 0.5 to 0 at t = -80
    (the worst-of-4 frontier at KL 4 came out unreachable); (4.11) as a value lost small values to cancellation
    against Phi(c_K) (exp(80) at u = 1e-3 gave 0). Exact forms: (1 - u + u e^(t/K))^K."""
    k = 32
    u = np.array([1e-3, 1e-8, 0.5])
    np.testing.assert_allclose(FiniteK(Exp(80.0), k)(u), (1 - u + u * math.exp(80.0 / k)) ** k, rtol=1e-12)
    np.testing.assert_allclose(FiniteK(Identity(), k)(np.array([1e-30])), [1e-30], rtol=1e-12)
    steep = FiniteK(Exp(-80.0), k)
    c = calibration_nodes(k, False)
    want = -math.exp(-80.0) * np.expm1(80.0 * (1.0 - c))  # Phi(c_L) - Phi(c_K) = e^-80 - e^(-80 c), in exact form
    np.testing.assert_allclose(steep._values, want, rtol=1e-12, atol=0)
    from infalign.math.procedures import WorstOfN

    f = theory.frontier(steep, WorstOfN(4), [4.0])
    assert bool(f.valid[0]) and float(f.win_rate[0]) > 0.99


def test_a_table_too_large_to_tilt_keeps_the_exact_transform():
    """K above MAX_K: (4.11) would be a [grid, K + 1] matrix of gigabytes (K = 100000: ~12 GB); Phi_K is Phi
    within the theory's resolution there, so the exact transform is kept (review)."""
    from infalign.math.finite_k import MAX_K

    assert isinstance(seen_through_table(Identity(), {"K": MAX_K}), FiniteK)
    assert isinstance(seen_through_table(Identity(), {"K": MAX_K + 1}), Identity)
    with pytest.raises(ValueError, match="K=100000"):
        FiniteK(Identity(), 100_000)
