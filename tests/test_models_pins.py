"""Pins found by mutation testing of src/infalign/models: which rows ``encode_prompt_response`` flags as cut,
the pad id a reward model's config gets without a tokenizer, infinite scores, a prompt cut to no room after
its BOS, which weights count as low precision, the teacher-forced log-probs of a length bucket
that lacks the batch's longest prompt, and their gradient (docs/method.md §6: the policy gradient and the KL
are taken from these log-probs). Each test runs in well under a second on word-level tokenizers and tiny
configs or models built in the test (nothing is downloaded)."""

from __future__ import annotations

import pytest
import torch

from infalign.models.builders import align_pad_token_id, encode_prompt_response
from infalign.models.generation import length_buckets, low_precision, prompt_ids_within, sequence_logprobs
from infalign.models.reward import check_finite
from test_data import word_tokenizer


def _bos_tokenizer(words):
    """A Llama-style word tokenizer: ``<s> text``, ids <pad> 0, <unk> 1, <s> 2, </s> 3, then ``words``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<s>", "</s>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer(["a", "b", "c", "d", "x", "y", "z"])


# ---------------------------------------------------------------------------- models/builders.py


def test_a_row_exactly_at_max_length_is_not_truncated(tok):
    """``truncated`` marks the rows that were *cut* (``len > max_length``): ``a b c`` + ``x y`` + eos is 6
    tokens; at ``max_length=6`` it is whole (not flagged, ids unchanged), at 5 it is cut and flagged (the
    scorer warns about flagged rows). Mutation testing: ``>=`` (a whole row flagged) went unnoticed."""
    whole = encode_prompt_response(tok, ["a b c"], ["x y"], max_length=6)
    assert whole["truncated"].tolist() == [False]
    assert whole["input_ids"].tolist() == [[3, 4, 5, 7, 8, 1]]
    cut = encode_prompt_response(tok, ["a b c"], ["x y"], max_length=5)
    assert cut["truncated"].tolist() == [True]
    assert cut["input_ids"].tolist() == [[4, 5, 7, 8, 1]]


def test_without_a_tokenizer_a_missing_pad_id_becomes_the_first_eos():
    """``load_reward_model`` without a tokenizer: a config with no ``pad_token_id`` gets ``eos_token_id`` (the
    first of a list) -- HF's causal-LM classifiers find each row's last token by the pad id, and with none
    they refuse batches of more than one row. A pad id the config names is kept. Mutation testing: leaving
    it None, and the *last* eos of a list, went unnoticed."""
    from transformers import GPT2Config

    config = GPT2Config(eos_token_id=5, pad_token_id=None)
    align_pad_token_id(config, None, "reward.name_or_path")
    assert config.pad_token_id == 5
    listed = GPT2Config(eos_token_id=[7, 8], pad_token_id=None)
    align_pad_token_id(listed, None, "reward.name_or_path")
    assert listed.pad_token_id == 7
    named = GPT2Config(eos_token_id=5, pad_token_id=0)
    align_pad_token_id(named, None, "reward.name_or_path")
    assert named.pad_token_id == 0


# ---------------------------------------------------------------------------- models/reward.py


def test_infinite_scores_are_refused_like_nan():
    """``check_finite`` refuses every non-finite score -- +inf and -inf as NaN -- naming how many and which rows:
    an infinite reward makes every mean, calibration and win rate after it meaningless. Mutation testing:
    ``isnan`` alone (infinities passed) went unnoticed -- the existing test has a NaN only."""
    with pytest.raises(FloatingPointError, match=r"3 non-finite scores \(rows \[1, 2, 3\]"):
        check_finite(torch.tensor([0.5, float("inf"), float("-inf"), float("nan")]), "reward model")
    ok = torch.tensor([0.5, -3.0])
    assert check_finite(ok, "reward model") is ok


# ---------------------------------------------------------------------------- models/generation.py


def test_a_prompt_limit_with_no_room_after_the_bos_is_refused():
    """Cut from the left, a prompt keeps its leading BOS (``_truncate_left``): at a limit of 2 ``<s> a b c``
    becomes ``<s> c``; a limit of 1 leaves no room for any text after ``<s>`` and is a ValueError, not a
    prompt of the BOS alone (every response would be sampled for no prompt). Ids by hand (<s> 2, a 4, b 5,
    c 6). Mutation testing: dropping that check went unnoticed."""
    bos = _bos_tokenizer(["a", "b", "c"])
    assert prompt_ids_within(bos, ["a b c"], 2) == ([[2, 6]], 1)
    with pytest.raises(ValueError, match="leaves no room after the special tokens"):
        prompt_ids_within(bos, ["a b c"], 1)


def test_half_precision_weights_are_low_precision():
    """``low_precision``: float16 weights compute in less than float32 just as bfloat16 ones do, so
    ``rollout_logprobs`` takes the teacher-forced path for both (docs/method.md §6: the two paths round
    differently by up to ~0.07 nats per token in low precision). float32 weights without autocast are not.
    Mutation testing: float16 left out went unnoticed."""
    layer = torch.nn.Linear(2, 2)
    assert not low_precision(layer)
    assert low_precision(torch.nn.Linear(2, 2).to(torch.float16))
    assert low_precision(torch.nn.Linear(2, 2).to(torch.bfloat16))



@pytest.fixture(scope="module")
def gpt2():
    """A tiny random GPT-2 (vocabulary 16, one layer), in eval mode: no dropout."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=16, n_positions=32, n_embd=16, n_layer=1, n_head=2, bos_token_id=1,
                        eos_token_id=1, pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config).eval()


