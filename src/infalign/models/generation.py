"""Batched sampling with a KV cache, and teacher-forced log-probs, for any HF causal LM.

Two functions serve every caller (RL rollouts, calibration, evaluation):

- :func:`sample` draws ``num_samples`` responses per prompt with its own decoding loop (no
  ``model.generate``): one prefill over the left-padded prompts (each once), whose KV cache is then
  repeated ``num_samples`` times, then one single-token step per new token, reusing the KV cache
  (``cache``; ``past_key_values`` before transformers 5). Rows are prompt-major
  (``row = p * num_samples + j``).
- :func:`sequence_logprobs` recomputes ``log pi(y_t | x, y_<t)`` for given responses teacher-forced
  (policy with grad, reference without): each distinct prompt once when rows repeat prompts, its
  KV cache serving its rows' responses; else one forward over ``[prompt | response]``.

Both feed the model the same inputs -- attention mask over ``[prompt | response]`` and position
ids ``cumsum(mask) - 1`` (clamped at 0 on the left padding) -- so a left-padded prompt sees the
same positions as the prompt alone, and the log-probs of the two functions agree to float error.

Log-probs are always the model's own, at temperature 1: ``log_softmax(logits)``, never
``log_softmax(logits / T)``. They are what ``KL(pi || pi_ref)`` and the policy gradient need.
They equal the log-probs of the *sampling* distribution only when ``temperature == 1``,
``top_k is None`` and ``top_p == 1`` (:func:`sampling_probs`); RL therefore refuses any other
setting (``training/algorithms/base.py``, docs/method.md §6), evaluation may use them.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass

import torch

from infalign.models import decode_step
from infalign.models.builders import encode_prompts, model_positions, pad_id, padded, special_id, special_tokens_around

log = logging.getLogger(__name__)
MAX_SHARED_DISTINCT = 0.5  # sequence_logprobs shares prompts when at most this share of the rows is distinct
_WARNED_STATEFUL: set[str] = set()  # model classes already warned about (once per process)
_NO_CACHE_FIELD = object()  # a model output without the cache field (its state lives elsewhere)

__all__ = ["Rollout", "sample", "sampling_probs", "sequence_logprobs", "rollout_logprobs", "low_precision",
            "length_buckets", "policy_prompt_ids", "prompt_ids_within", "position_ids", "shared_prompt_groups",
           "stop_token_ids", "prompt_token_limit", "response_stats"]


@dataclass
class Rollout:
    """A batch of sampled responses; rows are prompt-major (``row = p * num_samples + j``).

    ``prompt_ids``/``prompt_mask`` are ``[B*n, Lp]`` and left-padded; ``response_ids`` is
    ``[B*n, Lr]``, right-padded with the pad id after the eos token; ``response_mask`` is 1 on real
    response tokens *including* the eos token. ``logprobs`` are the model's log-probs at
    temperature 1 of each sampled token (0 where the mask is 0). ``Lr <= max_new_tokens``: decoding
    stops as soon as every row has emitted eos. ``ended`` ``[B*n]`` is True where the response
    ended with a stop token, False where it hit ``max_new_tokens`` without one (truncated).
    ``truncated_prompts`` counts the prompts (of ``prompts``) cut to :func:`prompt_token_limit`.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    responses: list[str]
    prompt_index: torch.Tensor
    ended: torch.Tensor
    truncated_prompts: int = 0

    @property
    def response_lengths(self) -> torch.Tensor:
        """Number of real response tokens per row (eos included) ``[B*n]``."""
        return self.response_mask.sum(-1)


