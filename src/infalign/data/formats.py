"""Preference data on disk or on the hub -> ``PreferenceExample(prompt, chosen, rejected)``.

No Lightning here: reading records, parsing the two public formats, length filtering.

**Anthropic HH-RLHF** (``Anthropic/hh-rlhf``, ``data_dir`` ``helpful-base`` / ``harmless-base`` /
...; files ``<data_dir>/{train,test}.jsonl.gz``). One record per line::

    {"chosen": "\\n\\nHuman: Hi\\n\\nAssistant: Hello!\\n\\nHuman: ...\\n\\nAssistant: Sure, ...",
     "rejected": "\\n\\nHuman: Hi\\n\\nAssistant: Hello!\\n\\nHuman: ...\\n\\nAssistant: No."}

Each side is a whole dialogue of alternating ``"\\n\\nHuman: "`` / ``"\\n\\nAssistant: "`` turns; the
first may lack its blank line (``"Human: Hi\\n\\nAssistant: ..."``, as some exports write it), any other
text before the first turn makes the record malformed (``text_before_first_turn``).
``prompt`` = everything up to and including the **last** ``"\\n\\nAssistant:"``; ``response`` =
what follows, minus one leading space. Usable only if both sides share the prompt and both
responses are non-empty.

**Reddit TL;DR comparisons** (OpenAI's ``summarize_from_feedback`` comparisons, splits ``train`` /
``validation``; also the original release's JSON-lines batches). One record::

    {"info": {"id": ..., "post": ..., "title": ..., "subreddit": ...},
     "summaries": [{"text": " summary A", ...}, {"text": " summary B", ...}], "choice": 0, ...}

``prompt`` = :data:`TLDR_TEMPLATE` (the ``SUBREDDIT`` / ``TITLE`` lines are omitted when the field
is missing or null); ``chosen`` = ``summaries[choice].text``, ``rejected`` = the other, both
stripped of surrounding whitespace. Records without a post but with an ``article`` (the CNN/DM
comparisons in the validation split) are counted as ``not_reddit``.

On the hub, ``openai/summarize_from_feedback`` holds only a loading script, which ``datasets`` >= 4
no longer runs. The default TL;DR source (:data:`DATASETS`) is therefore
``cleanrl/summarize_from_feedback_oai_preprocessing_1704563162``: the same comparisons as parquet files
(``data/{train,validation,validation_cnndm}-*.parquet``, CNN/DM moved to its own split), every record's
``info`` / ``summaries`` / ``choice`` as released (the columns it adds are ignored) -- the preference
data of the N+ implementation-details study whose Pythia TL;DR models ``conf/experiment/tldr_bon.yaml``
uses (docs/architecture.md §5, "Data sources").

Every record is either usable or *malformed* with one reason (:data:`MALFORMED_REASONS`);
malformed records are counted in a :class:`ParseReport` and logged, never silently dropped.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

__all__ = [
    "DATASETS",
    "DataFileError",
    "HH_ASSISTANT",
    "MALFORMED_REASONS",
    "prompt_key",
    "TLDR_TEMPLATE",
    "DatasetFormat",
    "Malformed",
    "MissingSplitError",
    "ParseReport",
    "PreferenceExample",
    "RawRecord",
    "chat_messages",
    "check_data_file",
    "filter_by_length",
    "held_out",
    "is_local",
    "load_records",
    "local_split_file",
    "parse_hh",
    "parse_hh_record",
    "parse_records",
    "parse_tldr",
    "parse_tldr_record",
    "read_jsonl",
    "split_hh_dialogue",
    "tldr_prompt",
]

HH_ASSISTANT = "\n\nAssistant:"
HH_HUMAN = "\n\nHuman:"
# OpenAI summarize-from-feedback's query format (also TRL's trl-lib/tldr and cleanrl's TL;DR models):
# blank lines between the fields. The summaries follow "TL;DR:" after one space.
TLDR_TEMPLATE = "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:"

MALFORMED_REASONS = {
    "invalid_json": "the line is not valid JSON",
    "not_a_dict": "the record is not a JSON object",
    "missing_field": "a required field is absent or null",
    "bad_field_type": "a required field has the wrong type (e.g. a number where text belongs)",
    "no_assistant_turn": "HH: a dialogue has no '\\n\\nAssistant:' turn",
    "response_has_human_turn": "HH: the dialogue continues with a Human turn after the last Assistant turn",
    "text_before_first_turn": "HH: the dialogue does not start with a 'Human:' turn (text before its first turn)",
    "prompt_mismatch": "HH: chosen and rejected differ before their last Assistant turn",
    "empty_prompt": "the prompt has no text (HH: no non-empty Human turn; TL;DR: an empty post)",
    "empty_response": "a response / summary is empty or whitespace",
    "tie": "chosen and rejected are the same text (no preference to learn; it would count as an error)",
    "bad_choice": "TL;DR: 'choice' is not 0 or 1",
    "bad_summaries": "TL;DR: 'summaries' is not a list of two objects with a 'text' string",
    "not_reddit": "TL;DR: no post but an article (a CNN/DM comparison)",
    "invalid_text": "a text is not valid Unicode (a lone surrogate, e.g. an escaped \\ud83d alone): no tokenizer "
                    "takes it",
}
_N_EXAMPLES = 5  # malformed records quoted in a report


class PreferenceExample(NamedTuple):
    """One comparison; a plain tuple, so a list of them is what the preference collator takes."""

    prompt: str
    chosen: str
    rejected: str


class RawRecord(NamedTuple):
    """One record as read: ``line`` (1-based line in the file, or row number on the hub),
    ``value`` (the decoded JSON) or ``error`` (why it could not be decoded)."""

    line: int
    value: Any = None
    error: str | None = None


class Malformed(ValueError):
    """A record that cannot be used; ``reason`` is a key of :data:`MALFORMED_REASONS`."""

    def __init__(self, reason: str, detail: str = ""):
        assert reason in MALFORMED_REASONS, reason
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


class MissingSplitError(FileNotFoundError):
    """The source has no such split (the caller may hold out part of another split instead)."""


@dataclass
class ParseReport:
    """What became of a source's records.

    ``total`` records read = ``usable`` + ``sum(malformed.values())``. Of the usable pairs,
    ``held_out`` went to a held-out split, ``in_train`` (a test split) were dropped because their
    prompt is also a train prompt, ``too_long`` failed the token-length filter, and ``kept`` remain
    (fewer still if ``max_examples`` capped them). ``examples`` quotes the first malformed records
    as ``(line, "reason: detail")`` (the detail, when there is one, names the field or the value).
    """

    source: str
    total: int = 0
    usable: int = 0
    malformed: dict[str, int] = field(default_factory=dict)
    examples: list[tuple[int, str]] = field(default_factory=list)
    held_out: int = 0
    in_train: int = 0
    too_long: int = 0
    kept: int = 0

    @property
    def n_malformed(self) -> int:
        return sum(self.malformed.values())

    def parsed(self) -> str:
        """What parsing found: records, usable, malformed by reason (and the first ones)."""
        bad = ", ".join(f"{k}={v}" for k, v in sorted(self.malformed.items())) or "none"
        first = "; ".join(f"line {n}: {r}" for n, r in self.examples)
        return f"{self.source}: {self.total} records, {self.usable} usable, malformed: {bad}" + (
            f" (first: {first})" if first else "")

    def summary(self) -> str:
        """:meth:`parsed`, then what the split kept of the usable pairs."""
        return (
            self.parsed()
            + f", held out {self.held_out}" + (f", train prompts dropped {self.in_train}" if self.in_train else "")
            + f", too long {self.too_long}, kept {self.kept}"
        )

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------- reading records


LFS_POINTER = b"version https://git-lfs"
PARQUET_MAGIC = b"PAR1"  # a parquet file's first bytes


class DataFileError(ValueError):
    """A data file that cannot be read as JSON lines (a Git LFS pointer, a truncated or corrupt
    ``.gz``, not UTF-8); the message names the file and the config key."""


def _describe(path: Path, key: str | None) -> str:
    return f"{path}" + (f" ({key})" if key else "")


def read_jsonl(path: str | os.PathLike, key: str | None = None) -> list[RawRecord]:
    """Records of a ``.jsonl`` / ``.jsonl.gz`` file, one per non-blank line. A line that is not
    valid JSON becomes ``RawRecord(line, error=...)`` (counted as ``invalid_json`` later).

    Raises ``FileNotFoundError`` ("file not found: <path> (<key>)") and :class:`DataFileError` for
    a Git LFS pointer (a clone without ``git lfs pull``), a truncated / corrupt gzip file or a
    file that is not UTF-8 -- each naming the file and ``key``.
    """
    path = check_data_file(path, key)
    where = _describe(path, key)
    opener = gzip.open if path.suffix == ".gz" else open
    out: list[RawRecord] = []
    try:
        with opener(path, "rt", encoding="utf-8-sig") as fh:  # -sig: a leading byte-order mark is not data
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    out.append(RawRecord(n, json.loads(line)))
                except json.JSONDecodeError as exc:
                    # the decoder's own "line 2 column 1" counts lines inside this one line: the position instead
                    out.append(RawRecord(n, error=f"{exc.msg} at character {exc.pos + 1}"))
    except EOFError as exc:
        raise DataFileError(
            f"{where} is truncated (the gzip stream ends early after {len(out)} records): "
            f"download it again"
        ) from exc
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise DataFileError(f"{where} is not a valid gzip file ({exc}): download it again") from exc
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{where} is not UTF-8 text ({exc})") from exc
    return out


def check_data_file(path: str | os.PathLike, key: str | None = None) -> Path:
    """Cheap checks before any compute: ``path`` exists and is not a Git LFS pointer."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise DataFileError(f"{_describe(path, key)} is a directory, not a data file: name the .jsonl / .json file "
                            "in it")
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {_describe(path, key)}")
    with open(path, "rb") as fh:
        head = fh.read(len(LFS_POINTER))
    if head == LFS_POINTER:
        raise DataFileError(
            f"{_describe(path, key)} is a Git LFS pointer, not the data: fetch the real file "
            f"(git lfs pull, or download it from the dataset page)"
        )
    if head.startswith(PARQUET_MAGIC):  # (it failed later, in the world stage, as "not UTF-8 text")
        raise DataFileError(f"{_describe(path, key)} is a parquet file: local data files are JSON lines (.jsonl / "
                            ".jsonl.gz; a hub dataset's parquet files load through data.name_or_path=<its name>)")
    return path


