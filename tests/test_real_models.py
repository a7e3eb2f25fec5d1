"""Real-format models on real-format text (no network): a Llama-style causal LM whose tokenizer adds
BOS (with and without a chat template) and a BERT-style sequence-classification reward model whose
tokenizer wraps text in [CLS] ... [SEP], all tiny and saved with ``save_pretrained`` by the test; HH
JSON-lines fixtures. Covers: one reward-model input format for training and scoring, special
tokens, reward models from a causal LM, checks before any compute, data-file messages, length
limits after the chat template, and reward-model training reports."""

from __future__ import annotations

import gzip
import json
import logging
import warnings
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from infalign.errors import ConfigError
from infalign.models import RewardScorer, encode_prompt_response, load_reward_model, load_tokenizer
from infalign.pipeline import world as world_mod
from pipeline_helpers import compose_train
from test_data import styled_word_tokenizer, write_jsonl
from test_real_data_experiments import TOPICS, hh_line

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _vocab_words() -> list[str]:
    texts = [json.loads(hh_line(i))["chosen"] for i in range(len(TOPICS))]
    texts += ["<|user|> <|assistant|> <|system|> <|end|> be brief no a"]
    return sorted({w for t in texts for w in t.split()})


def _word_tokenizer(style: str):
    """A whitespace word-level tokenizer over the HH fixtures' words: ``llama`` (prepends <s>, eos </s>) or
    ``bert`` ([CLS] text [SEP], no eos) -- test_data.styled_word_tokenizer."""
    return styled_word_tokenizer(style, _vocab_words())


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """``lm`` (Llama-style, chat template), ``lm_plain`` (same weights, no template), ``rm`` (BERT
    reward model), ``lm_no_tok`` (weights only) and HH train/test files."""
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        LlamaConfig,
        LlamaForCausalLM,
    )

    root = tmp_path_factory.mktemp("realfmt")
    llama, bert = _word_tokenizer("llama"), _word_tokenizer("bert")
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(llama), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=2, eos_token_id=3, pad_token_id=0))
    rm = BertForSequenceClassification(BertConfig(
        vocab_size=len(bert), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=512, num_labels=1, pad_token_id=0, initializer_range=1.0))
    lm.save_pretrained(root / "lm_plain")
    llama.save_pretrained(root / "lm_plain")
    lm.save_pretrained(root / "lm_no_tok")
    llama.chat_template = CHAT_TEMPLATE
    lm.save_pretrained(root / "lm")
    llama.save_pretrained(root / "lm")
    rm.save_pretrained(root / "rm")
    bert.save_pretrained(root / "rm")
    lines = [hh_line(i) for i in range(len(TOPICS))]
    write_jsonl(root / "train.jsonl", lines[:9])
    write_jsonl(root / "test.jsonl", lines[9:])
    return root


def cfg_for(root, tmp_path, *extra):
    return compose_train(
        tmp_path / "cache", tmp_path / "run", "experiment=hh_harmless_won", "trainer=cpu", "policy.dtype=float32",
        "reward.dtype=float32", "policy.chat_template=true", f"policy.name_or_path={root / 'lm'}",
        f"reward.name_or_path={root / 'rm'}", f"data.train_file={root / 'train.jsonl'}",
        f"data.test_file={root / 'test.jsonl'}", "data.train_prompts=4", "data.eval_prompts=3",
        "reward.max_length=64", "+reward.train.accelerator=cpu", *extra, toy=False)


def test_the_trained_policy_keeps_float32_weights_beside_a_bfloat16_reference(assets, tmp_path, caplog):
    """policy.dtype is the frozen reference's; the policy AdamW updates loads in policy.train_dtype
    (float32 by default): in bfloat16 an update of lr = 1e-6 to a weight of ~0.02 rounds away (the
    control below shows it does). A half-precision train_dtype is allowed, with a warning."""
    import logging

    import torch

    world = world_mod.load_world(cfg_for(assets, tmp_path, "policy.dtype=bfloat16"), tmp_path / "cache")
    assert next(world.reference.parameters()).dtype == torch.bfloat16
    assert {p.dtype for p in world.policy.parameters()} == {torch.float32}
    for dtype, moved in ((torch.float32, True), (torch.bfloat16, False)):  # why: one AdamW step at lr 1e-6
        w = torch.nn.Parameter(torch.full((1000,), 0.02, dtype=dtype))
        opt = torch.optim.AdamW([w], lr=1e-6, weight_decay=0.0)
        w.grad = torch.ones_like(w)
        opt.step()
        assert bool((w != 0.02 if dtype == torch.float32 else w != torch.tensor(0.02, dtype=dtype)).all()) is moved
    with caplog.at_level(logging.WARNING, logger="infalign.pipeline.world"):
        half = world_mod.load_world(cfg_for(assets, tmp_path / "half", "policy.train_dtype=bfloat16"),
                                    tmp_path / "cache")
    assert next(half.policy.parameters()).dtype == torch.bfloat16
    assert "policy.train_dtype=bfloat16" in caplog.text


# ---------------------------------------------------------------------------- defect 1: one input format


