"""Sampling + scoring as a Lightning predict loop (calibration pools and evaluation pools).

``trainer.predict(RolloutModule(...), prompt_loader(prompts))`` samples ``num_samples`` responses
per prompt and scores them with every scorer; with a ``reference`` model it also returns each
sample's log-ratio sum (for KL). Running it through ``Trainer.predict`` gives the same rich progress
bar, devices and (later) distributed sharding as training.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from infalign.generation import sample, sequence_logprobs
from infalign.models.reward import Scorer


class _Prompts(Dataset):
    def __init__(self, prompts: list[str]) -> None:
        self.prompts = prompts

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> tuple[int, str]:
        return i, self.prompts[i]


def _collate(batch: list[tuple[int, str]]) -> dict:
    return {"index": torch.tensor([i for i, _ in batch]), "prompt": [p for _, p in batch]}


def prompt_loader(prompts: list[str], batch_size: int) -> DataLoader:
    """A deterministic (unshuffled) loader of ``{"index": [b], "prompt": [b]}`` batches."""
    if not prompts:
        raise ValueError("no prompts: the prompt set is empty (check data.* sizes / files)")
    return DataLoader(_Prompts(prompts), batch_size=batch_size, shuffle=False, collate_fn=_collate)


def step_generator(seed: int, *step: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator seeded from (seed, step...) -- identical draws wherever a run resumes."""
    g = torch.Generator(device=device)
    g.manual_seed(hash((int(seed), *map(int, step))) & 0x7FFF_FFFF_FFFF_FFFF)
    return g


class RolloutModule(L.LightningModule):
    """predict_step -> ``{"index": [b], "scores": {name: [b, n]}, "log_ratio": [b, n] | None}``."""

    def __init__(
        self,
        policy,
        tokenizer,
        scorers: dict[str, Scorer],
        num_samples: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        seed: int = 0,
        reference=None,
        keep_responses: int = 0,
    ) -> None:
        super().__init__()
        self.policy = policy
        self._reference = [reference]  # not a registered submodule: frozen, never checkpointed
        self.tokenizer, self.scorers = tokenizer, scorers
        self.num_samples, self.max_new_tokens, self.temperature = (
            num_samples,
            max_new_tokens,
            temperature,
        )
        self.seed, self.keep_responses = seed, keep_responses

    @torch.no_grad()
    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        prompts, n = batch["prompt"], self.num_samples
        gen = step_generator(self.seed, int(batch["index"][0]), device=self.device)
        roll = sample(
            self.policy,
            self.tokenizer,
            prompts,
            n,
            self.max_new_tokens,
            self.temperature,
            generator=gen,
        )
        flat_prompts = [p for p in prompts for _ in range(n)]
        scores = {
            name: s.score(flat_prompts, roll.responses).view(len(prompts), n)
            for name, s in self.scorers.items()
        }
        log_ratio = None
        reference = self._reference[0]
        if reference is not None:
            ref_lp = sequence_logprobs(
                reference, roll.prompt_ids, roll.prompt_mask, roll.response_ids, roll.response_mask
            )
            log_ratio = (
                ((roll.logprobs - ref_lp) * roll.response_mask).sum(-1).view(len(prompts), n).cpu()
            )
        keep = roll.responses[: self.keep_responses * n] if self.keep_responses else []
        return {
            "index": batch["index"],
            "scores": scores,
            "log_ratio": log_ratio,
            "responses": keep,
            "lengths": roll.response_mask.sum(-1).view(len(prompts), n).cpu(),
        }


def gather(outputs: list[dict]) -> dict:
    """Concatenate predict outputs in prompt order: scores ``{name: [P, n]}``, log_ratio ``[P, n]``."""
    index = torch.cat([o["index"] for o in outputs])
    order = torch.argsort(index)
    names = outputs[0]["scores"].keys()
    out = {
        "index": index[order],
        "scores": {k: torch.cat([o["scores"][k] for o in outputs])[order] for k in names},
        "lengths": torch.cat([o["lengths"] for o in outputs])[order],
        "responses": [r for o in outputs for r in o["responses"]],
    }
    out["log_ratio"] = (
        torch.cat([o["log_ratio"] for o in outputs])[order]
        if outputs[0]["log_ratio"] is not None
        else None
    )
    return out