_SUFFIXES = (".jsonl", ".jsonl.gz")


def local_split_file(root: str | os.PathLike, split: str, data_dir: str | None = None) -> Path:
    """``<root>/<data_dir>/<split>.jsonl[.gz]`` (the layout of a clone of ``Anthropic/hh-rlhf``).
    Raises :class:`MissingSplitError` listing the names tried and the JSON-lines files the directory holds
    (walkthrough: a TL;DR dir with ``test.jsonl`` held out part of train, naming only ``validation*``)."""
    base = Path(root).expanduser() / (data_dir or "")
    tried = [base / f"{split}{s}" for s in _SUFFIXES]
    for p in tried:
        if p.is_file():
            return p
    others = sorted(p.name for p in base.iterdir() if p.is_file() and p.name.endswith(_SUFFIXES)) \
        if base.is_dir() else []
    raise MissingSplitError(f"no {split!r} split in {base}: tried {', '.join(map(str, tried))}" + (
        f"; it holds {', '.join(others)} (data.train_file / data.test_file name a split's file directly)"
        if others else ""))


def is_local(name: str) -> bool:
    """Whether a ``data.name_or_path`` is a local path (else a hub dataset id)."""
    p = Path(name).expanduser()
    return (
        p.exists()
        or name.endswith(_SUFFIXES)
        or name.startswith(("/", ".", "~"))
        or name.count("/") > 1  # hub ids are 'name' or 'org/name'
    )


