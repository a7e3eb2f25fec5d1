"""Reward scorers: one small interface, ``score(prompts, responses) -> float32 [B]``.

RL, calibration and evaluation only ever call ``score``; whether it is a learned
sequence-classification model (:class:`RewardScorer`) or the toy world's programmatic gold reward
(:class:`GoldScorer`) is a config choice.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from infalign.models.builders import encode_prompt_response

__all__ = ["GoldScorer", "RewardScorer", "Scorer", "check_finite"]


@runtime_checkable
class Scorer(Protocol):
    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """Scalar reward per (prompt, response) pair: float32 ``[B]`` on the CPU."""
        ...


def check_finite(scores: torch.Tensor, what: str) -> torch.Tensor:
    """Raise ``FloatingPointError`` naming the offending rows if any score is NaN or infinite."""
    bad = ~torch.isfinite(scores)
    if bad.any():
        rows = bad.nonzero().flatten()[:10].tolist()
        raise FloatingPointError(
            f"{what} produced {int(bad.sum())} non-finite scores (rows {rows}...); "
            f"the reward model weights or inputs are broken"
        )
    return scores


class RewardScorer:
    """Score with a sequence-classification model whose single logit is the reward.

    Inputs are built by :func:`~infalign.models.builders.encode_prompt_response` (right-padded,
    eos appended), the same encoding the reward model was trained on. Runs in eval mode under
    ``no_grad`` on the model's device, ``batch_size`` rows at a time; returns CPU float32.
    (The model is switched to eval mode on every call; its parameters are left untouched.)
    """

    def __init__(self, model, tokenizer, batch_size: int = 64, max_length: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_length = batch_size, max_length

    @torch.no_grad()
    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        self.model.eval()
        device = next(self.model.parameters()).device
        out = []
        for i in range(0, len(prompts), self.batch_size):
            enc = encode_prompt_response(
                self.tokenizer,
                prompts[i : i + self.batch_size],
                responses[i : i + self.batch_size],
                max_length=self.max_length,
            )
            logits = self.model(
                input_ids=enc["input_ids"].to(device),
                attention_mask=enc["attention_mask"].to(device),
            ).logits
            out.append(logits[:, 0].float().cpu())
        scores = torch.cat(out) if out else torch.zeros(0)
        return check_finite(scores, "reward model")


class GoldScorer:
    """The toy world's gold reward ``r*(x, y)`` behind the :class:`Scorer` interface."""

    def __init__(self, world):
        self.world = world

    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        return check_finite(self.world.gold_reward(prompts, responses), "gold reward")
