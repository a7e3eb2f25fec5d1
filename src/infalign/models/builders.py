"""Turn a name or a local path into a Hugging Face model/tokenizer, and text into model inputs.

- ``build_toy_lm`` / ``build_toy_reward_model``: fresh GPT-2 models sized for the toy world.
- ``load_causal_lm`` / ``load_reward_model`` / ``load_tokenizer``: ``from_pretrained`` by hub name
  (at an optional ``revision``) or local directory, with errors that name the config key and the
  path, and a check that the checkpoint is of the right kind (a sequence-classification checkpoint
  silently loads as a causal LM otherwise: GPT-2 ties ``lm_head`` to the embeddings).
- ``hub_commit``: the commit of the hub snapshot a name (and revision) resolves to, so that cached
  samples are keyed by the weights they came from and every load reads that same snapshot.
- ``encode_prompt_response``: the one way prompt/response text becomes token ids (pre-training,
  reward-model training and reward scoring all use it, so they see identical inputs).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from infalign.errors import ConfigError, require

__all__ = [
    "TOY_SIZES",
    "build_toy_lm",
    "build_toy_reward_model",
    "check_causal_lm",
    "check_reward_model",
    "encode_prompt_response",
    "pad_id",
    "padded",
    "special_id",
    "encode_prompts",
    "hub_commit",
    "load_causal_lm",
    "load_reward_model",
    "load_tokenizer",
    "input_token_limit",
    "model_positions",
    "resolve_dtype",
    "min_row_length",
    "response_lead",
    "row_special_tokens",
    "special_tokens_around",
    "text_pair_tokens",
]

# n_embd, n_layer, n_head -> ~0.1M / ~0.6M / ~2.2M parameters with the default toy vocabulary.
TOY_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"n_embd": 64, "n_layer": 2, "n_head": 2},
    "small": {"n_embd": 128, "n_layer": 3, "n_head": 4},
    "medium": {"n_embd": 192, "n_layer": 5, "n_head": 6},
}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _toy_config(tokenizer, size: str, key: str, n_positions: int = 64, **extra):
    from transformers import GPT2Config

    if size not in TOY_SIZES:
        raise ConfigError(key, size, f"one of {sorted(TOY_SIZES)}")
    return GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # No dropout: the toy models are tiny and see fresh data; dropout only slows learning.
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        summary_first_dropout=0.0,
        # the same tanh-GELU as GPT-2's default gelu_new, as one fused op (~10% faster RL steps)
        activation_function="gelu_pytorch_tanh",
        **TOY_SIZES[size],
        **extra,
    )


def build_toy_lm(tokenizer, size: str = "small", n_positions: int = 64):
    """A randomly initialised ``GPT2LMHeadModel`` for ``tokenizer``'s vocabulary."""
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel(_toy_config(tokenizer, size, "toy.reference.size", n_positions))


def build_toy_reward_model(tokenizer, size: str = "small", n_positions: int = 64):
    """A randomly initialised ``GPT2ForSequenceClassification`` with one output (the score)."""
    from transformers import GPT2ForSequenceClassification

    config = _toy_config(tokenizer, size, "toy.reward.size", n_positions, num_labels=1)
    return GPT2ForSequenceClassification(config)


