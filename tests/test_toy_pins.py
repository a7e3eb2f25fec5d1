"""Pins found by mutation testing of src/infalign/toy: the world's hidden per-prompt draws (propensity,
scale noise vs offset), the edges of the prompt / response length ranges, the constructor's bounds, a
liked set covering every symbol, the diagnostics' figures, the documented defaults and the build
config's bounds. Each test runs in well under a second: no model is trained (docs/method.md §11 has
every formula checked here)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from infalign.errors import ConfigError
from infalign.toy import SEP, PreferencePairs, ToyWorld, resolve_toy_config


@pytest.fixture(scope="module")
def world():
    return ToyWorld(seed=0)


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


# ---------------------------------------------------------------- toy/world.py: hidden per-prompt draws


def test_propensity_is_the_sigmoid_of_the_attribute_weights_by_hand():
    """p_x = sigmoid(propensity_mean + sum_{a in x} w_a / sqrt(|x|)), w_a ~ N(0, propensity_sigma) (docs/method.md
    §11), recomputed from the world's seeded stream ``default_rng([seed, 0])``: the liked sets' draws (one
    ``choice(n_symbols, liked_per_attribute)`` per attribute) come first, then the weights -- so the liked sets
    are pinned too. The control (propensity_sigma = 0) gives every prompt sigmoid(-0.3) = 0.42556.
    Mutation testing: the sign of the weights' sum (a different world for the same seed), the sigmoid's
    sign (p -> 1 - p) and the weights' standard deviation all went unnoticed."""
    w = ToyWorld(seed=2, propensity_sigma=0.8)
    rng = np.random.default_rng([2, 0])
    likes = [frozenset(int(s) for s in rng.choice(24, 2, replace=False)) for _ in range(16)]
    weights = rng.normal(0.0, 0.8, size=16)
    for x in w.prompts("train", 20):
        attrs = [int(a[1:]) for a in x.split()[:-1]]
        p = w.params(x)
        assert p.liked == frozenset().union(*(likes[a] for a in attrs))
        want = _sigmoid(-0.3 + weights[attrs].sum() / math.sqrt(len(attrs)))
        assert p.propensity == pytest.approx(want, rel=1e-12)
    control = ToyWorld(seed=2, propensity_sigma=0.0)
    props = [control.params(x).propensity for x in control.prompts("train", 20)]
    assert props == pytest.approx([1 / (1 + math.exp(0.3))] * 20, rel=1e-12)


def test_scale_noise_and_offset_are_independent_hash_draws():
    """a_x = reward_scale * exp(scale_sigma * s_x + scale_noise_sigma * z1), b_x = offset_sigma * z2 with (z1, z2)
    ~ N(0, I) (docs/method.md (11.3)): with scale_sigma = 0, log(a_x / 6) / 0.7 and b_x / 2 are the two
    coordinates of one standard normal pair per prompt. Over 400 prompts both have std ~1 and their
    correlation is ~0 (|r| < 0.2 is > 4 standard errors of 1/sqrt(400)); reusing z1 for the offset (or z2
    for the scale) makes it exactly +-1. Mutation testing: z1 <-> z2 in either place went unnoticed (the
    default world has scale_noise_sigma = 0)."""
    w = ToyWorld(seed=1, scale_sigma=0.0, scale_noise_sigma=0.7, offset_sigma=2.0)
    ps = [w.params(x) for x in w.prompts("train", 400)]
    z1 = np.log([p.scale / 6.0 for p in ps]) / 0.7
    z2 = np.array([p.offset for p in ps]) / 2.0
    assert 0.85 < z1.std() < 1.15 and 0.85 < z2.std() < 1.15
    assert abs(np.corrcoef(z1, z2)[0, 1]) < 0.2


# ---------------------------------------------------------------- toy/world.py: lengths, words, edges