def response_stats(lengths: torch.Tensor, ended: torch.Tensor) -> dict[str, float]:
    """``{"response_len_mean": mean tokens per response (the stop token included),
    "eos_rate": share of responses that ended with a stop token}`` over every element (rows of a
    rollout, or ``[P, n]`` of a pool). Truncated responses (no stop token within
    ``max_new_tokens``) are the ``1 - eos_rate``."""
    return {"response_len_mean": float(lengths.float().mean()), "eos_rate": float(ended.float().mean())}


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """``cumsum(mask) - 1`` clamped at 0: position 0 is the first real token of each row."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)


def _keep_last(model: torch.nn.Module, keep: int) -> dict:
    """``logits_to_keep=keep`` if the model supports it (skips the vocab projection elsewhere)."""
    return (
        {"logits_to_keep": keep}
        if "logits_to_keep" in inspect.signature(model.forward).parameters
        else {}
    )


def _cache_arg(model: torch.nn.Module) -> str:
    """The KV-cache keyword of ``model.forward``: ``cache`` (transformers >= 5.x; the old name is
    deprecated there) or ``past_key_values`` (older releases)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _forward(model, input_ids, attention_mask, pos, past, use_cache, keep_kw, cache_arg="past_key_values"):
    return model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=pos,
        use_cache=use_cache,
        **{cache_arg: past},
        **keep_kw,
    )


def sampling_probs(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                   top_p: float = 1.0) -> torch.Tensor:
    """The distribution a token is drawn from, ``[rows, V]``, for ``temperature > 0``:

        q = softmax(z / T)  restricted to the kept set K, renormalised,

    where ``z`` are the ``logits`` and K is the intersection of the ``top_k`` largest logits (all when
    None; ties at the k-th value are kept) and the nucleus: with the tokens sorted by ``softmax(z /
    T)`` in decreasing order (after the ``top_k`` cut), a token is kept while the mass of the tokens
    *before* it is ``< top_p`` -- the smallest prefix whose mass reaches ``top_p``, never empty
    (Holtzman et al. 2020; the order temperature -> top-k -> top-p of transformers' samplers).
    ``top_k=None, top_p=1`` is ``softmax(z / T)`` itself.
    """
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        drop_sorted = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # mass before the token
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def _pick(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float, generator) -> torch.Tensor:
    """Draw one token per row from :func:`sampling_probs`; ``T == 0`` is greedy."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = sampling_probs(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def prompt_token_limit(model, max_new_tokens: int) -> int | None:
    """The longest prompt (in tokens) that leaves room for ``max_new_tokens`` in the model's
    positions (``max_position_embeddings`` / ``n_positions`` of its config), None when the config
    names no limit. :func:`sample` cuts longer prompts to it."""
    limit = model_positions(getattr(model, "config", None))
    return limit - int(max_new_tokens) if limit else None


def policy_prompt_ids(model, tokenizer, prompts: list[str], max_new_tokens: int) -> tuple[list[list[int]], int]:
    """``(ids, truncated)``: the token ids of ``prompts`` as ``model`` reads them before ``max_new_tokens``
    new tokens -- :func:`~infalign.models.builders.encode_prompts` (leading special tokens, no trailing
    eos), each longer than :func:`prompt_token_limit` cut from the left with its leading special tokens
    kept (:func:`_truncate_left`) -- and how many were cut. The prompt encoding of :func:`sample` and of
    the diverged-policy probe (``pipeline/fit.check_trained_policy``)."""
    return prompt_ids_within(tokenizer, prompts, prompt_token_limit(model, max_new_tokens))


def prompt_ids_within(tokenizer, prompts: list[str], limit: int | None) -> tuple[list[list[int]], int]:
    """:func:`policy_prompt_ids` at a given token ``limit`` (:func:`prompt_token_limit`; None: no cut):
    how the offline baselines' collators (``data/batches.py``) encode the prompts their sampled
    responses were drawn for, without the model at hand."""
    enc = encode_prompts(tokenizer, prompts)
    if limit is None or all(len(ids) <= limit for ids in enc):
        return enc, 0
    head = special_tokens_around(tokenizer)[0]
    return [_truncate_left(ids, limit, head) for ids in enc], sum(len(ids) > limit for ids in enc)


def _truncate_left(ids: list[int], limit: int, head: list[int]) -> list[int]:
    """``ids`` cut to ``limit`` tokens from the left (the end of a conversation is kept), keeping the
    tokenizer's leading special tokens ``head`` (BOS / CLS) first when ``ids`` starts with them."""
    if len(ids) <= limit:
        return ids
    keep = head if head and ids[: len(head)] == head else []
    if limit <= len(keep):
        raise ValueError(f"prompt token limit {limit} leaves no room after the special tokens {keep}")
    return keep + ids[len(ids) - (limit - len(keep)) :]


