"""Sample pools, cached by content: reference pools always, policy pools when the policy has a key.

A reference pool -- n samples per prompt from pi_ref, scored by each judge -- is what calibration
needs (sorted reward-model scores of K samples per training prompt) and what evaluation compares
against (M samples per held-out prompt). It depends only on the reference model, the judges, the
prompts, n, the generation settings and the seed, so it is stored under a hash of exactly those
and shared by every run and sweep job (atomic write, checksum and key inside the file, rebuilt if
corrupt or stored under another key). Beside the scores it keeps each sample's length and whether it
ended with a stop token (the run record's response statistics).

A policy's evaluation pool (:func:`policy_pool`) depends on the same things plus the policy's
weights, which a policy trained through the policy cache names by its key
(``pipeline/policy_cache.py``: everything that determines the weights, the training code
included); it is then cached the same way, so an experiment that evaluates a policy trained by
an earlier one (another procedure, other N, the same pool settings) draws nothing. A policy
without a key (resumed from a checkpoint, a multi-process run, ``policy_cache=false``) is drawn
fresh. The policy pool also holds each sample's log-ratio sum (KL) and, when asked for, the
response texts (kept as UTF-8 JSON bytes, so the checksum covers them).

Generation settings come from a config group (``calibration`` or ``eval``): ``max_new_tokens``,
``temperature``, ``batch_size``, and optionally ``top_k`` / ``top_p`` (:func:`sampling_settings`;
only ``eval`` has them).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from infalign.infra import distributed
from infalign.infra.cache import (
    CorruptCacheError,
    cached,
    content_key,
    file_lock,
    load_tensors,
    modules_digest,
    save_tensors,
)
from infalign.pipeline.settings import sampling_settings
from infalign.pipeline.trainer import TrainerFactory, factory_keywords
from infalign.training.rollout import RolloutModule, gather

log = logging.getLogger(__name__)

POOL_VERSION = "pool-v2"  # v2: lengths and stop flags stored beside the scores; top_k / top_p in the key
# Modules whose code can change a drawn pool (sampling, scoring, gathering, the toy world's gold reward):
# their digest is part of every pool key, so a fix to the sampler retires the pools it drew.
POOL_CODE = ("infalign.pipeline.pools", "infalign.pipeline.settings", "infalign.training.rollout",
             "infalign.models.generation", "infalign.models.decode_step", "infalign.models.reward",
             "infalign.models.builders", "infalign.math.rl_objectives", "infalign.toy.world",
             "infalign.data.formats")  # (the reward model's last_user_turn prompt format splits HH turns there)


def _join_ranks(trainer: TrainerFactory) -> None:
    """Join a launcher's process group (``distributed.init_from_env``) with the backend of the device the
    predict factory's ``accelerator`` runs on (Lightning's default: ``auto``)."""
    distributed.init_from_env(str(factory_keywords(trainer).get("accelerator", "auto")))


def draw_pool(model, tokenizer, prompts, n, scorers, gen_cfg, trainer: TrainerFactory, seed, reference=None,
              keep_responses: bool = False, keep_ids: bool = False) -> dict:
    """Sample n responses per prompt with ``model`` and score them (``trainer(...).predict``, no logger,
    no checkpointing; ``trainer`` is the run's ``predict`` factory, ``pipeline/trainer.py``); the layout
    of :func:`infalign.training.rollout.gather` (``keep_ids``: with the sampled token ids, what the
    offline baselines train on)."""
    _join_ranks(trainer)
    temperature, top_k, top_p = sampling_settings(gen_cfg)
    module = RolloutModule(model, tokenizer, scorers, n, int(gen_cfg.max_new_tokens), temperature,
                           seed, reference=reference, keep_responses=keep_responses, prompts=prompts,
                           batch_size=int(gen_cfg.batch_size), top_k=top_k, top_p=top_p, keep_ids=keep_ids)
    outputs = trainer(logger=False, enable_checkpointing=False, use_distributed_sampler=False).predict(module)
    return gather(outputs, num_prompts=len(prompts))


def reference_pool(world, prompts: list[str], n: int, judges: dict, gen_cfg, trainer: TrainerFactory, seed: int,
                   cache_dir: str | Path, tag: str) -> tuple[dict, bool]:
    """``(pool, cache_hit)`` for reference samples on ``prompts``: ``pool["scores"]`` =
    ``{judge: [P, n]}``, ``pool["lengths"]`` / ``pool["ended"]`` ``[P, n]`` (response tokens incl.
    the stop token; whether it ended with one)."""
    key = content_key(POOL_VERSION, world.reference_fingerprint, *_pool_settings(world, prompts, n, judges, gen_cfg,
                                                                                 seed, trainer))
    path = Path(cache_dir) / "pools" / f"{tag}-{key}.pt"

    def build() -> dict[str, torch.Tensor]:
        log.info("drawing reference pool %s: %d prompts x %d samples", tag, len(prompts), n)
        pool = draw_pool(world.reference, world.tokenizer, prompts, n, judges, gen_cfg, trainer, seed)
        return _flatten(pool)

    _join_ranks(trainer)
    if not distributed.is_distributed():
        value, hit = _cached_tensors(path, key, tag, build)
        return _unflatten(value), hit
    # All ranks must take part in a build (sampling is sharded), so rank 0 decides hit or miss
    # for everyone; on a miss every rank draws its share, all gather it, rank 0 writes the file.
    hit = distributed.broadcast_object(_valid(path, key) if distributed.rank() == 0 else None)
    if hit:
        return _unflatten(load_tensors(path, key)[0]), True
    value = build()
    if distributed.rank() == 0:
        with file_lock(path.with_name(path.name + ".lock")):
            save_tensors(path, value, {"tag": tag}, key=key)
    distributed.barrier()
    return _unflatten(value), False


def _pool_settings(world, prompts, n, judges, gen_cfg, seed, trainer: TrainerFactory) -> tuple:
    """What a pool depends on besides the sampling model: the judges (the reward model by its content,
    whatever the judge is called, and the dataset text it reads for the prompts where that is not the prompt,
    ``World.reward_reads``; a judge with a ``fingerprint`` -- the toy world's gold reward, by the
    world's parameters -- by that; others by name), prompts, n, generation settings, seed, the
    predict trainer's precision and device (:func:`sampling_hardware`), and the code that draws and
    scores it (:data:`POOL_CODE`)."""
    temperature, top_k, top_p = sampling_settings(gen_cfg)
    reads = getattr(world, "reward_reads", lambda prompts: None)(prompts)  # the dataset text the reward reads
    judged = {name: ((world.reward_fingerprint if reads is None else [world.reward_fingerprint, reads])
                     if scorer is getattr(world, "reward", None) else getattr(scorer, "fingerprint", None) or name)
              for name, scorer in judges.items()}
    return (judged, prompts, n, int(gen_cfg.max_new_tokens), temperature, top_k, top_p, int(gen_cfg.batch_size),
            seed, modules_digest(POOL_CODE, "POOL_CODE"), *sampling_hardware(trainer))


def sampling_hardware(trainer: TrainerFactory) -> tuple:
    """The predict trainer's settings that change what a pool draws: ``precision`` (bf16 autocast moves
    the logits, so the sampled tokens and the scores) and the device kind (another device's kernels
    round differently), read from the factory (:func:`~infalign.pipeline.trainer.factory_keywords`),
    ``accelerator=auto`` resolved to the device it picks here. Empty for float32 on the CPU (the
    default: those keys keep their form), else one dict. (Pools keyed before this -- under any
    precision -- were retired with it: the module is in :data:`POOL_CODE`.)"""
    kw = factory_keywords(trainer)
    precision = str(kw.get("precision", "32-true"))
    accelerator = distributed.accelerator_kind(str(kw.get("accelerator", "auto")))  # (Lightning's default)
    if precision in ("32-true", "32") and accelerator == "cpu":
        return ()
    return ({"precision": precision, "accelerator": accelerator},)


def policy_pool(world, policy_id: str | None, prompts: list[str], n: int, judges: dict, gen_cfg,
                trainer: TrainerFactory, seed: int, cache_dir: str | Path,
                keep_responses: bool = False) -> tuple[dict, bool | None]:
    """``(pool, cache_hit)``: ``world.policy``'s pool on ``prompts`` in :func:`draw_pool`'s layout, with
    each sample's log-ratio sum against ``world.reference``. Cached under ``policy_id`` (the policy
    cache key of its weights) and the pool settings; ``policy_id=None`` draws it fresh
    (``cache_hit`` None). The texts are kept in an entry of their own (``keep_responses``); a request
    without them is served by an entry with them (the same draws) when there is one."""
    wanted = bool(keep_responses)

    def draw(texts: bool) -> dict:
        return draw_pool(world.policy, world.tokenizer, prompts, n, judges, gen_cfg, trainer, seed,
                         reference=world.reference, keep_responses=texts)

    if policy_id is None or distributed.is_distributed():
        return draw(wanted), None
    settings = _pool_settings(world, prompts, n, judges, gen_cfg, seed, trainer)

    def entry(texts: bool) -> tuple[str, Path]:
        key = content_key(POOL_VERSION, "policy", policy_id, world.reference_fingerprint, *settings, texts)
        return key, Path(cache_dir) / "pools" / f"policy-{key}.pt"

    # the entry read (or built): with texts if asked for, or if one with them exists (the same draws)
    stored = wanted or entry(True)[1].exists()
    key, path = entry(stored)

    def build() -> dict[str, torch.Tensor]:
        pool = draw(stored)
        texts = json.dumps(pool["responses"]).encode() if stored else b"[]"
        return {**_flatten(pool), "log_ratio": pool["log_ratio"],
                "responses": torch.frombuffer(bytearray(texts), dtype=torch.uint8)}

    value, hit = _cached_tensors(path, key, "policy", build)
    pool = _unflatten(value)
    pool["log_ratio"] = value["log_ratio"]
    pool["responses"] = json.loads(value["responses"].numpy().tobytes().decode()) if wanted else []
    return pool, hit


def _cached_tensors(path: Path, key: str, tag: str, build) -> tuple[dict[str, torch.Tensor], bool]:
    """:func:`~infalign.infra.cache.cached` for a pool's tensors: stored with its ``tag`` under ``key``,
    loaded only under that key (a file copied to the wrong name is rebuilt)."""
    return cached(path, build, lambda value, p: save_tensors(p, value, {"tag": tag}, key=key),
                  lambda p: load_tensors(p, key)[0])


SCORE_PREFIX = "score/"  # stored tensor names: score/<judge>, cut/<judge>, lengths, ended
CUT_PREFIX = "cut/"  # whether the judge read the row cut (a reward model past reward.max_length)


def _flatten(pool: dict) -> dict[str, torch.Tensor]:
    return {**{SCORE_PREFIX + k: v for k, v in pool["scores"].items()},
            **{CUT_PREFIX + k: v for k, v in pool.get("cut", {}).items()}, "lengths": pool["lengths"],
            "ended": pool["ended"]}


def _unflatten(tensors: dict[str, torch.Tensor]) -> dict:
    return {"scores": {k.removeprefix(SCORE_PREFIX): v for k, v in tensors.items() if k.startswith(SCORE_PREFIX)},
            "cut": {k.removeprefix(CUT_PREFIX): v for k, v in tensors.items() if k.startswith(CUT_PREFIX)},
            "lengths": tensors["lengths"], "ended": tensors["ended"]}


def _valid(path: Path, key: str) -> bool:
    try:
        load_tensors(path, key)
        return True
    except (FileNotFoundError, CorruptCacheError):
        return False
