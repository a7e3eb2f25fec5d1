"""Stage 0: the models and prompts a run works with (the embedded toy world, or models by path).

Everything downstream sees one :class:`World`: a trainable policy, the frozen reference, the
tokenizer, the reward scorer (``r``, what RL optimises), optionally a gold scorer (toy world
only), train/eval prompts, and content fingerprints of the reference and reward model used as
cache keys (never run names).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from infalign.errors import require
from infalign.models.builders import load_causal_lm, load_reward_model, load_tokenizer
from infalign.models.reward import GoldScorer, RewardScorer, Scorer

log = logging.getLogger(__name__)


@dataclass
class World:
    policy: object
    reference: object
    tokenizer: object
    reward: Scorer
    gold: Scorer | None
    train_prompts: list[str]
    eval_prompts: list[str]
    reference_fingerprint: str
    reward_fingerprint: str
    stats: dict


def fingerprint_dir(path: str | Path) -> str:
    """SHA-256 over the files of a ``save_pretrained`` directory (names, sizes and bytes)."""
    h = hashlib.sha256()
    root = Path(path)
    for p in sorted(q for q in root.rglob("*") if q.is_file() and not q.name.startswith(".")):
        h.update(str(p.relative_to(root)).encode())
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _fingerprint(name_or_path: str) -> str:
    return fingerprint_dir(name_or_path) if Path(name_or_path).exists() else f"hub:{name_or_path}"


def load_world(cfg: DictConfig, cache_dir: str | Path, device: str = "cpu") -> World:
    """Build or load the toy world (cached by content) and/or load models by name or path."""
    data = cfg.data
    require(data.source in ("toy",), "data.source", data.source, "one of ['toy']",
            "real HH / TL;DR loaders are tracked in the real-data issue")
    require(int(data.train_prompts) >= 1, "data.train_prompts", data.train_prompts, ">= 1")
    require(int(data.eval_prompts) >= 1, "data.eval_prompts", data.eval_prompts, ">= 1")
    from infalign.toy import build_toy_world

    artifacts = build_toy_world(OmegaConf.to_container(data.toy, resolve=True), cache_dir)
    world = artifacts.world
    stats = {"toy_key": artifacts.key, "toy_built": artifacts.built, **artifacts.stats}

    policy_path = cfg.policy.name_or_path or str(artifacts.reference_dir)
    reward_path = cfg.reward.name_or_path or str(artifacts.reward_dir)
    dtype = cfg.policy.get("dtype", "float32")
    tokenizer = load_tokenizer(policy_path, padding_side="left", key="policy.name_or_path")
    policy = load_causal_lm(policy_path, dtype=dtype, device=device, key="policy.name_or_path")
    reference = load_causal_lm(policy_path, dtype=dtype, device=device, key="policy.name_or_path")
    reward_tok = load_tokenizer(reward_path, padding_side="right", key="reward.name_or_path")
    reward_model = load_reward_model(reward_path, device=device, tokenizer=reward_tok, key="reward.name_or_path")
    reward = RewardScorer(reward_model, reward_tok, batch_size=int(cfg.reward.batch_size))
    return World(
        policy=policy,
        reference=reference,
        tokenizer=tokenizer,
        reward=reward,
        gold=GoldScorer(world),
        train_prompts=world.prompts("train", int(data.train_prompts)),
        eval_prompts=world.prompts("test", int(data.eval_prompts)),
        reference_fingerprint=_fingerprint(policy_path),
        reward_fingerprint=_fingerprint(reward_path),
        stats=stats,
    )