def stop_token_ids(model, tokenizer) -> list[int]:
    """Ids that end a response: ``tokenizer.eos_token_id`` and every id in the model's
    ``generation_config.eos_token_id`` (an int or, Llama-3 / Qwen style, a list)."""
    ids = [special_id(tokenizer, "eos")]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += configured if isinstance(configured, list | tuple) else [configured]
    return sorted({int(i) for i in ids if i is not None})


def sample(
    model: torch.nn.Module,
    tokenizer,
    prompts: list[str],
    num_samples: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    top_p: float = 1.0,
    share_prefill: bool = True,
    compact: bool = True,
    lean: bool = True,
) -> Rollout:
    """Sample ``num_samples`` responses for each prompt, batched, and return them with log-probs.

    Token ``t`` of row ``i`` is drawn from :func:`sampling_probs` (``softmax(logits_t /
    temperature)`` cut to ``top_k`` and to the ``top_p`` nucleus; ``temperature=0``: greedy);
    ``logprobs[i, t] = log_softmax(logits_t)[y_t]`` at temperature 1, untruncated (see the module
    docstring). Decoding stops at ``max_new_tokens`` or when every row has emitted a stop token
    (:func:`stop_token_ids`: the tokenizer's eos and every id of the model's
    ``generation_config.eos_token_id``; no early stop if there is none). Padding uses
    ``tokenizer.pad_token_id``, falling back to eos, then 0.

    Prompts are encoded by :func:`~infalign.models.builders.encode_prompts` (the tokenizer's leading
    special tokens, BOS, and never a trailing eos). Prompts longer than :func:`prompt_token_limit` (the
    model's positions minus ``max_new_tokens``) are cut from the left, the tokenizer's leading special
    token (BOS) kept; ``truncated_prompts`` counts them.

    ``share_prefill`` (with the cache): each prompt of ``prompts`` is prefilled once and its KV cache and
    next-token logits are repeated ``num_samples`` times, instead of prefilling ``num_samples``
    copies. The draws consume the generator exactly as the unshared path does (one draw over all
    rows per step), so both give the same tokens, and log-probs equal to float error (the prefill
    runs on a batch of another size). ``use_cache=False`` recomputes the whole prefix each step
    (slow; kept as the reference the cached path is tested against). With the same ``generator``
    state all paths draw the same tokens. ``compact`` (with the cache): rows that have emitted a stop
    token leave the decoding batch (and the KV cache) once a quarter of the computed rows have, so
    a batch whose responses end early stops paying for them; the draws still cover every row, so
    the tokens are those of ``compact=False``. Dropout is off while sampling (the model is put in eval
    mode, then restored), so the log-probs match :func:`sequence_logprobs` on the model in eval
    mode. The returned tensors are ordinary tensors (not inference tensors), safe to use in a later
    autograd computation. ``lean`` (with the cache): the single-token steps run
    :func:`infalign.models.decode_step.gpt2_step` where it computes exactly the model's own forward
    (:func:`~infalign.models.decode_step.supports`: HF GPT-2 with SDPA), the same logits bit for bit
    without HF's per-call Python; False keeps HF's forward (the reference it is tested against).
    A model whose cache keeps more than keys and values (hybrid and state-space models) samples
    without the cache after its prefill, recomputing the prefix at each token, with a warning
    (:func:`_warn_stateful_cache`).
    """
    if num_samples < 1 or max_new_tokens < 1:
        raise ValueError(f"num_samples={num_samples}, max_new_tokens={max_new_tokens}: need >= 1")
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 means greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} must be >= 1 or None")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p} must be in (0, 1] (1: no nucleus cut)")
    device = next(model.parameters()).device
    stops = stop_token_ids(model, tokenizer)
    pad = pad_id(tokenizer)

    # Tokenise once (leading special tokens only, cut to the model's limit) and left-pad; rows are
    # repeated inside _decode.
    enc, truncated = policy_prompt_ids(model, tokenizer, list(prompts), max_new_tokens)
    if any(len(ids) == 0 for ids in enc):  # (a cut prompt keeps at least one token)
        raise ValueError("every prompt must tokenise to at least one token (got an empty prompt)")
    prompt_ids, prompt_mask = padded(enc, pad, left=True)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)

    was_training = model.training
    model.eval()
    try:
        tokens, logprobs, response_mask, ended = _decode(
            model,
            prompt_ids,
            prompt_mask,
            num_samples,
            max_new_tokens,
            (temperature, top_k, top_p),
            use_cache,
            share_prefill,
            generator,
            stops,
            pad,
            compact,
            lean and use_cache and decode_step.supports(model),
        )
    finally:
        model.train(was_training)
    lengths = response_mask.sum(-1).tolist()
    responses = tokenizer.batch_decode(
        [ids[:n] for ids, n in zip(tokens.tolist(), lengths)], skip_special_tokens=True
    )
    return Rollout(
        prompt_ids=prompt_ids.repeat_interleave(num_samples, 0),
        prompt_mask=prompt_mask.repeat_interleave(num_samples, 0),
        response_ids=tokens.clone(),  # clone: leave inference mode, usable under autograd
        response_mask=response_mask.clone(),
        logprobs=logprobs.clone(),
        responses=responses,
        prompt_index=torch.arange(len(enc), device=device).repeat_interleave(num_samples),
        ended=ended.clone(),
        truncated_prompts=truncated,
    )


