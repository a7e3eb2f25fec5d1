"""Batched sampling with KV cache vs. teacher forcing, on a tiny random GPT-2 (no downloads)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from infalign.models.generation import (
    Rollout,
    length_buckets,
    low_precision,
    response_stats,
    rollout_logprobs,
    sample,
    sampling_probs,
    sequence_logprobs,
    shared_prompt_groups,
)

PAD, EOS = 0, 1
PROMPTS = ["w1 w2 w3 w4 w5", "w6", "w7 w8 w9"]


@pytest.fixture(scope="module")
def tokenizer():
    vocab = {"<pad>": PAD, "<eos>": EOS, "<unk>": 2, **{f"w{i}": i + 3 for i in range(45)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def tiny_gpt2(vocab_size: int, seed: int = 0, eos_bias: float | None = None) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        bos_token_id=EOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    model = GPT2LMHeadModel(config)
    if eos_bias is not None:  # an untied head with a bias towards eos: rows end at different steps
        head = torch.nn.Linear(config.n_embd, vocab_size, bias=True)
        with torch.no_grad():
            head.weight.copy_(model.transformer.wte.weight)
            head.bias.zero_()
            head.bias[EOS] = eos_bias
        model.lm_head = head
    return model.eval()


def tiny_llama(vocab_size: int, seed: int = 1):
    """A tiny random Llama (grouped-query attention, rotary positions, the DynamicCache path)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, bos_token_id=EOS, eos_token_id=EOS,
        pad_token_id=PAD)).eval()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_gpt2(len(tokenizer))


def draw(model, tokenizer, seed=0, **kw) -> Rollout:
    kw = {"num_samples": 4, "max_new_tokens": 10, **kw}
    return sample(
        model,
        tokenizer,
        kw.pop("prompts", PROMPTS),
        generator=torch.Generator().manual_seed(seed),
        **kw,
    )


def test_shapes_and_prompt_major_order(model, tokenizer):
    r = draw(model, tokenizer)
    rows = len(PROMPTS) * 4
    assert r.prompt_ids.shape[0] == r.response_ids.shape[0] == rows
    assert r.logprobs.shape == r.response_ids.shape == r.response_mask.shape
    assert r.prompt_index.tolist() == [p for p in range(len(PROMPTS)) for _ in range(4)]
    assert len(r.responses) == rows
    # Left padding: the real tokens of the short prompt "w6" sit at the right edge.
    row = 4  # first sample of prompt 1
    assert r.prompt_mask[row].tolist() == [0, 0, 0, 0, 1]
    assert r.prompt_ids[row, -1].item() == tokenizer.convert_tokens_to_ids("w6")
    assert not r.logprobs.is_inference()  # usable in later autograd computations


def test_cached_logprobs_equal_teacher_forced(model, tokenizer):
    r = draw(model, tokenizer)
    tf = sequence_logprobs(model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask)
    torch.testing.assert_close(tf.detach(), r.logprobs, atol=1e-5, rtol=0)


def test_cache_and_no_cache_agree(model, tokenizer):
    a = draw(model, tokenizer, use_cache=True)
    b = draw(model, tokenizer, use_cache=False)
    assert torch.equal(a.response_ids, b.response_ids)
    assert torch.equal(a.response_mask, b.response_mask)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_deterministic_given_generator(model, tokenizer):
    a, b = draw(model, tokenizer, seed=3), draw(model, tokenizer, seed=3)
    c = draw(model, tokenizer, seed=4)
    assert torch.equal(a.response_ids, b.response_ids) and a.responses == b.responses
    assert not torch.equal(a.response_ids, c.response_ids)


