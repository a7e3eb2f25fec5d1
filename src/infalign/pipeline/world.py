"""Stage 0: the models and prompts a run works with (the embedded toy world, or models by path).

Everything downstream sees one :class:`World`: a trainable policy, the frozen reference, the
tokenizer, the reward scorer (``r``, what RL optimises), optionally a gold scorer (toy world
only), train/eval prompts, and content fingerprints of the reference and reward model used as
cache keys (never run names).

Real data, in order: :func:`check_world_config` (every path, name, tokenizer and the chat template,
reading only small files) -> preference data (length limits on the prompts as the policy sees them)
-> optional Bradley-Terry reward-model training (its own stage, timed and validated) -> models.
The reward model always reads the *dataset* prompt (:func:`~infalign.models.reward.reward_model_inputs`);
``world.stats["reward_input_format"]`` records how.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from infalign.errors import ConfigError, require
from infalign.infra import distributed
from infalign.infra.cache import content_key, modules_digest, sha256_file
from infalign.models.builders import (
    check_causal_lm,
    check_reward_model,
    hub_commit,
    input_token_limit,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    model_positions,
    special_tokens_around,
)
from infalign.models.generation import policy_prompt_ids, prompt_token_limit
from infalign.models.hf_progress import hf_progress, save_model, slow_to_load
from infalign.models.reward import (
    GoldScorer,
    RewardScorer,
    Scorer,
    check_reward_max_length,
    dataset_texts,
    reward_input_format,
)
from infalign.pipeline.custom_reward import check_custom_reward, custom_reward, custom_scorer
from infalign.pipeline.settings import DIALOGUE_SOURCES, HALF_DTYPES, data_settings
from infalign.pipeline.toy_prompts import check_toy_prompt_counts, toy_prompts

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
    # {prompt as the policy sees it: the dataset's prompt text the reward reads}; None: it reads the prompt itself
    dataset_prompts: dict[str, str] | None = None

    def reward_reads(self, prompts: list[str]) -> list[str] | None:
        """The text the reward reads for each of ``prompts`` when it is not the prompt itself (under
        ``policy.chat_template`` it reads the dataset's text, :func:`dataset_prompt_map`), else None. A
        cached score depends on it: an edit of a data file that changes only the whitespace around turns
        leaves the templated prompts as they were and changes what the reward reads (walkthrough finding:
        scores of the old text were served from the cache)."""
        return None if self.dataset_prompts is None else dataset_texts(prompts, self.dataset_prompts)


def fingerprint_dir(path: str | Path) -> str:
    """SHA-256 over the files of a ``save_pretrained`` directory (names, sizes and bytes)."""
    h = hashlib.sha256()
    root = Path(path)
    for p in sorted(q for q in root.rglob("*") if q.is_file() and not q.name.startswith(".")):
        h.update(str(p.relative_to(root)).encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()[:16]


def _fingerprint(name_or_path: str, commit: str | None = None) -> str:
    """What a model's cached samples and scores are keyed by: :func:`fingerprint_dir` of a local
    directory; for a hub name, ``hub:<name>@<commit>`` (the snapshot :func:`hub_commit` resolved, which
    every load of the run reads; when the cache cannot tell the commit, the ``revision`` as given), or
    ``hub:<name>`` when neither is known."""
    if Path(name_or_path).exists():
        return fingerprint_dir(name_or_path)
    return f"hub:{name_or_path}" if commit is None else f"hub:{name_or_path}@{commit}"


def _with_dtype(fingerprint: str, dtype: str) -> str:
    """``fingerprint`` of a model run in ``dtype``: unchanged for float32, keyed with a half dtype
    (bf16 samples and scores are other numbers: pools and ``world_id`` must tell them apart)."""
    return fingerprint if str(dtype) == "float32" else content_key(fingerprint, str(dtype))


@dataclass
class CheckedModels:
    """What :func:`check_world_config` resolved (paths, hub commits) and loaded (tokenizers only).
    ``*_revision`` is the commit hash of a hub model's snapshot (:func:`hub_commit`; None for a local
    directory): every later load passes it, so the run reads the weights its cache keys name."""

    policy_path: str | None
    reward_path: str | None
    policy_tokenizer: object = None
    reward_tokenizer: object = None
    policy_revision: str | None = None
    reward_revision: str | None = None


def _train_reward(cfg: DictConfig) -> bool:
    return bool(cfg.reward.get("train") and cfg.reward.train.get("enabled"))


def check_world_config(cfg: DictConfig) -> CheckedModels:
    """Check every path and name of ``data`` / ``policy`` / ``reward`` before any compute.

    Reads only ``config.json`` files, tokenizers and the first bytes of data files: a missing
    file ("file not found: <path> (data.train_file)"), a Git LFS pointer, a mistyped hub name, a
    model directory without tokenizer, a checkpoint of the wrong kind, or ``policy.chat_template``
    with a tokenizer that has none -- each reported under its own key. The toy world checks only
    the optional ``policy`` / ``reward`` overrides (its own models are built).
    """
    from infalign.data.formats import check_data_file, is_local
    from infalign.data.modules import refuse_same_split_file

    data = cfg.data
    data_settings(data)  # (also checked by apps/train.validate, before the heavy imports)
    check_toy_prompt_counts(data)
    toy = data.source == "toy"
    require(not (toy and _train_reward(cfg)), "reward.train.enabled", True,
            "false for the toy world (its reward model is built)")
    custom = custom_reward(cfg)
    if custom:
        check_custom_reward(cfg)
    if not toy:
        for key in ("policy",) + (() if custom else ("reward",)):
            require(cfg[key].name_or_path is not None, f"{key}.name_or_path", None,
                    "a hub name or local path (only the toy world provides its own models)")
        for key in ("train_file", "test_file"):
            if data.get(key):
                with refused_as(f"data.{key}", data[key], "a readable JSON-lines file (.jsonl / .json, or gzipped)"):
                    check_data_file(data[key], f"data.{key}")
        refuse_same_split_file(data.get("train_file"), data.get("test_file"))
        source = data.get("name_or_path")
        if source and is_local(source) and not Path(source).expanduser().exists():
            raise ConfigError("data.name_or_path", source, "an existing local dataset path or a hub dataset name",
                              f"file not found: {Path(source).expanduser()} (data.name_or_path)")
    checked = CheckedModels(None, None)
    checked.policy_path, config, checked.policy_revision, checked.policy_tokenizer = _check_model(
        cfg, "policy", check_causal_lm, "left")
    if checked.policy_path is not None:
        check_vocab_fits(checked.policy_tokenizer, config, "policy.name_or_path", checked.policy_path)
        if not toy:
            check_sequence_budget(cfg, config)
        if cfg.policy.get("chat_template") and not getattr(checked.policy_tokenizer, "chat_template", None):
            raise ConfigError("policy.chat_template", True, "false, or a policy tokenizer with a chat template",
                              f"the tokenizer of {checked.policy_path} has no chat_template")
    elif toy and cfg.policy.get("chat_template"):  # (it failed after the toy build, at the first prompt)
        raise ConfigError("policy.chat_template", True, "false for the toy world's own policy",
                          "its tokenizer has no chat template (its prompts are plain text)")
    # the toy world's own reward model scores the rows (a max_length cuts them; a custom scorer reads no tokens)
    own_reward = not custom and cfg.reward.get("name_or_path") is None and cfg.reward.get("max_length") is None
    if toy:
        toy_world = _toy_world(cfg)
        check_toy_build(cfg, toy_world)
        if checked.policy_path is None or own_reward:
            check_toy_sequence_budget(cfg, policy=checked.policy_path is None, reward=own_reward, toy=toy_world)
    if custom:
        return checked
    checked.reward_path, config, checked.reward_revision, checked.reward_tokenizer = _check_model(
        cfg, "reward", functools.partial(check_reward_model, from_causal_lm=_train_reward(cfg)), "right")
    pad_token = cfg.reward.get("pad_token")
    require(checked.reward_path is not None or pad_token is None, "reward.pad_token", pad_token,
            "null for the toy world's own reward model (it pads with its own <pad>)")
    if checked.reward_path is not None:
        check_vocab_fits(checked.reward_tokenizer, config, "reward.name_or_path", checked.reward_path)
        warn_reward_chat_template(cfg, checked.reward_tokenizer, checked.reward_path)
        use_reward_pad_token(checked.reward_tokenizer, pad_token, config)
        check_reward_length(cfg, config, checked.reward_path, checked.reward_tokenizer)
    return checked


# the toy build's figures of its reward model: not recorded for a run whose reward is a custom scorer
TOY_REWARD_MODEL_STATS = ("reward_val_loss", "reward_val_accuracy", "reward_val_gold_accuracy", "reward_val_bt_ceiling",
                          "reward_params", "reward_seconds")
def warn_reward_chat_template(cfg: DictConfig, tokenizer, path) -> None:
    """A pretrained reward model whose tokenizer has a chat template was most likely trained on chat-templated
    rows, while the reward model here always reads the dataset's prompt text (``reward.prompt_format``,
    docs/method.md §6): warned about once, before compute -- its scores may be off its training distribution
    (a walkthrough found no word of it). Not for a reward model trained here (it learns the rows it reads)."""
    if getattr(tokenizer, "chat_template", None) and not _train_reward(cfg):
        log.warning("reward.name_or_path=%s: its tokenizer has a chat template, but the reward model reads the "
                    "dataset's own prompt text (reward.input=%s, reward.prompt_format=%s), not chat-templated rows: "
                    "if it was trained on templated text, its scores here are off its training distribution",
                    path, cfg.reward.get("input", "joined"), cfg.reward.get("prompt_format", "full"))


def embedding_rows(config):
    """The model's embedding rows (``vocab_size`` of its text config: a multimodal model's is nested), or
    None when its config does not say."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "vocab_size", None)


