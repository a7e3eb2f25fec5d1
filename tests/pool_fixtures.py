"""A deterministic tiny world for pool tests (single process and distributed)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from omegaconf import OmegaConf

GEN = OmegaConf.create({"max_new_tokens": 8, "temperature": 1.0, "batch_size": 2})


class LengthScorer:
    """A programmatic judge: the number of words of the response."""

    def score(self, prompts, responses):
        return torch.tensor([float(len(r.split())) for r in responses])


def judges() -> dict:
    return {"reward": LengthScorer()}


def tiny_models(n_prompts: int = 3):
    from infalign.models.builders import build_toy_lm
    from infalign.toy.world import ToyWorld

    world = ToyWorld(seed=0)
    tok = world.tokenizer()
    tok.padding_side = "left"
    torch.manual_seed(0)
    model = build_toy_lm(tok, "tiny")
    ns = SimpleNamespace(reference=model, tokenizer=tok, reference_fingerprint="ref-a", reward_fingerprint="rm-a")
    return ns, world.prompts("train", n_prompts)
