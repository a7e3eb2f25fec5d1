"""KL-regularised RL maths for InfAlign-CTRL (docs/method.md section 6): pure, vectorised functions."""

from infalign.rl.objectives import (
    kl_penalty,
    ppo_loss,
    rloo_advantages,
    rloo_loss,
    shaped_reward,
)

__all__ = ["kl_penalty", "ppo_loss", "rloo_advantages", "rloo_loss", "shaped_reward"]
