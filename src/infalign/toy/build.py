"""Build (once) and cache the toy world's tokenizer, reference LM and reward model.

``build_toy_world(cfg, cache_dir)``:

1. tokenizer from :meth:`ToyWorld.tokenizer`;
2. reference LM: a fresh GPT-2 pre-trained with :class:`LMPretrainModule` on the behaviour
   corpus (``reference.n_prompts`` train prompts x ``reference.per_prompt`` responses);
3. reward model: two responses per prompt sampled from *the pre-trained reference LM itself*,
   labelled by Bradley-Terry draws from the labelers' reward (the gold reward plus the labelers'
   length bias, :func:`make_preference_pairs`), and a
   GPT-2 classifier (initialised from the reference LM's transformer, as in RLHF, unless
   ``reward.init=scratch``) trained with :class:`RewardModelModule`; held-out pairs come from
   the val prompts.

The result lives in ``cache_dir/toy-<key>/`` where ``key = content_key(CODE_VERSION, digest of
TOY_CODE, config)`` covers everything that determines it. The directory is written atomically with a
``manifest.json`` holding SHA-256 checksums of every file; a directory whose manifest is missing,
unreadable or does not match its files is treated as corrupt and rebuilt. A lock file makes two
concurrent callers build once (the second waits, then loads).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch

from infalign.errors import ConfigError, require
from infalign.infra.cache import (
    atomic_dir,
    cached,
    content_key,
    modules_digest,
    read_manifest,
    write_manifest,
)
from infalign.infra.threads import resolve_threads
from infalign.models.builders import (
    build_toy_lm,
    build_toy_reward_model,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
)
from infalign.models.generation import sample
from infalign.models.hf_progress import hf_progress
from infalign.models.reward import RewardScorer
from infalign.toy.defaults import DEFAULTS, RUNTIME_DEFAULTS
from infalign.toy.world import PreferencePairs, ToyWorld, make_preference_pairs
from infalign.training.pretrain import LMPretrainModule, make_lm_dataloader
from infalign.training.reward_model import RewardModelModule, make_preference_dataloader

log = logging.getLogger(__name__)

# Bump whenever a change to the world, the models or the training code changes the artefact.
CODE_VERSION = "toy-v3"  # v2: fused tanh-GELU; v3: learnable per-prompt scale, labeler bias
# ... and the key also holds a digest of the code that builds it (docstrings and comments aside,
# infra/cache.py: modules_digest): an edit to any of these rebuilds the world instead of serving the
# old one under the new code (a forgotten CODE_VERSION bump). The build is deterministic, so an
# edit that changes nothing it computes rebuilds the same world, bit for bit -- which runs record as
# the same world (``ToyArtifacts.world_key``, without the digest; reports group runs by it).
TOY_CODE = (
    "infalign.toy.world", "infalign.toy.build", "infalign.toy.defaults", "infalign.models.builders",
    "infalign.models.generation", "infalign.models.decode_step", "infalign.models.reward",
    "infalign.training.pretrain", "infalign.training.reward_model", "infalign.training.step_batches",
    "infalign.data.batches",
)


@dataclass
class ToyArtifacts:
    """Where a built toy world lives, plus the world itself.

    ``reference_dir`` and ``reward_dir`` are ``save_pretrained`` directories (each also holds the
    tokenizer), loadable by path as ``policy.name_or_path`` / ``reward.name_or_path``.
    ``built`` is True when this call built it (cache miss), False on a cache hit.
    """

    world: ToyWorld
    root: Path
    tokenizer_dir: Path
    reference_dir: Path
    reward_dir: Path
    key: str  # the cache directory's: CODE_VERSION, the TOY_CODE digest, the config
    config: dict
    stats: dict = field(default_factory=dict)
    built: bool = False
    world_key: str = ""  # the world's description alone (CODE_VERSION, config): runs record it as toy_key

    def load_tokenizer(self, padding_side: str = "left"):
        return load_tokenizer(self.tokenizer_dir, padding_side, key="toy.tokenizer_dir")

    def load_reference(self, device: str | torch.device = "cpu"):
        return load_causal_lm(self.reference_dir, device=device, key="toy.reference_dir")

    def load_reward_scorer(
        self, device: str | torch.device = "cpu", batch_size: int = 256
    ) -> RewardScorer:
        tok = self.load_tokenizer("right")
        model = load_reward_model(
            self.reward_dir, device=device, tokenizer=tok, key="toy.reward_dir"
        )
        return RewardScorer(model, tok, batch_size=batch_size)


@dataclass
class _Built:
    tokenizer: Any
    reference: Any
    reward: Any
    stats: dict


# ---------------------------------------------------------------------------------- config
def _plain(value: Any) -> Any:
    """DictConfig/ListConfig/tuples -> plain dicts and lists (JSON-able, hash-stable)."""
    if isinstance(value, Mapping) or hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple) or (
        hasattr(value, "__iter__") and not isinstance(value, str | bytes)
    ):
        return [_plain(v) for v in value]
    return value


def _merge(defaults: dict, user: dict, prefix: str) -> dict:
    out = copy.deepcopy(defaults)
    for k, v in user.items():
        if k not in defaults:
            raise ConfigError(f"{prefix}{k}", v, f"one of {sorted(defaults)}")
        if isinstance(defaults[k], dict):
            if not isinstance(v, dict):
                raise ConfigError(f"{prefix}{k}", v, "a mapping")
            out[k] = _merge(defaults[k], v, f"{prefix}{k}.")
        else:
            out[k] = _coerce(defaults[k], v, f"{prefix}{k}")
    return out


def _cast(default: int | float, value: Any) -> int | float:
    """``value`` as ``default``'s type; a whole-number setting refuses a fraction (``seed=1.5`` was
    silently the world of seed 1)."""
    if isinstance(default, int) and not isinstance(value, int):
        number = float(value)
        if not number.is_integer():
            raise ValueError(f"{value!r} is not a whole number")
        return int(number)
    return type(default)(value)


def _coerce(default: Any, value: Any, key: str) -> Any:
    """Cast ``value`` to the type of ``default`` (so ``1`` and ``1.0`` hash alike)."""
    try:
        if isinstance(default, bool) or default is None or value is None:
            return value
        if isinstance(default, int | float):
            return _cast(default, value)
        if isinstance(default, list):
            return [_cast(d, v) for d, v in zip(default, value, strict=True)]
    except (TypeError, ValueError) as exc:
        raise ConfigError(key, value, f"like {default!r}") from exc
    return value


def resolve_toy_config(cfg: Mapping | None = None) -> tuple[dict, dict]:
    """``(config, runtime)``: ``cfg`` merged over :data:`infalign.toy.defaults.DEFAULTS` and validated.

    ``config`` determines the artefact (it is hashed into the cache key); ``runtime`` holds
    :data:`RUNTIME_DEFAULTS` options (progress bar, threads). Unknown keys raise ``ConfigError``
    naming ``toy.<key>``.
    """
    user = _plain(cfg or {})
    runtime = {k: user.pop(k, v) for k, v in RUNTIME_DEFAULTS.items()}
    runtime["num_threads"] = resolve_threads(runtime["num_threads"], "toy.num_threads")
    c = _merge(DEFAULTS, user, "toy.")
    ref, rm = c["reference"], c["reward"]
    for sec, name in ((ref, "reference"), (rm, "reward")):
        for k in ("n_prompts", "val_prompts", "max_steps", "batch_size"):
            require(int(sec[k]) >= 1, f"toy.{name}.{k}", sec[k], ">= 1")
        require(float(sec["lr"]) > 0, f"toy.{name}.lr", sec["lr"], "> 0")
        require(int(sec["warmup"]) >= 0, f"toy.{name}.warmup", sec["warmup"], ">= 0")
    require(int(ref["per_prompt"]) >= 1, "toy.reference.per_prompt", ref["per_prompt"], ">= 1")
    require(
        rm["init"] in ("reference", "scratch"),
        "toy.reward.init",
        rm["init"],
        "'reference' or 'scratch'",
    )
    if rm["size"] is None:
        rm["size"] = ref["size"]
    if rm["init"] == "reference" and rm["size"] != ref["size"]:
        raise ConfigError(
            "toy.reward.size",
            rm["size"],
            f"{ref['size']!r} (= toy.reference.size) when toy.reward.init=reference",
        )
    need = c["world"]["response_len"][1] + 1
    require(
        int(rm["max_new_tokens"]) >= need,
        "toy.reward.max_new_tokens",
        rm["max_new_tokens"],
        f">= {need} (longest behaviour response + eos)",
    )
    return c, runtime


# ---------------------------------------------------------------------------------- build
@contextlib.contextmanager
def _quiet_training(num_threads: int | None):
    """Silence Lightning's banner and data-loader hints; pin torch's thread count to
    ``num_threads`` (resolved from ``toy.num_threads``: auto, null or N) if set."""
    names = ["lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    threads = torch.get_num_threads()
    try:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        if num_threads:
            torch.set_num_threads(num_threads)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*number of training batches.*")
            warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")
            warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)
        torch.set_num_threads(threads)


class _BatchShapes(L.Callback):
    """Counts what the training batches put through the model (``input_ids`` of shape ``B x L``):
    ``tokens`` = sum B*L (padding included: it is computed), ``real_tokens`` = sum of the attention
    mask, ``attn_pairs`` = sum B*L^2 (query-key pairs). The bench turns them into FLOPs and MFU
    (``infalign.bench.bench_build``); they never touch the computation."""

    def __init__(self) -> None:
        self.tokens = self.real_tokens = self.attn_pairs = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        rows, width = batch["input_ids"].shape
        self.tokens += rows * width
        self.real_tokens += int(batch["attention_mask"].sum())
        self.attn_pairs += rows * width * width

    def stats(self, prefix: str) -> dict[str, int]:
        return {f"{prefix}_train_tokens": self.tokens, f"{prefix}_train_real_tokens": self.real_tokens,
                f"{prefix}_train_attn_pairs": self.attn_pairs}


def _trainer(max_steps: int, progress_bar: bool, shapes: _BatchShapes) -> L.Trainer:
    from infalign.training.progress import progress_bar as progress_bar_callback

    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=int(max_steps),
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=bool(progress_bar),
        num_sanity_val_steps=0,
        log_every_n_steps=25,
        # the runs' bar (Lightning's own read "Epoch 1/-2" for a max_steps-bounded fit)
        callbacks=[shapes, *([progress_bar_callback("rich")] if progress_bar else [])],
    )


def sample_pairs(
    model, tokenizer, prompts: list[str], max_new_tokens: int, seed: int, chunk: int = 512
) -> tuple[list[str], list[str]]:
    """Two independent responses per prompt from ``model`` at temperature 1 ``(a, b)``."""
    gen = torch.Generator().manual_seed(seed)
    a, b = [], []
    for i in range(0, len(prompts), chunk):
        roll = sample(model, tokenizer, prompts[i : i + chunk], 2, max_new_tokens, generator=gen)
        a.extend(roll.responses[0::2])
        b.extend(roll.responses[1::2])
    return a, b


def _build(c: dict, world: ToyWorld, runtime: dict) -> _Built:
    t0 = time.perf_counter()
    seed, ref_c, rm_c = int(c["seed"]), c["reference"], c["reward"]
    tokenizer = world.tokenizer()
    stats: dict[str, Any] = {}
    with _quiet_training(runtime["num_threads"]):
        # (b) reference LM: imitate the behaviour distribution.
        L.seed_everything(seed, verbose=False)
        reference = build_toy_lm(tokenizer, ref_c["size"])
        xs, ys = world.reference_corpus(ref_c["n_prompts"], ref_c["per_prompt"], seed=seed)
        vx, vy = world.reference_corpus(ref_c["val_prompts"], 2, seed=seed, split="val")
        module = LMPretrainModule(reference, ref_c["lr"], ref_c["warmup"], ref_c["weight_decay"])
        shapes = _BatchShapes()
        trainer = _trainer(ref_c["max_steps"], runtime["progress_bar"], shapes)
        trainer.fit(module, make_lm_dataloader(tokenizer, xs, ys, ref_c["batch_size"], seed=seed))
        val = trainer.validate(
            module, make_lm_dataloader(tokenizer, vx, vy, 256, shuffle=False), verbose=False
        )
        stats["reference_val_loss"] = float(val[0]["val/loss"])
        stats.update(shapes.stats("reference"))
        stats["reference_seconds"] = time.perf_counter() - t0

        # (c) reward model: BT pairs sampled from the reference LM itself, labelled by the labelers.
        t1 = time.perf_counter()
        reference.eval()
        tx = world.prompts("train", rm_c["n_prompts"])
        vxs = world.prompts("val", rm_c["val_prompts"])
        train_pairs = make_preference_pairs(
            world,
            tx,
            *sample_pairs(reference, tokenizer, tx, rm_c["max_new_tokens"], seed),
            seed=seed,
        )
        val_pairs = make_preference_pairs(
            world,
            vxs,
            *sample_pairs(reference, tokenizer, vxs, rm_c["max_new_tokens"], seed + 1),
            seed=seed + 1,
        )
        stats["sampling_seconds"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        L.seed_everything(seed + 2, verbose=False)
        reward = build_toy_reward_model(tokenizer, rm_c["size"])
        if rm_c["init"] == "reference":
            reward.transformer.load_state_dict(reference.transformer.state_dict())
        rm_module = RewardModelModule(reward, rm_c["lr"], rm_c["warmup"], rm_c["weight_decay"])
        shapes = _BatchShapes()
        trainer = _trainer(rm_c["max_steps"], runtime["progress_bar"], shapes)
        trainer.fit(rm_module, _pair_loader(tokenizer, train_pairs, rm_c["batch_size"], True, seed))
        stats.update(shapes.stats("reward"))
        val = trainer.validate(
            rm_module, _pair_loader(tokenizer, val_pairs, 256, False, seed), verbose=False
        )
        stats["reward_val_loss"] = float(val[0]["val/loss"])
        stats["reward_val_accuracy"] = float(val[0]["val/accuracy"])
        stats.update(_gold_agreement(reward, tokenizer, val_pairs))
        stats["reward_seconds"] = time.perf_counter() - t2
    reference.eval()
    reward.eval()
    stats["build_seconds"] = time.perf_counter() - t0
    stats["reference_params"] = sum(p.numel() for p in reference.parameters())
    stats["reward_params"] = sum(p.numel() for p in reward.parameters())
    log.info("toy world built in %.1fs: %s", stats["build_seconds"], stats)
    return _Built(tokenizer, reference, reward, stats)


def _pair_loader(tokenizer, pairs: PreferencePairs, batch_size: int, shuffle: bool, seed: int):
    return make_preference_dataloader(
        tokenizer,
        pairs.prompts,
        pairs.chosen,
        pairs.rejected,
        batch_size,
        shuffle=shuffle,
        seed=seed,
    )


def _gold_agreement(reward, tokenizer, pairs: PreferencePairs) -> dict[str, float]:
    """Held-out reward-model accuracy against the *gold* ordering (gold ties dropped), and the
    Bayes ceiling of accuracy against the sampled BT labels, ``mean sigmoid(|label margin|)``."""
    scorer = RewardScorer(reward, tokenizer, batch_size=256)
    margin = scorer.score(pairs.prompts, pairs.chosen) - scorer.score(pairs.prompts, pairs.rejected)
    gold = pairs.gold_margin
    untied = gold != 0
    agree = (torch.sign(margin) == torch.sign(gold))[untied].float()
    return {
        "reward_val_gold_accuracy": float(agree.mean()) if untied.any() else float("nan"),
        "reward_val_bt_ceiling": float(torch.sigmoid(pairs.label_margin.abs()).mean()),
    }


# ---------------------------------------------------------------------------------- cache
_SUBDIRS = ("tokenizer", "reference", "reward")


def _save(built: _Built, path: Path, key: str, c: dict) -> None:
    with atomic_dir(path) as tmp, hf_progress(False):
        built.tokenizer.save_pretrained(tmp / "tokenizer")
        for name, model in (("reference", built.reference), ("reward", built.reward)):
            model.save_pretrained(tmp / name)
            built.tokenizer.save_pretrained(tmp / name)
        write_manifest(tmp, key, code_version=CODE_VERSION, config=c, stats=built.stats)


def _read_manifest(path: Path, key: str, verify: bool = True) -> dict:
    """The manifest of ``path`` (``infra/cache.read_manifest``): ``CorruptCacheError`` unless it exists,
    parses, carries ``key``, lists files under each of the tokenizer, reference and reward dirs and
    (``verify``) every listed file exists with its recorded checksum."""
    return read_manifest(path, key, required=[f"{sub}/" for sub in _SUBDIRS], verify=verify)


def build_toy_world(cfg: Mapping | None, cache_dir: str | Path) -> ToyArtifacts:
    """Build or load the toy world described by ``cfg`` (merged over :data:`DEFAULTS`).

    Cached under ``cache_dir/toy-<content_key(CODE_VERSION, TOY_CODE digest, config)>``; see the module
    docstring.
    """
    c, runtime = resolve_toy_config(cfg)
    world = ToyWorld(seed=c["seed"], **c["world"])
    key = content_key(CODE_VERSION, modules_digest(TOY_CODE, "TOY_CODE"), c)
    root = Path(cache_dir).expanduser() / f"toy-{key}"

    value, hit = cached(
        root,
        build=lambda: _build(c, world, runtime),
        save=lambda built, path: _save(built, path, key, c),
        load=lambda path: _read_manifest(path, key),
    )
    manifest = value if hit else _read_manifest(root, key, verify=False)
    if hit:
        log.info("toy world cache hit: %s", root)
    return ToyArtifacts(
        world=world,
        root=root,
        tokenizer_dir=root / "tokenizer",
        reference_dir=root / "reference",
        reward_dir=root / "reward",
        key=key,
        config=c,
        stats=manifest.get("stats", {}),
        built=not hit,
        # without the code digest: a rebuild after an edit that changes nothing it computes is the same
        # world (same model files, so the same fingerprints), and a report must not split runs across it --
        # nor across content_key's canonical numbers (runs recorded before them keep their world's key)
        world_key=content_key(CODE_VERSION, c, canonical_numbers=False),
    )
