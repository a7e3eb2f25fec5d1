"""Section ``build``: building the toy world from scratch, stage by stage, and the world's quality.

Builds the default toy world (``toy/build.py``: reference pre-training, pair sampling, reward-model
training) ``repeats`` times into fresh temporary caches -- never the user's cache -- and reports the
stage seconds (best, median and worst over builds, and each build's) with the quality figures a faster build must keep:
the reference LM's validation loss, the reward model's held-out accuracy against its Bradley-Terry
labels and against the gold ordering, and the Bayes ceiling of the former. The builds are
deterministic (seeded), so the quality figures agree across repeats; a change in them means a
change in what is built. ``--quick`` builds a tiny world (throughput only, no target).

How far from the machine's limit the two training stages run (``training``): their model FLOPs, in
``bench/flops.py``'s convention (F.1) with a backward pass at twice its forward, over the batches
the build counted (``<stage>_train_tokens`` / ``_attn_pairs``, padding included: it is computed),

    F_stage = 3 * F_fwd(T, T, A)        (every position goes through the head in training),

the FLOP/s achieved over the stage's wall time (which also holds generating its data in Python,
building the model, Lightning's set-up, one validation pass and, for the reward model, scoring the
held-out pairs against gold: ~1 s each, so MFU is understated by a few per cent), the MFU
against :func:`~infalign.bench.flops.matmul_peak` on the build's threads, ``floor_s = F_stage /
peak`` (the stage at 100 % of that peak) and the padding share ``1 - real tokens / tokens`` (what
length-bucketed batches could save -- at the price of a different training order, i.e. a
different world).
"""

from __future__ import annotations

import tempfile

from infalign.bench.common import Timing

STAGES = ("reference_seconds", "sampling_seconds", "reward_seconds", "build_seconds")
QUALITY = ("reference_val_loss", "reward_val_accuracy", "reward_val_gold_accuracy", "reward_val_bt_ceiling")
TARGET_S = 40.0  # the whole default build on 2 cores

QUICK_CONFIG = {"reference": {"size": "tiny", "n_prompts": 200, "val_prompts": 20, "max_steps": 10},
                "reward": {"n_prompts": 100, "val_prompts": 20, "max_steps": 10}}


def run(repeats: int, quick: bool = False, seed: int = 0) -> dict:
    from infalign.bench.flops import matmul_peak, model_cost
    from infalign.toy import build_toy_world

    config = {"seed": seed, **(QUICK_CONFIG if quick else {})}
    builds: list[dict] = []
    for _ in range(max(1, repeats if not quick else 1)):
        with tempfile.TemporaryDirectory(prefix="infalign-bench-build-") as tmp:
            artifacts = build_toy_world(config, tmp)
            builds.append(dict(artifacts.stats))
            costs = {"reference": model_cost(artifacts.load_reference()),
                     "reward": model_cost(artifacts.load_reward_scorer().model)}
    peak = matmul_peak()  # on the threads the builds ran on (toy.num_threads unset: the process's)
    stages = {s: Timing([b[s] for b in builds]).as_dict() for s in STAGES}
    best = stages["build_seconds"]["best_s"]
    return {
        "label": "toy world build (default config)" if not quick else "toy world build (tiny, --quick)",
        "builds": len(builds), "stages": stages,
        "quality": {q: builds[-1].get(q) for q in QUALITY},
        "reference_params": builds[-1].get("reference_params"), "reward_params": builds[-1].get("reward_params"),
        "matmul_peak_flops": peak,
        "training": {name: training_cost(builds, name, cost, peak) for name, cost in costs.items()},
        "target_s": None if quick else TARGET_S, "ok": None if quick else best <= TARGET_S,
    }


def training_cost(builds: list[dict], stage: str, cost, peak: float) -> dict:
    """FLOPs, achieved FLOP/s, MFU, floor and padding share of one training stage (module docstring)."""
    stats = builds[-1]  # the builds are deterministic: every build counts the same batches
    tokens, pairs = stats[f"{stage}_train_tokens"], stats[f"{stage}_train_attn_pairs"]
    flops = 3.0 * cost.forward(tokens, tokens, pairs)
    seconds = min(b[f"{stage}_seconds"] for b in builds)
    return {"flops": flops, "best_s": seconds, "flops_per_s": flops / seconds, "mfu": flops / seconds / peak,
            "floor_s": flops / peak, "tokens": tokens,
            "padding_share": 1.0 - stats[f"{stage}_train_real_tokens"] / tokens}
