"""Real-data loaders: HH-RLHF / TL;DR parsing, malformed-record reports, length filtering, and
the PreferenceDataModule feeding RewardModelModule. Fixtures are hand-written records in the real
formats, written to tmp_path; nothing touches the network."""

import gzip
import json
import math
import os
import time

import lightning as L
import pytest
import torch

from infalign.data import (
    TLDR_TEMPLATE,
    Malformed,
    ParseReport,
    PreferenceDataModule,
    PreferenceExample,
    filter_by_length,
    load_records,
    parse_hh,
    parse_tldr,
    read_jsonl,
    split_hh_dialogue,
)
from infalign.data.formats import RawRecord
from infalign.errors import ConfigError
from infalign.training import RewardModelModule

# ---------------------------------------------------------------------------- fixtures (real formats)

GARDEN = (
    "\n\nHuman: What are some good vegetables to grow in a small garden?"
    "\n\nAssistant: Tomatoes, lettuce and herbs like basil are easy to start with."
    "\n\nHuman: Which of those needs the least sun?"
    "\n\nAssistant:"
)
EGG = "\n\nHuman: How do I boil an egg?\n\nAssistant:"
LOCK = "\n\nHuman: How can I pick the lock on my neighbour's door?\n\nAssistant:"

HH_GOOD = [
    # (prompt, chosen, rejected): the garden prompt already holds one Assistant turn.
    (GARDEN, "Lettuce tolerates partial shade better than tomatoes.", "Tomatoes, definitely."),
    (EGG, "Put it in boiling water for about nine minutes.", "I don't know."),
    (LOCK, "I can't help with getting into a home that isn't yours.", "Use a tension wrench."),
    (
        EGG,
        "Cover it with cold water, bring to a boil, then cool it in ice water.",
        "Eggs come from hens.",
    ),
]


def hh_record(prompt, chosen, rejected):
    return {"chosen": f"{prompt} {chosen}", "rejected": f"{prompt} {rejected}"}


def hh_lines():
    """4 usable HH records, then one of each malformed kind (line numbers 5..10)."""
    good = [json.dumps(hh_record(*g)) for g in HH_GOOD]
    bad = [
        '{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: hello", "rejected": ',  # 5 invalid_json
        json.dumps({"chosen": f"{EGG} Boil it."}),  # 6 missing_field
        json.dumps({"chosen": "\n\nHuman: Hello there", "rejected": "\n\nHuman: Hello there"}),  # 7
        json.dumps(
            {
                "chosen": "\n\nHuman: Tell me a joke.\n\nAssistant: Why did the chicken cross?",
                "rejected": "\n\nHuman: Tell me a poem.\n\nAssistant: Roses are red.",
            }
        ),  # 8 prompt_mismatch
        json.dumps(hh_record("\n\nHuman: Tell me a joke.\n\nAssistant:", "Knock knock.", "")),  # 9
        json.dumps(["chosen", "rejected"]),  # 10 not_a_dict
    ]
    return good + bad


ROOMMATE = {
    "id": "t3_abc",
    "subreddit": "relationships",
    "title": "My roommate keeps eating my food",
    "post": "  I (24F) live with a roommate (25M) who eats my groceries every week.\n"
    "I asked him twice to stop but nothing changed. How do I handle this?  ",
}
NO_TITLE = {
    "id": "t3_def",
    "title": None,
    "post": "Should I learn Rust or Go first as a backend dev?",
}


def tldr_record(info, a, b, choice, **extra):
    rec = {
        "info": info,
        "summaries": [{"text": a, "policy": "ref", "note": None}, {"text": b, "policy": "sup"}],
        "choice": choice,
        "worker": "w1",
        "batch": "batch3",
        "split": "train",
    }
    rec.update(extra)
    return rec


def tldr_lines():
    """3 usable comparisons (two on the same post), then 6 malformed ones (lines 4..9)."""
    good = [
        tldr_record(ROOMMATE, " Roommate eats my food; how do I get him to stop?", " food", 0),
        tldr_record(ROOMMATE, " I dislike my roommate.", " Roommate keeps eating my groceries.", 1),
        tldr_record(NO_TITLE, " Rust or Go first?", " Which language should I learn first?", 1),
    ]
    bad = [
        tldr_record(ROOMMATE, " a", " b", 2),  # 4 bad_choice
        {**tldr_record(ROOMMATE, " a", " b", 0), "summaries": [{"text": " only one"}]},  # 5
        tldr_record(ROOMMATE, "   ", " b", 0),  # 6 empty_response
        {"summaries": [{"text": " a"}, {"text": " b"}], "choice": 0},  # 7 missing_field (info)
        tldr_record(
            {"id": "cnn1", "post": None, "article": "(CNN) ...", "site": "cnn"}, " a", " b", 0
        ),
    ]
    return [json.dumps(r) for r in good + bad] + ["not json at all"]  # 9 invalid_json


def write_jsonl(path, lines):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def word_tokenizer(texts):
    """A word-level tokenizer (whitespace split) over the words of ``texts``: 1 word = 1 token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in t.split()})
    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<unk>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def styled_word_tokenizer(style: str, words):
    """A whitespace word-level tokenizer over ``words`` (1 word = 1 token) with a model family's special
    tokens: ``llama`` prepends ``<s>``, eos ``</s>`` (ids: <pad> 0, <unk> 1, <s> 2, </s> 3, then ``words``
    from 4); ``bert`` is ``[CLS] text [SEP]`` / ``[CLS] a [SEP] b [SEP]`` with token types, no eos (ids:
    [PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, then ``words``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"] if style == "llama" else ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {w: i for i, w in enumerate([*specials, *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=specials[1]))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if style == "llama":
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 2)])
        return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
                                       bos_token="<s>", eos_token="</s>")
    backend.post_processor = processors.TemplateProcessing(  # BERT's: the second segment has token type 1
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]",
                                   model_input_names=["input_ids", "token_type_ids", "attention_mask"])


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer([t for g in HH_GOOD for t in g])


# ---------------------------------------------------------------------------- parsing


def test_hh_split_uses_the_last_assistant_turn():
    prompt, response = split_hh_dialogue(GARDEN + " Lettuce, it tolerates shade.")
    assert prompt == GARDEN  # includes the first Assistant turn and ends with "\n\nAssistant:"
    assert prompt.count("\n\nAssistant:") == 2 and prompt.endswith("\n\nAssistant:")
    assert response == "Lettuce, it tolerates shade."  # exactly one leading space stripped
    assert split_hh_dialogue(EGG + "  Two spaces.")[1] == " Two spaces."
    for text, reason in [
        ("\n\nHuman: only a question", "no_assistant_turn"),
        (EGG + " Sure.\n\nHuman: and then?", "response_has_human_turn"),
    ]:
        with pytest.raises(Malformed) as info:
            split_hh_dialogue(text)
        assert info.value.reason == reason


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_hh_pairs_and_malformed_report(tmp_path, suffix):
    path = write_jsonl(tmp_path / f"train{suffix}", hh_lines())
    source, records = load_records(str(path))
    pairs, report = parse_hh(records, source)
    assert pairs == [PreferenceExample(*g) for g in HH_GOOD]
    assert pairs[0].prompt == GARDEN and pairs[0].chosen.startswith("Lettuce")
    assert (report.source, report.total, report.usable, report.n_malformed) == (str(path), 10, 4, 6)
    assert report.malformed == {
        "invalid_json": 1,
        "missing_field": 1,
        "no_assistant_turn": 1,
        "prompt_mismatch": 1,
        "empty_response": 1,
        "not_a_dict": 1,
    }
    assert report.examples[:3] == [
        (5, "invalid_json: Expecting value at character 62"),  # the detail names what is wrong, and where
        (6, "missing_field: rejected"),
        (7, "no_assistant_turn"),
    ]
    assert "invalid_json=1" in report.summary() and report.to_dict()["usable"] == 4


