"""Calibrated reward: the mid-quantile of a response's reward among reference samples (docs/method.md §2).

    C_hat(x, y) = (1/K) * sum_i ( 1{r(x, z_i) < r(x, y)} + 0.5 * 1{r(x, z_i) = r(x, y)} )

with ``z_1..z_K ~ pi_ref(.|x)`` drawn once. With the K reference rewards of each prompt kept
sorted, a query is calibrated by two binary searches (``searchsorted`` left/right), batched over
prompts: sorted reference ``[P, K]`` and queries ``[P, M]`` give ``[P, M]`` in one call.

The smoothed variant ``(count_less + 0.5 * count_equal + 0.5) / (K + 1)`` keeps C in
``[0.5/(K+1), 1 - 0.5/(K+1)]``, away from 0 and 1, which a log transform needs.

**Pooled calibration** (``calibration.scope: pooled``, the control of docs/method.md §2) ranks a
response among the reference rewards of *all* ``P`` training prompts instead of its own prompt's:

    C_pool(x, y) = (1/(P K)) * sum_{x'} sum_i ( 1{r(x', z_i) < r(x, y)} + 0.5 * 1{r(x', z_i) = r(x, y)} ).

It is one fixed monotone map of the raw reward (the pooled reference CDF), the same for every
prompt, so it changes the reward's *shape* like calibration does but keeps the reward model's
miscalibration across prompts. Where every prompt has the same reward distribution it equals
``C_hat`` (up to the sampling noise of the K samples); ``C_hat - C_pool`` isolates what per-prompt
calibration does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from infalign.errors import ConfigError

SCOPES = ("prompt", "pooled")  # calibration.scope


TIE_WARN = 0.01  # tie share (within-prompt pairs of reference samples) above which a run is warned


def tie_share(rewards: torch.Tensor) -> float:
    """The share of within-prompt pairs of samples whose rewards tie, averaged over prompts: for ``[P, M]``
    rewards ``r``, ``mean_p [ #{i < j : r_pi = r_pj} / (M (M - 1) / 2) ]`` (docs/method.md §2). 0 for a
    reward without ties, where ``C(x, Y)`` is Uniform[0, 1]; with ties (a discrete or rule-based reward, a
    length, a reward model's scores that round alike) ``C`` is not uniform -- a tied response gets the
    tie's mid-rank -- and the calibrated-space theory (§3-§5), which assumes it is, holds only roughly. NaN
    for fewer than 2 samples per prompt."""
    r = rewards.double()
    m = r.shape[-1]
    if m < 2 or r.shape[0] == 0:
        return float("nan")
    s = r.sort(dim=-1).values.contiguous()  # each sample's count of equal samples by two binary searches
    equal = torch.searchsorted(s, s, right=True) - torch.searchsorted(s, s)  # memory, not the P x M x M table
    pairs = (equal - 1).sum(-1)  # ordered tied pairs, each sample with itself left out
    return float((pairs.double() / (m * (m - 1))).mean())


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

    sorted_rewards: torch.Tensor  # [P, K], or [1, P*K] when pooled
    smoothing: bool = False
    pooled_prompts: int | None = None  # P when pooled (module docstring), else None
    by_prompt: torch.Tensor | None = None  # when pooled: each prompt's K rewards, sorted [P, K]

    @classmethod
    def from_rewards(cls, rewards: torch.Tensor, smoothing: bool = False, scope: str = "prompt") -> CalibrationTable:
        """Build from unsorted reference rewards ``[P, K]`` (checked for NaN/inf); ``scope``:
        ``"prompt"`` (C_hat, each prompt against its own K) or ``"pooled"`` (C_pool)."""
        if scope not in SCOPES:
            raise ConfigError("calibration.scope", scope, " | ".join(SCOPES))
        if rewards.dim() != 2 or rewards.shape[1] < 1:
            raise ConfigError("calibration.K", tuple(rewards.shape), "reference rewards shaped [P, K>=1]")
        check_finite("reference rewards", rewards)
        rewards = rewards if rewards.is_floating_point() else rewards.float()  # keep float64 exact
        if scope == "pooled":
            return cls(torch.sort(rewards.reshape(1, -1), dim=1).values, smoothing, rewards.shape[0],
                       torch.sort(rewards, dim=1).values)
        return cls(torch.sort(rewards, dim=1).values, smoothing)

    @property
    def pooled(self) -> bool:
        return self.pooled_prompts is not None

    @property
    def num_prompts(self) -> int:
        return self.pooled_prompts or self.sorted_rewards.shape[0]

    @property
    def prompt_rewards(self) -> torch.Tensor:
        """Each prompt's K reference rewards, sorted ``[P, K]`` (either scope)."""
        return self.by_prompt if self.pooled else self.sorted_rewards

    def reference_calibrated(self) -> torch.Tensor:
        """``[P, K]``: the calibrated reward of each prompt's own reference samples under this table's
        scope -- C_hat (mid-ranks, mean 1/2 per prompt) or C_pool (per prompt, wherever the prompt's
        rewards sit among all prompts'). What RL's reward looks like under pi_ref, prompt by prompt."""
        ref = self.prompt_rewards
        index = torch.arange(ref.shape[0]).repeat_interleave(ref.shape[1])
        return self.calibrate(index, ref.reshape(-1)).reshape(ref.shape)

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
        if self.pooled_prompts is not None:
            return calibrate(self.sorted_rewards.to(rewards.device), rewards[None], self.smoothing)[0]
        ref = self.sorted_rewards.to(rewards.device)[prompt_index]
        return calibrate(ref, rewards[:, None], self.smoothing)[:, 0]