def test_left_padding_matches_unpadded_prompt(model, tokenizer):
    # Teacher forcing: a fixed response scored after "w6" alone and after "w6" padded in a batch.
    short = [p for p in PROMPTS if len(p.split()) == 1]
    alone = draw(model, tokenizer, prompts=short, num_samples=1)
    batch = draw(model, tokenizer, prompts=PROMPTS, num_samples=1)
    row = PROMPTS.index(short[0])
    assert batch.prompt_ids.shape[1] > alone.prompt_ids.shape[1]  # it really was padded
    padded_ids, padded_mask = batch.prompt_ids[row : row + 1], batch.prompt_mask[row : row + 1]
    lp_padded = sequence_logprobs(
        model, padded_ids, padded_mask, alone.response_ids, alone.response_mask
    )
    torch.testing.assert_close(lp_padded.detach(), alone.logprobs, atol=1e-5, rtol=0)
    # Sampling: greedy decoding of each prompt is the same inside a padded batch and alone.
    greedy_batch = draw(model, tokenizer, num_samples=1, temperature=0.0)
    for p, prompt in enumerate(PROMPTS):
        single = draw(model, tokenizer, prompts=[prompt], num_samples=1, temperature=0.0)
        n = single.response_ids.shape[1]
        assert torch.equal(greedy_batch.response_ids[p, :n], single.response_ids[0])
        torch.testing.assert_close(
            greedy_batch.logprobs[p, :n], single.logprobs[0], atol=1e-5, rtol=0
        )


def test_eos_handling(tokenizer):
    model = tiny_gpt2(len(tokenizer), eos_bias=2.5)
    for use_cache in (True, False):
        r = draw(model, tokenizer, num_samples=16, max_new_tokens=12, use_cache=use_cache)
        ids, mask = r.response_ids, r.response_mask.bool()
        is_eos = ids == EOS
        assert is_eos.any(1).float().mean() > 0.5  # the bias makes most rows stop early
        # The mask is 1 up to and including the first eos, 0 afterwards; pad and log-prob 0 there.
        first = torch.where(is_eos.any(1), is_eos.float().argmax(1), ids.shape[1] - 1)
        expected = torch.arange(ids.shape[1])[None, :] <= first[:, None]
        assert torch.equal(mask, expected)
        assert (ids[~mask] == PAD).all() and (r.logprobs[~mask] == 0).all()
        assert (r.logprobs[mask] < 0).all()
        assert r.response_lengths.tolist() == (first + 1).tolist()
        assert all("<eos>" not in s for s in r.responses)
        tf = sequence_logprobs(model, r.prompt_ids, r.prompt_mask, ids, r.response_mask)
        torch.testing.assert_close(tf.detach(), r.logprobs, atol=1e-5, rtol=0)


def test_stops_when_every_row_has_ended(tokenizer):
    model = tiny_gpt2(len(tokenizer), eos_bias=50.0)  # eos is (almost surely) the first token
    r = draw(model, tokenizer, max_new_tokens=10)
    assert r.response_ids.shape[1] == 1 and (r.response_ids == EOS).all()
    assert r.responses == [""] * len(r.responses)


def test_restores_training_mode_and_logprobs_have_grad(model, tokenizer):
    model.train()
    try:
        r = draw(model, tokenizer, num_samples=2)
        assert model.training
        model.eval()
        lp = sequence_logprobs(model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask)
        lp.sum().backward()
        assert model.transformer.wte.weight.grad is not None
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


@pytest.mark.slow
def test_temperature_and_top_k(model, tokenizer):
    greedy = draw(model, tokenizer, temperature=0.0)
    per_prompt = greedy.response_ids.view(len(PROMPTS), 4, -1)
    assert (per_prompt == per_prompt[:, :1]).all()  # greedy: all samples of a prompt agree
    top1 = draw(model, tokenizer, top_k=1)
    assert torch.equal(top1.response_ids, greedy.response_ids)
    # Log-probs stay those of the model at T=1, whatever the sampling temperature.
    hot = draw(model, tokenizer, temperature=2.0)
    tf = sequence_logprobs(
        model, hot.prompt_ids, hot.prompt_mask, hot.response_ids, hot.response_mask
    )
    torch.testing.assert_close(tf.detach(), hot.logprobs, atol=1e-5, rtol=0)


