"""Supervised pre-training of a causal LM on (prompt, response) text: the toy reference policy.

Loss: next-token cross-entropy on the response tokens only (prompt and padding masked with
``-100``), i.e. ``-(1/|R|) sum_{t in R} log pi(y_t | x, y_<t)`` over every response token (eos
included) of the batch.
"""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F

from infalign.data.batches import PromptResponseCollator, TextPairs, make_lm_dataloader  # noqa: F401 (re-export)
from infalign.training.step_batches import StepIndexed

__all__ = [
    "LMPretrainModule",
    "PromptResponseCollator",
    "TextPairs",
    "adamw_with_warmup",
    "make_lm_dataloader",
]


def adamw_with_warmup(
    module: L.LightningModule,
    lr: float,
    weight_decay: float,
    warmup: int,
    min_lr_ratio: float = 0.1,
):
    """AdamW over trainable parameters (a Lightning optimizer config); the LR factor at optimizer
    step ``s`` (from 0) of ``T`` (:func:`lr_schedule_steps`) is

        (s + 1) / warmup                                        for s < warmup,
        m + (1 - m) (1 + cos(pi (s - warmup) / (T - warmup))) / 2   after (m = ``min_lr_ratio``),

    so the floor ``m`` is reached at ``s = T``, one step past the last (as transformers'
    ``get_cosine_schedule_with_warmup`` reaches 0 at ``num_training_steps``): the last step runs at
    ``m + (1 - m) (1 + cos(pi (T - 1 - warmup) / (T - warmup))) / 2`` -- 0.23 for T = 4 without
    warmup, 0.134 for T = 8, 0.1006 for T = 60."""
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    total = lr_schedule_steps(module)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def lr_schedule_steps(module: L.LightningModule) -> int:
    """The steps :func:`adamw_with_warmup`'s schedule decays over: the trainer's stepping batches (>= 1)."""
    return max(int(module.trainer.estimated_stepping_batches), 1)


class LMPretrainModule(StepIndexed, L.LightningModule):
    """Response-only next-token cross-entropy for any HF causal LM; logs ``train/loss``,
    ``val/loss``. Batches come from :class:`PromptResponseCollator`.

    ``dropout=False`` trains with the model in eval mode (gradients still flow): best-of-N SFT, whose
    target is the eval-mode policy minimising the NLL -- dropout noise in the log-probs would move the
    minimiser -- as CTRL and IPO train the policy they sample (``models`` with dropout: hub GPT-2 / OPT;
    the toy models have none). With ``step_batches`` set it trains on step ``global_step``'s batch
    (``training/step_batches.py``: BoN-SFT's exact resume)."""

    def __init__(self, model, lr: float = 3e-3, warmup: int = 50, weight_decay: float = 0.0,
                 dropout: bool = True):
        super().__init__()
        self.model = model
        self.save_hyperparameters(ignore=["model"])

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean over response tokens of ``-log pi(y_t | y_<t)``: logits at ``t-1`` predict ``t``."""
        logits = self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
        return F.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(),
            batch["labels"][:, 1:].flatten(),
            ignore_index=-100,
        )

    def training_step(self, batch, batch_idx):
        batch = self.step_batch(batch)
        if not self.hparams.dropout:
            self.model.eval()  # Lightning put it in train mode
        loss = self(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0],
                 sync_dist=True)  # mean over DDP ranks (BoN-SFT under trainer=ddp)
        return loss

    def validation_step(self, batch, batch_idx):
        loss = self(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0], sync_dist=True)
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        return adamw_with_warmup(self, hp.lr, hp.weight_decay, hp.warmup)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """``schedule_steps``: the steps the learning rate decays over (a resume must keep them:
        ``apps/train.offline_resume_step``)."""
        checkpoint["schedule_steps"] = lr_schedule_steps(self)
