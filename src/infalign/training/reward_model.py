"""Bradley-Terry reward-model training on preference pairs ``(prompt, chosen, rejected)``.

Generic: the toy world's gold-labelled pairs and real HH / TL;DR comparisons go through the same
collator and module. Loss ``-log sigmoid(r(x, chosen) - r(x, rejected))``, mean over pairs.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import BinaryAccuracy

from infalign.data.batches import PreferenceCollator, make_preference_dataloader  # noqa: F401 (re-export)
from infalign.training.pretrain import adamw_with_warmup

__all__ = [
    "PreferenceCollator",
    "RewardModelModule",
    "bradley_terry_loss",
    "make_preference_dataloader",
]


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """``mean_i -log sigmoid(chosen_i - rejected_i)`` (computed as ``softplus(rejected - chosen)``)."""
    return F.softplus(rejected - chosen).mean()


class RewardModelModule(L.LightningModule):
    """Train a one-output sequence-classification model with :func:`bradley_terry_loss`.

    Logs ``train/loss``, ``train/accuracy``, ``val/loss`` and ``val/accuracy`` (fraction of
    pairs with ``r(chosen) > r(rejected)``).
    """

    def __init__(self, model, lr: float = 1e-3, warmup: int = 20, weight_decay: float = 0.0):
        super().__init__()
        self.model = model
        self.save_hyperparameters(ignore=["model"])
        self.train_acc = BinaryAccuracy()
        self.val_acc = BinaryAccuracy()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Scores ``[rows]``: the model's single logit per sequence (``token_type_ids``: the text-pair
        layout's segments, ``reward.input=pair``)."""
        types = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **types).logits[:, 0]

    def _step(self, batch, stage: str, acc: BinaryAccuracy) -> torch.Tensor:
        scores = self(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        chosen, rejected = scores.chunk(2)
        loss = bradley_terry_loss(chosen, rejected)
        margin = (chosen - rejected).detach()
        acc((margin > 0).long(), torch.ones_like(margin, dtype=torch.long))
        n = chosen.shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=n)
        self.log(f"{stage}/accuracy", acc, prog_bar=stage == "val", batch_size=n)
        return loss

    def on_fit_start(self) -> None:
        # ``from_pretrained`` returns models in eval mode and Lightning keeps submodule modes:
        # without this, dropout stays off during training.
        self.model.train()

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train", self.train_acc)

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val", self.val_acc)

    def configure_optimizers(self):
        hp = self.hparams
        return adamw_with_warmup(self, hp.lr, hp.weight_decay, hp.warmup)
