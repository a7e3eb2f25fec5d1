"""Properties of the optimal frontier on the grid N in {2..64}, KL up to and beyond log N - (N-1)/N
(src/infalign/math/theory.py).

BoN and WoN, N in {2, 4, 8, 16, 32, 64}, KL budgets up to log N - (N-1)/N (the best-of-N
policy's own KL) and beyond. At every point the engine reports as valid (reachable and
converged): the achieved KL is within 1e-3 (relative) of the budget, the optimal win rate is
>= every exp(t) and identity curve at the same KL (to 1e-4: the optimal point's fixed point
is solved to TV 1e-10 and its KL to 1e-9 relative; the 1e-4 allows the 2nd-order
discretisation of a nearly discontinuous optimal density), and every curve is non-decreasing
in KL. Points that are not valid must say why (a reason or converged = False), never carry a
silent number. The full grid is slow (the N = 64 frontiers take seconds each): `slow`; N = 2
runs in the fast suite.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from infalign.math import theory
from infalign.math.procedures import make_procedure
from infalign.math.transforms import Exp, Identity

KL_TOL = 1e-3
DOMINANCE_TOL = 1e-4
T_MAGS = (1.0, 4.0, 16.0, 64.0)


def budgets_for(n: int) -> np.ndarray:
    bon_kl = math.log(n) - (n - 1) / n
    return np.unique(np.round([0.05, 0.3, 1.0, bon_kl, 1.5 * bon_kl + 0.5], 6))


def check_point_properties(name: str, n: int) -> None:
    procedure = make_procedure(name, n)
    budgets = budgets_for(n)
    opt = theory.optimal_frontier(procedure, budgets)
    valid = opt.valid
    for i in np.flatnonzero(~valid):  # never silent
        assert opt.reason[i] or not opt.converged[i], (name, n, budgets[i])
    if name == "bon" or n <= 16:
        assert valid[budgets <= 1.0].all(), (name, n, opt.reason)  # moderate budgets are always solved
    else:  # WoN N >= 32: the optimal density has a cliff the default z-grid resolves only up to KL ~0.2-0.4
        assert valid[0] and all("z-grid" in opt.reason[i] for i in np.flatnonzero(~opt.reachable)), opt.reason
    np.testing.assert_allclose(opt.kl[valid], budgets[valid], rtol=KL_TOL)
    assert np.all(np.diff(opt.win_rate[valid]) >= -1e-12)
    sign = -1.0 if name == "won" else 1.0
    for tr in [Identity(), *[Exp(sign * m) for m in T_MAGS]]:
        other = theory.frontier(tr, procedure, budgets)
        ok = other.valid
        assert np.all(np.diff(other.win_rate[ok]) >= -1e-12), tr
        both = ok & valid
        assert np.all(opt.win_rate[both] >= other.win_rate[both] - DOMINANCE_TOL), (
            tr, budgets[both], opt.win_rate[both] - other.win_rate[both])


@pytest.mark.parametrize("name", ["bon", "won"])
@pytest.mark.parametrize("n", [2])
def test_optimal_frontier_properties_fast(name, n):
    check_point_properties(name, n)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bon", "won"])
@pytest.mark.parametrize("n", [4, 8, 16, 32, 64])
def test_optimal_frontier_properties_full_grid(name, n):
    check_point_properties(name, n)


def test_bon16_optimal_is_not_below_exp_at_large_kl():
    """Regression (`infalign-analyze procedure.n=16`): the damped fixed point did not
    converge at small beta and the 'optimal' curve read ~0.51 at KL 4 where exp(t=16) is > 0.9."""
    procedure = make_procedure("bon", 16)
    opt = theory.optimal_frontier(procedure, [2.0, 4.0])
    exp16 = theory.frontier(Exp(16.0), procedure, [2.0, 4.0])
    assert opt.valid.all(), opt.reason
    assert np.all(opt.win_rate >= exp16.win_rate - DOMINANCE_TOL)
    assert opt.win_rate[1] > 0.99
