"""Methods compared at matched KL, with paired bootstrap CIs over shared prompts (pure numpy).

Every run ``r`` (one trained policy: a method, a seed, a beta) is evaluated on the same ``P``
held-out prompts and records, per prompt ``p``, its KL ``k_rp`` and a win rate ``w_rp`` (standard
or inference-time at some N). Its point on the win-rate-vs-KL plane is the pair of prompt means

    K_r = (1/P) sum_p k_rp,        W_r = (1/P) sum_p w_rp.

**Curves.** Per method ``m`` and seed ``s`` the curve ``f_ms(k)`` is the piecewise-linear
interpolant through the points ``(K_r, W_r)`` of its runs sorted by ``K_r`` (runs at the same ``K``
are averaged). Piecewise-linear interpolation is monotone-preserving (monotone data give a monotone
curve, it never overshoots the data) and is exact on linear data. It is defined only on
``[min_r K_r, max_r K_r]``: a point estimate is never extrapolated (bootstrap resamples continue
a curve's end segments a little, see below). A method's curve is the mean over its
seeds, ``f_m(k) = mean_s f_ms(k)``.

**Common KL grid.** ``num_kl`` equally spaced KLs spanning ``[max_c lo_c, min_c hi_c]``, the
intersection of the ranges of every compared curve ``c = (m, s)``; a method without a KL in common with
the others is left out of the panel, named in ``note`` (:func:`common_methods`). No common KL at all is a
result (``MatchedKL.common`` is False, ``note`` says why), not an error.

**Gains.** Against a baseline ``b``: ``g_m(k) = f_m(k) - f_b(k)``.

**Paired bootstrap.** One ``[B, P]`` count matrix ``C`` (row ``b`` counts how often each prompt is
drawn in resample ``b``; rows sum to ``P``) is shared by every run, so the resampled points are
``K*_br = (C k_r)_b / P`` and ``W*_br = (C w_r)_b / P`` -- one matrix product for all runs and all
resamples. Every curve is rebuilt from its resampled points and re-evaluated on the (fixed) grid,
vectorised over ``b``; runs of one curve at the same ``K_r`` are averaged within each resample,
as in the point estimate. Because a resample moves a curve's end points, a grid KL can fall just outside
a resampled curve's range (by about the KL's own CI); there the resampled curve is continued from its
end point with the *measured* curve's end slope (over at least :data:`MIN_SLOPE_RUN` of the curve's KL
span: the end segment unless two runs nearly tie), which is exact for locally linear curves (holding the
end value instead would bias every resample with a moved end towards it). Not with the resample's own
end slope: two runs close in KL (a KL knob's two smallest settings) can land on almost the same KL in
a resample, and continuing that near-vertical segment read win rates far outside [0, 1], which
widened the prompt CI and blew up the bootstrap sd behind the total interval (``se_prompt`` below;
tests/test_matched_kl.py). Only resamples do this: the point estimates, and so the grid, never leave
a curve's measured range. A continued value is held in [0, 1] (it is a win rate); and a curve whose
runs lie closer together in KL than the KL's own interval is wide (runs that barely moved, a knob
whose settings land on one KL) is named in ``note`` as "KL not resolved": its resamples are then mostly
continuation, and its intervals say little about the method (:func:`_unresolved_kl`).
Percentile intervals: the ``(1-level)/2`` and ``(1+level)/2`` quantiles over ``b``. Sharing ``C``
makes per-prompt difficulty cancel in gains; ``paired=False`` draws an independent ``C`` per method
(for comparison only: it ignores that the methods were judged on the same prompts).

**Seeds.** The prompt bootstrap holds the trained policies fixed; training noise shows across
seeds. The gain also gets a seed interval (``seed_test`` says which):

* ``paired``: ``m`` and ``b`` have the same ``S >= 2`` seeds. Per-seed gains
  ``g_ms(k) = f_ms(k) - f_bs(k)``, ``seed_spread(k) = std_s g_ms(k)`` (ddof 1), and the Student-t
  interval of their mean ``g_m(k) +- t_{(1+level)/2, S-1} seed_spread(k) / sqrt(S)`` (with 3 seeds
  ``t = 4.30``: a gain needs about 2.5 seed spreads to clear it).
* ``welch``: different seed sets (a failed job, an extra seed), ``S_m, S_b >= 2``: the two-sample
  interval ``g_m(k) +- t_{(1+level)/2, nu} sqrt(v_m/S_m + v_b/S_b)`` with ``v = var_s f_.s(k)``
  (ddof 1) and Welch-Satterthwaite ``nu = (v_m/S_m + v_b/S_b)^2 / ((v_m/S_m)^2/(S_m-1) +
  (v_b/S_b)^2/(S_b-1))``; ``seed_spread = sqrt(v_m + v_b)``, the spread of one seed's gain.
* ``pooled``: one side has a single seed, the other ``S >= 2``: its variance stands for both
  (equal-variance two-sample t): ``g_m(k) +- t_{(1+level)/2, S_m+S_b-2} sqrt(v (1/S_m + 1/S_b))``
  with ``v = ((S_m-1) v_m + (S_b-1) v_b) / (S_m+S_b-2)``; ``seed_spread = sqrt(2 v)``. (Holding the
  single seed's curve fixed would ignore that it, too, is one draw of the training noise.) The interval
  assumes both methods train equally noisily, which one seed cannot show: it is reported, but gives **no
  verdict** (:func:`gives_verdict`) -- a method training 2x (3x) noisier than a 3-seed baseline had its
  no-gain A/A comparison called significant 12 % (21 %) of the time (a statistics review's Monte Carlo).
* ``none``: one seed on each side: no seed interval (NaN), and no verdict (below).

**Total interval.** Each interval leaves out one source of noise: the prompt bootstrap holds the
trained policies fixed (training noise), the seed interval holds the prompts fixed (all seeds share
them: which prompts were drawn). With per-prompt effects that vary, requiring both to exclude 0 is
not a level-``level`` test once there are many seeds. The gain's standard error is therefore built
from both,

    se_total^2 = se_prompt^2 + se_seed^2,    se_prompt = std_b(gain*_b),   se_seed = the seed
    interval's standard error (paired: seed_spread / sqrt(S); welch / pooled as above),

with Welch-Satterthwaite degrees of freedom ``nu = se_total^4 / (se_seed^4 / df_seed + se_prompt^4 /
(P - 1))``, and the interval ``gain +- t_{(1+level)/2, nu} se_total`` (``total_low``, ``total_high``).
Under ``g_sp = mu + tau_p + eps_s + eta_sp`` (prompt effect, training noise, evaluation noise) the
sum estimates ``Var tau / P + Var eps / S + 2 Var eta / (S P)``: the evaluation noise is counted
twice. With 2-3 seeds the interval is nevertheless short of its level (``nu`` takes the 1-2-df seed
variance as known: 87-94 % coverage in a simulation, docs/method.md (10.5)); the verdict also needs the
seed interval, which holds it.

**Significance.** A gain is significant where its estimate, its prompt-bootstrap CI, its seed
interval and its total interval all lie on the same side of 0 (by more than :data:`ZERO_TOL`, the
float rounding of a mean of win rates, so methods with identical data never differ): each interval
is a test of "no gain" under its own approximation, and the verdict asks all of them (an
intersection-union rule: never more often significant than the strictest). The total interval's
Satterthwaite degrees of freedom exceed the seeds' ``S - 1``, so with few seeds it can be the
narrower of the two -- then the seed interval decides, as before the total interval existed; with many
seeds and per-prompt effects the total interval is the one that holds the level. The sign agreement
matters at a curve's kink: a percentile interval can exclude its own estimate there (every resample
reads a peak lower), and a verdict must not contradict its own interval. ``prompt_significant`` is the part the prompt
bootstrap alone decides (estimate and prompt CI on one side); with one seed on either side
(``seed_test`` none or pooled) it is all that is judged, and ``significant`` is False: training noise is not
assessed, and in an A/A comparison of two trainings a prompt-only test called 40 % of the gains
significant in the test's simulation (tests/test_matched_kl.py; the share grows with training noise
against prompt noise). With 3 paired seeds ``t_{0.975, 2} = 4.30``: a gain needs about 2.5 seed
spreads to clear the seed interval.

**Interpolation check.** Each curve is a chord between its runs' KLs, and a chord under a curve
that bends (win rate vs KL is concave: it rises, then flattens or falls) lies below it, so two
methods measured at different KLs differ by their chords alone. A gain's ``chord_low`` /
``chord_high`` bound what the chords make when both methods share one true curve ``h``: with
``c_X[h]`` the chord of ``h`` through the KLs ``X``,

    e(k) = c_{X_m}[h](k) - c_{X_b}[h](k),

estimated twice -- ``h = f_m`` (the method's curve read at the baseline's KLs: ``f_m - c_{X_b}[f_m]``)
and ``h = f_b`` (``c_{X_m}[f_b] - f_b``) -- per seed (the common seeds, or every pair when the seed
sets differ), averaged over seeds; the two are ``[chord_low, chord_high]`` (an estimate needs >= 2 of
the other side's KLs around the point inside the shape's range, or within :data:`CHORD_END_TOL` of
its span past an end; one alone where only one exists, NaN where neither does -- or where neither can
see a bend: a curve that is one straight segment across the bracket reads 0 whatever the truth,
:func:`_chord_null`). It is a diagnostic,
not an interval: a gain inside it is one the runs' KL placement alone could make (reward hacking,
where raw's runs sit at 0.9, 2.6 and 28 nats, is the case that showed it); more KL points on the
sparser curve shrink it. It does not enter ``significant``; the report and ``findings.md`` read a significant
gain whose intervals do not clear it as not evidence (docs/method.md §10).

Used by :mod:`infalign.report` (per procedure, N and judge); see ``infalign-report``.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Run", "MatchedKL", "Gain", "matched_kl", "interpolate", "count_matrix", "common_range",
           "DEFAULT_BASELINES"]

DEFAULT_BASELINES = ("raw", "identity")
ZERO_TOL = 1e-9  # |gain| below this is float rounding (means of O(1) values over <= 1e6 prompts)


@dataclass
class Run:
    """One run's per-prompt KL and metric over ``prompt_ids`` (``[P]`` each)."""

    method: str
    seed: int | str
    kl: np.ndarray
    metric: np.ndarray
    prompt_ids: tuple[str, ...] | None = None
    label: str = ""  # e.g. the job dir, for notes

    def __post_init__(self) -> None:
        self.kl = np.asarray(self.kl, np.float64)
        self.metric = np.asarray(self.metric, np.float64)
        if self.prompt_ids is not None:
            self.prompt_ids = tuple(str(p) for p in self.prompt_ids)


