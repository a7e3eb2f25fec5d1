"""The lean GPT-2 decode step (models/decode_step.py): the same logits as HF's forward, bit for
bit, and the sampler draws the same tokens and log-probs with it as without it.

Bitwise equality (``torch.equal``, no tolerance) is the claim: the step runs the same tensor
operations on the same inputs as ``GPT2LMHeadModel.forward`` with a KV cache, only without the
Python around them, so any difference is a bug (a wrong mask, scale, position or cache slot)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import copy

import pytest
import torch
from transformers import DynamicCache, GPT2LMHeadModel

from infalign.models import build_toy_lm, decode_step
from infalign.models.decode_step import StaticKV, gpt2_step, supports
from infalign.models.generation import position_ids, sample
from infalign.toy import ToyWorld


@pytest.fixture(scope="module")
def tokenizer():
    return ToyWorld(seed=0).tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return build_toy_lm(tokenizer, "tiny").eval()


@pytest.fixture(scope="module")
def prompts():
    return ToyWorld(seed=0).prompts("train", 5)


def eos_biased(model, tokenizer, bias: float = 2.0):
    """A copy whose head is untied and biased towards eos, so rows end at different steps (the
    sampler drops finished rows from the batch and the cache)."""
    m = copy.deepcopy(model)
    head = torch.nn.Linear(m.config.n_embd, m.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(m.transformer.wte.weight)
        head.bias.zero_()
        head.bias[tokenizer.eos_token_id] = bias
    m.lm_head = head
    return m.eval()


def left_padded(tokenizer, texts):
    enc = tokenizer(texts)["input_ids"]
    width = max(map(len, enc))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(e)) + e for e in enc])
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc])
    return ids, mask


@pytest.mark.parametrize("padded", [True, False])
def test_step_logits_equal_hf_forward_bit_for_bit(model, tokenizer, prompts, padded):
    """Prefill with HF, then 6 single-token steps through HF (DynamicCache) and through gpt2_step
    (StaticKV copied from the same prefill): the logits are equal at every step, with left padding
    (SDPA gets the boolean padding mask) and without (no mask, as HF does)."""
    texts = prompts if padded else [prompts[0]] * 3
    ids, mask = left_padded(tokenizer, texts)
    assert bool((mask == 0).any()) is padded
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=True,
                    cache=DynamicCache())
        hf_cache = out.cache if hasattr(out, "cache") else out.past_key_values
        kv = StaticKV.from_cache(hf_cache, ids.shape[1] + 6)
        gen = torch.Generator().manual_seed(3)
        for _ in range(6):
            tok = torch.randint(3, len(tokenizer), (ids.shape[0], 1), generator=gen)
            mask = torch.cat([mask, torch.ones_like(tok)], dim=1)
            pos = position_ids(mask)[:, -1:]
            hf = model(input_ids=tok, attention_mask=mask, position_ids=pos, use_cache=True, cache=hf_cache,
                       logits_to_keep=1)
            lean = gpt2_step(model, tok, pos, mask, kv)
            assert torch.equal(lean, hf.logits[:, -1, :])
        assert kv.length == ids.shape[1] + 6
        with pytest.raises(ValueError, match="full"):
            gpt2_step(model, tok, pos, torch.cat([mask, torch.ones_like(tok)], 1), kv)


@pytest.mark.parametrize("kw", [{}, {"share_prefill": False}, {"temperature": 0.7, "top_k": 5}, {"top_p": 0.8},
                                {"compact": False}, {"eos_bias": 2.0}, {"eos_bias": 2.0, "share_prefill": False}])
def test_sampler_draws_the_same_with_and_without_the_lean_step(model, tokenizer, prompts, kw, monkeypatch):
    """sample(lean=True) vs sample(lean=False) (HF's forward every step): the same tokens, masks,
    ``ended`` and log-probs, bit for bit, over 2 seeds -- with a shared or per-row prefill, and with
    rows ending early (eos bias: finished rows leave the batch and the KV cache)."""
    kw = dict(kw)
    m = eos_biased(model, tokenizer, kw.pop("eos_bias")) if "eos_bias" in kw else model
    calls = []
    real = decode_step.gpt2_step
    monkeypatch.setattr(decode_step, "gpt2_step", lambda *a: calls.append(a[1].shape[0]) or real(*a))
    for seed in range(2):
        draws = {lean: sample(m, tokenizer, prompts, 6, 12, generator=torch.Generator().manual_seed(seed),
                              lean=lean, **kw) for lean in (False, True)}
        a, b = draws[False], draws[True]
        for name in ("response_ids", "response_mask", "logprobs", "ended"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
        assert a.responses == b.responses
    assert calls, "the lean step was not used"
    if m is not model and kw.get("compact", True):
        assert min(calls) < len(prompts) * 6  # finished rows did leave the batch


def test_supports_only_what_it_reproduces(model, tokenizer):
    from transformers import GPT2ForSequenceClassification

    assert supports(model)
    model.train()
    try:
        assert not supports(model)  # dropout would differ
    finally:
        model.eval()
    eager = GPT2LMHeadModel._from_config(copy.deepcopy(model.config), attn_implementation="eager").eval()
    assert not supports(eager)  # eager attention rounds differently from SDPA

    class Custom(GPT2LMHeadModel):
        pass

    assert not supports(Custom(copy.deepcopy(model.config)).eval())
    assert not supports(GPT2ForSequenceClassification(copy.deepcopy(model.config)).eval())
    hook = model.transformer.h[0].register_forward_hook(lambda *a: None)
    try:
        assert not supports(model)  # a hook on a block the step bypasses would silently not run
    finally:
        hook.remove()
    head_hook = model.lm_head.register_forward_hook(lambda *a: None)
    try:
        assert supports(model)  # the head is still called
    finally:
        head_hook.remove()


@pytest.mark.parametrize("where", ["drop", "attn_dropout", "resid_dropout", "mlp_dropout"])
def test_a_hook_on_a_bypassed_dropout_disables_the_step(model, where):
    block = model.transformer.h[-1]
    module = {"drop": model.transformer.drop, "attn_dropout": block.attn.attn_dropout,
              "resid_dropout": block.attn.resid_dropout, "mlp_dropout": block.mlp.dropout}[where]
    hook = module.register_forward_pre_hook(lambda *a: None)
    try:
        assert not supports(model)
    finally:
        hook.remove()
    assert supports(model)


def test_global_hooks_instance_forwards_and_offload_hooks_disable_the_step(model, monkeypatch):
    hook = torch.nn.modules.module.register_module_forward_hook(lambda *a: None)
    try:
        assert not supports(model)  # a global hook would run on every bypassed module
    finally:
        hook.remove()
    assert supports(model)
    mlp = model.transformer.h[0].mlp
    monkeypatch.setattr(mlp, "forward", mlp.forward)  # an instance-level override (as accelerate does)
    assert not supports(model)
    monkeypatch.delattr(mlp, "forward")
    assert supports(model)
    monkeypatch.setattr(model, "_hf_hook", object(), raising=False)  # accelerate's device-offload hook
    assert not supports(model)


def test_patched_classes_swapped_blocks_attention_overrides_and_compile_disable_the_step(model, monkeypatch):
    """What kernel libraries and users do to a GPT-2 that would make the step compute something
    else than the model's forward: each one turns it off, and undoing it turns it back on."""
    import transformers.integrations.sdpa_attention as sdpa_attention
    from transformers.models.gpt2 import modeling_gpt2 as hf

    hook = torch.nn.modules.module.register_module_forward_pre_hook(lambda *a: None)
    try:
        assert not supports(model)  # a global pre-hook
    finally:
        hook.remove()
    original = hf.GPT2MLP.forward

    def patched(self, hidden_states):  # a class-level patch (defined here, not in modeling_gpt2)
        return original(self, hidden_states)

    monkeypatch.setattr(hf.GPT2MLP, "forward", patched)
    assert not supports(model)
    monkeypatch.undo()
    assert supports(model)

    class Block(hf.GPT2Block):
        pass

    swapped = copy.deepcopy(model)
    swapped.transformer.h[1].__class__ = Block  # a replaced block class
    assert not supports(swapped)
    swapped.transformer.h[1] = torch.nn.Identity()  # a layer without .attn: False, not AttributeError
    assert not supports(swapped)

    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward", lambda *a, **k: None)
    assert not supports(model)  # HF's registered "sdpa" is no longer the stock function
    monkeypatch.undo()
    monkeypatch.setattr(model, "_compiled_call_impl", object())  # as Module.compile() sets it
    assert not supports(model)
    monkeypatch.undo()
    assert supports(model)


def test_old_transformers_or_attention_without_scaling_disable_the_step(model, monkeypatch):
    """The step reads ``attn.scaling`` (transformers >= 5); an older attention folds the scale in
    elsewhere, so the step is not used there at all."""
    import transformers

    monkeypatch.setattr(transformers, "__version__", "4.57.1")
    assert not supports(model)
    monkeypatch.undo()
    assert supports(model)
    monkeypatch.delattr(model.transformer.h[1].attn, "scaling")
    assert not supports(model)


def test_unsupported_models_sample_through_hf(model, tokenizer, prompts, monkeypatch):
    """An eager-attention GPT-2 never reaches the lean step; it still samples."""
    monkeypatch.setattr(decode_step, "gpt2_step", lambda *a: pytest.fail("lean step used"))
    eager = GPT2LMHeadModel._from_config(copy.deepcopy(model.config), attn_implementation="eager")
    eager.load_state_dict(model.state_dict())
    r = sample(eager.eval(), tokenizer, prompts, 2, 5, generator=torch.Generator().manual_seed(0))
    assert r.response_ids.shape[0] == 10


def test_static_kv_select_and_repeat_rows():
    keys = [torch.arange(3 * 2 * 4 * 1.0).view(3, 2, 4, 1)]
    values = [-k for k in keys]
    legacy = [(keys[0][:, :, :2], values[0][:, :, :2])]  # a legacy tuple cache of 2 positions
    kv = StaticKV.from_cache(legacy, capacity=5)
    assert kv.length == 2 and kv.keys[0].shape == (3, 2, 5, 1)
    assert torch.equal(kv.keys[0][:, :, :2], keys[0][:, :, :2])
    kv = StaticKV.from_cache(legacy, capacity=5, repeats=2)  # each row twice in a row (a shared prefill)
    assert kv.length == 2 and kv.keys[0].shape == (6, 2, 5, 1)
    assert torch.equal(kv.keys[0][:, :, :2], keys[0][:, :, :2].repeat_interleave(2, 0))
    assert torch.equal(kv.values[0][:, :, :2], values[0][:, :, :2].repeat_interleave(2, 0))
    kv.batch_select_indices(torch.tensor([5, 0]))
    assert torch.equal(kv.values[0][:, :, :2], values[0][[2, 0], :, :2])
    with pytest.raises(ValueError, match="capacity"):
        StaticKV.from_cache(legacy, capacity=1)
    with pytest.raises(ValueError, match="repeats"):
        StaticKV.from_cache(legacy, capacity=5, repeats=0)


def test_step_rejects_a_mask_of_the_wrong_width(model, tokenizer, prompts):
    ids, mask = left_padded(tokenizer, prompts[:2])
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=True)
        kv = StaticKV.from_cache(out.cache if hasattr(out, "cache") else out.past_key_values, ids.shape[1] + 2)
        with pytest.raises(ValueError, match="attention_mask"):
            gpt2_step(model, ids[:, -1:], position_ids(mask)[:, -1:], mask, kv)  # misses the new token


