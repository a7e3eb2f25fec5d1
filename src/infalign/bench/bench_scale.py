"""Section ``scale``: computed (not measured) RL-step times for hub models on GPUs we do not have.

The ``experiment=hh_harmless_won`` step (P=32 prompts x G=4 samples, prompts padded to 256 tokens,
128 new tokens, a deberta-v3-large reward model) for Qwen2.5-0.5B/1.5B on one H100/H200, from
:func:`~infalign.bench.flops.estimate_step`: compute-bound phases at an assumed MFU, decoding bound by
weight reads plus a per-token-step launch overhead. Every assumption is a field of the result.
"""

from __future__ import annotations

from infalign.bench.flops import ESTIMATE_GPUS, ESTIMATE_MODELS, ESTIMATE_REWARD, estimate_step

SHAPE = {"rows": 128, "prompts": 32, "prompt_len": 256, "response_len": 128}  # conf/experiment/hh_harmless_won.yaml
ASSUMED = {"mfu": 0.4, "step_overhead_s": 0.015, "bytes_per_weight": 2}
STEPS = 500  # algo.steps of hh_harmless_won


def run(repeats: int, quick: bool = False, seed: int = 0) -> dict:
    rows = []
    for model, cost in ESTIMATE_MODELS.items():
        for gpu, (peak, bandwidth) in ESTIMATE_GPUS.items():
            est = estimate_step(cost, ESTIMATE_REWARD[1], **SHAPE, peak=peak, bandwidth=bandwidth, **ASSUMED)
            rows.append({"model": model, "gpu": gpu, "params": cost.body + cost.head, "phases_s": est,
                         "train_minutes": STEPS * est["step"] / 60})
    return {"shape": SHAPE, "assumed": ASSUMED, "steps": STEPS, "reward_model": ESTIMATE_REWARD[0], "rows": rows,
            "gpus": {g: {"peak_flops": p, "bandwidth": b} for g, (p, b) in ESTIMATE_GPUS.items()}}