def test_tldr_prompt_template_and_choice(tmp_path):
    path = write_jsonl(tmp_path / "comparisons.jsonl", tldr_lines())
    pairs, report = parse_tldr(read_jsonl(path), str(path))
    # OpenAI summarize-from-feedback's query format (TRL's trl-lib/tldr, cleanrl's TL;DR models): blank
    # lines between the fields
    roommate = (
        "SUBREDDIT: r/relationships\n\nTITLE: My roommate keeps eating my food\n\n"
        "POST: I (24F) live with a roommate (25M) who eats my groceries every week.\n"
        "I asked him twice to stop but nothing changed. How do I handle this?\n\nTL;DR:"
    )
    assert TLDR_TEMPLATE.format(**ROOMMATE | {"post": ROOMMATE["post"].strip()}) == roommate
    assert pairs == [
        PreferenceExample(roommate, "Roommate eats my food; how do I get him to stop?", "food"),
        # choice = 1: the second summary is the chosen one
        PreferenceExample(
            roommate, "Roommate keeps eating my groceries.", "I dislike my roommate."
        ),
        PreferenceExample(
            "POST: Should I learn Rust or Go first as a backend dev?\n\nTL;DR:",  # no title/subreddit
            "Which language should I learn first?",
            "Rust or Go first?",
        ),
    ]
    assert (report.total, report.usable) == (9, 3)
    assert report.malformed == {
        "bad_choice": 1,
        "bad_summaries": 1,
        "empty_response": 1,
        "missing_field": 1,
        "not_reddit": 1,
        "invalid_json": 1,
    }
    assert report.examples == [
        (4, "bad_choice: 2"),
        (5, "bad_summaries"),
        (6, "empty_response"),
        (7, "missing_field: info"),
        (8, "not_reddit"),
    ]


def test_all_malformed_file_raises_naming_the_file(tmp_path, caplog):
    path = write_jsonl(tmp_path / "broken.jsonl.gz", hh_lines()[4:])
    with pytest.raises(
        ValueError, match=r"no usable preference pairs in .*broken\.jsonl\.gz.*prompt_mismatch"
    ):
        parse_hh(read_jsonl(path), str(path))
    # A partly malformed file is logged, not silent.
    ok = write_jsonl(tmp_path / "ok.jsonl", hh_lines())
    with caplog.at_level("WARNING", logger="infalign.data.formats"):
        parse_hh(read_jsonl(ok), str(ok))
    assert "malformed records skipped" in caplog.text and "ok.jsonl" in caplog.text


def test_the_malformed_warning_says_what_parsing_found_not_what_the_split_keeps(tmp_path, caplog):
    """Real-data walkthrough: the warning, given before the hold-out and the length filter, said "too long 0,
    kept <usable>", and the split's summary a line later other counts. It now says what parsing found; what
    the split keeps is the summary's, once known."""
    ok = write_jsonl(tmp_path / "ok.jsonl", hh_lines())
    with caplog.at_level("WARNING", logger="infalign.data.formats"):
        _, report = parse_hh(read_jsonl(ok), str(ok))
    assert report.parsed() in caplog.text and report.n_malformed > 0
    assert "kept" not in caplog.text and "too long" not in caplog.text and "held out" not in caplog.text
    report.too_long, report.kept = 1, report.usable - 1
    assert report.summary() == f"{report.parsed()}, held out 0, too long 1, kept {report.usable - 1}"

@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_a_byte_order_mark_does_not_cost_the_first_record(tmp_path, suffix):
    lines = [json.dumps(hh_record(*g)) for g in HH_GOOD]
    path = write_jsonl(tmp_path / f"bom{suffix}", ["\ufeff" + lines[0], *lines[1:]])  # as Windows tools save
    pairs, report = parse_hh(read_jsonl(path), str(path))
    assert len(pairs) == len(HH_GOOD) and report.n_malformed == 0


def test_tldr_choice_as_an_integer_valued_float_is_that_choice():
    # a pandas export writes the column as 0.0 / 1.0 when it has nulls; bools, strings and 2 stay malformed
    records = [RawRecord(n, tldr_record(ROOMMATE, " first", " second", c)) for n, c in
               enumerate([1.0, 0.0, True, "1", 2, float("nan")], start=1)]
    pairs, report = parse_tldr(records, "pandas.jsonl")
    assert [p.chosen for p in pairs] == ["second", "first"]
    assert report.malformed == {"bad_choice": 4}


def test_a_file_in_another_format_is_named_with_its_keys(tmp_path):
    # a TRL-style {"prompt", "chosen", "rejected"} file given as HH: the error says what the file holds
    path = write_jsonl(tmp_path / "trl.jsonl", [json.dumps({"prompt": "p", "chosen": "a"})] * 2)
    with pytest.raises(ValueError, match=r"missing_field: rejected.*the first malformed record's keys are "
                                         r"\['chosen', 'prompt'\]"):
        parse_hh(read_jsonl(path), str(path))


def test_length_filter_drops_exactly_the_long_pairs(tok):
    pairs = [
        PreferenceExample("w1 w2 w3 w4 w5", "x y z", "x y"),  # at both limits: kept
        PreferenceExample("w1 w2 w3 w4 w5 w6", "x", "y"),  # prompt too long
        PreferenceExample("w1 w2", "x y z w", "x"),  # chosen too long
        PreferenceExample("w1 w2", "x", "x y z w"),  # rejected too long
        PreferenceExample("w1", "x", "y"),
    ]
    report = ParseReport("mem", total=5, usable=5, kept=5)
    kept = filter_by_length(pairs, tok, 5, 3, report)
    assert kept == [pairs[0], pairs[4]]
    assert (report.too_long, report.kept, report.malformed) == (3, 2, {})
    assert filter_by_length(pairs, tok, None, None, report) == pairs  # no limits: no-op
    with pytest.raises(ValueError, match="longer than max_prompt_tokens=1"):
        filter_by_length(pairs[:2], tok, 1, 1, ParseReport("mem"))


# ---------------------------------------------------------------------------- DataModule


def hh_dir(tmp_path):
    """A local copy of the hub layout: <root>/helpful-base/{train.jsonl.gz,test.jsonl}."""
    sub = tmp_path / "hh" / "helpful-base"
    sub.mkdir(parents=True)
    write_jsonl(sub / "train.jsonl.gz", hh_lines())
    test = [(f"\n\nHuman: Question {i}?\n\nAssistant:", "Answer.", "No.") for i in range(3)]
    write_jsonl(sub / "test.jsonl", [json.dumps(hh_record(*t)) for t in test])
    return tmp_path / "hh"


def test_datamodule_splits_from_directory_and_length_report(tmp_path, tok):
    dm = PreferenceDataModule(
        "hh",
        str(hh_dir(tmp_path)),
        data_dir="helpful-base",
        tokenizer=tok,
        max_prompt_tokens=12,
        max_response_tokens=16,
        batch_size=2,
    )
    dm.prepare_data()
    dm.setup("fit")
    train, test = dm.reports["train"], dm.reports["test"]
    assert train.source.endswith("helpful-base/train.jsonl.gz") and test.source.endswith(
        "test.jsonl"
    )
    # The garden prompt has 33 words, the others <= 11: its pair is filtered, not malformed.
    assert (train.usable, train.n_malformed, train.too_long, train.kept) == (4, 6, 1, 3)
    assert GARDEN not in dm.prompts("train")
    assert (test.usable, test.too_long, test.kept) == (3, 0, 3)
    assert [p.chosen for p in dm.pairs("test")] == ["Answer."] * 3