def load_records(
    source: str | None,
    split: str = "train",
    data_dir: str | None = None,
    files: dict[str, str | os.PathLike] | None = None,
    config: str | None = None,
    keys: dict[str, str] | None = None,
    columns: Sequence[str] | None = None,
    records: bool = True,
) -> tuple[str, list[RawRecord]]:
    """The raw records of one split, and a name for where they came from (for reports).

    Resolution, first match wins:

    1. ``files[split]`` -- a local ``.jsonl`` / ``.jsonl.gz`` file (the ``train_file`` /
       ``test_file`` overrides);
    2. ``source`` is a local file -- it is the ``train`` split (any other split is missing);
    3. ``source`` is a local directory -- :func:`local_split_file` (``<dir>/<data_dir>/<split>``);
    4. otherwise ``source`` is a hub dataset: ``datasets.load_dataset(source, config,
       data_dir=data_dir, split=split)`` (cached by ``datasets``; fails fast when offline).

    ``keys[split]`` names the config key of ``files[split]`` in messages (default
    ``data.<split>_file``). ``columns``: the fields the format's parser reads (:class:`DatasetFormat`) -- a hub
    split keeps those alone (cleanrl's TL;DR copy also holds ~3,400 token ids per row, ~12 GB as Python
    lists over its 92,858 train rows); ``records`` false: a hub split only fills ``datasets``' cache.
    Raises :class:`MissingSplitError` when the split does not exist,
    ``FileNotFoundError`` for a missing local path, :class:`DataFileError` for an unreadable file
    and ``OSError`` when the hub cannot be reached.
    """
    files = {k: v for k, v in (files or {}).items() if v}
    if split in files:
        key = (keys or {}).get(split, f"data.{split}_file")
        path = Path(files[split]).expanduser()
        return str(path), read_jsonl(path, key)
    if source is None:
        raise MissingSplitError(f"no {split!r} split: no file given and no data.name_or_path")
    if is_local(source):
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"data.name_or_path: local path does not exist: {path}")
        if path.is_file():
            if split != "train":
                raise MissingSplitError(f"{path} is a single file: it is the 'train' split only")
            return str(path), read_jsonl(path, "data.name_or_path")
        found = local_split_file(path, split, data_dir)
        return str(found), read_jsonl(found, "data.name_or_path")
    return _load_hub(source, split, data_dir, config, columns, records)