def check_vocab_fits(tokenizer, config, key: str, path) -> None:
    """Every token of the tokenizer's vocabulary has an embedding row in the model: a tokenizer of more
    tokens (saved beside another model, or a model cut to a smaller vocabulary) failed with an IndexError
    inside the embedding lookup at the first text using them -- after the reference pool was sampled (a
    walkthrough). A ConfigError naming ``key`` before compute. (Tokens added on top of the vocabulary,
    ``len(tokenizer)``, are not counted: special tokens a model never reads may lie past its rows.)"""
    rows, tokens = embedding_rows(config), getattr(tokenizer, "vocab_size", None)
    if not isinstance(rows, int):
        return
    if isinstance(tokens, int) and tokens > rows:
        raise ConfigError(key, str(path), "a model with an embedding row for every token of its tokenizer",
                          f"its tokenizer has {tokens} tokens, the model {rows} embedding rows (vocab_size): "
                          "a tokenizer saved beside another model?")
    # the special tokens every row carries may be added ones past the base vocabulary (Llama-3's, Qwen's)
    used = {getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "pad", "cls", "sep")}
    used |= set(tokenizer("a", "b")["input_ids"]) - set(tokenizer("a b", add_special_tokens=False)["input_ids"])
    past = sorted(i for i in used if isinstance(i, int) and i >= rows)
    if past:
        raise ConfigError(key, str(path), "a model with an embedding row for every token its rows carry",
                          f"the tokenizer's special token ids {past} are past the model's {rows} embedding rows "
                          "(vocab_size): a tokenizer saved beside another model?")


def use_reward_pad_token(tokenizer, token: str | None, config) -> None:
    """``reward.pad_token`` (None: keep the tokenizer's pad, which
    :func:`~infalign.models.builders.load_tokenizer` makes the eos when there is none): pad the reward
    model's rows with ``token``, added to ``tokenizer`` as its pad token when it is not in the vocabulary
    (``load_reward_model`` then sets ``config.pad_token_id`` to its id).

    Why: HF's causal-LM sequence classifiers read a row's score at its last token that is not the pad id.
    With pad == eos, the eos every row ends with (:func:`~infalign.models.reward.reward_model_inputs`)
    reads as padding and the score is taken at the response's last token -- right for a reward model
    trained on such rows (here, or by TRL with that tokenizer), one token early for one trained with a
    pad of its own: cleanrl's TL;DR reward models were trained on ``post TL;DR: summary<|endoftext|>``
    rows padded with an added ``[PAD]`` and scored at the ``<|endoftext|>``, while the hub copies'
    tokenizers carry no pad token (``conf/experiment/tldr_bon.yaml`` sets ``"[PAD]"``). No embedding row
    is added, as cleanrl did not add one: the token's id must be below the model's ``vocab_size`` (Pythia
    pads its embedding to 50304 rows for 50277 tokens), and the row it looks up never reaches a score
    (padding is masked and follows the read position). A ``ConfigError`` names the key otherwise."""
    if token is None:
        return
    require(isinstance(token, str) and token != "", "reward.pad_token", token, "null or a token string")
    if token not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"pad_token": token})
    else:
        tokenizer.pad_token = token
    rows = embedding_rows(config)
    pad = tokenizer.pad_token_id
    if rows is not None and pad >= int(rows):
        raise ConfigError("reward.pad_token", token, f"null or a token whose id is below the reward model's "
                          f"{rows} embedding rows", f"the reward tokenizer gives it id {pad}")