def _warn_stateful_cache(model) -> None:
    """Say once per model class that its cache keeps more than keys and values, so sampling
    recomputes the whole prefix each step. Such caches (hybrid and state-space models: LFM2,
    Qwen3-Next, Jamba, Mamba, ...) cannot have their rows repeated (one prefill per prompt) or
    dropped (finished rows), and a cached single-token step does not reproduce the teacher-forced
    log-probs for every one of them (Mamba's differ by ~0.4 nats in transformers 5.25), which the KL
    and the policy gradient rely on (docs/method.md §6); the uncached step does."""
    name = type(model).__name__  # (RWKV and RecurrentGemma return their state in fields of their own)
    if name in _WARNED_STATEFUL:
        return
    _WARNED_STATEFUL.add(name)
    log.warning("%s keeps convolution or recurrent state (in its cache or in an output field of its own): "
                "sampling recomputes the whole prefix at every new token (correct, slower); infalign's cached "
                "sampler handles key/value caches only", name)


def _select_cache(past, index: torch.Tensor):
    """The KV cache restricted to the rows ``index`` (``Cache.batch_select_indices``, or each tensor of
    a legacy tuple cache; None stays None)."""
    if past is None:
        return None
    if hasattr(past, "batch_select_indices"):
        past.batch_select_indices(index)
        return past
    return tuple(tuple(t.index_select(0, index) for t in layer) for layer in past)


def _repeat_cache(past, repeats: int):
    """The KV cache of ``B`` rows as that of ``B * repeats`` prompt-major rows (each row ``repeats``
    times in a row): ``Cache.batch_repeat_interleave``, or each tensor of a legacy tuple cache (a
    model that returns no cache -- e.g. a bigram table -- keeps None)."""
    if repeats == 1 or past is None:
        return past
    if hasattr(past, "batch_repeat_interleave"):
        past.batch_repeat_interleave(repeats)
        return past
    return tuple(tuple(t.repeat_interleave(repeats, 0) for t in layer) for layer in past)


