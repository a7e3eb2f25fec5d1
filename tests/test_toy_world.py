"""The toy world: formulas, splits, tokenizer, behaviour diversity, BT labels, cached build."""

import json
import math
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from infalign.errors import ConfigError
from infalign.toy import (
    SEP,
    ToyWorld,
    build_toy_world,
    make_preference_pairs,
    resolve_toy_config,
)
from infalign.toy import build as toy_build
from infalign.toy.diagnostics import best_of_n_win_rate

# A toy world small enough to build in a few seconds (tiny models, a handful of steps).
TINY = {
    "reference": {
        "size": "tiny",
        "n_prompts": 48,
        "per_prompt": 2,
        "val_prompts": 8,
        "max_steps": 4,
        "batch_size": 16,
    },
    "reward": {"n_prompts": 24, "val_prompts": 16, "max_steps": 4, "batch_size": 8},
}


@pytest.fixture(scope="module")
def world():
    return ToyWorld(seed=0)


def _liked_and_not(world, prompt):
    liked = sorted(world.params(prompt).liked)
    other = [s for s in range(world.n_symbols) if s not in liked]
    return [f"b{s}" for s in liked], [f"b{s}" for s in other]


# ------------------------------------------------------------------ formulas
def test_quality_matches_hand_computation(world):
    x = world.prompts("train", 1)[0]
    (l1, l2, *_), (o1, o2, o3, *_) = _liked_and_not(world, x)
    # 8 words: liked l1 l1 l2 l1 (4 hits), repeats (l1,l1) and (o3,o3) -> 2 of 7 adjacent pairs.
    y = " ".join([l1, l1, o1, l2, o2, o3, o3, l1])
    expected_q = 4 / 8 - 0.5 * 2 / 7
    # Short answers are divided by n_min = 6: two liked words give 2/6, not 1.
    short = f"{l1} {l2}"
    # Words that are not symbols never count as liked; the empty response has q = 0.
    junk = f"a0 {SEP} {l1} <eos> {o1} {o2}"
    q = world.quality([x] * 4, [y, short, junk, ""])
    assert q.dtype == torch.float32
    torch.testing.assert_close(q, torch.tensor([expected_q, 2 / 6, 1 / 6, 0.0]))


def test_gold_reward_is_scale_times_quality_plus_offset(world):
    xs = world.prompts("train", 3)
    ys = [" ".join(_liked_and_not(world, x)[0][:2] * 4) for x in xs]
    p = [world.params(x) for x in xs]
    gold = world.gold_reward(xs, ys)
    q = world.quality(xs, ys)
    expected = torch.tensor([pp.scale * qq + pp.offset for pp, qq in zip(p, q.tolist())])
    torch.testing.assert_close(gold, expected)
    # Empty response: q = 0, so the reward is exactly the prompt's offset b_x.
    torch.testing.assert_close(
        world.gold_reward(xs, [""] * 3), torch.tensor([pp.offset for pp in p])
    )
    # Deterministic and independent of batch composition / whitespace.
    again = world.gold_reward([xs[1], "  " + xs[0].replace(" ", "   ")], [ys[1], ys[0]])
    torch.testing.assert_close(again, gold[[1, 0]])


def test_liked_set_is_union_over_attributes(world):
    x = world.prompts("val", 1)[0]
    attrs = x.split()[:-1]
    union = frozenset().union(*(world.params(f"{a} {SEP}").liked for a in attrs))
    assert world.params(x).liked == union
    assert 0 < len(union) < world.n_symbols


def test_scale_and_offset_vary_strongly_across_prompts(world):
    ps = [world.params(x) for x in world.prompts("train", 600)]
    log_a = np.log([p.scale for p in ps])
    b = np.array([p.offset for p in ps])
    prop = np.array([p.propensity for p in ps])
    assert 0.5 < log_a.std() < 1.2  # log a_x = log 6 + s_x, s_x a normalised sum of N(0, 1) weights
    assert 2.5 < b.std() < 3.5  # offset ~ N(0, 3)
    assert prop.std() > 0.08 and 0.05 < prop.min() and prop.max() < 0.95
    assert abs(np.corrcoef(log_a, b)[0, 1]) < 0.15


