"""Evaluation statistics: percentile-bootstrap CIs over prompts (docs/method.md §7).

Prompts are the unit of replication: every statistic is first reduced to one value per prompt
(``[P]``, or ``[P, ...]`` for many columns at once, e.g. win rates for every N), and the bootstrap
resamples prompts with replacement.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

__all__ = ["bootstrap_ci"]


def _as_numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def bootstrap_ci(
    per_prompt_values,
    num_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    stat: Callable[..., np.ndarray] = np.mean,
):
    """Percentile bootstrap over prompts: ``(estimate, low, high)``.

    ``estimate = stat(v, axis=0)`` on the data ``v`` (``[P]`` or ``[P, ...]``); the interval is the
    ``(1-level)/2`` and ``(1+level)/2`` quantiles of ``stat(v[I_b], axis=0)`` over ``num_resamples``
    index vectors ``I_b`` drawn uniformly with replacement from ``{0..P-1}`` (all at once, as one
    ``[num_resamples, P]`` matrix). Columns share the resampled prompts, so intervals of several
    columns (e.g. every N) are computed jointly. ``stat`` must accept ``axis=`` like ``np.mean``;
    for the mean the resamples are evaluated as a counts-matrix product (no ``[B, P, ...]`` copy).
    Scalars are returned as floats, multi-column results as arrays of shape ``v.shape[1:]``. One
    prompt has no interval: ``low`` and ``high`` are NaN (every resample is that prompt, a zero-width
    "interval" that would read as certainty).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level} must lie in (0, 1)")
    if num_resamples < 1:
        raise ValueError(f"num_resamples={num_resamples} must be >= 1")
    values = _as_numpy(per_prompt_values)
    if values.ndim == 0 or values.shape[0] == 0:
        raise ValueError(
            f"need at least one prompt along the leading axis, got shape {values.shape}"
        )
    num = values.shape[0]
    rng = np.random.default_rng(seed)
    index = rng.integers(0, num, size=(num_resamples, num))
    if stat is np.mean:
        flat = values.reshape(num, -1)
        offsets = (index + num * np.arange(num_resamples)[:, None]).ravel()
        counts = np.bincount(offsets, minlength=num_resamples * num).reshape(num_resamples, num)
        resampled = (counts @ flat / num).reshape((num_resamples, *values.shape[1:]))
    else:
        resampled = stat(values[index], axis=1)
    estimate = stat(values, axis=0)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(resampled, [alpha, 1.0 - alpha], axis=0)
    if num == 1:
        low, high = np.full_like(low, np.nan), np.full_like(high, np.nan)
    if np.ndim(estimate) == 0:
        return float(estimate), float(low), float(high)
    return np.asarray(estimate), low, high