@dataclass
class Gain:
    """``method - baseline`` at each grid KL: estimate, percentile CI, seed spread, significance."""

    method: str
    baseline: str
    gain: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n_seeds: int
    seed_spread: np.ndarray  # NaN for seed_test "none" (module docstring)
    significant: np.ndarray  # bool
    seed_low: np.ndarray  # seed interval (module docstring); NaN for seed_test "none"
    seed_high: np.ndarray
    seed_test: str  # paired | welch | pooled | none (module docstring)
    n_seeds_baseline: int
    prompt_significant: np.ndarray  # bool: estimate and prompt CI on one side of 0
    total_low: np.ndarray  # the total interval (prompts and seeds); NaN for seed_test "none"
    total_high: np.ndarray
    chord_low: np.ndarray | None = None  # what the chords alone make (module docstring, Interpolation check)
    chord_high: np.ndarray | None = None


@dataclass
class MatchedKL:
    """The comparison on one panel (one metric, one judge)."""

    grid: np.ndarray  # [K] common KLs (empty when there is none)
    common: bool
    ranges: dict[str, tuple[float, float]]  # method -> KL range covered by all its seeds' curves
    win_rate: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)  # mean, low, high
    n_seeds: dict[str, int] = field(default_factory=dict)
    n_runs: dict[str, int] = field(default_factory=dict)
    gains: list[Gain] = field(default_factory=list)
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (run label, reason)
    note: str = ""
    n_prompts: int = 0

    def rows(self) -> list[dict]:
        """One dict per KL x method (``baseline`` None: its win rate) and per KL x method x baseline."""
        out = []
        gains = {(g.method, g.baseline): g for g in self.gains}
        for i, k in enumerate(self.grid):
            for m, (mean, low, high) in self.win_rate.items():
                base = {"kl": float(k), "method": m, "win_rate": float(mean[i]), "win_rate_low": float(low[i]),
                        "win_rate_high": float(high[i]), "n_seeds": self.n_seeds[m], "n_runs": self.n_runs[m]}
                out.append({**base, "baseline": None})
                for (gm, b), g in gains.items():
                    if gm == m:
                        out.append({**base, "baseline": b, "gain": float(g.gain[i]), "gain_low": float(g.low[i]),
                                    "gain_high": float(g.high[i]), "seed_spread": _nan_none(g.seed_spread[i]),
                                    "seed_low": _nan_none(g.seed_low[i]), "seed_high": _nan_none(g.seed_high[i]),
                                    "seed_test": g.seed_test, "n_seeds_baseline": g.n_seeds_baseline,
                                    "total_low": _nan_none(g.total_low[i]),
                                    "total_high": _nan_none(g.total_high[i]),
                                    "prompt_significant": bool(g.prompt_significant[i]),
                                    "significant": bool(g.significant[i]),
                                    **({} if g.chord_low is None else
                                       {"chord_low": _nan_none(g.chord_low[i]),
                                        "chord_high": _nan_none(g.chord_high[i])})})
        return out