def test_scale_is_a_function_of_the_attributes_by_hand():
    """log a_x - log reward_scale = scale_sigma * sum_a v_a / sqrt(|x|): learnable from the prompt."""
    w = ToyWorld(seed=3, scale_sigma=0.5)
    v = np.random.default_rng([3, 4]).standard_normal(w.n_attributes)
    for x in w.prompts("train", 20):
        attrs = [int(a[1:]) for a in x.split()[:-1]]
        expected = w.reward_scale * math.exp(0.5 * v[attrs].sum() / math.sqrt(len(attrs)))
        assert w.params(x).scale == pytest.approx(expected, rel=1e-12)
        shuffled = " ".join(reversed(x.split()[:-1])) + f" {SEP}"  # same attributes, other order
        assert w.params(shuffled).scale == pytest.approx(expected, rel=1e-12)
    noisy = ToyWorld(seed=3, scale_sigma=0.5, scale_noise_sigma=1.0)
    x = w.prompts("train", 1)[0]
    shuffled = " ".join(reversed(x.split()[:-1])) + f" {SEP}"
    assert noisy.params(x).scale != pytest.approx(noisy.params(shuffled).scale)  # hash part: per text


def test_control_world_is_calibrated():
    """The control of sweeps/paper_control.yaml: one scale, no offset and one difficulty (propensity)
    for every prompt. Control of the test: the default world varies all three."""
    control = dict(scale_sigma=0.0, scale_noise_sigma=0.0, offset_sigma=0.0, propensity_sigma=0.0)
    w = ToyWorld(seed=0, **control)
    params = [w.params(x) for x in w.prompts("train", 50)]
    assert {p.scale for p in params} == {w.reward_scale} and {p.offset for p in params} == {0.0}
    assert len({p.propensity for p in params}) == 1
    default = [ToyWorld(seed=0).params(x) for x in w.prompts("train", 50)]
    assert all(len({getattr(p, k) for p in default}) > 10 for k in ("scale", "offset", "propensity"))
    with pytest.raises(ConfigError, match="toy.world.spurious_weight"):
        ToyWorld(spurious_weight=-1.0)


def test_labels_follow_the_biased_labelers_not_gold():
    """Labelers add a_x * spurious_weight * min(n, n_max)/n_max; gold does not."""
    w = ToyWorld(seed=0, spurious_weight=0.5)
    x = w.prompts("train", 1)[0]
    liked, other = _liked_and_not(w, x)
    short, long_ = " ".join(other[:6]), " ".join((other[:6] * 3)[:16])  # both q = 0 (no liked, no repeat)
    assert w.gold_reward([x, x], [short, long_]).unique().numel() == 1
    n = 4000
    pairs = make_preference_pairs(w, [x] * n, [long_] * n, [short] * n, seed=0)
    p = torch.sigmoid(torch.tensor(w.params(x).scale * 0.5 * (16 - 6) / 16)).item()
    frac = sum(c == long_ for c in pairs.chosen) / n
    assert abs(frac - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-3
    unbiased = make_preference_pairs(ToyWorld(seed=0, spurious_weight=0.0), [x] * n, [long_] * n, [short] * n)
    assert abs(sum(c == long_ for c in unbiased.chosen) / n - 0.5) < 4 * math.sqrt(0.25 / n)


def test_gold_reward_rejects_foreign_prompts(world):
    with pytest.raises(ValueError, match="must end with"):
        world.gold_reward(["hello world"], ["b1"])
    with pytest.raises(ValueError, match="unknown attribute"):
        world.gold_reward([f"a0 zz {SEP}"], ["b1"])
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        world.gold_reward(["a0 ->", "a1 ->"], ["b1"])


# ------------------------------------------------------------------ prompts / splits
def test_splits_disjoint_deterministic_prefix_consistent(world):
    tr, va, te = (world.prompts(s, 300) for s in ("train", "val", "test"))
    assert len(set(tr)) == len(set(va)) == len(set(te)) == 300
    assert not (set(tr) & set(va)) and not (set(tr) & set(te)) and not (set(va) & set(te))
    assert ToyWorld(seed=0).prompts("val", 300) == va
    assert world.prompts("val", 50) == va[:50]
    assert ToyWorld(seed=1).prompts("val", 50) != va[:50]
    for x in tr[:50]:
        words = x.split()
        assert words[-1] == SEP and 4 <= len(words) - 1 <= 6 and len(set(words)) == len(words)
    with pytest.raises(ConfigError, match="split"):
        world.prompts("dev", 3)


def test_tokenizer_round_trip(world, tmp_path):
    from transformers import AutoTokenizer

    tok = world.tokenizer()
    text = "a3 a11 a0 -> b4 b4 b17"
    ids = tok(text)["input_ids"]
    assert len(ids) == 7 and tok.unk_token_id not in ids
    assert tok.decode(ids) == text
    assert tok("a3 zz")["input_ids"][-1] == tok.unk_token_id
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id}) == 4
    tok.save_pretrained(tmp_path)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    assert tok2(text)["input_ids"] == ids
    assert (tok2.pad_token, tok2.eos_token) == ("<pad>", "<eos>")
    assert tok2.decode(ids + [tok.eos_token_id, tok.pad_token_id], skip_special_tokens=True) == text


