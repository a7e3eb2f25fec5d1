"""IPO on (best, worst)-of-N reference pairs, the BoNBoN recipe (docs/method.md §6, (6.7)).

    h    = [log pi(y_w|x) - log pi_ref(y_w|x)] - [log pi(y_l|x) - log pi_ref(y_l|x)]
    loss = (h - 1/(2 tau))^2,          tau = algo.beta (a smaller tau moves further from pi_ref)

On a fixed set of pairs the loss is a least-squares problem in the log-ratios ``log pi/pi_ref``
(the normaliser cancels in ``h``). The calibrated-space theory predicts nothing for it.
Its Lightning module is ``training/ipo.py`` (imported when a run trains, not to validate a config).
"""

from __future__ import annotations

from dataclasses import dataclass

from infalign.errors import require
from infalign.training.algorithms.base import AlgoConfig, OfflineAlgorithm, register_algorithm


@dataclass
class IPOConfig(AlgoConfig):
    name: str = "ipo"
    beta: float = 0.1  # tau
    n_samples: int = 4  # N reference samples per prompt: the pair is (best, worst) of them

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.beta > 0, "algo.beta", self.beta, "tau > 0")
        require(self.n_samples >= 2, "algo.n_samples", self.n_samples, ">= 2 (best and worst of N)")


@register_algorithm
class IPO(OfflineAlgorithm):
    name = "ipo"
    Config = IPOConfig
    kl_knob = "algo.beta (tau: a smaller tau moves further from the reference)"
    kl_knob_keys = ("algo.beta",)

    def theory_target(self, transform):
        """None: IPO's solution is not a tilt of the calibrated reward."""
        return None

    def run_label(self, transform_label: str) -> str:
        return f"{self.name}-n{self.cfg.n_samples}-b{self.cfg.beta:g}"

    def fit_module(self, policy, reference, tokenizer, prompts, best, worst, seed):
        from infalign.data.batches import PolicyPairCollator
        from infalign.models.generation import prompt_token_limit
        from infalign.training.ipo import IPOModule

        module = IPOModule(policy, reference, tau=self.cfg.beta, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        # the sampled token ids of the (best, worst) pairs (a stop token only where a response ended)
        limit = prompt_token_limit(reference, self.cfg.max_new_tokens)  # prompts cut as the sampler cut them
        return module, self.shuffled_loader((prompts, best.ids, worst.ids), PolicyPairCollator(tokenizer, limit),
                                            seed)