@pytest.mark.parametrize("scaling", [{"scale_attn_by_inverse_layer_idx": True}, {"scale_attn_weights": False}])
def test_step_uses_the_attention_s_own_scale_not_sdpa_s_default(scaling):
    """GPT-2 configs whose attention scale is not 1/sqrt(head_dim) -- scaled by 1/(layer+1) too, or
    not scaled at all: the step passes ``attn.scaling`` to SDPA, so its logits after a 3-token
    prefill still match HF's full forward on all 4 tokens. SDPA's default (``scale=None``, i.e.
    1/sqrt(d)) is off by ~2e-4 / ~7e-4 on these logits (measured), far above the tolerance of 1e-6
    (the full forward and the cached step differ only by float32 rounding, ~1e-7)."""
    from transformers import GPT2Config

    config = GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                        attn_implementation="sdpa", **scaling)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    assert supports(model)  # the step is used for these configs, so its scale must be theirs
    head_dim = 32 // 4
    expected = [1 / head_dim ** 0.5 / (i + 1) if scaling.get("scale_attn_by_inverse_layer_idx") else 1.0
                for i in range(2)]
    assert [b.attn.scaling for b in model.transformer.h] == pytest.approx(expected, rel=1e-12)
    ids = torch.tensor([[5, 17, 3, 42]])
    with torch.inference_mode():
        full = model(ids).logits[:, -1]
        out = model(input_ids=ids[:, :3], use_cache=True)
        kv = StaticKV.from_cache(out.cache if hasattr(out, "cache") else out.past_key_values, 8)
        mask = torch.ones(1, 4, dtype=torch.long)
        lean = gpt2_step(model, ids[:, 3:], torch.tensor([[3]]), mask, kv)
    assert kv.length == 4
    torch.testing.assert_close(lean, full, rtol=0, atol=1e-6)