def test_prompt_and_behaviour_lengths_reach_both_ends_of_their_ranges(world):
    """Prompts have 4-6 attributes and behaviour responses 6-16 symbols, both ends included (docs/method.md §11:
    ``n ~ U{6..16}``). 300 prompts and 400 responses miss a length of 3 (11) equally likely ones with
    probability < 1e-15. Mutation testing: ``integers(lo, hi)`` (hi excluded) in either place."""
    lengths = {len(x.split()) - 1 for x in world.prompts("train", 300)}
    assert lengths == {4, 5, 6}
    x = world.prompts("train", 1)[0]
    ys = world.behaviour_responses(x, 400, np.random.default_rng(0))
    assert {len(y.split()) for y in ys} == set(range(6, 17))


def test_a_word_that_is_not_a_symbol_is_never_liked(world):
    """(11.1) counts liked *symbols*; any other word counts as a token that is not liked (world.py docstring).
    On a prompt whose liked set holds symbol 0 (``b0``), ``zz`` + 5 distinct not-liked symbols scores
    q = 0 / 6 - 0 = 0. Mutation testing: an unknown word was looked up as symbol 0 (q = 1/6)."""
    x = next(x for x in world.prompts("train", 200) if 0 in world.params(x).liked)
    other = [f"b{s}" for s in range(world.n_symbols) if s not in world.params(x).liked]
    assert world.quality([x, x], [" ".join(["zz", *other[:5]]), " ".join(["a0", SEP, *other[:4]])]).tolist() == [0, 0]


def test_behaviour_when_the_liked_set_is_every_symbol():
    """A prompt may like every symbol (small vocabularies): then no token is a not-liked one, and sampling
    still works, every token liked. 3 symbols, 2 liked per attribute, a prompt of all 4 attributes: the
    union covers all 3 here (checked). Mutation testing: the guard ``len(liked) < n_symbols`` was
    weakened to ``<=`` (then sampling draws from an empty array and raises)."""
    w = ToyWorld(seed=0, n_attributes=4, n_symbols=3, liked_per_attribute=2, prompt_len=(4, 4))
    x = "a0 a1 a2 a3 ->"
    assert w.params(x).liked == {0, 1, 2}
    ys = w.behaviour_responses(x, 20, np.random.default_rng(0))
    assert all(set(y.split()) <= {"b0", "b1", "b2"} for y in ys)
    q = w.quality([x] * 20, ys)
    reps = [sum(a == b for a, b in zip(y.split(), y.split()[1:])) for y in ys]
    want = [1.0 - 0.5 * r / (len(y.split()) - 1) for r, y in zip(reps, ys)]  # every token a hit, n >= 6
    torch.testing.assert_close(q, torch.tensor(want))


def test_zero_prompts_is_an_empty_list(world):
    """``prompts(split, n)`` is the first n prompts of the split: n = 0 gives [] (the bound is n >= 0).
    Mutation testing: the bound became n >= 1."""
    assert world.prompts("val", 0) == []


def test_vocabulary_puts_the_specials_first(world):
    """``vocabulary``: ``<pad> <bos> <eos> <unk> ->`` then a0.. then b0.. (its docstring): the token ids the
    tokenizer (and every model saved with it) uses. Mutation testing: two specials swapped."""
    assert world.vocabulary[:5] == ["<pad>", "<bos>", "<eos>", "<unk>", SEP]
    assert world.vocabulary[5:] == [f"a{i}" for i in range(16)] + [f"b{i}" for i in range(24)]
    tok = world.tokenizer()
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)