def test_a_length_bucket_without_the_longest_prompt_keeps_its_prompts_last_columns(gpt2):
    """``sequence_logprobs(bucket=True)`` runs each length bucket cut to its own longest prompt -- the *last*
    columns of the left-padded prompts -- and gives the one-pass forward's log-probs. 64 rows: 32 with a
    5-token prompt and a 1-token response (6 tokens), 32 with a 1-token prompt and an 8-token response (9):
    ``length_buckets`` puts them in two buckets (64 // 32 = 2), the second of which has no 5-token prompt, so
    its prompts are cut to 1 column. Tolerance 1e-5 nats: the same float32 arithmetic on batches of other
    shapes (the existing bucket test's bound). Mutation testing: keeping the *first* columns (padding; the
    prompt lost) went unnoticed -- in the existing test every bucket held a longest prompt."""
    model = gpt2
    g = torch.Generator().manual_seed(1)
    prompt_ids = torch.zeros(64, 5, dtype=torch.long)
    prompt_mask = torch.zeros(64, 5, dtype=torch.long)
    response_ids = torch.zeros(64, 8, dtype=torch.long)
    response_mask = torch.zeros(64, 8, dtype=torch.long)
    prompt_ids[:32] = torch.randint(2, 16, (32, 5), generator=g)
    prompt_mask[:32] = 1
    response_ids[:32, 0] = torch.randint(2, 16, (32,), generator=g)
    response_mask[:32, 0] = 1
    prompt_ids[32:, -1] = torch.randint(2, 16, (32,), generator=g)
    prompt_mask[32:, -1] = 1
    response_ids[32:] = torch.randint(2, 16, (32, 8), generator=g)
    response_mask[32:] = 1
    total = prompt_mask.sum(-1) + response_mask.sum(-1)
    assert [b.tolist() for b in length_buckets(total)] == [list(range(32)), list(range(32, 64))]
    args = (prompt_ids, prompt_mask, response_ids, response_mask)
    with torch.no_grad():
        one_pass = sequence_logprobs(model, *args, bucket=False, share_prompts=False)
        bucketed = sequence_logprobs(model, *args, bucket=True, share_prompts=False)
    torch.testing.assert_close(bucketed, one_pass, atol=1e-5, rtol=0)
    assert (bucketed[~response_mask.bool()] == 0).all()


def test_the_log_probs_gradient_is_that_of_log_softmax(gpt2):
    """``sequence_logprobs`` is differentiable as ``log_softmax(z)[y]`` is: d/dz = onehot(y) - softmax(z), the
    normaliser included (the policy gradient, docs/method.md §6). Its parameter gradient equals that of the
    model's own forward scored by hand -- ``log_softmax(logits[:, Lp-1:-1]).gather(y)`` over unpadded rows
    (positions 0..L-1, the default) -- to 1e-5 (float32 rounding of two summation orders). Mutation testing:
    a detached ``logsumexp`` (the gradient of the chosen logit alone; the log-probs' values unchanged) went
    unnoticed -- the existing gradient tests compare two paths that share that line."""
    model = gpt2
    g = torch.Generator().manual_seed(2)
    prompt_ids, response_ids = torch.randint(2, 16, (3, 4), generator=g), torch.randint(2, 16, (3, 5), generator=g)
    ones_p, ones_r = torch.ones_like(prompt_ids), torch.ones_like(response_ids)
    model.zero_grad()
    lp = sequence_logprobs(model, prompt_ids, ones_p, response_ids, ones_r, bucket=False, share_prompts=False)
    lp.sum().backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logits = model(input_ids=torch.cat([prompt_ids, response_ids], 1)).logits[:, 3:-1]
    torch.log_softmax(logits, -1).gather(-1, response_ids[..., None]).sum().backward()
    for a, (name, p) in zip(got, model.named_parameters()):
        torch.testing.assert_close(a, p.grad, atol=1e-5, rtol=1e-4, msg=name)
