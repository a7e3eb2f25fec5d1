"""Pins found by mutation testing of src/infalign/pipeline: prompt ids, the eval / calibration range checks,
the calibration table's smoothing, the replica-aware seed of the offline baselines, the (best, worst)-of-N
stop flags, and the run's method / name / finished status as the record gives them. Each test runs in
milliseconds: sampling and training are replaced by fixed pools and a recording stub."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from infalign.errors import ConfigError
from infalign.math.procedures import BestOfN
from infalign.math.transforms import Exp
from infalign.training.algorithms import make_algorithm

# ---------------------------------------------------------------- pipeline/evaluate.py


def test_prompt_ids_are_the_first_12_hex_digits_of_the_prompts_sha1():
    """Pins ``prompt_ids`` = SHA-1 hex digest[:12]: sha1(b"a") = 86f7e437faa5a7fce15d1ddcb9eaeaea377667b8
    (the standard test vector), so the id of "a" is "86f7e437faa5". The ids pair runs prompt by prompt
    (docs/method.md "matched KL") across versions: a shorter or other hash would unpair every old record
    (mutation testing: [:12] -> [:8])."""
    from infalign.pipeline.evaluate import prompt_ids

    assert prompt_ids(["a"]) == ["86f7e437faa5"]
    assert prompt_ids([]) == []


# ---------------------------------------------------------------- pipeline/settings.py


def test_an_eval_pool_needs_two_samples_per_prompt():
    """Pins ``eval.samples >= 2`` (not >= 1): the evaluation's within-prompt spreads need two samples of a
    prompt; M = 1 is a ConfigError naming the key before any compute, M = 2 passes (the other settings
    valid in both). Mutation testing: the bound was lowered to 1."""
    from infalign.pipeline.settings import eval_pool_settings

    base = {"batch_size": 1, "max_new_tokens": 8, "temperature": 1.0}
    with pytest.raises(ConfigError, match=r"eval\.samples=1 is not allowed"):
        eval_pool_settings(OmegaConf.create({"samples": 1, **base}))
    eval_pool_settings(OmegaConf.create({"samples": 2, **base}))


def test_calibration_draws_are_never_nucleus_truncated():
    """Pins ``calibration.top_p == 1`` (not merely <= 1): C_hat's uniformity under pi_ref, which the theory,
    the beta rules and the transforms assume (docs/method.md §2), holds only for untruncated draws as RL
    samples them; top_p = 0.9 (a valid top_p for eval) is a ConfigError naming the key, 1.0 passes.
    Mutation testing: the check was weakened to ``top_p <= 1.0``."""
    from infalign.pipeline.settings import calibration_sampler

    def cfg(top_p):
        return OmegaConf.create({"calibration": {"temperature": 1.0, "top_p": top_p, "max_new_tokens": 8},
                                 "algo": {"temperature": 1.0, "max_new_tokens": 8}})

    with pytest.raises(ConfigError, match=r"calibration\.top_p=0\.9 is not allowed"):
        calibration_sampler(cfg(0.9))
    calibration_sampler(cfg(1.0))


# ---------------------------------------------------------------- pipeline/fit.py


def test_the_calibration_table_honours_calibration_smoothing(monkeypatch, tmp_path):
    """Pins ``calibration.smoothing`` reaching the table (mutation testing: it was ignored). One prompt,
    reference rewards [1, 2, 3] (the pool draw replaced), query 3.0: 2 below, 1 tie -> mid-rank 2.5;
    smoothed (2.5 + 0.5) / (K + 1) = 3 / 4 = 0.75, unsmoothed 2.5 / 3 = 0.8333. Tolerance 1e-6 (float32)."""
    from infalign.pipeline import fit

    def fake_reference_pool(world, prompts, n, judges, gen_cfg, trainer, seed, cache_dir, tag):
        assert n == 3 and tag == "calibration"
        return {"scores": {"reward": torch.tensor([[1.0, 2.0, 3.0]])}}, False

    monkeypatch.setattr(fit, "reference_pool", fake_reference_pool)
    world = SimpleNamespace(train_prompts=["p"], reward=object())
    for smoothing, want in ((True, 0.75), (False, 2.5 / 3)):
        cfg = OmegaConf.create({"seed": 0, "calibration": {"K": 3, "smoothing": smoothing, "scope": "prompt"}})
        table, hit = fit.calibration_table(world, cfg, None, tmp_path)
        assert hit is False and table.smoothing is smoothing
        got = table.calibrate(torch.tensor([0]), torch.tensor([3.0]))
        assert got.shape == (1,) and abs(got.item() - want) < 1e-6


def test_an_offline_replica_trains_on_its_own_seed(monkeypatch):
    """Pins the offline baselines' seed = ``settings.training_seed`` (replica-aware), not ``cfg.seed``
    (mutation testing): ``seed=0, replica=1`` is hash((0, 1)) & 0x7FFFFFFF = 16979904 on 64-bit CPython
    (tuple-of-int hashes are unsalted), so the A/A control's second arm draws other (best, worst) pools
    than replica 0. fit_offline is replaced by a stub recording its seed; no sampling, no training."""
    from infalign.pipeline import fit
    from infalign.pipeline.settings import training_seed

    seen = []

    def fake_fit_offline(algo, world, gen_cfg, trainers, seed, ckpt_path=None, step_indexed=False):
        seen.append(seed)
        return {"pairs": 0}

    monkeypatch.setattr(fit, "fit_offline", fake_fit_offline)
    algo = make_algorithm({"name": "bon_sft", "n_samples": 4})
    for replica, want in ((1, 16979904), (0, 0)):
        cfg = OmegaConf.create({"seed": 0, "replica": replica, "calibration": {"max_new_tokens": 8}})
        assert training_seed(cfg) == want
        assert fit.fit_policy(SimpleNamespace(), cfg, algo, None, None, None, None) == {"pairs": 0}
    assert seen == [16979904, 0]


# ---------------------------------------------------------------- pipeline/baselines.py


def test_best_and_worst_of_n_take_each_picks_own_stop_flag(monkeypatch):
    """Pins the ``ended`` flag of each pick = the flag of the chosen sample (mutation testing: sample 0's
    was taken). One prompt, scores [0, 1] (the draw replaced): best = sample 1 (ids [6, 2], ended), worst =
    sample 0 (ids [5], cut at max_new_tokens); the flags must follow the ids."""
    from infalign.pipeline import baselines

    def fake_draw_pool(model, tokenizer, prompts, n, scorers, gen_cfg, trainer, seed, **kw):
        return {"scores": {"reward": torch.tensor([[0.0, 1.0]])}, "ended": torch.tensor([[False, True]]),
                "response_ids": [[[5], [6, 2]]], "responses": [["five", "six"]]}

    monkeypatch.setattr(baselines, "draw_pool", fake_draw_pool)
    world = SimpleNamespace(reference=None, tokenizer=None, reward=object())
    best, worst = baselines.best_and_worst_of_n(world, ["p"], 2, None, None, 0)
    assert (best.ids, best.ended, best.texts) == ([[6, 2]], [True], ["six"])
    assert (worst.ids, worst.ended, worst.texts) == ([[5]], [False], ["five"])


# ---------------------------------------------------------------- pipeline/record.py


def test_an_offline_baseline_is_never_a_pooled_calibration_method():
    """Pins ``pooled_calibration``'s ``trained_n is None`` test: an offline baseline ranks no reward, so
    ``calibration.scope=pooled`` leaves its method ``bon_sft(N=4)`` (no ``[pooled]``) -- while an RL run
    under the same config is pooled (mutation testing: the trained_n test was dropped)."""
    from infalign.pipeline.record import method_info, pooled_calibration

    cfg = OmegaConf.create({"calibration": {"scope": "pooled"}})
    bon = make_algorithm({"name": "bon_sft", "n_samples": 4})
    assert pooled_calibration(cfg, bon) is False
    info = method_info(cfg, bon, Exp(4.0), BestOfN(n=4))
    assert info["method"] == "bon_sft(N=4)" and info["trained_n"] == 4
    assert pooled_calibration(cfg, make_algorithm({"name": "rloo"})) is True


def test_depends_on_n_follows_an_interpolation_of_the_procedure():
    """Pins ``depends_on_n`` for an RL run: a transform whose ``t`` interpolates ``${procedure.n}`` gives a
    policy that depends on N (trained per N, docs/method.md §8); the same value written as ``4`` does not
    (trained once, evaluated at every N). Mutation testing: the check of the unresolved config was lost."""
    from infalign.pipeline.record import method_info

    def cfg(t):
        return OmegaConf.create({"procedure": {"n": 4}, "transform": {"name": "exp", "t": t},
                                 "algo": {"name": "rloo"}, "calibration": {"scope": "prompt"}})

    rloo = make_algorithm({"name": "rloo"})
    info = method_info(cfg("${procedure.n}"), rloo, Exp(4.0), BestOfN(n=4))
    assert info["depends_on_n"] is True and info["method"] == "exp(t=4)" and info["trained_n"] == 4
    assert method_info(cfg(4), rloo, Exp(4.0), BestOfN(n=4))["depends_on_n"] is False


def test_a_failed_runs_record_is_not_a_finished_run(tmp_path):
    """Pins finished_record's status test: a metrics.json of a failed run reads as a record, but records no
    finished run (None, ``is_finished`` False), so a re-run does not keep it (mutation testing: any
    readable record counted as finished)."""
    from infalign.pipeline.record import finished_record, is_finished, read_record
    from infalign.pipeline.run_record import RunRecord

    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(RunRecord(run_name="x", status="failed", error="X: y").to_json()))
    assert read_record(path).status == "failed"  # readable: None below is the status, not a read error
    assert finished_record(path) is None and is_finished(path) is False
    path.write_text(json.dumps(RunRecord(run_name="x").to_json()))
    assert is_finished(path) is True


def test_a_run_name_keeps_the_normalized_exp_apart_from_the_plain_one():
    """Pins run_name's ``exp(n?)`` group: Exp(4, normalized) -> ``bon4-expn-t4-b0.05`` and Exp(4) ->
    ``bon4-exp-t4-b0.05`` (RLOO at its default beta 0.05, named by the transform alone): two methods, two
    names (mutation testing: the normalized transform lost its ``n``)."""
    from infalign.pipeline.record import run_name

    rloo = make_algorithm({"name": "rloo", "beta": 0.05})
    assert run_name(BestOfN(n=4), Exp(4.0, normalized=True), rloo) == "bon4-expn-t4-b0.05"
    assert run_name(BestOfN(n=4), Exp(4.0), rloo) == "bon4-exp-t4-b0.05"


def test_a_run_name_keeps_every_transform_familys_parameters():
    """Extension walkthrough: a registered family's ``pow(t=2)`` and ``pow(t=4)`` were both ``bon4-pow-kl0.2``
    (only exp kept its t), so W&B showed two runs of one name. ``name(k=v, ...)`` -> ``name-kv-...``; a
    label without parameters is itself, cleaned of characters a run name does not take."""
    from types import SimpleNamespace

    from infalign.pipeline.record import run_name

    rloo = make_algorithm({"name": "rloo", "beta": 0.05})

    def named(label: str) -> str:
        return run_name(BestOfN(n=4), SimpleNamespace(label=label), rloo)

    assert named("pow(t=2)") == "bon4-pow-t2-b0.05" and named("pow(t=4)") == "bon4-pow-t4-b0.05"
    assert named("expn(t=-4)") == "bon4-expn-t-4-b0.05"
    assert named("beta cdf(a=3, b=1.5)") == "bon4-betacdf-a3-b1.5-b0.05"
    assert named("optimal(won4)") == "bon4-optimal-won4-b0.05" and named("my/sqrt") == "bon4-mysqrt-b0.05"


# ---------------------------------------------------------------- pipeline/world.py: reward.input=pair


def _template_tokenizer(pair: str, specials: list[str], **named):
    """A whitespace word-level tokenizer (words a, b) whose text-pair template is ``pair``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", *specials, "a", "b"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    first = pair.split(" $B")[0]
    backend.post_processor = processors.TemplateProcessing(single=first, pair=pair,
                                                           special_tokens=[(s, vocab[s]) for s in specials])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", **named)


