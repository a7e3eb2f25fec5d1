"""IPO's Lightning module (the algorithm and its config: ``training/algorithms/ipo.py``).

    h    = [log pi(y_w|x) - log pi_ref(y_w|x)] - [log pi(y_l|x) - log pi_ref(y_l|x)]
    loss = (h - 1/(2 tau))^2

The reference is frozen and not a registered submodule (not optimised, not checkpointed). Both
sums are taken with dropout off (the policy in eval mode, as CTRL's teacher-forced pass; gradients
still flow; TRL's DPO/IPO turn dropout off by default too, by zeroing its probabilities): the loss
is a square, so dropout noise ``e`` in ``h`` would add ``Var(e)`` to it and move its fixed point,
and ``h`` would not be 0 at the start, where the policy is the reference.
"""

from __future__ import annotations

import lightning as L
import torch

from infalign.math.rl_objectives import ipo_loss
from infalign.models.generation import sequence_logprobs
from infalign.training.step_batches import StepIndexed

__all__ = ["IPOModule"]


class IPOModule(StepIndexed, L.LightningModule):
    """Batches of :class:`~infalign.data.batches.PolicyPairCollator`; AdamW at a constant ``lr``. With
    ``step_batches`` set it trains on step ``global_step``'s batch (``training/step_batches.py``)."""

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
        batch = self.step_batch(batch)
        reference = self._reference[0]
        with torch.no_grad():
            ref_w, ref_l = self._sums(reference, batch, "chosen"), self._sums(reference, batch, "rejected")
        self.policy.eval()  # dropout off (module docstring); Lightning put it in train mode
        pol_w, pol_l = self._sums(self.policy, batch, "chosen"), self._sums(self.policy, batch, "rejected")
        loss = ipo_loss(pol_w, ref_w, pol_l, ref_l, self.tau)
        n = batch["prompt_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=n, sync_dist=True)  # mean over DDP ranks
        self.log("train/margin", ((pol_w - ref_w) - (pol_l - ref_l)).mean(), batch_size=n, sync_dist=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.policy.parameters(), lr=self.lr, weight_decay=self.weight_decay)
