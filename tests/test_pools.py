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
    calls = scorer.calls
    without, hit = pool("policy-a", keep=False)  # served by the entry with texts (the same draws), texts left out
    assert hit is True and without["responses"] == [] and scorer.calls == calls
    assert torch.equal(without["scores"]["reward"], fresh["scores"]["reward"])
    bare, hit = pool("policy-c", keep=False)  # no entry with texts: one without them
    assert hit is False and bare["responses"] == []
    _, hit = pool("policy-c")  # texts asked for: an entry of their own
    assert hit is False
    _, hit = pool(None)
    assert hit is None and len(list(tmp_path.glob("pools/policy-*.pt"))) == 5


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


# ---------------------------------------------------------------- guards found by mutation testing


def test_a_pool_is_keyed_by_its_seed_and_by_the_reward_models_content(tmp_path):
    world, prompts = make_world(tmp_path)
    scorer = CountingScorer()
    world.reward = scorer  # the world's reward model: keyed by its fingerprint, not its judge name
    gen = OmegaConf.create({"max_new_tokens": 8, "temperature": 1.0, "batch_size": 2})
    kw = functools.partial(L.Trainer, accelerator="cpu", devices=1, enable_progress_bar=False,
                           enable_model_summary=False)

    def hit(seed) -> bool:
        return pools.reference_pool(world, prompts, 2, {"reward_model": scorer}, gen, kw, seed, tmp_path,
                                    tag="eval")[1]

    assert not hit(0) and hit(0)
    assert not hit(1)  # another seed: other samples
    world.reward_fingerprint = "rm-b"  # a retrained reward model under the same judge name
    assert not hit(0)


def test_evaluate_policy_compares_the_policy_pool_with_the_reference_pool(monkeypatch, tmp_path):
    """evaluate_policy on two given pools (sampling replaced): independent pool seeds, eval.ns plus the run's
    N, every judge's per-prompt columns and CIs as pool_columns / summarize_columns give them (policy first),
    the miscalibration of the reference pool, the kept samples, each pool's response statistics."""
    from infalign.math.miscalibration import miscalibration_summary
    from infalign.math.pool_stats import pool_columns, summarize_columns
    from infalign.math.procedures import BestOfN
    from infalign.math.transforms import Identity
    from infalign.pipeline import evaluate
    from infalign.pipeline.run_record import CI

    g = torch.Generator().manual_seed(0)
    P, M = 5, 6
    ref = {"scores": {"reward_model": torch.randn(P, M, generator=g), "gold": torch.randn(P, M, generator=g)},
           "lengths": torch.full((P, M), 3), "ended": torch.ones(P, M, dtype=torch.bool)}
    pol = {"scores": {k: v + 0.7 + 0.1 * torch.randn(P, M, generator=g) for k, v in ref["scores"].items()},
           "lengths": torch.full((P, M), 5), "ended": torch.zeros(P, M, dtype=torch.bool),
           "log_ratio": torch.rand(P, M, generator=g),
           "responses": [[f"p{p} s{j}" for j in range(M)] for p in range(P)]}
    seeds = {}

    def fake_reference_pool(world, prompts, n, judges, gen_cfg, trainer, seed, cache_dir, tag):
        seeds["reference"] = seed
        return ref, True

    def fake_policy_pool(world, policy_id, prompts, n, judges, gen_cfg, trainer, seed, cache_dir, keep_responses):
        seeds["policy"] = seed
        return pol, None

    monkeypatch.setattr(evaluate, "reference_pool", fake_reference_pool)
    monkeypatch.setattr(evaluate, "policy_pool", fake_policy_pool)
    prompts = [f"prompt {p}" for p in range(P)]
    world = SimpleNamespace(reward=object(), gold=object(), eval_prompts=prompts)
    cfg = OmegaConf.create({"seed": 3, "eval": {"samples": M, "ns": [1, 2], "bootstrap": 50, "keep_responses": 2,
                                                "temperature": 1.0, "top_k": None, "top_p": 1.0}})
    proc = BestOfN(n=4)
    ev = evaluate.evaluate_policy(world, cfg, proc, Identity(), 1.0, None, tmp_path)
    assert ev.sampler is None

    assert ev.ns == [1, 2, 4]
    assert seeds["policy"] != seeds["reference"]
    for judge in ("reward_model", "gold"):
        cols = pool_columns(pol["scores"][judge], ref["scores"][judge], proc.name, [1, 2, 4], pol["log_ratio"])
        assert ev.per_prompt[judge] == {k: [round(float(v), 10) for v in c] for k, c in cols.items()}
        want = summarize_columns(cols, 50, seed=3)
        assert ev.judges[judge] == {k: CI.from_json(c) for k, c in want.items()}
    assert ev.judges["reward_model"]["standard_win_rate"].mean > 0.5
    assert ev.miscalibration == miscalibration_summary(ref["scores"]["reward_model"], ref["scores"]["gold"])
    assert ev.samples == [["prompt 0", "p0 s0"], ["prompt 1", "p1 s0"]]
    assert ev.responses["policy"] == {"response_len_mean": 5.0, "eos_rate": 0.0}
    assert ev.responses["reference"] == {"response_len_mean": 3.0, "eos_rate": 1.0}
    assert {proc.at(n).win_rate_key for n in (1, 2, 4)} <= set(ev.theory)
    # the theory "at the measured KL" is read at the reward model's KL estimate (its CI's mean), not at an
    # end of its bootstrap interval (mutation testing: the CI's upper bound was used); exact, the same float
    kl = ev.judges["reward_model"]["kl"]
    assert kl.low < kl.mean < kl.high  # (a non-degenerate interval: a mutant reading low / high differs)
    assert ev.theory["at_measured_kl"]["kl"] == kl.mean
    # an evaluation with a modified sampler (docs/method.md (7.3)): the same columns, no theory beside them
    for key, value, note in (("temperature", 0.7, "eval.temperature=0.7"), ("top_k", 5, "eval.top_k=5"),
                             ("top_p", 0.9, "eval.top_p=0.9")):
        modified = OmegaConf.merge(cfg, {"eval": {key: value}})
        other = evaluate.evaluate_policy(world, modified, proc, Identity(), 1.0, None, tmp_path)
        assert other.sampler == note and other.theory is None and other.judges == ev.judges
    # the share of each pool's samples the reward model read cut (a judge that says so: a reward model)
    assert ev.reward_cut is None  # (these pools carry no flags: a custom scorer's)
    ref["cut"] = {"reward_model": torch.zeros(P, M, dtype=torch.bool)}
    pol["cut"] = {"reward_model": torch.arange(P * M).view(P, M) % 3 == 0}
    cut = evaluate.evaluate_policy(world, cfg, proc, Identity(), 1.0, None, tmp_path).reward_cut
    assert cut == {"reference": 0.0, "policy": 10 / 30}