def resolve_dtype(dtype: str | torch.dtype, key: str = "dtype") -> torch.dtype:
    """``'float32' | 'bfloat16' | 'float16'`` (or a ``torch.dtype``) -> ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ConfigError(key, dtype, f"one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def _looks_local(name_or_path: str) -> bool:
    """A path, as opposed to a hub id ``name`` or ``org/name``."""
    p = str(name_or_path)
    return (
        Path(p).expanduser().exists()
        or p.startswith(("/", "./", "../", "~", "."))
        or p.count("/") > 1
        or os.sep != "/"
        and os.sep in p
    )


# The weight files ``from_pretrained`` reads from a local directory (transformers' SAFE_WEIGHTS_NAME,
# SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME): one file, or the index of a sharded checkpoint.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def resolve_name_or_path(name_or_path: str | os.PathLike, key: str) -> str:
    """Expand a local path and fail clearly when it is missing; pass hub ids through. A local
    directory must hold ``config.json`` and one of :data:`WEIGHT_FILES` -- a folder with config and
    tokenizer but no weights (an interrupted copy, a ``save_pretrained`` of the tokenizer alone) is a
    :class:`~infalign.errors.ConfigError` naming ``key`` here, before any compute, not an ``OSError``
    of ``from_pretrained`` after data loading and reward-model training."""
    name = str(name_or_path)
    if _looks_local(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{key}: local path does not exist: {path}")
        if path.is_file():  # (was: "not a local directory and could not be loaded from the hub")
            raise ConfigError(key, str(path), "a saved model's directory (config.json and its weights) or a hub name",
                              f"it is a file: name the directory that holds it ({path.parent})")
        if path.is_dir() and not (path / "config.json").exists():
            raise ValueError(f"{key}: {path} is not a saved model directory (no config.json)")
        if path.is_dir() and not any((path / f).is_file() for f in WEIGHT_FILES):
            raise ConfigError(key, str(path), f"a saved model directory with its weights (one of "
                              f"{', '.join(WEIGHT_FILES)})", "it has config.json but no weight file: save the "
                              "model into it with model.save_pretrained(...)")
        return str(path)
    return name


def _revision_kw(revision: str | None) -> dict:
    """``{"revision": revision}`` for ``from_pretrained``, nothing when None (the hub's ``main``)."""
    return {} if revision is None else {"revision": str(revision)}


def _load_config(name: str, key: str, revision: str | None = None):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name, **_revision_kw(revision))
    except OSError as exc:
        if Path(name).expanduser().is_dir():  # (not the hub's business: the message said so)
            raise OSError(f"{key}={name!r}: the config.json of this local directory cannot be read: {exc}") from exc
        offline = f"HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}"
        if revision is not None:
            raise OSError(
                f"{key.rsplit('.', 1)[0]}.revision={revision!r}: {name!r} has no such branch, tag or commit in the "
                f"local Hugging Face cache, and the hub could not provide it (offline? {offline}): {exc}"
            ) from exc
        raise OSError(
            f"{key}={name!r}: not a local directory and could not be loaded from the Hugging Face "
            f"hub (offline? {offline}): {exc}"
        ) from exc


def hub_commit(name: str, revision: str | None = None, key: str = "policy.revision") -> str | None:
    """The commit hash of the hub snapshot ``from_pretrained(name, revision=revision)`` reads, from
    the local Hugging Face cache (``models--org--name/snapshots/<commit>/config.json``; ``revision``
    None is ``main``, a branch or tag resolves through ``refs/``). Call it after :func:`check_causal_lm`
    / :func:`check_reward_model`, which put ``config.json`` of that revision in the cache (online, they
    fetch the hub's current ``main`` first). None for a local directory, or when the cache does not
    hold the file (a custom ``cache_dir``): then the model is known by its name alone.

    A hub name is a moving target -- ``main`` changes when its owner pushes -- so cached reference
    samples, calibration tables and reward scores are keyed by this commit (``pipeline/world.py``),
    and every later load of the run passes it as ``revision``: the policy, the reference, the
    tokenizers and the reward model all come from the snapshot the keys name."""
    if _looks_local(name):
        if revision is not None:
            raise ConfigError(key, revision, "null for a local directory (a revision names a hub snapshot)")
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(name, "config.json", revision=revision)
    if not isinstance(found, str):
        return None
    return Path(found).parent.name


def _check_kind(config, name: str, key: str, suffixes: tuple[str, ...], wanted: str) -> None:
    archs = list(getattr(config, "architectures", None) or [])
    if archs and not any(a.endswith(suffixes) for a in archs):
        raise ValueError(
            f"{key}={name!r} is a {', '.join(archs)} checkpoint, not a {wanted} "
            f"(expected an architecture ending in {' or '.join(suffixes)})"
        )


_CAUSAL = ("ForCausalLM", "LMHeadModel")
_CLASSIFIER = ("ForSequenceClassification",)


def _is_causal(config) -> bool:
    return any(a.endswith(_CAUSAL) for a in getattr(config, "architectures", None) or [])


