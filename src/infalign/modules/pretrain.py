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
from torch.utils.data import DataLoader, Dataset

from infalign.models.builders import encode_prompt_response

__all__ = [
    "LMPretrainModule",
    "PromptResponseCollator",
    "TextPairs",
    "adamw_with_warmup",
    "make_lm_dataloader",
]


class TextPairs(Dataset):
    """Parallel lists of strings as a map-style dataset of tuples."""

    def __init__(self, *columns: list[str]):
        if len({len(c) for c in columns}) != 1:
            raise ValueError(f"columns differ in length: {[len(c) for c in columns]}")
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns[0])

    def __getitem__(self, i: int) -> tuple[str, ...]:
        return tuple(c[i] for c in self.columns)


class PromptResponseCollator:
    """``[(prompt, response), ...]`` -> ``input_ids, attention_mask, labels`` (labels ``-100``
    outside the response)."""

    def __init__(self, tokenizer, max_length: int | None = None):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, batch: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
        prompts, responses = zip(*batch)
        enc = encode_prompt_response(
            self.tokenizer, list(prompts), list(responses), max_length=self.max_length
        )
        labels = enc["input_ids"].masked_fill(enc["response_mask"] == 0, -100)
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "labels": labels,
        }


def make_lm_dataloader(
    tokenizer,
    prompts: list[str],
    responses: list[str],
    batch_size: int = 64,
    shuffle: bool = True,
    seed: int = 0,
    max_length: int | None = None,
) -> DataLoader:
    """A ``DataLoader`` of :class:`PromptResponseCollator` batches (seeded shuffling)."""
    return DataLoader(
        TextPairs(prompts, responses),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
        collate_fn=PromptResponseCollator(tokenizer, max_length),
    )


def adamw_with_warmup(
    module: L.LightningModule,
    lr: float,
    weight_decay: float,
    warmup: int,
    min_lr_ratio: float = 0.1,
):
    """AdamW over trainable parameters; LR: linear warmup over ``warmup`` steps, then cosine
    decay to ``min_lr_ratio * lr`` at the trainer's last step (a Lightning optimizer config)."""
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    total = max(int(module.trainer.estimated_stepping_batches), 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class LMPretrainModule(L.LightningModule):
    """Response-only next-token cross-entropy for any HF causal LM; logs ``train/loss``,
    ``val/loss``. Batches come from :class:`PromptResponseCollator`."""

    def __init__(self, model, lr: float = 3e-3, warmup: int = 50, weight_decay: float = 0.0):
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
        loss = self(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        loss = self(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        return adamw_with_warmup(self, hp.lr, hp.weight_decay, hp.warmup)
