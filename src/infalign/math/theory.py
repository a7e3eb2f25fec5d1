"""The 1-D calibrated-space theory engine (docs/method.md §4-5).

For a transform Phi and strength beta, the KL-RL solution ``pi ∝ pi_ref exp(Phi(C)/beta)`` puts
on the calibrated reward ``u ~ Uniform[0,1]`` (under pi_ref) the density

    f(u) = exp(Phi(u)/beta) / Z,        Z = ∫_0^1 exp(Phi(v)/beta) dv,        F(u) = ∫_0^u f,

and everything that matters follows from f alone, for every prompt, model and reward model:

    KL(pi || pi_ref)           = E_f[Phi(u)]/beta - log Z
    standard win rate          = ∫_0^1 (1 - F(u)) du
    inference-time win rate    W_T = ∫_0^1 (1 - G(F(u))) g(u) du      (G: procedure's CDF map,
                                                                        g = G'; see procedures.py)

Numerics. All integrals are taken in ``z = logit(u)`` on a uniform grid (``du = u (1-u) dz``),
which resolves mass piled within 1e-40 of either end (t = ±50, beta = 1e-3). Densities are
handled as log-densities and normalised with log-sum-exp, so ``exp(e^{tu}/beta)`` never
overflows. Full-line integrals use the trapezoid rule, which is spectrally accurate for these
smooth, doubly-exponentially decaying integrands; running integrals (F, 1 - F, the optimal
transform) use a 4th-order cubic-interpolation rule, and F and 1 - F are accumulated from
opposite ends so each is accurate where it is small. Win rates are evaluated in the survival
form ``∫ (1 - G) g`` (no ``1 - x`` cancellation). Log-densities are formed as
``(Phi - max Phi)/beta`` (no cancellation of O(Phi/beta) terms at tiny beta), and KL at large
beta in expm1/log1p form. A result is returned only where the grid resolves the tilted policy
(:func:`resolved`: half-grid agreement, no mass on the end nodes); elsewhere the caller gets
"unreachable" with that reason, never a silently wrong number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from infalign.errors import ConfigError, require
from infalign.math.procedures import Procedure, Sample, make_procedure
from infalign.math.transforms import Exp, Tabulated, Transform


@dataclass(frozen=True)
class Grid:
    """Uniform grid in z = logit(u) on [-z_max, z_max] (u from sigmoid(-z_max) to 1 - that).

    ``2 z_max / step`` must be a whole number of cells -- the quadrature weights use ``step`` as the
    node spacing, and a step that does not divide the range would lay the nodes out at another
    spacing, scaling every win rate by ``step / spacing`` (e.g. 2.5e-5 off at ``step=0.03``) -- and,
    for :func:`resolved`'s half-grid check, an even one (``step=0.025`` or ``0.04`` with the default
    ``z_max``)."""

    z_max: float = 100.0
    step: float = 0.05

    def __post_init__(self) -> None:
        cells = 2 * self.z_max / self.step if self.step > 0 and self.z_max > 0 else float("nan")
        if not (cells >= 4 and abs(cells - round(cells)) <= 1e-9 * cells):
            raise ValueError(f"theory.Grid(z_max={self.z_max}, step={self.step}): 2 z_max / step = {cells:.6g} "
                             f"must be a whole number of cells (>= 4): the quadrature weights take step as the "
                             f"node spacing; e.g. step={_even_step(self.z_max, self.step):.6g}")

    @property
    def cells(self) -> int:
        """``2 z_max / step``, the number of grid cells (nodes - 1)."""
        return int(round(2 * self.z_max / self.step))

    @property
    def z(self) -> np.ndarray:
        return _grid_arrays(self.z_max, self.step)[0]

    @property
    def arrays(self) -> tuple[np.ndarray, ...]:
        """(z, u, s, log_u, log_s, log_jacobian, trapezoid weights)."""
        return _grid_arrays(self.z_max, self.step)


def _even_step(z_max: float, step: float) -> float:
    """The step nearest ``step`` that divides ``2 z_max`` into an even number (>= 4) of cells."""
    half_cells = max(5, round(z_max / step)) if step > 0 and z_max > 0 else 5
    return z_max / half_cells


@lru_cache(maxsize=8)
def _grid_arrays(z_max: float, step: float) -> tuple[np.ndarray, ...]:
    n = int(round(2 * z_max / step)) + 1
    z = np.linspace(-z_max, z_max, n)
    log_u, log_s = -np.logaddexp(0.0, -z), -np.logaddexp(0.0, z)
    u, s = np.exp(log_u), np.exp(log_s)
    w = np.full(n, step)
    w[[0, -1]] = step / 2
    arrays = (z, u, s, log_u, log_s, log_u + log_s, w)
    for a in arrays:
        a.setflags(write=False)
    return arrays


DEFAULT_GRID = Grid()


def phi_table(transform: Transform, grid: Grid = DEFAULT_GRID) -> np.ndarray:
    """Phi(u) - c on the grid nodes (``[G]``), via ``transform.centered(u, 1 - u)``.

    For exp with t < 0, ``centered`` is referenced to Phi(0) (exact near u = 0); but as beta -> 0
    the tilted mass sits near u = 1, where ``Phi(u) - Phi(1)`` would then be a difference of
    O(1) numbers, an absolute error ~1e-16/beta in log f. There the table is taken as
    ``Phi(u) - Phi(1) = -scale * e^t * expm1(-t (1 - u))`` (exact near u = 1, O(1e-16) absolute
    elsewhere, i.e. never worse).
    """
    _, u, s, *_ = grid.arrays
    phi = phi_values(transform, u, s)
    if phi.shape != u.shape or np.isnan(phi).any() or np.isposinf(phi).any():
        raise ValueError(f"transform {transform.label} gave NaN/+inf or a wrong shape on [0, 1]")
    return phi


def phi_values(transform: Transform, u: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``Phi(u) - c`` at ``u`` (``s = 1 - u``) with :func:`phi_table`'s constant ``c``."""
    if isinstance(transform, Exp) and transform.t < 0:
        scale = 1.0 / abs(math.expm1(transform.t)) if transform.normalized else 1.0
        return -scale * math.exp(transform.t) * np.expm1(-transform.t * s)
    return np.asarray(transform.centered(u, s), dtype=np.float64)


def _running_integral(values: np.ndarray, step: float) -> np.ndarray:
    """Per-cell integrals ``[..., G-1]`` of a smooth integrand sampled on the grid (4th order:
    ``h/24 (-v[i-1] + 13 v[i] + 13 v[i+1] - v[i+2])``; the two end cells by the trapezoid rule)."""
    v = values
    if v.shape[-1] < 4:
        return 0.5 * step * (v[..., :-1] + v[..., 1:])
    cells = np.empty((*v.shape[:-1], v.shape[-1] - 1))
    inner = cells[..., 1:-1]
    np.negative(v[..., :-3], out=inner)
    inner += 13 * v[..., 1:-2]
    inner += 13 * v[..., 2:-1]
    inner -= v[..., 3:]
    inner *= step / 24
    cells[..., 0] = 0.5 * step * (v[..., 0] + v[..., 1])
    cells[..., -1] = 0.5 * step * (v[..., -2] + v[..., -1])
    return cells


def _cumulate_right(cells: np.ndarray) -> np.ndarray:
    """Running sums of cells from the right, on the grid nodes (0 at the last node)."""
    right = np.zeros((*cells.shape[:-1], cells.shape[-1] + 1))
    np.cumsum(cells[..., ::-1], axis=-1, out=right[..., -2::-1])
    return right