@pytest.mark.parametrize("prompt_format", ["full", "last_user_turn"])
def test_a_pair_scores_the_same_in_training_and_in_scoring(assets, tmp_path, prompt_format):
    """The Bradley-Terry training path (PreferenceCollator -> RewardModelModule) and the scoring
    path (world.reward.score on the policy's chat-templated prompt) give the same score, for either
    reward.prompt_format (last_user_turn: the HH experiments' question, docs/method.md §6)."""
    from infalign.data.batches import PreferenceCollator
    from infalign.models.reward import reward_prompts
    from infalign.training import RewardModelModule

    world = world_mod.load_world(cfg_for(assets, tmp_path, f"reward.prompt_format={prompt_format}"),
                                 tmp_path / "cache")
    shown = world.train_prompts[0]
    assert shown.startswith("<|user|>") and shown.endswith("<|assistant|>")  # the policy sees the template
    raw = next(p for p in (json.loads(hh_line(i))["chosen"] for i in range(9)) if p.startswith(
        world.reward.dataset_prompts[shown]))
    prompt = world.reward.dataset_prompts[shown]
    assert prompt.endswith("\n\nAssistant:") and raw.startswith(prompt)
    chosen, rejected = raw[len(prompt):].strip(), "no"
    rm_tok = load_tokenizer(assets / "rm", "right", key="reward.name_or_path")
    batch = PreferenceCollator(rm_tok, max_length=64, pair=True, prompt_format=prompt_format)(
        [(prompt, chosen, rejected)])  # reward.input=pair
    (question,) = reward_prompts([prompt], prompt_format)
    last_turn = prompt.rsplit("\n\nHuman: ", 1)[1].removesuffix("\n\nAssistant:")  # "more on <topic> ?"
    assert question == (prompt if prompt_format == "full" else last_turn) and last_turn.startswith("more on")
    reference_encoding = rm_tok(question, chosen)  # what tokenizer(question, response) gives
    n = int(batch["attention_mask"][0].sum())
    for key in ("input_ids", "token_type_ids"):
        assert batch[key][0, :n].tolist() == reference_encoding[key], key
    assert 0 < sum(reference_encoding["token_type_ids"]) < n  # both segments present
    module = RewardModelModule(world.reward.model).eval()
    with torch.no_grad():
        trained_view = module(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    scored = world.reward.score([shown, shown], [chosen, rejected])
    # identical token rows, same model in eval mode: equal up to float summation order
    torch.testing.assert_close(scored, trained_view, atol=1e-6, rtol=1e-6)
    # and the test can fail: the templated text is a different input for this model
    templated = encode_prompt_response(rm_tok, [shown], [chosen])
    with torch.no_grad():
        wrong = world.reward.model(input_ids=templated["input_ids"],
                                   attention_mask=templated["attention_mask"]).logits[0, 0]
    assert abs(float(wrong) - float(scored[0])) > 1e-2
    shown_prompt = "{prompt}" if prompt_format == "full" else "{last_user_turn}"
    assert world.stats["reward_input_format"] == f"rm-input-v3:[CLS]{shown_prompt}[SEP]{{response}}[SEP];max_length=64"
    with pytest.raises(KeyError, match="not among the world's prompts"):
        world.reward.score(["an unseen prompt"], ["x"])


def test_the_hh_experiments_give_the_deberta_reward_model_the_last_human_turn_as_its_question():
    """OpenAssistant's DeBERTa reward model was trained on tokenizer(question, answer) with HH questions
    stripped of their Human: / Assistant: markers (docs/method.md §6, "The reward model's prompt"): the
    HH experiments set reward.prompt_format=last_user_turn; it is refused where prompts have no turns."""
    from infalign.models.reward import reward_prompts
    from infalign.pipeline.settings import model_settings
    from pipeline_helpers import compose_config

    dialogue = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: tell me\n\nHuman: about cats\n\nAssistant:"
    assert reward_prompts([dialogue], "last_user_turn") == ["tell me\n\nabout cats"]  # one speaker twice: one turn
    assert reward_prompts([dialogue], "full") == [dialogue]
    for experiment in ("hh_helpful_bon", "hh_harmless_won"):
        cfg = compose_config("train", f"experiment={experiment}")
        assert (cfg.reward.input, cfg.reward.prompt_format) == ("pair", "last_user_turn")
        model_settings(cfg)
    assert compose_config("train", "experiment=tldr_bon").reward.prompt_format == "full"
    with pytest.raises(ConfigError, match=r"reward\.prompt_format='last_user_turn'.*'full' for data\.source=tldr"):
        model_settings(compose_config("train", "experiment=tldr_bon", "reward.prompt_format=last_user_turn"))
    with pytest.raises(ConfigError, match=r"reward\.prompt_format='question'.*one of \['full', 'last_user_turn'\]"):
        model_settings(compose_config("train", "experiment=hh_helpful_bon", "reward.prompt_format=question"))


def test_a_system_prompt_without_the_chat_template_is_refused():
    """Walkthrough finding: ``policy.system_prompt`` with ``policy.chat_template=false`` was ignored (the prompts
    are fed as they are) without a word, and keyed the policy cache (an identical policy trained again)."""
    from infalign.pipeline.settings import model_settings
    from pipeline_helpers import compose_config

    with pytest.raises(ConfigError, match=r"policy\.system_prompt='be brief'.*null unless policy\.chat_template"):
        model_settings(compose_config("train", "experiment=hh_helpful_bon", "policy.chat_template=false",
                                      "policy.system_prompt=be brief"))
    model_settings(compose_config("train", "experiment=hh_helpful_bon", "policy.chat_template=true",
                                  "policy.system_prompt=be brief"))


def test_reward_input_format_is_part_of_the_reward_cache_keys(assets, tmp_path):
    """A different input format (here: max_length) gives a different reward fingerprint, so cached
    reward scores (pools) are never reused across formats."""
    a = world_mod.load_world(cfg_for(assets, tmp_path), tmp_path / "cache")
    b = world_mod.load_world(cfg_for(assets, tmp_path, "reward.max_length=32"), tmp_path / "cache")
    assert a.reward_fingerprint != b.reward_fingerprint
    assert a.reference_fingerprint == b.reference_fingerprint
    # a half-precision reference / reward model computes other numbers: other pool keys and world
    half = world_mod.load_world(cfg_for(assets, tmp_path, "policy.dtype=bfloat16", "reward.dtype=bfloat16"),
                                tmp_path / "cache")
    assert half.reference_fingerprint != a.reference_fingerprint and half.reward_fingerprint != a.reward_fingerprint
    assert half.stats["world_id"] != a.stats["world_id"]


def test_the_text_the_reward_reads_keys_its_cached_scores(assets, tmp_path):
    """Walkthrough finding: with policy.chat_template=true the reward reads the dataset's prompt text, which no
    cache key held. A data file edited at the same path only in the whitespace around turns (an export without
    the leading blank line) renders to the same templated prompts and changes what the reward reads: the
    calibration pool (and the evaluation pools, the trained policy) were served from the cache with the old
    text's scores. The text the reward reads is keyed where it is not the prompt itself."""
    import functools

    import lightning as L

    from infalign.pipeline.fit import calibration_table
    from infalign.pipeline.policy_cache import policy_key

    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.jsonl", "test.jsonl"):
        (data / name).write_text((assets / name).read_text())
    extra = ("reward.input=joined", "reward.prompt_format=full", f"data.train_file={data / 'train.jsonl'}",
             f"data.test_file={data / 'test.jsonl'}", "calibration.K=3")
    predict = functools.partial(L.Trainer, accelerator="cpu", devices=1, enable_progress_bar=False,
                                enable_model_summary=False)
    cfg = cfg_for(assets, tmp_path, *extra)
    before = world_mod.load_world(cfg, tmp_path / "cache")
    table_before, hit = calibration_table(before, cfg, predict, tmp_path / "cache")
    assert hit is False
    for name in ("train.jsonl", "test.jsonl"):  # the same records, without the blank line before the first turn
        rows = [json.loads(line) for line in (data / name).read_text().splitlines()]
        write_jsonl(data / name, [json.dumps({k: v.removeprefix("\n\n") for k, v in r.items()}) for r in rows])
    after = world_mod.load_world(cfg, tmp_path / "cache")
    assert after.train_prompts == before.train_prompts  # the policy's prompts: the same
    assert after.reward_reads(after.train_prompts) != before.reward_reads(before.train_prompts)
    assert after.stats["data_id"] != before.stats["data_id"]  # (a finished run of the old data is not kept)
    assert after.stats["world_id"] == before.stats["world_id"]  # the same models
    table_after, hit = calibration_table(after, cfg, predict, tmp_path / "cache")
    fresh, fresh_hit = calibration_table(after, cfg, predict, tmp_path / "fresh")
    assert hit is False and fresh_hit is False  # (was: a hit, serving the old text's scores)
    assert torch.equal(table_after.sorted_rewards, fresh.sorted_rewards)  # (this word-level tokenizer drops the
    # whitespace, so here the scores are those before the edit; a byte-level one's are not)
    assert policy_key(cfg, after, 0.1) != policy_key(cfg, before, 0.1)
    # without the chat template the reward reads the prompt itself: nothing more is keyed
    plain = world_mod.load_world(cfg_for(assets, tmp_path / "plain", *extra, "policy.chat_template=false",
                                         f"policy.name_or_path={assets / 'lm_plain'}"), tmp_path / "cache")
    assert plain.dataset_prompts is None and plain.reward_reads(plain.train_prompts) is None


def test_the_same_data_at_another_path_is_the_same_policy(assets, tmp_path):
    """Walkthrough finding: the policy cache was keyed by data.train_file's path (beside the prompts themselves):
    the same bytes copied elsewhere trained the policy again. Other prompts are another policy."""
    from infalign.pipeline.policy_cache import policy_key

    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("train.jsonl", "test.jsonl"):
        (moved / name).write_text((assets / name).read_text())
    cfg = cfg_for(assets, tmp_path)
    here = world_mod.load_world(cfg, tmp_path / "cache")
    cfg_moved = cfg_for(assets, tmp_path, f"data.train_file={moved / 'train.jsonl'}",
                        f"data.test_file={moved / 'test.jsonl'}")
    there = world_mod.load_world(cfg_moved, tmp_path / "cache")
    assert policy_key(cfg, here, 0.1) == policy_key(cfg_moved, there, 0.1)
    fewer = cfg_for(assets, tmp_path, "data.train_prompts=3")
    assert policy_key(fewer, world_mod.load_world(fewer, tmp_path / "cache"), 0.1) != policy_key(cfg, here, 0.1)


def test_a_checkpoint_trained_on_other_prompts_is_not_continued(assets, tmp_path):
    """Review finding: a finished run re-run with ``ckpt_path=last_or_new`` after its train file was edited at
    the same path was not kept (its data_id differs) but resumed its final checkpoint, trained 0 steps and
    recorded the old prompts' policy under the new data. The checkpoint's settings hold the training prompts
    (``policy_cache.training_prompts_id``): the resume is refused, naming them."""
    from infalign.apps import train as train_app

    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.jsonl", "test.jsonl"):
        (data / name).write_text((assets / name).read_text())
    extra = (f"data.train_file={data / 'train.jsonl'}", f"data.test_file={data / 'test.jsonl'}", "algo.steps=2",
             "policy_cache=false", "calibration.K=2")
    first = train_app.run(cfg_for(assets, tmp_path, *extra))
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    write_jsonl(data / "train.jsonl", [json.dumps({k: v.replace("Human:", "Human: Please,", 1) for k, v in r.items()})
                                       for r in rows])
    with pytest.raises(ConfigError, match=r"ckpt_path.*records other training prompts.*in a new run dir") as err:
        train_app.run(cfg_for(assets, tmp_path, *extra, "ckpt_path=last_or_new"))
    assert err.value.key == "ckpt_path"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["world"]["data_id"] == first["world"]["data_id"]


# ---------------------------------------------------------------------------- defect 3: special tokens


def test_the_preference_datamodules_loaders_encode_as_the_reward_model_reads(assets, tmp_path):
    """PreferenceDataModule measures lengths with the policy's tokenizer, but its loaders encode batches
    for the reward model: its tokenizer, reward.input=pair (token types) and reward.prompt_format -- as
    PreferenceCollator with those settings (the rows the scorer reads). Its loaders had used the policy's
    tokenizer, joined rows and the full prompt whatever the reward settings."""
    from infalign.data.batches import PreferenceCollator

    policy_tok, reward_tok = load_tokenizer(assets / "lm", "left"), load_tokenizer(assets / "rm", "right")
    cfg = cfg_for(assets, tmp_path)  # hh_harmless_won: reward.input=pair, reward.prompt_format=last_user_turn
    dm = world_mod.preference_data(cfg.data, policy_tok, None, reward_tok, True, "last_user_turn")
    batch = next(iter(dm.val_dataloader()))
    prompts, chosen, rejected = (list(c) for c in zip(*dm.pairs("test")))
    rows = list(zip(prompts, chosen, rejected))[: dm.hparams.batch_size]
    expected = PreferenceCollator(reward_tok, batch["input_ids"].shape[1] + 64, True, "last_user_turn")(rows)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids"}
    assert torch.equal(batch["input_ids"], expected["input_ids"])
    assert torch.equal(batch["token_type_ids"], expected["token_type_ids"])


def test_the_datamodules_reward_rows_are_cut_by_reward_max_length_not_the_policys_budget(assets, tmp_path,
                                                                                         monkeypatch):
    """The length filter's budget (max_prompt_tokens + max_response_tokens + 1) counts the policy's tokens; a
    reward tokenizer's rows (other special tokens: [CLS] ... [SEP] ... [SEP]) are cut by reward.max_length, as
    the scorer cuts them (a review of the change: a pair at the limits lost prompt tokens). Without a reward
    tokenizer the loaders keep the policy budget."""
    from infalign.data import modules

    seen = []
    monkeypatch.setattr(modules, "make_preference_dataloader", lambda *a, **k: seen.append(k["max_length"]))
    policy_tok, reward_tok = load_tokenizer(assets / "lm", "left"), load_tokenizer(assets / "rm", "right")
    cfg = cfg_for(assets, tmp_path, "data.max_prompt_tokens=200", "data.max_response_tokens=50")
    world_mod.preference_data(cfg.data, policy_tok).val_dataloader()
    world_mod.preference_data(cfg.data, policy_tok, None, reward_tok, True, "last_user_turn").val_dataloader()
    world_mod.preference_data(cfg.data, policy_tok, None, reward_tok, True, "last_user_turn", 64).val_dataloader()
    assert seen == [251, None, 64]


def test_encoding_uses_the_tokenizers_special_tokens(assets):
    bert = load_tokenizer(assets / "rm", "right")
    llama = load_tokenizer(assets / "lm", "right")
    enc = encode_prompt_response(bert, ["tell me about cats"], ["cats are nice"])
    assert bert.convert_ids_to_tokens(enc["input_ids"][0].tolist()) == [
        "[CLS]", "tell", "me", "about", "cats", "cats", "are", "nice", "[SEP]"]
    assert enc["response_mask"][0].tolist() == [0] * 5 + [1] * 4
    enc = encode_prompt_response(llama, ["tell me"], ["cats"])
    assert llama.convert_ids_to_tokens(enc["input_ids"][0].tolist()) == ["<s>", "tell", "me", "cats", "</s>"]
    # over max_length the prompt text is cut from the left, CLS / BOS stay first
    enc = encode_prompt_response(bert, ["tell me about cats"], ["nice"], max_length=5)
    assert bert.convert_ids_to_tokens(enc["input_ids"][0].tolist()) == ["[CLS]", "about", "cats", "nice", "[SEP]"]
    assert enc["truncated"].tolist() == [True]
    enc = encode_prompt_response(bert, ["tell me about cats", "cats"], ["nice", "nice"], max_length=5)
    assert enc["truncated"].tolist() == [True, False]  # "[CLS] cats nice [SEP]" fits


def test_the_scorer_says_once_that_it_cuts_long_inputs(assets, caplog):
    tok = load_tokenizer(assets / "rm", "right")
    model = load_reward_model(assets / "rm", tokenizer=tok).eval()
    scorer = RewardScorer(model, tok, max_length=5)
    with caplog.at_level("WARNING", logger="infalign.models.reward"):
        scorer.score(["cats"], ["nice"])  # fits: nothing to say
        assert "are cut" not in caplog.text
        scorer.score(["tell me about cats", "cats"], ["nice", "nice"])
        scorer.score(["tell me about cats"], ["nice"])
    assert caplog.text.count("reward model inputs longer than reward.max_length=5 tokens are cut") == 1
    assert "1 of 2 rows" in caplog.text


def test_bert_reward_model_reads_its_cls_token(assets):
    """Scoring equals the model on ``tokenizer(prompt + ' ' + response)`` (special tokens added the
    tokenizer's way: the pooled position 0 is [CLS])."""
    tok = load_tokenizer(assets / "rm", "right")
    model = load_reward_model(assets / "rm", tokenizer=tok).eval()
    prompts, responses = ["tell me about cats please", "more on tea ?"], ["cats are great", "no"]
    got = RewardScorer(model, tok).score(prompts, responses)
    with torch.no_grad():
        want = torch.stack([model(**tok(f"{p} {r}", return_tensors="pt")).logits[0, 0]
                            for p, r in zip(prompts, responses)])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------- defects 2 + 6: RM training


@pytest.mark.slow
def test_reward_model_from_a_causal_lm_is_trained_and_validated(assets, tmp_path, monkeypatch):
    cfg = cfg_for(assets, tmp_path, f"reward.name_or_path={assets / 'lm_plain'}", "reward.train.enabled=true",
                  "reward.input=joined", "reward.prompt_format=full",
                  "reward.train.steps=3", "reward.train.warmup=0", "reward.train.lr=1e-2",
                  "trainer.progress_bar=none")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        world = world_mod.load_world(cfg, tmp_path / "cache")
    # Lightning's "no val_dataloader, skipping val loop": the validation is its own step, not skipped
    assert not [w for w in seen if "val_dataloader" in str(w.message)]
    stats = world.stats
    assert stats["reward_trained"] is True and stats["reward_train_s"] > 0
    assert type(world.reward.model).__name__ == "LlamaForSequenceClassification"
    # (its pad is its own: an unended response is scored without the </s>, reward.unended_eos: false)
    assert stats["reward_input_format"] == ("rm-input-v3:<s>{prompt}{response}</s>;no </s> after an unended "
                                           "response;max_length=64")
    # the reported validation metrics are those of the trained model on the held-out pairs
    dm = world_mod.preference_data(cfg.data, load_tokenizer(assets / "lm", "left"))
    prompts, chosen, rejected = (list(c) for c in zip(*dm.pairs("test")))
    scorer = RewardScorer(world.reward.model, world.reward.tokenizer, max_length=64)
    margin = scorer.score(prompts, chosen) - scorer.score(prompts, rejected)
    assert stats["reward_val_accuracy"] == pytest.approx(float((margin > 0).float().mean()), abs=1e-6)
    assert stats["reward_val_loss"] == pytest.approx(float(torch.nn.functional.softplus(-margin).mean()), rel=1e-4)
    again = world_mod.load_world(cfg, tmp_path / "cache")  # cache hit reports the same validation
    assert again.stats["reward_trained"] is False
    assert again.stats["reward_val_accuracy"] == stats["reward_val_accuracy"]
    # an edit to the code that encodes or trains it (REWARD_TRAINING_CODE's digest) retrains: the old
    # model was trained on an encoding the edited scorer may no longer produce
    real_digest, seen = world_mod.modules_digest, []

    def edited_digest(modules, listed_in):
        seen.append(listed_in)
        return "edited" if listed_in == "REWARD_TRAINING_CODE" else real_digest(modules, listed_in)

    monkeypatch.setattr(world_mod, "modules_digest", edited_digest)
    edited = world_mod.load_world(cfg, tmp_path / "cache")
    assert "REWARD_TRAINING_CODE" in seen and edited.stats["reward_trained"] is True


@pytest.mark.slow
def test_a_damaged_trained_reward_model_is_rebuilt_not_loaded(assets, tmp_path, caplog):
    """Review finding: the cached Bradley-Terry model had no checksums -- a truncated model.safetensors was a
    cache hit that failed to load on every later run, a flipped byte was used silently, a truncated
    reward_training.json raised JSONDecodeError. Its manifest (infra/cache.write_manifest; hidden, so the
    model's fingerprint is its files') finds each: the entry is deleted and retrained, the same model."""
    cfg = OmegaConf.create({
        "reward": {"train": {"enabled": True, "steps": 2, "lr": 1e-3, "warmup": 0, "weight_decay": 0.0,
                             "accelerator": "cpu"}, "max_length": 64, "input": "joined"},
        "data": {"batch_size": 2, "seed": 0},
        "trainer": {"accelerator": "cpu", "precision": "32-true", "progress_bar": "none"}})

    class Pairs:
        def pairs(self, split):
            return [("p1", "a b", "b a"), ("p2", "a", "b"), ("p3", "b b", "a a"), ("p4", "a a", "b")]

    tok = load_tokenizer(str(assets / "lm_plain"), "right", key="reward.name_or_path")

    def train():
        return world_mod.train_reward_model(cfg, Pairs(), str(assets / "lm_plain"), tok, tmp_path / "cache")

    path, stats = train()
    path = Path(path)
    assert stats["reward_trained"] and (path / world_mod.REWARD_MANIFEST).is_file()
    fingerprint = world_mod.fingerprint_dir(path)
    assert train()[1]["reward_trained"] is False  # intact: a hit
    weights = path / "model.safetensors"
    for damage in (lambda b: b[: len(b) // 2], lambda b: b[:-100] + bytes([b[-100] ^ 0xFF]) + b[-99:]):
        weights.write_bytes(damage(weights.read_bytes()))
        assert train()[1]["reward_trained"] is True
        load_reward_model(str(path), tokenizer=tok)
    (path / world_mod.REWARD_TRAINING_FILE).write_text('{"val_loss": 0.')
    assert train()[1]["reward_trained"] is True
    assert "corrupt cache entry" in caplog.text and world_mod.fingerprint_dir(path) == fingerprint


def test_a_trained_reward_models_key_holds_the_device_kind_off_the_cpu(assets, tmp_path, monkeypatch):
    """Review finding: the Bradley-Terry model's cache key held no device, so one trained on a GPU (other
    rounding) was served to CPU runs and back. The kind it trains on (auto resolved) is keyed off the CPU;
    CPU-trained models keep their keys."""
    from infalign.infra import cache as cache_mod

    class Seen(Exception):
        pass

    def key_of(accelerator, gpus):
        cfg = OmegaConf.create({
            "reward": {"train": {"enabled": True, "steps": 2, "lr": 1e-3, "warmup": 0, "weight_decay": 0.0},
                       "max_length": 64, "input": "joined"},
            "data": {"batch_size": 2, "seed": 0},
            "trainer": {"accelerator": accelerator, "precision": "32-true", "progress_bar": "none"}})

        class Pairs:
            def pairs(self, split):
                return [("p1", "a b", "b a"), ("p2", "a", "b")]

        def seen(path, *a, **k):
            raise Seen(Path(path).name)

        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        monkeypatch.setattr(cache_mod, "cached", seen)
        tok = load_tokenizer(str(assets / "lm_plain"), "right", key="reward.name_or_path")
        with pytest.raises(Seen) as got:
            world_mod.train_reward_model(cfg, Pairs(), str(assets / "lm_plain"), tok, tmp_path / "cache")
        return str(got.value)

    cpu = key_of("cpu", 0)
    assert key_of("auto", 0) == cpu and key_of("cpu", 1) == cpu
    assert key_of("auto", 1) != cpu and key_of("auto", 1) == key_of("gpu", 1)


def test_reward_model_from_a_causal_lm_keeps_its_transformer_and_adds_a_scalar_head(assets):
    from infalign.models import load_causal_lm

    lm = load_causal_lm(assets / "lm_plain")
    rm = load_reward_model(assets / "lm_plain", from_causal_lm=True, key="reward.name_or_path")
    assert type(rm).__name__ == "LlamaForSequenceClassification" and rm.config.num_labels == 1
    assert rm.score.out_features == 1 and rm.config.pad_token_id == 0
    for (name, a), b in zip(lm.model.state_dict().items(), rm.model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)


def test_causal_lm_as_reward_without_training_is_rejected_naming_the_switch(assets, tmp_path):
    cfg = cfg_for(assets, tmp_path, f"reward.name_or_path={assets / 'lm_plain'}")
    with pytest.raises(ValueError, match=r"reward\.name_or_path.*LlamaForCausalLM.*reward\.train\.enabled=true"):
        world_mod.load_world(cfg, tmp_path / "cache")


@pytest.mark.filterwarnings("ignore:.*no `val_dataloader`")  # (none by design: a training-mode probe)
def test_reward_model_trains_in_train_mode(assets):
    """``from_pretrained`` models are in eval mode; training must switch dropout on."""
    import lightning as L

    from infalign.data.batches import make_preference_dataloader
    from infalign.training import RewardModelModule

    tok = load_tokenizer(assets / "rm", "right")
    model = load_reward_model(assets / "rm", tokenizer=tok)
    assert not model.training
    seen = []

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(pl_module.model.training and pl_module.model.bert.encoder.training)

    loader = make_preference_dataloader(tok, ["tell me"] * 2, ["cats are nice"] * 2, ["no"] * 2, batch_size=2)
    L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, accelerator="cpu", callbacks=[Probe()]).fit(RewardModelModule(model), loader)
    assert seen == [True]


# ---------------------------------------------------------------------------- defect 4: early checks


@pytest.fixture
def no_compute(monkeypatch):
    """Any data loading, reward training or toy build fails the test: the check must come first."""
    def boom(*a, **k):
        raise AssertionError("compute started before the config was checked")

    for name in ("preference_data", "train_reward_model"):
        monkeypatch.setattr(world_mod, name, boom)
    monkeypatch.setattr("infalign.toy.build_toy_world", boom)


def test_missing_train_file_is_named_before_any_compute(assets, tmp_path, no_compute):
    """A ConfigError (the app's one block, exit 2: README "When things go wrong"), not a traceback."""
    cfg = cfg_for(assets, tmp_path, f"data.train_file={tmp_path / 'nope.jsonl'}")
    with pytest.raises(ConfigError, match=rf"file not found: {tmp_path / 'nope.jsonl'} \(data\.train_file\)") as err:
        world_mod.load_world(cfg, tmp_path / "cache")
    assert err.value.key == "data.train_file" and isinstance(err.value.__cause__, FileNotFoundError)


def test_the_same_train_and_test_file_is_named_before_any_compute(assets, tmp_path, no_compute):
    """Walkthrough finding: the same file as data.train_file and data.test_file was a ValueError traceback
    from the data module, after the models loaded; it is a ConfigError of data.test_file in the config
    check (also through another spelling of the path)."""
    path = assets / "train.jsonl"
    cfg = cfg_for(assets, tmp_path, f"data.train_file={path}", f"data.test_file={path.parent / '.' / path.name}")
    with pytest.raises(ConfigError, match="a file other than data.train_file") as err:
        world_mod.load_world(cfg, tmp_path / "cache")
    assert err.value.key == "data.test_file"


def test_missing_local_dataset_dir_is_named_before_any_compute(assets, tmp_path, no_compute):
    cfg = cfg_for(assets, tmp_path, "data.test_file=null", f"data.name_or_path={tmp_path / 'hh-clone'}")
    with pytest.raises(ConfigError, match=r"file not found: .*hh-clone \(data\.name_or_path\)") as err:
        world_mod.load_world(cfg, tmp_path / "cache")
    assert err.value.key == "data.name_or_path"


def test_policy_without_chat_template_names_the_key_before_reward_training(assets, tmp_path, no_compute):
    cfg = cfg_for(assets, tmp_path, f"policy.name_or_path={assets / 'lm_plain'}", "reward.train.enabled=true")
    with pytest.raises(ConfigError, match=r"policy\.chat_template=True.*no chat_template"):
        world_mod.load_world(cfg, tmp_path / "cache")


@pytest.mark.slow
@pytest.mark.parametrize("override, match", [
    ("policy.name_or_path=nonexistent-org/tiny-lmm", r"policy\.name_or_path='nonexistent-org/tiny-lmm'"),
    ("reward.name_or_path=nonexistent-org/tiny-rm", r"reward\.name_or_path='nonexistent-org/tiny-rm'"),
    ("policy.name_or_path={root}/lm_no_tok", r"policy\.name_or_path=.*lm_no_tok.*no tokenizer"),
    ("policy.name_or_path={root}/rm", r"policy\.name_or_path=.*BertForSequenceClassification.*not a causal"),
])
def test_bad_model_names_fail_under_their_key_before_any_compute(assets, tmp_path, no_compute, override, match):
    cfg = cfg_for(assets, tmp_path, override.format(root=assets), "reward.train.enabled=true")
    with pytest.raises((OSError, ValueError), match=match):
        world_mod.load_world(cfg, tmp_path / "cache")


@pytest.mark.parametrize("group", ["policy", "reward"])
def test_a_model_directory_without_weights_is_named_before_any_compute(assets, tmp_path, no_compute, group):
    """config.json and a tokenizer but no weight file (an interrupted copy): refused by the config check,
    not by from_pretrained's OSError after data loading and reward-model training."""
    import shutil

    source = assets / ("lm" if group == "policy" else "rm")
    bare = tmp_path / f"{group}-no-weights"
    shutil.copytree(source, bare, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    assert (bare / "config.json").is_file() and not list(bare.glob("*.safetensors"))
    cfg = cfg_for(assets, tmp_path, f"{group}.name_or_path={bare}", "reward.train.enabled=true")
    with pytest.raises(ConfigError, match=rf"{group}\.name_or_path='.*{group}-no-weights'.*model\.safetensors"
                                          r".*pytorch_model\.bin.*no weight file"):
        world_mod.load_world(cfg, tmp_path / "cache")


@pytest.mark.parametrize("group", ["policy", "reward"])
def test_a_weight_file_cut_short_or_a_broken_config_is_an_error_naming_the_key(assets, tmp_path, group):
    """Review finding (bad input): a model dir whose model.safetensors was cut short (a copy interrupted)
    raised safetensors' own 'Error while deserializing header', naming neither the key nor the path; a
    truncated local config.json was reported as 'not a local directory ... from the Hugging Face hub'."""
    import shutil

    from infalign.models import builders

    source = tmp_path / group
    shutil.copytree(assets / ("lm" if group == "policy" else "rm"), source)
    load = builders.load_causal_lm if group == "policy" else load_reward_model
    key = f"{group}.name_or_path"
    weights = source / "model.safetensors"
    for cut in (lambda b: b[: len(b) // 2], lambda b: b""):
        weights.write_bytes(cut(weights.read_bytes()) if weights.stat().st_size else b"")
        with pytest.raises(OSError, match=rf"{group}\.name_or_path=.*a weight file in that directory cannot be read"):
            load(str(source), key=key)
    config = source / "config.json"
    config.write_text(config.read_text()[:20])
    with pytest.raises(OSError, match=rf"{group}\.name_or_path=.*the config\.json of this local directory cannot"):
        load(str(source), key=key)


def test_prompt_budget_must_fit_the_policy_positions(assets, tmp_path, no_compute):
    """The tiny Llama has 512 positions: 500 prompt + 20 new tokens cannot fit."""
    cfg = cfg_for(assets, tmp_path, "data.max_prompt_tokens=500", "algo.max_new_tokens=20")
    with pytest.raises(ConfigError, match=r"data\.max_prompt_tokens=500.*at most 492.*512 positions"):
        world_mod.load_world(cfg, tmp_path / "cache")
    cfg = cfg_for(assets, tmp_path, "data.max_prompt_tokens=492", "algo.max_new_tokens=20")
    world_mod.check_world_config(cfg)  # exactly fits
    # a response that leaves no room for any prompt names its own key (walkthrough finding: it named
    # data.max_prompt_tokens, "at most -44")
    cfg = cfg_for(assets, tmp_path, "data.max_prompt_tokens=200", "algo.max_new_tokens=600")
    with pytest.raises(ConfigError) as err:
        world_mod.check_world_config(cfg)
    assert err.value.key == "algo.max_new_tokens" and "at most 511" in str(err.value)


@pytest.mark.parametrize("max_length, ok", [(512, True), (513, False), (1024, False), ("null", False)])
def test_reward_max_length_must_fit_the_reward_model_positions(assets, tmp_path, no_compute, max_length, ok):
    """The BERT reward model has 512 positions: hf.yaml's default 1024, or null (no cut), would fail at
    the first long input inside its embedding lookup (an IndexError naming nothing)."""
    cfg = cfg_for(assets, tmp_path, f"reward.max_length={max_length}")
    if ok:
        world_mod.check_world_config(cfg)
        return
    with pytest.raises(ConfigError, match=rf"reward\.max_length={max_length if max_length != 'null' else 'None'}"
                                          r".*<= 512.*reads at most 512 positions"):
        world_mod.load_world(cfg, tmp_path / "cache")


@pytest.mark.parametrize("reward_input, least", [("joined", 4), ("pair", 5)])
def test_reward_max_length_must_hold_the_rows_special_tokens(assets, tmp_path, no_compute, reward_input, least):
    """The BERT reward model's rows are [CLS] p r [SEP] (joined) or [CLS] p [SEP] r [SEP] (pair): a
    max_length below their special tokens + one prompt and one response token cut rows longer than it
    (negative slices); refused before compute, and by the encoder itself."""
    cfg = cfg_for(assets, tmp_path, f"reward.max_length={least}", f"reward.input={reward_input}")
    world_mod.check_world_config(cfg)
    pair = reward_input == "pair"
    bert = load_tokenizer(assets / "rm", "right")
    enc = encode_prompt_response(bert, ["tell me about cats"], ["cats are nice"], max_length=least, pair=pair)
    assert enc["input_ids"].shape[1] == least  # one prompt and one response token between the specials
    cfg = cfg_for(assets, tmp_path, f"reward.max_length={least - 1}", f"reward.input={reward_input}")
    with pytest.raises(ConfigError, match=rf"reward\.max_length={least - 1}.*null or an integer >= {least}"):
        world_mod.load_world(cfg, tmp_path / "cache")
    with pytest.raises(ValueError, match=rf"max_length={least - 1} is less than"):
        encode_prompt_response(bert, ["tell me about cats"], ["cats are nice"], max_length=least - 1, pair=pair)
    model = load_reward_model(assets / "rm", tokenizer=bert)
    with pytest.raises(ConfigError, match=r"reward\.max_length"):
        RewardScorer(model, bert, max_length=least - 1, pair=pair)


def test_toy_world_checks_a_policy_override_before_building(tmp_path, no_compute):
    cfg = compose_train(tmp_path / "cache", tmp_path / "run", f"policy.name_or_path={tmp_path / 'missing'}")
    with pytest.raises(ConfigError, match=r"policy\.name_or_path.*missing") as err:
        world_mod.load_world(cfg, tmp_path / "cache")
    assert err.value.key == "policy.name_or_path" and isinstance(err.value.__cause__, FileNotFoundError)


@pytest.mark.parametrize("override, key", [("algo.max_new_tokens=60", "algo"), ("eval.max_new_tokens=64", "eval"),
                                           ("calibration.max_new_tokens=57", "calibration")])
def test_toy_responses_too_long_for_the_toy_models_are_named_before_building(tmp_path, no_compute, override, key):
    """The toy models read 64 positions; the default world's longest prompt is 7 tokens and a reward row
    closes with eos, so at most 56 new tokens fit. More failed after the build with an error naming no key
    (64+), or silently cut every prompt to its last few tokens (60-63)."""
    cfg = compose_train(tmp_path / "cache", tmp_path / "run", override)
    with pytest.raises(ConfigError, match=rf"{key}\.max_new_tokens.*at most 56: the toy world's policy and reward "
                                          r"model read 64 positions -- its longest prompt \(7 tokens\)"):
        world_mod.check_world_config(cfg)
    world_mod.check_world_config(compose_train(tmp_path / "cache", tmp_path / "run", f"{key}.max_new_tokens=56"))


def test_a_policy_with_too_few_positions_for_max_new_tokens_names_the_key(assets, tmp_path):
    """A policy whose positions cannot hold max_new_tokens and one prompt token after BOS: a ConfigError naming
    the largest max_new_tokens, not generation's "prompt token limit ... leaves no room" (which named none)."""
    from infalign.models import load_causal_lm

    tok = load_tokenizer(assets / "lm_plain", "left")
    policy = load_causal_lm(assets / "lm_plain")
    policy.config.max_position_embeddings = 200  # (the hh entry's algo.max_new_tokens is 128)
    cfg = cfg_for(assets, tmp_path, "eval.max_new_tokens=199")
    prompts = {"train": ["be brief"]}
    with pytest.raises(ConfigError, match=r"eval\.max_new_tokens=199.*at most 198: the policy reads 200 positions"):
        world_mod.count_truncated_prompts(cfg, policy, tok, prompts)
    cfg = cfg_for(assets, tmp_path, "eval.max_new_tokens=198")
    assert world_mod.count_truncated_prompts(cfg, policy, tok, prompts) == {"prompts_truncated_train": 1}


# ---------------------------------------------------------------------------- data files


def test_train_file_alone_holds_out_its_own_test_split(assets, tmp_path, caplog):
    """data.name_or_path is the hub id (from conf/data/hh_harmless.yaml) but is never asked for
    the test split (offline it would raise)."""
    from infalign.data import PreferenceDataModule

    caplog.set_level(logging.WARNING)
    dm = PreferenceDataModule("hh", "Anthropic/hh-rlhf", train_file=str(assets / "train.jsonl"), val_fraction=0.3)
    dm.prepare_data()
    dm.setup()
    n_test = len(dm.pairs("test"))
    assert 0 < n_test < 9 and len(dm.pairs("train")) + n_test == 9
    assert "held out" in dm.reports["test"].source
    assert "data.test_file is not set: holding out data.val_fraction=0.3" in caplog.text


def test_same_train_and_test_file_is_refused(assets):
    """Evaluating on the training prompts would make every held-out figure optimistic."""
    from infalign.data import PreferenceDataModule

    path = str(assets / "train.jsonl")
    with pytest.raises(ConfigError, match="a file other than data.train_file") as err:
        PreferenceDataModule("hh", train_file=path, test_file=path).setup()
    assert err.value.key == "data.test_file"


def test_truncated_gzip_and_lfs_pointer_name_the_file_and_key(assets, tmp_path):
    from infalign.data import DataFileError, load_records

    blob = gzip.compress((assets / "train.jsonl").read_bytes())
    (tmp_path / "cut.jsonl.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataFileError, match=r"cut\.jsonl\.gz \(data\.train_file\) is truncated"):
        load_records(None, "train", files={"train": tmp_path / "cut.jsonl.gz"})
    (tmp_path / "lfs.jsonl.gz").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    with pytest.raises(DataFileError, match=r"lfs\.jsonl\.gz \(data\.test_file\) is a Git LFS pointer"):
        load_records(None, "test", files={"test": tmp_path / "lfs.jsonl.gz"}, keys={"test": "data.test_file"})


# ---------------------------------------------------------------------------- defect 7 + system prompt


def test_prompt_length_limit_applies_after_the_chat_template(assets):
    """Hand count: an HH prompt of these fixtures is ``Human: tell me about cats please Assistant:
    sure , cats are nice Human: more on cats ? Assistant:`` = 18 words -> 19 tokens with <s>. The
    template drops the 4 role words and adds <|user|> .. <|end|> <|assistant|> .. <|end|> <|user|> ..
    <|end|> <|assistant|> (7 tokens) -> 22, and the system prompt <|system|> be brief <|end|> 4 more
    -> 26."""
    from infalign.data import PreferenceDataModule

    tok = load_tokenizer(assets / "lm", "left")
    render = world_mod.policy_view(OmegaConf.create(
        {"chat_template": True, "system_prompt": "be brief"}), tok, "hh")
    prompt = json.loads(hh_line(0))["chosen"].rsplit("Assistant:", 1)[0] + "Assistant:"
    assert len(tok(prompt)["input_ids"]) == 19 and len(tok(render([prompt])[0])["input_ids"]) == 26

    def kept(limit, render_prompt):
        dm = PreferenceDataModule("hh", train_file=str(assets / "train.jsonl"),
                                  test_file=str(assets / "test.jsonl"), tokenizer=tok,
                                  max_prompt_tokens=limit, render_prompt=render_prompt)
        dm.setup()
        return dm.reports["train"].kept

    assert kept(19, None) == 9 and kept(26, render) == 9  # every fixture prompt has the same length
    with pytest.raises(ValueError, match="after the chat template"):
        kept(25, render)


def eos_appending_llama():
    """``(tokenizer, model)``: a word-level tokenizer that encodes ``'<s> text </s>'`` (a Llama tokenizer with
    ``add_eos_token=True``) and a tiny random Llama with 8 positions."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "<s>", "</s>", "tell", "me", "cats", "are", "nice"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 2),
                                                                                                  ("</s>", 3)])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                  eos_token="</s>", padding_side="left")
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=8,
                                      bos_token_id=2, eos_token_id=3, pad_token_id=0))
    return tok, lm


def test_prompts_are_encoded_without_a_trailing_eos_wherever_they_are_encoded(tmp_path):
    """A Llama tokenizer with add_eos_token=True encodes '<s> text </s>': a prompt so encoded would end
    with a stop token before every response. The sampler, IPO's pairs, the prompt-length filter and the
    truncation count encode it '<s> text' (builders.encode_prompts), as the reward rows do."""
    from infalign.data import PreferenceExample, filter_by_length
    from infalign.data.batches import PolicyPairCollator
    from infalign.data.formats import ParseReport
    from infalign.models.builders import encode_prompts
    from infalign.models.generation import sample

    tok, lm = eos_appending_llama()
    assert tok.convert_ids_to_tokens(tok("tell me")["input_ids"]) == ["<s>", "tell", "me", "</s>"]  # appends eos
    assert encode_prompts(tok, ["tell me"]) == [[2, 4, 5]]
    roll = sample(lm, tok, ["tell me", "cats"], num_samples=1, max_new_tokens=5,
                  generator=torch.Generator().manual_seed(0))
    assert tok.convert_ids_to_tokens(roll.prompt_ids[0].tolist()) == ["<s>", "tell", "me"]
    assert roll.truncated_prompts == 0  # 3 tokens fit the 8 - 5 positions left for a prompt
    cats, are_nice, nice = ([tok.convert_tokens_to_ids(w) for w in t.split()] for t in ("cats", "are nice", "nice"))
    pairs = PolicyPairCollator(tok)([("tell me", cats, nice), ("cats", are_nice, nice)])
    assert torch.equal(pairs["prompt_ids"], roll.prompt_ids) and torch.equal(pairs["prompt_mask"], roll.prompt_mask)
    kept = filter_by_length([PreferenceExample("tell me", "cats", "nice")], tok, 3, None, ParseReport("x"))
    assert len(kept) == 1  # '<s> tell me': 3 tokens
    cfg = OmegaConf.create({"algo": {"max_new_tokens": 5}})
    assert world_mod.count_truncated_prompts(cfg, lm, tok, {"train": ["tell me"]}) == {"prompts_truncated_train": 0}


def test_the_diverged_policy_probe_reads_the_prompts_as_the_sampler_does():
    """Review finding: the diverged-policy probe (pipeline/fit.check_trained_policy) encoded its prompts with
    ``tokenizer(prompt)`` and cut them blindly from the left: a Llama tokenizer with add_eos_token=True gave
    it '<s> text </s>' (a stop token where the policy starts its response) and a long prompt lost its BOS.
    It reads them as the sampler does (models/generation.policy_prompt_ids: builders.encode_prompts, then
    cut from the left keeping BOS): '<s>' then the prompt's last tokens."""
    from types import SimpleNamespace

    from infalign.models.generation import sample
    from infalign.pipeline.fit import check_trained_policy

    tok, lm = eos_appending_llama()
    prompt = "tell me cats are nice tell me cats are nice"  # 11 tokens with <s>; 7 positions left for 1 new token
    seen = []
    forward = lm.forward
    lm.forward = lambda input_ids=None, **kw: (seen.append(input_ids[0].tolist()), forward(input_ids, **kw))[1]
    check_trained_policy(SimpleNamespace(policy=lm, tokenizer=tok, train_prompts=[prompt]))
    assert tok.convert_ids_to_tokens(seen[0]) == ["<s>", "nice", "tell", "me", "cats", "are", "nice"]
    lm.forward = forward
    assert seen[0] == sample(lm, tok, [prompt], num_samples=1, max_new_tokens=1,
                             generator=torch.Generator().manual_seed(0)).prompt_ids[0].tolist()


def test_a_tldr_post_that_quotes_a_dialogue_is_one_user_turn_under_a_chat_template(assets, tmp_path):
    """Review finding: with policy.chat_template=true every prompt went through HH turn splitting, which
    raises Malformed (text before the first turn) for a TL;DR post quoting '\n\nHuman:' -- outside the
    loader's malformed count, so the run crashed. A prompt of a source that is not a dialogue
    (pipeline/settings.DIALOGUE_SOURCES) is rendered as one user turn, its text as is; an HH prompt is
    still split into its turns."""
    from test_real_data_experiments import tldr_line

    tok = load_tokenizer(assets / "lm", "left")
    post = "my cats story\n\nHuman: is this a dialogue ?\n\nAssistant: no it is a post"
    quoted = json.dumps({"info": {"post": post, "title": "about cats", "subreddit": "tifu"},
                         "summaries": [{"text": " cats went bad"}, {"text": " meh"}], "choice": 0})
    write_jsonl(tmp_path / "train.jsonl", [quoted, *(tldr_line(i) for i in range(1, 6))])
    write_jsonl(tmp_path / "test.jsonl", [tldr_line(i) for i in range(6, 9)])
    render = world_mod.policy_view(OmegaConf.create({"chat_template": True}), tok, "tldr")
    dm = world_mod.preference_data(OmegaConf.create({"source": "tldr", "train_file": str(tmp_path / "train.jsonl"),
                                                     "test_file": str(tmp_path / "test.jsonl")}), tok, render)
    assert dm.reports["train"].kept == 6
    (shown,) = [r for r in render(dm.prompts("train")) if "dialogue" in r]
    text = next(p for p in dm.prompts("train") if "dialogue" in p)
    assert shown == tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                            add_generation_prompt=True)
    hh = world_mod.policy_view(OmegaConf.create({"chat_template": True}), tok, "hh")
    assert hh(["\n\nHuman: more on tea ?\n\nAssistant: sure\n\nHuman: why ?\n\nAssistant:"])[0].count("<|user|>") == 2


def test_chat_template_bos_is_not_doubled(assets):
    """A template that writes ``{{ bos_token }}`` (Llama-3 style) + a tokenizer that adds BOS on
    encoding would give two BOS tokens; the rendered prompt drops the template's."""
    tok = load_tokenizer(assets / "lm", "left")
    tok.chat_template = "{{ bos_token }}" + CHAT_TEMPLATE
    (shown,) = world_mod.apply_chat_template(tok, ["\n\nHuman: more on tea ?\n\nAssistant:"], None, dialogue=True)
    ids = tok(shown)["input_ids"]  # what generation.sample feeds the policy
    assert tok.convert_ids_to_tokens(ids) == ["<s>", "<|user|>", "more", "on", "tea", "?", "<|end|>", "<|assistant|>"]


def test_sampling_stops_at_every_generation_config_eos(assets):
    """Llama-3-style ``generation_config.eos_token_id`` lists: decoding stops at any of them. With a
    zeroed LM head the next token is uniform over the vocabulary, so within 150 steps most of the
    32 rows draw ``<|end|>`` (p ~ 1 - (1 - 1/V)^150 each); every row must end right there."""
    from infalign.models import load_causal_lm
    from infalign.models.generation import sample, stop_token_ids

    tok = load_tokenizer(assets / "lm_plain", "left")
    lm = load_causal_lm(assets / "lm_plain")
    end = tok.convert_tokens_to_ids("<|end|>")
    lm.generation_config.eos_token_id = [tok.eos_token_id, end]
    assert stop_token_ids(lm, tok) == sorted({tok.eos_token_id, end})
    with torch.no_grad():
        lm.lm_head.weight.zero_()
    roll = sample(lm, tok, ["tell me about cats please"], num_samples=32, max_new_tokens=150,
                  generator=torch.Generator().manual_seed(0))
    stopped = 0
    for ids, n in zip(roll.response_ids.tolist(), roll.response_lengths.tolist()):
        body = ids[:n]
        assert end not in body[:-1] and tok.eos_token_id not in body[:-1]
        stopped += body[-1] == end
    assert stopped >= 10


@pytest.mark.slow
def test_generation_cuts_long_prompts_from_the_left_keeping_bos(assets):
    """The tiny Llama has 512 positions: with 508 new tokens a prompt keeps 4 tokens, BOS first and
    then the end of the conversation; the count is reported."""
    from infalign.models import load_causal_lm
    from infalign.models.generation import sample

    tok = load_tokenizer(assets / "lm_plain", "left")
    lm = load_causal_lm(assets / "lm_plain")
    roll = sample(lm, tok, ["tell me about cats please", "more on tea"], num_samples=1, max_new_tokens=508,
                  generator=torch.Generator().manual_seed(0))
    assert roll.truncated_prompts == 1
    assert tok.convert_ids_to_tokens(roll.prompt_ids[0].tolist()) == ["<s>", "about", "cats", "please"]
    assert tok.convert_ids_to_tokens(roll.prompt_ids[1].tolist()) == ["<s>", "more", "on", "tea"]


def test_prompts_over_the_policy_positions_are_counted_and_reported(assets, tmp_path, caplog):
    """Without data.max_prompt_tokens nothing drops long prompts: with 500 new tokens the tiny
    Llama's 512 positions leave 12 for a prompt, and every templated fixture prompt (22 tokens, see
    test_prompt_length_limit_applies_after_the_chat_template) is cut at generation -- counted per split
    and warned about. With the default limits none is."""
    caplog.set_level(logging.WARNING)
    cfg = cfg_for(assets, tmp_path, "data.max_prompt_tokens=null", "algo.max_new_tokens=500")
    world = world_mod.load_world(cfg, tmp_path / "cache")
    assert world.stats["prompts_truncated_train"] == 4 and world.stats["prompts_truncated_eval"] == 3
    assert "prompts longer than 12 tokens" in caplog.text and "4 train, 3 eval" in caplog.text
    world = world_mod.load_world(cfg_for(assets, tmp_path), tmp_path / "cache")
    assert world.stats["prompts_truncated_train"] == world.stats["prompts_truncated_eval"] == 0


def test_a_reward_model_whose_config_names_another_pad_id_scores_each_row_at_its_own_last_token(tmp_path, caplog):
    """A Llama reward checkpoint whose config says pad_token_id=1 (<unk>, as some fine-tunes ship) with
    a tokenizer padding with 0: HF's classifier skips config's pad id to find a row's last token, so
    without aligning the two a short row batched with a long one was scored at a padding column
    (its reward depended on its batch-mates: 2.05 alone, -2.35 batched in the review's example)."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = _word_tokenizer("llama")
    torch.manual_seed(0)
    rm = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=512, num_labels=1, pad_token_id=1, eos_token_id=3,
        initializer_range=0.5))
    rm.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    rtok = load_tokenizer(tmp_path / "rm", "right", key="reward.name_or_path")
    with caplog.at_level("WARNING"):
        model = load_reward_model(tmp_path / "rm", tokenizer=rtok)
    assert model.config.pad_token_id == rtok.pad_token_id == 0
    assert "config.pad_token_id=1 is not its tokenizer's pad id 0" in caplog.text
    scorer = RewardScorer(model, rtok, batch_size=8)
    words = _vocab_words()
    short, long = (words[0], words[1]), (words[2], " ".join(words[3:12]))
    alone = scorer.score([short[0]], [short[1]])
    batched = scorer.score([short[0], long[0]], [short[1], long[1]])
    torch.testing.assert_close(batched[:1], alone, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- guards found by mutation testing


def test_world_id_and_reward_fingerprint_follow_the_reward_models_own_dtype_and_format(assets, tmp_path):
    """The reward model's own dtype and input format key its scores and the world (reports never pool a
    bf16 reward model's runs with a float32 one's), while the reference's fingerprint stays."""
    a = world_mod.load_world(cfg_for(assets, tmp_path), tmp_path / "cache")
    half_rm = world_mod.load_world(cfg_for(assets, tmp_path, "reward.dtype=bfloat16"), tmp_path / "cache")
    assert half_rm.reference_fingerprint == a.reference_fingerprint
    assert half_rm.reward_fingerprint != a.reward_fingerprint
    assert half_rm.stats["world_id"] != a.stats["world_id"]
    fmt = world_mod.load_world(cfg_for(assets, tmp_path, "reward.max_length=32"), tmp_path / "cache")
    assert fmt.reward_fingerprint != a.reward_fingerprint and fmt.stats["world_id"] != a.stats["world_id"]


def test_a_trained_reward_models_cache_key_holds_data_seed(assets, tmp_path, monkeypatch):
    """data.seed seeds a trained reward model's head and shuffling: each seed its own cache entry."""
    import infalign.infra.cache as cache_mod

    keys = []

    def build_only(path, build, save, load):
        keys.append(path.name)
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod, "cached", build_only)
    train = (f"reward.name_or_path={assets / 'lm'}", "reward.train.enabled=true")
    for seed in (0, 1, 0):
        with pytest.raises(KeyboardInterrupt):
            world_mod.load_world(cfg_for(assets, tmp_path, *train, f"data.seed={seed}"), tmp_path / "cache")
    assert keys[0] != keys[1] and keys[2] == keys[0]


def test_a_hub_model_of_unknown_commit_is_keyed_by_the_revision_as_given(monkeypatch):
    """Without the commit in the local HF cache, revision=v1 and v2 still key other samples and worlds."""
    monkeypatch.setattr(world_mod, "hub_commit", lambda *a, **k: None)
    assert world_mod._commit("org/not-local", "v1", "policy") == "v1"
    assert world_mod._commit("org/not-local", None, "policy") is None
    name = "org/not-local"
    fp = [world_mod._fingerprint(name, world_mod._commit(name, r, "policy")) for r in ("v1", "v2")]
    assert fp[0] != fp[1]


def test_the_reward_input_limit_is_what_the_model_can_read():
    """input_token_limit (the reward.max_length check's bound) against the models themselves: a
    RoBERTa-style encoder's 34 positions read 32 tokens (ids start after the padding index) and 33
    fail; DeBERTa-v3's relative positions (position_biased_input=False) read past its 16 "positions",
    so it sets no limit; BERT and GPT-2 read exactly their positions."""
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        DebertaV2Config,
        DebertaV2ForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    from infalign.models.builders import input_token_limit

    small = dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                 num_labels=1)
    models = {
        "roberta": RobertaForSequenceClassification(RobertaConfig(**small, max_position_embeddings=34, pad_token_id=1)),
        "deberta": DebertaV2ForSequenceClassification(DebertaV2Config(
            **small, max_position_embeddings=16, position_biased_input=False, relative_attention=True,
            pos_att_type=["p2c", "c2p"])),
        "bert": BertForSequenceClassification(BertConfig(**small, max_position_embeddings=20)),
    }

    def reads(model, n: int) -> bool:
        try:
            with torch.no_grad():
                model.eval()(input_ids=torch.full((1, n), 5))
            return True
        except (IndexError, RuntimeError):
            return False

    assert input_token_limit(models["roberta"].config) == 32
    assert reads(models["roberta"], 32) and not reads(models["roberta"], 33)
    assert input_token_limit(models["deberta"].config) is None and reads(models["deberta"], 40)
    assert input_token_limit(models["bert"].config) == 20
    assert input_token_limit(RobertaConfig(**small, max_position_embeddings=34, pad_token_id=0)) == 33  # pad 0
    assert reads(models["bert"], 20) and not reads(models["bert"], 21)


def _pythia_like_reward_model(tmp_path, spare_rows: int, eos: bool = True):
    """A GPT-2 classifier saved as cleanrl's TL;DR reward models ship: a byte-level BPE tokenizer with an
    eos and no pad token, a config without pad_token_id, and ``spare_rows`` embedding rows beyond the
    tokenizer's vocabulary (Pythia pads its embedding to 50304 rows for 50277 tokens). ``eos=False``: a
    tokenizer without any special token."""
    from transformers import GPT2Config, GPT2ForSequenceClassification, PreTrainedTokenizerFast

    from test_models import _byte_bpe

    tok = PreTrainedTokenizerFast(tokenizer_object=_byte_bpe().backend_tokenizer, **({"eos_token": "<eos>"} if eos
                                                                                     else {}))
    assert tok.pad_token is None and (tok.eos_token is None) != eos
    torch.manual_seed(0)
    rm = GPT2ForSequenceClassification(GPT2Config(
        vocab_size=len(tok) + spare_rows, n_positions=64, n_embd=16, n_layer=1, n_head=2, num_labels=1,
        eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id, initializer_range=0.5))
    rm.config.pad_token_id = None
    path = tmp_path / f"rm{spare_rows}{'' if eos else '-no-eos'}"
    rm.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_reward_pad_token_reads_the_score_at_the_eos_as_a_model_trained_with_its_own_pad(tmp_path):
    """``reward.pad_token`` (conf/reward/hf.yaml; ``"[PAD]"`` in tldr_bon): with the tokenizer's eos as
    pad, HF's causal classifier skips the row's closing eos as padding and reads the score one token
    early, at the response's last token; cleanrl's TL;DR reward models were trained with an added [PAD]
    and scored at the eos. With the pad token set, the score is the classifier head at the eos position
    (computed here by hand from the hidden states), the same alone or batched with a longer row, and
    the input format (part of the reward fingerprint and cache keys) no longer says pad == eos."""
    from infalign.models.reward import PAD_IS_EOS_READ

    path = _pythia_like_reward_model(tmp_path, spare_rows=8)
    prompts, responses = ["Human: can you help? Assistant:"] * 2, ["Sure, I can help.", "Sure"]

    def scorer(pad_token):
        tok = load_tokenizer(path, "right", key="reward.name_or_path")
        from transformers import AutoConfig

        world_mod.use_reward_pad_token(tok, pad_token, AutoConfig.from_pretrained(path))
        return RewardScorer(load_reward_model(path, tokenizer=tok), tok, batch_size=8)

    plain, padded = scorer(None), scorer("[PAD]")
    assert plain.tokenizer.pad_token_id == plain.tokenizer.eos_token_id
    new_id = padded.tokenizer.pad_token_id
    assert new_id == len(plain.tokenizer) and padded.model.config.pad_token_id == new_id
    assert "pad == eos" in plain.input_format and "pad == eos" not in padded.input_format
    assert PAD_IS_EOS_READ.split(" (")[0] in plain.input_format

    model = padded.model
    enc = plain.tokenizer(prompts[0] + " " + responses[0], add_special_tokens=False)["input_ids"]
    ids = torch.tensor([enc + [plain.tokenizer.eos_token_id]])
    with torch.no_grad():
        head = model.score(model.transformer(ids).last_hidden_state)[0, :, 0]
    at_eos, at_last_response_token = head[-1], head[-2]
    alone, batched = padded.score(prompts[:1], responses[:1]), padded.score(prompts, responses)
    torch.testing.assert_close(alone[0], at_eos, atol=1e-5, rtol=0)
    torch.testing.assert_close(batched[:1], alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(plain.score(prompts[:1], responses[:1])[0], at_last_response_token, atol=1e-5, rtol=0)
    assert abs(float(at_eos - at_last_response_token)) > 1e-3  # the two read positions score differently


def test_reward_pad_token_needs_an_embedding_row_and_a_model_of_the_users_own(tmp_path):
    """No embedding row is added for the pad token (cleanrl added none): a new token's id must fall below the
    model's vocab_size, else a ConfigError naming reward.pad_token. The toy world's own reward model pads with
    its own <pad>: the key is refused there rather than ignored."""
    from transformers import AutoConfig

    path = _pythia_like_reward_model(tmp_path, spare_rows=0)
    tok = load_tokenizer(path, "right", key="reward.name_or_path")
    with pytest.raises(ConfigError, match=r"reward\.pad_token.*embedding rows"):
        world_mod.use_reward_pad_token(tok, "[PAD]", AutoConfig.from_pretrained(path))
    tok = load_tokenizer(path, "right", key="reward.name_or_path")
    world_mod.use_reward_pad_token(tok, "<eos>", AutoConfig.from_pretrained(path))  # an existing token: its id
    assert tok.pad_token_id == tok.eos_token_id
    cfg = compose_train(tmp_path / "cache", tmp_path / "run", "+reward.pad_token=[PAD]")
    with pytest.raises(ConfigError, match=r"reward\.pad_token.*toy world's own reward model"):
        world_mod.check_world_config(cfg)


def test_reward_pad_token_gives_a_tokenizer_with_neither_pad_nor_eos_its_pad(tmp_path):
    """Real-data walkthrough: a reward tokenizer with neither a pad nor an eos token was refused by
    load_tokenizer before reward.pad_token, the setting that gives it one, was read. With it set, the
    tokenizer loads and pads with the given token, and every row is scored as it is alone; without it, the
    refusal names reward.pad_token."""
    from transformers import AutoConfig

    from infalign.models.builders import check_reward_model

    path = _pythia_like_reward_model(tmp_path, spare_rows=8, eos=False)

    def checked(pad_token):
        cfg = OmegaConf.create({"reward": {"name_or_path": str(path), "revision": None, "pad_token": pad_token}})
        return world_mod._check_model(cfg, "reward", check_reward_model, "right")

    with pytest.raises(ConfigError, match=r"reward\.name_or_path.*neither a pad nor an eos token; reward\.pad_token "
                                          r"sets one"):
        checked(None)
    *_, tok = checked("[PAD]")
    assert tok.pad_token is None and tok.eos_token is None
    world_mod.use_reward_pad_token(tok, "[PAD]", AutoConfig.from_pretrained(path))
    assert tok.pad_token == "[PAD]" and tok.pad_token_id == len(tok) - 1
    scorer = RewardScorer(load_reward_model(path, tokenizer=tok), tok, batch_size=8)
    assert scorer.model.config.pad_token_id == tok.pad_token_id
    prompts, responses = ["Human: can you help? Assistant:"] * 2, ["Sure, I can help you with that.", "No"]
    batched = scorer.score(prompts, responses)
    alone = torch.cat([scorer.score(prompts[i:i + 1], responses[i:i + 1]) for i in range(2)])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)  # padded rows read at their own last token
    assert torch.isfinite(batched).all() and abs(float(batched[0] - batched[1])) > 1e-4
    with pytest.raises(ValueError, match=r"neither a pad nor an eos token$"):  # no setting to name
        load_tokenizer(path, "right", key="data.tokenizer_name_or_path")

def test_the_tldr_experiment_reads_its_reward_model_at_the_eos():
    """conf/experiment/tldr_bon.yaml pads the cleanrl TL;DR reward model's rows with [PAD], as it was trained."""
    from pipeline_helpers import compose_train as compose

    cfg = compose("/tmp/unused-cache", "/tmp/unused-run", "experiment=tldr_bon", toy=False)
    assert cfg.reward.pad_token == "[PAD]"


def test_refused_as_blames_the_config_only_for_what_is_not_there_or_not_that_kind(monkeypatch):
    """Review finding: every OSError/ValueError of a model check became the key's ConfigError (exit 2),
    an unreachable hub and a missing tokenizer library too -- which a scheduler treating exit 2 as "do not
    retry" would not retry, and whose traceback a sweep then dropped. Only a path that is not there, an
    unreadable or wrong-kind model, an offline cache without the name are the key's; the network, a
    permission, an I/O error or a missing library pass through as they are."""
    import errno

    import httpx

    from infalign.pipeline.world import refused_as

    def raised(exc: BaseException):
        try:
            with refused_as("policy.name_or_path", "org/lm", "a model"):
                raise exc
        except BaseException as out:  # noqa: BLE001
            return out

    def wrapped(cause: BaseException, outer: BaseException) -> BaseException:
        try:
            try:
                raise cause
            except BaseException as inner:  # noqa: BLE001
                raise outer from inner
        except BaseException as out:  # noqa: BLE001
            return out

    for exc in (FileNotFoundError("policy.name_or_path: local path does not exist: /x"),
                ValueError("policy.name_or_path: /x is not a saved model directory (no config.json)"),
                OSError("policy.name_or_path='org/lm': not in the local Hugging Face cache (HF_HUB_OFFLINE=1)")):
        out = raised(exc)
        assert isinstance(out, ConfigError) and out.key == "policy.name_or_path" and str(exc) in str(out)
    import huggingface_hub.constants

    offline = OSError("We couldn't connect to 'https://huggingface.co' to load the files")
    assert isinstance(raised(offline), ConfigError)  # offline (the suite): nothing was asked of the hub
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    import httpx2
    from huggingface_hub.errors import LocalEntryNotFoundError

    # online, a name the cache lacks while the hub is unreachable: huggingface_hub raises
    # LocalEntryNotFoundError *from* the connection error, which transformers wraps (review: a ConfigError)
    online_missing = wrapped(wrapped(httpx2.ConnectError("[Errno 111] Connection refused"),
                                     LocalEntryNotFoundError("cannot find the requested files in the disk cache")),
                             OSError("We couldn't connect to 'http://127.0.0.1:9' to load the files"))
    for exc in (wrapped(httpx.ConnectError("connection refused"), OSError("policy.name_or_path='org/lm': ...")),
                online_missing, offline,
                PermissionError(errno.EACCES, "Permission denied", "/x/config.json"),
                OSError(errno.EIO, "Input/output error"),
                wrapped(ImportError("no module named tiktoken"), ValueError("cannot instantiate the tokenizer")),
                ValueError("`tiktoken` is required to read this tokenizer: pip install tiktoken")):
        out = raised(exc)
        assert out is exc, (exc, out)


def test_a_hub_name_the_offline_cache_lacks_is_the_keys_config_error(assets, tmp_path):
    """Review finding: offline, transformers says "We couldn't connect to 'https://huggingface.co' ... and
    couldn't find them in the cached files" for a hub name the cache lacks (a typo); taken for the network,
    it became a traceback (exit 1). The chain holds huggingface_hub's LocalEntryNotFoundError: not there, so
    the ConfigError of the key -- with transformers' own message, not a hand-written one."""
    import huggingface_hub.constants

    from infalign.pipeline.world import check_world_config

    assert huggingface_hub.constants.HF_HUB_OFFLINE  # (conftest: the suite never asks the hub)
    with pytest.raises(ConfigError) as err:
        check_world_config(cfg_for(assets, tmp_path, "policy.name_or_path=infalign-tests/gpt2-typo-xyz"))
    assert err.value.key == "policy.name_or_path" and "gpt2-typo-xyz" in str(err.value)


@pytest.mark.parametrize("group", ["reward", "policy"])
def test_a_tokenizer_of_more_tokens_than_the_models_embedding_rows_is_refused_before_compute(assets, tmp_path, group):
    """Walkthrough finding: a reward tokenizer of 600 tokens beside a model of 100 embedding rows (a
    tokenizer saved next to another model) failed with ``IndexError: index out of range in self`` inside the
    embedding lookup, after the calibration pool was sampled. check_world_config refuses it first, naming
    the model's key; the same model with its own tokenizer passes (tokens *added* on top of the vocabulary
    are not counted: a model may never read them)."""
    import shutil

    from transformers import AutoTokenizer

    own = assets / ("rm" if group == "reward" else "lm")
    bigger = tmp_path / "bigger"
    shutil.copytree(own, bigger)
    tok = AutoTokenizer.from_pretrained(own)
    rows = tok.vocab_size
    style = "bert" if group == "reward" else "llama"
    extended = styled_word_tokenizer(style, [*_vocab_words(), *map(str, range(rows))])
    assert extended.vocab_size > rows
    for f in bigger.glob("*token*"):
        f.unlink()
    extended.save_pretrained(bigger)
    with pytest.raises(ConfigError) as err:
        world_mod.check_world_config(cfg_for(assets, tmp_path, f"{group}.name_or_path={bigger}"))
    assert err.value.key == f"{group}.name_or_path" and "embedding rows" in str(err.value)
    tok.add_special_tokens({"additional_special_tokens": ["<extra_never_read>"]})
    assert len(tok) > rows and tok.vocab_size == rows
    from transformers import AutoConfig

    world_mod.check_vocab_fits(tok, AutoConfig.from_pretrained(own), f"{group}.name_or_path", own)


@pytest.mark.parametrize(("env", "accelerator", "devices"), [
    ({}, "gpu", 1),
    ({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}, "gpu", [1]),
    ({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}, "cuda", [1]),
    ({"SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "1", "SLURM_JOB_NAME": "train"}, "gpu", [1]),
    ({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}, "cpu", 1),
    ({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "3", "SLURM_LOCALID": "1"}, "gpu", [3]),  # LOCAL_RANK first
])
def test_reward_model_training_under_a_launcher_uses_this_ranks_gpu(monkeypatch, env, accelerator, devices):
    """GPU review: reward-model training ran L.Trainer(devices=1) -- the first GPU -- whichever rank of a torchrun
    / srun launch trained it, leaving a CUDA context on GPU 0 beside rank 0's. Under a launcher on GPUs it takes
    this rank's own device (LOCAL_RANK / SLURM_LOCALID); alone, or on the CPU, one device as before."""
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_JOB_NAME"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cfg = OmegaConf.create({"trainer": {"accelerator": accelerator, "precision": "bf16-mixed"},
                            "reward": {"train": {"accelerator": None}}})
    monkeypatch.setattr("torch.cuda.device_count", lambda: 4)
    assert world_mod.reward_trainer_kwargs(cfg)["devices"] == devices
    if devices != 1:  # an srun task that sees its own GPU only: index 0 whatever its rank (review finding)
        monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
        assert world_mod.reward_trainer_kwargs(cfg)["devices"] == [0]


def test_a_custom_scorer_reads_the_datasets_prompt_not_the_chat_templated_one(assets, tmp_path):
    """Custom-reward walkthrough: with policy.chat_template=true a custom scorer got the policy's rendering
    (``<|user|> ... <|assistant|>``) where a reward model reads the dataset's text (``Human: ... Assistant:``)."""
    import length_scorer

    extra = f"hydra.searchpath=[file://{Path(__file__).parent / 'extra_conf'}]"
    cfg = compose_train(tmp_path / "cache", tmp_path / "run", "experiment=hh_harmless_won", "trainer=cpu",
                        "policy.dtype=float32", "policy.chat_template=true", f"policy.name_or_path={assets / 'lm'}",
                        f"data.train_file={assets / 'train.jsonl'}", f"data.test_file={assets / 'test.jsonl'}",
                        "data.train_prompts=4", "data.eval_prompts=3", "reward=length", extra,
                        "reward._target_=length_scorer.PromptRecorder", "~reward.scale", "~reward.name_or_path",
                        "~reward.input", "~reward.prompt_format", toy=False)
    world = world_mod.load_world(cfg, tmp_path / "cache")
    rendered = world.train_prompts[0]
    world.reward.score([rendered], ["fine"])
    (seen,) = length_scorer.PromptRecorder.seen
    assert seen != rendered and seen.lstrip().startswith("Human:") and seen.endswith("Assistant:")
