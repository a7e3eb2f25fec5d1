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


def test_policy_pool_is_cached_under_the_policy_key_and_equals_a_fresh_draw(tmp_path):
    """pools.policy_pool: a keyed policy's evaluation pool is drawn once (scores, log-ratios, lengths, stop
    flags and response texts come back identical), another policy key or pool setting is another entry,
    and a policy without a key is drawn fresh every time."""
    world, prompts = make_world(tmp_path)
    torch.manual_seed(1)
    from infalign.models.builders import build_toy_lm

    world.policy = build_toy_lm(world.tokenizer, "tiny")  # != the reference: log-ratios are not 0
    scorer = CountingScorer()
    gen = OmegaConf.create({"max_new_tokens": 8, "temperature": 1.0, "batch_size": 2})
    kw = functools.partial(L.Trainer, accelerator="cpu", devices=1, enable_progress_bar=False,
                           enable_model_summary=False)

    def pool(policy_id, n=4, keep=True):
        return pools.policy_pool(world, policy_id, prompts, n, {"reward": scorer}, gen, kw, 5, tmp_path,
                                 keep_responses=keep)

    fresh, hit = pool(None)
    assert hit is None and scorer.calls == 2 and not list(tmp_path.glob("pools/policy-*"))
    first, hit = pool("policy-a")
    assert hit is False and scorer.calls == 4
    second, hit = pool("policy-a")
    assert hit is True and scorer.calls == 4  # nothing sampled or scored again
    for got in (first, second):  # the same seed draws the same pool, cached or not
        assert torch.equal(got["scores"]["reward"], fresh["scores"]["reward"])
        assert torch.equal(got["log_ratio"], fresh["log_ratio"]) and got["log_ratio"].abs().sum() > 0
        assert torch.equal(got["lengths"], fresh["lengths"]) and torch.equal(got["ended"], fresh["ended"])
        assert got["responses"] == fresh["responses"] and len(got["responses"]) == 3
        assert all(len(r) == 4 and all(isinstance(x, str) for x in r) for r in got["responses"])
    _, hit = pool("policy-b")  # other weights
    assert hit is False and scorer.calls == 6
    _, hit = pool("policy-a", n=2)  # another pool size
    assert hit is False
    without, hit = pool("policy-a", keep=False)  # an entry without texts is its own entry
    assert hit is False and without["responses"] == []
    _, hit = pool(None)
    assert hit is None and len(list(tmp_path.glob("pools/policy-*.pt"))) == 4


def test_a_pool_judged_by_gold_is_keyed_by_the_worlds_parameters(tmp_path):
    """Two toy worlds whose reference and reward model are the same files but whose gold reward differs
    (a world knob that changes only the gold reward) must not share a pool the gold reward scored."""
    from infalign.models.reward import GoldScorer
    from infalign.toy.world import ToyWorld

    world, prompts = make_world(tmp_path)
    gen = OmegaConf.create({"max_new_tokens": 8, "temperature": 1.0, "batch_size": 2})
    kw = functools.partial(L.Trainer, accelerator="cpu", devices=1, enable_progress_bar=False,
                           enable_model_summary=False)
    a, b = ToyWorld(seed=0), ToyWorld(seed=0, offset_sigma=0.0)
    assert a.fingerprint == ToyWorld(seed=0).fingerprint != b.fingerprint
    pool_a, hit = pools.reference_pool(world, prompts, 4, {"gold": GoldScorer(a)}, gen, kw, 0, tmp_path, tag="eval")
    assert not hit
    pool_b, hit = pools.reference_pool(world, prompts, 4, {"gold": GoldScorer(b)}, gen, kw, 0, tmp_path, tag="eval")
    assert not hit  # the same samples, scored by another gold reward
    assert not torch.equal(pool_a["scores"]["gold"], pool_b["scores"]["gold"])
    assert torch.equal(pool_a["lengths"], pool_b["lengths"])


def test_a_change_to_the_code_that_draws_pools_retires_them(tmp_path, monkeypatch):
    """A pool's key holds the digest of POOL_CODE: editing one of those modules (a sampler fix) draws
    the pool again; a comment-only edit does not. Every listed module exists."""
    assert pools.modules_digest(pools.POOL_CODE, "POOL_CODE")  # (raises on a missing module)
    probe = tmp_path / "infalign_pool_probe.py"
    probe.write_text("def draw():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(pools, "POOL_CODE", (*pools.POOL_CODE, "infalign_pool_probe"))
    world, prompts = make_world(tmp_path)
    scorer = CountingScorer()
    gen = OmegaConf.create({"max_new_tokens": 8, "temperature": 1.0, "batch_size": 2})
    kw = functools.partial(L.Trainer, accelerator="cpu", devices=1, enable_progress_bar=False,
                           enable_model_summary=False)

    def hit() -> bool:
        return pools.reference_pool(world, prompts, 2, {"reward": scorer}, gen, kw, 0, tmp_path, tag="calibration")[1]

    assert not hit() and hit()
    probe.write_text("def draw():\n    return 1  # a comment\n")
    assert hit()
    probe.write_text("def draw():\n    return 2\n")
    assert not hit() and hit()