def check_pair_template(tokenizer) -> None:
    """``reward.input=pair`` needs a text-pair template that *separates* prompt and response, as BERT's
    ``[CLS] a [SEP] b [SEP]`` and RoBERTa's ``<s> a </s></s> b </s>`` do. Llama-style tokenizers (Llama-2/3,
    Gemma) have one that only starts the second text as a new sequence, ``<s> a <s> b``: ``text_pair_tokens``
    counted its ``<s>`` as a separator, and every score came from a row the reward model never saw -- the last
    user turn, a BOS mid-row, no eos (a walkthrough: ``experiment=hh_helpful_bon`` with a Llama-based reward
    model, no warning). A middle that ends with the row's own prefix, or holds nothing but the BOS, is a
    ConfigError naming ``reward.input`` -- for a reward model trained elsewhere (``reward.train.enabled``:
    one trained here is trained on the row it is scored on)."""
    from infalign.models.builders import text_pair_tokens

    prefix, middle, _, _ = text_pair_tokens(tokenizer)
    bos = tokenizer.bos_token_id
    ends = {tokenizer.eos_token_id, getattr(tokenizer, "sep_token_id", None)} - {None}  # (GPT-NeoX: bos == eos)
    if (prefix and middle[-len(prefix):] == prefix) or (bos is not None and bos not in ends and set(middle) <= {bos}):
        shown = tokenizer.convert_ids_to_tokens([*prefix, *middle])
        raise ConfigError("reward.input", "pair", f"'joined' for {type(tokenizer).__name__} (with "
                          "reward.prompt_format=full for a dialogue)",
                          f"its text-pair template starts the response as a new sequence ({shown[:len(prefix)]} "
                          f"prompt {shown[len(prefix):]} response): no separator a reward model is trained with")


def check_reward_length(cfg: DictConfig, reward_config, name: str, tokenizer=None) -> None:
    """``reward.max_length`` (the tokens the reward model reads of prompt + response; longer inputs are
    cut, :func:`~infalign.models.builders.reward_model_inputs`) must fit the reward model's positions:
    a longer input would fail inside its embedding lookup (an IndexError naming nothing) at the first
    long response. Null (no cut) is allowed only for a model without a position limit
    (:func:`~infalign.models.builders.input_token_limit`: RoBERTa-style encoders read 2 fewer tokens
    than their positions; DeBERTa-v3's relative positions set none). With the reward ``tokenizer`` it
    must also hold a row's special tokens and a token of prompt and response
    (:func:`~infalign.models.reward.check_reward_max_length`): shorter, cut rows come out longer than it."""
    max_length = cfg.reward.get("max_length")
    if tokenizer is not None:
        if reward_pair(cfg) and not _train_reward(cfg):  # (a reward model trained here learns the row it reads)
            check_pair_template(tokenizer)
        check_reward_max_length(tokenizer, max_length, reward_pair(cfg))
    limit = input_token_limit(reward_config)
    if limit is None or (max_length is not None and int(max_length) <= limit):
        return
    raise ConfigError("reward.max_length", max_length, f"an integer <= {limit}",
                      f"the reward model {name} reads at most {limit} positions")


def _check_model(cfg: DictConfig, group: str, check, padding_side: str) -> tuple:
    """``(path, config, commit, tokenizer)`` of ``<group>.name_or_path`` (all None when it is null):
    ``check`` (:func:`check_causal_lm` / :func:`check_reward_model`) at ``<group>.revision``, the
    commit it resolves to (:func:`_commit`), and the tokenizer at that commit. A revision without a name
    is a ConfigError."""
    node, key = cfg[group], f"{group}.name_or_path"
    revision = _revision(node, group)
    if node.name_or_path is None:
        require(revision is None, f"{group}.revision", revision, f"null without {key}")
        return None, None, None, None
    with refused_as(key, node.name_or_path, MODEL_SOURCES, revision_key=f"{group}.revision", revision=revision):
        path, config = check(node.name_or_path, key, revision=revision)
        commit = _commit(path, revision, group)
        # a tokenizer with neither a pad nor an eos token: reward.pad_token gives it one (use_reward_pad_token)
        pad_key = "reward.pad_token" if group == "reward" else None
        tokenizer = load_tokenizer(path, padding_side, key=key, revision=commit, pad_key=pad_key,
                                   pad_given=pad_key is not None and node.get("pad_token") is not None)
    return path, config, commit, tokenizer


MODEL_SOURCES = "a local model directory (config.json, weights, tokenizer) or a hub model id the Hugging Face cache has"


@contextlib.contextmanager
def refused_as(key: str, value: object, allowed: str, revision_key: str | None = None,
               revision: str | None = None) -> Iterator[None]:
    """A check of ``key`` that fails with an ``OSError`` (a missing path, an unreadable ``config.json``, a hub
    name the offline cache lacks) or a ``ValueError`` (a checkpoint of the wrong kind) -- each message
    naming the key -- becomes the :class:`ConfigError` of ``key`` (the app's one block and exit 2, as every
    setting refused before compute), the message as its hint; one the message says is ``revision_key``'s
    (a branch the cache does not have) is that key's. A ConfigError passes as it is."""
    try:
        yield
    except ConfigError:
        raise
    except (OSError, ValueError) as exc:
        if _environment_failure(exc):  # the network, a permission, a missing library: not the user's value
            raise
        message = str(exc)
        if revision_key and message.startswith(revision_key):
            raise ConfigError(revision_key, revision, "a branch, tag or commit the model has", message) from exc
        raise ConfigError(key, value, allowed, message) from exc


