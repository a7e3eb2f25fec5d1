"""The reward a run trains on, as a function of the exact calibrated reward: ``Phi`` of a K-sample ``C_hat``
(docs/method.md §4.1).

Training rewards a response with ``Phi(C_hat)``, ``C_hat = L / K`` (``(L + 1/2) / (K + 1)`` with
``calibration.smoothing``; ties aside) where ``L`` is how many of the prompt's ``K`` reference samples in
the calibration table score below it. For a response whose exact calibrated reward is ``C = u``, ``L`` is
``Binomial(K, u)`` over the draw of the table, so a policy that does not memorise each training prompt's
table -- and held-out prompts have none -- is rewarded on average

    (4.11)  Phi_K(u) = E[Phi(C_hat) | C = u] = sum_{L=0}^{K} Phi(c_L) * C(K, L) u^L (1 - u)^(K - L),

the degree-K Bernstein polynomial of ``Phi`` at the nodes ``c_L``. The theory beside a run tilts by
``Phi_K`` (:class:`FiniteK`); as ``K -> inf`` it is ``Phi`` (without smoothing ``Phi_K -> Phi`` uniformly on
[0, 1] for continuous ``Phi``). With smoothing the nodes span ``[1/2, K + 1/2] / (K + 1)``, so a steep
``Phi`` loses range: ``expn(t=16)`` at K = 32 tops out at ~0.79 of its range, and the KL a beta gives falls
to ~0.56-0.59 of the exact theory's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from infalign.math.transforms import Transform

# Largest K tilted through its table: (4.11) is evaluated as a [grid, K + 1] matrix (the theory's grid has ~4,000
# nodes: 0.5 GB at K = 4096), and at K = 4096 Phi_K is within 2e-3 of Phi's win rates (tests/test_finite_k.py)
MAX_K = 4096


def calibration_nodes(k: int, smoothing: bool) -> np.ndarray:
    """``c_L`` for ``L = 0..K``: the values ``C_hat`` takes (``L / K``; ``(L + 1/2) / (K + 1)`` smoothed)."""
    levels = np.arange(k + 1, dtype=np.float64)
    return (levels + 0.5) / (k + 1) if smoothing else levels / k


class FiniteK(Transform):
    """``Phi_K`` of (4.11): ``base`` seen through a ``K``-sample calibration table (``smoothing`` as
    ``calibration.smoothing``). Its ``label`` is the base transform's (the run's method); numpy only (the
    calibrated-space theory's transform, never trained on)."""

    def __init__(self, base: Transform, k: int, smoothing: bool = False) -> None:
        if not 1 <= int(k) <= MAX_K:
            raise ValueError(f"K={k}: a calibration table of 1 to {MAX_K} samples (seen_through_table keeps the "
                             "exact transform above that)")
        self.base, self.k, self.smoothing = base, int(k), bool(smoothing)
        self.kind = base.kind
        nodes = calibration_nodes(self.k, self.smoothing)
        # Phi(c_L) - Phi(c_K), by the theory's own centring of the base (accurate near both ends; exp with t < 0
        # referenced to Phi(1), exact there), then shifted so the top node is 0: the sum in (4.11) is then of
        # O(range) terms, whatever constant the base chose
        from infalign.math.theory import phi_values

        values = phi_values(base, nodes, 1.0 - nodes)
        if not np.isfinite(values).all():
            raise ValueError(f"transform {base.label} is not finite at the calibration table's values {nodes}")
        self._values = values - values[-1]
        self._nodes = nodes
        levels = np.arange(self.k + 1, dtype=np.float64)
        self._levels = levels
        self._log_binom = np.array([math.lgamma(self.k + 1) - math.lgamma(i + 1) - math.lgamma(self.k - i + 1)
                                    for i in range(self.k + 1)])

    def _pmf(self, u: np.ndarray, s: np.ndarray) -> np.ndarray:
        """``[..., K+1]`` Binomial(K, u) probabilities, from ``log u`` and ``log s`` (``s = 1 - u``) each taken
        where it is exact (``log1p`` of the other near 1)."""
        u = np.asarray(u, dtype=np.float64)[..., None]
        s = np.asarray(s, dtype=np.float64)[..., None]
        with np.errstate(divide="ignore", invalid="ignore"):
            log_u = np.where(u < 0.5, np.log(u), np.log1p(-s))
            log_s = np.where(s < 0.5, np.log(s), np.log1p(-u))
            up = np.where(self._levels == 0, 0.0, self._levels * log_u)
            down = np.where(self._levels == self.k, 0.0, (self.k - self._levels) * log_s)
        return np.exp(self._log_binom + up + down)

    def centered(self, u, s):
        """``Phi_K(u) - Phi(c_K)`` (``s = 1 - u`` given separately, exact near u = 1)."""
        return self._pmf(u, s) @ self._values

    def __call__(self, u):
        """(4.11) summed as it stands, ``Phi(c_L)`` weighted by their probabilities (no cancellation against the
        top node's value: exact where ``Phi_K`` is small beside ``Phi(c_K)``)."""
        u = np.asarray(u, dtype=np.float64)
        return self._pmf(u, 1.0 - u) @ np.asarray(self.base(self._nodes), dtype=np.float64)

    @property
    def label(self) -> str:
        return self.base.label

    def __repr__(self) -> str:
        return f"FiniteK({self.base.label}, K={self.k}, smoothing={self.smoothing})"


def table_settings(calibration: Mapping | None) -> tuple[int, bool] | None:
    """``(K, smoothing)`` of a run's ``calibration`` config node (a DictConfig or a record's dict), None when it
    gives no integer ``K`` >= 1 (then the theory stays exact)."""
    if calibration is None:
        return None
    k = calibration.get("K")
    if isinstance(k, bool) or not isinstance(k, int | float) or k != int(k) or int(k) < 1:
        return None
    return int(k), bool(calibration.get("smoothing", False))


def tilted_table(calibration: Mapping | None) -> tuple[int, bool] | None:
    """``(K, smoothing)`` of the table the theory tilts through (:func:`table_settings`), None when the theory stays
    exact: no table, or one of more than :data:`MAX_K` samples (``Phi_K`` is then ``Phi`` within its resolution)."""
    settings = table_settings(calibration)
    return None if settings is None or settings[0] > MAX_K else settings


def seen_through_table(transform: Transform, calibration: Mapping | None) -> Transform:
    """``transform`` as the run trains on it (:class:`FiniteK` at the run's ``calibration.K`` and
    ``calibration.smoothing``), or unchanged where the theory stays exact (:func:`tilted_table`)."""
    settings = tilted_table(calibration)
    return transform if settings is None else FiniteK(transform, *settings)