def _nan_none(x: float) -> float | None:
    return None if not math.isfinite(float(x)) else float(x)


def count_matrix(num_prompts: int, num_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``[B, P]`` counts of each prompt in each bootstrap resample (rows sum to ``P``)."""
    index = rng.integers(0, num_prompts, size=(num_resamples, num_prompts))
    offsets = (index + num_prompts * np.arange(num_resamples)[:, None]).ravel()
    return np.bincount(offsets, minlength=num_resamples * num_prompts).reshape(num_resamples, num_prompts)


def _merge_ties(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort by ``x``; average ``y`` over equal ``x`` (1-D)."""
    ux, inv = np.unique(x, return_inverse=True)
    return ux, np.bincount(inv, weights=y) / np.bincount(inv)


def _merge_tied_columns(key: np.ndarray, *cols: np.ndarray) -> tuple[np.ndarray, ...]:
    """Average the columns of each ``[B, R]`` array over runs with equal ``key`` (``[R]``, the runs'
    point-estimate KLs): ``[B, U]`` each, ``U`` distinct keys in sorted order -- the resampled
    counterpart of :func:`_merge_ties`, so a resample's curve has the point estimate's vertices."""
    ux, inv = np.unique(key, return_inverse=True)
    if ux.size == key.size:
        return cols
    onehot = np.zeros((key.size, ux.size))
    onehot[np.arange(key.size), inv] = 1.0 / np.bincount(inv)[inv]
    return tuple(c @ onehot for c in cols)


def interpolate(x: np.ndarray, y: np.ndarray, grid: np.ndarray, continue_ends: bool = False,
                end_slopes: tuple[float, float] | None = None) -> np.ndarray:
    """Piecewise-linear interpolation of points ``(x_r, y_r)`` at ``grid``, batched over leading axes.

    ``x``, ``y``: ``[..., R]`` (any order; sorted here along the last axis); ``grid``: ``[K]``.
    Returns ``[..., K]``: ``y_i + (g - x_i) (y_{i+1} - y_i) / (x_{i+1} - x_i)`` on the segment
    ``x_i <= g <= x_{i+1}``. Outside ``[min x, max x]``: NaN, or with ``continue_ends=True`` the
    line through the first / last point with the first / last segment's slope, or with the slopes
    ``end_slopes = (left, right)`` when given (bootstrap resamples only, see the module docstring;
    a single point gives its constant). Equal ``x`` in a row are not merged, and the curve jumps there; the value
    at the tied x depends on where the tie sits: inside the curve the last tied point's (``x = [0, 1, 1, 2]``,
    ``y = [0, 1, 3, 3]``: 3 at 1), at its right end the mean of the last two points' (``x = [0, 1, 1]``, ``y =
    [0, 1, 3]``: 2 at 1) -- merge ties first (:func:`_merge_ties`; every caller does).
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    grid = np.asarray(grid, np.float64)
    order = np.argsort(x, axis=-1, kind="stable")
    xs, ys = np.take_along_axis(x, order, -1), np.take_along_axis(y, order, -1)
    r = xs.shape[-1]
    if r == 1:
        out = np.broadcast_to(ys, (*ys.shape[:-1], grid.size)).copy()
        if not continue_ends:
            out[..., grid != xs[..., 0:1]] = np.nan
        return out
    seg = np.clip((xs[..., :, None] <= grid).sum(-2) - 1, 0, r - 2)  # [..., K] left end of each segment
    x0, x1 = np.take_along_axis(xs, seg, -1), np.take_along_axis(xs, seg + 1, -1)
    y0, y1 = np.take_along_axis(ys, seg, -1), np.take_along_axis(ys, seg + 1, -1)
    width = x1 - x0
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(width > 0, (grid - x0) / np.where(width > 0, width, 1.0), 0.5)
    out = y0 + frac * (y1 - y0)  # frac < 0 / > 1 only before the first / after the last point
    before, after = grid < xs[..., :1], grid > xs[..., -1:]
    if not continue_ends:
        return np.where(before | after, np.nan, out)
    if end_slopes is not None:
        left, right = end_slopes
        out = np.where(before, ys[..., :1] + left * (grid - xs[..., :1]), out)
        out = np.where(after, ys[..., -1:] + right * (grid - xs[..., -1:]), out)
    return out


MIN_SLOPE_RUN = 0.05  # share of a curve's KL span below which an end segment is too short to carry a slope


def _end_slopes(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Slopes a resampled curve is continued with (module docstring), from the sorted, tie-merged points
    ``(x, y)`` (>= 2 of them): at each end, the chord from the end point to the nearest point at least
    :data:`MIN_SLOPE_RUN` of the curve's KL span away -- the end segment itself unless two runs nearly
    tie in KL, whose chord would be near-vertical (a few-hundredths-of-a-nat noise in win rate over a
    thousandth of a nat of KL)."""
    reach = MIN_SLOPE_RUN * (x[-1] - x[0])
    i = next(k for k in range(1, x.size) if x[k] - x[0] >= reach or k == x.size - 1)
    j = next(k for k in range(x.size - 2, -1, -1) if x[-1] - x[k] >= reach or k == 0)
    return float((y[i] - y[0]) / (x[i] - x[0])), float((y[-1] - y[j]) / (x[-1] - x[j]))


def common_range(ranges: Sequence[tuple[float, float]]) -> tuple[float, float] | None:
    """``[max lo, min hi]`` of the given ranges, or None when it is empty."""
    lo, hi = max(r[0] for r in ranges), min(r[1] for r in ranges)
    return (lo, hi) if lo <= hi else None


def common_methods(ranges: dict[str, tuple[float, float] | None], bases: Sequence[str],
                   ) -> tuple[tuple[float, float] | None, dict[str, str]]:
    """``(span, left_out)``: the common KL range (10.2) of the methods compared, and those left out with
    why. All methods when their ranges overlap. Otherwise a method whose seeds' ranges do not overlap is
    left out, and the others are taken greedily around the baselines (``bases``, those with a range):
    starting from the baselines' common range, each method in order of its overlap with it (largest
    first) is kept if the span stays non-empty. ``(None, {})`` when even that leaves fewer than two
    methods or the baselines have no common range: no common KL (one method without a KL in common no
    longer voids the comparison of the others)."""
    live = {m: r for m, r in ranges.items() if r is not None}
    if len(live) == len(ranges) and (span := common_range(list(live.values()))) is not None:
        return span, {}
    left_out = {m: "its seeds' KL ranges do not overlap" for m, r in ranges.items() if r is None}
    anchors = [b for b in bases if b in live]
    span = common_range([live[b] for b in anchors]) if anchors else None
    if span is None:
        return None, {}

    def overlap(r: tuple[float, float]) -> float:
        both = common_range([r, span])
        return -1.0 if both is None else both[1] - both[0]

    for m in sorted((m for m in live if m not in anchors), key=lambda m: -overlap(live[m])):
        both = common_range([live[m], span])
        if both is None:
            left_out[m] = f"KL [{live[m][0]:.3g}, {live[m][1]:.3g}] outside the others' [{span[0]:.3g}, {span[1]:.3g}]"
        else:
            span = both
    if len(ranges) - len(left_out) < 2:
        return None, {}
    return span, left_out


def _check_prompts(runs: Sequence[Run]) -> tuple[list[Run], list[tuple[str, str]], int]:
    """Keep the runs on the panel's prompts (the most common ``prompt_ids``; any with equal ``P``
    when no run has ids); the others are excluded with a reason."""
    ids = Counter(r.prompt_ids for r in runs if r.prompt_ids is not None)
    panel_ids = ids.most_common(1)[0][0] if ids else None
    num = len(panel_ids) if panel_ids is not None else Counter(r.kl.size for r in runs).most_common(1)[0][0]
    kept, excluded = [], []
    for r in runs:
        if r.kl.shape != (num,) or r.metric.shape != (num,):
            excluded.append((r.label, f"{r.method}: {r.kl.size} KL / {r.metric.size} metric values, "
                                      f"the panel has {num} prompts"))
        elif panel_ids is not None and r.prompt_ids != panel_ids:
            excluded.append((r.label, f"{r.method}: prompt_ids differ from the panel's {num} prompts"))
        elif not (np.all(np.isfinite(r.kl)) and np.all(np.isfinite(r.metric))):
            excluded.append((r.label, f"{r.method}: non-finite per-prompt values"))
        else:
            kept.append(r)
    return kept, excluded, num


def matched_kl(runs: Sequence[Run], baselines: Sequence[str] | None = None, num_kl: int = 6,
               num_resamples: int = 2000, level: float = 0.95, seed: int = 0, paired: bool = True) -> MatchedKL:
    """Compare the methods of ``runs`` at common KLs (see the module docstring for every formula).

    ``baselines``: methods to compute gains against, in order (default :data:`DEFAULT_BASELINES`,
    those present); a baseline gets a gain over the baselines before it only (identity - raw,
    not also raw - identity). A (method, seed) with fewer than two distinct KLs has no curve and is left out, with a
    note. Raises ValueError only for bad arguments; an empty comparison is a result.
    """
    if num_kl < 1:
        raise ValueError(f"num_kl={num_kl} must be >= 1")
    if num_resamples < 1:
        raise ValueError(f"num_resamples={num_resamples} must be >= 1")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level} must lie in (0, 1)")
    empty = MatchedKL(np.zeros(0), False, {})
    if not runs:
        empty.note = "no runs with per-prompt statistics"
        return empty
    kept, excluded, num_prompts = _check_prompts(runs)
    empty.excluded, empty.n_prompts = excluded, num_prompts
    curves: dict[tuple[str, int | str], list[int]] = {}  # (method, seed) -> indices into kept
    for i, r in enumerate(kept):
        curves.setdefault((r.method, r.seed), []).append(i)
    kl_mat = np.stack([r.kl for r in kept], 1) if kept else np.zeros((num_prompts, 0))  # [P, R]
    w_mat = np.stack([r.metric for r in kept], 1) if kept else np.zeros((num_prompts, 0))
    kbar, wbar = kl_mat.mean(0), w_mat.mean(0)
    for key, idx in list(curves.items()):
        if np.unique(kbar[idx]).size < 2:
            excluded += [(kept[i].label, f"{key[0]} seed {key[1]}: fewer than 2 runs with distinct KL, no curve")
                         for i in idx]
            del curves[key]
    methods = sorted({m for m, _ in curves})
    if not methods:
        empty.note = "no method has a curve (>= 2 runs at distinct KLs of one seed)"
        return empty
    ranges = {m: common_range([(kbar[i].min(), kbar[i].max()) for (mm, _), i in curves.items() if mm == m])
              for m in methods}
    result = MatchedKL(np.zeros(0), False, {m: r for m, r in ranges.items() if r is not None},
                       excluded=excluded, n_prompts=num_prompts)
    if len(methods) < 2:
        result.note = (f"only one method has a curve (>= 2 runs at distinct KLs of one seed): {methods[0]}; "
                       "nothing to compare")
        return result
    bases = [b for b in (DEFAULT_BASELINES if baselines is None else baselines) if b in methods]
    span, left_out = common_methods(ranges, bases)
    if span is None:
        result.note = "no common KL: " + ", ".join(
            f"{m} [{r[0]:.3g}, {r[1]:.3g}]" if r else f"{m} (its seeds' KL ranges do not overlap)"
            for m, r in ranges.items())
        return result
    if left_out:  # the rest are compared on their common range; these runs are listed as excluded
        for (m, s_), idx in list(curves.items()):
            if m in left_out:
                excluded += [(kept[i].label, f"{m}: {left_out[m]}") for i in idx]
                del curves[(m, s_)]
        methods = [m for m in methods if m not in left_out]
        bases = [b for b in bases if b not in left_out]
        result.note = "left out, no KL in common with the others: " + "; ".join(
            f"{m} ({why})" for m, why in left_out.items())
    grid = np.linspace(span[0], span[1], num_kl) if span[1] > span[0] else np.array([span[0]])
    result.grid, result.common = grid, True

    rng = np.random.default_rng(seed)
    if paired:
        counts = count_matrix(num_prompts, num_resamples, rng)
        kb, wb = counts @ kl_mat / num_prompts, counts @ w_mat / num_prompts  # [B, R]
    else:  # an independent resample of the prompts per method
        kb, wb = np.empty((num_resamples, len(kept))), np.empty((num_resamples, len(kept)))
        for m in methods:
            cols = [i for (mm, _), idx in curves.items() if mm == m for i in idx]
            counts = count_matrix(num_prompts, num_resamples, rng)
            kb[:, cols], wb[:, cols] = counts @ kl_mat[:, cols] / num_prompts, counts @ w_mat[:, cols] / num_prompts

    unresolved = _unresolved_kl(curves, kbar, kb, level)
    if unresolved:
        result.note = "; ".join(filter(None, [result.note, "KL not resolved -- " + ", ".join(unresolved)]))
    point: dict[str, dict] = {m: {} for m in methods}  # method -> seed -> [K]
    boot: dict[str, dict] = {m: {} for m in methods}  # method -> seed -> [B, K]
    vertices: dict[str, dict] = {m: {} for m in methods}  # method -> seed -> (KLs, win rates)
    for (m, s), idx in curves.items():
        vx, vy = _merge_ties(kbar[idx], wbar[idx])
        vertices[m][s] = (vx, vy)
        point[m][s] = interpolate(vx, vy, grid)
        # (a win rate continued past a resampled curve's end stays a win rate: in [0, 1])
        boot[m][s] = np.clip(interpolate(*_merge_tied_columns(kbar[idx], kb[:, idx], wb[:, idx]), grid,
                                         continue_ends=True, end_slopes=_end_slopes(vx, vy)), 0.0, 1.0)
    alpha = (1.0 - level) / 2.0
    for m in methods:
        mean_b = np.mean(list(boot[m].values()), 0)
        low, high = np.quantile(mean_b, [alpha, 1 - alpha], axis=0)
        result.win_rate[m] = (np.mean(list(point[m].values()), 0), low, high)
        result.n_seeds[m] = len(point[m])
        result.n_runs[m] = sum(len(i) for (mm, _), i in curves.items() if mm == m)
    missing = [b for b in (baselines or ()) if b not in methods]
    if missing:
        result.note = "; ".join(filter(None, [result.note,
                                              f"baseline(s) without a curve on this panel: {', '.join(missing)}"]))
    elif not bases:  # (review: a sweep of log against expn_t4 got win rates alone, without a word)
        which = f" (the default ones, {' and '.join(DEFAULT_BASELINES)}, have no curve)" if baselines is None else ""
        result.note = "; ".join(filter(None, [result.note, f"no baseline on this panel{which}: no gains -- name one "
                                              "with --baseline"]))
    for j, b in enumerate(bases):
        for m in methods:
            if m != b and m not in bases[:j]:  # identity vs raw, not also raw vs identity
                gain = _gain(m, b, point, boot, alpha, num_prompts)
                gain.chord_low, gain.chord_high = chord_bias(vertices[m], vertices[b], grid)
                result.gains.append(gain)
    return result


