"""The paper's experiment configs (HH helpful BoN, HH harmless WoN, TL;DR BoN) run end to end on CPU
with tiny models saved by the test and fixture files in the real formats (incl. malformed lines),
loaded by path through the same config entries a GPU user uses."""

from __future__ import annotations

import json

import pytest
import torch

from infalign.apps import train as train_app
from infalign.errors import ConfigError
from pipeline_helpers import compose_train
from test_data import word_tokenizer, write_jsonl

TOPICS = ["cats", "tea", "rain", "maps", "bread", "chess", "boats", "music", "stars", "glue", "snow", "clay"]


def hh_line(i: int) -> str:
    t = TOPICS[i % len(TOPICS)]
    prompt = (f"\n\nHuman: tell me about {t} please\n\nAssistant: sure , {t} are nice"
              f"\n\nHuman: more on {t} ?\n\nAssistant:")
    return json.dumps({"chosen": prompt + f" {t} are great and fun", "rejected": prompt + " no"})


def tldr_line(i: int) -> str:
    t = TOPICS[i % len(TOPICS)]
    info = {"post": f"my {t} story is long and sad", "title": f"about {t}", "subreddit": "tifu"}
    return json.dumps({"info": info, "summaries": [{"text": f" {t} went bad"}, {"text": " meh"}], "choice": 0})


