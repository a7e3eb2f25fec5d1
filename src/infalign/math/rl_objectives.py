"""The RL objective of InfAlign-CTRL, as pure functions on per-token log-probs.

Shapes: ``logprobs``, ``ref_logprobs``, ``old_logprobs``, ``mask`` are ``[B, L]`` (response tokens,
``mask`` 1 on real tokens incl. eos); rewards, KLs and advantages are per sequence ``[B]``.
Policy ``p = pi``, reference ``q = pi_ref``; the task reward is ``Phi(C_hat(x, y))``.

Two solvers share these pieces (docs/method.md §6):
- RLOO: ``R_i = Phi(C_i) - beta * KL_i`` (:func:`shaped_reward`), leave-one-out advantages within
  each prompt's group (:func:`rloo_advantages`), REINFORCE loss (:func:`rloo_loss`).
- PPO: the clipped surrogate (:func:`ppo_loss`) on the same sequence-level advantages.
The offline IPO baseline's loss is :func:`ipo_loss` (docs/method.md (6.7)).
"""

from __future__ import annotations

import torch

from infalign.errors import ConfigError, require

__all__ = ["kl_penalty", "missing_eos_penalized", "shaped_reward", "rloo_advantages", "rloo_loss", "ppo_loss",
           "ipo_loss"]

KL_ESTIMATORS = ("k1", "k3")


def _masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.bool(), values, 0.0).sum(-1)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return _masked_sum(values, mask).sum() / mask.sum().clamp(min=1)


def kl_penalty(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, estimator: str = "k1"
) -> torch.Tensor:
    """Per-sequence KL estimate ``[B]``: ``sum_t mask_t * k(t)`` on tokens sampled from ``p``.

    - ``k1 = log p - log q`` (unbiased, can be negative per sample);
    - ``k3 = (r - 1) - log r`` with ``r = q/p = exp(log q - log p)`` (Schulman's estimator:
      unbiased since ``E_p[r] = 1``, and ``>= 0`` for every sample since ``x - 1 >= log x``).
    Gradients flow through both arguments; detach where the caller needs a constant.
    """
    if estimator not in KL_ESTIMATORS:
        raise ConfigError("algo.kl_estimator", estimator, f"one of {list(KL_ESTIMATORS)}")
    log_ratio = logprobs - ref_logprobs  # log p - log q
    per_token = log_ratio if estimator == "k1" else torch.expm1(-log_ratio) + log_ratio
    return _masked_sum(per_token, mask)


def missing_eos_penalized(task_reward: torch.Tensor, ended: torch.Tensor, penalty: float | None) -> torch.Tensor:
    """docs/method.md (6.1b): ``R_i - p * 1{y_i has no stop token}`` -- the task reward of a response
    cut at ``max_new_tokens`` lowered by ``p = algo.missing_eos_penalty`` (TRL's setting, a value
    >= 0 that is subtracted); ``penalty=None`` leaves the reward unchanged."""
    if penalty is None:
        return task_reward
    return task_reward - penalty * (~ended.to(task_reward.device, torch.bool)).to(task_reward.dtype)


def shaped_reward(task_reward: torch.Tensor, kl: torch.Tensor, beta: float) -> torch.Tensor:
    """``R_i = Phi(C_i) - beta * KL_i``: the KL penalty folded into the sequence reward.

    ``kl`` is detached: the reward is a constant for the score-function gradient.
    """
    return task_reward - beta * kl.detach()


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Leave-one-out advantages ``[P*G]``: ``A_i = R_i - mean_{j != i, same prompt} R_j``.

    ``rewards`` is ``[P, G]`` or prompt-major ``[P*G]`` (``row = p*G + j``). Each group's
    advantages sum to 0. Needs ``G >= 2``.
    """
    require(
        group_size >= 2, "algo.group_size", group_size, "an integer >= 2 (RLOO needs a baseline)"
    )
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.reshape(-1, group_size)
    return (r - (r.sum(1, keepdim=True) - r) / (group_size - 1)).reshape(-1)


def rloo_loss(logprobs: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """REINFORCE with the leave-one-out baseline: ``-(1/B) sum_i A_i * sum_t mask_it log pi(y_it)``.

    Its gradient is ``-(1/B) sum_i A_i grad log pi(y_i | x_i)``, the RLOO policy-gradient estimate
    (the advantages, built from :func:`shaped_reward`, are treated as constants).
    """
    return -(advantages.detach() * _masked_sum(logprobs, mask)).mean()


def ppo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate, token-mean over the mask, with sequence advantages on every token.

    ``rho_t = exp(log pi - log pi_old)``,
    ``loss = mean_t max(-A * rho_t, -A * clip(rho_t, 1 - eps, 1 + eps))``.
    Stats (detached): ``clip_frac`` = share of tokens where the clipped term is active;
    ``approx_kl`` = token-mean of ``(rho - 1) - log rho``, the k3 estimate of
    ``KL(pi_old || pi)`` per token.
    """
    log_rho = logprobs - old_logprobs.detach()
    rho = torch.exp(log_rho)
    adv = advantages.detach()[:, None]
    unclipped = -adv * rho
    clipped = -adv * torch.clamp(rho, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = _masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clip_frac": _masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": _masked_mean(torch.expm1(log_rho) - log_rho, mask),
        }
    return loss, stats


def ipo_loss(policy_w, ref_w, policy_l, ref_l, tau: float) -> torch.Tensor:
    """IPO (Azar et al., 2023; docs/method.md (6.7)) from per-sequence log-prob sums ``[B]``:

    ``h = [log pi(y_w) - log pi_ref(y_w)] - [log pi(y_l) - log pi_ref(y_l)]``, loss = mean of
    ``(h - 1/(2 tau))^2`` over the pairs.
    """
    h = (policy_w - ref_w) - (policy_l - ref_l)
    return ((h - 1.0 / (2.0 * tau)) ** 2).mean()