def check_causal_lm(name_or_path: str | os.PathLike, key: str = "policy.name_or_path",
                    revision: str | None = None):
    """``(name, config)`` of a causal-LM checkpoint (a hub name at ``revision``: None = ``main``),
    reading only its ``config.json`` (cheap: run before any compute). Errors name ``key``: missing
    local path, a local directory without weights (:func:`resolve_name_or_path`), hub name or
    revision not found, wrong kind."""
    name = resolve_name_or_path(name_or_path, key)
    config = _load_config(name, key, revision)
    _check_kind(config, name, key, _CAUSAL, "causal language model")
    return name, config


def model_positions(config) -> int | None:
    """The longest input a model's ``config`` allows (``max_position_embeddings`` / ``n_positions``),
    None when it names none."""
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return int(limit) if limit else None


# Encoders whose position ids start after the padding index (RoBERTa's create_position_ids_from_input_ids):
# of max_position_embeddings (514) only max - (pad + 1) = 512 reach tokens.
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "mpnet",
                     "roberta-prelayernorm", "ibert")


def input_token_limit(config) -> int | None:
    """The most tokens a model can read at once: :func:`model_positions`, less the padding offset of
    RoBERTa-style encoders (514 positions read 512 tokens), and None for a model without absolute
    position embeddings that names a limit only as a training length (DeBERTa-v2/v3,
    ``position_biased_input=False``: relative positions, longer inputs run)."""
    if getattr(config, "model_type", None) in ("deberta-v2", "deberta") and not getattr(
            config, "position_biased_input", True):
        return None
    limit = model_positions(config)
    if limit and getattr(config, "model_type", None) in _OFFSET_POSITIONS:
        pad = getattr(config, "pad_token_id", None)
        return limit - ((1 if pad is None else int(pad)) + 1)
    return limit


def check_reward_model(
    name_or_path: str | os.PathLike, key: str = "reward.name_or_path", from_causal_lm: bool = False,
    revision: str | None = None,
):
    """``(name, config)`` of a one-output sequence-classification checkpoint -- or, with
    ``from_causal_lm``, of a causal LM that will get a new scalar head. Reads only
    ``config.json``; ``revision`` and errors as in :func:`check_causal_lm`."""
    name = resolve_name_or_path(name_or_path, key)
    config = _load_config(name, key, revision)
    if from_causal_lm:
        _check_kind(config, name, key, _CLASSIFIER + _CAUSAL, "reward model or causal LM")
    else:
        _check_kind(
            config,
            name,
            key,
            _CLASSIFIER,
            "sequence-classification reward model (a causal LM is accepted with "
            "reward.train.enabled=true, which trains a new scalar head on it)",
        )
    if not _is_causal(config) and config.num_labels != 1:
        raise ValueError(
            f"{key}={name!r} has num_labels={config.num_labels}; a reward model needs 1"
        )
    return name, config


def load_causal_lm(
    name_or_path: str | os.PathLike,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    key: str = "policy.name_or_path",
    revision: str | None = None,
):
    """``AutoModelForCausalLM.from_pretrained`` by hub id (at ``revision``; None = ``main``) or local
    directory.

    Raises ``FileNotFoundError`` (naming ``key`` and the path) for a missing local path,
    ``ValueError`` for a checkpoint that is not a causal LM (e.g. a reward model) or a local directory
    without weights, and ``OSError`` naming ``key`` when the weights cannot be read (a hub snapshot
    whose config is cached but not its weights, offline).
    """
    from transformers import AutoModelForCausalLM

    name, _ = check_causal_lm(name_or_path, key, revision)
    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=resolve_dtype(dtype, "dtype"),
                                                     **_revision_kw(revision))
    except _corrupt_weights() as exc:  # a weight file cut short (a copy or download interrupted)
        raise _weights_error(key, name, revision, exc) from exc
    except ValueError as exc:  # unrecognised configuration class for this auto class
        raise ValueError(f"{key}={name!r} cannot be loaded as a causal LM: {exc}") from exc
    except OSError as exc:  # weights missing or unreadable (a hub snapshot cached without them, offline)
        raise _weights_error(key, name, revision, exc) from exc
    return model.to(device)


def _corrupt_weights() -> tuple[type[BaseException], ...]:
    """What ``from_pretrained`` raises for a weight file that is there but cut short or corrupt:
    safetensors' header errors, a truncated pickle (``.bin``)."""
    import pickle

    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover - transformers requires safetensors
        return (pickle.UnpicklingError, EOFError)
    return (SafetensorError, pickle.UnpicklingError, EOFError)


