"""PPO-clip with the group (leave-one-out) advantage and no value head (docs/method.md §6, (6.6)).

The rollout, KL shaping and advantages are RLOO's (6.3)-(6.4), computed once per rollout; then
``ppo_epochs`` x ``minibatches`` optimizer steps on the clipped surrogate

    rho_t = exp(log pi_theta(y_t) - log pi_old(y_t)),
    L     = mean_t max(-A rho_t, -A clip(rho_t, 1 - eps, 1 + eps)),

with ``pi_old`` the rollout's log-probs. At ``rho = 1`` its gradient is RLOO's times
``B / sum_i |y_i|`` (the token mean; one scalar per minibatch: the same direction), so it aims at
the same tilted policy ``pi_ref * exp(Phi / beta)``; AdamW cancels a constant scale, so it moves further
per rollout than RLOO through its ``ppo_epochs x minibatches`` steps, not through that factor.
"""

from __future__ import annotations

from dataclasses import dataclass

from infalign.errors import require
from infalign.math.rl_objectives import ppo_loss
from infalign.training.algorithms.base import register_algorithm
from infalign.training.algorithms.rloo import RLOO, RLOOConfig


@dataclass
class PPOConfig(RLOOConfig):
    name: str = "ppo"
    ppo_epochs: int = 2
    minibatches: int = 2
    clip_eps: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.ppo_epochs >= 1, "algo.ppo_epochs", self.ppo_epochs, ">= 1")
        rows = self.prompts_per_step * self.group_size
        require(1 <= self.minibatches <= rows and rows % self.minibatches == 0, "algo.minibatches",
                self.minibatches, f"a divisor of prompts_per_step * group_size = {rows}")
        require(0 < self.clip_eps < 1, "algo.clip_eps", self.clip_eps, "0 < clip_eps < 1")


@register_algorithm
class PPO(RLOO):
    name = "ppo"
    Config = PPOConfig
    named_by_transform = False  # ``identity+ppo``, ``bon4-identity-b0.1-ppo``

    @property
    def epochs(self) -> int:
        return self.cfg.ppo_epochs

    @property
    def minibatches(self) -> int:
        return self.cfg.minibatches

    def loss(self, logprobs, rollout_logprobs, advantages, mask):
        """(6.6); stats: ``clip_frac`` and ``approx_kl`` (k3 of KL(pi_old || pi_theta) per token)."""
        return ppo_loss(logprobs, rollout_logprobs, advantages, mask, self.cfg.clip_eps)