def _unresolved_kl(curves: dict, kbar: np.ndarray, kb: np.ndarray, level: float) -> list[str]:
    """The curves whose runs lie closer together in KL than the KL's own bootstrap interval is wide --
    ``max_r K_r - min_r K_r`` below the median over its runs of the half-width of ``K*_.r``'s percentile
    interval -- each as ``"<method> seed <s> (runs <span> nats apart, KL +-<half>)"``. There the resampled
    curves are mostly continued past their ends (module docstring), so the comparison's intervals say
    more about that continuation than about the methods: runs that barely moved from the reference, or a
    KL knob whose settings land on nearly one KL."""
    alpha = (1.0 - level) / 2.0
    out = []
    for (m, s), idx in curves.items():
        span = float(kbar[idx].max() - kbar[idx].min())
        low, high = np.quantile(kb[:, idx], [alpha, 1 - alpha], axis=0)
        half = float(np.median((high - low) / 2))
        if span < half:
            out.append(f"{m} seed {s} (runs {span:.2g} nats apart, KL +-{half:.2g})")
    return out


CHORD_END_TOL = 0.1  # share of a curve's KL span past its ends within which another curve's KL counts as its end


def _chord_null(x: np.ndarray, y: np.ndarray, at: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(f(k) - c_at[f](k), seen)`` at ``grid``: the curve ``f`` through ``(x, y)`` minus its chord through
    the KLs ``at`` inside ``f``'s range -- or within :data:`CHORD_END_TOL` of its span past an end,
    read at that end (two sweeps aimed at the same KLs land a little apart: 2.05 against 2.00 must
    not void the check); NaN where fewer than two of them bracket ``k``. ``seen``: whether the value
    can see a bend -- ``f`` has a vertex strictly inside the bracket of ``at`` around ``k``, or both of
    the bracket's ends are (within the tolerance) vertices of ``f``, where the two chords coincide and 0
    is exact. Elsewhere ``f`` is one straight segment across the bracket and the value is 0 whatever
    the true curve does (two runs per method: each curve a line): it tests only the hypothesis that
    the true curve is that line."""
    tol = CHORD_END_TOL * (x[-1] - x[0])
    inside = np.unique(np.clip(at[(at >= x[0] - tol) & (at <= x[-1] + tol)], x[0], x[-1]))
    if inside.size < 2:
        return np.full(grid.shape, np.nan), np.zeros(grid.shape, bool)
    j = np.clip(np.searchsorted(inside, grid, side="right") - 1, 0, inside.size - 2)
    lo, hi = inside[j][:, None], inside[j + 1][:, None]
    bend = ((x > lo) & (x < hi)).any(1)
    ends = (np.abs(x - lo) <= tol).any(1) & (np.abs(x - hi) <= tol).any(1)
    return interpolate(x, y, grid) - interpolate(inside, interpolate(x, y, inside), grid), bend | ends


def chord_bias(method: dict, baseline: dict, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(chord_low, chord_high)`` ``[K]`` of ``method - baseline`` (module docstring, **Interpolation
    check**; docs/method.md (10.6)) from each side's per-seed vertices ``{seed: (KLs, win rates)}``.
    An estimate counts only where it can see a bend (:func:`_chord_null`'s ``seen``, per seed pair):
    elsewhere it tests a straight line only, and its 0 is no check -- the other estimate alone is used
    there, and where neither counts (in no seed pair) the check is NaN."""
    common = sorted(set(method) & set(baseline), key=str)
    pairs = [(s, s) for s in common] or [(a, b) for a in method for b in baseline]
    nulls_m = [_chord_null(*method[a], baseline[b][0], grid) for a, b in pairs]
    nulls_b = [_chord_null(*baseline[b], method[a][0], grid) for a, b in pairs]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mean of an all-NaN column: NaN, as wanted
        as_m = np.nanmean([np.where(s, v, np.nan) for v, s in nulls_m], 0)
        as_b = np.nanmean([np.where(s, -v, np.nan) for v, s in nulls_b], 0)
    return np.fmin(as_m, as_b), np.fmax(as_m, as_b)  # either estimate where only one counts; NaN where neither


def _t_interval(mean: np.ndarray, se: np.ndarray, df, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """``mean +- t_{1-alpha, df} se``."""
    from scipy.stats import t as student_t

    half = student_t.ppf(1.0 - alpha, df) * se
    return mean - half, mean + half


VERDICT_TESTS = ("paired", "welch")  # the seed tests that measure both sides' training noise


def gives_verdict(seed_test: str) -> bool:
    """Whether a gain with this ``seed_test`` can be significant (module docstring, **Seeds**): not with one seed
    on either side (``none``; ``pooled``, whose interval assumes the single seed's noise equals the other side's)."""
    return seed_test in VERDICT_TESTS


def two_sample_seed_error(a: np.ndarray, b: np.ndarray) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """``(test, spread, se, df)`` of ``mean(a) - mean(b)`` for unpaired per-seed curves (module
    docstring, **Seeds**); NaN ``spread`` and ``se`` for ``none``."""
    sa, sb = a.shape[0], b.shape[0]
    shape = a.shape[1:]
    if sa < 2 and sb < 2:
        nan = np.full(shape, np.nan)
        return "none", nan, nan.copy(), nan.copy()
    va = a.var(0, ddof=1) if sa >= 2 else np.zeros(shape)
    vb = b.var(0, ddof=1) if sb >= 2 else np.zeros(shape)
    if sa >= 2 and sb >= 2:
        qa, qb = va / sa, vb / sb
        with np.errstate(invalid="ignore", divide="ignore"):
            df = (qa + qb) ** 2 / (qa**2 / (sa - 1) + qb**2 / (sb - 1))
        df = np.where(np.isfinite(df), df, sa + sb - 2)  # both variances 0: se is 0 anyway
        return "welch", np.sqrt(va + vb), np.sqrt(qa + qb), df
    v = ((sa - 1) * va + (sb - 1) * vb) / (sa + sb - 2)
    return "pooled", np.sqrt(2.0 * v), np.sqrt(v * (1.0 / sa + 1.0 / sb)), np.full(shape, float(sa + sb - 2))


def total_interval(gain: np.ndarray, se_prompt: np.ndarray, df_prompt: float, se_seed: np.ndarray,
                   df_seed: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """``gain +- t_{1-alpha, nu} sqrt(se_prompt^2 + se_seed^2)`` with Welch-Satterthwaite ``nu`` (module
    docstring, **Total interval**); NaN where ``se_seed`` is NaN (one seed per side)."""
    v_p, v_s = se_prompt**2, se_seed**2
    total = v_p + v_s
    with np.errstate(invalid="ignore", divide="ignore"):
        nu = total**2 / (v_s**2 / df_seed + v_p**2 / df_prompt)
    nu = np.where(np.isfinite(nu) & (nu > 0), nu, np.minimum(df_seed, df_prompt))  # both 0: any df, se is 0
    return _t_interval(gain, np.sqrt(total), nu, alpha)


def _gain(m: str, b: str, point: dict, boot: dict, alpha: float, num_prompts: int) -> Gain:
    """``f_m - f_b`` with its percentile CI, seed spread and seed interval (paired by seed when both
    have the same seeds, else two-sample), total interval and significance (module docstring)."""
    gain = np.mean(list(point[m].values()), 0) - np.mean(list(point[b].values()), 0)
    gain_b = np.mean(list(boot[m].values()), 0) - np.mean(list(boot[b].values()), 0)
    low, high = np.quantile(gain_b, [alpha, 1 - alpha], axis=0)
    n_seeds, n_base = len(point[m]), len(point[b])
    if set(point[m]) == set(point[b]) and n_seeds >= 2:
        per_seed = np.array([point[m][s] - point[b][s] for s in point[m]])
        test, spread = "paired", per_seed.std(0, ddof=1)
        se_seed, df_seed = spread / math.sqrt(n_seeds), np.full(gain.shape, float(n_seeds - 1))
    else:
        test, spread, se_seed, df_seed = two_sample_seed_error(
            np.array(list(point[m].values())), np.array(list(point[b].values())))
    if test == "none":
        seed_low, seed_high, total_low, total_high = (np.full(gain.shape, np.nan) for _ in range(4))
    else:
        seed_low, seed_high = _t_interval(gain, se_seed, df_seed, alpha)
        se_prompt = gain_b.std(0, ddof=1) if gain_b.shape[0] > 1 else np.full(gain.shape, np.nan)  # B=1: no verdict
        total_low, total_high = total_interval(gain, se_prompt, max(num_prompts - 1, 1), se_seed, df_seed, alpha)
    up, down = (gain > ZERO_TOL) & (low > ZERO_TOL), (gain < -ZERO_TOL) & (high < -ZERO_TOL)
    prompt_significant = up | down
    significant = gives_verdict(test) & (  # (none: NaN intervals compare False anyway)
        (up & (seed_low > ZERO_TOL) & (total_low > ZERO_TOL))
        | (down & (seed_high < -ZERO_TOL) & (total_high < -ZERO_TOL)))
    return Gain(m, b, gain, low, high, n_seeds, spread, significant, seed_low, seed_high, test, n_base,
                prompt_significant, total_low, total_high)