def _revision(node: DictConfig, group: str) -> str | None:
    """``<group>.revision``: None or a string (Hydra reads an all-digit hash as a number, which would
    lose its leading zeros: refused with the quoting that keeps it a string)."""
    revision = node.get("revision")
    if revision is not None and not isinstance(revision, str):
        raise ConfigError(f"{group}.revision", revision, "a branch, tag or commit hash, as a string (quote a "
                          f"hash of digits only: {group}.revision=\"'<hash>'\")")
    return revision


def _commit(name: str, revision: str | None, group: str) -> str | None:
    """:func:`hub_commit` of a checked model; when a hub model's commit is unknown, the ``revision`` as
    given (None: ``main``), with a warning: its cached samples are then keyed by its name and that
    revision, and a new commit on the branch would not renew them."""
    commit = hub_commit(name, revision, f"{group}.revision")
    if commit is None and not Path(name).exists():
        log.warning("%s.name_or_path=%s: the Hugging Face cache does not tell which commit %s resolves to; "
                    "cached samples and scores of this model are keyed by its name and that revision only (set "
                    "%s.revision to a commit hash to pin it)", group, name, revision or "main", group)
        return revision
    return commit


def check_ranks_agree(fingerprints: list[tuple[str, str]]) -> None:
    """Every rank of a multi-process run loaded the same models: ``fingerprints`` is each rank's
    ``(reference_fingerprint, reward_fingerprint)`` (``distributed.all_gather_objects``). Ranks resolve a
    hub name on their own -- a push to ``main`` between two ranks' checks, or nodes whose caches hold
    different snapshots, would train one policy from two models -- so any disagreement stops the run,
    naming the revision to pin."""
    if len(set(fingerprints)) <= 1:
        return
    per_rank = "; ".join(f"rank {r}: {ref}, {rew}" for r, (ref, rew) in enumerate(fingerprints))
    raise RuntimeError(f"the ranks loaded different models ({per_rank}): a hub model resolved to different "
                       "commits -- set policy.revision / reward.revision to one commit hash")


def check_sequence_budget(cfg: DictConfig, policy_config) -> None:
    """``data.max_prompt_tokens + max_new_tokens`` (RL and evaluation) must fit the policy's
    positions (``max_position_embeddings`` / ``n_positions``, when the config has one); prompts
    are filtered to ``data.max_prompt_tokens`` after the chat template, so no longer sequence
    reaches generation."""
    limit = model_positions(policy_config)
    max_prompt = cfg.data.get("max_prompt_tokens")
    if not limit or max_prompt is None:
        return
    key, new = longest_max_new_tokens(cfg)
    # a response that leaves no room for a prompt names its own key (it named data.max_prompt_tokens, "at most -44")
    require(new < int(limit), key, new, f"at most {int(limit) - 1}: the policy's {limit} positions hold prompt + "
            "response")
    require(int(max_prompt) + new <= int(limit), "data.max_prompt_tokens", max_prompt,
            f"at most {int(limit) - new}: with {key}={new} the policy's {limit} positions must hold "
            f"prompt + response", f"or a smaller {key}")


def longest_max_new_tokens(cfg: DictConfig) -> tuple[str, int]:
    """``(key, value)`` of the largest ``max_new_tokens`` of the run's sampling stages (``algo``,
    ``calibration``, ``eval``): the response length every sequence budget must hold."""
    found = [(f"{group}.max_new_tokens", int(cfg[group].get("max_new_tokens") or 0))
             for group in ("algo", "calibration", "eval") if group in cfg]
    return max(found, key=lambda kv: kv[1]) if found else ("algo.max_new_tokens", 0)


def _toy_world(cfg: DictConfig):
    """``(toy config, ToyWorld, its tokenizer, n_positions of the toy models)`` of ``cfg.data.toy``: no model."""
    import inspect

    from infalign.models.builders import build_toy_lm
    from infalign.toy.build import resolve_toy_config
    from infalign.toy.defaults import DEFAULTS
    from infalign.toy.world import ToyWorld

    given = OmegaConf.to_container(cfg.data.toy, resolve=True)
    _refuse_booleans_for_numbers(given, DEFAULTS, "toy.")
    c, _ = resolve_toy_config(given)
    world = ToyWorld(seed=c["seed"], **c["world"])
    return c, world, world.tokenizer(), int(inspect.signature(build_toy_lm).parameters["n_positions"].default)


def _refuse_booleans_for_numbers(given, defaults, prefix: str) -> None:
    """A number of the toy build given a boolean is a ConfigError of its key: the build casts ``seed: true``
    to 1, the world of seed 1 (``True`` is an ``int`` to Python)."""
    if not isinstance(given, dict) or not isinstance(defaults, dict):
        return
    for key, value in given.items():
        default = defaults.get(key)
        if isinstance(value, dict):
            _refuse_booleans_for_numbers(value, default, f"{prefix}{key}.")
        values = value if isinstance(value, list) else [value]
        numbers = default if isinstance(default, list) else [default]
        if any(isinstance(v, bool) for v in values) and any(
                isinstance(d, int | float) and not isinstance(d, bool) for d in numbers):
            raise ConfigError(f"{prefix}{key}", value, f"a number like {default!r}", "a boolean is no number")