# ------------------------------------------------------------------ behaviour distribution
def test_reference_corpus_deterministic_and_well_formed(world):
    xs, ys = world.reference_corpus(20, 3, seed=5)
    assert len(xs) == len(ys) == 60 and xs[:3] == [xs[0]] * 3
    assert world.reference_corpus(20, 3, seed=5) == (xs, ys)
    assert world.reference_corpus(20, 3, seed=6)[1] != ys
    symbols = set(world.symbol_words)
    for y in ys:
        assert 6 <= len(y.split()) <= 16 and set(y.split()) <= symbols


def test_behaviour_samples_are_diverse_so_best_of_n_helps(world):
    P, M = 200, 16
    xs, ys = world.reference_corpus(P, M, seed=0)
    q = world.quality(xs, ys).view(P, M)
    gold = world.gold_reward(xs, ys).view(P, M)
    assert q.std(1).mean() > 0.15  # wide quality spread within a prompt
    assert gold.mean(1).std() > 2 * gold.std(1).mean()  # raw rewards miscalibrated across prompts
    assert best_of_n_win_rate(gold, gold, 4).mean() == pytest.approx(0.8, abs=0.01)  # 4/5: gold nearly tie-free
    assert best_of_n_win_rate(gold, gold, 1).mean() == pytest.approx(0.5)
    # Prompts with a higher propensity get more liked symbols.
    prop = torch.tensor([world.params(x).propensity for x in xs[::M]])
    assert torch.corrcoef(torch.stack([prop, q.mean(1)]))[0, 1] > 0.3


def test_best_of_n_win_rate_exact_on_small_pool():
    # Pool of 3 with select == judge: best of a random pair against the sample left out.
    g = torch.tensor([[0.0, 1.0, 2.0]])
    # {0,1} -> 1 vs 2: loses; {0,2} -> 2 vs 1: wins; {1,2} -> 2 vs 0: wins.
    assert best_of_n_win_rate(g, g, 2).item() == pytest.approx(2 / 3)
    # worst of the pair: {0,1} -> 0 vs 2; {0,2} -> 0 vs 1; {1,2} -> 1 vs 0: wins once.
    assert best_of_n_win_rate(-g, g, 2).item() == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="n=3"):
        best_of_n_win_rate(g, g, 3)  # no sample outside the subset
    # a NaN score ranked as the best sample (select) or lost every pair (judge): 0.53 / 0.27 for 2/3
    bad = torch.tensor([[0.1, 0.5, float("nan"), 0.3, 0.2]])
    for select, judge, name in ((bad, g.new_zeros(1, 5), "select"), (bad.nan_to_num(), bad, "judge")):
        with pytest.raises(ValueError, match=f"{name} contains 1 non-finite"):
            best_of_n_win_rate(select, judge, 2)
    with pytest.raises(ValueError, match="no prompts"):
        best_of_n_win_rate(torch.zeros(0, 3), torch.zeros(0, 3), 2)


@pytest.mark.parametrize(("M", "n"), [(6, 1), (6, 2), (7, 3), (5, 4)])
def test_best_of_n_win_rate_equals_brute_force_with_judge_ties(M, n):
    """Every n-subset, every sample outside it, ties (a 3-level judge) counting one half."""
    import itertools

    g = torch.Generator().manual_seed(M * 10 + n)
    select, judge = torch.randn(3, M, generator=g), torch.randint(0, 3, (3, M), generator=g).double()
    for p in range(3):
        wins = []
        for subset in itertools.combinations(range(M), n):
            best = max(subset, key=lambda i: select[p, i])
            wins += [float(judge[p, best] > judge[p, o]) + 0.5 * float(judge[p, best] == judge[p, o])
                     for o in range(M) if o not in subset]
        assert best_of_n_win_rate(select[p:p + 1], judge[p:p + 1], n).item() == pytest.approx(sum(wins) / len(wins))


