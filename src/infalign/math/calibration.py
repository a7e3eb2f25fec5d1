"""Calibrated reward: the mid-quantile of a response's reward among reference samples (docs/method.md §2).

    C_hat(x, y) = (1/K) * sum_i ( 1{r(x, z_i) < r(x, y)} + 0.5 * 1{r(x, z_i) = r(x, y)} )

with ``z_1..z_K ~ pi_ref(.|x)`` drawn once. With the K reference rewards of each prompt kept
sorted, a query is calibrated by two binary searches (``searchsorted`` left/right), batched over
prompts: sorted reference ``[P, K]`` and queries ``[P, M]`` give ``[P, M]`` in one call.

The smoothed variant ``(count_less + 0.5 * count_equal + 0.5) / (K + 1)`` keeps C in
``[0.5/(K+1), 1 - 0.5/(K+1)]``, away from 0 and 1, which a log transform needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from infalign.errors import ConfigError


def check_finite(name: str, values: torch.Tensor) -> None:
    """Raise ``ValueError`` naming ``name`` and the first bad entry if ``values`` has NaN/inf."""
    bad = ~torch.isfinite(values)
    if bad.any():
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name} contains {int(bad.sum())} non-finite value(s) (first at index {idx}: "
            f"{values[idx].item()}); rewards must be finite -- check the reward model"
        )


def calibrate(
    sorted_reference: torch.Tensor,
    query: torch.Tensor,
    smoothing: bool = False,
) -> torch.Tensor:
    """C_hat of ``query`` ``[P, M]`` against per-prompt sorted reference rewards ``[P, K]``.

    Returns ``[P, M]`` float values in [0, 1] (see module docstring for the tie rule and the
    smoothed variant). A 1-D reference ``[K]`` with a 1-D query ``[M]`` is accepted as P = 1.
    """
    squeeze = sorted_reference.dim() == 1
    if squeeze:
        sorted_reference, query = sorted_reference[None], query.reshape(1, -1)
    if sorted_reference.dim() != 2 or query.dim() != 2:
        raise ValueError(
            f"calibrate expects reference [P, K] and query [P, M]; got {tuple(sorted_reference.shape)} "
            f"and {tuple(query.shape)}"
        )
    num_prompts, k = sorted_reference.shape
    if k < 1:
        raise ConfigError("calibration.K", k, "K >= 1 reference samples per prompt")
    if query.shape[0] != num_prompts:
        raise ValueError(
            f"shape mismatch: reference has {num_prompts} prompts but query has {query.shape[0]} "
            f"(reference {tuple(sorted_reference.shape)}, query {tuple(query.shape)})"
        )
    check_finite("reference rewards", sorted_reference)
    check_finite("query rewards", query)
    ref = sorted_reference.to(torch.float64).contiguous()
    q = query.to(torch.float64).contiguous()
    less = torch.searchsorted(ref, q, side="left")
    less_or_equal = torch.searchsorted(ref, q, side="right")
    mid = less.to(torch.float64) + 0.5 * (less_or_equal - less).to(torch.float64)
    c = (mid + 0.5) / (k + 1) if smoothing else mid / k
    c = c.to(query.dtype if query.is_floating_point() else torch.float32)
    return c[0] if squeeze else c


@dataclass
class CalibrationTable:
    """Sorted reference rewards ``[P, K]`` for a fixed list of prompts.

    ``calibrate(prompt_index, rewards)`` maps a flat batch of on-policy rewards (each tagged with
    the row of its prompt in the table) to C_hat -- one gather plus two binary searches.
    """

    sorted_rewards: torch.Tensor
    smoothing: bool = False

    @classmethod
    def from_rewards(cls, rewards: torch.Tensor, smoothing: bool = False) -> CalibrationTable:
        """Build from unsorted reference rewards ``[P, K]`` (checked for NaN/inf)."""
        if rewards.dim() != 2 or rewards.shape[1] < 1:
            raise ConfigError("calibration.K", tuple(rewards.shape), "reference rewards shaped [P, K>=1]")
        check_finite("reference rewards", rewards)
        rewards = rewards if rewards.is_floating_point() else rewards.float()  # keep float64 exact
        return cls(torch.sort(rewards, dim=1).values, smoothing)

    @property
    def num_prompts(self) -> int:
        return self.sorted_rewards.shape[0]

    @property
    def k(self) -> int:
        return self.sorted_rewards.shape[1]

    def calibrate(self, prompt_index: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        """C_hat for ``rewards[i]`` of a response to prompt ``prompt_index[i]`` (1-D, same length)."""
        if prompt_index.shape != rewards.shape or rewards.dim() != 1:
            raise ValueError(
                f"prompt_index {tuple(prompt_index.shape)} and rewards {tuple(rewards.shape)} must be equal 1-D shapes"
            )
        if len(prompt_index) and (prompt_index.min() < 0 or prompt_index.max() >= self.num_prompts):
            raise IndexError(f"prompt_index out of range [0, {self.num_prompts})")
        ref = self.sorted_rewards.to(rewards.device)[prompt_index]
        return calibrate(ref, rewards[:, None], self.smoothing)[:, 0]