# Hub datasets that are a loading script only (datasets >= 4 refuses to run it): a copy with data files
# in the same record format, suggested when one is named; and the config a script needs where it still runs.
SCRIPT_ONLY_MIRRORS = {"openai/summarize_from_feedback": "cleanrl/summarize_from_feedback_oai_preprocessing_1704563162"}
SCRIPT_CONFIGS = {"openai/summarize_from_feedback": "comparisons"}


def _load_hub(name: str, split: str, data_dir: str | None, config: str | None,
              columns: Sequence[str] | None = None, records: bool = True):
    """``datasets.load_dataset(name, config, data_dir=..., split=...)`` as :class:`RawRecord` rows. A
    hub dataset that is a loading script only -- ``datasets`` >= 4 raises ``RuntimeError("Dataset
    scripts are no longer supported ...")`` for it -- is a :class:`~infalign.errors.ConfigError` naming
    ``data.name_or_path``, with a copy in parquet / JSON files to use instead
    (:data:`SCRIPT_ONLY_MIRRORS`) or local files. ``columns``: those the parser reads (the others are dropped
    before any row is built; a column the split lacks stays missing, for the parser to report); ``records``
    false: only fill ``datasets``' cache (``PreferenceDataModule.prepare_data``), no rows built."""
    import datasets

    config = config or SCRIPT_CONFIGS.get(name)
    where = f"hub:{name}" + (f"[{config}]" if config else "") + (f"/{data_dir}" if data_dir else "")
    where += f":{split}"
    try:
        ds = datasets.load_dataset(name, config, data_dir=data_dir, split=split)
    except ValueError as exc:
        if "split" in str(exc).lower():
            raise MissingSplitError(f"{where}: {exc}") from exc
        raise
    except RuntimeError as exc:
        if "script" not in str(exc).lower():
            raise
        from infalign.errors import ConfigError

        mirror = SCRIPT_ONLY_MIRRORS.get(name)
        raise ConfigError(
            "data.name_or_path", name,
            "a hub dataset with data files (parquet / JSON lines), or local files (data.train_file / data.test_file)",
            f"it is a loading script, which datasets {datasets.__version__} no longer runs: {exc}; "
            + (f"the same records as parquet: data.name_or_path={mirror}" if mirror else
               "use a copy of it with parquet data files (e.g. its refs/convert/parquet export)"),
        ) from exc
    except (OSError, ConnectionError) as exc:  # DatasetNotFoundError is a FileNotFoundError
        offline = os.environ.get("HF_DATASETS_OFFLINE") or os.environ.get("HF_HUB_OFFLINE")
        raise OSError(
            f"data.name_or_path={name!r} is not a local file or directory and could not be "
            f"loaded from the Hugging Face hub (offline={offline or 'unset'}): {exc}"
        ) from exc
    if not records:
        return where, []
    if columns is not None:
        ds = ds.select_columns([c for c in columns if c in ds.column_names])
    return where, [RawRecord(i + 1, row) for i, row in enumerate(ds)]


