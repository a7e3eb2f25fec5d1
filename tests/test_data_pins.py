"""Pins found by mutation testing of src/infalign/data: an HH prompt whose only text is an Assistant's, the
seeded hash of the held-out split, TL;DR records with three summaries or with both a post and an article, the
``max_examples`` subset of each split (its seeded stream, file order kept) and the row length the preference
and LM loaders cut to. Each test runs in well under a second on hand-written
records in the real formats (the layouts of data/formats.py's docstring; docs/architecture.md §5, "Data
sources"); nothing touches the network."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from infalign.data import Malformed, PreferenceDataModule
from infalign.data.batches import PromptResponseCollator, make_preference_dataloader
from infalign.data.formats import held_out, parse_hh_record, parse_tldr_record
from test_data import word_tokenizer


def _hh(prompt: str, chosen: str, rejected: str) -> dict:
    """An HH-RLHF record: each side is the whole dialogue, the response after one space."""
    return {"chosen": f"{prompt} {chosen}", "rejected": f"{prompt} {rejected}"}


def _jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


# ---------------------------------------------------------------------------- data/formats.py: HH parsing


def test_a_prompt_whose_only_text_is_an_assistant_turn_is_empty_prompt():
    """``empty_prompt`` is "no *Human* turn with text" (MALFORMED_REASONS): a dialogue whose Human turns are
    all blank asks nothing, even when an earlier Assistant turn has text -- it would be sampled and scored as
    a real prompt. Control: the same dialogue with a question in its second Human turn parses.
    Mutation testing: "any turn with text" (the Assistant's counted) went unnoticed -- the existing case has
    no Assistant text."""
    blank = "\n\nHuman: \n\nAssistant: Hi there.\n\nHuman:   \n\nAssistant:"
    with pytest.raises(Malformed) as err:
        parse_hh_record(_hh(blank, "yes", "no"))
    assert err.value.reason == "empty_prompt"
    asked = "\n\nHuman: \n\nAssistant: Hi there.\n\nHuman: Why?\n\nAssistant:"
    assert parse_hh_record(_hh(asked, "yes", "no")) == (asked, "yes", "no")


# ---------------------------------------------------------------------------- data/formats.py: TL;DR parsing


def test_three_summaries_are_bad_summaries_not_the_first_two():
    """A comparison is of *two* summaries (MALFORMED_REASONS["bad_summaries"]: "not a list of two objects with
    a 'text' string"): a third one means the record is not the comparison the parser reads, and which two
    were compared is unknown -- it is malformed, not the first two. Control: the same record with two parses.
    Mutation testing: ``len(summaries) < 2`` (three accepted) went unnoticed."""
    two = {"info": {"post": "p", "title": "t", "subreddit": "s"},
           "summaries": [{"text": " a"}, {"text": " b"}], "choice": 1}
    assert parse_tldr_record(two) == ("SUBREDDIT: r/s\n\nTITLE: t\n\nPOST: p\n\nTL;DR:", "b", "a")
    with pytest.raises(Malformed) as err:
        parse_tldr_record({**two, "summaries": [{"text": " a"}, {"text": " b"}, {"text": " c"}]})
    assert err.value.reason == "bad_summaries"


def test_a_record_with_a_post_is_reddit_even_if_it_names_an_article():
    """``not_reddit`` is a record *without* a post but with an article (the CNN/DM comparisons; data/formats.py's
    docstring): one that has a post is summarised from it, whatever other fields it carries. Mutation
    testing: "any article" (a Reddit record with a stray ``article`` field dropped) went unnoticed."""
    rec = {"info": {"post": "my post", "article": "(CNN) ...", "title": None},
           "summaries": [{"text": "x"}, {"text": "y"}], "choice": 0}
    assert parse_tldr_record(rec) == ("POST: my post\n\nTL;DR:", "x", "y")
    with pytest.raises(Malformed) as err:
        parse_tldr_record({**rec, "info": {"post": None, "article": "(CNN) ..."}})
    assert err.value.reason == "not_reddit"


# ---------------------------------------------------------------------------- data/formats.py: held-out split


def test_held_out_is_the_seeded_blake2_hash_below_the_fraction():
    """``held_out(prompt, fraction, seed)``: ``blake2b(f"{seed}\\0{prompt}", digest_size=8)`` read as a
    little-endian integer, divided by 2**64, compared ``< fraction`` (its docstring). Recomputed here for 200
    prompts and two seeds -- exact (integer hash, one float division) -- and the two seeds hold out
    different sets (two independent 30% draws of 200 agree on all with probability ~0). Mutation testing: a
    hash that ignores ``seed`` went unnoticed (the data module always passes the default)."""

    def by_hand(prompt: str, fraction: float, seed: int) -> bool:
        digest = hashlib.blake2b(f"{seed}\0{prompt}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2**64 < fraction

    prompts = [f"\n\nHuman: q{i}\n\nAssistant:" for i in range(200)]
    for seed in (0, 7):
        assert [held_out(p, 0.3, seed) for p in prompts] == [by_hand(p, 0.3, seed) for p in prompts]
    assert [held_out(p, 0.3, 0) for p in prompts] != [held_out(p, 0.3, 7) for p in prompts]


# ---------------------------------------------------------------------------- data/modules.py: max_examples


def test_max_examples_keeps_a_seeded_subset_of_each_split_in_file_order(tmp_path):
    """``max_examples`` keeps, of split ``i`` (train 0, test 1), the pairs
    ``sorted(default_rng([seed, i]).choice(n, max_examples, replace=False))`` -- a seeded subset in file order
    (the module docstring: "a seeded subset, file order kept"). 12 train and 12 test pairs, 5 kept, seed 3:
    the expected indices are recomputed with numpy; for these numbers the two streams pick different
    subsets (checked, not assumed). Mutation testing: one stream for both splits (the same rows of each)
    and an unsorted subset (shuffled file order) went unnoticed."""
    n, k, seed = 12, 5, 3
    train = [_hh(f"\n\nHuman: t{i}\n\nAssistant:", f"yes{i}", "no") for i in range(n)]
    test = [_hh(f"\n\nHuman: e{i}\n\nAssistant:", f"yes{i}", "no") for i in range(n)]
    dm = PreferenceDataModule("hh", train_file=_jsonl(tmp_path / "train.jsonl", train),
                              test_file=_jsonl(tmp_path / "test.jsonl", test), max_examples=k, seed=seed)
    want = {split: sorted(np.random.default_rng([seed, i]).choice(n, k, replace=False).tolist())
            for i, split in enumerate(("train", "test"))}
    assert want["train"] != want["test"]
    for split, prefix in (("train", "t"), ("test", "e")):
        got = [p.prompt for p in dm.pairs(split)]
        assert got == [f"\n\nHuman: {prefix}{j}\n\nAssistant:" for j in want[split]], split
        assert dm.reports[split].kept == k


# ---------------------------------------------------------------------------- data/batches.py


def test_the_preference_loader_cuts_its_rows_at_max_length():
    """``make_preference_dataloader(..., max_length=4)`` encodes as ``reward_model_inputs`` with that cut:
    the prompt ``a b c d`` (4 word tokens) with response ``x`` + eos is 6 tokens; at 4 the prompt keeps its
    last 2 (cut from the left, builders.encode_prompt_response) and the joined row ends ``c d x <eos>``;
    rows: chosen first, then rejected. Ids by hand (<pad> 0, <eos> 1, a 3, b 4, c 5, d 6, x 7, y 8).
    Mutation testing: a loader that dropped ``max_length`` went unnoticed (the data module's test stubs the
    loader out)."""
    tok = word_tokenizer(["a", "b", "c", "d", "x", "y"])
    loader = make_preference_dataloader(tok, ["a b c d"], ["x"], ["y"], batch_size=1, shuffle=False, max_length=4)
    batch = next(iter(loader))
    assert batch["input_ids"].tolist() == [[5, 6, 7, 1], [5, 6, 8, 1]]
    uncut = next(iter(make_preference_dataloader(tok, ["a b c d"], ["x"], ["y"], batch_size=1, shuffle=False)))
    assert uncut["input_ids"].tolist() == [[3, 4, 5, 6, 7, 1], [3, 4, 5, 6, 8, 1]]


def test_the_lm_collator_cuts_its_rows_at_max_length():
    """``PromptResponseCollator(tok, max_length=4)``: ``a b c d`` + ``x`` + eos (6 tokens) keeps the prompt's last
    2 tokens (cut from the left, builders.encode_prompt_response), labels -100 on the prompt, the response and
    its eos learnt. Ids by hand (<eos> 1, a 3, b 4, c 5, d 6, x 7). Mutation testing: a collator that dropped
    ``max_length`` went unnoticed (the toy world's pretraining passes none)."""
    tok = word_tokenizer(["a", "b", "c", "d", "x", "y"])
    batch = PromptResponseCollator(tok, max_length=4)([("a b c d", "x")])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 1]]
    assert batch["labels"].tolist() == [[-100, -100, 7, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1]]
