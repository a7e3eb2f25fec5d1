"""Reference pools (calibration tables, evaluation reference pools): cache miss, hit, corrupt file."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import lightning as L
import torch
from omegaconf import OmegaConf

from infalign.infra.cache import load_tensors
from infalign.pipeline import pools


class CountingScorer:
    def __init__(self):
        self.calls = 0

    def score(self, prompts, responses):
        self.calls += 1
        return torch.tensor([float(len(r.split())) for r in responses])


def make_world(tmp_path):
    from infalign.models.builders import build_toy_lm
    from infalign.toy.world import ToyWorld

    world = ToyWorld(seed=0)
    tok = world.tokenizer()
    tok.padding_side = "left"
    torch.manual_seed(0)
    model = build_toy_lm(tok, "tiny")
    return SimpleNamespace(reference=model, tokenizer=tok, reference_fingerprint="ref-a",
                           reward_fingerprint="rm-a"), world.prompts("train", 3)


def test_reference_pool_miss_hit_corrupt(tmp_path):
    world, prompts = make_world(tmp_path)
    scorer = CountingScorer()
    gen = OmegaConf.create({"max_new_tokens": 8, "temperature": 1.0, "batch_size": 2})
    kw = functools.partial(L.Trainer, accelerator="cpu", devices=1, enable_progress_bar=False,
                               enable_model_summary=False)

    def pool():
        return pools.reference_pool(world, prompts, 4, {"reward": scorer}, gen, kw, 0, tmp_path, tag="calibration")

    first, hit = pool()
    assert not hit and scorer.calls == 2 and first["scores"]["reward"].shape == (3, 4)
    assert first["lengths"].shape == first["ended"].shape == (3, 4) and (first["lengths"] >= 1).all()
    second, hit = pool()
    assert hit and scorer.calls == 2  # nothing sampled or scored again
    for k in ("lengths", "ended"):  # the response statistics come back from the cache too
        assert torch.equal(first[k], second[k])
    assert torch.equal(first["scores"]["reward"], second["scores"]["reward"])

    (path,) = (tmp_path / "pools").glob("calibration-*.pt")
    tensors, _ = load_tensors(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a torn write
    rebuilt, hit = pool()
    assert not hit and scorer.calls == 4  # detected, rebuilt, never silently used
    assert torch.equal(rebuilt["scores"]["reward"], tensors["score/reward"])  # same seed -> same pool

    # a different reference model (fingerprint) is a different cache entry
    world.reference_fingerprint = "ref-b"
    _, hit = pool()
    assert not hit and len(list((tmp_path / "pools").glob("calibration-*.pt"))) == 2