def test_preference_pairs_check_every_length():
    """PreferencePairs refuses lists of different lengths, the rejected list included.
    Mutation testing: only prompts vs chosen was compared."""
    with pytest.raises(ValueError, match="lengths differ: 2/2/1"):
        PreferencePairs(["x", "x"], ["a", "b"], ["c"])


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"n_attributes": 1, "prompt_len": (1, 1)}, "n_attributes"),
    ({"response_len": (0, 16)}, "response_len"),
    ({"liked_per_attribute": 24}, "liked_per_attribute"),
    ({"reward_scale": 0.0}, "reward_scale"),
    ({"repeat_prob": 1.0}, "repeat_prob"),
    ({"propensity_concentration": 0.0}, "propensity_concentration"),
])
def test_world_bounds_reject_their_edge(kwargs, key):
    """Each constructor bound at its edge (world.py): 2 attributes at least, responses of >= 1 word, a not-liked
    symbol left, a positive scale (0 would make every gold reward the offset), repeat_prob < 1 (1 would
    repeat the first token forever), Beta(k p, k (1 - p)) needs k > 0. Mutation testing: each bound
    was moved by one step (>= -> >, < -> <=, ...)."""
    with pytest.raises(ConfigError, match=rf"toy\.world\.{key}"):
        ToyWorld(**kwargs)


def test_world_bounds_accept_the_edge_inside():
    """The other side of each edge: one prompt length (lo == hi), liked_per_attribute = n_symbols - 1,
    repeat_prob = 0. Mutation testing: ``lo <= hi`` tightened to ``lo < hi``."""
    w = ToyWorld(prompt_len=(5, 5), liked_per_attribute=23, repeat_prob=0.0)
    assert {len(x.split()) - 1 for x in w.prompts("train", 20)} == {5}


# ---------------------------------------------------------------- toy/diagnostics.py


class _RecordingWorld:
    """A stand-in world for reference_diagnostics over tests/tiny_policy.py: records the split asked for and
    the responses scored; q = 0 on x1 and 10 on x2; gold = the tabular reward."""

    def __init__(self):
        self.splits, self.responses = [], None

    def prompts(self, split, n):
        import tiny_policy as tp

        self.splits.append(split)
        return tp.PROMPTS[:n]

    def quality(self, xs, ys):
        self.responses = list(ys)
        return torch.tensor([0.0 if x == "x1" else 10.0 for x in xs])

    def gold_reward(self, xs, ys):
        import tiny_policy as tp

        return tp.TableScorer().score(xs, ys)


def test_reference_diagnostics_figures_by_hand():
    """The figures of diagnostics.py against a recomputation from its docstring: the responses are the
    reference's samples for the requested split under ``manual_seed(seed)`` (drawn again here with
    ``models.generation.sample``); q_mean = (0 + 10) / 2 = 5; gold spread within a prompt = mean over
    prompts of the per-prompt std, across prompts = std of the per-prompt means; mean_response_words = 2
    (every tabular response is ``a b``). Mutation testing: q_mean, both gold spreads, the words' mean,
    the sampling seed and the split were each replaced without a test noticing."""
    from types import SimpleNamespace

    import tiny_policy as tp
    from infalign.models.generation import sample
    from infalign.toy.diagnostics import reference_diagnostics

    world, M = _RecordingWorld(), 8
    art = SimpleNamespace(world=world, load_tokenizer=lambda side: tp.tokenizer(),
                          load_reference=tp.reference, load_reward_scorer=tp.TableScorer)
    d = reference_diagnostics(art, n_prompts=2, n_samples=M, n=3, split="val", seed=7, max_new_tokens=3)
    assert world.splits == ["val"]
    want = sample(tp.reference(), tp.tokenizer(), tp.PROMPTS, M, 3, generator=torch.Generator().manual_seed(7))
    assert world.responses == want.responses
    other = sample(tp.reference(), tp.tokenizer(), tp.PROMPTS, M, 3, generator=torch.Generator().manual_seed(0))
    assert other.responses != want.responses  # (else this case would not tell the seeds apart)
    xs = [x for x in tp.PROMPTS for _ in range(M)]
    gold = [float(v) for v in tp.TableScorer().score(xs, want.responses)]
    rows = [gold[:M], gold[M:]]

    def std(v):  # unbiased, as the docstring's spread
        m = sum(v) / len(v)
        return math.sqrt(sum((a - m) ** 2 for a in v) / (len(v) - 1))

    assert d["q_mean"] == pytest.approx(5.0)
    assert d["mean_response_words"] == pytest.approx(2.0)
    assert d["gold_std_within_prompt"] == pytest.approx((std(rows[0]) + std(rows[1])) / 2, rel=1e-5)
    assert d["gold_std_across_prompts"] == pytest.approx(std([sum(r) / M for r in rows]), rel=1e-5)