def check_toy_build(cfg: DictConfig, toy=None) -> None:
    """What the toy world's build needs of ``data.toy``, before the build: ``toy.reference.size`` and
    ``toy.reward.size`` are sizes of ``models/builders.TOY_SIZES``, and the longest rows the build writes fit
    the toy models' ``n_positions`` -- a pre-training row (a prompt of ``world.prompt_len``'s most
    attributes, a response of ``world.response_len``'s most symbols, eos) and a reward-model row (that
    prompt, ``reward.max_new_tokens`` sampled tokens, the row's special tokens). (A longer one failed inside
    GPT-2 with an ``IndexError`` after the reference had trained; an unknown size with
    ``toy.reward.init=scratch``, after the reference had trained and sampled.) ``toy``: :func:`_toy_world`'s."""
    from infalign.models.builders import TOY_SIZES, encode_prompt_response
    from infalign.models.reward import reward_model_inputs
    from infalign.toy.world import SEP

    c, world, tokenizer, positions = toy or _toy_world(cfg)
    for name in ("reference", "reward"):
        require(c[name]["size"] in TOY_SIZES, f"toy.{name}.size", c[name]["size"], f"one of {sorted(TOY_SIZES)}")
    prompt = " ".join(world.attribute_words[: c["world"]["prompt_len"][1]]) + " " + SEP
    symbol = world.symbol_words[0]  # (one token each: a row of n symbols is the 1-symbol row's width + n - 1)
    lm_room = positions - int(encode_prompt_response(tokenizer, [prompt], [symbol])["input_ids"].shape[1]) + 1
    rm_room = positions - int(reward_model_inputs(tokenizer, [prompt], [symbol])["input_ids"].shape[1]) + 1
    longest, most = c["world"]["response_len"], min(lm_room, rm_room - 1)
    require(int(longest[1]) <= most, "toy.world.response_len", longest,
            f"a longest response of at most {most} symbols: the toy models read {positions} positions -- a "
            f"pre-training row holds the longest prompt ({c['world']['prompt_len'][1]} attributes), the response and "
            "its eos, and a reward-model row the prompt and toy.reward.max_new_tokens (> the longest response) "
            "sampled tokens")
    new = int(c["reward"]["max_new_tokens"])
    require(new <= rm_room, "toy.reward.max_new_tokens", new,
            f"at most {rm_room}: the toy reward model reads {positions} positions -- the longest prompt, the sampled "
            "response and the row's special tokens")


