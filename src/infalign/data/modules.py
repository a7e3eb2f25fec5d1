"""``PreferenceDataModule``: HH-RLHF / TL;DR comparisons as train/test preference batches and
as prompt lists (for RL, calibration and evaluation).

Pipeline per split: read records (:func:`~infalign.data.formats.load_records`) -> parse, counting
malformed records -> (no test split, or a local ``train_file`` without ``test_file``: hold out
``val_fraction`` of the train prompts) -> drop pairs over the token limits (prompts measured after
``render_prompt``, e.g. the policy's chat template) -> optionally cap at ``max_examples`` (a seeded
subset, file order kept).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np

from infalign.data.batches import make_preference_dataloader
from infalign.data.formats import (
    DATASETS,
    MissingSplitError,
    ParseReport,
    PreferenceExample,
    filter_by_length,
    held_out,
    load_records,
    parse_records,
    prompt_key,
)
from infalign.errors import ConfigError, require
from infalign.models.builders import load_tokenizer

log = logging.getLogger(__name__)

__all__ = ["SPLITS", "PreferenceDataModule"]

SPLITS = ("train", "test")


def refuse_same_split_file(train_file: str | None, test_file: str | None) -> None:
    """A ConfigError of ``data.test_file`` when it is ``data.train_file`` (also through another spelling of
    the path): the evaluation prompts would be training prompts, and every held-out figure optimistic."""
    if train_file and test_file and Path(train_file).expanduser().resolve() == Path(test_file).expanduser().resolve():
        raise ConfigError("data.test_file", test_file, "a file other than data.train_file, or null",
                          "the evaluation prompts would be training prompts; null holds out data.val_fraction "
                          "of the train file's prompts")


class PreferenceDataModule(L.LightningDataModule):
    """Preference pairs of one public dataset, ready for :class:`RewardModelModule`.

    Args:
        dataset: ``'hh'`` (Anthropic HH-RLHF) or ``'tldr'`` (``summarize_from_feedback``).
        name_or_path: hub dataset id, a local directory (``<dir>/<data_dir>/{train,test}.jsonl[.gz]``)
            or a single local ``.jsonl[.gz]`` file; ``None`` = the dataset's hub id, or only the
            ``*_file`` overrides when one is given.
        data_dir: HH subset (``helpful-base``, ``harmless-base``, ...).
        train_file, test_file: local ``.jsonl[.gz]`` files overriding those splits.
        tokenizer_name_or_path, tokenizer: the tokenizer that measures lengths (the pipeline passes the
            policy's: the length filter keeps what the policy reads) and, without ``reward_tokenizer``,
            encodes the loaders' batches; an object wins over a name.
        reward_tokenizer, pair, prompt_format, reward_max_length: how :meth:`train_dataloader` /
            :meth:`val_dataloader` encode a batch for a reward model -- its tokenizer, ``reward.input=pair``,
            ``reward.prompt_format`` and ``reward.max_length`` (None: no cut), the rows the scorer reads
            (:func:`~infalign.models.reward.reward_model_inputs`). Without ``reward_tokenizer`` the rows are
            ``tokenizer``'s and cut to the length filter's budget, ``max_prompt_tokens +
            max_response_tokens + 1`` (the eos).
        max_prompt_tokens, max_response_tokens: drop longer pairs (``None`` = no limit).
        batch_size: pairs per batch (a batch has ``2 * batch_size`` rows).
        max_examples: keep at most this many pairs per split (a seeded subset).
        seed: shuffling of batches and prompt order, and the ``max_examples`` subset.
        val_fraction: share of train *prompts* held out as the test split when the source has no
            test split (hash of the prompt text, independent of ``seed``).
        test_split: the source's held-out split name (default: ``test`` for HH, ``validation`` for
            TL;DR).
        render_prompt: how the policy will see a batch of prompts (e.g. the chat template); the
            prompt-length limit applies to the rendered prompts. ``None`` = the text as is.

    A ``train_file`` without ``test_file`` never sends the test split to ``name_or_path``: the
    test split is held out of the train file (``val_fraction``), with a warning saying so.
    """

    def __init__(
        self,
        dataset: str = "hh",
        name_or_path: str | None = None,
        data_dir: str | None = None,
        train_file: str | None = None,
        test_file: str | None = None,
        tokenizer_name_or_path: str | None = None,
        tokenizer=None,
        max_prompt_tokens: int | None = None,
        max_response_tokens: int | None = None,
        batch_size: int = 32,
        max_examples: int | None = None,
        seed: int = 0,
        val_fraction: float = 0.05,
        test_split: str | None = None,
        render_prompt: Callable[[list[str]], list[str]] | None = None,
        reward_tokenizer=None,
        pair: bool = False,
        prompt_format: str = "full",
        reward_max_length: int | None = None,
    ):
        super().__init__()
        require(dataset in DATASETS, "data.dataset", dataset, f"one of {sorted(DATASETS)}")
        require(int(batch_size) >= 1, "data.batch_size", batch_size, ">= 1")
        require(0 < val_fraction < 1, "data.val_fraction", val_fraction, "in (0, 1)")
        for key, value in (
            ("max_prompt_tokens", max_prompt_tokens),
            ("max_response_tokens", max_response_tokens),
            ("max_examples", max_examples),
        ):
            require(value is None or int(value) >= 1, f"data.{key}", value, "null or >= 1")
        self.save_hyperparameters(ignore=["tokenizer", "render_prompt", "reward_tokenizer"])
        self.reward_tokenizer = reward_tokenizer
        self.format = DATASETS[dataset]
        self.test_split = test_split or self.format.test_split
        self.files = {"train": train_file, self.test_split: test_file}
        self.file_keys = {"train": "data.train_file", self.test_split: "data.test_file"}
        has_files = any(self.files.values())
        self.source = name_or_path or (None if has_files else self.format.hub_name)
        # a local train file alone: its held-out part is the test split (never the hub's test data)
        self.hold_out_of_train_file = bool(train_file) and not test_file
        self.render_prompt = render_prompt
        self._tokenizer = tokenizer
        self._pairs: dict[str, list[PreferenceExample]] = {}
        self.reports: dict[str, ParseReport] = {}

    # ------------------------------------------------------------------ tokenizer
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            name = self.hparams.tokenizer_name_or_path
            if name is None:
                raise ConfigError(
                    "data.tokenizer_name_or_path",
                    None,
                    "a tokenizer name or local path",
                    "needed for token-length limits and batches",
                )
            self._tokenizer = load_tokenizer(name, "right", key="data.tokenizer_name_or_path")
        return self._tokenizer

    # ------------------------------------------------------------------ loading
    def _read(self, split: str) -> tuple[list[PreferenceExample], ParseReport]:
        if split == self.test_split and self.hold_out_of_train_file:
            raise MissingSplitError(
                f"data.test_file is not set: holding out data.val_fraction="
                f"{self.hparams.val_fraction} of the prompts of data.train_file as the test split"
            )
        where, records = load_records(
            self.source,
            split,
            self.hparams.data_dir,
            self.files,
            config=self.format.hub_config,
            keys=self.file_keys,
            columns=self.format.columns,
        )
        try:
            return parse_records(records, self.format.parse, where)
        except ConfigError:
            raise
        except ValueError as exc:  # no usable pair (an empty file, every record malformed): the run's one block
            key, value = self._split_key(split)
            fmt = f"a dataset with usable preference pairs in data.source={self.hparams.dataset}'s format"
            if " 0 records" not in str(exc):  # records, none of them usable: often another dataset's format
                fmt += " (or the data.source whose format these records are)"
            raise ConfigError(key, str(value), fmt, str(exc)) from exc

    def prepare_data(self) -> None:
        """Fill the ``datasets`` cache for hub sources (Lightning calls this on one process)."""
        for name in ("train", self.test_split):
            if name == self.test_split and self.hold_out_of_train_file:
                continue
            if not self.files.get(name) and self.source and not Path(self.source).exists():
                try:
                    load_records(  # (the cache only: setup builds the rows, once)
                        self.source, name, self.hparams.data_dir, config=self.format.hub_config, records=False
                    )
                except MissingSplitError:
                    pass

    def setup(self, stage: str | None = None) -> None:
        """Build both splits once (idempotent): parse, hold out if needed, filter, cap."""
        if self._pairs:
            return
        hp = self.hparams
        refuse_same_split_file(self.files.get("train"), self.files.get(self.test_split))
        train, train_report = self._read("train")
        try:
            test, test_report = self._read(self.test_split)
            kept = self._drop_train_prompts(train, test, test_report)
            if test and not kept:  # (the key of the setting that gives the test split: its file, else the dataset)
                raise ConfigError(*self._split_key(self.test_split), "a test split with prompts that are not train "
                                  "prompts", f"{test_report.source}: every test prompt is also a train prompt; give a "
                                  "test split with other prompts (data.test_file) or none (then data.val_fraction is "
                                  "held out)")
            test = kept
        except MissingSplitError as exc:
            train, test, test_report = self._hold_out(train, train_report, exc)
        for i, (split, pairs, report) in enumerate(
            (("train", train, train_report), ("test", test, test_report))
        ):
            if hp.max_prompt_tokens is not None or hp.max_response_tokens is not None:
                try:
                    pairs = filter_by_length(
                        pairs,
                        self.tokenizer,
                        hp.max_prompt_tokens,
                        hp.max_response_tokens,
                        report,
                        self.render_prompt,
                    )
                except ConfigError:
                    raise
                except ValueError as exc:  # every pair too long: the key of the limit that excluded them
                    key = self._excluding_limit(pairs)
                    raise ConfigError(key, hp[key.removeprefix("data.")], "a limit some pairs fit",
                                      str(exc)) from exc
            if hp.max_examples is not None and len(pairs) > hp.max_examples:
                rng = np.random.default_rng([hp.seed, i])
                pairs = [pairs[j] for j in sorted(rng.choice(len(pairs), hp.max_examples, False))]
            report.kept = len(pairs)
            self._pairs[split], self.reports[split] = pairs, report
            log.info("%s split: %s", split, report.summary())

    def _excluding_limit(self, pairs: list[PreferenceExample]) -> str:
        """``data.max_prompt_tokens`` when it alone leaves no pair (both limits excluded them all), else
        ``data.max_response_tokens``: the key a ConfigError of "every pair too long" names."""
        hp = self.hparams
        if hp.max_prompt_tokens is None:
            return "data.max_response_tokens"
        try:
            filter_by_length(pairs, self.tokenizer, hp.max_prompt_tokens, None, ParseReport("probe"),
                             self.render_prompt)
        except ValueError:
            return "data.max_prompt_tokens"
        return "data.max_response_tokens"

    def _split_key(self, split: str) -> tuple[str, str | None]:
        """``(key, value)`` of the setting that gives ``split``: its file (``data.test_file``), else the dataset
        (``data.name_or_path``)."""
        if self.files.get(split):
            return self.file_keys[split], self.files[split]
        return "data.name_or_path", self.source

    @staticmethod
    def _drop_train_prompts(train: list[PreferenceExample], test: list[PreferenceExample],
                            report: ParseReport) -> list[PreferenceExample]:
        """The test pairs whose prompt is not a train prompt: two published splits can share prompts
        (HH's red-team openers recur), and a held-out win rate on prompts the policy was trained on
        would be optimistic. Prompts are compared as a chat shows them (:func:`~infalign.data.formats.prompt_key`:
        two texts that differ only in the whitespace around their turns are one prompt). The count is
        ``report.in_train``; the callers say what none left means (a test split that is all train prompts; a
        hold-out that left none)."""
        seen = {prompt_key(p.prompt) for p in train}
        kept = [p for p in test if prompt_key(p.prompt) not in seen]
        report.in_train = len(test) - len(kept)
        if report.in_train:
            log.warning("%s: %d of %d test pairs dropped: their prompt is also a train prompt",
                        report.source, report.in_train, len(test))
        return kept

    def _hold_out(self, train: list[PreferenceExample], train_report: ParseReport, why: Exception):
        """``(train, test, test_report)``: the prompts with :func:`held_out` below
        ``val_fraction`` become the test split."""
        fraction = self.hparams.val_fraction
        is_test = [held_out(p.prompt, fraction) for p in train]
        test = [p for p, t in zip(train, is_test) if t]
        train = [p for p, t in zip(train, is_test) if not t]
        train_report.held_out = len(test)
        test_report = ParseReport(
            f"{train_report.source} (held out, val_fraction={fraction})",
            total=len(test),
            usable=len(test),
        )
        log.warning("%s: %d of %d train pairs held out", why, len(test), train_report.usable)
        if test and train:  # a held-out prompt whose whitespace variant stayed in train (prompt_key): none left is
            test = self._drop_train_prompts(train, test, test_report)  # the block below's
        if not test or not train:  # (a ConfigError: the run's one block and exit 2, not a traceback)
            raise ConfigError(
                "data.val_fraction", fraction, "a fraction that leaves prompts on both sides (each prompt is held "
                "out by a hash of its text: the fraction holds on average), or data.test_file",
                f"{train_report.source}: holding out data.val_fraction={fraction} of {train_report.usable} usable "
                f"pairs leaves {len(train)} train / {len(test)} test pairs") from why
        return train, test, test_report

    # ------------------------------------------------------------------ access
    def pairs(self, split: str) -> list[PreferenceExample]:
        """The preference pairs of ``split`` (``train`` / ``test``), after filtering."""
        require(split in SPLITS, "split", split, f"one of {SPLITS}")
        self.setup()
        return self._pairs[split]

    def prompts(self, split: str, n: int | None = None) -> list[str]:
        """The first ``n`` distinct prompts of ``split`` (all when ``None``), in a seeded order
        (so ``prompts(s, n)`` is a prefix of ``prompts(s, m)`` for ``n < m``). Distinct as a chat shows
        them (:func:`~infalign.data.formats.prompt_key`, as the train / test split compares them): two
        prompts that differ only in the whitespace around their turns render to one chat prompt, and
        kept apart they would count that prompt twice in every mean over prompts; the first one's text
        is kept."""
        first: dict = {}
        for pair in self.pairs(split):
            first.setdefault(prompt_key(pair.prompt), pair.prompt)
        unique = list(first.values())
        order = np.random.default_rng([self.hparams.seed, 2]).permutation(len(unique))
        key = "data.train_prompts" if split == "train" else "data.eval_prompts"  # (a ConfigError: exit 2)
        require(n is None or n <= len(unique), key, n,
                f"at most {len(unique)}: {self.reports[split].source} has {len(unique)} distinct {split!r} prompts "
                "after filtering")
        return [unique[j] for j in order[:n]]

    def _loader(self, split: str, shuffle: bool):
        # Reuse the reward-model collation (one encoding path for every caller).
        hp = self.hparams
        prompts, chosen, rejected = (list(c) for c in zip(*self.pairs(split)))
        if self.reward_tokenizer is not None:  # its rows: cut as the scorer cuts them (the budget counts policy tokens)
            max_length = hp.reward_max_length
        elif hp.max_prompt_tokens is not None and hp.max_response_tokens is not None:
            max_length = hp.max_prompt_tokens + hp.max_response_tokens + 1  # + the collator's eos
        else:
            max_length = None
        return make_preference_dataloader(
            self.reward_tokenizer or self.tokenizer,
            prompts,
            chosen,
            rejected,
            hp.batch_size,
            shuffle=shuffle,
            seed=hp.seed,
            max_length=max_length,
            pair=hp.pair,
            prompt_format=hp.prompt_format,
        )

    def train_dataloader(self):
        """Seeded-shuffled batches of the train pairs: ``input_ids`` / ``attention_mask`` of
        ``2B`` rows (``B`` prompt+chosen, then ``B`` prompt+rejected)."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        """Batches of the test pairs, in order."""
        return self._loader("test", shuffle=False)