# ---------------------------------------------------------------- toy/defaults.py


def test_world_defaults_are_the_documented_ones():
    """Every ToyWorld argument but the seed is a ``data.toy.world`` setting, with the defaults of the knob table
    and the language description of docs/method.md §11 (a0..a15, b0..b23, 4-6 attributes, 6-16 symbols,
    2 liked per attribute): a setting missing there could not be overridden (an unknown key).
    Mutation testing: a world argument was dropped from the defaults."""
    from infalign.toy.defaults import WORLD_DEFAULTS

    assert WORLD_DEFAULTS == {
        "n_attributes": 16, "n_symbols": 24, "prompt_len": [4, 6], "response_len": [6, 16],
        "liked_per_attribute": 2, "repeat_penalty": 0.5, "reward_scale": 6.0, "scale_sigma": 1.0,
        "scale_noise_sigma": 0.0, "offset_sigma": 3.0, "spurious_weight": 0.1, "propensity_mean": -0.3,
        "propensity_sigma": 1.0, "propensity_concentration": 3.0, "repeat_prob": 0.1,
    }
    assert resolve_toy_config({"world": {"repeat_prob": 0.2}})[0]["world"]["repeat_prob"] == 0.2


def test_the_library_build_is_quiet_by_default():
    """RUNTIME_DEFAULTS: no progress bar unless asked (conf/data/toy.yaml turns it on for the CLI: "the library's
    default is false"), threads left to torch. Mutation testing: the default became True."""
    runtime = resolve_toy_config({})[1]
    assert runtime == {"progress_bar": False, "num_threads": None}


# ---------------------------------------------------------------- toy/build.py: config bounds


@pytest.mark.parametrize(("section", "key", "value"), [
    (sec, key, 0) for sec in ("reference", "reward") for key in ("n_prompts", "val_prompts", "max_steps", "batch_size")
] + [("reference", "lr", 0.0), ("reward", "lr", 0.0), ("reference", "per_prompt", 0),
     ("reference", "warmup", -1), ("reward", "warmup", -1)])
def test_build_config_rejects_the_edge_of_each_bound(section, key, value):
    """Counts >= 1, lr > 0, warmup >= 0 (build.py resolve_toy_config): each at its first invalid value is a
    ConfigError naming the key. Mutation testing: ``>= 1`` lowered to ``>= 0``, ``> 0`` to ``>= 0``, a count
    dropped from the list, per_prompt's bound lowered."""
    with pytest.raises(ConfigError, match=rf"toy\.{section}\.{key}"):
        resolve_toy_config({section: {key: value}})


def test_build_config_accepts_the_edge_inside():
    """warmup = 0 (no warm-up) is valid; a reward model trained from scratch may have its own size (the size
    must match the reference only when it starts from the reference's transformer). Mutation testing: the
    warmup bound raised to >= 1; the size check applied to init=scratch too."""
    c = resolve_toy_config({"reference": {"warmup": 0}, "reward": {"warmup": 0, "init": "scratch", "size": "tiny"}})[0]
    assert c["reference"]["warmup"] == c["reward"]["warmup"] == 0
    assert (c["reward"]["size"], c["reference"]["size"]) == ("tiny", "small")