@torch.inference_mode()
def _decode(
    model,
    prompt_ids,
    prompt_mask,
    num_samples,
    max_new_tokens,
    sampling,
    use_cache,
    share_prefill,
    generator,
    stops,
    pad,
    compact=True,
    lean=False,
):
    """The decoding loop over ``[P, W]`` prompts, ``num_samples`` rows each: returns
    ``tokens, logprobs, response_mask`` ``[P*n, Lr]`` and ``ended`` ``[P*n]``. ``lean``: the cached
    single-token steps run :func:`decode_step.gpt2_step` on a :class:`decode_step.StaticKV`."""
    temperature, top_k, top_p = sampling
    distinct, width = prompt_ids.shape
    rows = distinct * num_samples
    device = prompt_ids.device
    unique_ids, unique_mask = prompt_ids, prompt_mask
    prompt_ids = prompt_ids.repeat_interleave(num_samples, 0)
    prompt_mask = prompt_mask.repeat_interleave(num_samples, 0)
    # Preallocate the whole sequence's attention mask and positions, the tokens, their log-probs.
    mask = torch.cat([prompt_mask, prompt_mask.new_ones(rows, max_new_tokens)], dim=1)
    pos = position_ids(mask)
    tokens = torch.full((rows, max_new_tokens), pad, dtype=torch.long, device=device)
    logprobs = torch.zeros((rows, max_new_tokens), dtype=torch.float32, device=device)
    response_mask = torch.zeros((rows, max_new_tokens), dtype=torch.long, device=device)
    alive = torch.ones(rows, dtype=torch.bool, device=device)
    keep_kw = _keep_last(model, 1)
    cache_arg = _cache_arg(model)
    stop_ids = torch.tensor(stops, dtype=torch.long, device=device)

    # With the cache, rows that have emitted a stop token leave the batch (their KV cache rows are
    # dropped) once a quarter of the computed rows have: ``active`` holds the rows still computed
    # (None: all). Their logits are put back into a [rows, V] tensor before the draw, so the
    # generator's stream -- and each live row's token -- is that of the uncompacted loop (_pick).
    past, steps, active = None, 0, None
    for t in range(max_new_tokens):
        # Next-token logits: prefill (once per prompt), one cached single-token step, or a full
        # recompute.
        end = width + t
        if use_cache and t > 0:
            rows_in = slice(None) if active is None else active
            new, new_pos = tokens[rows_in, t - 1 : t], pos[rows_in, end - 1 : end]
            if lean:
                logits = decode_step.gpt2_step(model, new, new_pos, mask[rows_in, :end], past).float()
            else:
                out = _forward(model, new, mask[rows_in, :end], new_pos, past, True, keep_kw, cache_arg)
        elif use_cache and share_prefill:
            out = _forward(model, unique_ids, unique_mask, position_ids(unique_mask), None, True, keep_kw, cache_arg)
        else:
            ids = torch.cat([prompt_ids, tokens[:, :t]], dim=1)
            out = _forward(model, ids, mask[:, :end], pos[:, :end], None, use_cache, keep_kw, cache_arg)
        if not (lean and t > 0):
            logits = out.logits[:, -1, :].float()
            past = getattr(out, cache_arg, _NO_CACHE_FIELD) if use_cache else None
            if t == 0 and (past is _NO_CACHE_FIELD or (past is not None and not _gatherable(past))):
                # state kept elsewhere (RWKV, RecurrentGemma) or beside keys and values: recompute
                # the prefix from here on (_warn_stateful_cache)
                use_cache, past, lean = False, None, False
                _warn_stateful_cache(model)
            if lean:  # after the prefill: HF's cache -> preallocated buffers for the whole response,
                # each prompt's row repeated for its samples when the prefill was shared
                shared = logits.shape[0] != rows
                past = decode_step.StaticKV.from_cache(past, width + max_new_tokens, num_samples if shared else 1)
                out = None  # drop HF's prefill cache: the buffers hold it now
        if active is not None:  # finished rows: a placeholder distribution, their draw is discarded
            full = logits.new_zeros(rows, logits.shape[-1])
            full[active] = logits
            logits = full
        elif logits.shape[0] != rows:  # the shared prefill: one row per prompt
            logits = logits.repeat_interleave(num_samples, 0)
            if not lean:  # (the lean buffers were filled repeated)
                past = _repeat_cache(past, num_samples)

        # Draw; record the T=1 log-prob. Rows that already emitted eos get pad and mask 0.
        tok = torch.where(alive, _pick(logits, temperature, top_k, top_p, generator), pad)
        logp = torch.log_softmax(logits, dim=-1).gather(-1, tok[:, None]).squeeze(-1)
        tokens[:, t] = tok
        logprobs[:, t] = torch.where(alive, logp, 0.0)
        response_mask[:, t] = alive
        steps = t + 1
        if stops:
            alive &= ~torch.isin(tok, stop_ids)
            if not alive.any():
                break
            computed = alive if active is None else alive[active]
            if compact and use_cache and past is not None and int(computed.sum()) <= 0.75 * computed.numel():
                past = _select_cache(past, computed.nonzero().squeeze(-1))
                active = alive.nonzero().squeeze(-1)
    return tokens[:, :steps], logprobs[:, :steps], response_mask[:, :steps], ~alive