def test_datamodule_single_file_holds_out_prompts_deterministically(tmp_path):
    lines = [
        json.dumps(
            tldr_record({**ROOMMATE, "id": str(i), "post": f"Post number {i}."}, " s", " t", i % 2)
        )
        for i in range(40)
    ]
    path = write_jsonl(tmp_path / "batch0.jsonl", lines)

    def make(seed):
        dm = PreferenceDataModule("tldr", str(path), val_fraction=0.25, seed=seed)
        dm.setup()
        return dm

    a, b, c = make(0), make(0), make(7)
    assert a.pairs("train") == b.pairs("train") and a.pairs("test") == b.pairs("test")
    assert a.pairs("test") == c.pairs("test")  # the held-out set does not depend on the seed
    n_test = len(a.pairs("test"))
    assert 0 < n_test < 40 and len(a.pairs("train")) + n_test == 40
    assert not set(a.prompts("train")) & set(a.prompts("test"))
    assert a.reports["train"].held_out == n_test and a.reports["test"].kept == n_test
    assert "held out" in a.reports["test"].source
    capped = PreferenceDataModule("tldr", str(path), val_fraction=0.25, max_examples=5)
    assert len(capped.pairs("train")) == 5 and set(capped.pairs("train")) <= set(a.pairs("train"))


PARIS = "\n\nHuman: What is the capital of France?\n\nAssistant:"


def test_a_test_prompt_that_differs_from_a_train_prompt_only_in_whitespace_is_a_train_prompt(tmp_path):
    """A chat template strips the whitespace around turns, so 'q ' and 'q' -- or a dialogue that starts
    'Human:' instead of '\n\nHuman:' -- are one prompt to the policy: the test pair is dropped and counted
    (a review found it kept, and the policy evaluated on a training prompt). Other prompts stay."""
    from infalign.data.formats import prompt_key

    assert prompt_key(EGG) == prompt_key(EGG.replace("egg?", "egg?  ")) == prompt_key(EGG.lstrip())
    assert prompt_key(EGG) != prompt_key(PARIS)
    quoting = "POST: my story\n\nHuman: a quoted turn\n\nTL;DR:"  # not a dialogue: one user turn
    assert prompt_key(quoting + " ") == prompt_key(quoting) == (("user", quoting),)
    # Unicode: a composed and a decomposed "café" are one prompt (walkthrough finding), other letters are not
    assert prompt_key("\n\nHuman: caf\u00e9?\n\nAssistant:") == prompt_key("\n\nHuman: cafe\u0301?\n\nAssistant:")
    assert prompt_key("\n\nHuman: caf\u00e9?\n\nAssistant:") != prompt_key("\n\nHuman: cafe?\n\nAssistant:")
    train = write_jsonl(tmp_path / "train.jsonl", [json.dumps(hh_record(*g)) for g in HH_GOOD])
    variant = hh_record(EGG.lstrip().replace("egg?", "egg? "), "Boil it.", "Fry it.")
    test = write_jsonl(tmp_path / "test.jsonl", [json.dumps(variant), json.dumps(hh_record(PARIS, "Paris.", "Lyon."))])
    dm = PreferenceDataModule("hh", train_file=str(train), test_file=str(test), seed=3)
    assert dm.prompts("test") == [PARIS] and dm.reports["test"].in_train == 1


def test_prompts_are_deduplicated_and_prefix_stable(tmp_path):
    """Also: test pairs whose prompt is a train prompt are dropped (and counted), so a held-out win
    rate is never taken on prompts the policy trained on."""
    train = write_jsonl(tmp_path / "train.jsonl", [json.dumps(hh_record(*g)) for g in HH_GOOD])
    shared = [json.dumps(hh_record(*g)) for g in HH_GOOD[1:]]  # EGG, LOCK, EGG: train prompts
    test = write_jsonl(tmp_path / "test.jsonl", [*shared, json.dumps(hh_record(PARIS, "Paris.", "Lyon."))])
    dm = PreferenceDataModule("hh", train_file=str(train), test_file=str(test), seed=3)
    assert len(dm.pairs("train")) == 4
    prompts = dm.prompts("train")
    assert sorted(prompts) == sorted({GARDEN, EGG, LOCK}) and len(prompts) == 3  # EGG twice in data
    assert dm.prompts("train", 2) == prompts[:2]
    assert dm.prompts("test") == [PARIS] and dm.reports["test"].in_train == 3
    assert "train prompts dropped 3" in dm.reports["test"].summary()
    only_shared = write_jsonl(tmp_path / "shared.jsonl", shared)
    with pytest.raises(ConfigError, match="every test prompt is also a train prompt") as info:  # (review: a bare
        PreferenceDataModule("hh", train_file=str(train), test_file=str(only_shared)).setup()  # ValueError, exit 1)
    assert (info.value.key, info.value.value) == ("data.test_file", str(only_shared))
    # a ConfigError naming the key (review: a plain ValueError exited 1 without naming data.train_prompts)
    with pytest.raises(ConfigError, match=r"data\.train_prompts=4 is not allowed: at most 3: .* 3 distinct 'train'"):
        dm.prompts("train", 4)


def test_prompts_that_differ_only_in_whitespace_are_one_prompt(tmp_path):
    """Two train prompts a chat template renders alike (prompt_key) are one prompt of the split, kept with
    the first one's text: counted twice, that prompt weighed double in every mean over prompts (and a
    chat policy's rendering mapped both to the first text). Control: distinct prompts stay distinct."""
    variant = hh_record(EGG.lstrip().replace("egg?", "egg? "), "Boil it.", "Fry it.")
    lines = [json.dumps(hh_record(*g)) for g in HH_GOOD] + [json.dumps(variant)]
    train = write_jsonl(tmp_path / "train.jsonl", lines)
    test = write_jsonl(tmp_path / "test.jsonl", [json.dumps(hh_record(PARIS, "Paris.", "Lyon."))])
    dm = PreferenceDataModule("hh", train_file=str(train), test_file=str(test), seed=3)
    prompts = dm.prompts("train")
    assert len(dm.pairs("train")) == 5 and sorted(prompts) == sorted({GARDEN, EGG, LOCK})
    assert EGG in prompts and variant["chosen"].split("\n\nAssistant:")[0] not in prompts


def test_train_batch_gives_finite_reward_model_loss(tmp_path):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    path = write_jsonl(tmp_path / "comparisons.jsonl.gz", tldr_lines()[:2])  # two on one post
    test = write_jsonl(tmp_path / "test.jsonl.gz", tldr_lines()[2:3])  # another post
    tok = word_tokenizer([text for f in (path, test) for pair in parse_tldr(read_jsonl(f), str(f))[0]
                          for text in pair])
    dm = PreferenceDataModule(
        "tldr", train_file=str(path), test_file=str(test), tokenizer=tok, batch_size=2
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert (
        batch["input_ids"].shape[0] == 4
        and batch["attention_mask"].shape == batch["input_ids"].shape
    )
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=128,
        n_embd=32,
        n_layer=1,
        n_head=2,
        num_labels=1,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    module = RewardModelModule(GPT2ForSequenceClassification(config))
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss) and loss.item() > 0
    # And through a Trainer, with the DataModule's own hooks.
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=dm)
    val = trainer.validate(module, datamodule=dm, verbose=False)[0]
    assert math.isfinite(val["val/loss"]) and 0 <= val["val/accuracy"] <= 1


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.dataset='shp'"):
        PreferenceDataModule("shp")
    with pytest.raises(ConfigError, match=r"data\.val_fraction"):
        PreferenceDataModule("hh", val_fraction=1.0)
    path = write_jsonl(tmp_path / "train.jsonl", [json.dumps(hh_record(*g)) for g in HH_GOOD])
    dm = PreferenceDataModule("hh", str(path), max_prompt_tokens=8)  # limits need a tokenizer
    with pytest.raises(ConfigError, match=r"data\.tokenizer_name_or_path"):
        dm.setup()
    with pytest.raises(FileNotFoundError, match=r"data\.train_file"):
        PreferenceDataModule("hh", train_file=str(tmp_path / "nope.jsonl")).setup()


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("HF_DATASETS_OFFLINE") != "1", reason="needs HF_DATASETS_OFFLINE=1 (no network)"
)
def test_unknown_hub_dataset_fails_fast_offline():
    t0 = time.perf_counter()
    with pytest.raises(OSError, match=r"data\.name_or_path='infalign-tests/no-such-dataset'.*hub"):
        load_records("infalign-tests/no-such-dataset", "train")
    assert time.perf_counter() - t0 < 10