@pytest.mark.parametrize(("pair", "specials", "named", "refused"), [
    ("[CLS] $A [SEP] $B:1 [SEP]:1", ["[CLS]", "[SEP]"], {"cls_token": "[CLS]", "sep_token": "[SEP]"}, False),  # BERT
    ("<s> $A </s> </s> $B </s>", ["<s>", "</s>"], {"bos_token": "<s>", "eos_token": "</s>"}, False),  # RoBERTa
    ("<s> $A <s> $B", ["<s>", "</s>"], {"bos_token": "<s>", "eos_token": "</s>"}, True),  # Llama-2/3, Gemma
    ("<s> $A </s> <s> $B </s>", ["<s>", "</s>"], {"bos_token": "<s>", "eos_token": "</s>"}, True),  # with an eos
    ("$A <s> $B", ["<s>"], {"bos_token": "<s>"}, True),  # a BOS alone between them
    ("$A <eot> $B <eot>", ["<eot>"], {"bos_token": "<eot>", "eos_token": "<eot>"}, False),  # NeoX: bos == eos
])
def test_a_text_pair_template_that_only_restarts_the_sequence_is_no_pair(pair, specials, named, refused):
    """Walkthrough finding: ``reward.input=pair`` (the HH experiments' default) passed for a Llama-style reward
    tokenizer, whose text-pair template ``<s> a <s> b`` starts the response as a new sequence: every score
    came from a row no reward model is trained on. check_pair_template (run by check_reward_length, before
    compute) refuses a middle that ends with the row's prefix or holds only the BOS, naming reward.input;
    BERT's ``[CLS] a [SEP] b [SEP]`` and RoBERTa's ``<s> a </s></s> b </s>`` pass."""
    from transformers import BertConfig

    from infalign.pipeline.world import check_pair_template, check_reward_length

    tok = _template_tokenizer(pair, specials, **named)
    cfg = OmegaConf.create({"reward": {"input": "pair", "max_length": 32}})
    if refused:
        with pytest.raises(ConfigError) as err:
            check_pair_template(tok)
        assert err.value.key == "reward.input" and "new sequence" in str(err.value)
        with pytest.raises(ConfigError):  # what validation runs, with the reward model's config
            check_reward_length(cfg, BertConfig(max_position_embeddings=64), "rm", tok)
    else:
        check_pair_template(tok)
        check_reward_length(cfg, BertConfig(max_position_embeddings=64), "rm", tok)
    check_reward_length(OmegaConf.create({"reward": {"input": "joined", "max_length": 32}}),
                        BertConfig(max_position_embeddings=64), "rm", tok)  # joined reads any tokenizer
    trained = OmegaConf.create({"reward": {"input": "pair", "max_length": 32, "train": {"enabled": True}}})
    check_reward_length(trained, BertConfig(max_position_embeddings=64), "rm", tok)  # trained on the row it reads