ROWS_PER_BUCKET = 32  # sequence_logprobs: at least this many rows per length bucket


def length_buckets(lengths: torch.Tensor, rows_per_bucket: int = ROWS_PER_BUCKET,
                   max_buckets: int = 4, max_rows: int | None = None) -> list[torch.Tensor]:
    """Row indices grouped by length: the rows sorted by ``lengths`` (stable) and cut into
    ``min(max_buckets, rows // rows_per_bucket)`` (at least 1) near-equal consecutive groups -- or
    more, when ``max_rows`` caps a group's size (a scorer's batch size)."""
    rows = lengths.numel()
    k = max(1, min(max_buckets, rows // rows_per_bucket), -(-rows // max_rows) if max_rows else 1)
    order = torch.argsort(lengths, stable=True)
    return list(order.chunk(k)) if k > 1 else [order]


def sequence_logprobs(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    bucket: bool = True,
    share_prompts: bool = True,
) -> torch.Tensor:
    """Teacher-forced ``log pi(y_t | x, y_<t)`` of each response token ``[B, Lr]`` (0 where masked).

    A forward pass over ``[prompt | response]`` with position ids ``cumsum(mask) - 1``; the logits
    at positions ``Lp-1 .. Lp+Lr-2`` score the response tokens. Gradients flow if the caller has
    them enabled (policy) and not under ``torch.no_grad()`` (reference). The model's train/eval
    mode is left to the caller (dropout changes the log-probs).

    ``share_prompts``: when rows repeat prompts (an RL group: G samples of each prompt; an
    evaluation pool), each distinct prompt runs once and its KV cache serves all its rows
    (:func:`shared_prompt_groups`, :func:`_shared_prompt_logprobs`): the prompt's ``Lp`` positions
    are computed -- and, with gradients, back-propagated -- once per prompt instead of once per
    row. Same log-probs to float error (the prompt runs on a batch of another size; ~1e-6 nats).

    ``bucket`` (rows not shared): rows are grouped by length (:func:`length_buckets`, by prompt +
    response tokens) and each group runs as its own forward, cut to its own longest prompt and
    response, so short rows stop paying for the longest one's padding. Padding is masked and
    positions come from the mask, so every row's log-probs are those of the one-pass forward to
    float error.
    """
    if share_prompts:
        groups = shared_prompt_groups(prompt_ids, prompt_mask)
        if groups is not None and not _checkpointing(model):
            shared = _shared_prompt_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask, *groups)
            if shared is not None:
                return shared
    total = prompt_mask.sum(-1) + response_mask.sum(-1)
    groups = length_buckets(total) if bucket else []
    if len(groups) <= 1:
        return _sequence_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask)
    length = response_ids.shape[1]
    parts = []
    for idx in groups:
        cut = _cut_padding(prompt_ids[idx], prompt_mask[idx], response_ids[idx], response_mask[idx])
        lp = _sequence_logprobs(model, *cut)
        parts.append(torch.nn.functional.pad(lp, (0, length - lp.shape[1])))
    order = torch.cat(groups)
    return torch.cat(parts)[torch.argsort(order)]