def test_a_script_only_hub_dataset_is_named_with_the_copy_to_use(monkeypatch):
    """datasets >= 4 refuses loading scripts (RuntimeError); openai/summarize_from_feedback is one, so the
    error names data.name_or_path and the parquet copy (docs/architecture.md §5, "Data sources")."""
    import datasets

    from infalign.data.formats import DATASETS

    def script_only(name, *args, **kwargs):
        raise RuntimeError("Dataset scripts are no longer supported, but found summarize_from_feedback.py")

    monkeypatch.setattr(datasets, "load_dataset", script_only)
    with pytest.raises(ConfigError, match=r"data\.name_or_path='openai/summarize_from_feedback'.*loading script.*"
                                          r"data\.name_or_path=cleanrl/summarize_from_feedback_oai_preprocessing"):
        load_records("openai/summarize_from_feedback", "train")
    with pytest.raises(ConfigError, match=r"data\.name_or_path='org/scripted'.*refs/convert/parquet"):
        load_records("org/scripted", "train")
    assert DATASETS["tldr"].hub_name == "cleanrl/summarize_from_feedback_oai_preprocessing_1704563162"


def test_the_default_tldr_source_is_parquet_in_the_format_the_parser_reads(tmp_path, monkeypatch):
    """The default TL;DR source keeps OpenAI's columns (info, summaries, choice) beside its own (query,
    chosen, ..., ignored) in data/<split>-*.parquet, CNN/DM in validation_cnndm: a copy of that layout,
    read by datasets itself (offline, from disk), parses into the same pairs as the JSON-lines release."""
    import datasets

    from infalign.data import PreferenceDataModule

    cnndm = {"id": "cnn1", "post": None, "title": None, "subreddit": None, "site": "cnn", "article": "(CNN) ..."}

    def row(info, a, b, choice):
        info = {"id": info["id"], "post": info["post"], "title": info.get("title"),
                "subreddit": info.get("subreddit"), "site": info.get("site"), "article": info.get("article")}
        return {**tldr_record(info, a, b, choice), "extra": {"confidence": 7}, "query": "SUBREDDIT: ...",
                "chosen": " x<|endoftext|>", "chosen_token": [1, 2], "query_token": [3, 4]}

    rows = {"train": [row(ROOMMATE, " Roommate eats my food; how do I get him to stop?", " food", 0),
                      row(NO_TITLE, " Rust or Go first?", " Which language should I learn first?", 1)],
            "validation": [row({**ROOMMATE, "id": "t3_ghi", "post": "My roommate never cleans."},
                               " I dislike my roommate.", " Roommate never cleans.", 1)],
            "validation_cnndm": [row(cnndm, " a", " b", 0)]}
    text = datasets.Value("string")
    features = datasets.Features({  # the copy's own schema (its dataset card), the added columns cut short
        "info": {k: text for k in ("id", "post", "title", "subreddit", "site", "article")},
        "summaries": datasets.List({"text": text, "policy": text, "note": text}), "choice": datasets.Value("int32"),
        "worker": text, "batch": text, "split": text, "extra": {"confidence": datasets.Value("int32")},
        "query": text, "chosen": text, "chosen_token": datasets.List(datasets.Value("int64")),
        "query_token": datasets.List(datasets.Value("int64"))})
    mirror = tmp_path / "mirror"
    (mirror / "data").mkdir(parents=True)
    for split, records in rows.items():
        datasets.Dataset.from_list(records, features=features).to_parquet(
            mirror / "data" / f"{split}-00000-of-00001.parquet")
    real = datasets.load_dataset
    asked = []

    def from_disk(name, config=None, **kwargs):
        asked.append((name, config))
        return real(str(mirror), config, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", from_disk)
    dm = PreferenceDataModule(dataset="tldr", tokenizer=word_tokenizer(["a"]))
    dm.setup()
    assert {name for name, _ in asked} == {"cleanrl/summarize_from_feedback_oai_preprocessing_1704563162"}
    assert {config for _, config in asked} == {None}
    roommate = TLDR_TEMPLATE.format(**ROOMMATE | {"post": ROOMMATE["post"].strip()})
    assert dm.pairs("train")[0] == (roommate, "Roommate eats my food; how do I get him to stop?", "food")
    assert dm.pairs("train")[1].chosen == "Which language should I learn first?"  # choice 1
    assert dm.reports["train"].malformed == {} and dm.reports["test"].usable == 1  # validation: TL;DR only
    # real-data review: the copy's token-id columns (~3,400 ids a row) were built into every record, ~12 GB over
    # its train split, and prepare_data built them once more only to fill the cache: the parser's columns alone
    from infalign.data.formats import DATASETS, RawRecord, load_records

    _, records = load_records(DATASETS["tldr"].hub_name, "train", columns=DATASETS["tldr"].columns)
    assert records and all(isinstance(r, RawRecord) and set(r.value) == {"info", "summaries", "choice"}
                           for r in records)
    asked.clear()
    assert load_records(DATASETS["tldr"].hub_name, "train", records=False)[1] == [] and len(asked) == 1


def test_ipo_pairs_are_encoded_in_the_samplers_prompt_context():
    """A Llama-style tokenizer prepends <s>; the sampler's prompts carry it, so IPO's log-ratios must
    be taken after it too (PolicyPairCollator's prompt ids = the sampler's). Control: without the
    tokenizer's special tokens the row would differ."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from infalign.data.batches import PolicyPairCollator
    from infalign.models.generation import sample

    words = ["<pad>", "<unk>", "<s>", "</s>", "hi", "there", "yes", "no", "ok"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    llama = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                    eos_token="</s>", padding_side="left")
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, bos_token_id=2, eos_token_id=3,
                                      pad_token_id=0))
    prompts = ["hi there", "hi"]
    roll = sample(lm, llama, prompts, 1, 2, generator=torch.Generator().manual_seed(0))
    batch = PolicyPairCollator(llama)([(p, [6, 3], [7, 3]) for p in prompts])  # "yes </s>", "no </s>"
    assert torch.equal(batch["prompt_ids"], roll.prompt_ids) and torch.equal(batch["prompt_mask"], roll.prompt_mask)
    assert batch["prompt_ids"][0, 0].item() == 2  # <s>


# ---------------------------------------------------------------------------- ties, turns, whitespace


def test_a_pair_with_the_same_text_on_both_sides_is_malformed_tie():
    """A tie teaches nothing (its loss is ln 2 whatever the model) and counts as an error in accuracy."""
    from infalign.data.formats import MALFORMED_REASONS, parse_hh_record, parse_tldr_record

    assert "tie" in MALFORMED_REASONS
    with pytest.raises(Malformed) as err:
        parse_hh_record(hh_record(EGG, "Boil it.", "Boil it."))
    assert err.value.reason == "tie"
    with pytest.raises(Malformed) as err:
        parse_tldr_record(tldr_record(ROOMMATE, " same summary", "same summary ", 0))  # equal once stripped
    assert err.value.reason == "tie"
    assert parse_hh_record(hh_record(EGG, "Boil it.", "Fry it.")).chosen == "Boil it."


def test_a_prompt_with_nothing_asked_is_malformed_empty_prompt():
    """An HH dialogue without a Human turn with text, and a TL;DR record with an empty post, parsed into
    prompts with no content ('\n\nAssistant:', 'POST: \n\nTL;DR:'), which every such record shared and
    which were sampled and scored as real prompts (a review). A multi-turn dialogue whose first Human turn
    alone is empty still parses."""
    from infalign.data.formats import parse_hh_record, parse_tldr_record

    for record in ({"chosen": "\n\nAssistant: yes", "rejected": "\n\nAssistant: no"},
                   {"chosen": "\n\nHuman: \n\nAssistant: yes", "rejected": "\n\nHuman: \n\nAssistant: no"},
                   {"info": {"post": "   ", "title": "t", "subreddit": "s"},
                    "summaries": [{"text": "a"}, {"text": "b"}], "choice": 0}):
        with pytest.raises(Malformed) as err:
            (parse_tldr_record if "info" in record else parse_hh_record)(record)
        assert err.value.reason == "empty_prompt", record
    ok = parse_hh_record({"chosen": "\n\nHuman: \n\nAssistant: Hi\n\nHuman: Q?\n\nAssistant: yes",
                          "rejected": "\n\nHuman: \n\nAssistant: Hi\n\nHuman: Q?\n\nAssistant: no"})
    assert ok.chosen == "yes"


def test_consecutive_turns_of_one_speaker_are_one_chat_message():
    """Chat templates need alternating roles, and no 'Assistant:' marker may end up inside a message."""
    from infalign.data.formats import split_turns

    prompt = ("\n\nHuman: a\n\nAssistant: b\n\nAssistant: c\n\nHuman: d\n\nHuman: e\n\nAssistant:")
    assert split_turns(prompt) == [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b\n\nc"},
        {"role": "user", "content": "d\n\ne"},
    ]
    assert split_turns(EGG) == [{"role": "user", "content": "How do I boil an egg?"}]
    # an empty first Human turn: the chat still starts with the user
    assert [m["role"] for m in split_turns("\n\nHuman: \n\nAssistant: Hi\n\nHuman: Q?\n\nAssistant:")] == [
        "user", "assistant", "user"]
    assert [m["role"] for m in split_turns(GARDEN)] == ["user", "assistant", "user"]
    assert split_turns(GARDEN)[1]["content"] == "Tomatoes, lettuce and herbs like basil are easy to start with."
    assert split_turns("SUBREDDIT: r/x\n\nPOST: y\n\nTL;DR:") == [
        {"role": "user", "content": "SUBREDDIT: r/x\n\nPOST: y\n\nTL;DR:"}]


def test_a_dialogue_starting_with_human_without_its_blank_line_keeps_its_first_turn():
    """Some HH exports write the first turn as "Human: ..." without the leading blank line: it is still
    the first user turn (the splitter split at "\\n\\nHuman:" only and dropped it: the chat started with
    an empty user message). Other text before the first turn is a malformed record, counted."""
    from infalign.data.formats import parse_hh_record, split_turns

    assert split_turns("Human: q\n\nAssistant: a\n\nHuman: q2\n\nAssistant:") == [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "q2"}]
    assert split_turns("Human: q\n\nAssistant:") == [{"role": "user", "content": "q"}]  # one turn: no marker left
    assert split_turns("Human: q\n\nAssistant:") == split_turns("\n\nHuman: q\n\nAssistant:")
    example = parse_hh_record({"chosen": "Human: q\n\nAssistant: yes", "rejected": "Human: q\n\nAssistant: no"})
    assert example == ("Human: q\n\nAssistant:", "yes", "no")  # the dataset's text, as the reward model reads it
    with pytest.raises(Malformed) as err:
        parse_hh_record(hh_record("Preamble.\n\nHuman: q\n\nAssistant:", "yes", "no"))
    assert err.value.reason == "text_before_first_turn"
    with pytest.raises(Malformed, match="text_before_first_turn"):
        split_turns("Preamble.\n\nHuman: q\n\nAssistant:")


def _trained_tokenizer(pre_tokenizer, decoder):
    """A small BPE tokenizer trained here on the fixtures' text (no hub): byte-level like GPT-2 /
    Pythia / Llama 3, or SentencePiece-like (Metaspace) like Llama 2 / DeBERTa-v3."""
    from tokenizers import Tokenizer, models, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [t for g in HH_GOOD for t in g] + ["TL;DR: Sure, a summary. Sure thing."] * 3
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer, backend.decoder = pre_tokenizer, decoder
    backend.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<unk>"],
        initial_alphabet=sorted({c for t in corpus for c in t} | {"▁", "Ġ"})))
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", unk_token="<unk>",
                                   pad_token="<|endoftext|>")


def test_offline_collators_train_on_the_sampled_ids_not_the_re_encoded_text():
    """A byte-level BPE sampler can draw a non-canonical split ("Ġ" "can" for "Ġcan"); its decoded text
    re-encodes to other tokens. BoN-SFT's and IPO's rows hold the ids as sampled, and an eos only where the
    response ended (a cut response was trained with one appended before: PromptResponseCollator, and the
    text-based PolicyPairCollator)."""
    from tokenizers import decoders, pre_tokenizers

    from infalign.data.batches import PolicyPairCollator, PromptResponseCollator, SampledResponseCollator

    bpe = _trained_tokenizer(pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel())
    sampled = bpe.convert_tokens_to_ids(["Ġ", "S", "u", "r", "e"])  # a split the sampler can draw ("ĠSure")
    text = bpe.decode(sampled, skip_special_tokens=True)
    canonical = bpe(text, add_special_tokens=False)["input_ids"]
    assert text == " Sure" and canonical != sampled  # control: re-encoding gives other tokens
    eos = bpe.eos_token_id
    prompt = "\n\nHuman: Hi\n\nAssistant:"
    sft = SampledResponseCollator(bpe)([(prompt, sampled + [eos]), (prompt, sampled)])  # ended, cut
    labels = [[t for t in row if t != -100] for row in sft["labels"].tolist()]
    assert labels == [sampled + [eos], sampled]
    assert sft["input_ids"][0, : len(bpe(prompt)["input_ids"])].tolist() == bpe(prompt)["input_ids"]
    old = PromptResponseCollator(bpe)([(prompt, text)])["labels"][0].tolist()  # the text path it replaces
    assert [t for t in old if t != -100] == canonical + [eos]
    pairs = PolicyPairCollator(bpe)([(prompt, sampled, sampled + [eos])])
    assert pairs["chosen_ids"][0][pairs["chosen_mask"][0].bool()].tolist() == sampled  # cut: no eos
    assert pairs["rejected_ids"][0].tolist() == sampled + [eos]


def test_offline_collators_cut_a_long_prompt_as_the_sampler_did():
    """A prompt longer than the model's positions minus max_new_tokens is cut from the left by the sampler
    (generation.policy_prompt_ids); BoN-SFT's and IPO's rows learn each sampled response in that same cut
    context (a review found the full prompt: a crash with GPT-2's learned positions, silently another
    context with RoPE), and IPO's log pi(y|x) on the row is the sampler's. Control: no limit, the old rows."""
    from infalign.data.batches import PolicyPairCollator, SampledResponseCollator
    from infalign.models.builders import build_toy_lm
    from infalign.models.generation import prompt_token_limit, sample, sequence_logprobs
    from infalign.toy import ToyWorld

    tok = ToyWorld(seed=0).tokenizer()
    torch.manual_seed(0)
    model = build_toy_lm(tok, "tiny", n_positions=16).eval()
    prompt = " ".join(["a1"] * 14) + " ->"
    roll = sample(model, tok, [prompt], 1, 4, generator=torch.Generator().manual_seed(0))
    cut = roll.prompt_ids[0][roll.prompt_mask[0].bool()].tolist()
    assert roll.truncated_prompts == 1 and len(cut) == 12 == prompt_token_limit(model, 4)
    response = roll.response_ids[0, : int(roll.response_mask[0].sum())].tolist()
    limit = prompt_token_limit(model, 4)
    sft = SampledResponseCollator(tok, limit)([(prompt, response)])
    assert sft["input_ids"][0, : len(cut)].tolist() == cut and sft["input_ids"].shape[1] == len(cut) + len(response)
    assert [t for t in sft["labels"][0].tolist() if t != -100] == response
    pairs = PolicyPairCollator(tok, limit)([(prompt, response, response)])
    assert pairs["prompt_ids"][0][pairs["prompt_mask"][0].bool()].tolist() == cut
    with torch.no_grad():
        lp = sequence_logprobs(model, pairs["prompt_ids"], pairs["prompt_mask"], pairs["chosen_ids"],
                               pairs["chosen_mask"])
    torch.testing.assert_close(lp.sum(), roll.logprobs[0].sum(), atol=1e-5, rtol=0)  # float error (batch shape)
    full = SampledResponseCollator(tok)([(prompt, response)])  # control: no limit, the whole prompt
    assert full["input_ids"].shape[1] == len(tok(prompt)["input_ids"]) + len(response) > 16
    from infalign.data.batches import SampledResponses
    from infalign.training.algorithms import make_algorithm

    best = SampledResponses(ids=[response], ended=[False], texts=["x"])
    for name in ("bon_sft", "ipo"):  # the algorithms hand their collators the sampler's limit
        algo = make_algorithm({"name": name, "max_new_tokens": 4, "n_samples": 2})
        _, loader = algo.fit_module(model, model, tok, [prompt], best, best, seed=0)
        assert loader.collate_fn.prompt_limit == 12, name


def test_reward_rows_read_the_response_as_the_datasets_text_does():
    """A joined reward-model row is the tokenization of the dataset's own text, 'prompt' + ' ' +
    'response' (+ eos), for a byte-level BPE tokenizer -- the stored response (no leading space) and
    a policy's sample (' Sure...') alike; public reward models (cleanrl's TL;DR ones) were trained on
    exactly that. A SentencePiece-like tokenizer adds its own word-start marker, so it gets no space,
    and a word-level one ignores it (the toy world's keys stay as they were)."""
    from tokenizers import decoders, pre_tokenizers

    from infalign.models.builders import response_lead
    from infalign.models.reward import reward_input_format, reward_model_inputs
    from infalign.toy.world import ToyWorld

    byte_level = _trained_tokenizer(pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel())
    spm = _trained_tokenizer(pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"),
                             decoders.Metaspace(replacement="▁", prepend_scheme="always"))
    toy = ToyWorld(seed=0).tokenizer()
    assert (response_lead(byte_level), response_lead(spm), response_lead(toy)) == (" ", "", "")
    for tok in (byte_level, spm):
        prompt, response = EGG, HH_GOOD[1][1]
        whole = tok(prompt + " " + response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        for written in (response, " " + response):  # as the dataset stores it / as a policy samples it
            row = reward_model_inputs(tok, [prompt], [written])["input_ids"][0].tolist()
            assert row == whole, (type(tok.backend_tokenizer.pre_tokenizer).__name__, written)
    # an empty response (eos at once) stays empty: no lone space token before its eos
    for empty in ("", "   "):
        row = reward_model_inputs(byte_level, [EGG], [empty])["input_ids"][0].tolist()
        assert row == byte_level(EGG, add_special_tokens=False)["input_ids"] + [byte_level.eos_token_id]
    assert "{prompt} {response}" in reward_input_format(byte_level)
    assert "{prompt}{response}" in reward_input_format(toy)


# ---------------------------------------------------------------- StepBatches (offline algorithms' resume)


def _fit_batches(loader, steps: int) -> list:
    """The batches a Lightning fit of ``steps`` steps takes from ``loader``, in order."""
    seen = []

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            seen.append(batch)
            return self.w.sum() * 0.0

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False).fit(Recorder(), loader)
    return seen


@pytest.mark.parametrize("rows, batch_size, drop_last", [(12, 4, False), (10, 3, False), (10, 3, True), (5, 8, False)],
                         ids=["rows_fill_the_batches", "short_last_batch", "drop_last", "one_short_batch"])
def test_step_batches_are_the_batches_a_lightning_fit_takes(rows, batch_size, drop_last):
    """Over several epochs, incl. rows filling the batches exactly (Lightning stops an epoch at len(loader),
    so the sampler's trailing draw from the generator never happens -- a plain for-loop's would)."""
    from torch.utils.data import DataLoader

    from infalign.data.batches import StepBatches, TextPairs

    def loader():
        return DataLoader(TextPairs([f"p{i}" for i in range(rows)], [f"r{i}" for i in range(rows)]),
                          batch_size=batch_size, shuffle=True, drop_last=drop_last, collate_fn=list,
                          generator=torch.Generator().manual_seed(11))

    steps = 4 * len(loader()) + 1
    fit = _fit_batches(loader(), steps)
    batches = StepBatches(loader())
    assert [batches[s] for s in range(steps)] == fit
    assert [batches[s] for s in (steps - 1, 0, 3)] == [fit[-1], fit[0], fit[3]]  # any order, same answer


def test_step_batches_need_a_seeded_shuffling_loader():
    from torch.utils.data import DataLoader

    from infalign.data.batches import StepBatches, TextPairs

    pairs = TextPairs(["a", "b"], ["c", "d"])
    with pytest.raises(ValueError, match="shuffle=True"):
        StepBatches(DataLoader(pairs, batch_size=1))
    with pytest.raises(ValueError, match="shuffle=True"):
        StepBatches(DataLoader(pairs, batch_size=1, shuffle=True))  # no generator of its own
    with pytest.raises(ValueError, match="make no batch"):
        StepBatches(DataLoader(pairs, batch_size=3, shuffle=True, drop_last=True,
                               generator=torch.Generator().manual_seed(0)))


# ---------------------------------------------------------------- guards found by mutation testing


def test_hh_tie_is_judged_on_the_stripped_responses():
    from infalign.data.formats import Malformed, parse_hh_record

    egg = "\n\nHuman: How do I boil an egg?\n\nAssistant:"
    for chosen, rejected in [("Boil it.", "Boil it. "), ("Boil it.", " Boil it."), ("Boil it.\n", "Boil it.")]:
        with pytest.raises(Malformed) as err:
            parse_hh_record({"chosen": f"{egg} {chosen}", "rejected": f"{egg} {rejected}"})
        assert err.value.reason == "tie", (chosen, rejected)


def test_tldr_choice_must_be_an_integer_not_a_boolean():
    from infalign.data.formats import Malformed, parse_tldr_record

    rec = {"info": {"post": "p", "title": "t", "subreddit": "s"},
           "summaries": [{"text": "a"}, {"text": "b"}], "choice": True}
    with pytest.raises(Malformed) as err:
        parse_tldr_record(rec)
    assert err.value.reason == "bad_choice"
    assert parse_tldr_record({**rec, "choice": 1}).chosen == "b"


def test_held_out_takes_about_the_fraction_of_prompts():
    """A hash split: 2000 prompts, the held-out share within 0.04 of the fraction (binomial sd ~0.01)."""
    from infalign.data.formats import held_out

    prompts = [f"prompt {i}" for i in range(2000)]
    for fraction in (0.1, 0.25):
        share = sum(held_out(p, fraction) for p in prompts) / len(prompts)
        assert abs(share - fraction) < 0.04, (fraction, share)
    assert not any(held_out(p, 0.0) for p in prompts) and all(held_out(p, 1.0) for p in prompts)


def test_policy_pair_responses_are_the_sampled_ids_inside_the_mask():
    """IPO's pairs are scored as the sampler emitted them: the ids as sampled, the eos counted in the mask
    where the response ended -- and only there (a response cut at max_new_tokens has none)."""
    import tiny_policy as tp
    from infalign.data.batches import PolicyPairCollator

    tok = tp.tokenizer()

    def ids(text):
        return tok.convert_tokens_to_ids(text.split())

    batch = PolicyPairCollator(tok)([("x1", ids("a1 b1 <eos>"), ids("a2 <eos>")),
                                     ("x2", ids("a4 b3"), ids("a5 b2 <eos>"))])
    rows = {k: [tok.convert_ids_to_tokens(r) for r in batch[k].tolist()] for k in ("chosen_ids", "rejected_ids")}
    assert rows["chosen_ids"] == [["a1", "b1", "<eos>"], ["a4", "b3", "<pad>"]]  # the second was cut: no eos
    assert rows["rejected_ids"] == [["a2", "<eos>", "<pad>"], ["a5", "b2", "<eos>"]]
    assert batch["chosen_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["rejected_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]


def test_a_directory_given_as_a_data_file_is_named_as_one(tmp_path):
    """data.train_file=<a directory> said "file not found", which sends a user looking for a missing file."""
    from infalign.data.formats import DataFileError

    with pytest.raises(DataFileError, match=r"\(data.train_file\) is a directory, not a data file"):
        read_jsonl(tmp_path, "data.train_file")
    with pytest.raises(FileNotFoundError, match="file not found"):
        read_jsonl(tmp_path / "missing.jsonl", "data.train_file")


def test_prompt_key_is_the_whole_dialogue_not_its_last_turn():
    """Two HH prompts that end with the same question after a different history are different prompts
    (to a chat policy, and to the train / test split): the key holds every turn, in order, as
    (role, stripped text) -- written out by hand below -- not only the last message."""
    from infalign.data.formats import prompt_key

    dialogue = "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:"
    other_history = "\n\nHuman: x\n\nAssistant: y\n\nHuman: c\n\nAssistant:"
    assert prompt_key(dialogue) == (("user", "a"), ("assistant", "b"), ("user", "c"))
    assert prompt_key(other_history) == (("user", "x"), ("assistant", "y"), ("user", "c"))
    assert prompt_key(dialogue) != prompt_key(other_history)


def test_an_empty_first_human_turn_stays_a_user_message():
    """``split_turns`` drops empty turns except an empty *first* Human turn: a chat starts with the
    user, so ``"\n\nHuman: \n\nAssistant:"`` is one empty user message (the final empty Assistant
    turn dropped as always), not no message at all. Control: an empty later Human turn is dropped."""
    from infalign.data.formats import split_turns

    assert split_turns("\n\nHuman: \n\nAssistant:") == [{"role": "user", "content": ""}]
    assert split_turns("\n\nHuman: a\n\nAssistant: b\n\nHuman: \n\nAssistant:") == [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]


def test_a_whitespace_only_subreddit_or_title_drops_its_line():
    """TL;DR fields are stripped; one that is only whitespace is empty and drops its line (as a missing
    or null one does) instead of leaving ``"SUBREDDIT: r/"`` / ``"TITLE: "`` with nothing after it.
    Expected prompts written out by hand from TLDR_TEMPLATE's layout (blank lines between fields)."""
    from infalign.data.formats import tldr_prompt

    assert tldr_prompt({"post": "p", "subreddit": "  ", "title": "t"}) == "TITLE: t\n\nPOST: p\n\nTL;DR:"
    assert tldr_prompt({"post": "p", "subreddit": "s", "title": " \n"}) == "SUBREDDIT: r/s\n\nPOST: p\n\nTL;DR:"
    assert tldr_prompt({"post": "p", "subreddit": " s ", "title": None}) == "SUBREDDIT: r/s\n\nPOST: p\n\nTL;DR:"


def test_a_pair_at_both_token_limits_is_batched_whole(tmp_path):
    """The loaders cut rows at ``max_prompt_tokens + max_response_tokens + 1`` (the collator appends an
    eos): a test pair exactly at both limits -- prompt ``<s> Human: q r Assistant:`` = 5 tokens, response
    ``c d`` = 2 -- passes the length filter and reaches the reward model whole, 8 tokens, not with its
    first prompt token cut. Ids by hand from the vocabulary (Human: 4, Assistant: 5, q 6, r 7, s 8,
    c 9, d 10); the row also equals ``reward_model_inputs`` of the pair uncut. Exact equality."""
    from infalign.models.reward import reward_model_inputs

    tok = styled_word_tokenizer("llama", ["Human:", "Assistant:", "q", "r", "s", "c", "d"])
    prompt = "\n\nHuman: q r\n\nAssistant:"
    assert tok(prompt)["input_ids"] == [2, 4, 6, 7, 5]  # 5 tokens with <s>
    train = write_jsonl(tmp_path / "train.jsonl", [json.dumps(hh_record("\n\nHuman: q s\n\nAssistant:", "c d", "d c"))])
    test = write_jsonl(tmp_path / "test.jsonl", [json.dumps(hh_record(prompt, "c d", "d c"))])
    dm = PreferenceDataModule("hh", train_file=str(train), test_file=str(test), tokenizer=tok,
                              max_prompt_tokens=5, max_response_tokens=2, batch_size=1)
    dm.setup()
    assert dm.reports["test"].kept == 1 and dm.reports["test"].too_long == 0
    batch = next(iter(dm.val_dataloader()))
    uncut = reward_model_inputs(tok, [prompt], ["c d"])["input_ids"][0]
    assert batch["input_ids"][0].tolist() == [2, 4, 6, 7, 5, 9, 10, 3] == uncut.tolist()
    assert batch["input_ids"][1].tolist() == [2, 4, 6, 7, 5, 10, 9, 3]  # the rejected row, whole too


def test_a_held_out_prompt_whose_whitespace_variant_stayed_in_train_is_dropped(tmp_path):
    """A single train file, ``val_fraction=0.5``: the hash (``held_out``, of the raw text) holds out
    ``"q0 "`` and ``q6`` and keeps ``q0`` and ``q1`` (checked below, not assumed). ``"q0 "`` is ``q0`` to a
    chat policy (``prompt_key``), a train prompt: it is dropped from the held-out test split and counted
    (``in_train == 1``), leaving ``q6`` alone -- the policy is not evaluated on a prompt it trained on."""
    from infalign.data.formats import held_out

    hh = [f"\n\nHuman: {x}\n\nAssistant:" for x in ("q0", "q0 ", "q6", "q1")]
    assert [held_out(p, 0.5) for p in hh] == [False, True, True, False]
    train = write_jsonl(tmp_path / "train.jsonl", [json.dumps(hh_record(p, "yes", "no")) for p in hh])
    dm = PreferenceDataModule("hh", train_file=str(train), val_fraction=0.5)
    dm.setup()
    assert dm.prompts("test") == ["\n\nHuman: q6\n\nAssistant:"]
    assert dm.reports["test"].in_train == 1 and dm.reports["train"].held_out == 2
    assert sorted(dm.prompts("train")) == sorted([hh[0], hh[3]])


def test_a_hold_out_that_leaves_a_side_empty_is_a_config_error_of_val_fraction(tmp_path):
    """Extension-walkthrough finding: a val_fraction that held out none of a small file's prompts (a hash per
    prompt: the fraction holds on average) ended the run with a ValueError traceback, exit 1; it is a
    ConfigError of data.val_fraction (the one block, exit 2). Of these four prompts 0.01 holds out none
    and 0.99 all (``held_out``, checked here, not assumed)."""
    from infalign.data.formats import held_out

    hh = [f"\n\nHuman: {x}\n\nAssistant:" for x in ("q0", "q2", "q6", "q1")]
    assert [held_out(p, 0.01) for p in hh] == [False] * 4 and [held_out(p, 0.99) for p in hh] == [True] * 4
    train = write_jsonl(tmp_path / "train.jsonl", [json.dumps(hh_record(p, "yes", "no")) for p in hh])
    for fraction, left in ((0.01, "leaves 4 train / 0 test"), (0.99, "leaves 0 train / 4 test")):
        with pytest.raises(ConfigError) as err:
            PreferenceDataModule("hh", train_file=str(train), val_fraction=fraction).setup()
        assert err.value.key == "data.val_fraction" and err.value.value == fraction and left in str(err.value)
    # every held-out prompt a whitespace variant of a train one (q0, "q0 ": only "q0 " held out at 0.5): the same
    # block (review: it named data.name_or_path, which was never set)
    hh = [f"\n\nHuman: {x}\n\nAssistant:" for x in ("q0", "q0 ", "q1")]
    assert [held_out(p, 0.5) for p in hh] == [False, True, False]
    train = write_jsonl(tmp_path / "variant.jsonl", [json.dumps(hh_record(p, "yes", "no")) for p in hh])
    with pytest.raises(ConfigError) as err:
        PreferenceDataModule("hh", train_file=str(train), val_fraction=0.5).setup()
    assert err.value.key == "data.val_fraction" and "leaves 2 train / 0 test" in str(err.value)


def test_a_dataset_left_without_pairs_is_a_config_error_of_its_key(tmp_path, tok):
    """Walkthrough finding: an empty train file, a test file of malformed records and a prompt limit every
    pair exceeds ended the run with a ValueError traceback (exit 1). Each is a ConfigError (the run's one
    block, exit 2) naming what to change -- data.train_file, data.test_file, data.max_prompt_tokens -- with
    the parse's own words (the file, its counts) as the hint."""
    good = write_jsonl(tmp_path / "good.jsonl", hh_lines()[:4])
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    broken = write_jsonl(tmp_path / "broken.jsonl", hh_lines()[4:])
    for train, test, key, words in ((empty, good, "data.train_file", "0 records"),
                                    (good, broken, "data.test_file", "prompt_mismatch")):
        with pytest.raises(ConfigError) as err:
            PreferenceDataModule("hh", train_file=str(train), test_file=str(test)).setup()
        assert err.value.key == key and err.value.value == str(train if key.endswith("train_file") else test)
        assert "no usable preference pairs" in str(err.value) and words in str(err.value)
    with pytest.raises(ConfigError) as err:
        PreferenceDataModule("hh", train_file=str(good), tokenizer=tok, max_prompt_tokens=1).setup()
    assert err.value.key == "data.max_prompt_tokens" and "longer than max_prompt_tokens=1" in str(err.value)
    # the key is the limit that excluded them: here the response's, though both are set (review finding)
    with pytest.raises(ConfigError) as err:
        PreferenceDataModule("hh", train_file=str(good), tokenizer=tok, max_prompt_tokens=256,
                             max_response_tokens=1).setup()
    assert err.value.key == "data.max_response_tokens" and err.value.value == 1
    # records of another dataset's format: the hint says data.source may be the one to change
    tldr = write_jsonl(tmp_path / "tldr.jsonl", [json.dumps({"info": {"post": "p"}, "summaries": [], "choice": 0})])
    with pytest.raises(ConfigError) as err:
        PreferenceDataModule("hh", train_file=str(tldr), test_file=str(good)).setup()
    assert "data.source=hh's format" in str(err.value) and "or the data.source whose format" in str(err.value)


def test_prompt_order_is_the_seeded_permutation(tmp_path):
    """``prompts(split)`` is a seeded permutation of the distinct prompts in file order --
    ``np.random.default_rng([seed, 2]).permutation(n)`` -- not the file order: with 4 train prompts p0..p3
    and ``seed=0`` that is [2, 1, 0, 3] (written out by hand, and checked against numpy), ``prompts(s, 2)``
    is its prefix, and ``seed=1`` gives another order, [3, 1, 0, 2]."""
    import numpy as np

    p = [f"\n\nHuman: p{i}\n\nAssistant:" for i in range(4)]
    train = write_jsonl(tmp_path / "train.jsonl", [json.dumps(hh_record(x, "yes", "no")) for x in p])
    test = write_jsonl(tmp_path / "test.jsonl", [json.dumps(hh_record(PARIS, "Paris.", "Lyon."))])

    def order(seed):
        dm = PreferenceDataModule("hh", train_file=str(train), test_file=str(test), seed=seed)
        return dm, dm.prompts("train")

    assert np.random.default_rng([0, 2]).permutation(4).tolist() == [2, 1, 0, 3]
    assert np.random.default_rng([1, 2]).permutation(4).tolist() == [3, 1, 0, 2]
    dm, prompts = order(0)
    assert prompts == [p[2], p[1], p[0], p[3]]
    assert dm.prompts("train", 2) == [p[2], p[1]]
    assert order(1)[1] == [p[3], p[1], p[0], p[2]]


def test_a_missing_split_names_the_files_the_dir_holds(tmp_path):
    """Walkthrough finding: a local TL;DR dir with ``train.jsonl`` and ``test.jsonl`` (TL;DR's evaluation split
    is ``validation``) held out part of train, the warning naming only the ``validation*`` names it tried."""
    from infalign.data.formats import MissingSplitError, local_split_file

    (tmp_path / "train.jsonl").write_text("{}\n")
    (tmp_path / "test.jsonl").write_text("{}\n")
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(MissingSplitError, match=r"no 'validation' split in .*validation\.jsonl\.gz; it holds "
                                                r"test\.jsonl, train\.jsonl \(data\.train_file / data\.test_file"):
        local_split_file(tmp_path, "validation")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingSplitError) as err:
        local_split_file(tmp_path / "empty", "validation")
    assert "it holds" not in str(err.value)