def test_a_pretrained_reward_tokenizer_with_a_chat_template_is_warned_about(caplog):
    """Walkthrough finding: a reward model whose tokenizer carries a chat template (most modern public ones,
    trained on templated text) read the dataset's raw prompt text without a word. check_world_config warns
    (warn_reward_chat_template); not for a tokenizer without one, nor for a reward model trained here."""
    import logging

    from infalign.pipeline.world import warn_reward_chat_template

    tok = _template_tokenizer("<s> $A <s> $B", ["<s>", "</s>"], bos_token="<s>", eos_token="</s>")
    cfg = OmegaConf.create({"reward": {"input": "joined", "prompt_format": "full"}})
    with caplog.at_level(logging.WARNING, logger="infalign.pipeline.world"):
        warn_reward_chat_template(cfg, tok, "rm")
        assert not caplog.records
        tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
        warn_reward_chat_template(OmegaConf.create({"reward": {"train": {"enabled": True}}}), tok, "rm")
        assert not caplog.records
        warn_reward_chat_template(cfg, tok, "rm")
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["reward.name_or_path=rm"]
    assert "chat template" in caplog.records[0].getMessage()


def test_a_special_token_past_the_models_embedding_rows_is_refused():
    """Review finding: check_vocab_fits compared the base vocabulary only, while the special tokens every row
    carries may be *added* ones past it (Llama-3's BOS 128000 on 128000 base tokens): a tokenizer of 3 words +
    an added BOS (id 3) beside a model of 3 embedding rows passed, and every row failed at its BOS. The
    special token ids a row carries must be below the rows; an unused added token still passes."""
    from transformers import LlamaConfig

    from infalign.pipeline.world import check_vocab_fits

    tok = _template_tokenizer("<s> $A <s> $B", ["<s>"], bos_token="<s>")  # ids: <pad> 0, <unk> 1, <s> 2, a 3, b 4
    check_vocab_fits(tok, LlamaConfig(vocab_size=5), "policy.name_or_path", "m")
    tok.add_special_tokens({"additional_special_tokens": ["<never_read>"]})  # id 5, in no row
    check_vocab_fits(tok, LlamaConfig(vocab_size=5), "policy.name_or_path", "m")
    tok.add_special_tokens({"eos_token": "<eos>"})  # id 6: every row that ends with the eos reads it
    with pytest.raises(ConfigError) as err:
        check_vocab_fits(tok, LlamaConfig(vocab_size=5), "policy.name_or_path", "m")
    assert err.value.key == "policy.name_or_path" and "[6]" in str(err.value)



