"""IPO on preference pairs (the BoNBoN recipe uses (best, worst)-of-N pairs of reference samples).

    h(x, y_w, y_l) = [log pi(y_w|x) - log pi_ref(y_w|x)] - [log pi(y_l|x) - log pi_ref(y_l|x)]
    loss           = (h - 1/(2 tau))^2                       (Azar et al., 2023; tau = algo.beta)

The reference is frozen and not a registered submodule (not optimised, not checkpointed).
"""

from __future__ import annotations

import lightning as L
import torch

from infalign.models.generation import sequence_logprobs


def ipo_loss(policy_w, ref_w, policy_l, ref_l, tau: float) -> torch.Tensor:
    """Mean over pairs of ``(h - 1/(2 tau))^2`` from per-sequence log-prob sums ``[B]``."""
    h = (policy_w - ref_w) - (policy_l - ref_l)
    return ((h - 1.0 / (2.0 * tau)) ** 2).mean()


class IPOModule(L.LightningModule):
    """Batches: ``{"prompt_ids", "prompt_mask", "chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask"}``."""

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
        with torch.no_grad():
            reference = self._reference[0]
            ref_w, ref_l = self._sums(reference, batch, "chosen"), self._sums(reference, batch, "rejected")
        pol_w, pol_l = self._sums(self.policy, batch, "chosen"), self._sums(self.policy, batch, "rejected")
        loss = ipo_loss(pol_w, ref_w, pol_l, ref_l, self.tau)
        n = batch["prompt_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/margin", ((pol_w - ref_w) - (pol_l - ref_l)).mean(), batch_size=n)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.policy.parameters(), lr=self.lr, weight_decay=self.weight_decay)
