"""Hub models are keyed by the commit they resolve to, and every load reads that commit.

A hub name is a moving target: its ``main`` changes when the owner pushes. Cached reference samples,
calibration tables and reward scores keyed by the name alone would be reused for the new weights --
numbers silently from another model. These tests build a Hugging Face cache by hand (the layout
``huggingface_hub`` reads offline: ``models--org--name/refs/<branch>`` holding a commit hash,
``snapshots/<commit>/`` holding the files), with two commits of different weights, and check the
fingerprints (``pipeline/world.py``), the weights actually loaded, and the errors. No network:
``HF_HUB_OFFLINE=1`` (tests/conftest.py)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from infalign.errors import ConfigError
from infalign.models import load_causal_lm, load_reward_model
from infalign.models.builders import hub_commit
from infalign.pipeline import world as world_mod
from test_real_models import assets, cfg_for  # noqa: F401 (assets: the module fixture of tiny real-format models)

C1, C2 = "a1" * 20, "b2" * 20


def _snapshot(repo, commit, source, shift: float = 0.0, load=load_causal_lm):
    """``repo/snapshots/<commit>/``: the files of ``source``; with ``shift``, the model's weights shifted
    by it and the tokenizer's ``model_max_length`` set to 77 (so a test can tell which snapshot's
    tokenizer was loaded)."""
    target = repo / "snapshots" / commit
    shutil.copytree(source, target)
    if shift:
        model = load(source)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(shift)
        model.save_pretrained(target)
        config = json.loads((target / "tokenizer_config.json").read_text())
        (target / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 77}))


def _point(repo, ref: str, commit: str) -> None:
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)


@pytest.fixture
def hub(assets, tmp_path, monkeypatch):  # noqa: F811 (the imported fixture)
    """An offline hub cache with ``org/lm`` and ``org/rm``, each at commits C1 and C2 (other weights, the
    tokenizer's ``model_max_length`` 77 at C2; ``main`` -> C1); ``huggingface_hub`` and transformers read it."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    lm, rm = cache / "models--org--lm", cache / "models--org--rm"
    _snapshot(lm, C1, assets / "lm")
    _snapshot(lm, C2, assets / "lm", shift=0.01)
    _point(lm, "main", C1)
    _snapshot(rm, C1, assets / "rm")
    _snapshot(rm, C2, assets / "rm", shift=0.01, load=load_reward_model)
    _point(rm, "main", C1)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return lm


def _first_weight(model) -> torch.Tensor:
    return next(model.parameters()).detach().clone()


def test_hub_commit_resolves_branches_tags_and_commits(hub, assets):  # noqa: F811
    assert hub_commit("org/lm") == C1
    _point(hub, "v2", C2)
    assert hub_commit("org/lm", "v2") == C2 and hub_commit("org/lm", C1) == C1
    assert hub_commit("org/unknown") is None  # not in the cache: known by name only
    assert hub_commit(str(assets / "lm")) is None  # a local directory has no commit
    with pytest.raises(ConfigError, match=r"policy\.revision='abc'.*null for a local directory"):
        hub_commit(str(assets / "lm"), "abc", "policy.revision")


def test_a_hub_models_caches_follow_its_commit_and_every_load_reads_it(hub, assets, tmp_path):  # noqa: F811
    """``main`` moving from C1 to C2 gives another reference fingerprint and world (the pools of C1 are
    not reused), and the weights and tokenizer loaded are C2's; the same for the reward model;
    ``policy.revision`` / ``reward.revision`` pin C1 whatever ``main`` says."""
    c1_weight = _first_weight(load_causal_lm(hub / "snapshots" / C1))
    c2_weight = _first_weight(load_causal_lm(hub / "snapshots" / C2))
    assert not torch.equal(c1_weight, c2_weight)
    hub_cfg = ("policy.name_or_path=org/lm", "reward.name_or_path=org/rm")

    first = world_mod.load_world(cfg_for(assets, tmp_path, *hub_cfg), tmp_path / "cache")
    assert first.reference_fingerprint == f"hub:org/lm@{C1}"
    assert torch.equal(_first_weight(first.reference), c1_weight)
    assert first.stats["hub_commits"] == {"policy": f"org/lm@{C1}", "reward": f"org/rm@{C1}"}
    assert torch.equal(_first_weight(first.policy), c1_weight)
    assert first.tokenizer.model_max_length != 77

    _point(hub, "main", C2)  # the owner pushed
    moved = world_mod.load_world(cfg_for(assets, tmp_path, *hub_cfg), tmp_path / "cache")
    assert moved.reference_fingerprint == f"hub:org/lm@{C2}"
    assert moved.stats["world_id"] != first.stats["world_id"]
    assert moved.reward_fingerprint == first.reward_fingerprint  # the reward model did not move
    assert torch.equal(_first_weight(moved.reference), c2_weight)
    assert moved.tokenizer.model_max_length == 77  # C2's tokenizer too

    rm_moved = hub.parent / "models--org--rm"
    _point(rm_moved, "main", C2)
    both = world_mod.load_world(cfg_for(assets, tmp_path, *hub_cfg), tmp_path / "cache")
    assert both.reward_fingerprint != moved.reward_fingerprint
    c2_rm = load_reward_model(rm_moved / "snapshots" / C2)
    assert torch.equal(_first_weight(both.reward.model), _first_weight(c2_rm))

    pinned = world_mod.load_world(cfg_for(assets, tmp_path, *hub_cfg, f"policy.revision={C1}",
                                          f"reward.revision={C1}"), tmp_path / "cache")
    assert pinned.reference_fingerprint == first.reference_fingerprint
    assert pinned.stats["world_id"] == first.stats["world_id"]
    assert torch.equal(_first_weight(pinned.policy), c1_weight)


def test_the_weights_loaded_are_those_of_the_commit_checked(hub, assets, tmp_path, monkeypatch):  # noqa: F811
    """``main`` moves between the check (which resolves the commit the keys name) and the model loads:
    the loads still read the checked commit, so the samples match their keys."""
    checked = world_mod.check_world_config

    def check_then_push(cfg):
        result = checked(cfg)
        _point(hub, "main", C2)
        return result

    monkeypatch.setattr(world_mod, "check_world_config", check_then_push)
    world = world_mod.load_world(cfg_for(assets, tmp_path, "policy.name_or_path=org/lm"), tmp_path / "cache")
    assert world.reference_fingerprint == f"hub:org/lm@{C1}"
    assert torch.equal(_first_weight(world.reference), _first_weight(load_causal_lm(hub / "snapshots" / C1)))


@pytest.mark.parametrize("override, error, match", [
    ("policy.revision=" + "c3" * 20, ConfigError, r"policy\.revision='(c3){20}': 'org/lm' has no such branch"),
    ("policy.revision=1234", ConfigError, r"policy\.revision=1234.*as a string \(quote"),
    ("policy.revision=v1", ConfigError, r"policy\.revision='v1'.*null for a local directory"),
    ("reward.revision=v1", ConfigError, r"reward\.revision='v1'.*null for a local directory"),
])
def test_bad_revisions_name_their_key_before_any_compute(hub, assets, tmp_path, override, error, match):  # noqa: F811
    name = "policy.name_or_path=org/lm" if override.startswith(("policy.revision=c3", "policy.revision=1")) else None
    cfg = cfg_for(assets, tmp_path, *([name] if name else []), override)
    with pytest.raises(error, match=match) as err:
        world_mod.check_world_config(cfg)
    assert err.value.key == override.split("=")[0]


@pytest.mark.parametrize("load, key", [(load_causal_lm, "policy.name_or_path"),
                                       (load_reward_model, "reward.name_or_path")])
def test_a_hub_snapshot_cached_without_its_weights_fails_naming_the_key(hub, assets, load, key):  # noqa: F811
    """Offline, a hub name whose config is cached passes the config check; its missing weights are an
    OSError of from_pretrained, which the loader names under the model's key."""
    repo = hub.parent / "models--org--bare"
    shutil.copytree(assets / ("lm" if load is load_causal_lm else "rm"), repo / "snapshots" / C1,
                    ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    _point(repo, "main", C1)
    with pytest.raises(OSError, match=rf"{key}='org/bare': its config loaded but its weights could not be read"):
        load("org/bare", key=key)


def test_a_revision_without_a_model_name_is_refused(tmp_path):
    """The toy world's own models have no revision: ``policy.revision`` without a name is an error."""
    from pipeline_helpers import compose_train

    cfg = compose_train(tmp_path / "cache", tmp_path / "run", "policy.revision=v1")
    with pytest.raises(ConfigError, match=r"policy\.revision='v1'.*null without policy\.name_or_path"):
        world_mod.check_world_config(cfg)


def test_a_reward_model_trained_from_a_hub_model_is_keyed_and_loaded_at_its_commit(
        hub, assets, tmp_path, monkeypatch):  # noqa: F811
    """``reward.train.enabled`` from a hub causal LM: the trained model's cache key holds the initial
    model's commit, and the initial weights are loaded at it (the build is stopped at that load)."""
    import infalign.infra.cache as cache_mod

    keys, revisions = [], []

    def build_only(path, build, save, load):
        keys.append(path.name)
        return build()

    def stop_at_load(*args, **kwargs):
        revisions.append(kwargs.get("revision"))
        raise KeyboardInterrupt  # the initial model's load: what is tested

    monkeypatch.setattr(cache_mod, "cached", build_only)
    monkeypatch.setattr(world_mod, "load_reward_model", stop_at_load)
    train = ("reward.name_or_path=org/lm", "reward.train.enabled=true")
    for commit in (C1, C2):
        _point(hub, "main", commit)
        with pytest.raises(KeyboardInterrupt):
            world_mod.load_world(cfg_for(assets, tmp_path, *train), tmp_path / "cache")
    with pytest.raises(KeyboardInterrupt):  # main is at C2; pinned to C1: C1's key and weights again
        world_mod.load_world(cfg_for(assets, tmp_path, *train, f"reward.revision={C1}"), tmp_path / "cache")
    assert keys[0] != keys[1] and keys[2] == keys[0]
    assert revisions == [C1, C2, C1]


def test_ranks_that_loaded_different_commits_stop_the_run():
    world_mod.check_ranks_agree([("hub:org/lm@a", "r")] * 2)
    world_mod.check_ranks_agree([("hub:org/lm@a", "r")])
    with pytest.raises(RuntimeError, match=r"rank 1: hub:org/lm@b.*policy\.revision"):
        world_mod.check_ranks_agree([("hub:org/lm@a", "r"), ("hub:org/lm@b", "r")])


def test_revisions_are_not_training_settings_and_a_moved_model_names_the_pin(tmp_path):
    """The commit is in the world's fingerprint: ``policy.revision`` is left out of the training settings
    (pinning the commit ``main`` pointed to resumes the run), and a refused resume names the pin."""
    from infalign.pipeline import policy_cache
    from pipeline_helpers import compose_train

    cfg = compose_train(tmp_path / "cache", tmp_path / "run", "policy.revision=v1")
    settings = policy_cache.training_settings(cfg, 0.1)
    assert "revision" not in settings["policy"] and "revision" not in settings["reward"]
    assert settings == policy_cache.training_settings(compose_train(tmp_path / "cache", tmp_path / "run"), 0.1)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    # the fingerprints hash the commits (with dtypes, input formats): the hint reads the stored commits
    stored = {"world": ["f1", "r1"], "hub": {"policy": f"org/lm@{C1}", "reward": f"org/rm@{C1}"},
              "training": {"a": 1}}
    (ckpt / policy_cache.RESUME_FILE).write_text(json.dumps(stored))
    moved = {"world": ["f2", "r2"], "hub": {"policy": f"org/lm@{C2}", "reward": f"org/rm@{C2}"}, "training": {"a": 1}}
    with pytest.raises(ConfigError, match=rf"hub model moved.*resume with policy\.revision={C1} reward\.revision={C1}"):
        policy_cache.check_resume(ckpt, moved, True, "last")
    policy_cache.check_resume(ckpt, stored, True, "last")  # pinned: same settings