def test_more_toy_prompts_than_the_world_has_is_a_config_error_naming_the_key():
    """Robustness walkthrough: data.train_prompts=100000000 searched for prompts for minutes (the default world
    has 16P4 + 16P5 + 16P6 = 6,333,600), and a 4-attribute world of 2-3 words (4*3 + 4*3*2 = 36 prompts) with
    the default 256 gave a ValueError naming toy.world.n_attributes. More than the world has is refused before
    compute; a split with fewer than asked for (about 80 % / 10 % of the prompts) names its key."""
    from omegaconf import OmegaConf

    from infalign.errors import ConfigError
    from infalign.pipeline.toy_prompts import check_toy_prompt_counts as data_settings
    from infalign.pipeline.toy_prompts import toy_prompt_capacity, toy_prompts, toy_split_bound
    from infalign.toy.world import ToyWorld

    assert toy_prompt_capacity({}) == 16 * 15 * 14 * 13 * (1 + 12 + 12 * 11) == 6_333_600
    small = {"n_attributes": 4, "prompt_len": [2, 3]}
    assert toy_prompt_capacity(small) == 36
    data = OmegaConf.create({"source": "toy", "train_prompts": 100_000_000, "eval_prompts": 8, "toy": {}})
    with pytest.raises(ConfigError, match=r"data\.train_prompts=100000000.*6333600 distinct prompts"):
        data_settings(data)
    # within the world, beyond 90 % of its train split's share (review: 6,000,000 of ~5,070,000 would search for
    # hours, 5,000,000 for 18 minutes): 0.9 x 0.8 x 6,333,600 = 4,560,192; a small world: six standard deviations
    # above 80 % (28.8 + 6 x 2.4), at most its 36
    assert toy_split_bound(6_333_600, 0.8) == 4_560_192 and toy_split_bound(36, 0.8) == 36
    data.train_prompts = 5_000_000
    with pytest.raises(ConfigError, match=r"data\.train_prompts=5000000.*at most 4560192"):
        data_settings(data)
    data.train_prompts, data.eval_prompts = 4_000_000, 600_000
    with pytest.raises(ConfigError, match=r"data\.eval_prompts=600000.*at most 570024"):
        data_settings(data)
    data.eval_prompts = 500_000
    data_settings(data)
    data = OmegaConf.create({"source": "toy", "train_prompts": 34, "eval_prompts": 3, "toy": {"world": small}})
    with pytest.raises(ConfigError, match=r"data\.train_prompts=34.*at most the toy world's 36"):
        data_settings(data)
    data.eval_prompts = 2  # 36 in all: allowed here, but its splits hold 33 train and 1 test prompt (seed 0)
    data_settings(data)
    world = ToyWorld(seed=0, n_attributes=4, prompt_len=(2, 3))
    with pytest.raises(ConfigError, match=r"data\.train_prompts=34.*distinct 'train' prompts"):
        toy_prompts(world, data)
    data.train_prompts = 33
    with pytest.raises(ConfigError, match=r"data\.eval_prompts=2.*distinct 'test' prompts"):
        toy_prompts(world, data)
    data.eval_prompts = 1
    train, test = toy_prompts(world, data)
    assert len(set(train)) == 33 and len(set(test)) == 1 and not set(train) & set(test)