# ---------------------------------------------------------------------------- parsing


def _text(record: dict, key: str) -> str:
    if key not in record or record[key] is None:
        raise Malformed("missing_field", key)
    if not isinstance(record[key], str):
        raise Malformed("bad_field_type", f"{key} is {type(record[key]).__name__}")
    return record[key]


def split_hh_dialogue(dialogue: str) -> tuple[str, str]:
    """``(prompt, response)``: prompt up to and including the last ``"\\n\\nAssistant:"``,
    response after it without one leading space."""
    i = dialogue.rfind(HH_ASSISTANT)
    if i < 0:
        raise Malformed("no_assistant_turn")
    cut = i + len(HH_ASSISTANT)
    prompt, response = dialogue[:cut], dialogue[cut:]
    if HH_HUMAN in response:
        raise Malformed("response_has_human_turn")
    return prompt, response[1:] if response.startswith(" ") else response


def prompt_key(prompt: str) -> tuple[tuple[str, str], ...]:
    """What a prompt asks, as a chat template shows it: its :func:`split_turns` messages as (role,
    stripped text). Two dataset prompts that differ only in the whitespace around their turns (``"q1"`` /
    ``"q1 "``, ``"Human: q"`` / ``"\n\nHuman: q"``) have one key: the same prompt to a chat policy, and
    to the train / test split (``data/modules``). A prompt that is not a dialogue but quotes a turn marker
    (a TL;DR post quoting ``"\n\nHuman:"``) is one user turn, its text stripped. Texts are compared in Unicode
    NFC: ``"café"`` composed or decomposed is one prompt (walkthrough: a test prompt that differed from a
    train prompt only so was kept as held out)."""
    try:
        messages = split_turns(prompt)
    except Malformed:
        messages = _user_turn(prompt)
    return tuple((m["role"], unicodedata.normalize("NFC", m["content"])) for m in messages)


