"""Section ``build``: building the toy world from scratch, stage by stage, and the world's quality.

Builds the default toy world (``toy/build.py``: reference pre-training, pair sampling, reward-model
training) ``repeats`` times into fresh temporary caches -- never the user's cache -- and reports the
stage seconds (best and median over builds) with the quality figures a faster build must keep:
the reference LM's validation loss, the reward model's held-out accuracy against its Bradley-Terry
labels and against the gold ordering, and the Bayes ceiling of the former. The builds are
deterministic (seeded), so the quality figures agree across repeats; a change in them means a
change in what is built. ``--quick`` builds a tiny world (throughput only, no target).
"""

from __future__ import annotations

import statistics
import tempfile

STAGES = ("reference_seconds", "sampling_seconds", "reward_seconds", "build_seconds")
QUALITY = ("reference_val_loss", "reward_val_accuracy", "reward_val_gold_accuracy", "reward_val_bt_ceiling")
TARGET_S = 40.0  # the whole default build on 2 cores

QUICK_CONFIG = {"reference": {"size": "tiny", "n_prompts": 200, "val_prompts": 20, "max_steps": 10},
                "reward": {"n_prompts": 100, "val_prompts": 20, "max_steps": 10}}


def run(repeats: int, quick: bool = False, seed: int = 0) -> dict:
    from infalign.toy import build_toy_world

    config = {"seed": seed, **(QUICK_CONFIG if quick else {})}
    builds: list[dict] = []
    for _ in range(max(1, repeats if not quick else 1)):
        with tempfile.TemporaryDirectory(prefix="infalign-bench-build-") as tmp:
            artifacts = build_toy_world(config, tmp)
            builds.append(dict(artifacts.stats))
    stages = {s: {"best_s": min(b[s] for b in builds), "median_s": statistics.median(b[s] for b in builds)}
              for s in STAGES}
    best = stages["build_seconds"]["best_s"]
    return {
        "label": "toy world build (default config)" if not quick else "toy world build (tiny, --quick)",
        "builds": len(builds), "stages": stages,
        "quality": {q: builds[-1].get(q) for q in QUALITY},
        "reference_params": builds[-1].get("reference_params"), "reward_params": builds[-1].get("reward_params"),
        "target_s": None if quick else TARGET_S, "ok": None if quick else best <= TARGET_S,
    }