def test_sampling_probs_top_p_is_the_hand_computed_nucleus():
    """Fixed probabilities (0.5, 0.3, 0.15, 0.05), in a shuffled vocabulary order: the nucleus keeps
    a token while the mass before it is < top_p, then renormalises."""
    p = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    logits = p.log()
    full = sampling_probs(logits, 1.0)
    torch.testing.assert_close(full, p, atol=1e-7, rtol=0)
    # top_p=0.7: masses before 0.5, 0.3, 0.15 are 0, 0.5, 0.8 -> keep {0.5, 0.3}
    torch.testing.assert_close(sampling_probs(logits, 1.0, top_p=0.7), torch.tensor([[0, 0.625, 0, 0.375]]),
                               atol=1e-7, rtol=0)
    # top_p=0.85 -> keep {0.5, 0.3, 0.15}, renormalised by 0.95
    torch.testing.assert_close(sampling_probs(logits, 1.0, top_p=0.85),
                               torch.tensor([[0.15, 0.5, 0, 0.3]]) / 0.95, atol=1e-7, rtol=0)
    # a tiny top_p keeps the argmax alone; top_p=1 keeps everything
    torch.testing.assert_close(sampling_probs(logits, 1.0, top_p=1e-6), torch.tensor([[0.0, 1, 0, 0]]))
    torch.testing.assert_close(sampling_probs(logits, 1.0, top_p=1.0), p, atol=1e-7, rtol=0)
    # temperature first: T=0.5 squares the odds -> (0.25, 0.09, 0.0225, 0.0025) / 0.365; the nucleus
    # at 0.9 is {0.5, 0.3} (mass before 0.15 is 0.34 / 0.365 = 0.93 >= 0.9)
    torch.testing.assert_close(sampling_probs(logits, 0.5, top_p=0.9),
                               torch.tensor([[0, 0.25, 0, 0.09]]) / 0.34, atol=1e-6, rtol=0)
    # top-k then top-p: k=3 drops 0.05 -> (0.15, 0.5, 0.3)/0.95; mass before 0.15 is 0.8/0.95 = 0.842,
    # so top_p=0.8 drops it and top_p=0.85 keeps it
    torch.testing.assert_close(sampling_probs(logits, 1.0, top_k=3, top_p=0.8),
                               torch.tensor([[0, 0.625, 0, 0.375]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(sampling_probs(logits, 1.0, top_k=3, top_p=0.85),
                               torch.tensor([[0.15, 0.5, 0, 0.3]]) / 0.95, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_top_p_draws_follow_the_nucleus(model, tokenizer):
    """Through the sampler: a tiny nucleus is greedy; top_p < 1 never draws outside the nucleus of the
    model's own step distribution, while top_p=1 does (same generator)."""
    greedy = draw(model, tokenizer, temperature=0.0)
    assert torch.equal(draw(model, tokenizer, top_p=1e-6).response_ids, greedy.response_ids)
    r = draw(model, tokenizer, num_samples=16, top_p=0.5)
    full = draw(model, tokenizer, num_samples=16)
    lp = sequence_logprobs(model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask).detach()
    torch.testing.assert_close(lp, r.logprobs, atol=1e-5, rtol=0)  # log-probs: the model's, untruncated

    def outside_nucleus(roll):
        ids = torch.cat([roll.prompt_ids, roll.response_ids], 1)
        mask = torch.cat([roll.prompt_mask, roll.response_mask], 1)
        from infalign.models.generation import position_ids

        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
        width = roll.prompt_ids.shape[1]
        steps = logits[:, width - 1 : -1].reshape(-1, logits.shape[-1])
        kept = sampling_probs(steps, 1.0, top_p=0.5) > 0
        drawn = kept.gather(-1, roll.response_ids.reshape(-1, 1)).view_as(roll.response_ids)
        return int((~drawn & roll.response_mask.bool()).sum())

    assert outside_nucleus(r) == 0
    assert outside_nucleus(full) > 0


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt2", "gpt2_eos", "llama"])
def test_shared_prefill_draws_what_repeated_prompts_draw(tokenizer, arch):
    """One prefill per distinct prompt (its KV cache repeated G times) vs G copies prefilled: same
    generator state -> the same tokens and masks; log-probs equal to float error (the prefill's
    batch size differs)."""
    if arch == "llama":
        m = tiny_llama(len(tokenizer))
    else:
        m = tiny_gpt2(len(tokenizer), eos_bias=2.5 if arch == "gpt2_eos" else None)
    for seed in range(5):
        shared = draw(m, tokenizer, seed=seed, num_samples=4, max_new_tokens=12)
        repeated = draw(m, tokenizer, seed=seed, num_samples=4, max_new_tokens=12, share_prefill=False)
        assert torch.equal(shared.response_ids, repeated.response_ids)
        assert torch.equal(shared.response_mask, repeated.response_mask)
        assert torch.equal(shared.prompt_ids, repeated.prompt_ids)
        assert torch.equal(shared.ended, repeated.ended)
        torch.testing.assert_close(shared.logprobs, repeated.logprobs, atol=1e-5, rtol=0)
        assert shared.responses == repeated.responses


def test_ended_marks_responses_that_emitted_a_stop_token(tokenizer):
    """``ended`` is True exactly where the response's last real token is eos; rows cut at
    max_new_tokens without it are False (the missing-eos rows); response_stats averages both."""
    m = tiny_gpt2(len(tokenizer), eos_bias=1.5)
    r = draw(m, tokenizer, num_samples=16, max_new_tokens=6)
    last = r.response_ids.gather(1, (r.response_lengths - 1)[:, None]).squeeze(1)
    assert torch.equal(r.ended, last == EOS)
    assert r.ended.any() and not r.ended.all()  # both kinds present
    assert (r.response_lengths[~r.ended] == r.response_ids.shape[1]).all()
    stats = response_stats(r.response_lengths, r.ended)
    assert stats["eos_rate"] == pytest.approx(r.ended.float().mean().item())
    assert stats["response_len_mean"] == pytest.approx(r.response_mask.sum().item() / len(r.responses))


@pytest.mark.slow
def test_long_prompts_are_cut_from_the_left_to_fit_the_positions(model, tokenizer):
    """The tiny GPT-2 has 64 positions: with 61 new tokens a prompt keeps its last 3 tokens."""
    r = draw(model, tokenizer, num_samples=2, max_new_tokens=61)
    assert r.truncated_prompts == 1  # only "w1 w2 w3 w4 w5" is longer than 3 tokens
    assert r.prompt_ids.shape[1] == 3
    assert tokenizer.convert_ids_to_tokens(r.prompt_ids[0].tolist()) == ["w3", "w4", "w5"]
    assert draw(model, tokenizer, num_samples=2, max_new_tokens=59).truncated_prompts == 0
    with pytest.raises(ValueError, match="no room"):
        draw(model, tokenizer, num_samples=1, max_new_tokens=64)


@pytest.mark.parametrize(
    "kwargs", [{"num_samples": 0}, {"max_new_tokens": 0}, {"temperature": -1.0}, {"top_k": 0}, {"top_p": 0.0},
               {"top_p": 1.5}]
)
def test_rejects_bad_arguments(model, tokenizer, kwargs):
    with pytest.raises(ValueError):
        draw(model, tokenizer, **kwargs)


def test_no_deprecated_kv_cache_argument(model, tokenizer):
    """The sampler uses the model's supported KV-cache keyword: no deprecation warning is emitted
    (transformers 5 renamed ``past_key_values`` to ``cache``), with and without the cache."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning, the FutureWarning on past_key_values included
        r = draw(model, tokenizer, use_cache=True)
        draw(model, tokenizer, use_cache=False)
        sequence_logprobs(model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask)


@pytest.mark.parametrize("arch", ["gpt2", pytest.param("llama", marks=pytest.mark.slow)])
def test_finished_rows_leave_the_batch_and_the_tokens_stay_the_same(tokenizer, arch):
    """compact=True drops rows that emitted eos from the decoding batch and the KV cache (the
    forward sees fewer rows), yet draws every row's token from the same generator stream: the same
    tokens, masks and ``ended`` as compact=False at every seed and sampling setting; log-probs equal
    to float error (the smaller batch may round differently)."""
    if arch == "llama":
        m = tiny_llama(len(tokenizer))
        with torch.no_grad():  # a bias towards eos through the head's eos row: rows end at different steps
            m.lm_head.weight[EOS] += 0.5 * m.model.embed_tokens.weight.mean(0) + 0.3
    else:
        m = tiny_gpt2(len(tokenizer), eos_bias=2.5)
    batch_rows = []  # rows of each forward, seen at the head (HF's forward and the lean step both call it)
    hook = m.lm_head.register_forward_pre_hook(lambda mod, args: batch_rows.append(args[0].shape[0]))
    try:
        for seed, kw in enumerate([{}, {"temperature": 0.7}, {"top_k": 5}, {"top_p": 0.8}]):
            batch_rows.clear()
            full = draw(m, tokenizer, seed=seed, num_samples=16, max_new_tokens=12, compact=False, **kw)
            full_rows = list(batch_rows)
            batch_rows.clear()
            compact = draw(m, tokenizer, seed=seed, num_samples=16, max_new_tokens=12, **kw)
            assert torch.equal(compact.response_ids, full.response_ids)
            assert torch.equal(compact.response_mask, full.response_mask)
            assert torch.equal(compact.ended, full.ended) and compact.responses == full.responses
            torch.testing.assert_close(compact.logprobs, full.logprobs, atol=1e-5, rtol=0)
            assert set(full_rows[1:]) == {48}  # 3 prompts x 16 samples after the shared prefill
            assert batch_rows[0] == 3 and len(batch_rows) == len(full_rows)
            assert min(batch_rows[1:]) < 48 and batch_rows[1:] == sorted(batch_rows[1:], reverse=True)
    finally:
        hook.remove()


def test_length_buckets_partition_the_rows_in_length_order():
    lengths = torch.tensor([5, 3, 9, 3, 7, 1] * 16)  # 96 rows
    groups = length_buckets(lengths)
    assert len(groups) == 3  # 96 // 32
    assert sorted(torch.cat(groups).tolist()) == list(range(96))
    flat = torch.cat([lengths[g] for g in groups])
    assert torch.equal(flat, lengths.sort(stable=True).values)
    assert len(length_buckets(lengths[:63])) == 1 and len(length_buckets(torch.ones(1000))) == 4
    # a cap on rows per group (a scorer's batch size) adds groups: 100 rows of at most 10 -> 10
    capped = length_buckets(torch.arange(100), max_rows=10)
    assert len(capped) == 10 and max(len(g) for g in capped) == 10 and len(length_buckets(lengths, max_rows=64)) == 3


def test_length_bucketed_logprobs_and_gradients_equal_the_one_pass_forward(tokenizer):
    """Rows of different lengths (eos-biased tiny GPT-2, 3 prompts of 1-5 tokens) in 2 buckets,
    each cut to its own padding: log-probs and the policy gradient equal the single padded forward's
    to float error."""
    m = tiny_gpt2(len(tokenizer), eos_bias=2.5).train(False)
    r = draw(m, tokenizer, seed=3, num_samples=24, max_new_tokens=12)  # 72 rows -> 2 buckets
    total = r.prompt_mask.sum(-1) + r.response_mask.sum(-1)
    assert len(length_buckets(total)) == 2 and total.min() < total.max()
    args = (r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask)
    grads = []
    for bucket in (False, True):
        m.zero_grad()
        lp = sequence_logprobs(m, *args, bucket=bucket, share_prompts=False)
        (lp * torch.linspace(-1, 1, lp.numel()).view_as(lp)).sum().backward()
        grads.append((lp.detach(), [p.grad.clone() for p in m.parameters()]))
    (lp0, g0), (lp1, g1) = grads
    torch.testing.assert_close(lp1, lp0, atol=1e-5, rtol=0)
    assert (lp1[~r.response_mask.bool()] == 0).all()
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_shared_prompt_groups_find_each_distinct_prompt_in_order_of_first_appearance():
    """Rows A A B A C C (ids and mask equal) -> first rows 0, 2, 4 and each row's prompt; C's mask
    differs from a same-id row D, so D is its own prompt. By default sharing needs at most half the
    rows distinct (else None)."""
    a, b, c = [0, 5, 6], [7, 8, 9], [0, 0, 4]
    ids = torch.tensor([a, a, b, a, c, c, c])
    mask = torch.tensor([[0, 1, 1], [0, 1, 1], [1, 1, 1], [0, 1, 1], [0, 0, 1], [0, 0, 1], [0, 1, 1]])
    first, inverse = shared_prompt_groups(ids, mask, max_share=1.0)
    assert first.tolist() == [0, 2, 4, 6] and inverse.tolist() == [0, 0, 1, 0, 2, 2, 3]
    assert shared_prompt_groups(ids, mask) is None  # 4 of 7 distinct
    assert shared_prompt_groups(ids[:6], mask[:6]) is not None  # 3 of 6
    assert shared_prompt_groups(ids[:3], mask[:3]) is None  # 2 of 3 distinct: nothing worth sharing
    assert shared_prompt_groups(ids[:2], mask[:2]) is not None and shared_prompt_groups(ids[:1], mask[:1]) is None
    perm = torch.tensor([4, 0, 5, 3, 1, 6, 2])  # any row order: rows of one prompt get one index
    first, inverse = shared_prompt_groups(ids[perm], mask[perm], max_share=1.0)
    assert first.tolist() == [0, 1, 5, 6] and inverse.tolist() == [0, 1, 0, 1, 1, 2, 3]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_shared_prompt_logprobs_and_gradients_equal_the_per_row_forward(tokenizer, arch):
    """Each distinct prompt run once and its KV cache gathered to its rows (tiny GPT-2 / Llama,
    3 prompts of 1-5 tokens x 6 samples, eos-biased GPT-2 so lengths differ): the log-probs and the
    policy gradient equal the per-row forward's to float error (tolerances as the bucketing test's:
    float32 over a 2-layer model, observed ~1e-7), also on a shuffled half of the rows (a PPO
    minibatch) and with a one-token response; masked positions are exactly 0."""
    m = tiny_llama(len(tokenizer)) if arch == "llama" else tiny_gpt2(len(tokenizer), eos_bias=1.5)
    r = draw(m, tokenizer, seed=3, num_samples=6, max_new_tokens=9)
    perm = torch.randperm(18, generator=torch.Generator().manual_seed(0))[:9]
    cases = {"all": torch.arange(18), "minibatch": perm}
    for name, rows in cases.items():
        args = [t[rows] for t in (r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask)]
        assert shared_prompt_groups(*args[:2]) is not None, name
        grads = []
        for share in (False, True):
            m.zero_grad()
            lp = sequence_logprobs(m, *args, share_prompts=share)
            (lp * torch.linspace(-1, 1, lp.numel()).view_as(lp)).sum().backward()
            grads.append((lp.detach(), [p.grad.clone() for p in m.parameters()]))
        (lp0, g0), (lp1, g1) = grads
        assert lp1.shape == args[2].shape
        torch.testing.assert_close(lp1, lp0, atol=1e-5, rtol=0)
        assert (lp1[~args[3].bool()] == 0).all() and (lp1[args[3].bool()] != 0).all()
        for a, b in zip(g1, g0):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # the sampler's own log-probs: the shared forward scores the sampled tokens
        torch.testing.assert_close(sequence_logprobs(m, r.prompt_ids, r.prompt_mask, r.response_ids,
                                                     r.response_mask), r.logprobs, atol=1e-5, rtol=0)
        one = [r.prompt_ids, r.prompt_mask, r.response_ids[:, :1], r.response_mask[:, :1]]
        torch.testing.assert_close(sequence_logprobs(m, *one), sequence_logprobs(m, *one, share_prompts=False),
                                   atol=1e-5, rtol=0)


def test_shared_prompts_fall_back_to_the_per_row_forward_without_a_kv_cache():
    """A model that returns no KV cache (the tabular bigram of tests/tiny_policy.py) is scored by
    the per-row forward: the exact log-probs of its table."""
    from tiny_policy import ID, TabularLM

    m = TabularLM()
    prompt = torch.tensor([[ID["x1"]]] * 4)
    response = torch.tensor([[ID["a1"], ID["b2"], ID["<eos>"]]] * 4)
    ones = torch.ones_like(response)
    lp = sequence_logprobs(m, prompt, torch.ones_like(prompt), response, ones)
    logits = (m.table + m.mask).detach()
    expected = torch.stack([torch.log_softmax(logits[a], 0)[b] for a, b in
                            [(ID["x1"], ID["a1"]), (ID["a1"], ID["b2"]), (ID["b2"], ID["<eos>"])]])
    torch.testing.assert_close(lp.detach(), expected.expand(4, 3))


def test_hybrid_caches_are_not_gathered_and_fall_back_to_the_per_row_forward():
    """LFM2 (convolution + attention layers; its cache holds convolution states no row gather
    knows) crashed the shared path in ``_select_cache``: a cache that is not keys and values alone
    is not shared, and the log-probs are the per-row forward's."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from infalign.models.generation import _cache_arg, _gatherable

    cfg = AutoConfig.for_model("lfm2", vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, layer_types=["conv", "full_attention"],
                               conv_L_cache=3, block_ff_dim=64, pad_token_id=0)
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(cfg).eval()
    ids = torch.tensor([[5, 6, 7]] * 2 + [[0, 8, 9]] * 2)
    response = torch.tensor([[3, 4, 1], [5, 1, 0], [6, 7, 1], [2, 1, 0]])
    args = (ids, (ids != 0).long(), response, (response != 0).long())
    assert shared_prompt_groups(*args[:2]) is not None
    with torch.no_grad():
        cache = getattr(m(input_ids=ids, attention_mask=args[1], use_cache=True), _cache_arg(m))
        assert cache is not None and not _gatherable(cache)
        assert torch.equal(sequence_logprobs(m, *args), sequence_logprobs(m, *args, share_prompts=False))


@pytest.mark.parametrize("arch", ["lfm2", "mamba", "rwkv"])
def test_models_with_stateful_caches_sample_without_the_cache(tokenizer, arch, caplog):
    """Hybrid / state-space caches (LFM2: convolution layers; Mamba: recurrent state) crashed the
    sampler (no row repeat for the shared prefill), and Mamba's cached single-token steps gave
    log-probs ~0.4 nats off the teacher-forced ones; RWKV returns its state in a field of its own (no
    cache field: the sampler crashed). They now sample by recomputing the prefix: the tokens of
    ``use_cache=False``, log-probs equal to the teacher-forced forward's, one warning."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from infalign.models import generation

    sizes = {"lfm2": dict(layer_types=["conv", "full_attention"], conv_L_cache=3, block_ff_dim=64,
                          intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
             "mamba": dict(state_size=4, num_hidden_layers=2, expand=2, conv_kernel=3),
             "rwkv": dict(num_hidden_layers=2, attention_hidden_size=32, intermediate_size=64, context_length=64)}[arch]
    cfg = AutoConfig.for_model(arch, vocab_size=len(tokenizer), hidden_size=32, pad_token_id=PAD, eos_token_id=EOS,
                               **sizes)
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(cfg).eval()
    generation._WARNED_STATEFUL.discard(type(m).__name__)
    with caplog.at_level("WARNING", logger="infalign.models.generation"):
        r = draw(m, tokenizer, seed=1, num_samples=3, max_new_tokens=6)
        again = draw(m, tokenizer, seed=2, num_samples=3, max_new_tokens=6)
    assert sum("recomputes the whole prefix" in rec.message for rec in caplog.records) == 1
    plain = draw(m, tokenizer, seed=1, num_samples=3, max_new_tokens=6, use_cache=False, share_prefill=False)
    assert torch.equal(r.response_ids, plain.response_ids) and torch.equal(r.response_mask, plain.response_mask)
    with torch.no_grad():
        for roll in (r, again):
            teacher = sequence_logprobs(m, roll.prompt_ids, roll.prompt_mask, roll.response_ids, roll.response_mask)
            torch.testing.assert_close(roll.logprobs, teacher, atol=1e-5, rtol=0)


def test_under_autocast_the_policys_log_probs_take_the_references_path(tokenizer):
    """CPU bf16 autocast (trainer.precision=bf16-mixed), a policy that is its own reference (as at
    step 0): the sampler's KV-cached log-probs round differently from a teacher-forced forward, so
    their k1 KL against the reference's teacher-forced ones is not 0 -- the floor that
    rollout_logprobs removes (exactly 0: the same forward on the same weights). In float32 it
    returns the sampler's own log-probs (equal to the forward's to 1e-5: no extra pass)."""
    policy = tiny_llama(len(tokenizer))
    reference = tiny_llama(len(tokenizer))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert low_precision(policy)
        r = draw(policy, tokenizer, max_new_tokens=12)
        ref = sequence_logprobs(reference, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask)
        sampler_kl = ((r.logprobs - ref) * r.response_mask).sum(-1).detach()
        assert float(sampler_kl.abs().max()) > 1e-4  # the floor: up to 1.3e-3 on this model; float32 < 1e-5
        lp = rollout_logprobs(policy, r)
    torch.testing.assert_close(((lp - ref) * r.response_mask).sum(-1), torch.zeros(len(r.responses)), atol=0, rtol=0)
    assert not low_precision(policy)
    f32 = draw(policy, tokenizer)
    assert rollout_logprobs(policy, f32) is f32.logprobs
    assert low_precision(tiny_llama(len(tokenizer)).to(torch.bfloat16))


# ---------------------------------------------------------------- guards found by mutation testing


def test_top_p_drops_the_token_whose_mass_before_is_exactly_top_p():
    q = sampling_probs(torch.zeros(1, 4), 1.0, top_p=0.5)  # uniform: masses before 0, .25, .5, .75
    assert int((q > 0).sum()) == 2 and torch.allclose(q[q > 0], torch.tensor([0.5, 0.5]))


def test_sampled_logprobs_are_those_of_the_models_own_forward(model, tokenizer):
    """Positions start at 0 on the first real token: an unpadded prompt's log-probs equal a plain HF
    forward's (positions 0..L-1), sampled and teacher-forced alike (atol 1e-5: float32 rounding of two
    kernels on the same arithmetic)."""
    r = draw(model, tokenizer, prompts=["w7 w8 w9"], num_samples=3)
    tf = sequence_logprobs(model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask).detach()
    width = r.prompt_ids.shape[1]
    for i in range(3):
        n = int(r.response_mask[i].sum())
        ids = torch.cat([r.prompt_ids[i], r.response_ids[i, :n]])[None]
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0]
        lp = logits[width - 1 : -1].log_softmax(-1).gather(-1, ids[0, width:, None]).squeeze(-1)
        torch.testing.assert_close(r.logprobs[i, :n], lp, atol=1e-5, rtol=0)
        torch.testing.assert_close(tf[i, :n], lp, atol=1e-5, rtol=0)


def test_low_precision_rollout_logprobs_are_taken_without_dropout(tokenizer):
    policy = tiny_gpt2(len(tokenizer))  # GPT-2's default dropout 0.1
    assert policy.config.resid_pdrop > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        r = draw(policy, tokenizer, max_new_tokens=6)
        with torch.no_grad():
            want = sequence_logprobs(policy.eval(), r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask)
        policy.train()  # as in an RL training step
        a, b = rollout_logprobs(policy, r), rollout_logprobs(policy, r)
    assert policy.training
    torch.testing.assert_close(a, want, atol=0, rtol=0)
    torch.testing.assert_close(b, want, atol=0, rtol=0)


def test_padded_rows_align_left_or_right_and_pad_id_falls_back_from_pad_to_eos_to_zero():
    from types import SimpleNamespace

    from infalign.models.builders import pad_id, padded

    ids, mask = padded([[5, 6, 7], [8], []], pad=9)
    assert ids.tolist() == [[5, 6, 7], [8, 9, 9], [9, 9, 9]] and mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    ids, mask = padded([[5, 6, 7], [8], []], pad=9, left=True)
    assert ids.tolist() == [[5, 6, 7], [9, 9, 8], [9, 9, 9]] and mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long
    assert pad_id(SimpleNamespace(pad_token_id=3, eos_token_id=4)) == 3
    assert pad_id(SimpleNamespace(pad_token_id=None, eos_token_id=4)) == 4
    assert pad_id(SimpleNamespace()) == 0