def _cut_padding(prompt_ids, prompt_mask, response_ids, response_mask) -> tuple[torch.Tensor, ...]:
    """The four tensors cut to the rows' longest prompt (left-padded: its last columns) and longest
    response (right-padded: its first columns, at least one)."""
    p = int(prompt_mask.sum(-1).max())
    r = max(1, int(response_mask.sum(-1).max()))
    width = prompt_ids.shape[1]
    return prompt_ids[:, width - p:], prompt_mask[:, width - p:], response_ids[:, :r], response_mask[:, :r]


def _token_logprobs(logits: torch.Tensor, response_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)[y_t]`` in float32 for the logits that score each response token, 0 where
    the mask is 0."""
    logits = logits.float()
    logp = logits.gather(-1, response_ids[..., None]).squeeze(-1) - logits.logsumexp(-1)
    return torch.where(response_mask.bool(), logp, 0.0)


def _checkpointing(model: torch.nn.Module) -> bool:
    """Whether HF activation checkpointing is on (it turns the KV cache off, so nothing to share)."""
    name = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") \
        else "is_gradient_checkpointing"
    return bool(getattr(model, name, False))


def shared_prompt_groups(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                         max_share: float = MAX_SHARED_DISTINCT) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(first, inverse)`` when the rows hold at most ``max_share`` x rows distinct prompts (ids and
    mask equal): ``first[u]`` is the first row of distinct prompt ``u`` (in order of first
    appearance), ``inverse[row]`` its prompt's ``u``; None when sharing would save less."""
    rows = prompt_ids.shape[0]
    if rows < 2:
        return None
    _, inverse = torch.unique(torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], dim=1), dim=0,
                              return_inverse=True)
    distinct = int(inverse.max()) + 1
    if distinct > max_share * rows:
        return None
    arange = torch.arange(rows, device=prompt_ids.device)
    first = torch.full((distinct,), rows, dtype=torch.long, device=prompt_ids.device)
    first = first.scatter_reduce(0, inverse, arange, "amin")
    order = torch.argsort(first)  # distinct prompts in order of first appearance
    rank = torch.empty_like(order)
    rank[order] = torch.arange(distinct, device=prompt_ids.device)
    return first[order], rank[inverse]


def _shared_prompt_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask, first, inverse):
    """:func:`sequence_logprobs` with each distinct prompt run once: a forward over the distinct
    prompts ``prompt_ids[first]`` (cut to the longest) keeps their KV cache and the last position's
    logits (which score response token 0); the cache is gathered to the rows (``inverse``,
    differentiable) and a second forward over ``response[:, :-1]`` with it, the attention mask over
    ``[prompt | response]`` and the same position ids, scores tokens 1 .. Lr-1. None if the model
    returns no KV cache, or one whose rows cannot be gathered as keys and values alone
    (:func:`_gatherable`); the caller then runs the unshared forward."""
    length = response_ids.shape[1]
    prompt_ids, prompt_mask, response_ids, response_mask = _cut_padding(prompt_ids, prompt_mask, response_ids,
                                                                        response_mask)
    p, r = prompt_ids.shape[1], response_ids.shape[1]
    if p == 0:  # every prompt is padding: nothing to share
        return None
    cache_arg = _cache_arg(model)
    unique_mask = prompt_mask[first]
    out = _forward(model, prompt_ids[first], unique_mask, position_ids(unique_mask), None, True,
                   _keep_last(model, 1), cache_arg)
    past = getattr(out, cache_arg, None)
    if not _gatherable(past):
        return None
    logits = out.logits[:, -1:, :][inverse]
    if r > 1:
        past = _select_cache(past, inverse)
        mask = torch.cat([prompt_mask, response_mask], dim=1)[:, :-1]
        pos = position_ids(mask)[:, p:]
        rest = _forward(model, response_ids[:, :-1], mask, pos, past, True, _keep_last(model, r - 1), cache_arg)
        logits = torch.cat([logits, rest.logits[:, -(r - 1):, :]], dim=1)
    return torch.nn.functional.pad(_token_logprobs(logits, response_ids, response_mask), (0, length - r))