def split_turns(prompt: str) -> list[dict[str, str]]:
    """Chat messages of an HH-style prompt (``Human:``/``Assistant:`` turns, the first with or
    without its leading blank line, :func:`_turns`; the final empty ``Assistant:`` is dropped, the
    template adds the generation prompt); any other prompt is one user turn. Consecutive turns of
    one speaker (HH has some) become one message, their texts joined by a blank line: chat
    templates require alternating roles, and a marker must not end up inside a message's text. Text
    before the first turn of an HH-style prompt is :class:`Malformed` (``text_before_first_turn``;
    the loader counts such records, :func:`parse_hh_record`), never silently dropped."""
    if HH_HUMAN not in prompt and not prompt.lstrip().startswith(_HUMAN_START):
        return _user_turn(prompt)
    messages: list[dict[str, str]] = []
    for marker, text in _turns(prompt):
        role = "user" if marker == HH_HUMAN else "assistant"
        if not text.strip() and (messages or role == "assistant"):
            continue  # (an empty first Human turn stays: a chat starts with the user)
        if not messages and role == "assistant":
            messages.append({"role": "user", "content": ""})
        if messages and messages[-1]["role"] == role:  # one speaker twice in a row: one message
            messages[-1]["content"] += "\n\n" + text.strip()
        else:
            messages.append({"role": role, "content": text.strip()})
    return messages


_HUMAN_START = HH_HUMAN.lstrip()  # "Human:": a dialogue's first turn without its blank line


def chat_messages(prompt: str, dialogue: bool) -> list[dict[str, str]]:
    """The chat messages ``prompt`` is rendered from (a policy's chat template): with ``dialogue`` (an HH
    prompt: ``pipeline/settings.DIALOGUE_SOURCES``) its turns (:func:`split_turns`); otherwise one user
    turn, its text as is -- a TL;DR post that quotes ``"\n\nHuman:"`` is text, not turns (nor malformed)."""
    return split_turns(prompt) if dialogue else _user_turn(prompt)


def _user_turn(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt.strip()}]


def _turns(dialogue: str) -> list[tuple[str, str]]:
    """``[(marker, text), ...]`` of an HH dialogue, split at every ``"\\n\\nHuman:"`` /
    ``"\\n\\nAssistant:"`` marker in order. A dialogue that starts with ``"Human:"`` (after any
    whitespace) without the blank line starts with that Human turn; any other non-blank text before
    the first marker is :class:`Malformed` (``text_before_first_turn``)."""
    head = dialogue.lstrip()
    if head.startswith(_HUMAN_START):
        dialogue = HH_HUMAN + head[len(_HUMAN_START):]
    parts = re.split(f"({re.escape(HH_HUMAN)}|{re.escape(HH_ASSISTANT)})", dialogue)
    if parts[0].strip():
        raise Malformed("text_before_first_turn", repr(parts[0][:60]))
    return list(zip(parts[1::2], parts[2::2]))


def parse_hh_record(record: Any) -> PreferenceExample:
    """One HH-RLHF record -> :class:`PreferenceExample`, or :class:`Malformed`."""
    if not isinstance(record, dict):
        raise Malformed("not_a_dict")
    chosen_text, rejected_text = _text(record, "chosen"), _text(record, "rejected")
    prompt, chosen = split_hh_dialogue(chosen_text)
    prompt_r, rejected = split_hh_dialogue(rejected_text)
    if prompt != prompt_r:
        raise Malformed("prompt_mismatch")
    turns = _turns(prompt)  # text before the first Human turn: Malformed (a chat rendering would lose it)
    if not any(marker == HH_HUMAN and text.strip() for marker, text in turns):  # nothing asked
        raise Malformed("empty_prompt", "no Human turn with text")
    if not chosen.strip() or not rejected.strip():
        raise Malformed("empty_response")
    if chosen.strip() == rejected.strip():
        raise Malformed("tie")
    return PreferenceExample(prompt, chosen, rejected)


def tldr_prompt(info: dict) -> str:
    """:data:`TLDR_TEMPLATE` filled from ``info`` (fields stripped; a missing / null / empty
    ``subreddit`` or ``title`` drops its line)."""
    post = _text(info, "post").strip()
    if not post:  # every such record would collapse onto one prompt with nothing to summarise
        raise Malformed("empty_prompt", "info.post is empty")
    lines = []
    for key, line in (("subreddit", "SUBREDDIT: r/{}"), ("title", "TITLE: {}")):
        value = info.get(key)
        if value is not None and not isinstance(value, str):
            raise Malformed("bad_field_type", f"info.{key} is {type(value).__name__}")
        if value and value.strip():
            lines.append(line.format(value.strip()))
    return "\n\n".join([*lines, f"POST: {post}", "TL;DR:"])


