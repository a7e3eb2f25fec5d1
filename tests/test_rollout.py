"""training/rollout.py: sharding, per-batch random streams and gathering (two ranks simulated in one
process), and each pool cell lined up with its own sampled response."""

from __future__ import annotations

import torch

from infalign.models.builders import build_toy_lm
from infalign.models.generation import sample, sequence_logprobs
from infalign.toy.world import ToyWorld
from infalign.training.rollout import RolloutModule, gather, prompt_loader, step_generator
from pool_fixtures import tiny_models


class WordScorer:
    def score(self, prompts, responses):
        return torch.tensor([float(len(r.split())) for r in responses])


class PromptAwareScorer:
    """1000 * (which prompt) + characters of the response: catches a prompt/response misalignment."""

    def __init__(self, prompts):
        self.prompts = prompts

    def score(self, prompts, responses):
        return torch.tensor([1000.0 * self.prompts.index(p) + len(r) for p, r in zip(prompts, responses)])


def _module(world, prompts, reference=None, keep=True, n=3):
    scorers = {"words": WordScorer(), "prompt_chars": PromptAwareScorer(prompts)}
    return RolloutModule(world.reference, world.tokenizer, scorers, n, 8, 1.0, seed=5, reference=reference,
                         keep_responses=keep, prompts=prompts, batch_size=2, keep_ids=keep)


def _run(module, prompts, rank, world_size):
    loader = prompt_loader(prompts, 2, rank, world_size)
    return [module.predict_step(b, i) for i, b in enumerate(loader)]


def test_prompt_loader_shards_whole_batches_once_whatever_the_world_size():
    prompts = [f"p{i}" for i in range(7)]  # 4 batches of 2, the last short
    single = [b["index"].tolist() for b in prompt_loader(prompts, 2)]
    assert single == [[0, 1], [2, 3], [4, 5], [6]]
    for world_size in (2, 3, 5):
        shards = [[b["index"].tolist() for b in prompt_loader(prompts, 2, r, world_size)] for r in range(world_size)]
        batches = [b for shard in shards for b in shard if b]
        assert sorted(batches) == single  # the same whole batches, each on exactly one rank
    assert [b["prompt"] for b in prompt_loader(prompts, 2, 1, 2)] == [["p2", "p3"], ["p6"]]


