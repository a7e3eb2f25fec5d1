"""Evaluation statistics: per-prompt KL from log-probs, percentile-bootstrap CIs over prompts.

Prompts are the unit of replication: every statistic is first reduced to one value per prompt
(``[P]``, or ``[P, ...]`` for many columns at once, e.g. win rates for every N), and the bootstrap
resamples prompts with replacement.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

__all__ = ["kl_per_prompt", "bootstrap_ci", "mean_and_ci", "MeanCI"]


def kl_per_prompt(
    policy_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    prompt_index: torch.Tensor,
    num_prompts: int,
) -> torch.Tensor:
    """Monte Carlo ``KL(pi(.|x) || pi_ref(.|x))`` per prompt ``[P]`` (docs/method.md section 7).

    ``KL_hat(x_p) = mean_{i : prompt_index[i] = p} sum_t mask[i,t] * (log pi(y_it) - log pi_ref(y_it))``
    with the responses ``y_i ~ pi(.|x_p)``. Unbiased for the sequence-level KL; a single sample can
    be negative. Prompts without any sample get NaN.
    """
    per_seq = torch.where(response_mask.bool(), policy_logprobs - ref_logprobs, 0.0).sum(-1)
    per_seq = per_seq.double()
    index = prompt_index.long()
    sums = torch.zeros(num_prompts, dtype=per_seq.dtype, device=per_seq.device)
    sums.index_add_(0, index, per_seq)
    counts = torch.bincount(index, minlength=num_prompts).to(per_seq.dtype)
    return (sums / counts).to(policy_logprobs.dtype)


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
    Scalars are returned as floats, multi-column results as arrays of shape ``v.shape[1:]``.
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
    if np.ndim(estimate) == 0:
        return float(estimate), float(low), float(high)
    return np.asarray(estimate), low, high


@dataclass
class MeanCI:
    """A mean over ``n`` prompts with its percentile-bootstrap interval ``[low, high]``."""

    mean: float | np.ndarray
    low: float | np.ndarray
    high: float | np.ndarray
    n: int

    def as_dict(self) -> dict:
        """Plain dict (arrays become lists), ready for ``metrics.json``."""
        return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in asdict(self).items()}


def mean_and_ci(
    per_prompt_values, num_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> MeanCI:
    """Mean over prompts with its percentile-bootstrap CI (see :func:`bootstrap_ci`)."""
    values = _as_numpy(per_prompt_values)
    mean, low, high = bootstrap_ci(values, num_resamples, level, seed)
    return MeanCI(mean=mean, low=low, high=high, n=int(values.shape[0]))
