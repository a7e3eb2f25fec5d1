"""A lean single-token decode step for GPT-2 language models, with a preallocated KV cache.

:func:`infalign.models.generation.sample` spends about half of a toy model's decode step in the
Python around the arithmetic: HF's module stack builds the attention mask, routes keyword arguments
through decorators and wraps outputs on every call, and its ``DynamicCache`` concatenates the whole
cache (``torch.cat``) at every new token. :func:`gpt2_step` runs the *same* tensor operations as
``GPT2LMHeadModel.forward`` on one new token per row -- so the logits are the same, bit for bit
(``tests/test_decode_step.py``) -- without that Python, writing the new keys/values into a
:class:`StaticKV` in place. Per layer (``h``: the residual stream ``[R, 1, E]``):

    h <- wte[y] + wpe[pos]
    a = ln_1(h);  q, k, v = split(c_attn(a));  K[:, :, n] = k;  V[:, :, n] = v
    h <- h + c_proj(sdpa(q, K[:, :, :n+1], V[:, :, :n+1], mask, scale))
    h <- h + mlp.c_proj(act(mlp.c_fc(ln_2(h))))
    logits = lm_head(ln_f(h))

where ``mask`` is the boolean padding mask over ``[prompt | response so far]`` -- or None when a
batch has no padding, as HF passes it to SDPA. Only models for which this *is* HF's computation are
taken (:func:`supports`): ``GPT2LMHeadModel`` itself, SDPA attention, no cross-attention, eval mode.
Every other model keeps HF's forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["StaticKV", "supports", "gpt2_step"]


class StaticKV:
    """Per layer keys and values ``[R, H, capacity, D]``, filled in the first ``length`` positions.

    Built from the KV cache HF's prefill returned (:meth:`from_cache`, which also repeats a shared
    prefill's rows); :func:`gpt2_step` writes one position per step. :meth:`batch_select_indices` is
    the ``Cache`` method the sampler calls to drop finished rows."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], length: int):
        self.keys, self.values, self.length = keys, values, length

    @classmethod
    def from_cache(cls, cache, capacity: int, repeats: int = 1) -> StaticKV:
        """Copy a prefill's cache (a transformers ``Cache`` with ``.layers`` or a legacy tuple of
        ``(key, value)`` per layer) into buffers with room for ``capacity`` positions; ``repeats``:
        each of its ``B`` rows ``repeats`` times in a row (prompt-major, as
        ``Cache.batch_repeat_interleave``), written straight into ``B * repeats`` rows -- one copy of
        the filled positions instead of a copy and then a repeat of the whole buffer."""
        layers = [(layer.keys, layer.values) for layer in cache.layers] if hasattr(cache, "layers") else cache
        length = layers[0][0].shape[2]
        if capacity < length:
            raise ValueError(f"capacity {capacity} < the cache's {length} positions")
        if repeats < 1:
            raise ValueError(f"repeats={repeats} must be >= 1")
        keys, values = [], []
        for k, v in layers:
            rows, heads, _, dim = k.shape
            kb = k.new_empty(rows * repeats, heads, capacity, dim)
            vb = v.new_empty(rows * repeats, heads, capacity, dim)
            kb.view(rows, repeats, heads, capacity, dim)[:, :, :, :length] = k[:, None]
            vb.view(rows, repeats, heads, capacity, dim)[:, :, :, :length] = v[:, None]
            keys.append(kb)
            values.append(vb)
        return cls(keys, values, length)

    def batch_select_indices(self, index: torch.Tensor) -> None:
        """Keep the rows ``index`` (in that order)."""
        self.keys = [t.index_select(0, index) for t in self.keys]
        self.values = [t.index_select(0, index) for t in self.values]