def test_two_simulated_ranks_gather_exactly_the_single_process_pool():
    world, _ = tiny_models(1)
    prompts = ToyWorld(seed=0).prompts("train", 5)
    torch.manual_seed(1)
    ref = build_toy_lm(world.tokenizer, "tiny")
    module = _module(world, prompts, reference=ref)
    single = gather(_run(module, prompts, 0, 1))
    rank_major = _run(module, prompts, 0, 2) + _run(module, prompts, 1, 2)  # what all_gather_objects yields
    both = gather(rank_major)
    assert torch.equal(both["index"], torch.arange(5))
    for k in ("words", "prompt_chars"):
        assert torch.equal(both["scores"][k], single["scores"][k])
    assert torch.equal(both["lengths"], single["lengths"])
    assert torch.equal(both["ended"], single["ended"])
    assert torch.allclose(both["log_ratio"], single["log_ratio"], atol=1e-6)
    assert both["responses"] == single["responses"]
    assert both["response_ids"] == single["response_ids"]  # the sampled ids, in prompt order too
    tok = world.tokenizer
    for texts, ids, lengths, ended in zip(both["responses"], both["response_ids"], both["lengths"], both["ended"]):
        assert [len(i) for i in ids] == lengths.tolist()  # each sample's own tokens, its stop token included
        assert [i[-1] == tok.eos_token_id for i in ids] == ended.tolist()
        assert tok.batch_decode(ids, skip_special_tokens=True) == texts
    # rows really are in prompt order: the prompt-aware judge's thousands digit is the prompt index
    assert torch.equal((both["scores"]["prompt_chars"] // 1000).long(), torch.arange(5)[:, None].expand(5, 3))


def test_scores_lengths_ended_and_log_ratio_line_up_with_each_sampled_response():
    world, _ = tiny_models(1)
    prompts = ToyWorld(seed=0).prompts("train", 2)
    torch.manual_seed(1)
    ref = build_toy_lm(world.tokenizer, "tiny")
    n = 3
    out = _module(world, prompts, reference=ref, n=n).predict_step(next(iter(prompt_loader(prompts, 2))), 0)
    roll = sample(world.reference, world.tokenizer, prompts, n, 8, 1.0, None, generator=step_generator(5, 0))
    assert out["responses"] == [roll.responses[p * n:(p + 1) * n] for p in range(2)]
    for p in range(2):
        for j in range(n):
            r = roll.responses[p * n + j]
            assert out["scores"]["words"][p, j] == len(r.split())
            assert out["scores"]["prompt_chars"][p, j] == 1000 * p + len(r)
    assert torch.equal(out["lengths"].reshape(-1), roll.response_mask.sum(-1))
    assert torch.equal(out["ended"].reshape(-1), roll.ended)
    args = (roll.prompt_ids, roll.prompt_mask, roll.response_ids, roll.response_mask)
    expect = ((sequence_logprobs(world.reference, *args) - sequence_logprobs(ref, *args)) * roll.response_mask).sum(-1)
    assert torch.allclose(out["log_ratio"].reshape(-1), expect, atol=1e-5)
    assert not torch.allclose(expect, expect.view(n, 2).T.reshape(-1))  # the check can see a transpose


def test_each_batch_and_each_stream_draws_its_own_randomness():
    world, _ = tiny_models(1)
    p = ToyWorld(seed=0).prompts("train", 1)[0]
    prompts = [p] * 4  # two identical batches: only their random streams tell them apart
    outs = _run(_module(world, prompts, keep=True, n=4), prompts, 0, 1)
    assert outs[0]["responses"] != outs[1]["responses"]
    draws = [torch.rand(4, generator=step_generator(3, *s)) for s in ((0,), (2,), (0, 1), (0, 2), (0, 2, 1))]
    for i in range(len(draws)):
        for j in range(i):
            assert not torch.equal(draws[i], draws[j])
    assert torch.equal(torch.rand(4, generator=step_generator(3, 0, 2)), draws[3])  # reproducible


def test_ended_flags_line_up_with_rows_that_end_differently():
    """A policy whose eos logit is scaled up (x8) ends some rows early and leaves others cut at the
    token limit, so a flag moved to another row, or derived from the length, is seen."""
    world, _ = tiny_models(1)
    eos = world.tokenizer.eos_token_id
    with torch.no_grad():
        world.reference.get_output_embeddings().weight[eos] *= 8
    prompts = ToyWorld(seed=0).prompts("train", 2)
    n = 3
    out = _module(world, prompts, n=n).predict_step(next(iter(prompt_loader(prompts, 2))), 0)
    roll = sample(world.reference, world.tokenizer, prompts, n, 8, 1.0, None, generator=step_generator(5, 0))
    ended, lengths = out["ended"].reshape(-1), out["lengths"].reshape(-1)
    assert ended.any() and not ended.all()  # the fixture mixes both
    assert (ended & (lengths == 8)).any() and (ended & (lengths < 8)).any()  # ended at the limit and before it
    assert torch.equal(ended, roll.ended)
    last = roll.response_ids.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1)
    assert torch.equal(ended, last == eos)  # ended <=> the row's last real token is eos


class CutScorer:
    """Says which rows it read cut, as a reward model does (``score_and_cut``): here those of > 7 words."""

    def score(self, prompts, responses):
        return self.score_and_cut(prompts, responses)[0]

    def score_and_cut(self, prompts, responses):
        words = torch.tensor([float(len(r.split())) for r in responses])
        return words, words > 7


def test_the_cut_flags_of_a_scorer_that_gives_them_line_up_with_their_rows_across_ranks():
    """eval.reward_cut's source: each pool cell's flag is its own response's, in prompt order whatever the ranks;
    a scorer without score_and_cut (the gold reward, a custom scorer) has none."""
    world, _ = tiny_models(1)
    prompts = ToyWorld(seed=0).prompts("train", 5)
    module = RolloutModule(world.reference, world.tokenizer, {"words": WordScorer(), "cut": CutScorer()}, 3, 8, 1.0,
                           seed=5, prompts=prompts, batch_size=2)
    single = gather(_run(module, prompts, 0, 1))
    both = gather(_run(module, prompts, 0, 2) + _run(module, prompts, 1, 2))
    assert set(single["cut"]) == {"cut"} and torch.equal(single["cut"]["cut"], single["scores"]["cut"] > 7)
    assert torch.equal(both["cut"]["cut"], single["cut"]["cut"]) and single["cut"]["cut"].any()
    assert not single["cut"]["cut"].all()  # (the check can see a misalignment)
