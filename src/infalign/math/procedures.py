"""Inference-time procedures T: sampling, best-of-N, worst-of-N (docs/method.md §1, §4, §7).

Each procedure is described by one fact, the *served CDF map*: if a policy's calibrated reward u
has CDF F, the served response's reward has CDF ``G(F)``:

    sample: G(F) = F          bon: G(F) = F^N          won: G(F) = 1 - (1 - F)^N

From it follow, for a reference whose u is Uniform[0, 1] (CDF ``G(u)``, density ``g(u) = G'(u)``):

* the inference-time win rate in calibrated space, ``W_T = 1 - ∫_0^1 G(F(u)) g(u) du``;
* the reward derivative that defines the optimal transform (docs/method.md §3, §5):
  ``Phi*(u) = ∫_0^u G'(F(v)) g(v) dv`` -- for BoN ``N^2 ∫ F^(N-1) v^(N-1)``, for WoN
  ``N^2 ∫ (1-F)^(N-1) (1-v)^(N-1)``, for sampling ``u`` (identity);
* the selection weights on a pool: the served response of a random N-subset of M sorted
  samples is the k-th smallest with probability ``C(k-1, N-1)/C(M, N)`` (BoN), its mirror
  ``C(M-k, N-1)/C(M, N)`` (WoN), or ``1/M`` (sampling).

Numerics: maps take both ``F`` and ``S = 1 - F`` (each accurate where it is small) and work
with logs, so a policy whose mass is piled against 0 or 1 keeps full precision.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from infalign.errors import ConfigError

if TYPE_CHECKING:
    import torch


def _log_cdf(f: np.ndarray, s: np.ndarray) -> np.ndarray:
    """log F, accurate for F near 0 (from F) and near 1 (as log1p(-S)); each element takes one
    logarithm (ufunc ``where=``: the optimal transform's fixed point calls this on [rows, G] arrays)."""
    f, s = np.asarray(f, np.float64), np.asarray(s, np.float64)
    low = f < 0.5
    out = np.empty(np.broadcast_shapes(f.shape, s.shape))
    with np.errstate(divide="ignore"):
        np.log(f, out=out, where=low)
        np.log1p(-s, out=out, where=~low)
    return out


STANDARD_WIN_RATE = "standard_win_rate"  # the win rate of one sample vs one reference sample


@dataclass(frozen=True)
class Procedure:
    """Base class: subclasses define the served CDF map and the pool selection weights.

    A procedure also owns its names: ``label`` (``bon4``), the evaluation column of its win rate
    (:attr:`win_rate_key`, ``bon4_win_rate``) and which column holds the win rate at any N
    (:meth:`metric_key`); ``sign`` says which end of N samples it serves, ``uses_n`` whether N
    matters at all. Nothing else spells these out from the procedure's name.
    """

    n: int = 1
    name: ClassVar[str] = "procedure"
    sign: ClassVar[int] = 0  # +1 serves the top of N samples (exp with t > 0 helps), -1 the bottom
    uses_n: ClassVar[bool] = True  # False: the served response is one sample whatever N

    def __post_init__(self) -> None:
        if not isinstance(self.n, int | np.integer) or isinstance(self.n, bool) or self.n < 1:
            raise ConfigError("procedure.n", self.n, "an integer N >= 1")

    @property
    def label(self) -> str:
        return f"{self.name}{self.n}"

    def against(self, t: float) -> str | None:
        """Why an ``exp(t u)`` transform works against this procedure -- ``t > 0`` with worst-of-N rewards
        the top of the reference distribution, ``t < 0`` with best-of-N punishes the bottom of it -- or None.
        ``infalign-train`` and ``infalign-analyze`` accept such a ``t`` with this warning: a legitimate
        comparison, rarely the intent."""
        if t * self.sign >= 0:
            return None
        return (f"t={t:g} with {self.label}: exp(t{'>' if t > 0 else '<'}0) "
                f"{'rewards the top' if t > 0 else 'punishes the bottom'} of the reference distribution, which "
                f"gives a lower {self.label} win rate than identity or t {'<' if t > 0 else '>'} 0 at the same KL; "
                f"the usual choice is t {'<' if t > 0 else '>'} 0")

    def at(self, n: int) -> Procedure:
        """The same procedure at ``n`` (sampling ignores N)."""
        return dataclasses.replace(self, n=int(n)) if self.uses_n else self

    @property
    def is_standard(self) -> bool:
        """Serving is plain sampling (G(F) = F, docs/method.md (4.5)): ``sample``, or N = 1."""
        return not self.uses_n or self.n == 1

    def reduced(self) -> Procedure:
        """The simplest procedure serving the same response: plain sampling when :attr:`is_standard`."""
        return Sample() if self.is_standard else self

    @property
    def win_rate_key(self) -> str:
        """The key of this procedure's win rate in evaluation columns and theory predictions
        (``bon4_win_rate``; the pool estimator writes one per N of a family that uses N,
        ``bon1_win_rate`` included, docs/method.md §7)."""
        return f"{self.label}_win_rate"

    def metric_key(self, n: int | None = None) -> str:
        """The column that holds the win rate at ``n`` (default ``self.n``): ``standard_win_rate``
        when serving is plain sampling there, else :attr:`win_rate_key` at ``n``."""
        p = self if n is None else self.at(n)
        return STANDARD_WIN_RATE if p.is_standard else p.win_rate_key

    # --- calibrated space (numpy, float64) -------------------------------------------------
    def served_cdf(self, f: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(G(F), 1 - G(F)) given F and S = 1 - F."""
        raise NotImplementedError

    def log_map_derivative(self, f: np.ndarray, s: np.ndarray) -> np.ndarray:
        """log G'(F) given F and S."""
        raise NotImplementedError

    def reference_log_density(self, log_u: np.ndarray, log_s: np.ndarray) -> np.ndarray:
        """log g(u) = log G'(u): density of the served reference reward (u ~ Uniform)."""
        return self.log_map_derivative(np.exp(log_u), np.exp(log_s))

    # --- sample pools (torch) ---------------------------------------------------------------
    def selection_weights(self, m: int) -> torch.Tensor:
        """``[m]`` float64: P(the served response of a random N-subset is the k-th smallest)."""
        raise NotImplementedError

    def pool_win_rate(self, policy_scores: torch.Tensor, reference_scores: torch.Tensor) -> torch.Tensor:
        """Exact U-statistic W(T(pi) > T(pi_ref)) per prompt from pools ``[P, M]``, ``[P, M']``."""
        m_pol, m_ref = policy_scores.shape[-1], reference_scores.shape[-1]
        self._check_pool(m_pol, m_ref)
        return served_win_rate(
            policy_scores, reference_scores, self.selection_weights(m_pol)[None], self.selection_weights(m_ref)[None]
        )[0]

    def _check_pool(self, m_pol: int, m_ref: int) -> None:
        if self.n > min(m_pol, m_ref):
            raise ConfigError(
                "procedure.n", self.n, f"N <= pool size (policy M={m_pol}, reference M={m_ref})"
            )


def _log_binom(n: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """log C(n, k) elementwise (float64); -inf where k < 0 or k > n."""
    import torch  # local: the calibrated-space theory (infalign-analyze) never needs torch

    valid = (k >= 0) & (k <= n)
    n, k = n.double(), k.double()
    out = torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma((n - k).clamp(min=0) + 1)
    return torch.where(valid, out, torch.full_like(out, -math.inf))


@dataclass(frozen=True)
class Sample(Procedure):
    """Plain sampling (T = identity). ``n`` is ignored by the maps and must be 1."""

    name: ClassVar[str] = "sample"
    uses_n: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n != 1:
            raise ConfigError("procedure.n", self.n, "n = 1 for procedure 'sample'")

    def served_cdf(self, f, s):
        return f, s

    def log_map_derivative(self, f, s):
        return np.zeros(np.broadcast(f, s).shape)

    def selection_weights(self, m: int) -> torch.Tensor:
        import torch

        return torch.full((m,), 1.0 / m, dtype=torch.float64)


@dataclass(frozen=True)
class BestOfN(Procedure):
    """Best-of-N: serve the highest-reward of N i.i.d. samples. G(F) = F^N."""

    name: ClassVar[str] = "bon"
    sign: ClassVar[int] = 1

    def served_cdf(self, f, s):
        log_g = self.n * _log_cdf(f, s)
        return np.exp(log_g), -np.expm1(log_g)

    def log_map_derivative(self, f, s):
        return math.log(self.n) + (self.n - 1) * _log_cdf(f, s) if self.n > 1 else np.zeros(np.shape(f))

    def selection_weights(self, m: int) -> torch.Tensor:
        import torch

        k = torch.arange(1, m + 1)
        log_total = _log_binom(torch.tensor(m), torch.tensor(self.n))
        return torch.exp(_log_binom(k - 1, torch.tensor(self.n - 1)) - log_total)


@dataclass(frozen=True)
class WorstOfN(Procedure):
    """Worst-of-N (best-of-N jailbreaking): serve the lowest of N. G(F) = 1 - (1 - F)^N."""

    name: ClassVar[str] = "won"
    sign: ClassVar[int] = -1

    def served_cdf(self, f, s):
        log_survival = self.n * _log_cdf(s, f)
        return -np.expm1(log_survival), np.exp(log_survival)

    def log_map_derivative(self, f, s):
        return math.log(self.n) + (self.n - 1) * _log_cdf(s, f) if self.n > 1 else np.zeros(np.shape(f))

    def selection_weights(self, m: int) -> torch.Tensor:
        import torch

        return torch.flip(BestOfN(self.n).selection_weights(m), dims=[0])


PROCEDURES: dict[str, type[Procedure]] = {cls.name: cls for cls in (Sample, BestOfN, WorstOfN)}


def make_procedure(name: str, n: int = 1) -> Procedure:
    """Procedure by registry name (``sample``, ``bon``, ``won``)."""
    if name not in PROCEDURES:
        raise ConfigError("procedure.name", name, f"one of {sorted(PROCEDURES)}")
    return PROCEDURES[name](n=n)


def served_win_rate(
    policy_scores: torch.Tensor,
    reference_scores: torch.Tensor,
    policy_weights: torch.Tensor,
    reference_weights: torch.Tensor,
) -> torch.Tensor:
    """``[R, P]``: sum_k sum_l wx[r,k] wy[r,l] (1{x_(k) > y_(l)} + 0.5 * 1{x_(k) = y_(l)}).

    ``x_(k)``, ``y_(l)`` are each prompt's sorted scores; ``wx [R, M]``, ``wy [R, M']`` are
    selection weights (one row per procedure/N). The inner sum over l is a tie-aware CDF read by
    two binary searches, so the cost is O(R * P * M) rather than O(R * P * M * M').
    """
    import torch

    if policy_scores.dim() != 2 or reference_scores.dim() != 2 or policy_scores.shape[0] != reference_scores.shape[0]:
        raise ValueError(
            f"pools must be [P, M] and [P, M'] with the same P; got {tuple(policy_scores.shape)}, "
            f"{tuple(reference_scores.shape)}"
        )
    for name, pool in (("policy scores", policy_scores), ("reference scores", reference_scores)):
        if not torch.isfinite(pool).all():
            raise ValueError(f"{name} contain NaN/inf; the win rate is undefined")
    x = torch.sort(policy_scores.double(), dim=1).values
    y = torch.sort(reference_scores.double(), dim=1).values
    left = torch.searchsorted(y, x, side="left")  # [P, M]: #{y < x}
    right = torch.searchsorted(y, x, side="right")  # #{y <= x}
    cum = torch.nn.functional.pad(torch.cumsum(reference_weights.double(), dim=1), (1, 0))  # [R, M'+1]
    below, at_or_below = cum[:, left], cum[:, right]  # [R, P, M]
    tie_aware_cdf = 0.5 * (below + at_or_below)
    return torch.einsum("rk,rpk->rp", policy_weights.double(), tie_aware_cdf)


def pool_win_rates(
    name: str, policy_scores: torch.Tensor, reference_scores: torch.Tensor, ns: list[int] | None = None
) -> torch.Tensor:
    """``[len(ns), P]`` inference-time win rates of procedure ``name`` for every N in ``ns``.

    Default ``ns`` = 1..min(M, M') ([1] for sampling), all from the same pools (docs/method.md §7).
    """
    import torch

    m_pol, m_ref = policy_scores.shape[-1], reference_scores.shape[-1]
    if ns is None:
        ns = list(range(1, min(m_pol, m_ref) + 1)) if make_procedure(name).uses_n else [1]
    procs = [make_procedure(name, int(n)) for n in ns]
    for p in procs:
        p._check_pool(m_pol, m_ref)
    wx = torch.stack([p.selection_weights(m_pol) for p in procs])
    wy = torch.stack([p.selection_weights(m_ref) for p in procs])
    return served_win_rate(policy_scores, reference_scores, wx, wy)