def test_best_of_n_win_rate_by_a_perfect_tie_free_judge_is_n_over_n_plus_1():
    x = torch.randn(20, 16, generator=torch.Generator().manual_seed(0))
    for n in (1, 2, 4, 8):
        assert torch.allclose(best_of_n_win_rate(x, x, n), torch.full((20,), n / (n + 1), dtype=torch.float64))


def test_preference_labels_follow_bradley_terry(world):
    x = world.prompts("train", 1)[0]
    liked, other = _liked_and_not(world, x)
    a, b = " ".join(liked[:1] * 1 + other[:5]), " ".join(other[:6])
    n = 4000
    pairs = make_preference_pairs(world, [x] * n, [a] * n, [b] * n, seed=0)
    ra, rb = world.gold_reward([x, x], [a, b])
    p = torch.sigmoid(ra - rb).item()
    frac = sum(c == a for c in pairs.chosen) / n
    assert abs(frac - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-3
    assert all({c, r} == {a, b} for c, r in zip(pairs.chosen, pairs.rejected))
    margin = world.gold_reward([x] * n, pairs.chosen) - world.gold_reward([x] * n, pairs.rejected)
    torch.testing.assert_close(pairs.gold_margin, margin)
    label = world.label_reward([x] * n, pairs.chosen) - world.label_reward([x] * n, pairs.rejected)
    torch.testing.assert_close(pairs.label_margin, label)
    again = make_preference_pairs(world, [x] * n, [a] * n, [b] * n, seed=0)
    assert again.chosen == pairs.chosen


# ------------------------------------------------------------------ build_toy_world (cached)
def test_toy_defaults_are_defined_once_and_reach_the_config_tree():
    """conf/data/toy.yaml writes no toy default itself: data.toy comes from infalign.toy.defaults,
    so a default changed there is what the CLI composes and what the cache key covers."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from infalign.apps.config import CONFIG_DIR
    from infalign.toy.defaults import DEFAULTS, RUNTIME_DEFAULTS

    written = OmegaConf.load(f"{CONFIG_DIR}/data/toy.yaml").toy
    assert set(written) <= set(RUNTIME_DEFAULTS), f"toy defaults written in the YAML: {sorted(written)}"
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["data.toy.reference.size=tiny", "data.toy.world.offset_sigma=0"])
    node = OmegaConf.to_container(cfg.data.toy, resolve=True)
    assert node["reference"] == {**DEFAULTS["reference"], "size": "tiny"}
    assert node["reward"] == DEFAULTS["reward"] and node["seed"] == DEFAULTS["seed"]
    assert resolve_toy_config(node)[0] == resolve_toy_config(
        {"reference": {"size": "tiny"}, "world": {"offset_sigma": 0.0}})[0]


def test_resolve_config_rejects_unknown_and_inconsistent_keys():
    # a whole-number setting takes 4.0 or "10" but refuses a fraction (seed=1.5 was the world of seed 1)
    assert resolve_toy_config({"seed": 2.0, "reference": {"max_steps": "10"}})[0]["reference"]["max_steps"] == 10
    for bad, key in (({"seed": 1.5}, "seed"), ({"reference": {"n_prompts": 2.5}}, "n_prompts"),
                     ({"world": {"response_len": [6.9, 16]}}, "response_len")):
        with pytest.raises(ConfigError, match=key):
            resolve_toy_config(bad)
    c, runtime = resolve_toy_config({"reference": {"lr": "1e-3"}, "progress_bar": True})
    assert c["reference"]["lr"] == 1e-3 and runtime["progress_bar"] is True
    assert c["reward"]["size"] == c["reference"]["size"]
    with pytest.raises(ConfigError, match=r"toy\.reference\.stepz"):
        resolve_toy_config({"reference": {"stepz": 3}})
    with pytest.raises(ConfigError, match=r"toy\.reward\.size"):
        resolve_toy_config({"reward": {"size": "medium"}})
    with pytest.raises(ConfigError, match=r"toy\.world\.n_symbols"):
        resolve_toy_config({"world": {"n_symbols": "many"}})


@pytest.mark.slow
def test_build_toy_world_miss_hit_and_rebuild_after_corruption(tmp_path, monkeypatch):
    from infalign.models import GoldScorer

    art = build_toy_world(TINY, tmp_path)
    assert art.built and art.reference_dir.is_dir() and art.reward_dir.is_dir()
    assert 0.0 <= art.stats["reward_val_accuracy"] <= 1.0 and art.stats["reference_val_loss"] > 0
    manifest = json.loads((art.root / "manifest.json").read_text())
    assert manifest["key"] == art.key and "reference/model.safetensors" in manifest["files"]

    # Usable by path: sample from the reference, score with the reward model.
    from infalign.models.generation import sample

    roll = sample(
        art.load_reference(), art.load_tokenizer("left"), art.world.prompts("test", 3), 2, 8
    )
    prompts = [p for p in art.world.prompts("test", 3) for _ in range(2)]
    scores = art.load_reward_scorer().score(prompts, roll.responses)
    assert scores.shape == (6,) and torch.isfinite(scores).all()
    assert GoldScorer(art.world).score(prompts, roll.responses).shape == (6,)

    # Second call: a cache hit that builds nothing.
    def boom(*args, **kwargs):
        raise AssertionError("cache hit expected, but the toy world was rebuilt")

    monkeypatch.setattr(toy_build, "_build", boom)
    hit = build_toy_world(TINY, tmp_path)
    assert not hit.built and hit.root == art.root and hit.stats == art.stats
    monkeypatch.undo()

    # Runtime-only options do not change the key; a changed hyperparameter does.
    assert build_toy_world({**TINY, "progress_bar": False}, tmp_path).key == art.key
    assert resolve_toy_config({"seed": 1})[0] != resolve_toy_config({})[0]
    # An edit to the code that builds it is a new world (review finding: the key held only the
    # hand-bumped CODE_VERSION, so an edit to the labels' code served the old world); the digest
    # reads the files' code, so stand in for an edit by changing what a listed module name reads.
    monkeypatch.setattr(toy_build, "TOY_CODE", toy_build.TOY_CODE[:-1] + ("infalign.errors",))
    monkeypatch.setattr(toy_build, "_build", boom)
    with pytest.raises(AssertionError, match="rebuilt"):
        build_toy_world(TINY, tmp_path)
    monkeypatch.undo()
    # ... in its own directory, but the same world to a report (runs record world_key as toy_key: a
    # rebuild that computes the same models must not split a sweep resumed across the edit)
    monkeypatch.setattr(toy_build, "TOY_CODE", toy_build.TOY_CODE[:-1] + ("infalign.errors",))
    edited = build_toy_world(TINY, tmp_path)
    monkeypatch.undo()
    assert edited.built and edited.key != art.key and edited.world_key == art.world_key != ""
    assert (edited.reference_dir / "model.safetensors").read_bytes() == (
        art.reference_dir / "model.safetensors").read_bytes()  # the build is deterministic

    # Corrupt manifest -> detected and rebuilt.
    (art.root / "manifest.json").write_text("{not json")
    rebuilt = build_toy_world(TINY, tmp_path)
    assert rebuilt.built and json.loads((art.root / "manifest.json").read_text())["key"] == art.key

    # A damaged weight file (checksum mismatch) -> rebuilt as well.
    weights = art.root / "reward" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16])
    assert build_toy_world(TINY, tmp_path).built
    assert not list(tmp_path.glob(".toy-*.tmp"))  # no temp dirs left behind


@pytest.mark.slow
def test_concurrent_builders_build_once(tmp_path, monkeypatch):
    calls = []
    real_build = toy_build._build

    def slow_build(*args, **kwargs):
        calls.append(1)
        time.sleep(0.5)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(toy_build, "_build", slow_build)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(build_toy_world(TINY, tmp_path)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 2
    assert sorted(r.built for r in results) == [False, True]


@pytest.mark.slow
def test_default_toy_world_shows_the_phenomena():
    """The default toy world -- what ``make demo`` trains on -- is diverse, its reward model is
    clearly better than chance, and best-of-4 by the reward model beats one sample. It is built into
    the project's own cache (``conf/paths``: ``$INFALIGN_ROOT/outputs/cache``), keyed by the toy
    code's digest and the config (toy/build.py), so a fresh clone builds it once (~1 min on one core
    of two) and later ``make test``/``make demo`` runs read the world the current code builds; any
    change to that code is a new key and a new build, checked here again."""
    from infalign.toy.diagnostics import reference_diagnostics

    art = build_toy_world({}, Path(os.environ.get("INFALIGN_ROOT", ".")) / "outputs" / "cache")
    assert art.stats["reward_val_gold_accuracy"] > 0.62
    d = reference_diagnostics(art, n_prompts=100, n_samples=16)
    assert d["q_std_within_prompt"] > 0.12
    assert d["gold_std_across_prompts"] > 2 * d["gold_std_within_prompt"]
    # best-of-4 by gold is 4/5 for a tie-free judge; by the reward model 0.67, worst-of-4 0.31-0.33
    # (3 sampling seeds, 2026-12-03): clearly past the 0.5 a useless reward model would give
    assert d["bo4_by_gold_vs_single_gold_winrate"] == pytest.approx(0.8, abs=0.01)
    assert d["bo4_by_rm_vs_single_gold_winrate"] > 0.6
    assert d["wo4_by_rm_vs_single_gold_winrate"] < 0.4


# ---------------------------------------------------------------- guards found by mutation testing


def test_split_buckets_are_80_10_10():
    w = ToyWorld(seed=0)
    rng = np.random.default_rng(123)
    xs = {" ".join(f"a{a}" for a in rng.choice(16, 5, replace=False)) + " ->" for _ in range(6000)}
    counts = {s: sum(w._split_of(x) == s for x in xs) / len(xs) for s in ("train", "val", "test")}
    assert counts["train"] == pytest.approx(0.8, abs=0.03)
    assert counts["val"] == pytest.approx(0.1, abs=0.02) and counts["test"] == pytest.approx(0.1, abs=0.02)


def test_preference_label_draws_depend_on_the_seed():
    from infalign.toy.world import make_preference_pairs

    """build.py labels train and val pairs with seed and seed + 1: their label noise must differ."""
    w = ToyWorld(seed=0)
    x = w.prompts("train", 1)[0]
    a, b = "b0 b1 b2 b3 b4 b5", "b5 b4 b3 b2 b1 b0"  # same words: equal rewards, p = 1/2
    n = 200
    c0 = make_preference_pairs(w, [x] * n, [a] * n, [b] * n, seed=0).chosen
    c1 = make_preference_pairs(w, [x] * n, [a] * n, [b] * n, seed=1).chosen
    assert c0 != c1
    assert c0 == make_preference_pairs(w, [x] * n, [a] * n, [b] * n, seed=0).chosen


def test_spurious_feature_is_clipped_at_n_max():
    """f(y) = min(n, n_max) / n_max: responses beyond n_max (reference samples up to max_new_tokens)
    earn no further labeler bonus."""
    w = ToyWorld(seed=0)
    f = w.spurious_feature(["b1 " * 8, "b1 " * 16, "b1 " * 30]).tolist()
    assert f == pytest.approx([0.5, 1.0, 1.0])


def test_behaviour_token_1_can_repeat_token_0():
    w = ToyWorld(seed=0, repeat_prob=0.99)
    x = w.prompts("train", 1)[0]
    ys = [y.split() for y in w.behaviour_responses(x, 200, np.random.default_rng(0))]
    assert sum(y[1] == y[0] for y in ys) / len(ys) > 0.95


class _DiagnosticsWorld:
    """A toy world for reference_diagnostics: q constant per prompt (x1: 0, x2: 10), so no within-prompt
    spread; gold = the tabular reward."""

    def prompts(self, split, n):
        import tiny_policy as tp

        return tp.PROMPTS[:n]

    def quality(self, xs, ys):
        return torch.tensor([0.0 if x == "x1" else 10.0 for x in xs])

    def gold_reward(self, xs, ys):
        import tiny_policy as tp

        return tp.TableScorer().score(xs, ys)


def test_reference_diagnostics_axes_and_worst_of_n():
    from types import SimpleNamespace

    import tiny_policy as tp
    from infalign.toy.diagnostics import reference_diagnostics

    art = SimpleNamespace(world=_DiagnosticsWorld(), load_tokenizer=lambda side: tp.tokenizer(),
                          load_reference=tp.reference, load_reward_scorer=tp.TableScorer)
    d = reference_diagnostics(art, n_prompts=2, n_samples=8, n=3, max_new_tokens=3)
    assert d["q_std_within_prompt"] == 0.0
    assert d["q_std_across_prompts"] == pytest.approx(10 / 2**0.5, rel=1e-6)
    assert d["bo3_by_rm_vs_single_gold_winrate"] == pytest.approx(d["bo3_by_gold_vs_single_gold_winrate"])
    assert d["wo3_by_rm_vs_single_gold_winrate"] < 0.5 < d["bo3_by_rm_vs_single_gold_winrate"]
    assert d["rm_pairwise_gold_accuracy"] == pytest.approx(1.0)
