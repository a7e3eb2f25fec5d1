"""A reward added as a config entry: a custom scorer (``reward._target_``; docs/architecture.md §6).

Extension walkthrough: ``reward=<entry>`` with a ``_target_`` was silently ignored -- the run trained and
evaluated with the toy world's reward model, loaded from earlier runs' caches, while its metrics.json
recorded the custom entry. Now the entry's scorer is the run's reward, its scores are checked as a reward
model's are, and its fingerprint (the entry and its code) keys every pool and policy it scored."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from infalign.errors import ConfigError
from infalign.pipeline import world as world_mod
from pipeline_helpers import compose_train

EXTRA_CONF = f"hydra.searchpath=[file://{Path(__file__).parent / 'extra_conf'}]"


def cfg_with(tmp_path, cache, *overrides):
    return compose_train(cache, tmp_path / "run", "reward=length", EXTRA_CONF, *overrides)


def test_the_entry_is_the_runs_reward_and_keys_its_caches(tmp_path, tiny_cache):
    world = world_mod.load_world(cfg_with(tmp_path, tiny_cache), tiny_cache)
    prompts, responses = world.eval_prompts[:3], ["a b c", "", "one two"]
    scores = world.reward.score(prompts, responses)
    assert scores.dtype == torch.float32 and torch.allclose(scores, torch.tensor([0.3, 0.0, 0.2]))
    assert world.stats["reward_input_format"].startswith("custom scorer length_scorer.LengthScorer")
    other = world_mod.load_world(cfg_with(tmp_path, tiny_cache, "reward.scale=0.2"), tiny_cache)
    model = world_mod.load_world(compose_train(tiny_cache, tmp_path / "run"), tiny_cache)
    fingerprints = {world.reward_fingerprint, other.reward_fingerprint, model.reward_fingerprint}
    assert len(fingerprints) == 3  # another setting, or the toy reward model: other pools, policies, world ids
    assert len({w.stats["world_id"] for w in (world, other, model)}) == 3
    assert world.reference_fingerprint == model.reference_fingerprint and world.gold is not None


@pytest.mark.parametrize(("override", "key"), [
    ("reward._target_=length_scorer.NoSuchScorer", "reward._target_"),
    ("reward._target_=no_such_module.Scorer", "reward._target_"),
    ("+reward.name_or_path=some/model", "reward.name_or_path"),  # e.g. an experiment entry's reward model
    ("+reward.max_length=64", "reward.max_length"),
    ("+reward.scael=0.2", "reward.scael"),  # a typo of an argument: the target's signature lacks it
])
def test_an_unimportable_target_or_a_reward_model_setting_beside_it_is_refused(tmp_path, override, key):
    with pytest.raises(ConfigError) as err:
        world_mod.check_world_config(cfg_with(tmp_path, tmp_path / "cache", override))
    assert err.value.key == key


def test_a_scorer_is_held_to_one_finite_float_per_pair():
    from infalign.models.reward import CheckedScorer

    class Fixed:
        def __init__(self, out):
            self.out = out

        def score(self, prompts, responses):
            return self.out

    assert torch.equal(CheckedScorer(Fixed([1, 2]), "f").score(["p", "q"], ["a", "b"]), torch.tensor([1.0, 2.0]))
    assert CheckedScorer(Fixed(torch.ones(2, dtype=torch.float64)), "f").score(["p", "q"], ["a", "b"]).dtype == \
        torch.float32
    with pytest.raises(ValueError, match="reward scorer f returned scores of shape \\(3,\\) for 2 pairs"):
        CheckedScorer(Fixed([1, 2, 3]), "f").score(["p", "q"], ["a", "b"])
    with pytest.raises(FloatingPointError, match="reward scorer f produced 1 non-finite"):
        CheckedScorer(Fixed([1.0, float("nan")]), "f").score(["p", "q"], ["a", "b"])
    with pytest.raises(TypeError, match="has no score"):
        CheckedScorer(object(), "f")


@pytest.mark.slow
def test_a_run_trains_and_evaluates_on_the_entrys_scorer(tmp_path, tiny_cache):
    import length_scorer
    from infalign.apps import train as train_app

    length_scorer.CALLS.clear()
    metrics = train_app.run(cfg_with(tmp_path, tiny_cache, "policy_cache=false"))
    assert metrics["status"] == "finished"
    assert metrics["world"]["reward_input_format"].startswith("custom scorer length_scorer.LengthScorer")
    cfg = cfg_with(tmp_path, tiny_cache)
    # calibration pool, every RL step's rollout, the two evaluation pools: each scored by the entry's scorer
    scored = sum(length_scorer.CALLS)
    assert scored >= (int(cfg.data.train_prompts) * int(cfg.calibration.K)
                      + 2 * int(cfg.data.eval_prompts) * int(cfg.eval.samples))