def _cumulate(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(from-the-left, from-the-right) running sums of cells, as arrays on the grid nodes."""
    left = np.zeros((*cells.shape[:-1], cells.shape[-1] + 1))
    np.cumsum(cells, axis=-1, out=left[..., 1:])
    return left, _cumulate_right(cells)


def _tilt_stats(phi: np.ndarray, beta: np.ndarray, grid: Grid) -> tuple[np.ndarray, ...]:
    """(log Z', quadrature weights p, log f, KL) of ``f ∝ exp(phi/beta)`` per row, without cancellation.

    ``g = (phi - max phi)/beta <= 0`` is formed before dividing by beta, so log f = g - log Z'
    stays O(log(1/width)) however large |Phi/beta| is (log Z' is log Z shifted by max(phi)/beta;
    exp(g + log(quadrature weight)) >= e^-(z_max + ...) at the maximum, so the plain sum cannot
    underflow). When range(Phi)/beta < 1 (large beta: KL ~ Var(Phi/beta)/2) the sum would lose
    the KL to rounding; there ``g`` is centred on its reference mean m and
    ``KL = E_f[g - m] - log1p(E_ref[expm1(g - m)])``, each term O(KL).
    """
    log_wq, ref_w = _quadrature_logs(grid.z_max, grid.step)
    finite = bool(np.isfinite(phi).all())
    top = np.max(phi, axis=-1, keepdims=True) if finite else np.max(np.where(np.isfinite(phi), phi, -np.inf),
                                                                    axis=-1, keepdims=True)
    g = phi - top
    g /= beta[:, None]  # <= 0, -inf where phi = -inf
    p = g + log_wq
    np.exp(p, out=p)
    total = p.sum(axis=-1)
    log_z = np.log(total)
    p /= total[:, None]
    log_f = g - log_z[:, None]
    kl = np.einsum("bg,bg->b", p, log_f) if finite else np.sum(np.where(p > 0, p * np.where(p > 0, log_f, 0.0), 0.0),
                                                                  axis=-1)
    if finite:
        small = np.flatnonzero((top[:, 0] - phi.min(axis=-1)) < beta)
        if small.size:  # large beta: expm1 / log1p forms
            gs = g[small]
            d = gs - (gs @ ref_w)[:, None]
            em1 = np.expm1(d)
            mean_em1 = em1 @ ref_w
            kl[small] = ((1.0 + em1) * d) @ ref_w / (1.0 + mean_em1) - np.log1p(mean_em1)
    return log_z, p, log_f, np.maximum(kl, 0.0)


@lru_cache(maxsize=8)
def _quadrature_logs(z_max: float, step: float) -> tuple[np.ndarray, np.ndarray]:
    """(log of the u-measure quadrature weights on the z-grid, the same weights normalised)."""
    _, _, _, _, _, log_jac, w = _grid_arrays(z_max, step)
    log_wq = log_jac + np.log(w)
    ref_w = np.exp(log_wq)
    ref_w /= ref_w.sum()
    log_wq.setflags(write=False), ref_w.setflags(write=False)
    return log_wq, ref_w


def _density_z(phi: np.ndarray, beta: np.ndarray, grid: Grid) -> np.ndarray:
    """f(u) du/dz on the grid nodes per row (the density part of :class:`Tilted`, no running integrals)."""
    return np.exp(_tilt_stats(phi, beta, grid)[2] + grid.arrays[5])


@dataclass
class Tilted:
    """The tilted policies ``f ∝ exp(phi/beta)`` for a batch of rows (phi ``[B, G]``, beta ``[B]``)."""

    phi: np.ndarray
    beta: np.ndarray
    grid: Grid
    log_z: np.ndarray = field(init=False)
    kl: np.ndarray = field(init=False)
    density_z: np.ndarray = field(init=False)  # f(u) * du/dz on the grid; integrates to 1 in z
    cdf: np.ndarray = field(init=False)
    sf: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.beta = np.asarray(self.beta, np.float64)
        self.log_z, p, log_f, self.kl = _tilt_stats(self.phi, self.beta, self.grid)
        self.density_z = log_f + self.grid.arrays[5]
        np.exp(self.density_z, out=self.density_z)
        left, right = _cumulate(_running_integral(self.density_z, self.grid.step))
        total = left[:, -1:].copy()  # a copy: left is divided in place
        left /= total
        right /= total
        self.cdf, self.sf = np.clip(left, 0, 1, out=left), np.clip(right, 0, 1, out=right)
        self._p, self._g = p, log_f

    def subset(self, rows: np.ndarray) -> Tilted:
        """The rows ``rows`` (index or mask) as a Tilted, without recomputation."""
        out = object.__new__(Tilted)
        for k in ("phi", "beta", "log_z", "kl", "density_z", "cdf", "sf", "_p", "_g"):
            setattr(out, k, getattr(self, k)[rows])
        out.grid = self.grid
        return out

    def win_rate(self, procedure: Procedure) -> np.ndarray:
        """W_T(pi > pi_ref) = ∫ (1 - G(F(u))) g(u) du for each row."""
        _, _, _, _, _, log_jac, w = self.grid.arrays
        _, served_sf = procedure.served_cdf(self.cdf, self.sf)
        ref_density_z = np.exp(_reference_log_density(procedure, self.grid) + log_jac)
        return np.clip(np.sum(w * served_sf * ref_density_z, axis=-1), 0.0, 1.0)

    def standard_win_rate(self) -> np.ndarray:
        return self.win_rate(Sample())


def tilt(phi: np.ndarray, beta: float | Sequence[float] | np.ndarray, grid: Grid = DEFAULT_GRID) -> Tilted:
    """Tilted policies for phi ``[G]`` or ``[B, G]`` and beta scalar or ``[B]`` (broadcast)."""
    beta = np.atleast_1d(np.asarray(beta, np.float64))
    if not np.all(np.isfinite(beta)) or np.any(beta <= 0):
        bad = beta[~(np.isfinite(beta) & (beta > 0))][0]
        raise ConfigError("beta", float(bad), "beta > 0 (finite)")
    phi = np.atleast_2d(phi)
    rows = max(len(beta), phi.shape[0])
    return Tilted(np.broadcast_to(phi, (rows, phi.shape[-1])), np.broadcast_to(beta, (rows,)).copy(), grid)


@dataclass
class Point:
    """Theory predictions for one (transform, beta, procedure)."""

    transform: str
    beta: float
    kl: float
    standard_win_rate: float
    win_rate: float
    procedure: str


def evaluate(
    transform: Transform, beta: float | Sequence[float], procedure: Procedure, grid: Grid = DEFAULT_GRID
) -> list[Point]:
    """KL, standard and inference-time win rates of the tilted policy at each beta; NaN at a beta
    whose policy the grid does not resolve (:func:`resolved`: a number there would be the grid's,
    not the policy's)."""
    tilted = tilt(phi_table(transform, grid), beta, grid)
    std, win = tilted.standard_win_rate(), tilted.win_rate(procedure)
    ok = resolved(tilted.phi, tilted.beta, grid)
    kl = np.where(ok, tilted.kl, np.nan)
    std, win = np.where(ok, std, np.nan), np.where(ok, win, np.nan)
    return [
        Point(transform.label, float(b), float(k), float(s), float(w), procedure.label)
        for b, k, s, w in zip(tilted.beta, kl, std, win)
    ]


def density(transform: Transform, beta: float, u: np.ndarray, grid: Grid = DEFAULT_GRID) -> np.ndarray:
    """f(u) = exp(Phi(u)/beta) / Z at arbitrary points ``u`` in [0, 1]: ``exp((Phi(u) - c - top)/beta
    - log Z')`` with :func:`phi_table`'s constant ``c`` and :func:`_tilt_stats`'s shift ``top`` =
    the table's maximum (the ``log Z'`` it returns is shifted by it)."""
    require(beta > 0, "beta", beta, "beta > 0")
    table = phi_table(transform, grid)
    log_z = tilt(table, beta, grid).log_z[0]
    u = np.asarray(u, np.float64)
    return np.exp((phi_values(transform, u, 1.0 - u) - table.max()) / beta - log_z)


def cdf(transform: Transform, beta: float, u: np.ndarray, grid: Grid = DEFAULT_GRID) -> np.ndarray:
    """F(u) at arbitrary points: at grid nodes a 4th-order running integral, ~1e-8 for moderate tilts
    and up to ~1e-6 for steep ones (Exp(-50) at beta = 1e-3: 9.4e-7 against a 4x finer grid),
    linearly interpolated in z = logit(u) between them (~1e-4)."""
    tilted = tilt(phi_table(transform, grid), beta, grid)
    u = np.asarray(u, np.float64)
    with np.errstate(divide="ignore"):
        z = np.log(u) - np.log1p(-u)
    return np.interp(z, grid.z, tilted.cdf[0], left=0.0, right=1.0)


# ----------------------------------------------------------------------------------------------
# Hitting a KL budget: beta by safeguarded Newton in log(1/beta), vectorised over rows.
# ----------------------------------------------------------------------------------------------


def _kl_and_slope(phi: np.ndarray, lam: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(KL, dKL/dlog lam, end-node mass) of ``f ∝ exp(lam * phi)`` per row; the slope is
    Var_f(lam * phi), the end-node mass max(p_first, p_last) of the quadrature weights (what
    :func:`resolved` checks).

    The light-weight part of :class:`Tilted` used inside root finding (no running integrals).
    """
    _, p, log_f, kl = _tilt_stats(phi, 1.0 / np.asarray(lam, np.float64), grid)
    edge = np.maximum(p[:, 0], p[:, -1])
    np.copyto(log_f, 0.0, where=~(p > 0))
    mean = np.sum(p * log_f, axis=-1, keepdims=True)
    log_f -= mean
    np.square(log_f, out=log_f)
    log_f *= p
    return kl, log_f.sum(axis=-1), edge


def phi_range(phi: np.ndarray) -> np.ndarray:
    """max - min of each row of phi over the grid (finite values): the natural scale of beta."""
    finite = np.where(np.isfinite(phi), phi, np.nan)
    return np.nanmax(finite, axis=-1) - np.nanmin(finite, axis=-1)


RESOLUTION_TOL = 1e-4  # |KL(step) - KL(2 step)| / max(KL, KL_FLOOR) above this: the grid does not resolve f
# (halving the step cuts the error >= 4x where f is resolved, so the full-grid KL is then within ~3e-5
# relative -- typically; exp(t=-650) at one budget near KL 0.04 passes at 1.0e-4, checked on 32x finer grids);
# a relative test: an absolute 1e-4 passed 0.1-1 % errors at KL < 0.1 (tests/test_theory_guards.py)
KL_FLOOR = 0.01  # below this KL the tolerance is absolute (1e-6 nats)
# A cliff: the quadrature mass changes by more than CLIFF_NATS between two neighbouring nodes, one of
# which holds more than the KL tolerance (RESOLUTION_TOL * max(KL, KL_FLOOR)). The trapezoid rule
# misplaces part of the mass of the cell the cliff cuts (an O(step) error, of the order of that node's
# mass), and the half-grids can miss it: exp(t=-512), won4, KL 0.3 drops 191 nats in one node next to
# a node of mass 2.9e-3, and all three grids err alike -- KL 0.30000 against 0.300276 on 8x finer grids
# and in mpmath's closed form, the sub-grids within 3e-5 of the full one. A smooth f that the
# half-grids resolve changes by less: a Gaussian of width sigma >= one step changes by 5.3 step/sigma
# <= 5.3 nats out at its 1e-6 point. (Scanned: exp(t), t = -32 ... -700, won4, KL 0.03-3 against 8x
# finer grids, tests/test_theory_guards.py.)
CLIFF_NATS = 10.0
EDGE_MASS = 1e-10  # quadrature mass on an end node of the z-grid above this: f reaches past the grid
SCAN_STEP = 4.0  # spacing in x of beta_search's first scan (KL and slope at each point: the Newton start)
X_LIMIT = 690.0  # |log(range(Phi)/beta)| searched: beta from ~1e-300 to ~1e300 times range(Phi)


def applies(transform: Transform, pooled: bool = False) -> bool:
    """Whether this theory describes KL-RL on ``transform`` of the run's reward: ``Phi`` must act on a
    calibrated reward that is Uniform(0, 1) under pi_ref *within every prompt* (docs/method.md §4).
    Per-prompt C_hat is (up to its 1/K resolution); ``raw`` has no calibrated reward, and pooled
    C_pool (``pooled=True``, docs/method.md (2.4)) is uniform only over all prompts together -- within a prompt it
    can sit anywhere in [0, 1] with any spread -- so neither has a prediction."""
    return bool(transform.calibrated) and not pooled


def resolved(
    phi: np.ndarray, beta: np.ndarray, grid: Grid = DEFAULT_GRID, kl: np.ndarray | None = None,
    edge: np.ndarray | None = None
) -> np.ndarray:
    """``[B]`` bool: is ``f ∝ exp(phi/beta)`` resolved by ``grid``?

    Three checks: the trapezoid KL on every other node -- the even nodes and the odd ones, two grids
    of twice the step -- agrees with the full grid to ``RESOLUTION_TOL`` relative (the rule is
    spectrally accurate once f spans several nodes, so the difference bounds the error; a sharp step
    spanning one or two nodes can fool one sub-grid, rarely both); f has no cliff (:func:`cliff`,
    which fooled both once); and no quadrature mass sits on the first or last node (mass beyond
    ``z_max`` is not represented).
    ``kl`` and ``edge`` (the full grid's KL and end-node mass, :func:`_kl_and_slope`), when the
    caller has them, save recomputing them.
    """
    phi = np.atleast_2d(phi)
    beta = np.broadcast_to(np.atleast_1d(np.asarray(beta, np.float64)), (phi.shape[0],))
    if kl is None or edge is None:
        _, p, _, kl = _tilt_stats(phi, beta, grid)
        edge = np.maximum(p[:, 0], p[:, -1])
    ok = edge < EDGE_MASS
    if grid.cells % 2 or grid.cells < 10:
        raise ValueError(f"theory.Grid(z_max={grid.z_max}, step={grid.step}) has {grid.cells} cells: the resolution "
                         f"check needs an even number >= 10, for half-grids of >= 4 cells (e.g. "
                         f"step={_even_step(grid.z_max, grid.step):.6g})")
    tol = RESOLUTION_TOL * np.maximum(kl, KL_FLOOR)  # the even and the odd half-grids against the full one
    even = _tilt_stats(np.ascontiguousarray(phi[:, ::2]), beta, Grid(grid.z_max, 2 * grid.step))[3]
    odd = _tilt_stats(np.ascontiguousarray(phi[:, 1::2]), beta, Grid(grid.z_max - grid.step, 2 * grid.step))[3]
    ok &= (np.abs(kl - even) <= tol) & (np.abs(kl - odd) <= tol)
    return ok & ~cliff(phi, beta, grid, tol)


def cliff(phi: np.ndarray, beta: np.ndarray, grid: Grid = DEFAULT_GRID, mass: float | np.ndarray = 1e-9) -> np.ndarray:
    """``[B]`` bool: does ``f ∝ exp(phi/beta)`` jump by more than :data:`CLIFF_NATS` between two
    neighbouring nodes of ``grid``, either of which holds more than ``mass`` (per row) of the
    quadrature mass? (log mass of node i: ``(phi_i - max phi)/beta + log w_i - log Z``, w the
    u-measure weight; a node where phi = -inf has none.)"""
    log_wq, _ = _quadrature_logs(grid.z_max, grid.step)
    finite = np.isfinite(phi)
    top = np.max(np.where(finite, phi, -np.inf), axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        log_m = np.where(finite, (phi - top) / beta[:, None], -np.inf) + log_wq
    log_m -= np.logaddexp.reduce(log_m, axis=-1, keepdims=True)
    heavy = np.maximum(log_m[:, :-1], log_m[:, 1:]) > np.log(np.broadcast_to(mass, (phi.shape[0],)))[:, None]
    with np.errstate(invalid="ignore"):
        jump = np.abs(np.diff(log_m, axis=-1)) > CLIFF_NATS  # -inf beside a heavy node: inf, a cliff
    return (heavy & jump).any(axis=-1)


# Why a KL budget has no beta (beta_search's status codes).
REACHED, BEYOND_GRID, BELOW_FLOAT, IMPRECISE = 0, 1, 2, 3
KL_RTOL_REPORTED = 1e-6  # a beta whose KL misses the budget by more (relative) is not returned


def _log_expm1(kl: np.ndarray) -> np.ndarray:
    """``h(KL) = log(e^KL - 1) = KL + log(1 - e^-KL)``: ~log KL for small KL, ~KL for large. The KL
    of a tilt is near-linear in h along x = log(range(Phi)/beta) at both ends (KL ~ e^(2x) at large
    beta, KL ~ x at small beta), which makes h the variable to interpolate and take Newton steps in;
    dh/dKL = 1 / (1 - e^-KL)."""
    with np.errstate(divide="ignore"):
        return kl + np.log(-np.expm1(-kl))


def _hermite_inverse(x0, x1, y0, y1, dxdy0, dxdy1, y) -> np.ndarray:
    """x where y(x), monotone between (x0, y0) and (x1, y1), meets ``y``: the cubic Hermite of x as a
    function of y with end slopes ``dxdy0``, ``dxdy1``; the chord where a slope is not finite or the
    cubic leaves [x0, x1]. Elementwise."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        dy = y1 - y0
        t = np.clip(np.where(np.isfinite((y - y0) / dy), (y - y0) / dy, 0.5), 0, 1)
        chord = x0 + (x1 - x0) * t
        t2, t3 = t * t, t * t * t
        cubic = ((2 * t3 - 3 * t2 + 1) * x0 + (t3 - 2 * t2 + t) * dxdy0 * dy + (-2 * t3 + 3 * t2) * x1
                 + (t3 - t2) * dxdy1 * dy)
    inside = (cubic >= np.minimum(x0, x1)) & (cubic <= np.maximum(x0, x1))
    return np.where(np.isfinite(cubic) & inside, cubic, chord)


def _scan_start(lo, hi, klo, khi, slo, shi, budgets) -> np.ndarray:
    """Newton's start in a bracket ``[lo, hi]`` of x: where h = :func:`_log_expm1` (KL), interpolated
    by a cubic Hermite in x as a function of h (:func:`_hermite_inverse`; ends' slopes
    dx/dh = (1 - e^-KL) / (dKL/dx), ``NaN`` where unknown), meets the budget's h."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return _hermite_inverse(lo, hi, _log_expm1(klo), _log_expm1(khi), -np.expm1(-klo) / slo,
                                -np.expm1(-khi) / shi, _log_expm1(budgets))


def beta_search(
    phi: np.ndarray,
    kl_budgets: np.ndarray,
    grid: Grid = DEFAULT_GRID,
    tol: float = 1e-10,
    max_iter: int = 100,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """beta ``[B]`` with KL(tilt(phi_b, beta_b)) = budget_b, and a status ``[B]`` (REACHED, ...).

    ``phi`` is ``[G]`` or ``[P, G]``; budget b uses row ``rows[b]`` (default: row b, or row 0 when
    phi has one row). Budgets that share a row share its bracketing scan (computed once per row).

    KL increases with x = log(range(Phi)/beta) (slope ``Var_f(Phi/beta)`` >= 0), from 0 at
    beta -> inf to +inf at beta -> 0 for every non-constant bounded Phi (f concentrates on the
    maximiser). So the bracket is widened until it holds the budget -- there is no fixed range --
    and then safeguarded Newton steps on h(KL) = log(e^KL - 1) in x (bisection when they leave the bracket) hit it. The
    only limits are numerical: the z-grid must resolve the tilted policy (:func:`resolved`),
    else status BEYOND_GRID; and beta must stay inside float64 (``|x| <= X_LIMIT``), else
    BELOW_FLOAT (a budget under ~1e-300 nats) or BEYOND_GRID.
    """
    budgets = np.atleast_1d(np.asarray(kl_budgets, np.float64))
    phis = np.atleast_2d(phi)
    if rows is None:
        rows = np.zeros(len(budgets), int) if phis.shape[0] == 1 else np.arange(phis.shape[0])
    rows = np.asarray(rows)
    if rows.shape != budgets.shape:
        raise ValueError(f"{len(budgets)} KL budgets but {phis.shape[0]} rows of phi (and rows={rows.shape})")
    phi_scale = phi_range(phis)
    if np.any(~(phi_scale > 0)):
        raise ConfigError("transform", "constant", "a transform that is not constant on [0, 1]")
    scale = phi_scale[rows]

    def kl_at(r: np.ndarray, x: np.ndarray) -> np.ndarray:
        return _tilt_stats(phis[rows[r]], 1.0 / (np.exp(x) / scale[r]), grid)[3]

    xs = np.arange(-8.0, 41.0, SCAN_STEP)  # beta from e^8 to e^-40 times range(Phi), then widened
    scan = [_kl_and_slope(phis, np.exp(np.full(len(phis), x)) / phi_scale, grid)[:2] for x in xs]  # once per row
    coarse, coarse_slope = (np.stack(v, axis=1)[rows] for v in zip(*scan))
    idx = np.clip((coarse < budgets[:, None]).sum(axis=1), 1, len(xs) - 1)
    rows_b = np.arange(len(budgets))
    lo, hi = xs[idx - 1].copy(), xs[idx].copy()
    klo, khi = coarse[rows_b, idx - 1].copy(), coarse[rows_b, idx].copy()
    slo, shi = coarse_slope[rows_b, idx - 1].copy(), coarse_slope[rows_b, idx].copy()
    width = np.full(len(budgets), 8.0)
    while True:  # widen upwards (smaller beta) while the budget is above the bracket
        up = np.flatnonzero((khi < budgets) & (hi < X_LIMIT))
        if up.size == 0:
            break
        lo[up], klo[up] = hi[up], khi[up]
        hi[up] = np.minimum(hi[up] + width[up], X_LIMIT)
        width[up] *= 2
        khi[up] = kl_at(up, hi[up])
        slo[up] = shi[up] = np.nan
    width[:] = 8.0
    while True:  # and downwards (larger beta) while it is below
        down = np.flatnonzero((klo > budgets) & (lo > -X_LIMIT))
        if down.size == 0:
            break
        hi[down], khi[down] = lo[down], klo[down]
        lo[down] = np.maximum(lo[down] - width[down], -X_LIMIT)
        width[down] *= 2
        klo[down] = kl_at(down, lo[down])
        slo[down] = shi[down] = np.nan
    reachable = (klo <= budgets) & (khi >= budgets)
    x = _scan_start(lo, hi, klo, khi, slo, shi, budgets)
    active = reachable.copy()
    final_kl, final_edge = np.full(len(budgets), np.nan), np.full(len(budgets), np.nan)  # at x where done
    best_x, best_err = x.copy(), np.full(len(budgets), np.inf)  # the closest x seen, for a stalled row
    for _ in range(max_iter):
        if not active.any():
            break
        kl, slope, edge = _kl_and_slope(phis[rows[active]], np.exp(x[active]) / scale[active], grid)
        err = kl - budgets[active]
        done = np.abs(err) <= tol * budgets[active]
        at = np.flatnonzero(active)
        final_kl[at[done]], final_edge[at[done]] = kl[done], edge[done]
        closer = np.abs(err) < best_err[at]
        best_x[at[closer]], best_err[at[closer]] = x[at[closer]], np.abs(err[closer])
        xa, la, ha = x[active], lo[active], hi[active]
        la, ha = np.where(err < 0, xa, la), np.where(err > 0, xa, ha)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # KL = 0: NaN step, bisect
            step = xa - (_log_expm1(kl) - _log_expm1(budgets[active])) * -np.expm1(-kl) / np.maximum(slope, 1e-300)
        xa = np.where(done, xa, np.where((step > la) & (step < ha), step, 0.5 * (la + ha)))
        x[active], lo[active], hi[active] = xa, la, ha
        active[np.flatnonzero(active)[done]] = False
    x = np.where(active, best_x, x)  # Newton stalled on rounding noise (budgets below ~1e-16 nats): the
    beta = scale * np.exp(-x)        # closest point it saw, reported only if within KL_RTOL_REPORTED
    status = np.where(reachable, REACHED, np.where(klo > budgets, BELOW_FLOAT, BEYOND_GRID))
    if active.any():
        miss = np.abs(kl_at(rows_b, x) - budgets) > KL_RTOL_REPORTED * budgets
        status[active & miss] = IMPRECISE
    if reachable.any():
        ok = np.flatnonzero(reachable)
        have = np.isfinite(final_kl[ok]).all()  # every Newton row ended on a converged evaluation
        status[ok[~resolved(phis[rows[ok]], beta[ok], grid, final_kl[ok] if have else None,
                            final_edge[ok] if have else None)]] = BEYOND_GRID
    return np.where(status == REACHED, beta, np.nan), status


def beta_for_kl(
    phi: np.ndarray, kl_budgets: np.ndarray, grid: Grid = DEFAULT_GRID, tol: float = 1e-10, max_iter: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """beta ``[B]`` hitting each KL budget and a reachability mask ``[B]`` (see :func:`beta_search`)."""
    beta, status = beta_search(phi, kl_budgets, grid, tol, max_iter)
    return beta, status == REACHED


def grid_kl_cap(phi: np.ndarray, grid: Grid = DEFAULT_GRID) -> float:
    """The largest KL of ``f ∝ exp(phi/beta)`` that ``grid`` resolves (bisection in log beta), or,
    when the grid still resolves the smallest beta searched (``range(Phi) e^-X_LIMIT``), the KL
    there (:func:`beta_range_limited`)."""
    phi = np.atleast_2d(phi)[:1]
    scale = phi_range(phi)[0]
    lo, hi = -8.0, X_LIMIT  # resolved at lo (f close to the reference)
    if beta_range_limited(phi, grid):
        lo = hi
    for _ in range(40):
        if hi - lo < 1e-3:
            break
        mid = 0.5 * (lo + hi)
        if resolved(phi, np.array([scale * math.exp(-mid)]), grid)[0]:
            lo = mid
        else:
            hi = mid
    return float(_kl_and_slope(phi, np.array([math.exp(lo) / scale]), grid)[0][0])


def beta_range_limited(phi: np.ndarray, grid: Grid = DEFAULT_GRID) -> bool:
    """Whether ``grid`` resolves the tilted policy at the smallest beta the search takes,
    ``range(Phi) e^-X_LIMIT``: larger KLs are then out of the beta range, not of the grid's reach
    (e.g. exp(t = -700) under worst-of-N: its transition sits at u ~ 690/700)."""
    phi = np.atleast_2d(phi)[:1]
    return bool(resolved(phi, np.array([phi_range(phi)[0] * math.exp(-X_LIMIT)]), grid)[0])


def unreachable_reasons(status: np.ndarray, budgets: np.ndarray, phi: np.ndarray, grid: Grid) -> list[str]:
    """The true reason each KL budget has no beta (empty where it has one). A budget beyond the grid
    with a larger budget resolved in the same call, or below the cap, is the grid's *step* (the
    policy changes too steeply there; resolution is not monotone in beta for steep transforms, exp
    with t << 0); one past a cap set by the beta range is the range's, not the grid's."""
    beyond = status == BEYOND_GRID
    cap = grid_kl_cap(phi, grid) if beyond.any() else math.nan
    by_beta = bool(beyond.any()) and beta_range_limited(phi, grid)
    reached = budgets[status == REACHED]
    largest_reached = float(reached.max()) if reached.size else -math.inf

    def beyond_reason(b: float) -> str:
        if b < cap or b < largest_reached:
            return (f"KL budget {b:g} needs a tilted policy that changes too steeply for the z-grid's step "
                    f"at this budget (larger budgets, up to KL ~{max(cap, largest_reached):.4g}, resolve; use a "
                    "theory.Grid with a smaller step)")
        if by_beta:
            return (f"KL budget {b:g} needs beta below the searched range (beta >= range(Phi) x e^-{X_LIMIT:g}, "
                    f"reached KL ~{cap:.4g}): the transform saturates past there")
        return (f"KL budget {b:g} needs a tilted policy narrower than the z-grid resolves (resolved up to KL "
                f"~{cap:.4g}; use a theory.Grid with a larger z_max or a smaller step)")

    return [
        "" if st == REACHED else
        f"KL budget {b:g} is below what float64 resolves (beta would exceed 1e300 x range(Phi))"
        if st == BELOW_FLOAT else
        f"KL budget {b:g} is below the float64 precision of the KL (rounding of Phi/beta)"
        if st == IMPRECISE else beyond_reason(float(b))
        for st, b in zip(status, budgets)
    ]


@dataclass
class Frontier:
    """Win rates of one transform family at a list of KL budgets."""

    transform: str
    procedure: str
    kl_budget: np.ndarray
    beta: np.ndarray
    kl: np.ndarray
    standard_win_rate: np.ndarray
    win_rate: np.ndarray
    reachable: np.ndarray
    reason: list[str]
    converged: np.ndarray | None = None  # False where an iterative solve (optimal transform) did not converge

    def __post_init__(self) -> None:
        if self.converged is None:
            self.converged = np.ones(len(self.kl_budget), bool)

    @property
    def valid(self) -> np.ndarray:
        """Points whose numbers are right: reachable and converged (the only ones to plot)."""
        return np.asarray(self.reachable, bool) & np.asarray(self.converged, bool)

    def rows(self) -> list[dict]:
        keys = ("kl_budget", "beta", "kl", "standard_win_rate", "win_rate", "reachable", "converged")
        return [
            {"transform": self.transform, "procedure": self.procedure, **{k: getattr(self, k)[i].item() for k in keys},
             "reason": self.reason[i]}
            for i in range(len(self.kl_budget))
        ]


def _check_budgets(kl_budgets: Sequence[float]) -> np.ndarray:
    budgets = np.atleast_1d(np.asarray(kl_budgets, np.float64))
    require(budgets.size > 0, "kl_budgets", list(budgets), "a non-empty list of KL budgets > 0")
    bad = budgets[~(np.isfinite(budgets) & (budgets > 0))]
    require(bad.size == 0, "kl_budgets", bad.tolist(), "every KL budget finite and > 0 (nats)")
    return budgets


def _frontier_from_phi(
    name: str, phi: np.ndarray, procedure: Procedure, budgets: np.ndarray, grid: Grid
) -> Frontier:
    beta, status = beta_search(phi, budgets, grid)
    reachable = status == REACHED
    nan = np.full(len(budgets), np.nan)
    kl, std, win = nan.copy(), nan.copy(), nan.copy()
    if reachable.any():
        phi_rows = np.broadcast_to(np.atleast_2d(phi), (len(budgets), grid.z.shape[0]))[reachable]
        tilted = tilt(phi_rows, beta[reachable], grid)
        kl[reachable], std[reachable] = tilted.kl, tilted.standard_win_rate()
        win[reachable] = tilted.win_rate(procedure)
    reason = unreachable_reasons(status, budgets, np.atleast_2d(phi)[:1], grid)
    return Frontier(name, procedure.label, budgets, beta, kl, std, win, reachable, reason)


def frontier(
    transform: Transform, procedure: Procedure, kl_budgets: Sequence[float], grid: Grid = DEFAULT_GRID
) -> Frontier:
    """Win rate of the tilted policy ``pi ∝ pi_ref exp(Phi/beta)`` at each KL budget."""
    return _frontier_from_phi(transform.label, phi_table(transform, grid), procedure, _check_budgets(kl_budgets), grid)


def frontiers(
    transforms: Sequence[Transform], procedure: Procedure, kl_budgets: Sequence[float], grid: Grid = DEFAULT_GRID
) -> list[Frontier]:
    """:func:`frontier` of each transform (one call: what a helper process is handed, by reference)."""
    return [frontier(tr, procedure, kl_budgets, grid) for tr in transforms]


# ----------------------------------------------------------------------------------------------
# Best exponent t for the exp transform.
# ----------------------------------------------------------------------------------------------


@dataclass
class BestT:
    """Best t (and the win rate it reaches) per KL budget; ``table`` holds the whole t scan."""

    kl_budget: np.ndarray
    t: np.ndarray
    beta: np.ndarray
    win_rate: np.ndarray
    ts: np.ndarray
    table: np.ndarray  # [len(ts), len(budgets)] win rates (NaN where unreachable)
    at_edge: np.ndarray | None = None  # True where the best t is the smallest or largest |t| scanned
    flat: np.ndarray | None = None  # True where another scanned t is within FLAT_TOL of the best win rate

    def __post_init__(self) -> None:
        if self.at_edge is None:
            self.at_edge = np.zeros(len(self.kl_budget), bool)
        if self.flat is None:
            self.flat = np.zeros(len(self.kl_budget), bool)


# A best t whose win rate another scanned t matches within this is not determined by the scan: near a
# saturated win rate (1 - 1e-12 at worst-of-32, KL 0.5) every t wins alike and the argmax is float noise.
# The engine's win rates are accurate to ~2.4e-8 absolute for moderate tilts (against mpmath, N up to
# 1024; a uniform policy's best-of-1024 win rate comes out 0.5 - 2.35e-8), but steep ones are off by more:
# 9.5e-8 at worst-of-4, exp(-64 u), KL 0.2 (default grid against a 4x finer one, over t = +-0.25..512,
# N = 2..1024, KL 0.05..32), 1.95e-7 at worst-of-32, exp(-50 u), beta = 1e-3 (against mpmath). Two t
# closer than ~5x the largest are not told apart.
FLAT_TOL = 1e-6


T_SCAN_LIMITS = (1.0 / 64, 512.0)  # how far best_t extends its default |t| scan past [0.25, 64]


def default_t_grid(procedure: Procedure, num: int = 40) -> np.ndarray:
    """Log-spaced |t| in [0.25, 64]; positive for BoN/sampling, negative for WoN."""
    require(isinstance(num, int | np.integer) and num >= 2, "best_t.num", num, "an integer >= 2 (points of the t scan)")
    mags = np.geomspace(0.25, 64.0, num)
    return -mags if procedure.sign < 0 else mags


def _t_scan(procedure: Procedure, budgets: np.ndarray, ts: np.ndarray, normalized: bool, grid: Grid,
            calibration: Mapping | None = None):
    """Win rates and betas ``[len(ts), len(budgets)]`` of exp(t) at each KL budget (one batch), each exp(t) seen
    through ``calibration``'s K-sample table (``Phi_K``, docs/method.md (4.11); None: exact)."""
    from infalign.math.finite_k import seen_through_table  # (finite_k is built on this module)

    phis = np.stack([phi_table(seen_through_table(Exp(float(t), normalized), calibration), grid) for t in ts])  # [T, G]
    nt, nb = len(ts), len(budgets)
    rows = np.repeat(np.arange(nt), nb)
    beta, status = beta_search(phis, np.tile(budgets, nt), grid, rows=rows)
    ok = status == REACHED
    win = np.full(nt * nb, np.nan)
    if ok.any():
        win[ok] = tilt(phis[rows[ok]], beta[ok], grid).win_rate(procedure)
    return win.reshape(nt, nb), beta.reshape(nt, nb)


def _argmax_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of the best t per budget, whether any t reaches it)."""
    any_ok = np.isfinite(table).any(axis=0)
    return np.where(any_ok, np.nanargmax(np.where(np.isfinite(table), table, -np.inf), axis=0), 0), any_ok


def best_t(
    procedure: Procedure,
    kl_budgets: Sequence[float],
    ts: Sequence[float] | None = None,
    normalized: bool = False,
    grid: Grid = DEFAULT_GRID,
    extend: bool | None = None,
    calibration: Mapping | None = None,
) -> BestT:
    """Scan exp(t) transforms over ``ts`` at each KL budget and return the best t per budget.

    ``calibration`` (a ``{K, smoothing}`` mapping, as a run's ``calibration`` node) scans each exp(t) as a run
    trains on it, seen through a K-sample table (``Phi_K``, docs/method.md (4.11)); None: the exact theory.

    The whole (t, budget) scan is solved as one vectorised batch. With ``extend`` (default: when
    ``ts`` is the default grid) a best t at either end of the scan extends it geometrically
    (same ratio) until the best t is interior or |t| reaches ``T_SCAN_LIMITS``; ``at_edge``
    flags budgets whose best t is still the smallest or largest |t| scanned that reaches the budget
    (the optimum may lie beyond, or past t the grid cannot resolve there: never silent), ``flat`` those
    where another scanned t reaches the best win rate within :data:`FLAT_TOL` (the pick is then not
    determined).
    """
    budgets = _check_budgets(kl_budgets)
    extend = ts is None if extend is None else extend
    ts = default_t_grid(procedure) if ts is None else np.asarray(ts, np.float64)
    require(ts.ndim == 1 and ts.size > 0 and np.all(np.isfinite(ts)) and np.all(ts != 0), "t", ts.tolist(),
            "a non-empty list of nonzero exponents")
    table, betas = _t_scan(procedure, budgets, ts, normalized, grid, calibration)
    while extend and len(ts) > 1:
        order = np.argsort(np.abs(ts))
        best, any_ok = _argmax_rows(table)
        lo_edge, hi_edge = any_ok & (best == order[0]), any_ok & (best == order[-1])
        mags = np.abs(ts[order])
        ratio = mags[-1] / mags[-2] if mags[-2] > 0 else 2.0
        new = []
        if hi_edge.any() and mags[-1] < T_SCAN_LIMITS[1]:
            new += [np.copysign(min(mags[-1] * ratio**k, T_SCAN_LIMITS[1]), ts[order[-1]]) for k in (1, 2, 3)]
        if lo_edge.any() and mags[0] > T_SCAN_LIMITS[0]:
            new += [np.copysign(max(mags[0] / ratio**k, T_SCAN_LIMITS[0]), ts[order[0]]) for k in (1, 2, 3)]
        new = np.setdiff1d(np.unique(new), ts)
        if new.size == 0:
            break
        more, more_beta = _t_scan(procedure, budgets, new, normalized, grid, calibration)
        ts, table, betas = np.concatenate([ts, new]), np.concatenate([table, more]), np.concatenate([betas, more_beta])
    best, any_ok = _argmax_rows(table)
    cols = np.arange(len(budgets))
    # an end of the t that reach the budget: a best t whose neighbour beyond is unreachable (NaN) is no interior pick
    mags, reached = np.abs(ts)[:, None], np.isfinite(table)
    lo, hi = np.where(reached, mags, np.inf).min(axis=0), np.where(reached, mags, -np.inf).max(axis=0)
    at_edge = any_ok & ((mags[best, 0] == lo) | (mags[best, 0] == hi)) if len(ts) > 1 else np.zeros(len(budgets), bool)
    top = np.where(any_ok, table[best, cols], np.nan)
    flat = any_ok & ((np.where(np.isfinite(table), table, -np.inf) >= top - FLAT_TOL).sum(axis=0) > 1)
    return BestT(
        budgets,
        np.where(any_ok, ts[best], np.nan),
        np.where(any_ok, betas[best, cols], np.nan),
        top,
        ts,
        table,
        at_edge,
        flat,
    )


# ----------------------------------------------------------------------------------------------
# The optimal transform (docs/method.md §5): Newton iteration on the fixed point, vectorised over betas.
# ----------------------------------------------------------------------------------------------


def _log_map_slope(procedure: Procedure, f: np.ndarray, s: np.ndarray, log_map: np.ndarray) -> np.ndarray:
    """d log G'(F) / dF = G''/G' by a one-sided difference (step 1e-6 min(F, S), relative 1e-6);
    ``log_map`` = log G'(F) at (f, s)."""
    d = 1e-6 * np.minimum(f, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = procedure.log_map_derivative(f + d, s - d) - log_map
        out = np.where(d > 0, diff / np.where(d > 0, d, 1.0), 0.0)
    return np.where(np.isfinite(out), out, 0.0)


@lru_cache(maxsize=32)
def _reference_log_density(procedure: Procedure, grid: Grid) -> np.ndarray:
    """log g(u) on the grid nodes: the served reference reward's density (read-only)."""
    out = procedure.reference_log_density(grid.arrays[3], grid.arrays[4])
    out.setflags(write=False)
    return out


def _fixed_point_map(procedure: Procedure, phi: np.ndarray, beta: np.ndarray, grid: Grid):
    """(tilted policy of phi, T(phi), d(integrand)/dF): one application of the optimality map
    ``T(phi)(u) = ∫_0^u G'(F_phi(v)) g(v) dv`` (stored as T(phi)(u) - T(phi)(1))."""
    tilted = Tilted(phi, beta, grid)
    log_map = procedure.log_map_derivative(tilted.cdf, tilted.sf)
    integrand = log_map + _reference_log_density(procedure, grid)
    integrand += grid.arrays[5]  # du/dz
    np.exp(integrand, out=integrand)
    new_phi = _cumulate_right(_running_integral(integrand, grid.step))
    np.negative(new_phi, out=new_phi)
    integrand *= _log_map_slope(procedure, tilted.cdf, tilted.sf, log_map)
    return tilted, new_phi, integrand


def _newton_step(
    residual: np.ndarray, tilted: Tilted, dintegrand: np.ndarray, grid: Grid, extra: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Newton step delta for ``R(phi) = T(phi) - phi = 0``, one row at a time; with ``extra``
    (``[k, rows, G]``) also the solutions of ``(I - J) x = extra_j`` (J the same linearised dT/dphi)
    from the same factorisation. Returns (delta, those solutions or None).

    Linearised with trapezoid cells (the map itself uses 4th-order cells, so this is a
    quasi-Newton step converging linearly at rate ~step^2): with e = f du/dz, L = running
    integral of e, F = L / L_end,

        dL_{i+1} - dL_i = h/2 (e_i delta_i + e_{i+1} delta_{i+1}) / beta,        dL_0 = 0,
        (delta_i - R_i) - (delta_{i+1} - R_{i+1}) = -h/2 (q_i dF_i + q_{i+1} dF_{i+1}),  delta_end = R_end,

    with dF = dL - F dL_end and q = G''(F) g du/dz. Unknowns interleaved (delta_i, dL_i) give a
    banded system of half-bandwidth 2; the one non-local unknown dL_end is eliminated by
    solving for two right-hand sides.

    Where h/2 e and h/2 |q| are below ``NEWTON_TAIL`` on every row (the z-grid's tails, often more
    than half of it) the equations decouple: dL stays 0 on the left and delta - R stays 0 on the
    right, so the system is solved on the window between the tails (its first node's dL = 0, its
    last node's delta = R, as at the grid's ends) and extended by delta - R constant to the left,
    delta = R to the right. The terms dropped are below 1e-18 against entries of 1: the step is
    the same to rounding.
    """
    h, n = grid.step, residual.shape[1]
    e, q = tilted.density_z / tilted.beta[:, None], dintegrand
    rights = [residual] if extra is None else [residual, *extra]  # residual-like right-hand sides
    big = np.flatnonzero(((h / 2 * e > NEWTON_TAIL) | (h / 2 * np.abs(q) > NEWTON_TAIL)).any(axis=0))
    lo, hi = (max(int(big[0]) - 1, 0), min(int(big[-1]) + 1, n - 1)) if big.size else (0, n - 1)
    win = slice(lo, hi + 1)
    inside = _newton_banded(e[:, win], q[:, win], tilted.cdf[:, win], [r[:, win] for r in rights], h)
    out = []
    for r, x in zip(rights, inside):
        full = r.copy()  # right of the window: delta = R
        full[:, win] = x
        full[:, :lo] += (x[:, :1] - r[:, lo:lo + 1])  # left of it: delta - R = its value at the window's start
        out.append(full)
    return out[0], (np.stack(out[1:]) if extra is not None else None)


NEWTON_TAIL = 1e-18  # h/2 e and h/2 |q| below this on every row: the Newton system decouples there


def _newton_banded(e: np.ndarray, q: np.ndarray, f: np.ndarray, rights: list[np.ndarray], h: float) -> list[np.ndarray]:
    """The banded solve of :func:`_newton_step` on ``[rows, n]`` nodes, one solution per right-hand side."""
    from scipy.linalg import lapack

    rows, n = e.shape
    # LAPACK band storage (gbsv, kl = ku = 2): matrix entry (r, c) at band[c, 4 + r - c]; rows 0-1 of
    # each column are gbsv's room for fill-in. band is [rows, 2n, 7] so that, flattened over the
    # (decoupled) rows, its transpose is the Fortran-ordered [7, rows * 2n] array gbsv works in.
    band = np.zeros((rows, 2 * n, 7))
    band[:, 1::2, 3] = 1.0  # dL_0 = 0 (row 0); + dL_{i+1} in the L-rows 2i + 2
    band[:, 1:-1:2, 5] = -1.0  # - dL_i in the L-rows
    band[:, 0:-2:2, 6] = -h / 2 * e[:, :-1]  # - h/2 e_i delta_i
    band[:, 2::2, 4] = -h / 2 * e[:, 1:]  # - h/2 e_{i+1} delta_{i+1}
    band[:, 0::2, 5] = 1.0  # + delta_i in the P-rows 2i + 1; last row (2n - 1): delta_end = R_end
    band[:, 2::2, 3] = -1.0  # - delta_{i+1}
    band[:, 1:-1:2, 4] = h / 2 * q[:, :-1]  # + h/2 q_i dL_i
    band[:, 3::2, 2] = h / 2 * q[:, 1:]  # + h/2 q_{i+1} dL_{i+1}
    rhs = np.zeros((len(rights) + 1, rows, 2 * n))
    rhs[-1, :, 1:-1:2] = h / 2 * (q[:, :-1] * f[:, :-1] + q[:, 1:] * f[:, 1:])  # coefficient of dL_end
    for j, r in enumerate(rights):
        rhs[j, :, 1:-1:2] = r[:, :-1] - r[:, 1:]
        rhs[j, :, -1] = r[:, -1]
    # the rows' systems are decoupled: stacked block-diagonally they form one banded system
    _, _, x, info = lapack.dgbsv(2, 2, band.reshape(rows * 2 * n, 7).T, rhs.reshape(len(rhs), rows * 2 * n).T,
                                 overwrite_ab=1, overwrite_b=1)
    if info > 0:
        raise np.linalg.LinAlgError("singular matrix")
    if info < 0:
        raise ValueError(f"illegal value in argument {-info} of gbsv")
    sol = x.T.reshape(len(rhs), rows, 2 * n)
    d_end = sol[:-1, :, -1] / (1.0 - sol[-1, :, -1])  # dL_end of each right-hand side
    return list((sol[:-1] + d_end[:, :, None] * sol[-1])[:, :, 0::2])


MAX_LOG_DENSITY_STEP = 2.0  # Newton steps are shortened so log f moves by at most this much


def _optimal_phi(
    procedure: Procedure,
    beta: np.ndarray,
    grid: Grid,
    tol: float | np.ndarray = 1e-10,
    max_iter: int = 80,
    phi0: np.ndarray | None = None,
    fallback: np.ndarray | None = None,
    tangent: np.ndarray | None = None,
) -> tuple[np.ndarray, int, np.ndarray]:
    """Solve ``Phi = ∫_0^u G'(F_Phi(v)) g(v) dv`` for each beta (rows); return (phi, iters, tv).

    Phi is stored as Phi(u) - Phi(1) (accumulated from the top, exact near u = 1). The plain
    (damped) iteration stalls for small beta, where the map's Jacobian grows like 1/beta; this
    takes Newton steps (:func:`_newton_step`), each shortened so that log f = Phi/beta moves by
    at most ``MAX_LOG_DENSITY_STEP``. Start from ``phi0`` (warm start) or the identity; a row
    whose first step from ``phi0`` has to be shortened (``phi0`` is far from the fixed point
    somewhere, if only where f is negligible) restarts from its row of ``fallback`` instead.
    Convergence: total-variation distance between f and f_new = f_T(Phi) below ``tol``; rows
    that do not get there return their TV (callers report them as not converged).

    ``tangent`` (``[rows, G]``, filled in place for every row that takes a Newton step): w with
    ``(I - J) w = -phi`` at the row's last stepped iterate, from the step's own factorisation.
    Differentiating Phi = T(Phi) (T depends on Phi/beta only) in log beta gives
    ``dPhi*/dlog beta = Phi* + w``, i.e. ``d(Phi*/beta)/dlog beta = w / beta``: the optimal
    frontier's first-order predictor and exact KL slope (:func:`_tangent_kl_slope`).
    """
    _, _, s, *_ = grid.arrays
    w = grid.arrays[6]
    beta = np.atleast_1d(np.asarray(beta, np.float64))
    tol = np.broadcast_to(np.asarray(tol, np.float64), beta.shape)
    phi = np.array(np.broadcast_to(-s if phi0 is None else phi0, (len(beta), len(s))), dtype=np.float64)
    tv = np.full(len(beta), np.inf)
    active = np.arange(len(beta))
    for it in range(1, max_iter + 1):
        b = beta[active]
        tilted, new_phi, dintegrand = _fixed_point_map(procedure, phi[active], b, grid)
        tv[active] = np.sum(w * np.abs(_density_z(new_phi, b, grid) - tilted.density_z), axis=-1)
        done = tv[active] < tol[active]
        phi[active[done]] = new_phi[done]
        keep = ~done
        if keep.any():
            rows = active[keep]
            try:
                step, tan = _newton_step(new_phi[keep] - phi[rows], tilted.subset(keep), dintegrand[keep], grid,
                                         None if tangent is None else -phi[rows][None])
            except np.linalg.LinAlgError:  # a singular linearisation: stop, report these rows unconverged
                return phi, it, tv
            if tangent is not None:
                tangent[rows] = tan[0]
            move = np.max(np.abs(step - step[:, -1:]), axis=-1) / b[keep]
            shrink = np.minimum(1.0, MAX_LOG_DENSITY_STEP / np.maximum(move, 1e-300))
            phi[active[keep]] += shrink[:, None] * step
            if it == 1 and fallback is not None:
                far = active[keep][shrink < 1.0]
                phi[far] = fallback[far]
        active = active[keep]
        if active.size == 0:
            return phi, it, tv
    return phi, max_iter, tv


@lru_cache(maxsize=64)
def _optimal_cached(name: str, n: int, beta: float, grid: Grid) -> tuple[np.ndarray, int, np.ndarray]:
    """Continuation from beta = 10 N (near the identity start) down to ``beta`` in half decades,
    each Newton solve warm-started from the last (a cold Newton start far from Phi* can stall)."""
    procedure = make_procedure(name, n)
    lbs = np.arange(math.log(10.0 * n), math.log(beta), -LADDER_STEP)
    phi, total = None, 0
    for lb in [*lbs, math.log(beta)]:
        phi, iters, tv = _optimal_phi(procedure, np.array([math.exp(lb)]), grid, phi0=phi)
        total += iters
    return phi, total, tv


def optimal_transform(
    procedure: Procedure | str = "bon", n: int | None = None, beta: float = 0.1, grid: Grid = DEFAULT_GRID
) -> Tabulated:
    """The optimal transform Phi* for ``procedure`` (N) at ``beta``, tabulated on the z-grid.

    BoN: ``Phi*(u) = N^2 ∫_0^u F*(v)^(N-1) v^(N-1) dv``; WoN: ``N^2 ∫_0^u (1-F*)^(N-1)(1-v)^(N-1)``;
    sampling: the identity. Cached per (procedure, N, beta, grid) for the process.
    """
    if isinstance(procedure, str):
        procedure = make_procedure(procedure, n if n is not None else 1)
    require(isinstance(beta, int | float) and math.isfinite(beta) and beta > 0, "beta", beta, "beta > 0 (finite)")
    phi, iters, tv = _optimal_cached(procedure.name, procedure.n, float(beta), grid)
    if tv[0] > 1e-8:
        raise RuntimeError(f"optimal transform did not converge ({procedure.label}, beta={beta}): TV {tv[0]:.2e}")
    table = Tabulated(grid.z, phi[0].copy(), name=f"optimal({procedure.label})")  # the cache's own stays intact
    table.iterations, table.beta, table.procedure = iters, float(beta), procedure.label
    return table


OPTIMAL_TV_TOL = 1e-8  # fixed-point TV above this: the optimal point is reported as not converged
LADDER_STEP = math.log(10.0) / 2  # the optimal frontier's coarse beta ladder: half a decade per step


def _tangent_log_kl_slope(phi: np.ndarray, tangent: np.ndarray, beta: np.ndarray, grid: Grid):
    """(KL, d log KL / d log beta) of optimal solutions ``phi`` at ``beta`` with their tangents w
    (:func:`_optimal_phi`): with P = Phi*/beta, d log f = dP - E_f[dP] and E_f[d log f] = 0, so

        dKL/dlog beta = E_f[log f  d log f / dlog beta] = Cov_f(P, w / beta) = Cov_f(Phi*, w) / beta^2

    (NaN where a row has no tangent)."""
    _, p, _, kl = _tilt_stats(phi, beta, grid)
    with np.errstate(invalid="ignore"):
        dphi = phi - np.einsum("bg,bg->b", p, phi)[:, None]
        dw = tangent - np.einsum("bg,bg->b", p, tangent)[:, None]
        cov = np.einsum("bg,bg->b", p * dphi, dw)
        return kl, cov / beta**2 / np.maximum(kl, 1e-300)


def _optimal_ladder(procedure: Procedure, kl_lo: float, kl_hi: float, grid: Grid):
    """Optimal solutions on a log-beta ladder spanning KL from below ``kl_lo`` to above ``kl_hi``.

    Starts at beta = 10 N (KL ~ 1e-4: Phi* has range <= N) and walks down half a decade at a
    time, each solve warm-started from the previous one's log density (its Phi scaled by the ratio
    of betas; its Phi itself where that start is far off), until the KL passes ``kl_hi``, the
    z-grid stops resolving the policy, or a solve fails; walks up first if ``kl_lo`` is smaller.
    Returns (log betas, KLs, phis, tangents) sorted by decreasing beta (tangents: w of
    :func:`_optimal_phi`, NaN for a rung that took no Newton step).
    """
    lbs, phis, tans = [], [], []

    def solve(lb: float, near: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        tan = np.full((1, len(grid.z)), np.nan)
        start = None
        if near is not None:  # the neighbour moved along its tangent (first order), else its log density
            d = lb - lbs[near]
            start = math.exp(d) * (phis[near] + d * tans[near] if np.isfinite(tans[near]).all() else phis[near])
        phi, _, tv = _optimal_phi(procedure, np.array([math.exp(lb)]), grid, phi0=start,
                                  fallback=None if near is None else phis[near][None], tangent=tan)
        return phi, tv, tan

    lb = math.log(10.0 * max(procedure.n, 1))
    phi, tv, tan = solve(lb, None)
    lbs.append(lb), phis.append(phi[0]), tans.append(tan[0])
    kl_first = kl_last = Tilted(phi, np.array([math.exp(lb)]), grid).kl[0]
    while kl_first > kl_lo and lbs[0] < 690:  # upwards: smaller KL
        lb = lbs[0] + 2 * LADDER_STEP
        phi, tv, tan = solve(lb, 0)
        lbs.insert(0, lb), phis.insert(0, phi[0]), tans.insert(0, tan[0])
        kl_first = Tilted(phi, np.array([math.exp(lb)]), grid).kl[0]
    while kl_last < kl_hi and lbs[-1] > -690:  # downwards: larger KL
        lb = lbs[-1] - LADDER_STEP
        phi, tv, tan = solve(lb, -1)
        if tv[0] > OPTIMAL_TV_TOL or not resolved(phi, np.array([math.exp(lb)]), grid)[0]:
            break
        lbs.append(lb), phis.append(phi[0]), tans.append(tan[0])
        kl_last = Tilted(phi, np.array([math.exp(lb)]), grid).kl[0]
    lbs, phis, tans = np.array(lbs), np.stack(phis), np.stack(tans)
    kls = Tilted(phis, np.exp(lbs), grid).kl
    return lbs, kls, phis, tans


def _ladder_start(lbs: np.ndarray, phis: np.ndarray, lb: np.ndarray, tangents: np.ndarray | None = None) -> np.ndarray:
    """Warm starts ``[len(lb), G]`` at log betas ``lb`` from the ladder (``lbs`` decreasing): the
    log densities P = Phi/beta of the two neighbouring rungs, interpolated linearly in log beta,

        Phi_0 = beta ((1 - w) Phi_k / beta_k + w Phi_{k+1} / beta_{k+1}),   w = (lb - lb_k) / (lb_{k+1} - lb_k),

    or, with the rungs' ``tangents`` (w_k of :func:`_optimal_phi`: dP/dlog beta = w_k / beta_k), by
    the cubic Hermite in log beta through (P_k, w_k / beta_k) and (P_{k+1}, w_{k+1} / beta_{k+1})
    where both tangents are finite. Closer to Phi*(beta) in TV than either rung, since the policy,
    not Phi, varies slowly with beta."""
    if len(lbs) == 1:
        return phis[0] * np.exp(lb - lbs[0])[:, None]
    k = np.clip(np.searchsorted(-lbs, -lb, side="right") - 1, 0, len(lbs) - 2)
    w = np.clip((lb - lbs[k]) / (lbs[k + 1] - lbs[k]), 0.0, 1.0)[:, None]
    beta = np.exp(lbs)[:, None]
    p0, p1 = phis[k] / beta[k], phis[k + 1] / beta[k + 1]
    out = (1.0 - w) * p0 + w * p1
    if tangents is not None:
        span = (lbs[k + 1] - lbs[k])[:, None]
        d0, d1 = tangents[k] / beta[k] * span, tangents[k + 1] / beta[k + 1] * span  # dP/dw at the rungs
        both = np.isfinite(d0).all(axis=1) & np.isfinite(d1).all(axis=1)
        w2, w3 = w * w, w * w * w
        cubic = (2 * w3 - 3 * w2 + 1) * p0 + (w3 - 2 * w2 + w) * d0 + (-2 * w3 + 3 * w2) * p1 + (w3 - w2) * d1
        out[both] = cubic[both]
    return np.exp(lb)[:, None] * out


def optimal_frontier(
    procedure: Procedure, kl_budgets: Sequence[float], grid: Grid = DEFAULT_GRID, tol: float = 1e-9
) -> Frontier:
    """Win rate of the optimal transform at each KL budget (each budget has its own beta and Phi*).

    The optimal policy's KL increases with 1/beta. A ladder of warm-started Newton solves
    (:func:`_optimal_ladder`, each with its tangent d(Phi*/beta)/dlog beta) brackets the budgets;
    each budget then starts at the log beta where log KL, a cubic Hermite in log beta between
    the two rungs around it (their slopes from the tangents, :func:`_tangent_log_kl_slope`),
    meets it, from the rungs' log densities interpolated there (:func:`_ladder_start`), and takes
    Newton steps on log KL in log beta (slope from the tangent; secant or the ladder's where a
    row has none), each a batched Newton solve started from the previous solution moved along
    its tangent, until its KL is within ``tol`` (relative) of the budget. A point is
    ``converged`` only if the fixed point's TV is below ``OPTIMAL_TV_TOL`` and its KL within
    1e-6 (relative) of the budget; budgets past the largest KL the z-grid resolves are unreachable.
    """
    budgets = _check_budgets(kl_budgets)
    lbs, kls, phis, tans = _optimal_ladder(procedure, float(budgets.min()), float(budgets.max()), grid)
    reachable = (budgets >= kls[0]) & (budgets <= kls[-1])
    ok = np.flatnonzero(reachable)
    nb = len(budgets)
    beta, kl, std, win = (np.full(nb, np.nan) for _ in range(4))
    converged = np.zeros(nb, bool)
    if ok.size:
        target = budgets[ok]
        log_kls = np.log(np.maximum(kls, 1e-300))  # KL ~ a power of beta: log KL is near-linear in log beta
        exact = _tangent_log_kl_slope(phis, tans, np.exp(lbs), grid)[1]  # d log KL / d log beta at the rungs
        slope_ladder = np.gradient(log_kls, lbs) if len(lbs) > 1 else np.full(1, -1.0)
        slope_ladder = np.where(exact < 0, exact, slope_ladder)
        lb = np.interp(np.log(target), log_kls, lbs)  # kls increasing along the ladder
        if len(lbs) > 1:  # the cubic through the two rungs around each budget, with their slopes
            k = np.clip(np.searchsorted(log_kls, np.log(target)) - 1, 0, len(lbs) - 2)
            lb = _hermite_inverse(lbs[k], lbs[k + 1], log_kls[k], log_kls[k + 1], 1 / slope_ladder[k],
                                  1 / slope_ladder[k + 1], np.log(target))
        phi, fallback = _ladder_start(lbs, phis, lb, tans), phis[np.abs(lbs[None, :] - lb[:, None]).argmin(axis=1)]
        prev_lb, prev_kl = np.full(len(ok), np.nan), np.full(len(ok), np.nan)  # prev_kl: log KL
        tv, cur_kl = np.full(len(ok), np.inf), np.full(len(ok), np.nan)
        tangent = np.full(phi.shape, np.nan)  # w of each row (_optimal_phi), from its latest Newton step
        todo = np.arange(len(ok))
        loose = np.ones(len(ok), bool)  # inexact Newton: TV 1e-7 while the KL is far from its budget
        for _ in range(30):  # Newton (or secant) steps in log beta, each a warm-started batched solve
            if todo.size == 0:
                break
            tols = np.where(loose[todo], 1e-7, 1e-10)
            moved = todo[np.isfinite(prev_lb[todo])]  # start from the last solution, moved along its tangent
            fallback[moved] = phi[moved]
            d = (lb[moved] - prev_lb[moved])[:, None]
            w = tangent[moved]
            phi[moved] = np.exp(d) * np.where(np.isfinite(w).all(axis=1, keepdims=True), phi[moved] + d * w, phi[moved])
            tan = tangent[todo]
            phi[todo], _, tv[todo] = _optimal_phi(procedure, np.exp(lb[todo]), grid, tol=tols, phi0=phi[todo],
                                                  fallback=fallback[todo], tangent=tan)
            tangent[todo] = tan
            cur_kl[todo], exact = _tangent_log_kl_slope(phi[todo], tan, np.exp(lb[todo]), grid)
            log_kl = np.log(np.maximum(cur_kl[todo], 1e-300))
            err = log_kl - np.log(target[todo])
            dlb = lb[todo] - prev_lb[todo]
            secant = (log_kl - prev_kl[todo]) / np.where(np.abs(dlb) > 1e-12, dlb, np.nan)
            slope = np.where(exact < 0, exact,
                             np.where(secant < 0, secant, np.interp(lb[todo], lbs[::-1], slope_ladder[::-1])))
            prev_lb[todo], prev_kl[todo] = lb[todo], log_kl
            off = np.abs(cur_kl[todo] - target[todo]) > tol * target[todo]
            unfinished = (off | loose[todo]) & (tv[todo] < 1e-6)  # rows whose solve failed stop here
            step = np.clip(-err / np.minimum(slope, -1e-12), -LADDER_STEP, LADDER_STEP)
            lb[todo] = np.where(off, lb[todo] + step, lb[todo])
            loose[todo] &= np.abs(cur_kl[todo] - target[todo]) > 1e-4 * target[todo]
            todo = todo[unfinished]
        lb = prev_lb
        tilted = Tilted(phi, np.exp(lb), grid)
        beta[ok], kl[ok] = np.exp(lb), tilted.kl
        std[ok], win[ok] = tilted.standard_win_rate(), tilted.win_rate(procedure)
        converged[ok] = (tv < OPTIMAL_TV_TOL) & (np.abs(tilted.kl - target) <= 1e-6 * target)
    cap = kls[-1]
    reason = ["" if r else
              f"KL budget {b:g} is below the optimal transform's KL {kls[0]:.3g} at beta={math.exp(lbs[0]):.3g}"
              if b < kls[0] else
              f"KL budget {b:g} is past the largest KL ({cap:.4g}) at which the optimal fixed point converged "
              "and the z-grid resolves it"
              for r, b in zip(reachable, budgets)]
    return Frontier(f"optimal({procedure.label})", procedure.label, budgets, beta, kl, std, win, reachable, reason,
                    converged)


def bon_policy_point(n: int) -> Point:
    """The best-of-N policy itself: density N u^(N-1) = log transform at beta = 1/(N-1).

    Closed forms: KL = log N - (N-1)/N, standard win rate N/(N+1).
    """
    require(isinstance(n, int) and n >= 2, "procedure.n", n, "N >= 2 for the best-of-N policy point")
    from infalign.math.transforms import Log

    return evaluate(Log(floor=0.0), 1.0 / (n - 1), make_procedure("bon", n))[0]