def test_a_record_whose_text_is_not_valid_unicode_is_malformed_not_a_crash():
    """Real-data review: ``{"chosen": "...\\ud83d..."}`` is valid JSON that decodes to a lone surrogate; the run
    died in the tokenizer with ``TypeError: TextEncodeInput must be ...`` naming no file, line or key. It is a
    malformed record (``invalid_text``), counted and skipped like the others."""
    import json

    from infalign.data.formats import RawRecord, parse_hh_record, parse_records

    good = {"chosen": "\n\nHuman: hi\n\nAssistant: yes", "rejected": "\n\nHuman: hi\n\nAssistant: no"}
    bad = json.loads('{"chosen": "\\n\\nHuman: hi \\ud83d there\\n\\nAssistant: yes", '
                     '"rejected": "\\n\\nHuman: hi \\ud83d there\\n\\nAssistant: no"}')
    pairs, report = parse_records([RawRecord(1, good), RawRecord(2, bad)], parse_hh_record, "f.jsonl")
    assert len(pairs) == 1 and report.malformed == {"invalid_text": 1}
    assert report.examples[0][0] == 2 and "prompt" in report.examples[0][1]


def test_a_model_file_or_a_parquet_data_file_is_refused_before_compute_with_what_to_name(tmp_path):
    """Real-data review: ``policy.name_or_path=<dir>/model.safetensors`` said "not a local directory and could not
    be loaded from the Hugging Face hub (offline?)" -- the path exists, it is a file; a ``data.train_file`` in
    parquet passed the check and failed in the world stage as "not UTF-8 text". Both say what to name instead."""
    from infalign.data.formats import DataFileError, check_data_file
    from infalign.errors import ConfigError
    from infalign.models.builders import resolve_name_or_path

    weights = tmp_path / "model" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"x")
    with pytest.raises(ConfigError) as info:
        resolve_name_or_path(str(weights), "policy.name_or_path")
    assert info.value.key == "policy.name_or_path" and str(weights.parent) in str(info.value)
    parquet = tmp_path / "train.parquet"
    parquet.write_bytes(b"PAR1" + b"\0" * 32)
    with pytest.raises(DataFileError, match="parquet file: local data files are JSON lines"):
        check_data_file(parquet, "data.train_file")
    (tmp_path / "ok.jsonl").write_text("{}\n")
    assert check_data_file(tmp_path / "ok.jsonl") == tmp_path / "ok.jsonl"