def test_reward_sampling_must_fit_the_longest_response_and_its_eos():
    """toy.reward.max_new_tokens >= response_len[1] + 1 (the longest behaviour response, 16 words, plus eos):
    16 is refused, 17 accepted; with response_len [6, 10], 11 is. Mutation testing: the + 1 was dropped."""
    with pytest.raises(ConfigError, match=r"toy\.reward\.max_new_tokens=16 .*>= 17"):
        resolve_toy_config({"reward": {"max_new_tokens": 16}})
    resolve_toy_config({"reward": {"max_new_tokens": 17}})
    with pytest.raises(ConfigError, match=r"toy\.reward\.max_new_tokens"):
        resolve_toy_config({"world": {"response_len": [6, 10]}, "reward": {"max_new_tokens": 10}})
    resolve_toy_config({"world": {"response_len": [6, 10]}, "reward": {"max_new_tokens": 11}})


def test_gold_agreement_by_hand(monkeypatch):
    """build.py ``_gold_agreement``: the reward model's held-out accuracy against the gold ordering over pairs
    whose gold margin is not 0, and the Bayes ceiling ``mean sigmoid(|label margin|)``. Four pairs, scores
    (chosen - rejected) +1, -1, +1, +1, gold margins +2, -3, 0 (tied: dropped), -1 -> agreement on
    the first two of 3 = 2/3 (0.5 if the tie counted); label margins 0, -1, 2, -2 -> (1/2 + s(1) + 2 s(2)) / 4.
    Mutation testing: mean -> sum, the ties kept, |label margin| -> label margin."""
    from infalign.toy import build as toy_build

    score = {"c0": 1.0, "c1": 0.0, "c2": 1.0, "c3": 1.0, "r0": 0.0, "r1": 1.0, "r2": 0.0, "r3": 0.0}

    class Scorer:
        def __init__(self, model, tokenizer, batch_size):
            pass

        def score(self, prompts, responses):
            return torch.tensor([score[r] for r in responses])

    monkeypatch.setattr(toy_build, "RewardScorer", Scorer)
    pairs = PreferencePairs(["x"] * 4, [f"c{i}" for i in range(4)], [f"r{i}" for i in range(4)],
                            gold_margin=torch.tensor([2.0, -3.0, 0.0, -1.0]),
                            label_margin=torch.tensor([0.0, -1.0, 2.0, -2.0]))
    out = toy_build._gold_agreement(None, None, pairs)
    assert out["reward_val_gold_accuracy"] == pytest.approx(2 / 3)
    assert out["reward_val_bt_ceiling"] == pytest.approx((0.5 + _sigmoid(1.0) + 2 * _sigmoid(2.0)) / 4)


def test_build_config_refuses_malformed_values():
    """A section given as a non-mapping, and a [lo, hi] setting with a third entry, are ConfigErrors naming the
    key (not an AttributeError deep in the merge, nor a silently dropped entry). Mutation testing: the
    mapping check was removed; the [lo, hi] zip lost ``strict=True`` (``[6, 16, 20]`` became [6, 16])."""
    with pytest.raises(ConfigError, match=r"toy\.world=3 .*a mapping"):
        resolve_toy_config({"world": 3})
    with pytest.raises(ConfigError, match=r"toy\.world\.response_len"):
        resolve_toy_config({"world": {"response_len": [6, 16, 20]}})


# ---------------------------------------------------------------- pipeline/world.check_toy_build


def _worst_rows(world, c, responses: int, new: int):
    """The widest pre-training row (the most attributes, ``responses`` symbols, eos) and reward row (that
    prompt, ``new`` symbols, the row's special tokens), encoded as the build encodes them."""
    from infalign.models.builders import encode_prompt_response
    from infalign.models.reward import reward_model_inputs
    from infalign.toy.world import SEP

    prompt = " ".join(world.attribute_words[: c["world"]["prompt_len"][1]]) + " " + SEP
    lm = encode_prompt_response(world.tokenizer(), [prompt], [" ".join(world.symbol_words[:1] * responses)])
    rm = reward_model_inputs(world.tokenizer(), [prompt], [" ".join(world.symbol_words[:1] * new)])
    return lm, rm


