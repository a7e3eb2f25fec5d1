"""RLOO: REINFORCE with a leave-one-out baseline, the KL folded into the reward (docs/method.md §6).

Per rollout of P prompts x G samples, with ``R_i = Phi(C_hat_i)`` and the k1 estimate
``KL_i = sum_t log pi(y_it) - log pi_ref(y_it)``:

    R'_i = R_i - beta * sg(KL_i)                                  (6.3)
    A_i  = R'_i - 1/(G-1) sum_{j != i, same prompt} R'_j           (6.4)
    L    = -(1/B) sum_i sg(A_i) sum_t m_it log pi(y_it)            (6.5), one optimizer step.

For ``y ~ pi`` the expected gradient of (6.5) is the gradient of ``E_pi[R] - beta KL(pi || pi_ref)``
(docs/method.md §6), so RLOO converges to the tilted policy ``pi_ref * exp(Phi / beta)`` (1.2). That
holds for k1 only: the k3 estimator has an unbiased *value*, but folded into the detached reward its
gradient is not the KL gradient, so ``kl_estimator`` allows ``k1`` alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from infalign.errors import require
from infalign.math.rl_objectives import rloo_advantages, rloo_loss, shaped_reward
from infalign.training.algorithms.base import AlgoConfig, OnlineAlgorithm, register_algorithm

REWARD_KL_ESTIMATORS = ("k1",)  # estimators whose gradient through the shaped reward is the KL gradient


@dataclass
class RLOOConfig(AlgoConfig):
    name: str = "rloo"
    beta: float = 0.05
    group_size: int = 4  # G samples per prompt
    kl_estimator: str = "k1"
    grad_clip: float = 1.0  # gradient-norm clip (0: none)
    kl_target: float | None = None  # set: beta from the theory for this KL (pipeline/kl_target.py)
    missing_eos_penalty: float | None = None  # set: subtracted from R_i of responses without eos (method.md (6.1b))

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.beta > 0, "algo.beta", self.beta, "beta > 0")
        require(self.kl_target is None or self.kl_target > 0, "algo.kl_target", self.kl_target,
                "null or a KL budget > 0 nats")
        require(self.group_size >= 2, "algo.group_size", self.group_size,
                "G >= 2 (RLOO needs a leave-one-out baseline)")
        require(self.kl_estimator in REWARD_KL_ESTIMATORS, "algo.kl_estimator", self.kl_estimator,
                f"one of {list(REWARD_KL_ESTIMATORS)}",
                "k3's value is an unbiased KL estimate, but folded into the (detached) reward its gradient "
                "is not the KL gradient: training would converge to another policy than "
                "pi_ref * exp(Phi/beta) (docs/method.md §6)")
        require(self.grad_clip >= 0, "algo.grad_clip", self.grad_clip, ">= 0 (0: no clipping)")
        require(self.missing_eos_penalty is None or self.missing_eos_penalty >= 0, "algo.missing_eos_penalty",
                self.missing_eos_penalty, "null or a penalty >= 0",
                "it is subtracted from the task reward of responses cut at max_new_tokens (as in TRL)")


@register_algorithm
class RLOO(OnlineAlgorithm):
    name = "rloo"
    Config = RLOOConfig
    named_by_transform = True  # the default solver: its runs are named ``expn(t=4)``, ``bon4-exp-t4-b20``

    def advantages(self, task_reward, kl):
        """(6.3) and (6.4): the shaped reward (the logged objective) and the leave-one-out advantages."""
        shaped = shaped_reward(task_reward, kl, self.cfg.beta)
        return shaped, rloo_advantages(shaped, self.cfg.group_size)

    def loss(self, logprobs, rollout_logprobs, advantages, mask):
        """(6.5); the rollout's log-probs are not needed (one on-policy step)."""
        return rloo_loss(logprobs, mask, advantages), {}
