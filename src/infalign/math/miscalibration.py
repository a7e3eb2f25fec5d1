"""How miscalibrated a reward is across prompts, from a reference pool (docs/method.md, "toy world").

A reward model is *calibrated across prompts* when its scores of reference samples have the same
distribution for every prompt. Raw-reward RL then tilts every prompt alike; when the per-prompt
spread varies, RL on raw scores over-tilts the prompts with a wide spread and under-tilts the rest
(the mismatch the calibrated reward removes). From the scores of ``M`` reference samples for each
of ``P`` prompts (``[P, M]``):

* ``std_cv``: coefficient of variation across prompts of the per-prompt standard deviation
  ``s_p = std_j r_pj`` (unbiased, ``M - 1``): ``std(s) / mean(s)``. Not 0 when calibrated: each
  ``s_p`` is an ``M``-sample estimate, whose noise alone gives ``~ 1 / sqrt(2 (M - 1))`` for normal
  scores (0.18 at ``M = 16``);
* ``std_cv_denoised``: the same without that noise, from two halves of each prompt's samples (even and
  odd columns, ``s_p^A``, ``s_p^B``, independent given the prompt): ``sqrt(max(0, cov_p(s^A, s^B))) /
  mean_p((s^A + s^B) / 2)`` -- the halves' noises do not covary, so the covariance estimates the
  variance of the spreads themselves (times the halves' common small-sample bias factor, which the
  ratio cancels). The covariance is 0 in expectation when calibrated; the reported clamped square
  root is not (it reads ~0.04 on average at ``P = 128, M = 16``, against ~0.18 for ``std_cv``). NaN
  below ``M = 4``;
* ``mean_spread_ratio``: spread of the per-prompt means relative to the typical within-prompt
  spread, ``std_p(mean_j r_pj) / mean_p(s_p)`` (per-prompt offsets, plus the sampling noise of an
  ``M``-sample mean);
* ``offset_ratio``: the same without that noise, ``sqrt(max(0, var_p(m_p) - mean_p(s_p^2) / M)) /
  mean_p(s_p)`` with ``m_p = mean_j r_pj`` (``var`` unbiased): ``E var_p(m_p) = var(offsets) +
  E s^2 / M``, so this estimates the per-prompt offsets' std in units of the within-prompt spread
  (0 when every prompt's scores share one mean: what per-prompt calibration removes and ranking
  among all prompts' samples, ``calibration.scope=pooled``, keeps);
* ``log_std_corr`` (with a gold reward): Pearson correlation across prompts of ``log s_p`` of the
  reward model and of the gold reward -- does the reward model *carry* the gold miscalibration?
* ``pairwise_accuracy``: fraction of within-prompt pairs, untied under both, that the reward model
  orders as the gold reward does;
* ``tie_share``: the share of within-prompt pairs whose scores tie (``math/calibration.tie_share``): 0 for a
  continuous reward; above 0 the calibrated reward is not uniform and the calibrated-space theory holds
  only roughly.
"""

from __future__ import annotations

import torch

from infalign.math.calibration import check_finite, tie_share

__all__ = ["miscalibration_summary", "pairwise_accuracy", "spread_stats"]


def spread_stats(scores: torch.Tensor) -> dict[str, float]:
    """``std_cv``, ``std_cv_denoised``, ``mean_spread_ratio``, ``offset_ratio`` and ``tie_share`` of one
    judge's ``[P, M]`` scores (module docstring)."""
    s = scores.double()
    std, means = s.std(dim=1), s.mean(dim=1)
    excess = (means.var() - (std**2).mean() / s.shape[1]).clamp(min=0.0)
    return {  # every within-prompt spread 0 (identical samples): ratios NaN / inf, never an exception
        "std_cv": float(std.std() / std.mean()),
        "std_cv_denoised": _split_half_cv(s),
        "mean_spread_ratio": float(means.std() / std.mean()),
        "offset_ratio": float(excess.sqrt() / std.mean()),
        "mean_within_prompt_std": float(std.mean()),
        "tie_share": tie_share(s),
    }


def _split_half_cv(s: torch.Tensor) -> float:
    """``std_cv_denoised`` of ``[P, M]`` float64 scores (module docstring)."""
    if s.shape[1] < 4 or s.shape[0] < 2:
        return float("nan")
    a, b = s[:, 0::2].std(dim=1), s[:, 1::2].std(dim=1)
    cov = ((a - a.mean()) * (b - b.mean())).sum() / (s.shape[0] - 1)
    return float(cov.clamp(min=0.0).sqrt() / ((a + b) / 2).mean())


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def miscalibration_summary(reward_model: torch.Tensor, gold: torch.Tensor | None = None) -> dict:
    """``{"reward_model": spread_stats, "gold": spread_stats, "log_std_corr", "pairwise_accuracy"}``
    (the last three only with a gold reward); needs ``M >= 2`` samples per prompt."""
    if reward_model.shape[-1] < 2:
        raise ValueError(f"need >= 2 samples per prompt, got {reward_model.shape[-1]}")
    out: dict = {"n_prompts": int(reward_model.shape[0]), "n_samples": int(reward_model.shape[1]),
                 "reward_model": spread_stats(reward_model)}
    if gold is None:
        return out
    out["gold"] = spread_stats(gold)
    rm_std, gold_std = reward_model.double().std(1), gold.double().std(1)
    ok = (rm_std > 0) & (gold_std > 0)
    out["log_std_corr"] = _pearson(rm_std[ok].log(), gold_std[ok].log()) if int(ok.sum()) >= 3 else float("nan")
    out["pairwise_accuracy"] = pairwise_accuracy(reward_model, gold)
    return out


def pairwise_accuracy(scores: torch.Tensor, gold: torch.Tensor) -> float:
    """Share of within-prompt pairs of ``[P, M]`` samples, untied under both, that ``scores`` orders
    as ``gold`` does (NaN when every pair is tied). A non-finite score raises: a NaN pair is neither
    tied nor ordered, and counting it as a wrong ordering would give a number."""
    check_finite("pairwise_accuracy: scores", scores)
    check_finite("pairwise_accuracy: gold", gold)
    ds = (scores[:, :, None] - scores[:, None, :]).sign()
    dg = (gold[:, :, None] - gold[:, None, :]).sign()
    untied = (ds != 0) & (dg != 0)
    return float((ds[untied] == dg[untied]).double().mean()) if bool(untied.any()) else float("nan")