def test_the_toy_builds_length_bounds_are_what_its_models_hold(tmp_path):
    """Mutation-testing finding: world.response_len and reward.max_new_tokens beyond the toy models' 64
    positions were accepted, and the build failed inside GPT-2 (IndexError) after the reference had trained;
    an unknown toy.reward.size with init=scratch after it had also sampled. check_toy_build refuses them
    before the build, and its bounds are exact: at the edge (56 new tokens on the default world, so a longest
    response of 55 symbols) the widest rows are 64 tokens and both tiny models read them; one more is
    refused, and would not fit (65 positions: an IndexError in the position embedding)."""
    from infalign.models.builders import build_toy_lm, build_toy_reward_model
    from infalign.pipeline.world import _toy_world, check_toy_build
    from pipeline_helpers import compose_train

    def cfg(resp: int, new: int, *more: str):
        return compose_train(tmp_path, tmp_path, f"data.toy.world.response_len=[6,{resp}]",
                             f"data.toy.reward.max_new_tokens={new}", *more)

    check_toy_build(cfg(55, 56))
    c, world, tokenizer, positions = _toy_world(cfg(55, 56))
    assert positions == 64
    # the reward row binds: 56 new tokens fill it, and max_new_tokens must exceed the longest response (55);
    # a pre-training row would hold 56 symbols
    lm_rows, rm_rows = _worst_rows(world, c, 56, 56)
    assert lm_rows["input_ids"].shape[1] == rm_rows["input_ids"].shape[1] == positions
    build_toy_lm(tokenizer, "tiny")(input_ids=lm_rows["input_ids"], attention_mask=lm_rows["attention_mask"])
    build_toy_reward_model(tokenizer, "tiny")(input_ids=rm_rows["input_ids"], attention_mask=rm_rows["attention_mask"])
    with pytest.raises(ConfigError) as err:
        check_toy_build(cfg(56, 57))
    assert err.value.key == "toy.world.response_len" and "at most 55 symbols" in str(err.value)
    with pytest.raises(ConfigError) as err:
        check_toy_build(cfg(20, 57))
    assert err.value.key == "toy.reward.max_new_tokens" and "at most 56" in str(err.value)
    lm_rows, rm_rows = _worst_rows(world, c, 57, 57)
    with pytest.raises(IndexError):
        build_toy_reward_model(tokenizer, "tiny")(input_ids=rm_rows["input_ids"])
    with pytest.raises(IndexError):
        build_toy_lm(tokenizer, "tiny")(input_ids=lm_rows["input_ids"])
    with pytest.raises(ConfigError) as err:
        check_toy_build(cfg(16, 20, "data.toy.reward.init=scratch", "data.toy.reward.size=huge"))
    assert err.value.key == "toy.reward.size"


@pytest.mark.parametrize(("override", "key"), [("data.toy.seed=true", "toy.seed"),
                                               ("data.toy.reference.max_steps=false", "toy.reference.max_steps"),
                                               ("data.toy.world.response_len=[true,16]", "toy.world.response_len")])
def test_a_number_of_the_toy_build_given_a_boolean_is_refused(tmp_path, override, key):
    """``data.toy.seed=true`` built the world of seed 1 (the build casts True to 1: Python's bool is an int).
    A boolean where the toy build takes a number is a ConfigError of its key before the build; a boolean
    setting (``toy.progress_bar``) and numbers pass."""
    from infalign.pipeline.world import _toy_world
    from infalign.toy.build import resolve_toy_config
    from pipeline_helpers import compose_train

    assert resolve_toy_config({"seed": True})[0]["seed"] == 1  # what the build itself makes of it
    with pytest.raises(ConfigError) as err:
        _toy_world(compose_train(tmp_path, tmp_path, override))
    assert err.value.key == key
    c, *_ = _toy_world(compose_train(tmp_path, tmp_path, "data.toy.seed=3", "data.toy.progress_bar=false"))
    assert c["seed"] == 3
