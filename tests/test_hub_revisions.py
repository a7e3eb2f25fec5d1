"""Hub models are keyed by the commit they resolve to, and every load reads that commit.

A hub name is a moving target: its ``main`` changes when the owner pushes. Cached reference samples,
calibration tables and reward scores keyed by the name alone would be reused for the new weights --
numbers silently from another model. These tests build a Hugging Face cache by hand (the layout
``huggingface_hub`` reads offline: ``models--org--name/refs/<branch>`` holding a commit hash,
``snapshots/<commit>/`` holding the files), with two commits of different weights, and check the
fingerprints (``pipeline/world.py``), the weights actually loaded, and the errors. No network:
``HF_HUB_OFFLINE=1`` (tests/conftest.py)."""

from __future__ import annotations

import shutil

import pytest
import torch

from infalign.errors import ConfigError
from infalign.models import load_causal_lm
from infalign.models.builders import hub_commit
from infalign.pipeline import world as world_mod
from test_real_models import assets, cfg_for  # noqa: F401 (assets: the module fixture of tiny real-format models)

C1, C2 = "a1" * 20, "b2" * 20


def _snapshot(repo, commit, source, shift: float = 0.0):
    """``repo/snapshots/<commit>/``: the files of ``source``, the model's weights shifted by ``shift``."""
    target = repo / "snapshots" / commit
    shutil.copytree(source, target)
    if shift:
        model = load_causal_lm(source)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(shift)
        model.save_pretrained(target)


def _point(repo, ref: str, commit: str) -> None:
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)


@pytest.fixture
def hub(assets, tmp_path, monkeypatch):  # noqa: F811 (the imported fixture)
    """An offline hub cache with ``org/lm`` (commits C1 and C2: other weights, same tokenizer; ``main`` ->
    C1) and ``org/rm`` (C1 only); ``huggingface_hub`` and transformers read it."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    lm, rm = cache / "models--org--lm", cache / "models--org--rm"
    _snapshot(lm, C1, assets / "lm")
    _snapshot(lm, C2, assets / "lm", shift=0.01)
    _point(lm, "main", C1)
    _snapshot(rm, C1, assets / "rm")
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
    not reused), and the weights loaded are C2's; ``policy.revision`` pins C1 whatever ``main`` says."""
    c1_weight = _first_weight(load_causal_lm(hub / "snapshots" / C1))
    c2_weight = _first_weight(load_causal_lm(hub / "snapshots" / C2))
    assert not torch.equal(c1_weight, c2_weight)
    hub_cfg = ("policy.name_or_path=org/lm", "reward.name_or_path=org/rm")

    first = world_mod.load_world(cfg_for(assets, tmp_path, *hub_cfg), tmp_path / "cache")
    assert first.reference_fingerprint == f"hub:org/lm@{C1}"
    assert torch.equal(_first_weight(first.reference), c1_weight)
    assert torch.equal(_first_weight(first.policy), c1_weight)

    _point(hub, "main", C2)  # the owner pushed
    moved = world_mod.load_world(cfg_for(assets, tmp_path, *hub_cfg), tmp_path / "cache")
    assert moved.reference_fingerprint == f"hub:org/lm@{C2}"
    assert moved.stats["world_id"] != first.stats["world_id"]
    assert moved.reward_fingerprint == first.reward_fingerprint  # the reward model did not move
    assert torch.equal(_first_weight(moved.reference), c2_weight)

    pinned = world_mod.load_world(cfg_for(assets, tmp_path, *hub_cfg, f"policy.revision={C1}"), tmp_path / "cache")
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
    ("policy.revision=" + "c3" * 20, OSError, r"policy\.name_or_path='org/lm' at revision '(c3){20}'"),
    ("policy.revision=1234", ConfigError, r"policy\.revision=1234.*as a string \(quote"),
    ("policy.revision=v1", ConfigError, r"policy\.revision='v1'.*null for a local directory"),
    ("reward.revision=v1", ConfigError, r"reward\.revision='v1'.*null for a local directory"),
])
def test_bad_revisions_name_their_key_before_any_compute(hub, assets, tmp_path, override, error, match):  # noqa: F811
    name = "policy.name_or_path=org/lm" if override.startswith(("policy.revision=c3", "policy.revision=1")) else None
    cfg = cfg_for(assets, tmp_path, *([name] if name else []), override)
    with pytest.raises(error, match=match):
        world_mod.check_world_config(cfg)


def test_a_revision_without_a_model_name_is_refused(tmp_path):
    """The toy world's own models have no revision: ``policy.revision`` without a name is an error."""
    from pipeline_helpers import compose_train

    cfg = compose_train(tmp_path / "cache", tmp_path / "run", "policy.revision=v1")
    with pytest.raises(ConfigError, match=r"policy\.revision='v1'.*null without policy\.name_or_path"):
        world_mod.check_world_config(cfg)
