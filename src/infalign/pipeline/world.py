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

from infalign.cache import sha256_file
from infalign.errors import require
from infalign.models.builders import (
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    resolve_name_or_path,
)
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
        h.update(sha256_file(p).encode())
    return h.hexdigest()[:16]


def _fingerprint(name_or_path: str) -> str:
    return fingerprint_dir(name_or_path) if Path(name_or_path).exists() else f"hub:{name_or_path}"


DATA_SOURCES = ("toy", "hh", "tldr")


def load_world(cfg: DictConfig, cache_dir: str | Path, device: str = "cpu") -> World:
    """The toy world (built and cached by content), or real preference data with models by name/path."""
    data = cfg.data
    require(data.source in DATA_SOURCES, "data.source", data.source, f"one of {list(DATA_SOURCES)}")
    require(int(data.train_prompts) >= 1, "data.train_prompts", data.train_prompts, ">= 1")
    require(int(data.eval_prompts) >= 1, "data.eval_prompts", data.eval_prompts, ">= 1")
    if data.source == "toy":
        from infalign.toy import build_toy_world

        artifacts = build_toy_world(OmegaConf.to_container(data.toy, resolve=True), cache_dir)
        world = artifacts.world
        stats = {"toy_key": artifacts.key, "toy_built": artifacts.built, **artifacts.stats}
        policy_path = cfg.policy.name_or_path or str(artifacts.reference_dir)
        reward_path = cfg.reward.name_or_path or str(artifacts.reward_dir)
        train_prompts = world.prompts("train", int(data.train_prompts))
        eval_prompts = world.prompts("test", int(data.eval_prompts))
        gold = GoldScorer(world)
        dm = None
    else:
        for key in ("policy", "reward"):
            require(cfg[key].name_or_path is not None, f"{key}.name_or_path", None,
                    "a hub name or local path (only the toy world provides its own models)")
        policy_path = resolve_name_or_path(cfg.policy.name_or_path, "policy.name_or_path")  # fail before data
        reward_path = resolve_name_or_path(cfg.reward.name_or_path, "reward.name_or_path")
        dm = preference_data(data, policy_path)
        train_prompts = dm.prompts("train", int(data.train_prompts))
        eval_prompts = dm.prompts("test", int(data.eval_prompts))
        stats = {"data_reports": {k: r.to_dict() for k, r in dm.reports.items()}}
        gold = None
    if cfg.reward.get("train") and cfg.reward.train.enabled:
        require(dm is not None, "reward.train.enabled", True, "false for the toy world (its reward model is built)")
        reward_path, stats["reward_trained"] = train_reward_model(cfg.reward, data, reward_path, cache_dir)

    dtype = cfg.policy.get("dtype", "float32")
    tokenizer = load_tokenizer(policy_path, padding_side="left", key="policy.name_or_path")
    policy = load_causal_lm(policy_path, dtype=dtype, device=device, key="policy.name_or_path")
    reference = load_causal_lm(policy_path, dtype=dtype, device=device, key="policy.name_or_path")
    reward_tok = load_tokenizer(reward_path, padding_side="right", key="reward.name_or_path")
    reward_model = load_reward_model(reward_path, dtype=cfg.reward.get("dtype", dtype), device=device,
                                     tokenizer=reward_tok, key="reward.name_or_path")
    reward = RewardScorer(reward_model, reward_tok, batch_size=int(cfg.reward.batch_size),
                          max_length=cfg.reward.get("max_length"))
    if cfg.policy.get("chat_template"):
        train_prompts, eval_prompts = (apply_chat_template(tokenizer, p) for p in (train_prompts, eval_prompts))
    return World(
        policy=policy,
        reference=reference,
        tokenizer=tokenizer,
        reward=reward,
        gold=gold,
        train_prompts=train_prompts,
        eval_prompts=eval_prompts,
        reference_fingerprint=_fingerprint(policy_path),
        reward_fingerprint=_fingerprint(reward_path),
        stats=stats,
    )


def preference_data(data: DictConfig, tokenizer_path: str):
    """The HH / TL;DR :class:`~infalign.data.PreferenceDataModule` (set up) for ``data``."""
    from infalign.data import PreferenceDataModule

    dm = PreferenceDataModule(
        dataset=data.source, name_or_path=data.get("name_or_path"), data_dir=data.get("data_dir"),
        train_file=data.get("train_file"), test_file=data.get("test_file"), tokenizer_name_or_path=tokenizer_path,
        max_prompt_tokens=data.get("max_prompt_tokens"), max_response_tokens=data.get("max_response_tokens"),
        batch_size=int(data.get("batch_size", 16)), max_examples=data.get("max_examples"),
        seed=int(data.get("seed", 0)), val_fraction=float(data.get("val_fraction", 0.05)),
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


def train_reward_model(reward: DictConfig, data: DictConfig, init_path: str, cache_dir: str | Path) -> tuple[str, bool]:
    """Bradley-Terry training of ``init_path`` on the data's preference pairs; cached by content.

    Returns (path of the trained ``save_pretrained`` dir, whether it was trained now).
    """
    import lightning as L

    from infalign.cache import atomic_dir, cached, content_key
    from infalign.modules.reward_model import RewardModelModule

    hp = OmegaConf.to_container(reward.train, resolve=True)
    dm = preference_data(data, init_path)
    pairs = [tuple(p) for p in dm.pairs("train")]
    key = content_key("reward-bt-v1", _fingerprint(init_path), pairs, hp)
    path = Path(cache_dir) / f"reward-{key}"

    def build() -> Path:
        tok = load_tokenizer(init_path, padding_side="right", key="reward.name_or_path")
        model = load_reward_model(init_path, tokenizer=tok, key="reward.name_or_path")
        module = RewardModelModule(model, lr=float(hp["lr"]), warmup=int(hp.get("warmup", 0)))
        trainer = L.Trainer(max_steps=int(hp["steps"]), logger=False, enable_checkpointing=False,
                            accelerator=hp.get("accelerator", "auto"), devices=1, enable_model_summary=False)
        trainer.fit(module, datamodule=dm)
        return model, tok

    def save(value, p: Path) -> None:
        with atomic_dir(p) as tmp:
            value[0].save_pretrained(tmp)
            value[1].save_pretrained(tmp)

    def load(p: Path) -> Path:
        if not (p / "config.json").exists():
            from infalign.cache import CorruptCacheError

            raise CorruptCacheError(f"{p}: no config.json")
        return p

    _, hit = cached(path, build, save, load)
    return str(path), not hit


def apply_chat_template(tokenizer, prompts: list[str]) -> list[str]:
    """Render HH-style dialogues (or plain prompts, as one user turn) with the tokenizer's template."""
    from infalign.data.formats import split_turns

    return [tokenizer.apply_chat_template(split_turns(p), tokenize=False, add_generation_prompt=True) for p in prompts]
