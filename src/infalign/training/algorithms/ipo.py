"""IPO on (best, worst)-of-N reference pairs, the BoNBoN recipe (docs/method.md §6, (6.7)).

    h    = [log pi(y_w|x) - log pi_ref(y_w|x)] - [log pi(y_l|x) - log pi_ref(y_l|x)]
    loss = (h - 1/(2 tau))^2,          tau = algo.beta (a smaller tau moves further from pi_ref)

On a fixed set of pairs the loss is a least-squares problem in the log-ratios ``log pi/pi_ref``
(the normaliser cancels in ``h``). The calibrated-space theory predicts nothing for it.
The reference is frozen and not a registered submodule (not optimised, not checkpointed).
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import torch
from torch.utils.data import DataLoader

from infalign.data.batches import PolicyPairCollator, TextPairs
from infalign.errors import require
from infalign.math.rl_objectives import ipo_loss
from infalign.models.generation import sequence_logprobs
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

    def theory_target(self, transform):
        """None: IPO's solution is not a tilt of the calibrated reward."""
        return None

    def run_label(self, transform_label: str) -> str:
        return f"{self.name}-n{self.cfg.n_samples}-b{self.cfg.beta:g}"

    def fit_module(self, policy, reference, tokenizer, prompts, best, worst, seed):
        module = IPOModule(policy, reference, tau=self.cfg.beta, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        loader = DataLoader(TextPairs(prompts, best, worst), batch_size=self.cfg.prompts_per_step, shuffle=True,
                            generator=torch.Generator().manual_seed(seed), collate_fn=PolicyPairCollator(tokenizer))
        return module, loader


class IPOModule(L.LightningModule):
    """Batches of :class:`~infalign.data.batches.PolicyPairCollator`; AdamW at a constant ``lr``."""

    def __init__(self, policy, reference, tau: float, lr: float, weight_decay: float = 0.0) -> None:
        super().__init__()
        self.policy, self.tau, self.lr, self.weight_decay = policy, tau, lr, weight_decay
        self._reference = [reference.requires_grad_(False).eval()]

    def on_fit_start(self) -> None:
        self._reference[0].to(self.device)

    def _sums(self, model, batch, side: str) -> torch.Tensor:
        lp = sequence_logprobs(model, batch["prompt_ids"], batch["prompt_mask"], batch[f"{side}_ids"],
                               batch[f"{side}_mask"])
        return (lp * batch[f"{side}_mask"]).sum(-1)

    def training_step(self, batch, batch_idx):
        reference = self._reference[0]
        with torch.no_grad():
            ref_w, ref_l = self._sums(reference, batch, "chosen"), self._sums(reference, batch, "rejected")
        pol_w, pol_l = self._sums(self.policy, batch, "chosen"), self._sums(self.policy, batch, "rejected")
        loss = ipo_loss(pol_w, ref_w, pol_l, ref_l, self.tau)
        n = batch["prompt_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/margin", ((pol_w - ref_w) - (pol_l - ref_l)).mean(), batch_size=n)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.policy.parameters(), lr=self.lr, weight_decay=self.weight_decay)