def _weights_error(key: str, name: str, revision: str | None, exc: BaseException) -> OSError:
    """The ``OSError`` of a ``from_pretrained`` that found the config but could not read the weights,
    naming ``key`` (and the revision, the offline setting; for a local directory, that a weight file
    there is cut short or corrupt)."""
    if Path(name).expanduser().is_dir():
        return OSError(f"{key}={name!r}: its config loaded but a weight file in that directory cannot be read "
                       f"(cut short or corrupt? a copy or download interrupted): {type(exc).__name__}: {exc}")
    offline = f"HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}"
    at = f" at revision {revision!r}" if revision is not None else ""
    return OSError(f"{key}={name!r}{at}: its config loaded but its weights could not be read (offline? {offline}): "
                   f"{type(exc).__name__}: {exc}")


def load_reward_model(
    name_or_path: str | os.PathLike,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    tokenizer=None,
    key: str = "reward.name_or_path",
    from_causal_lm: bool = False,
    revision: str | None = None,
):
    """``AutoModelForSequenceClassification.from_pretrained`` with one output (the score), by hub id
    (at ``revision``; None = ``main``) or local directory.

    ``from_causal_lm``: a causal-LM checkpoint (an SFT model) is accepted too; its transformer is
    loaded under a *new* linear scalar head (randomly initialised, as TRL's ``RewardTrainer``
    does), ready for Bradley-Terry training. Otherwise a causal LM is rejected.

    HF's sequence classifiers of causal LMs read the score at each row's last token that is not
    ``config.pad_token_id`` (they ignore the attention mask), and rows are right-padded with
    ``tokenizer.pad_token_id``: the two must agree, or every row shorter than its batch is scored
    at a padding column (its reward then depends on its batch-mates). So the config's pad id (and
    its text config's) is set to the tokenizer's, with a warning when the checkpoint named another;
    without a tokenizer a missing pad id becomes eos. Errors as in :func:`load_causal_lm`; a
    classification checkpoint with more than one label is rejected.
    """
    from transformers import AutoModelForSequenceClassification

    name, config = check_reward_model(name_or_path, key, from_causal_lm, revision)
    new_head = _is_causal(config)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            name, dtype=resolve_dtype(dtype, "dtype"), **({"num_labels": 1} if new_head else {}),
            **_revision_kw(revision),
        )
    except _corrupt_weights() as exc:
        raise _weights_error(key, name, revision, exc) from exc
    except ValueError as exc:
        raise ValueError(f"{key}={name!r} cannot be loaded as a reward model: {exc}") from exc
    except OSError as exc:
        raise _weights_error(key, name, revision, exc) from exc
    align_pad_token_id(model.config, getattr(tokenizer, "pad_token_id", None), f"{key}={name!r}")
    return model.to(device)


def align_pad_token_id(config, pad: int | None, what: str) -> None:
    """Set ``config.pad_token_id`` (and its text config's) to the tokenizer's ``pad`` -- the id the
    rows are padded with, which HF's classifiers skip to find a row's last token; warn when the
    checkpoint named a different one. Without ``pad``: a missing id becomes ``eos_token_id``."""
    import logging

    configs = [config]
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if text is not config:
        configs.append(text)
    eos = config.eos_token_id[0] if isinstance(config.eos_token_id, list | tuple) else config.eos_token_id
    for c in configs:
        if pad is None:
            if c.pad_token_id is None:
                c.pad_token_id = eos
            continue
        if c.pad_token_id is not None and c.pad_token_id != pad:
            logging.getLogger(__name__).warning(
                "%s: the checkpoint's config.pad_token_id=%s is not its tokenizer's pad id %s; using %s "
                "(rows are padded with it, and the classifier reads each row's score at its last non-pad "
                "token)", what, c.pad_token_id, pad, pad)
        c.pad_token_id = pad


# Files of which a saved tokenizer has at least one (fast tokenizers, BPE, WordPiece, SentencePiece).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "tokenizer.model",
    "spm.model",
    "sentencepiece.bpe.model",
)