def parse_tldr_record(record: Any) -> PreferenceExample:
    """One ``summarize_from_feedback`` comparison -> :class:`PreferenceExample`, or
    :class:`Malformed`."""
    if not isinstance(record, dict):
        raise Malformed("not_a_dict")
    info = record.get("info")
    if info is None:
        raise Malformed("missing_field", "info")
    if not isinstance(info, dict):
        raise Malformed("bad_field_type", "info")
    if info.get("post") is None and info.get("article"):
        raise Malformed("not_reddit")
    prompt = tldr_prompt(info)
    summaries, choice = record.get("summaries"), record.get("choice")
    if summaries is None:
        raise Malformed("missing_field", "summaries")
    if (
        not isinstance(summaries, list)
        or len(summaries) != 2
        or not all(isinstance(s, dict) and isinstance(s.get("text"), str) for s in summaries)
    ):
        raise Malformed("bad_summaries")
    if choice is None:
        raise Malformed("missing_field", "choice")
    # 0 / 1, also as 0.0 / 1.0 (a pandas export writes a column with nulls as floats); never a bool
    if isinstance(choice, bool) or not isinstance(choice, int | float) or choice not in (0, 1):
        raise Malformed("bad_choice", repr(choice))
    choice = int(choice)
    chosen, rejected = (summaries[i]["text"].strip() for i in (choice, 1 - choice))
    if not chosen or not rejected:
        raise Malformed("empty_response")
    if chosen == rejected:
        raise Malformed("tie")
    return PreferenceExample(prompt, chosen, rejected)


def parse_records(
    records: Iterable[RawRecord],
    parse: Callable[[Any], PreferenceExample],
    source: str,
) -> tuple[list[PreferenceExample], ParseReport]:
    """Apply ``parse`` to every record; count malformed ones by reason (logged as a warning).

    Raises ``ValueError`` naming ``source`` and the malformed counts when nothing is usable.
    """
    pairs: list[PreferenceExample] = []
    counts: Counter[str] = Counter()
    examples: list[tuple[int, str]] = []
    first_keys: list[str] | None = None  # of the first malformed record: says what format the file is in
    total = 0
    for rec in records:
        total += 1
        try:
            if rec.error is not None:
                raise Malformed("invalid_json", rec.error)
            pairs.append(_valid_text(parse(rec.value)))
        except Malformed as exc:
            counts[exc.reason] += 1
            if len(examples) < _N_EXAMPLES:
                examples.append((rec.line, str(exc)))  # the reason and its detail (the field, the value)
            if first_keys is None and isinstance(rec.value, dict):
                first_keys = sorted(rec.value)
    report = ParseReport(source, total, len(pairs), dict(counts), examples, kept=len(pairs))
    if not pairs:
        raise ValueError(
            f"no usable preference pairs in {source}: {total} records, "
            f"malformed {dict(counts) or 'none'}" + (f" (first: {examples})" if examples else "")
            + (f"; the first malformed record's keys are {first_keys}" if first_keys is not None else "")
        )
    if counts:  # (what the split keeps -- held out, too long -- is said once it is known: data/modules.py)
        log.warning("malformed records skipped -- %s", report.parsed())
    return pairs, report


def _valid_text(example: PreferenceExample) -> PreferenceExample:
    """``example``, or :class:`Malformed` ``invalid_text`` when one of its texts cannot be encoded (valid JSON may
    decode to a lone surrogate; the tokenizers then failed with a TypeError naming no record)."""
    for name, text in zip(PreferenceExample._fields, example):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise Malformed("invalid_text", f"{name}: {exc.reason} at {exc.start}") from None
    return example


