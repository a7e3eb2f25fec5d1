"""Mutation pins for pipeline/policy_cache.py and pipeline/run_record.py: each test kills a behaviour-changing
mutant the rest of the (non-slow) suite let survive; its docstring says what a researcher would see."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from infalign.math.transforms import as_transform
from infalign.pipeline import policy_cache
from pipeline_helpers import compose_train


def _step(k: float):
    """A user's custom transform: 1 above the k-th quantile of the reference's rewards, else 0."""
    return as_transform(lambda u: (u > k) * 1.0)


def policy_key(cfg, world, transform):
    return policy_cache.policy_key(cfg, world, 0.1, transform)


def test_a_custom_transform_whose_threshold_moved_between_coarse_grid_points_is_another_policy(monkeypatch):
    """A user's callable is keyed by its values Phi(u) alone (its code is in no config and no digest). Its step
    moved from the 30th to the 31st percentile -- equal at u = 0, 1/2 and 1 -- trains another policy: the policy
    key must tell them apart (docs/method.md §8), or the cache serves the policy trained on the old transform
    and the run records it under the new one."""
    monkeypatch.setattr(policy_cache, "code_digest", lambda: "code")  # (keyed too; tested elsewhere)
    world = SimpleNamespace(reference_fingerprint="ref", reward_fingerprint="rm", train_prompts=["a0 ->"])
    cfg = OmegaConf.create({"seed": 0, "algo": {"name": "rloo", "lr": 1e-3}, "transform": {"_target_": "custom"}})
    for a, b in ((0.30, 0.31), (0.70, 0.71)):
        assert policy_cache.transform_fingerprint(_step(a)) != policy_cache.transform_fingerprint(_step(b))
        assert policy_key(cfg, world, _step(a)) != policy_key(cfg, world, _step(b))
    assert policy_key(cfg, world, _step(0.30)) == policy_key(cfg, world, _step(0.30))


@pytest.mark.parametrize("evaluation", [None, {"judges": {}}])
def test_a_finished_record_without_evaluation_results_is_not_kept(tmp_path, monkeypatch, evaluation):
    """ckpt_path=last_or_new into a dir whose finished metrics.json holds no evaluation results (same training,
    evaluation settings and code): keeping it would end the re-run with a record the report skips (no judges),
    so the run silently never gets its numbers -- it must run again. The same record with results is kept."""
    code = {"training": "t" * 16, "evaluation": "e" * 16}
    monkeypatch.setattr(policy_cache, "run_code", lambda: code)  # (its digests: tested elsewhere; 7 s to import)
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    run_dir.mkdir()
    cfg = compose_train(cache, run_dir, "ckpt_path=last_or_new")
    record = {"version": 5, "status": "finished", "run_name": "done", "eval": {"judges": {"gold": {}}},
              "code": code, "config": OmegaConf.to_container(cfg, resolve=True)}
    (run_dir / "metrics.json").write_text(json.dumps(record))
    assert policy_cache.finished_record_to_keep(run_dir, cfg, "last_or_new")["run_name"] == "done"
    (run_dir / "metrics.json").write_text(json.dumps({**record, "eval": evaluation}))
    assert policy_cache.finished_record_to_keep(run_dir, cfg, "last_or_new") is None
