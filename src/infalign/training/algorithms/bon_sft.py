"""BoN-SFT: best-of-N distillation by SFT (docs/method.md §6, "Offline baselines").

For every training prompt, N reference samples are drawn once and the reward model's best is kept
(``pipeline/baselines.py``); the policy is fine-tuned on it with the response-only NLL
``-(1/|R|) sum_{t in R} log pi(y_t | x, y_<t)`` for ``algo.steps`` steps. Its population target is
the best-of-N policy, which is the KL-RL solution for ``Phi = log u`` at ``beta = 1/(N-1)``
(docs/method.md §4-§5): that is its theory target. Its KL knob is the number of SFT steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from infalign.errors import require
from infalign.math.transforms import Log
from infalign.training.algorithms.base import AlgoConfig, OfflineAlgorithm, register_algorithm


@dataclass
class BoNSFTConfig(AlgoConfig):
    name: str = "bon_sft"
    n_samples: int = 4  # N reference samples per prompt

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.n_samples >= 2, "algo.n_samples", self.n_samples, ">= 2 (the best of N)")


@register_algorithm
class BoNSFT(OfflineAlgorithm):
    name = "bon_sft"
    Config = BoNSFTConfig
    kl_knob = "algo.steps (SFT steps towards the best-of-N policy)"
    kl_knob_keys = ("algo.steps",)
    resume_may_extend = False  # its learning rate decays over algo.steps: a longer run's first steps differ

    def theory_target(self, transform):
        """The best-of-N policy: ``Phi = log u`` at ``beta = 1/(N-1)`` (``transform`` is not used)."""
        return Log(floor=0.0), 1.0 / (self.cfg.n_samples - 1)

    def run_label(self, transform_label: str) -> str:
        return f"{self.name}-n{self.cfg.n_samples}-s{self.cfg.steps}"

    def fit_module(self, policy, reference, tokenizer, prompts, best, worst, seed):
        """SFT on (prompt, best), the best responses' sampled token ids (``best.ids``,
        :class:`~infalign.data.batches.SampledResponseCollator`): AdamW at ``algo.lr``, cosine-decayed
        towards 0.1 x (reached one step past the run: its last step runs at 0.23 x of 4 steps, 0.1006 x
        of 60; ``adamw_with_warmup``), no warmup, dropout off (the target is the eval-mode NLL minimiser,
        as CTRL and IPO train what they sample)."""
        from infalign.data.batches import SampledResponseCollator
        from infalign.models.generation import prompt_token_limit
        from infalign.training.pretrain import LMPretrainModule

        module = LMPretrainModule(policy, lr=self.cfg.lr, warmup=0, weight_decay=self.cfg.weight_decay,
                                  dropout=False)
        # the best responses' sampled ids (best.ids: a stop token only where the response ended)
        # prompts cut as the sampler cut them (the reference drew the samples, max_new_tokens new tokens each)
        limit = prompt_token_limit(reference, self.cfg.max_new_tokens)
        return module, self.shuffled_loader((prompts, best.ids), SampledResponseCollator(tokenizer, limit), seed)