def parse_hh(records: Iterable[RawRecord], source: str):
    """:func:`parse_records` with :func:`parse_hh_record`."""
    return parse_records(records, parse_hh_record, source)


def parse_tldr(records: Iterable[RawRecord], source: str):
    """:func:`parse_records` with :func:`parse_tldr_record`."""
    return parse_records(records, parse_tldr_record, source)


@dataclass(frozen=True)
class DatasetFormat:
    """A public preference format: its parser and where it lives on the hub."""

    parse: Callable[[Any], PreferenceExample]
    hub_name: str
    hub_config: str | None
    test_split: str
    columns: tuple[str, ...] | None = None  # the fields ``parse`` reads (a hub split keeps those alone)


DATASETS: dict[str, DatasetFormat] = {
    "hh": DatasetFormat(parse_hh_record, "Anthropic/hh-rlhf", None, "test", ("chosen", "rejected")),
    "tldr": DatasetFormat(parse_tldr_record, SCRIPT_ONLY_MIRRORS["openai/summarize_from_feedback"], None, "validation",
                          ("info", "summaries", "choice")),
}


# ---------------------------------------------------------------------------- splitting, filtering


def held_out(prompt: str, fraction: float, seed: int = 0) -> bool:
    """Whether ``prompt`` belongs to the held-out split: a seeded BLAKE2 hash of the prompt text
    below ``fraction``. All comparisons of one prompt land on the same side, so train and
    held-out prompts are disjoint."""
    h = hashlib.blake2b(f"{seed}\0{prompt}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64 < fraction


def filter_by_length(
    pairs: list[PreferenceExample],
    tokenizer,
    max_prompt_tokens: int | None,
    max_response_tokens: int | None,
    report: ParseReport,
    render_prompt: Callable[[list[str]], list[str]] | None = None,
) -> list[PreferenceExample]:
    """Drop pairs whose prompt has more than ``max_prompt_tokens`` tokens or whose chosen or
    rejected response has more than ``max_response_tokens``. ``None`` = no limit.

    The prompt is measured as the policy will be fed it: ``render_prompt(prompts)`` (e.g. the chat
    template; identity when ``None``) tokenised as the sampler does, *with* the tokenizer's leading
    special tokens (BOS; :func:`~infalign.models.builders.encode_prompts`).
    Responses are text tokens without special tokens (the collator's eos comes on top). Updates
    ``report.too_long`` / ``kept``; raises ``ValueError`` if every pair is too long."""
    if not pairs or (max_prompt_tokens is None and max_response_tokens is None):
        return pairs

    from infalign.models.builders import encode_prompts

    def n_tokens(texts: list[str], prompt: bool = False) -> list[int]:
        ids = encode_prompts(tokenizer, texts) if prompt else tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [len(i) for i in ids]

    inf = float("inf")
    p_max = inf if max_prompt_tokens is None else max_prompt_tokens
    r_max = inf if max_response_tokens is None else max_response_tokens
    prompts = [p.prompt for p in pairs]
    rendered = render_prompt(prompts) if render_prompt is not None else prompts
    p_len = n_tokens(rendered, prompt=True) if p_max < inf else [0] * len(pairs)
    c_len = n_tokens([p.chosen for p in pairs]) if r_max < inf else [0] * len(pairs)
    r_len = n_tokens([p.rejected for p in pairs]) if r_max < inf else [0] * len(pairs)
    kept = [
        pair
        for pair, lp, lc, lr in zip(pairs, p_len, c_len, r_len)
        if lp <= p_max and lc <= r_max and lr <= r_max
    ]
    report.too_long += len(pairs) - len(kept)
    report.kept = len(kept)
    if not kept:
        raise ValueError(
            f"all {len(pairs)} pairs of {report.source} are longer than "
            f"max_prompt_tokens={max_prompt_tokens} / max_response_tokens={max_response_tokens}"
            + (" (prompts measured after the chat template)" if render_prompt else "")
        )
    return kept