MALFORMED = ['{"chosen": "no assistant here", "rejected": "x"}', "{not json",
             '{"info": {}, "summaries": [], "choice": 2}']


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Tiny GPT-2 policy + reward model (save_pretrained) and HH / TL;DR fixture files."""
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("real")
    files = {}
    for name, make in (("hh", hh_line), ("tldr", tldr_line)):
        good = [make(i) for i in range(len(TOPICS))]
        files[name] = (write_jsonl(root / f"{name}_train.jsonl", good[:8] + MALFORMED),
                       write_jsonl(root / f"{name}_test.jsonl.gz", good[8:]))
    texts = [json.loads(line).get("chosen", "") for line in map(hh_line, range(12))]
    texts += ["SUBREDDIT: r/tifu TITLE: POST: TL;DR: my story is long and sad about went bad meh no sure , are nice"]
    texts += [f"{t} great fun more on ? tell me please Human: Assistant:" for t in TOPICS]
    tok = word_tokenizer(texts)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=32, n_layer=1, n_head=2,
                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    for kind, cls in (("lm", GPT2LMHeadModel), ("rm", GPT2ForSequenceClassification)):
        # spare embedding rows, as Pythia's (50304 for 50277 tokens): tldr_bon's reward.pad_token "[PAD]" is
        # added to the tokenizer with an id below vocab_size, no row added (pipeline/world.use_reward_pad_token)
        rm_cfg = GPT2Config(**{**cfg.to_dict(), "num_labels": 1, "id2label": {0: "reward"},
                               "vocab_size": len(tok) + 8})
        model = cls(cfg) if kind == "lm" else cls(rm_cfg)
        model.save_pretrained(root / kind)
        tok.save_pretrained(root / kind)
    return root, files


def overrides(root, files, experiment: str, data: str) -> list[str]:
    train_file, test_file = files[data]
    return [
        f"experiment={experiment}", "trainer=cpu", "policy.dtype=float32", "reward.dtype=float32",
        "policy.chat_template=false", f"policy.name_or_path={root / 'lm'}", f"reward.name_or_path={root / 'rm'}",
        f"data.train_file={train_file}", f"data.test_file={test_file}", "data.train_prompts=4",
        "data.eval_prompts=3", "algo.max_new_tokens=6", "calibration.batch_size=4", "eval.batch_size=4",
        "eval.ns=[1,2,4]", "algo.steps=2", "algo.lr=1e-4", "data.max_prompt_tokens=128",
        "reward.input=joined",  # (the tiny RM's tokenizer has no text-pair template; the hh entries' default is pair)
        "reward.max_length=256",  # the tiny RM's positions (apps check it against the model: world.check_reward_length)
    ]


@pytest.mark.parametrize("experiment, data",
                         [("hh_helpful_bon", "hh"), ("hh_harmless_won", "hh"), ("tldr_bon", "tldr")])
@pytest.mark.slow
def test_paper_experiment_runs_on_cpu_with_tiny_models(assets, tmp_path, experiment, data):
    root, files = assets
    cfg = compose_train(tmp_path / "cache", tmp_path / "run", *overrides(root, files, experiment, data), toy=False)
    metrics = train_app.run(cfg)
    assert metrics["status"] == "finished"
    assert set(metrics["eval"]["judges"]) == {"reward_model"}  # no gold reward on real data
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["procedure"] == ("won4" if "won" in experiment else "bon4")
    assert written["eval"]["judges"]["reward_model"]["standard_win_rate"]["n_prompts"] == 3


def test_malformed_records_are_counted_and_reported(assets, tmp_path):
    from infalign.pipeline.world import load_world

    root, files = assets
    cfg = compose_train(tmp_path / "cache", tmp_path / "run", *overrides(root, files, "hh_helpful_bon", "hh"),
                        toy=False)
    world = load_world(cfg, tmp_path / "cache")
    report = world.stats["data_reports"]["train"]
    assert report["usable"] == 8 and report["total"] == 11
    assert report["malformed"] == {"no_assistant_turn": 1, "invalid_json": 1, "missing_field": 1}
    assert all(p.endswith("\n\nAssistant:") for p in world.train_prompts)
    assert world.gold is None and len(world.eval_prompts) == 3


def test_reward_model_training_on_pairs_is_cached(assets, tmp_path):
    from infalign.pipeline.world import load_world

    root, files = assets
    extra = ["reward.train.enabled=true", "reward.train.steps=2", "reward.train.warmup=0",
             "+reward.train.accelerator=cpu"]
    cfg = compose_train(tmp_path / "cache", tmp_path / "run", *overrides(root, files, "hh_helpful_bon", "hh"),
                        *extra, toy=False)
    torch.manual_seed(5)
    first = load_world(cfg, tmp_path / "cache")
    after_build = torch.rand(3)
    torch.manual_seed(5)
    second = load_world(cfg, tmp_path / "cache")
    after_load = torch.rand(3)
    assert first.stats["reward_trained"] is True and second.stats["reward_trained"] is False
    assert first.reward_fingerprint == second.reward_fingerprint != "hub:" + str(root / "rm")
    assert list((tmp_path / "cache").glob("reward-*/config.json"))
    # the build draws from its own stream: the run's stream is the same after a build and after a load
    assert torch.equal(after_build, after_load)
    # data.seed initialises the new head and shuffles the pairs: another seed is another reward model
    other = load_world(compose_train(tmp_path / "cache", tmp_path / "run2", *overrides(root, files, "hh_helpful_bon",
                                                                                      "hh"), *extra, "data.seed=1",
                                     toy=False), tmp_path / "cache")
    assert other.stats["reward_trained"] is True and other.reward_fingerprint != first.reward_fingerprint


@pytest.mark.parametrize("override, key", [
    ("policy.name_or_path=/nonexistent/lm", "policy.name_or_path"),
    ("data.source=imdb", "data.source"),
])
def test_bad_real_data_settings_fail_clearly(assets, tmp_path, override, key):
    from infalign.pipeline.world import load_world

    root, files = assets
    cfg = compose_train(tmp_path / "cache", tmp_path / "run", *overrides(root, files, "hh_helpful_bon", "hh"),
                        override, toy=False)
    with pytest.raises((ConfigError, FileNotFoundError), match=key.replace(".", r"\.")):
        load_world(cfg, tmp_path / "cache")


def test_wrong_kind_of_model_is_rejected(assets, tmp_path):
    from infalign.pipeline.world import load_world

    root, files = assets
    cfg = compose_train(tmp_path / "cache", tmp_path / "run", *overrides(root, files, "hh_helpful_bon", "hh"),
                        f"reward.name_or_path={root / 'lm'}", toy=False)
    with pytest.raises(ValueError, match="reward.name_or_path"):
        load_world(cfg, tmp_path / "cache")
