"""Model FLOPs of the RL step's forward passes, and the machine's measured matmul peak (for MFU).

Counting convention (Chowdhery et al. 2022, "PaLM", App. B, the one MFU figures use; Kaplan et al.
2020 §2.1 count half the attention term): a forward
pass costs 2 FLOPs per weight of every matrix multiply per token that goes through it, plus the
attention scores and their weighted sum, ``2 * d_model`` FLOPs each per (query, key) pair per layer:

    F_fwd = 2 * W_body * T_body + 2 * W_head * T_head + 4 * n_layer * d_model * A        (F.1)

``W_body``: weights of the attention and MLP projections; ``W_head``: the output projection
(``vocab x d`` for an LM, ``labels x d`` for a reward model); ``T_body``: tokens through the body,
``T_head``: positions whose head output is computed (``logits_to_keep``); ``A``: (query, key) pairs
the attention kernel computes -- padding included, because it is computed. Embedding look-ups,
layer norms, activations and softmaxes are not counted. A backward pass costs twice its forward
(``F_bwd = 2 F_fwd``). These are the FLOPs the *model* needs, whichever implementation runs it, so
MFU = F / (time * peak) compares implementations and stages on one scale.

``peak`` is measured, not taken from a data sheet: the best FLOP/s of a large float32 ``torch.mm``
with the process's threads (:func:`matmul_peak`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

HEAD_NAMES = ("lm_head", "score")  # output projections of HF causal LMs / sequence classifiers


@dataclass(frozen=True)
class ModelCost:
    """The sizes (F.1) needs for one model."""

    body: int  # W_body
    head: int  # W_head
    n_layer: int
    d_model: int

    def forward(self, body_tokens: float, head_tokens: float, attn_pairs: float) -> float:
        """(F.1): FLOPs of a forward pass."""
        return 2.0 * self.body * body_tokens + 2.0 * self.head * head_tokens + \
            4.0 * self.n_layer * self.d_model * attn_pairs


def model_cost(model) -> ModelCost:
    """:class:`ModelCost` of an HF transformer: the weights of its ``nn.Linear`` / GPT-2 ``Conv1D``
    layers, the output projection (:data:`HEAD_NAMES`) counted as head, everything else as body."""
    import torch

    body = head = 0
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        is_matmul = isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"
        if not is_matmul or weight is None:
            continue
        if name.split(".")[-1] in HEAD_NAMES:
            head += weight.numel()
        else:
            body += weight.numel()
    cfg = model.config
    n_layer = getattr(cfg, "n_layer", None) or cfg.num_hidden_layers
    d_model = getattr(cfg, "n_embd", None) or cfg.hidden_size
    return ModelCost(body, head, int(n_layer), int(d_model))


def sampling_flops(cost: ModelCost, rows: int, prompt_len: int, new_tokens: int, prefill_rows: int | None = None,
                   lengths: Sequence[int] | None = None) -> float:
    """FLOPs of sampling ``new_tokens`` tokens per row with a KV cache (``models/generation.py``): a
    prefill of ``prefill_rows`` (default ``rows``) left-padded prompts of width ``prompt_len`` (one head
    position each), then single-token steps ``t = 1 .. new_tokens - 1``, step ``t`` attending to
    ``prompt_len + t`` keys, over the rows that need it: with ``lengths`` (each row's response tokens,
    the stop token included) those with ``length > t`` -- the work the model needs, whether or not an
    implementation keeps computing finished rows -- else all ``rows``."""
    prefill_rows = rows if prefill_rows is None else prefill_rows
    flops = cost.forward(prefill_rows * prompt_len, prefill_rows, prefill_rows * prompt_len ** 2)
    for t in range(1, new_tokens):
        live = rows if lengths is None else sum(1 for n in lengths if n > t)
        flops += cost.forward(live, live, live * (prompt_len + t))
    return flops


def teacher_forced_flops(cost: ModelCost, rows: int, prompt_len: int, response_len: int,
                         prefill_rows: int | None = None) -> float:
    """FLOPs of ``sequence_logprobs``: one forward over ``[prompt | response]`` (width
    ``prompt_len + response_len``) keeping the head on the last ``response_len + 1`` positions; with
    ``prefill_rows`` (the distinct prompts, each run once: its shared-prompt forward, taken when at
    most ``MAX_SHARED_DISTINCT`` (half) of the rows are distinct, as
    ``models/generation.shared_prompt_groups`` decides) a forward over the prompts (head on the last
    position) and one over each row's first ``response_len - 1`` response tokens, attending to
    ``prompt_len + response_len - 1`` keys."""
    from infalign.models.generation import MAX_SHARED_DISTINCT

    if prefill_rows is None or prefill_rows > MAX_SHARED_DISTINCT * rows:
        width = prompt_len + response_len
        return cost.forward(rows * width, rows * (response_len + 1), rows * width ** 2)
    rest = max(response_len - 1, 0)
    return cost.forward(prefill_rows * prompt_len, prefill_rows, prefill_rows * prompt_len ** 2) + \
        cost.forward(rows * rest, rows * rest, rows * rest * (prompt_len + rest))


def scoring_flops(cost: ModelCost, rows: int, width: int) -> float:
    """FLOPs of a sequence-classification forward over ``rows`` inputs padded to ``width`` (the head
    runs on every position in HF's classifiers; its weight is ``labels x d``, tiny)."""
    return cost.forward(rows * width, rows * width, rows * width ** 2)


def matmul_peak(n: int = 1024, repeats: int = 5) -> float:
    """Best FLOP/s of ``torch.mm`` on two float32 ``n x n`` matrices (``2 n^3`` FLOPs) with the
    current thread count, after one warm-up call."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best


# ----------------------------------------------------------------------------------------------
# Estimates for models and GPUs we cannot run here (the README's scale note)
# ----------------------------------------------------------------------------------------------


def decoder_cost(n_layer: int, d_model: int, d_ff: int, vocab: int, kv_dim: int | None = None,
                 gated: bool = True) -> ModelCost:
    """:class:`ModelCost` of a Llama/Qwen-style decoder from its config: per layer q and o projections
    ``d^2`` each, k and v ``d x kv_dim`` each (grouped-query attention), an MLP of ``3 d d_ff`` weights
    (gated) or ``2 d d_ff``; the head ``vocab x d``."""
    kv_dim = d_model if kv_dim is None else kv_dim
    per_layer = 2 * d_model ** 2 + 2 * d_model * kv_dim + (3 if gated else 2) * d_model * d_ff
    return ModelCost(n_layer * per_layer, vocab * d_model, n_layer, d_model)


# Public configs (config.json of each hub model): layers, hidden, MLP, vocabulary, k/v width.
ESTIMATE_MODELS = {
    "Qwen2.5-0.5B-Instruct": decoder_cost(24, 896, 4864, 151936, kv_dim=128),
    "Qwen2.5-1.5B-Instruct": decoder_cost(28, 1536, 8960, 151936, kv_dim=256),
}
ESTIMATE_REWARD = ("deberta-v3-large reward model", decoder_cost(24, 1024, 4096, 2, gated=False))
# Dense bf16 tensor-core peak (FLOP/s) and HBM bandwidth (B/s), from the vendor's data sheets.
ESTIMATE_GPUS = {"H100 SXM": (989e12, 3.35e12), "H200 SXM": (989e12, 4.8e12)}


def estimate_step(policy: ModelCost, reward: ModelCost, rows: int, prompts: int, prompt_len: int,
                  response_len: int, peak: float, bandwidth: float, mfu: float = 0.4,
                  step_overhead_s: float = 0.015, bytes_per_weight: int = 2) -> dict[str, float]:
    """Seconds of one RL step on a GPU, from FLOPs where compute-bound and from bandwidth where not.

    Teacher-forced phases (reward, reference, policy forward + backward) are compute-bound:
    ``F / (mfu * peak)``. Decoding is bound by reading every weight once per token step:
    ``max(F_step / (mfu * peak), W * bytes / bandwidth) + step_overhead_s`` per step, where
    ``step_overhead_s`` is the per-step kernel-launch / Python cost of eager decoding (about
    10-20 ms for a 24-28 layer model in eager PyTorch; CUDA graphs or vLLM remove most of it).
    The prefill runs once per prompt (shared across its samples), as in the teacher-forced reference
    and policy forwards (``models/generation.sequence_logprobs``). Under low precision
    (``bytes_per_weight < 4``: bf16 autocast, as ``trainer=gpu``) the policy's log-probs for the KL and
    the update come from one more teacher-forced no-grad forward (``old_logprobs``,
    ``models/generation.rollout_logprobs``): the sampler's KV-cached ones round differently there."""
    weights = (policy.body + policy.head) * bytes_per_weight
    prefill = policy.forward(prompts * prompt_len, prompts, prompts * prompt_len ** 2) / (mfu * peak)
    decode = 0.0
    for t in range(1, response_len):
        flops = policy.forward(rows, rows, rows * (prompt_len + t))
        decode += max(flops / (mfu * peak), weights / bandwidth) + step_overhead_s
    forward = teacher_forced_flops(policy, rows, prompt_len, response_len, prefill_rows=prompts)
    out = {"generation": prefill + decode,
           "reward": scoring_flops(reward, rows, prompt_len + response_len) / (mfu * peak),
           "reference": forward / (mfu * peak), "policy_forward+backward": 3 * forward / (mfu * peak)}
    if bytes_per_weight < 4:
        out["old_logprobs"] = forward / (mfu * peak)
    out["step"] = sum(out.values())
    return out