def supports(model: torch.nn.Module) -> bool:
    """True when :func:`gpt2_step` computes exactly what ``model``'s own forward computes: an HF
    ``GPT2LMHeadModel`` in eval mode, with SDPA attention and no cross-attention, from a
    transformers whose attention carries its unified ``scaling`` (>= 5; verified on 5.24 by
    tests/test_decode_step.py), and nothing that would change the forward it replaces:

    * the model, its body, blocks, attention and MLP are exactly HF's classes (a subclass or a
      wrapper -- PEFT, DDP -- may change the forward), and those classes' ``forward`` are still
      the ones defined in ``modeling_gpt2`` (no class-level patch, as kernel libraries apply);
    * HF's ``sdpa`` attention function is the stock one (no ``AttentionInterface.register``);
    * no hooks on the modules it bypasses (those above and their dropouts), no global module
      hooks, no instance-level ``forward`` override, no accelerate ``_hf_hook`` (device offload),
      no ``Module.compile()``.

    Hooks on the layers it still calls -- layer norms, projections, embeddings, head -- run as
    usual (they are called through their own ``__call__``)."""
    import transformers
    from torch.nn.modules import module as torch_module
    from transformers.models.gpt2 import modeling_gpt2 as hf

    config = getattr(model, "config", None)
    if not (type(model) is hf.GPT2LMHeadModel and not model.training
            and int(transformers.__version__.split(".")[0]) >= 5
            and getattr(config, "_attn_implementation", None) == "sdpa"
            and not getattr(config, "add_cross_attention", False)):
        return False
    body = model.transformer
    if type(body) is not hf.GPT2Model or not all(
            type(b) is hf.GPT2Block and type(b.attn) is hf.GPT2Attention and type(b.mlp) is hf.GPT2MLP
            for b in body.h):
        return False
    classes = (hf.GPT2LMHeadModel, hf.GPT2Model, hf.GPT2Block, hf.GPT2Attention, hf.GPT2MLP)
    if any(getattr(cls.forward, "__module__", None) != hf.__name__ for cls in classes):
        return False
    try:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        if ALL_ATTENTION_FUNCTIONS.get("sdpa") is not sdpa_attention_forward:
            return False
    except ImportError:
        return False
    if not all(isinstance(getattr(block.attn, "scaling", None), float) for block in body.h):
        return False
    skipped = [model, body, body.drop, *body.h]
    for block in body.h:
        skipped += [block.attn, block.attn.attn_dropout, block.attn.resid_dropout, block.mlp, block.mlp.dropout]
    if any(getattr(torch_module, name, None) for name in ("_global_forward_hooks", "_global_forward_pre_hooks")):
        return False
    if any(m._forward_hooks or m._forward_pre_hooks for m in skipped):
        return False
    return not any("forward" in vars(m) or hasattr(m, "_hf_hook") or getattr(m, "_compiled_call_impl", None)
                   for m in skipped)


def gpt2_step(model, tokens: torch.Tensor, positions: torch.Tensor, attention_mask: torch.Tensor,
              kv: StaticKV) -> torch.Tensor:
    """Next-token logits ``[R, V]`` after one new token per row.

    ``tokens``/``positions`` ``[R, 1]``: the new token and its position id; ``attention_mask``
    ``[R, kv.length + 1]``: 1 on real tokens of ``[prompt | response]`` including the new one.
    Writes the new keys/values at position ``kv.length`` and advances it."""
    body = model.transformer
    rows, n = tokens.shape[0], kv.length
    if n >= kv.keys[0].shape[2]:
        raise ValueError(f"the KV cache is full ({n} positions)")
    if attention_mask.shape != (rows, n + 1):
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} != ({rows}, {n + 1})")
    # HF hands SDPA no mask when nothing is padded (query length 1), else the boolean padding mask.
    mask = None if bool(attention_mask.all()) else attention_mask.bool()[:, None, None, :]
    h = body.wte(tokens) + body.wpe(positions)
    for block, keys, values in zip(body.h, kv.keys, kv.values):
        attn, mlp = block.attn, block.mlp
        q, k, v = attn.c_attn(block.ln_1(h)).split(attn.split_size, dim=2)
        keys[:, :, n] = k.view(rows, -1, attn.head_dim)
        values[:, :, n] = v.view(rows, -1, attn.head_dim)
        q = q.view(rows, 1, -1, attn.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, keys[:, :, : n + 1], values[:, :, : n + 1], attn_mask=mask,
                                             dropout_p=0.0, scale=attn.scaling, is_causal=False)
        h = h + attn.c_proj(out.transpose(1, 2).reshape(rows, 1, -1).contiguous())
        h = h + mlp.c_proj(mlp.act(mlp.c_fc(block.ln_2(h))))
    kv.length = n + 1
    return model.lm_head(body.ln_f(h))[:, -1, :]