def load_tokenizer(
    name_or_path: str | os.PathLike,
    padding_side: str = "left",
    key: str = "policy.name_or_path",
    revision: str | None = None,
    pad_key: str | None = None,
    pad_given: bool = False,
):
    """``AutoTokenizer.from_pretrained`` (a hub id at ``revision``; None = ``main``); ``padding_side``
    'left' (generation) or 'right' (scoring); ``pad_token`` falls back to ``eos_token``. A tokenizer with
    neither is an error naming ``pad_key`` (the setting that gives one, ``reward.pad_token``), unless
    ``pad_given`` (that setting is set): its pad then stays None for the caller to set."""
    from transformers import AutoTokenizer

    require(padding_side in ("left", "right"), "padding_side", padding_side, "'left' or 'right'")
    name = str(name_or_path)
    if _looks_local(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{key}: local path does not exist: {path}")
        if path.is_dir() and not any((path / f).is_file() for f in TOKENIZER_FILES):
            raise FileNotFoundError(
                f"{key}={name!r}: the directory has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
                f"save it next to the model with tokenizer.save_pretrained({str(path)!r})"
            )
        name = str(path)
    try:
        tok = AutoTokenizer.from_pretrained(name, **_revision_kw(revision))
    except (OSError, ValueError, KeyError) as exc:
        raise OSError(f"{key}={name!r}: cannot load a tokenizer from it: {exc}") from exc
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    elif tok.pad_token is None and not pad_given:
        raise ValueError(f"{key}={name!r}: tokenizer has neither a pad nor an eos token"
                         + (f"; {pad_key} sets one (a token of its vocabulary, or one to add)" if pad_key else ""))
    tok.padding_side = padding_side
    return tok


def special_tokens_around(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer adds around one text with ``add_special_tokens=True``:
    ``([CLS], [SEP])`` for BERT/DeBERTa-style, ``([BOS], [])`` for Llama-style, ``([], [])`` for
    GPT-2-style tokenizers (found by encoding a probe with and without special tokens)."""
    probe = "a"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return list(full[:i]), list(full[i + len(bare) :])
    raise ValueError(f"{type(tokenizer).__name__}: cannot locate the text among its special tokens")


def pad_id(tokenizer) -> int:
    """The id prompts and responses are padded with: ``tokenizer.pad_token_id``, else eos, else 0."""
    for name in ("pad", "eos"):
        value = special_id(tokenizer, name)
        if value is not None:
            return value
    return 0


def special_id(tokenizer, name: str) -> int | None:
    """``tokenizer.<name>_token_id`` as an int, None when the tokenizer has none."""
    value = getattr(tokenizer, f"{name}_token_id", None)
    return int(value) if value is not None else None


def padded(rows: list[list[int]], pad: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` ``[len(rows), longest]``: each row left-aligned with ``pad`` (mask 0) after it, or
    with ``left`` right-aligned with ``pad`` before it (the prompt layout of
    :func:`~infalign.models.generation.sample` and of IPO's pairs)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        cols = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, cols], mask[i, cols] = torch.tensor(r, dtype=torch.long), 1
    return ids, mask


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids of each prompt as a policy reads it before its response: the tokenizer's *leading*
    special tokens (:func:`special_tokens_around`: ``<s>`` for Llama-style, ``[CLS]`` for BERT-style,
    none for GPT-2 and the toy tokenizer) then the text, never its trailing ones -- a tokenizer that
    appends eos (Llama with ``add_eos_token=True``: ``<s> text </s>``) would otherwise put a stop token
    between the prompt and every response sampled after it. The one prompt encoding of the sampler,
    IPO's pairs, the prompt-length filter and the truncation count; equal to ``tokenizer(prompts)`` for
    every tokenizer that adds nothing after a text."""
    head = special_tokens_around(tokenizer)[0]
    return [head + list(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]


def response_lead(tokenizer) -> str:
    """The whitespace a response gets in front of it when it is tokenised on its own after its prompt
    (a joined reward-model row): ``" "`` when the tokenizer reads a word after a space as another
    token (byte-level BPE: GPT-2, Pythia, Llama 3, Qwen -- ``"Ġword"`` vs ``"word"``) and the spaced
    one is what it produces inside the datasets' own text (``"TL;DR: summary"``, ``"Assistant: Sure"``:
    one space after the colon), else ``""`` (word-level and WordPiece tokenizers ignore the space;
    SentencePiece ones add a ``▁`` of their own, and a spaced word would get a second one). Found with
    a probe, like :func:`special_tokens_around`."""
    head, word = "TL;DR:", "Sure"

    def ids(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    spaced = ids(" " + word)
    if spaced == ids(word):
        return ""
    return " " if ids(head) + spaced == ids(f"{head} {word}") else ""


def text_pair_tokens(tokenizer) -> tuple[list[int], list[int], list[int], tuple[int, int] | None]:
    """``(prefix, middle, suffix, types)`` of the tokenizer's text-pair template ``tokenizer(a, b)``:
    ``([CLS], [SEP], [SEP], (0, 1))`` for BERT/DeBERTa-style tokenizers (``types``: the token type
    ids of the first and second segment; None when the tokenizer returns none). Found by encoding
    a probe pair. A tokenizer without a template that separates the two (GPT-2, which just
    concatenates) is a ``ConfigError`` naming ``reward.input``."""
    a = tokenizer("a", add_special_tokens=False)["input_ids"]
    b = tokenizer("b", add_special_tokens=False)["input_ids"]
    enc = tokenizer("a", "b", add_special_tokens=True)
    ids = list(enc["input_ids"])
    i = next((k for k in range(len(ids) - len(a) + 1) if ids[k : k + len(a)] == a), None)
    j = None if i is None else next(
        (k for k in range(i + len(a), len(ids) - len(b) + 1) if ids[k : k + len(b)] == b), None)
    if i is None or j is None or j == i + len(a):
        raise ConfigError("reward.input", "pair",
                          f"'joined' for {type(tokenizer).__name__} (it has no text-pair template separating "
                          "prompt and response)")
    types = enc.get("token_type_ids")
    return ids[:i], ids[i + len(a) : j], ids[j + len(b) :], (types[i], types[j]) if types else None


def row_special_tokens(tokenizer, append_eos: bool = True, special_tokens: bool = True, pair: bool = False,
                       ) -> tuple[list[int], list[int], list[int], tuple[int, int] | None]:
    """``(prefix, middle, end, types)`` of an :func:`encode_prompt_response` row
    ``[prefix | prompt | middle | response | end]``: with ``pair`` the text-pair template's
    (:func:`text_pair_tokens`), else ``middle`` empty, ``prefix`` / ``end`` the tokenizer's own
    (:func:`special_tokens_around`; none when ``special_tokens`` is false) with ``end`` = ``[eos]``
    when it has no suffix and ``append_eos`` (and an eos), ``types`` None."""
    if pair:
        return text_pair_tokens(tokenizer)
    prefix, suffix = special_tokens_around(tokenizer) if special_tokens else ([], [])
    eos = tokenizer.eos_token_id if append_eos else None
    return prefix, [], suffix or ([eos] if eos is not None else []), None


def appended_eos(tokenizer, special_tokens: bool = True, pair: bool = False) -> bool:
    """Whether a row :func:`row_special_tokens` lays out with ``append_eos`` ends with the eos appended here --
    which says "it ended" -- rather than the tokenizer's own closing token (RoBERTa's ``</s>``, an eos-suffixed
    Llama: its template's, even where it is the eos) or a text pair's separator."""
    if pair or tokenizer.eos_token_id is None:
        return False
    return not (special_tokens and special_tokens_around(tokenizer)[1])


def min_row_length(tokenizer, append_eos: bool = True, special_tokens: bool = True, pair: bool = False) -> int:
    """The shortest ``max_length`` :func:`encode_prompt_response` can cut a row to: its special tokens
    (:func:`row_special_tokens`: ``len(prefix) + len(middle) + len(end)``) plus one prompt and one
    response token -- 3 for GPT-2 (``{prompt}{response}<eos>``), 4 for BERT joined, 5 for a text pair
    (``[CLS] p [SEP] r [SEP]``). Below it a cut row keeps no response token, or the cut's slices go
    negative and rows come out longer than ``max_length``."""
    prefix, middle, end, _ = row_special_tokens(tokenizer, append_eos, special_tokens, pair)
    return _min_length(prefix, middle, end)


def _min_length(prefix: list[int], middle: list[int], end: list[int]) -> int:
    """:func:`min_row_length` of a row with these special tokens (one rule for both callers)."""
    return len(prefix) + len(middle) + len(end) + 2


def encode_prompt_response(
    tokenizer,
    prompts: list[str],
    responses: list[str],
    append_eos: bool = True,
    max_length: int | None = None,
    special_tokens: bool = True,
    pair: bool = False,
    ended: Sequence[bool] | None = None,
) -> dict[str, torch.Tensor]:
    """Right-padded ``[prefix | prompt | middle | response | end]`` token ids.

    Prompt and response are tokenised separately (as a sampler produces them: prompt ids, then
    generated ids) and concatenated. ``prefix`` / ``suffix`` are the tokenizer's own special tokens
    (:func:`special_tokens_around`; none when ``special_tokens`` is false): ``[CLS] ... [SEP]`` for an
    encoder, ``<s> ...`` for a Llama-style tokenizer, nothing for GPT-2. ``end`` is the suffix when
    the tokenizer has one, else ``eos`` when ``append_eos`` (and the tokenizer has one); ``middle``
    is empty. With ``pair`` the row is the tokenizer's text-pair template instead
    (:func:`text_pair_tokens`: ``[CLS] prompt [SEP] response [SEP]``, as ``tokenizer(prompt,
    response)`` encodes it), with its ``token_type_ids``. Over ``max_length`` (special tokens
    included) the prompt is cut from the left (its end matters most), then the response from the
    right (a pair keeps its closing separator); a ``max_length`` below :func:`min_row_length` (the
    special tokens plus one token of each) is a ``ValueError``. Returns ``input_ids``, ``attention_mask``,
    ``response_mask`` (1 on response tokens including the end tokens) and, for a pair with token
    types, ``token_type_ids``, each ``[B, L]``, and ``truncated`` ``[B]`` (the rows that were cut).
    ``ended`` (per row; None: every row): whether the response ended -- a row whose response did not (it hit
    the sampler's ``max_new_tokens``) gets no appended eos, which would say it ended (a tokenizer's own suffix
    and a text pair's closing separator are the template's, and stay).
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if not prompts:
        raise ValueError("encode_prompt_response: empty batch")
    if ended is not None and len(ended) != len(responses):
        raise ValueError(f"{len(ended)} ended flags but {len(responses)} responses")
    prefix, middle, end, types = row_special_tokens(tokenizer, append_eos, special_tokens, pair)
    eos_end = ended is not None and append_eos and appended_eos(tokenizer, special_tokens, pair)
    least = _min_length(prefix, middle, end)  # min_row_length, from the special tokens already read
    if max_length is not None and max_length < least:
        raise ValueError(f"max_length={max_length} is less than a row's {least - 2} special tokens plus one prompt "
                         f"and one response token ({least}): cut rows would lose their response or come out "
                         "longer than max_length")
    p_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    rows, truncated = [], []
    for i, (p, r) in enumerate(zip(p_ids, r_ids)):
        p, r = prefix + list(p) + middle, list(r) + ([] if eos_end and not ended[i] else end)
        truncated.append(max_length is not None and len(p) + len(r) > max_length)
        if truncated[-1]:
            text = p[len(prefix) : len(p) - len(middle)]  # the special tokens are kept, the text is cut
            keep_p = max(max_length - len(r) - len(prefix) - len(middle), min(len(text), 1))
            p = prefix + (text[len(text) - keep_p :] if keep_p else []) + middle
            # a text pair keeps its closing [SEP] as the tokenizer's own truncation does; joined rows
            # end where the cut falls (an eos after a cut response would say it ended)
            r = r[: max_length - len(p) - len(end)] + end if pair else r[: max_length - len(p)]
        rows.append((p, r))
    input_ids, attention_mask = padded([p + r for p, r in rows], pad_id(tokenizer))
    response_mask = torch.zeros_like(attention_mask)
    token_type_ids = torch.zeros_like(attention_mask)
    for i, (p, r) in enumerate(rows):
        n = len(p) + len(r)
        response_mask[i, len(p) : n] = 1
        if types is not None:
            token_type_ids[i, : len(p)], token_type_ids[i, len(p) : n] = types
    out = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "response_mask": response_mask,
        "truncated": torch.tensor(truncated, dtype=torch.bool),
    }
    if types is not None:
        out["token_type_ids"] = token_type_ids
    return out