def _environment_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) is the machine's, not the config's: a network
    failure -- the hub unreachable, timing out or failing (the transport errors of huggingface_hub's
    ``httpx2``, of ``httpx`` and ``requests``, and a 5xx answer, which transformers wraps in an ``OSError``;
    online, a name missing from the cache is then a ``LocalEntryNotFoundError`` raised *from* such an
    error) --, a permission or I/O error, a library the model's files need but that is not installed.
    :func:`refused_as` lets these through as they are (exit 1 with the traceback: a retry or an install may
    fix them), and turns only "not there, or not that kind" into the key's ConfigError -- a name or
    revision the hub or the offline cache does not have included (offline, transformers says "We
    couldn't connect" for it, though nothing was asked of the hub)."""
    import errno

    from huggingface_hub import constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    kinds: list[type] = [ConnectionError, TimeoutError, PermissionError, ImportError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"),
                         ("requests.exceptions", "RequestException")):
        try:
            kinds.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    for e in chain:
        if isinstance(e, tuple(kinds)) or (isinstance(e, OSError) and e.errno in (errno.EIO, errno.ESTALE)):
            return True
        status = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(e, HfHubHTTPError) and isinstance(status, int) and status >= 500:
            return True
    if any(isinstance(e, (LocalEntryNotFoundError, EntryNotFoundError, RepositoryNotFoundError)) for e in chain):
        return False  # not there (and, above, not for want of the network)
    for e in chain:
        text = str(e).lower()
        network = "couldn't connect" in text and not constants.HF_HUB_OFFLINE
        if network or (" is required" in text and "install" in text):
            return True  # (transformers' wording when the cause is not chained)
    return False


def check_toy_sequence_budget(cfg: DictConfig, policy: bool = True, reward: bool = True, toy=None) -> None:
    """The toy world's own models read at most ``n_positions`` (``models/builders.build_toy_lm``'s) tokens:
    the run's longest prompt plus ``max_new_tokens`` must fit the ``policy`` (prompt + response), and with
    the row's special tokens (its closing eos) the ``reward`` model. Checked before the world is built,
    from its prompts (cheap: no model); a ``ConfigError`` names the largest ``max_new_tokens``. (Without it,
    64 or more new tokens failed after the build with an error naming no key, and 60-63 silently cut every
    prompt to its last few tokens: the policy answered prompts it could not read.)"""
    from infalign.models.builders import encode_prompts, row_special_tokens

    _, world, tokenizer, positions = toy or _toy_world(cfg)
    prompts = sum(toy_prompts(world, cfg.data), [])
    longest = max((len(ids) for ids in encode_prompts(tokenizer, prompts)), default=0)
    prefix, middle, end, _ = row_special_tokens(tokenizer, append_eos=True)
    extra = len(prefix) + len(middle) + len(end) if reward else 0
    room = positions - longest - extra
    key, new = longest_max_new_tokens(cfg)
    what = "policy and reward model read" if policy and reward else ("policy reads" if policy else "reward model reads")
    require(new <= room, key, new, f"at most {room}: the toy world's {what} {positions} positions -- its longest "
            f"prompt ({longest} tokens), the response" + (" and the reward row's closing eos" if extra else ""))


def load_world(cfg: DictConfig, cache_dir: str | Path, device: str = "cpu") -> World:
    """The toy world (built and cached by content), or real preference data with models by name/path.

    ``world.stats`` holds ``reward_input_format``, ``prompts_truncated_train`` /
    ``prompts_truncated_eval`` (:func:`count_truncated_prompts`) and, for real data,
    ``data_reports``; after reward-model training also ``reward_trained``, ``reward_train_s``,
    ``reward_val_accuracy`` and ``reward_val_loss``.
    """
    checked = check_world_config(cfg)  # before any compute
    data = cfg.data
    if data.source == "toy":
        from infalign.toy import build_toy_world

        artifacts = build_toy_world(OmegaConf.to_container(data.toy, resolve=True), cache_dir)
        world = artifacts.world
        stats = {"toy_key": artifacts.world_key, "toy_built": artifacts.built, **artifacts.stats}
        if custom_reward(cfg):  # the toy reward model's figures are not the run's reward's (W&B reward_model/*)
            stats = {k: v for k, v in stats.items() if k not in TOY_REWARD_MODEL_STATS}
        policy_path = checked.policy_path or str(artifacts.reference_dir)
        reward_path = checked.reward_path or str(artifacts.reward_dir)
        train_raw, eval_raw = toy_prompts(world, data)
        gold = GoldScorer(world)
        tokenizer = checked.policy_tokenizer or load_tokenizer(policy_path, "left", key="policy.name_or_path")
        reward_tok = None if custom_reward(cfg) else (
            checked.reward_tokenizer or load_tokenizer(reward_path, "right", key="reward.name_or_path"))
    else:
        policy_path, reward_path = checked.policy_path, checked.reward_path
        tokenizer, reward_tok = checked.policy_tokenizer, checked.reward_tokenizer
        dm = preference_data(data, tokenizer, policy_view(cfg.policy, tokenizer, data.source), reward_tok,
                             reward_pair(cfg), reward_prompt_format(cfg), cfg.reward.get("max_length"))
        train_raw = dm.prompts("train", int(data.train_prompts))
        eval_raw = dm.prompts("test", int(data.eval_prompts))
        stats = {"data_reports": {k: r.to_dict() for k, r in dm.reports.items()}}
        gold = None
        if _train_reward(cfg):
            reward_path, rm_stats = train_reward_model(cfg, dm, reward_path, reward_tok, cache_dir,
                                                       init_revision=checked.reward_revision)
            checked.reward_revision = None  # the trained model is a local directory
            stats.update(rm_stats)

    # the reference is frozen (inference only) in policy.dtype; the policy's weights are what AdamW
    # updates, kept in policy.train_dtype (default float32: a master copy; trainer.precision=bf16-mixed
    # still computes in bf16). In bf16 an update of ~lr = 1e-6 to a weight of ~0.02 is below the
    # format's spacing (~1e-4) and rounds away: RL would leave the policy where it started.
    dtype, train_dtype = cfg.policy.get("dtype", "float32"), cfg.policy.get("train_dtype", "float32")
    if train_dtype in HALF_DTYPES:
        log.warning("policy.train_dtype=%s: the optimizer updates %s weights; steps smaller than the format's "
                    "spacing (lr 1e-6 at |w| ~ 0.02 in bfloat16) are lost. float32 keeps a master copy.",
                    train_dtype, train_dtype)
    if dtype != train_dtype:
        log.warning("policy.dtype=%s (the reference) != policy.train_dtype=%s: the two compute the same model "
                    "with different rounding, so the KL is not 0 where the policy is the reference (a floor under "
                    "every KL, e.g. ~0.01 nats per response on a tiny model); set them equal for exact KLs",
                    dtype, train_dtype)
    reward_dtype = cfg.reward.get("dtype", dtype)
    policy_rev, reward_rev = checked.policy_revision, checked.reward_revision
    with hf_progress(slow_to_load(policy_path)):
        policy = load_causal_lm(policy_path, dtype=train_dtype, device=device, key="policy.name_or_path",
                                revision=policy_rev)
        reference = load_causal_lm(policy_path, dtype=dtype, device=device, key="policy.name_or_path",
                                   revision=policy_rev)
    render = policy_view(cfg.policy, tokenizer, data.source)
    train_prompts, eval_prompts = render(train_raw), render(eval_raw)
    # the reward reads the dataset's prompt text, not the policy's chat-templated rendering
    dataset_prompts = (dataset_prompt_map(train_prompts + eval_prompts, train_raw + eval_raw)
                       if cfg.policy.get("chat_template") else None)
    # what a cached reference sample / reward score depends on: the weights, the precision they compute
    # in (a half-precision dtype only, so float32 keys are those from before dtypes entered them) and
    # how the reward model reads its input (a custom scorer: its entry and code, pipeline/custom_reward.py)
    if custom_reward(cfg):
        reward, reward_fingerprint = custom_scorer(cfg, dataset_prompts)
        reward_path = None  # (no reward model read: none in hub_commits)
    else:
        with hf_progress(slow_to_load(reward_path)):
            reward_model = load_reward_model(reward_path, dtype=reward_dtype, device=device,
                                             tokenizer=reward_tok, key="reward.name_or_path", revision=reward_rev)
        reward = RewardScorer(reward_model, reward_tok, batch_size=int(cfg.reward.batch_size),
                              max_length=cfg.reward.get("max_length"), dataset_prompts=dataset_prompts,
                              pair=reward_pair(cfg), prompt_format=reward_prompt_format(cfg),
                              unended_eos=bool(cfg.reward.get("unended_eos", True)))
        reward_fingerprint = content_key(_with_dtype(_fingerprint(reward_path, reward_rev), reward_dtype),
                                         reward.input_format)
    stats["reward_input_format"] = reward.input_format
    stats |= count_truncated_prompts(cfg, policy, tokenizer, {"train": train_prompts, "eval": eval_prompts})
    reference_fingerprint = _with_dtype(_fingerprint(policy_path, policy_rev), dtype)
    # which world a run's numbers come from (the report compares only runs of one world): the models
    # and, for the toy world, its build key (the world's parameters: the gold reward too)
    stats["world_id"] = content_key(stats.get("toy_key"), reference_fingerprint, reward_fingerprint)
    # the hub commits the run read (the fingerprints above hash them with dtypes and input formats):
    # a refused resume names the commit to pin (pipeline/policy_cache.py)
    stats["hub_commits"] = {group: f"{path}@{rev}" for group, path, rev in
                            (("policy", policy_path, policy_rev), ("reward", reward_path, reward_rev)) if rev}
    world = World(
        policy=policy,
        reference=reference,
        tokenizer=tokenizer,
        reward=reward,
        gold=gold,
        train_prompts=train_prompts,
        eval_prompts=eval_prompts,
        reference_fingerprint=reference_fingerprint,
        reward_fingerprint=reward_fingerprint,
        stats=stats,
        dataset_prompts=dataset_prompts,
    )
    # the prompts it trains and is evaluated on, as the policy and the reward read them: a finished run is kept
    # only on the same (a data file edited at the same path is other prompts)
    stats["data_id"] = content_key(train_prompts, eval_prompts, world.reward_reads(train_prompts + eval_prompts))
    return world


def count_truncated_prompts(cfg: DictConfig, policy, tokenizer, prompts: dict[str, list[str]]) -> dict[str, int]:
    """``{"prompts_truncated_<split>": n}``: how many prompts (as the policy is fed them) are longer
    than :func:`~infalign.models.generation.prompt_token_limit` at the largest ``max_new_tokens`` of
    the run (``algo``, ``calibration``, ``eval``): the count of
    :func:`~infalign.models.generation.policy_prompt_ids`, the sampler's prompt encoding, which keeps
    their last tokens, BOS first. With ``data.max_prompt_tokens`` set (real data) the budget check
    makes these 0; otherwise any is logged as a warning."""
    key, new = longest_max_new_tokens(cfg)
    limit = prompt_token_limit(policy, new)
    head = len(special_tokens_around(tokenizer)[0])
    require(limit is None or limit > head, key, new,
            f"at most {(limit or 0) + new - head - 1}: the policy reads {(limit or 0) + new} positions, which must "
            f"hold a response of max_new_tokens and at least one prompt token" + (" after BOS" if head else ""))
    counts = {f"prompts_truncated_{split}": policy_prompt_ids(policy, tokenizer, list(texts), new)[1] if texts else 0
              for split, texts in prompts.items()}
    if any(counts.values()):
        cut = ", ".join(f"{n} {k.removeprefix('prompts_truncated_')}" for k, n in counts.items())
        log.warning("prompts longer than %d tokens (the policy's positions minus max_new_tokens=%d): %s; generation "
                    "cuts them from the left (BOS kept). Set data.max_prompt_tokens to drop them instead",
                    prompt_token_limit(policy, new), new, cut)
    return counts


def dataset_prompt_map(policy_prompts: list[str], raw_prompts: list[str]) -> dict[str, str]:
    """``{prompt as the policy sees it: dataset prompt}``; two dataset prompts that render to the
    same text (chat templates strip whitespace) keep the first and are logged."""
    out: dict[str, str] = {}
    for shown, raw in zip(policy_prompts, raw_prompts):
        if out.setdefault(shown, raw) != raw:
            log.warning("two dataset prompts render to the same policy prompt; scoring with the first")
    return out


def policy_view(policy: DictConfig, tokenizer, source: str):
    """``prompts -> prompts as the policy is fed them``: the chat template when
    ``policy.chat_template`` (with ``policy.system_prompt`` if set; a prompt of ``data.source`` ``source``
    as its dialogue's turns for :data:`~infalign.pipeline.settings.DIALOGUE_SOURCES`, else as one user
    turn: ``data/formats.chat_messages``), else the text as is."""
    if not policy.get("chat_template"):
        return list
    system, dialogue = policy.get("system_prompt"), source in DIALOGUE_SOURCES
    return lambda prompts: apply_chat_template(tokenizer, prompts, system, dialogue)


def preference_data(data: DictConfig, tokenizer, render_prompt=None, reward_tokenizer=None, pair: bool = False,
                    prompt_format: str = "full", reward_max_length: int | None = None):
    """The HH / TL;DR :class:`~infalign.data.PreferenceDataModule` (set up) for ``data``; lengths
    are measured with the policy ``tokenizer`` on the prompts as ``render_prompt`` shows them, and its
    loaders encode batches as the reward model reads them (``reward_tokenizer``, ``pair``,
    ``prompt_format``, ``reward_max_length``)."""
    from infalign.data import PreferenceDataModule

    dm = PreferenceDataModule(
        dataset=data.source, name_or_path=data.get("name_or_path"), data_dir=data.get("data_dir"),
        train_file=data.get("train_file"), test_file=data.get("test_file"), tokenizer=tokenizer,
        max_prompt_tokens=data.get("max_prompt_tokens"), max_response_tokens=data.get("max_response_tokens"),
        batch_size=int(data.get("batch_size", 16)), max_examples=data.get("max_examples"),
        seed=int(data.get("seed", 0)), val_fraction=float(data.get("val_fraction", 0.05)),
        render_prompt=render_prompt, reward_tokenizer=reward_tokenizer, pair=pair, prompt_format=prompt_format,
        reward_max_length=reward_max_length,
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


REWARD_TRAINING_FILE = "reward_training.json"
# The trained reward model's manifest (infra/cache.write_manifest: the key and every file's SHA-256). Hidden:
# fingerprint_dir skips it, so the model's fingerprint stays that of its files (the key holds code digests).
REWARD_MANIFEST = ".manifest.json"
# Modules whose code can change a Bradley-Terry-trained reward model -- its input encoding (which
# REWARD_INPUT_VERSION, bumped by hand, does not always show: e.g. which side a long row is cut on),
# collation, loss, optimizer and schedule: their digest is part of its key (infra/cache.py:
# modules_digest), so an edit retrains it instead of serving one trained on another encoding.
REWARD_TRAINING_CODE = ("infalign.models.reward", "infalign.models.builders", "infalign.data.batches",
                        "infalign.training.reward_model", "infalign.training.pretrain",
                        "infalign.training.step_batches", "infalign.data.formats")


def reward_trainer_kwargs(cfg: DictConfig) -> dict:
    """``L.Trainer`` settings for reward-model training: the run's ``trainer.*`` (accelerator,
    precision, progress bar) on one device; ``reward.train.accelerator`` overrides the accelerator. On GPUs
    under a launcher (torchrun, srun) the device is this rank's own (``LOCAL_RANK``): ``devices=1`` is the
    first GPU, where the rank that trains would have left a CUDA context beside rank 0's (GPU review)."""
    t, hp = cfg.trainer, cfg.reward.train
    accelerator = hp.get("accelerator") or t.get("accelerator", "auto")
    gpu = distributed.accelerator_kind(str(accelerator)) == "cuda"
    return {
        "accelerator": accelerator,
        "precision": t.get("precision", "32-true"),
        "enable_progress_bar": t.get("progress_bar", "tqdm") != "none",
        "devices": [distributed.local_gpu()] if gpu and distributed.launched_externally() else 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
    }


def reward_pair(cfg) -> bool:
    """``reward.input == "pair"``: the reward model reads the text-pair layout (``models/reward.py``)."""
    return cfg.reward.get("input", "joined") == "pair"


def reward_prompt_format(cfg) -> str:
    """``reward.prompt_format`` (default ``full``): what of the dataset prompt the reward model reads
    (``models/reward.reward_prompts``)."""
    return str(cfg.reward.get("prompt_format", "full"))


def train_reward_model(cfg: DictConfig, dm, init_path: str, tokenizer, cache_dir: str | Path,
                       init_revision: str | None = None) -> tuple[str, dict]:
    """Bradley-Terry training of ``init_path`` (a reward model, or a causal LM that gets a new scalar
    head; a hub name at the commit ``init_revision``) on the train pairs, validated on the test pairs;
    cached by content (init weights, input format, pairs, ``reward.train``, ``data.batch_size``,
    ``data.seed`` -- which seeds the new head and the shuffling -- ``trainer.precision`` and the device
    kind it trains on, ``auto`` resolved). The build draws from its own torch RNG stream (``data.seed``),
    so the run's stream is the same whether the model was built or loaded.

    Returns the trained ``save_pretrained`` dir and stats: ``reward_trained`` (now, not a cache
    hit), ``reward_train_s``, ``reward_val_loss``, ``reward_val_accuracy`` (fraction of held-out
    pairs with ``r(chosen) > r(rejected)``).
    """
    import json
    import time

    import lightning as L
    import torch

    from infalign.data.batches import make_preference_dataloader
    from infalign.infra.cache import CorruptCacheError, atomic_dir, cached, read_manifest, write_manifest
    from infalign.training.reward_model import RewardModelModule

    t0 = time.perf_counter()
    hp = OmegaConf.to_container(cfg.reward.train, resolve=True)
    hp.pop("accelerator", None)  # runtime only
    max_length = cfg.reward.get("max_length")
    fmt = reward_input_format(tokenizer, max_length, reward_pair(cfg), reward_prompt_format(cfg))
    train, val = ([tuple(p) for p in dm.pairs(s)] for s in ("train", "test"))
    batch_size, data_seed = int(cfg.data.get("batch_size", 16)), int(cfg.data.get("seed", 0))
    trainer_kw = reward_trainer_kwargs(cfg)
    precision = str(trainer_kw["precision"])
    # the device kind it trains on (another device's kernels round otherwise): keyed off the CPU only, so
    # CPU-trained models keep their keys
    device = distributed.accelerator_kind(str(trainer_kw["accelerator"]))
    key = content_key("reward-bt-v4", modules_digest(REWARD_TRAINING_CODE, "REWARD_TRAINING_CODE"),
                      _fingerprint(init_path, init_revision), fmt, train, val, hp, batch_size, data_seed, precision,
                      *([{"device": device}] if device != "cpu" else []))
    path = Path(cache_dir) / f"reward-{key}"
    log.info("stage reward_model: Bradley-Terry training, %d steps on %d pairs, validated on %d "
             "(instant when cached: %s)", int(hp["steps"]), len(train), len(val), path)

    def loader(pairs, shuffle: bool):
        prompts, chosen, rejected = (list(c) for c in zip(*pairs))
        return make_preference_dataloader(tokenizer, prompts, chosen, rejected, batch_size, shuffle=shuffle,
                                          seed=data_seed, max_length=max_length,
                                          pair=reward_pair(cfg), prompt_format=reward_prompt_format(cfg))

    def build():
        cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []  # (not a context on every GPU)
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(data_seed)  # the new head's init and any dropout: keyed, not the run's stream
            model = load_reward_model(init_path, tokenizer=tokenizer, key="reward.name_or_path", from_causal_lm=True,
                                      revision=init_revision)
            module = RewardModelModule(model, lr=float(hp["lr"]), warmup=int(hp.get("warmup", 0)),
                                       weight_decay=float(hp.get("weight_decay", 0.0)))
            trainer = L.Trainer(max_steps=int(hp["steps"]), num_sanity_val_steps=0, **reward_trainer_kwargs(cfg))
            with warnings.catch_warnings():  # validated right below, on the held-out pairs
                warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")
                trainer.fit(module, loader(train, True))
            result = trainer.validate(module, loader(val, False), verbose=False)[0]
        metrics = {"val_loss": float(result["val/loss"]), "val_accuracy": float(result["val/accuracy"]),
                   "steps": int(hp["steps"]), "train_pairs": len(train), "val_pairs": len(val), "input_format": fmt}
        log.info("reward model trained: %s", metrics)
        return model, metrics

    def save(value, p: Path) -> None:
        with atomic_dir(p) as tmp:
            save_model(value[0], tokenizer, tmp)
            (Path(tmp) / REWARD_TRAINING_FILE).write_text(json.dumps(value[1], indent=2))
            write_manifest(tmp, key, name=REWARD_MANIFEST)

    def load(p: Path):
        # every file checksummed: a truncated or altered weights file is rebuilt, never loaded or served
        read_manifest(p, key, name=REWARD_MANIFEST, required=("config.json", REWARD_TRAINING_FILE))
        try:
            return None, json.loads((p / REWARD_TRAINING_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise CorruptCacheError(f"{p}: unreadable {REWARD_TRAINING_FILE} ({exc})") from exc

    (_, metrics), hit = cached(path, build, save, load)
    stats = {"reward_trained": not hit, "reward_train_s": time.perf_counter() - t0,
             "reward_val_loss": metrics["val_loss"], "reward_val_accuracy": metrics["val_accuracy"]}
    return str(path), stats


def apply_chat_template(tokenizer, prompts: list[str], system_prompt: str | None, dialogue: bool) -> list[str]:
    """Render ``prompts`` with the tokenizer's template -- with ``dialogue`` each HH dialogue as its turns,
    else each prompt as one user turn (``data/formats.chat_messages``) -- after a ``system`` message when
    ``system_prompt`` is set (``None``: the template's default).

    Templates that write the BOS text (Llama-3's ``<|begin_of_text|>``) lose it here when the
    tokenizer adds BOS itself on encoding (as the sampler's ``encode_prompts`` does), so the
    policy sees one BOS, not two."""
    from infalign.data.formats import chat_messages

    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    rendered = [tokenizer.apply_chat_template(system + chat_messages(p, dialogue), tokenize=False,
                                              add_generation_prompt=True) for p in prompts]
    bos = tokenizer.bos_token
    if bos and special_tokens_around(tokenizer)[0] == [tokenizer.bos_token_id]:
        rendered = [r[len(bos):] if r.startswith(bos) else r for r in rendered]
    return rendered