def _gatherable(past) -> bool:
    """Whether ``past`` is a KV cache of keys and values only, whose rows :func:`_select_cache`
    gathers: a legacy tuple of ``(key, value)`` per layer, or a plain ``DynamicCache`` whose layers
    are exactly ``DynamicLayer`` / ``DynamicSlidingWindowLayer``. Hybrid and state-space models
    (LFM2, Qwen3-Next, Jamba, Mamba, Falcon-H1, ...) keep convolution or recurrent states beside (or
    instead of) keys and values, in layers or cache classes of their own that cannot -- or do not
    fully -- gather rows; their prompts are not shared."""
    if past is None:
        return False
    if isinstance(past, tuple):
        return all(isinstance(layer, tuple) and len(layer) == 2 for layer in past)
    try:
        from transformers.cache_utils import DynamicCache
    except ImportError:  # pragma: no cover - every supported transformers has it
        return False
    if type(past) is not DynamicCache:
        return False
    layers = getattr(past, "layers", None)
    if layers is None:  # older transformers: key/value lists only
        return True
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    return all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers)


def _sequence_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
    """:func:`sequence_logprobs` in one forward pass."""
    length = response_ids.shape[1]
    ids = torch.cat([prompt_ids, response_ids], dim=1)
    mask = torch.cat([prompt_mask, response_mask], dim=1)
    keep_kw = _keep_last(model, length + 1)
    logits = _forward(model, ids, mask, position_ids(mask), None, False, keep_kw, _cache_arg(model)).logits
    return _token_logprobs(logits[:, -(length + 1) : -1, :], response_ids, response_mask)


def low_precision(model: torch.nn.Module) -> bool:
    """Whether ``model`` computes in less than float32 here: autocast is on for its device
    (``trainer.precision=bf16-mixed`` / ``16-mixed``) or its weights are half precision."""
    param = next(model.parameters())
    try:
        autocast = torch.is_autocast_enabled(param.device.type)
    except TypeError:  # torch < 2.4: no device argument
        autocast = (torch.is_autocast_cpu_enabled() if param.device.type == "cpu" else torch.is_autocast_enabled())
    return autocast or param.dtype in (torch.bfloat16, torch.float16)


@torch.no_grad()
def rollout_logprobs(model: torch.nn.Module, roll: Rollout) -> torch.Tensor:
    """``log pi(y|x)`` of ``roll``'s responses under ``model`` (the policy that sampled them),
    ``[B, Lr]``, computed the way the reference's are: the sampler's own (KV-cached, one token at a
    time) log-probs in float32, which equal a teacher-forced forward's to float32 rounding; under
    :func:`low_precision` a teacher-forced forward in eval mode (as TRL recomputes them), because
    there the two paths round differently by up to ~0.07 nats per token -- a KL floor at step 0, where
    the policy is the reference, and a PPO ratio != 1 before any update (docs/method.md §6)."""
    if not low_precision(model):
        return roll.logprobs
    was_training = model.training
    model.eval()
    try:
        return sequence_logprobs(model, roll.prompt_ids, roll.prompt_mask, roll.response_ids, roll.response_mask)
    finally:
        model.train(was_training)
