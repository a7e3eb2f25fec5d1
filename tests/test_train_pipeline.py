"""infalign-train end to end on a tiny toy world: every transform, both algos, resume, determinism."""

from __future__ import annotations

import json
import re
import shutil
import types

import pytest
import torch

from infalign.apps import train as train_app
from infalign.apps import train_stages
from infalign.errors import ConfigError
from infalign.math.pool_stats import pool_report
from pipeline_helpers import compose_train, seeded_cache


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, tiny_world):
    return seeded_cache(tmp_path_factory.mktemp("pipeline") / "cache", tiny_world)


def run(cache_dir, run_dir, *overrides):
    return train_app.run(compose_train(cache_dir, run_dir, *overrides))


@pytest.mark.parametrize(
    "overrides",
    [
        ["transform=identity"],
        ["transform=log", "calibration.smoothing=true"],
        ["transform=exp", "transform.t=2"],
        ["transform=exp_normalized", "transform.t=-3", "procedure=won", "procedure.n=2"],
        ["transform=optimal", "algo.beta=0.2"],
        ["transform=raw"],
        ["transform=sqrt"],
        ["transform=exp", "algo=ppo", "algo.minibatches=2"],
        ["transform=identity", "algo=ppo", "procedure=sample"],
    ],
    ids=lambda o: "-".join(x.split("=")[1] for x in o[:2]),
)
@pytest.mark.slow
def test_smoke_every_transform_and_algo(cache_dir, tmp_path, overrides):
    metrics = run(cache_dir, tmp_path, *overrides)
    assert metrics["status"] == "finished"
    written = json.loads((tmp_path / "metrics.json").read_text())
    rm = written["eval"]["judges"]["reward_model"]
    for ci in rm.values():
        assert ci["low"] <= ci["mean"] <= ci["high"]
    assert 0.0 <= rm["standard_win_rate"]["mean"] <= 1.0
    assert "gold" in written["eval"]["judges"]
    assert (tmp_path / "win_rates.png").stat().st_size > 1000
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    is_raw = overrides[0] == "transform=raw"
    assert (written["eval"]["theory"] is None) == is_raw
    assert (written["cache"]["calibration_hit"] is None) == is_raw  # raw skips calibration


@pytest.mark.slow
def test_pooled_run_takes_the_small_tilt_beta_and_records_no_theory(cache_dir, tmp_path):
    """identity on the pooled calibrated reward (the control, docs/method.md (2.4)): the calibrated-space
    theory does not describe it, so its KL target is met by the small-tilt match over its own
    calibration table (§9) and the run records no theory beside it (nothing to compare it with)."""
    from infalign.apps.config import instantiate_trainer
    from infalign.math.procedures import make_procedure
    from infalign.math.transforms import Identity
    from infalign.pipeline.fit import calibration_table
    from infalign.pipeline.kl_target import beta_for_target
    from infalign.pipeline.trainer import stage_trainers
    from infalign.pipeline.world import load_world

    cfg = compose_train(cache_dir, tmp_path, "method=identity_pooled", "kl_point=2")
    metrics = train_app.run(cfg)
    assert metrics["status"] == "finished" and metrics["eval"]["theory"] is None
    assert metrics["method"] == "identity[pooled]"
    assert len(metrics["world"]["world_id"]) == 16  # which world the numbers come from (the report checks it)
    world = load_world(cfg, cache_dir)
    trainers = stage_trainers(instantiate_trainer(cfg.trainer), [], None)
    table, hit = calibration_table(world, cfg, trainers.predict, cache_dir)
    assert hit and table.pooled  # the run's own table, from the cache
    expected = beta_for_target(float(cfg.algo.kl_target), Identity(), make_procedure("bon", 4), table)
    assert metrics["beta"] == pytest.approx(expected, rel=1e-6)  # (how far it is from the theory's beta:
    # test_pooled_calibration, in a miscalibrated world; the tiny world is nearly calibrated)


@pytest.mark.slow
def test_same_seed_same_metrics(cache_dir, tmp_path):
    a = run(cache_dir, tmp_path / "a", "transform=exp")
    b = run(cache_dir, tmp_path / "b", "transform=exp")
    assert a["eval"]["judges"] == b["eval"]["judges"]
    c = run(cache_dir, tmp_path / "c", "transform=exp", "seed=1")
    assert c["eval"]["judges"] != a["eval"]["judges"]


@pytest.mark.slow
def test_resume_continues_the_same_run(cache_dir, tmp_path):
    straight = run(cache_dir, tmp_path / "straight", "algo.steps=4", "save_policy=true")
    # "interrupted" after 2 steps (trained, not loaded from the policy cache: a cached policy has no checkpoint)
    run(cache_dir, tmp_path / "resumed", "algo.steps=2", "policy_cache=false")
    # resuming with another training setting would continue another configuration's policy: refused
    with pytest.raises(ConfigError, match=r"ckpt_path.*training\.transform\.t"):
        run(cache_dir, tmp_path / "resumed", "algo.steps=4", "ckpt_path=last", "transform.t=2")
    # the same settings (more steps, other evaluation settings) resume
    resumed = run(cache_dir, tmp_path / "resumed", "algo.steps=4", "ckpt_path=last", "save_policy=true",
                  "checkpoint_every=3")  # (another cadence: the checkpoint callback's state is not restored)
    ckpt = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4
    # one file: the resumed run overwrites its last.ckpt (review finding: a resume that did not get the
    # callback's last_model_path back wrote last-v1.ckpt beside a stale last.ckpt)
    assert [p.name for p in (tmp_path / "resumed" / "checkpoints").glob("*.ckpt")] == ["last.ckpt"]
    assert resumed["eval"]["judges"] == straight["eval"]["judges"]


@pytest.mark.slow
def test_a_policy_dir_beside_a_record_is_that_records(cache_dir, tmp_path, monkeypatch):
    """Review finding: policy/ was written in place (save_pretrained into the run dir), so a resume that
    failed or was killed while saving left new weights beside old files. It is written beside and moved
    into place, after the run's record: a policy/ beside a metrics.json is that record's."""
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    run_dir = tmp_path / "run"
    run(cache_dir, run_dir, "algo.steps=2", "policy_cache=false", "save_policy=true")
    before = {p.name: p.read_bytes() for p in (run_dir / "policy").iterdir()}

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    # review finding: policy/ was saved before the evaluation, so a run continued to more steps and killed
    # there left the new weights beside the old record. It is saved after the record: killed in evaluation,
    # the old record keeps its own policy/
    def killed(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(train_stages, "evaluate_policy", killed)
        with pytest.raises(KeyboardInterrupt):
            run(cache_dir, run_dir, "algo.steps=3", "policy_cache=false", "save_policy=true", "ckpt_path=last")
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 2
    assert {p.name: p.read_bytes() for p in (run_dir / "policy").iterdir()} == before
    # the save failing after the new record: the new record stands, without a policy/ (the old one was the
    # old record's), and no temporary dir is left; a re-run that asks for policy/ evaluates and saves again
    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", full_disk)
    with pytest.raises(OSError, match="No space left"):
        run(cache_dir, run_dir, "algo.steps=3", "policy_cache=false", "save_policy=true", "ckpt_path=last")
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 3 and not (run_dir / "policy").exists()
    assert [p.name for p in run_dir.iterdir() if p.name.startswith(".policy")] == []
    assert not (run_dir / "metrics.failed.json").exists()


@pytest.mark.slow
def test_a_diverged_policy_is_a_named_error_and_never_cached(tiny_cache, tmp_path):
    """Review finding: a policy that diverged (lr=1e30: finite but exploded weights) was stored in the policy
    cache, then failed in evaluation with torch's "probability tensor contains either inf, nan" -- and every
    later run of the config loaded it and failed the same way. The training stage now checks the trained
    policy's next-token distribution and raises a FloatingPointError naming the stage before caching it."""
    cache = tiny_cache  # (a cache of its own: no policy in it)
    for attempt in ("a", "b"):  # the second attempt trains again (nothing was cached) and fails the same way
        with pytest.raises(FloatingPointError, match="stage train: the trained policy has diverged"):
            run(cache, tmp_path / attempt, "transform=exp", "algo.lr=1e30", "algo.steps=1")
        assert json.loads((tmp_path / attempt / "metrics.json").read_text())["status"] == "failed"
        assert not list((cache / "policies").glob("*.pt"))


@pytest.mark.slow
def test_a_resume_into_a_finished_run_keeps_it_or_is_refused_never_evaluates_it_again(cache_dir, tiny_world, tmp_path,
                                                                                      monkeypatch):
    """Review finding: ckpt_path=last / last_or_new into a finished run (its checkpoint at the asked step)
    compared only the training settings, then evaluated again with whatever procedure and eval settings
    were given and replaced metrics.json. Now the same settings keep the run as it is (no compute), other
    evaluation settings are refused naming them, and more steps still continue it. A local model dir whose
    files changed at the same path is another world: not kept, and its checkpoint is refused (review finding)."""
    run_dir = tmp_path / "run"
    first = run(cache_dir, run_dir, "policy_cache=false")
    on_disk = (run_dir / "metrics.json").read_bytes()
    with pytest.raises(ConfigError, match=r"ckpt_path.*evaluated with other values of .*'eval\.ns'.*'procedure\.n'"):
        run(cache_dir, run_dir, "policy_cache=false", "ckpt_path=last_or_new", "procedure=won", "procedure.n=2",
            "eval.samples=6", "eval.ns=[1,2]")
    assert (run_dir / "metrics.json").read_bytes() == on_disk

    def no_compute(*a, **k):
        raise AssertionError("compute started")

    with monkeypatch.context() as patch:  # (the world is loaded: the record is kept only from the same models)
        for stage in ("calibration_table", "fit_policy", "evaluate_policy"):
            patch.setattr(train_stages, stage, no_compute)
        for how in ("last_or_new", "last"):
            kept = run(cache_dir, run_dir, "policy_cache=false", f"ckpt_path={how}")
            assert kept["eval"] == first["eval"] and (run_dir / "metrics.json").read_bytes() == on_disk
    longer = run(cache_dir, run_dir, "policy_cache=false", "ckpt_path=last_or_new", "algo.steps=3")
    assert longer["steps"] == 3 and longer["resumed"]["from_step"] == 2

    local, model = tmp_path / "local", tmp_path / "model"
    shutil.copytree(tiny_world / "reference", model)
    done = run(cache_dir, local, "policy_cache=false", f"policy.name_or_path={model}")
    (model / "notes.txt").write_text("edited")  # the model dir's files changed at the same path
    on_disk = (local / "metrics.json").read_bytes()
    with pytest.raises(ConfigError, match=r"ckpt_path.*'world'"):
        run(cache_dir, local, "policy_cache=false", f"policy.name_or_path={model}", "ckpt_path=last_or_new")
    assert (local / "metrics.json").read_bytes() == on_disk and done["world"]["world_id"]


PHI = {"power": 2.0}  # what custom_phi computes: a transform whose code changes between runs


def custom_phi(u):
    """``u ** PHI["power"]``: a custom transform's callable (``transform.fn``) whose code a test edits."""
    return u ** PHI["power"]


@pytest.mark.slow
def test_a_custom_transform_whose_code_changed_is_not_kept_nor_resumed(cache_dir, tmp_path, monkeypatch):
    """Extension-walkthrough finding: a custom transform's callable is in no config and no code digest, so
    after its code changed (u^4 -> -u) a re-run with ckpt_path=last_or_new kept the old run's record as this
    run's, and a resume trained half the steps on each. The run records its transform's values Phi(u)
    (method_info.transform_values, beside the checkpoints' settings): a resume from a checkpoint trained on
    other values is refused naming them, and a finished record of other values is not kept (a run whose
    policy came from the cache, without checkpoints, runs again)."""
    monkeypatch.setitem(PHI, "power", 2.0)
    phi = ["transform=sqrt", "transform.fn=test_train_pipeline.custom_phi", "transform.name=phi"]
    ckpt_dir = tmp_path / "checkpointed"
    first = run(cache_dir, ckpt_dir, *phi, "policy_cache=false")
    values = first["method_info"]["transform_values"]
    assert values and json.loads((ckpt_dir / "checkpoints" / "run_settings.json").read_text())[
        "transform_values"] == values
    on_disk = (ckpt_dir / "metrics.json").read_bytes()
    # (robustness walkthrough) killed while its views were written: no plot, a temp file left -- kept runs are
    # given their views back
    (ckpt_dir / "win_rates.png").unlink()
    (ckpt_dir / ".win_rates.png.k1ll3d.png.tmp").write_bytes(b"\x89PNG half")
    csv_written = (ckpt_dir / "eval_metrics.csv").stat().st_mtime_ns
    assert run(cache_dir, ckpt_dir, *phi, "policy_cache=false", "ckpt_path=last_or_new")["eval"] == first["eval"]
    assert (ckpt_dir / "metrics.json").read_bytes() == on_disk  # the same code: kept as it is
    assert (ckpt_dir / "win_rates.png").stat().st_size > 10_000 and not list(ckpt_dir.glob(".*.tmp"))
    assert (ckpt_dir / "eval_metrics.csv").stat().st_mtime_ns == csv_written  # only the missing view is written
    monkeypatch.setitem(PHI, "power", 3.0)
    for how, steps in (("last_or_new", 2), ("last", 3)):
        with pytest.raises(ConfigError, match="other values of the transform"):
            run(cache_dir, ckpt_dir, *phi, "policy_cache=false", f"ckpt_path={how}", f"algo.steps={steps}")
    assert (ckpt_dir / "metrics.json").read_bytes() == on_disk
    # another CPU's numpy rounds exp/log's last bit otherwise (review: 2e-16 relative): the same transform
    monkeypatch.setitem(PHI, "power", 2.0)
    settings_file = ckpt_dir / "checkpoints" / "run_settings.json"
    stored = json.loads(settings_file.read_text())
    stored["transform_values"] = [v * (1 + 4e-16) for v in stored["transform_values"]]
    settings_file.write_text(json.dumps(stored))
    assert run(cache_dir, ckpt_dir, *phi, "policy_cache=false", "ckpt_path=last", "algo.steps=3")["steps"] == 3
    record = json.loads((ckpt_dir / "metrics.json").read_text())  # ... and its finished record is kept
    record["method_info"]["transform_values"] = [v * (1 - 4e-16) for v in record["method_info"]["transform_values"]]
    (ckpt_dir / "metrics.json").write_text(json.dumps(record))
    on_disk = (ckpt_dir / "metrics.json").read_bytes()
    run(cache_dir, ckpt_dir, *phi, "policy_cache=false", "ckpt_path=last_or_new", "algo.steps=3")
    assert (ckpt_dir / "metrics.json").read_bytes() == on_disk
    monkeypatch.setitem(PHI, "power", 2.0)
    run(cache_dir, tmp_path / "trains", *phi)  # into the policy cache ...
    cached = tmp_path / "cached"
    hit = run(cache_dir, cached, *phi)  # ... a run from it has no checkpoints
    assert hit["cache"]["policy_hit"] and not (cached / "checkpoints" / "last.ckpt").exists()
    monkeypatch.setitem(PHI, "power", 3.0)
    again = run(cache_dir, cached, *phi, "ckpt_path=last_or_new")
    assert not again["cache"]["policy_hit"] and again["method_info"]["transform_values"] not in (None, values)


@pytest.mark.slow
def test_a_resume_under_other_code_is_recorded_in_the_run(cache_dir, tmp_path):
    """Review finding: a resume after the training code changed continued silently. The run's record says
    which checkpoint it continued, from what step, and what differs from the code that trained it."""
    from infalign.pipeline.policy_cache import RESUME_FILE, code_digest

    first = run(cache_dir, tmp_path / "run", "algo.steps=2", "policy_cache=false")
    assert first["resumed"] is None
    settings = tmp_path / "run" / "checkpoints" / RESUME_FILE
    stored = json.loads(settings.read_text())
    settings.write_text(json.dumps({**stored, "code": "0" * 16}))  # as if trained before a code change
    resumed = run(cache_dir, tmp_path / "run", "algo.steps=3", "policy_cache=false", "ckpt_path=last")
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["resumed"] == resumed["resumed"] == {
        "checkpoint": str(tmp_path / "run" / "checkpoints" / "last.ckpt"), "from_step": 2,
        "changed": {"code": {"checkpoint": "0" * 16, "run": code_digest()}}}


@pytest.mark.parametrize("algo, steps, every, saves", [
    # PPO: 2 epochs x 2 minibatches = 4 optimizer steps per RL step. Lightning's own cadence saved only
    # where global_step % 5 == 0 lands on an RL step's end (20), and kept that older last.ckpt at the end
    # (each case is a whole run: `slow`, but for one case kept in `make test-fast` as the quick guard)
    pytest.param("ppo", 6, 5, [8, 12, 16, 20, 24], marks=pytest.mark.slow),
    ("rloo", 6, 4, [4, 6]),  # one optimizer step per RL step: step 4, then the final state (was: 4 only)
    pytest.param("ppo", 5, 5, [8, 12, 16, 20], marks=pytest.mark.slow),  # Lightning's save at 20 is the final
    pytest.param("ppo", 3, 5, [8, 12], marks=pytest.mark.slow),
])
def test_last_checkpoint_follows_checkpoint_every_and_ends_at_the_final_step(
        cache_dir, tmp_path, monkeypatch, algo, steps, every, saves):
    from infalign.training.checkpoint import RunCheckpoint

    seen = []
    original = RunCheckpoint.on_save_checkpoint

    def record(self, trainer, pl_module, checkpoint):
        seen.append(trainer.global_step)
        original(self, trainer, pl_module, checkpoint)

    monkeypatch.setattr(RunCheckpoint, "on_save_checkpoint", record)
    run(cache_dir, tmp_path / algo, f"algo={algo}", f"algo.steps={steps}", f"checkpoint_every={every}",
        "policy_cache=false")
    assert seen == saves
    # one file, the final state (review finding: saving beside Lightning's own bookkeeping left a stale
    # last.ckpt and a last-v1.ckpt at the final step, and ckpt_path=last resumes last.ckpt by name)
    assert sorted(p.name for p in (tmp_path / algo / "checkpoints").glob("*.ckpt")) == ["last.ckpt"]
    ckpt = torch.load(tmp_path / algo / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == saves[-1]


@pytest.mark.slow
def test_second_run_reuses_world_and_tables(cache_dir, tmp_path):
    run(cache_dir, tmp_path / "first", "transform=identity")
    second = run(cache_dir, tmp_path / "second", "transform=identity", "algo.beta=0.3")
    assert second["cache"] == {"toy_built": False, "calibration_hit": True, "eval_reference_hit": True,
                               "policy_hit": False, "eval_policy_hit": False}  # another beta: another policy


@pytest.mark.slow
def test_reference_pools_are_keyed_by_the_sampling_precision_and_device(cache_dir, tmp_path):
    """Review finding: a bf16-mixed run reused the float32 run's calibration and evaluation reference
    pools (bf16 autocast moves the logits: other samples, other scores), so its numbers depended on
    which run filled the cache first. The precision and device are in the pool keys now -- float32
    on the CPU adds nothing, so the pools drawn before stay valid."""
    import functools

    from infalign.pipeline.pools import sampling_hardware

    first = run(cache_dir, tmp_path / "fp32", "transform=identity")
    bf16 = run(cache_dir, tmp_path / "bf16", "transform=identity", "trainer.precision=bf16-mixed")
    assert bf16["cache"]["calibration_hit"] is False and bf16["cache"]["eval_reference_hit"] is False
    again = run(cache_dir, tmp_path / "bf16_again", "transform=identity", "trainer.precision=bf16-mixed")
    assert again["cache"]["calibration_hit"] is True and again["cache"]["eval_reference_hit"] is True
    assert again["eval"]["judges"] == bf16["eval"]["judges"]
    assert first["cache"]["eval_reference_hit"] is not None
    factory = functools.partial(dict, precision="32-true", accelerator="cpu")
    assert sampling_hardware(factory) == ()
    assert sampling_hardware(functools.partial(dict, precision="bf16-mixed", accelerator="gpu")) == (
        {"precision": "bf16-mixed", "accelerator": "cuda"},)


@pytest.mark.parametrize(
    "override, key",
    [
        ("algo.kl_estimator=k3", "algo.kl_estimator"),  # k3 in the reward: not the KL gradient
        ("algo.temperature=0.7", "algo.temperature"),  # log-probs are taken at T = 1
        ("algo.beta=0", "algo.beta"),
        ("algo.group_size=1", "algo.group_size"),
        ("transform.t=0", "transform.t"),
        ("transform.t=89", "transform.t"),  # expm1(89) overflows float32, training's precision
        ("transform.t=88", "transform.t"),  # e^88 is finite; the tiny step's 2 x 2 of them sum past float32's max
        ("procedure.n=0", "procedure.n"),
        ("calibration.K=0", "calibration.K"),
        # C_hat ranks against reference samples drawn as RL draws (its uniformity under pi_ref is assumed)
        ("calibration.temperature=0.5", "calibration.temperature"),
        ("calibration.max_new_tokens=5", "calibration.max_new_tokens"),
        ("+calibration.top_k=3", "calibration.top_k"),
        ("+calibration.top_p=0.9", "calibration.top_p"),
        ("calibration.temperature=-1", "calibration.temperature"),  # (was reported as eval.temperature)
        ("calibration.K=1", "calibration.K"),  # with method=raw below: beta scaled by a within-prompt spread
        ("eval.ns=[1,64]", "eval.ns"),
        ("eval.bootstrap=0", "eval.bootstrap"),  # (was found after training and evaluation)
        ("objective.judge=nope", "objective.judge"),  # (was found after the sweep's jobs had finished)
        ("ckpt_path=/nonexistent.ckpt", "ckpt_path"),
        ("algo=ppo", "algo.minibatches"),  # with algo.minibatches=3 below
        ("algo.top_p=0.9", "algo.top_p"),  # nucleus sampling in training: off-policy log-probs
        ("algo.top_k=20", "algo.top_k"),
        ("algo.missing_eos_penalty=-1", "algo.missing_eos_penalty"),
        ("eval.top_p=0", "eval.top_p"),
        ("eval.top_p=1.5", "eval.top_p"),
        ("eval.top_k=0", "eval.top_k"),
        ("threads=two", "threads"),
        ("data.train_prompts=0", "data.train_prompts"),
        ("data.train_prompts=100000000", "data.train_prompts"),  # more than the toy world's 6.3M prompts: it hung
        ("data.eval_prompts=1", "data.eval_prompts"),  # review: one prompt gave zero-width "95 %" intervals
        # review findings (config surface): each failed late -- inside fit, after the world and calibration
        # stages, or after the toy build -- or gave a number
        ("+trainer.gradient_clip_val=1.0", "trainer.gradient_clip_val"),
        ("+trainer.accumulate_grad_batches=2", "trainer.accumulate_grad_batches"),
        ("eval.bootstrap=1", "eval.bootstrap"),
        ("reward.batch_size=0", "reward.batch_size"),
        ("tags=[[a]]", "tags"),
        # review (bad input): bool("no") is True -- the run trained the normalised transform without a word;
        # a string floor compared with 0 raised a raw TypeError
        ("transform.normalized=no", "transform.normalized"),
        ("eval.keep_responses=-1", "eval.keep_responses"),
        ("transform=log", "transform.floor"),  # with transform.floor=abc below
        ("data.source=nosuch", "data.source"),
        ("algo.kl_target=0.3", "algo.kl_target"),  # with transform=optimal below
        ("logger=wandb", "logger.mode"),  # with logger.mode=onlin below
        ("policy.train_dtype=fp8", "policy.train_dtype"),
        ("policy.dtype=half", "policy.dtype"),
        ("+reward.dtype=bf16", "reward.dtype"),
        ("+reward.input=concat", "reward.input"),
    ],
)
def test_bad_config_fails_before_compute(cache_dir, tmp_path, monkeypatch, override, key):
    def boom(*a, **k):
        raise AssertionError("compute started before validation")

    monkeypatch.setattr(train_stages, "load_world", boom)
    extra = {"algo.minibatches": ["algo.minibatches=3"], "algo.kl_target": ["transform=optimal"],
             "logger.mode": ["logger.mode=onlin"], "transform.floor": ["transform.floor=abc"]}.get(key, [])
    if override == "calibration.K=1":
        extra = ["method=raw"]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run(cache_dir, tmp_path, override, *extra)


def test_a_kl_target_with_a_missing_eos_penalty_fails_before_compute(cache_dir, tmp_path, monkeypatch):
    """algo.kl_target picks beta from the calibrated-space theory, which does not describe the penalised
    reward Phi(C) - p * 1{cut} (docs/method.md (6.1b)): refused, naming both keys, before the world loads."""
    def boom(*a, **k):
        raise AssertionError("compute started before validation")

    monkeypatch.setattr(train_stages, "load_world", boom)
    with pytest.raises(ConfigError, match=r"algo\.kl_target=0\.3.*missing_eos_penalty=0\.5"):
        run(cache_dir, tmp_path, "algo.kl_target=0.3", "algo.missing_eos_penalty=0.5")
    with pytest.raises(AssertionError, match="compute started"):  # control: p = 0 is no penalty
        run(cache_dir, tmp_path / "zero", "algo.kl_target=0.3", "algo.missing_eos_penalty=0")


def test_config_review_checks_at_the_world_stage_and_in_model_settings(tmp_path):
    """Review findings: chat_template=true on the toy world failed at the first prompt, after the toy
    build (now: the world stage's first check, before the build); a Bradley-Terry reward.train.steps=0
    cached the untrained scalar head as the reward model, a negative lr or warmup failed in fit."""
    from omegaconf import OmegaConf

    from infalign.pipeline.settings import model_settings
    from infalign.pipeline.world import check_world_config

    with pytest.raises(ConfigError, match=r"policy\.chat_template"):
        check_world_config(compose_train(tmp_path, tmp_path, "+policy.chat_template=true"))
    base = {"data": {"source": "tldr"}, "reward": {"train": {"enabled": True, "steps": 10, "lr": 1e-5, "warmup": 0,
                                                             "weight_decay": 0.0, "accelerator": None}}}
    model_settings(OmegaConf.create(base))
    for key, value in (("steps", 0), ("steps", 1.5), ("lr", -1e-5), ("warmup", -1), ("accelerator", "gpuu")):
        bad = OmegaConf.create(base)
        bad.reward.train[key] = value
        with pytest.raises(ConfigError, match=rf"reward\.train\.{key}"):
            model_settings(bad)
    off = OmegaConf.create(base)
    off.reward.train.enabled, off.reward.train.steps = False, 0  # not trained: not read
    model_settings(off)


@pytest.mark.slow
def test_response_statistics_are_logged_and_recorded(cache_dir, tmp_path):
    """Per training step: train/response_len_mean and train/eos_rate (CSV logger); in metrics.json:
    eval.responses of the policy and reference pools, consistent with max_new_tokens. Evaluation
    may sample with a nucleus (its reference pool is then another cache entry); the missing-EOS
    penalty is accepted by the RL run."""
    import csv

    default = run(cache_dir, tmp_path / "default", "algo.max_new_tokens=6")
    metrics = run(cache_dir, tmp_path / "nucleus", "algo.max_new_tokens=6", "eval.top_p=0.5", "logger=csv",
                  "algo.missing_eos_penalty=0.5", "log_every_n_steps=1")
    for m in (default, metrics):
        for pool in ("policy", "reference"):
            stats = m["eval"]["responses"][pool]
            assert 1 <= stats["response_len_mean"] <= 6 and 0 <= stats["eos_rate"] <= 1
    assert metrics["eval"]["reference_pool_cache_hit"] is False  # top_p is part of the pool's key
    assert metrics["eval"]["responses"]["reference"] != default["eval"]["responses"]["reference"]
    rows = list(csv.DictReader((tmp_path / "nucleus" / "csv" / "metrics.csv").open()))
    logged = [r for r in rows if r.get("train/eos_rate")]
    assert len(logged) == 2  # algo.steps=2, one row per step
    for r in logged:
        assert 1 <= float(r["train/response_len_mean"]) <= 6 and 0 <= float(r["train/eos_rate"]) <= 1
    # review finding (W&B): the progress bar's "kl" and "C" went to the logger too, C meaning the raw
    # reward's mean under transform=raw; the logger has train/kl and train/calibrated_reward
    assert "train/kl" in rows[0] and "kl" not in rows[0] and "C" not in rows[0]


def test_pool_report_on_constructed_pools():
    # policy always strictly better: every win rate is exactly 1; identical pools: exactly 1/2.
    ref = torch.arange(12.0).view(3, 4)
    report = pool_report(ref + 100, ref, "bon", [1, 2, 4], torch.full((3, 4), 0.25), num_resamples=20)
    assert all(report[k]["mean"] == 1.0 for k in ("standard_win_rate", "bon2_win_rate", "bon4_win_rate"))
    assert report["kl"]["mean"] == pytest.approx(0.25)
    same = pool_report(ref, ref, "won", [2, 4], None, num_resamples=20)
    assert same["won2_win_rate"]["mean"] == pytest.approx(0.5) and same["standard_win_rate"]["mean"] == 0.5
    # one prompt, policy {1, 3} vs reference {2}: standard 1/2; best-of-2 always 3 > 2 -> 1
    r = pool_report(torch.tensor([[1.0, 3.0]]), torch.tensor([[2.0, 2.0]]), "bon", [2], None, num_resamples=5)
    assert r["standard_win_rate"]["mean"] == 0.5 and r["bon2_win_rate"]["mean"] == 1.0


@pytest.mark.parametrize("overrides", [["algo=bon_sft", "algo.steps=2"], ["algo=ipo", "algo.steps=2"],
                                       ["experiment=toy_bon_distill", "procedure.n=3"]],
                         ids=["bon_sft", "ipo", "bon_distill_rl"])
@pytest.mark.slow
def test_baselines_run_on_the_toy_world(cache_dir, tmp_path, overrides):
    metrics = run(cache_dir, tmp_path, *overrides)
    assert metrics["status"] == "finished"
    th = metrics["eval"]["theory"]
    if overrides[0] == "algo=ipo":
        assert th is None
    elif overrides[0] == "algo=bon_sft":  # the best-of-N policy: KL = log N - (N-1)/N
        n = metrics["config"]["procedure"]["n"]
        assert th["kl"] == pytest.approx(__import__("math").log(n) - (n - 1) / n, abs=1e-6)
    else:  # RL on log(C_hat) of a K-sample table: the tilt by Phi_K (docs/method.md (4.11)), not quite best-of-N
        from infalign.math.finite_k import FiniteK
        from infalign.math.procedures import BestOfN
        from infalign.math.transforms import Log
        from infalign.pipeline.evaluate import theory_prediction

        cal, n = metrics["config"]["calibration"], metrics["config"]["procedure"]["n"]
        want = theory_prediction(FiniteK(Log(), cal["K"], cal["smoothing"]), BestOfN(n), metrics["beta"], 0.1)
        assert th["kl"] == pytest.approx(want["kl"], rel=1e-9)
        assert th["table"] == {"K": cal["K"], "smoothing": cal["smoothing"]}  # which theory the record carries
        assert abs(th["kl"] - (__import__("math").log(n) - (n - 1) / n)) > 1e-3  # (K = 4: far from the limit)
    if overrides[0].startswith("experiment"):
        assert metrics["beta"] == pytest.approx(0.5)


@pytest.mark.slow
def test_an_offline_baseline_records_its_training_data_also_from_the_policy_cache(tiny_cache, tmp_path):
    """Review finding: fit_offline's pair count, N and the best / worst picks cut at max_new_tokens
    (offline_cut_best / offline_cut_worst) were logged, and dropped by fit_policy. metrics.json records them
    (``offline``), also for a run whose policy came from the policy cache (kept in the cache entry); an
    online run records none."""
    first = run(tiny_cache, tmp_path / "a", "algo=bon_sft", "algo.steps=2", "algo.max_new_tokens=3")
    offline = first["offline"]
    assert offline == json.loads((tmp_path / "a" / "metrics.json").read_text())["offline"]
    assert (offline["pairs"], offline["n"]) == (6, first["config"]["procedure"]["n"])
    assert 0 <= offline["cut_best"] <= 6 and 0 < offline["cut_worst"] <= 6  # 3 new tokens cut some responses
    again = run(tiny_cache, tmp_path / "b", "algo=bon_sft", "algo.steps=2", "algo.max_new_tokens=3")
    assert again["cache"]["policy_hit"] is True and again["offline"] == offline
    assert run(tiny_cache, tmp_path / "c", "transform=identity", "algo.steps=1")["offline"] is None


@pytest.mark.slow  # two trainings
def test_a_replica_is_an_independent_training_paired_with_its_seed(cache_dir, tmp_path):
    """replica=1 (the A/A control, sweeps/paper_null.yaml): another policy (training draws from
    (seed, 1), its own policy-cache key), labelled identity[replica=1], evaluated against its seed's
    reference pool (a cache hit after replica 0) -- paired with every other method of that seed."""
    from infalign.pipeline.settings import training_seed

    a = run(cache_dir, tmp_path / "a", "transform=identity")
    b = run(cache_dir, tmp_path / "b", "transform=identity", "replica=1")
    assert a["method"] == "identity" and b["method"] == "identity[replica=1]"
    assert b["cache"]["calibration_hit"] is True and b["cache"]["eval_reference_hit"] is True
    assert b["cache"]["policy_hit"] is False
    assert b["eval"]["judges"]["reward_model"]["kl"] != a["eval"]["judges"]["reward_model"]["kl"]
    assert b["eval"]["per_prompt"]["prompt_ids"] == a["eval"]["per_prompt"]["prompt_ids"]
    cfg = compose_train(cache_dir, tmp_path / "c", "replica=2")
    assert training_seed(cfg) == hash((0, 2)) & 0x7FFF_FFFF != 0
    with pytest.raises(ConfigError, match="replica"):
        run(cache_dir, tmp_path / "d", "replica=-1")


def test_calibration_settings_of_a_run_without_calibration_are_not_checked(tmp_path):
    """``transform=raw`` with a fixed ``algo.beta`` draws no calibration samples: their settings do not
    matter; ``method=raw`` (beta from ``kl_target``, scaled by the reference's reward spread) draws them."""
    from infalign.apps.train import validate
    from pipeline_helpers import compose_train

    validate(compose_train(tmp_path, tmp_path, "transform=raw", "algo.kl_target=null", "calibration.temperature=0.5"))
    with pytest.raises(ConfigError, match=r"calibration\.temperature"):
        validate(compose_train(tmp_path, tmp_path, "method=raw", "calibration.temperature=0.5"))


def test_16_mixed_with_gradient_clipping_is_refused_for_rl(tmp_path):
    """Under 16-mixed Lightning's manual optimisation clips the loss-scaled gradients (the GradScaler's
    unscale comes in opt.step, after CTRL's clip_gradients; Lightning issue #18089): the clip acted at
    algo.grad_clip / 65536 (a review measured 1.5e-8 for 1e-3). RL refuses it; without clipping, or
    for an offline baseline (automatic optimisation unscales before clipping), it is accepted."""
    from infalign.apps.train import validate
    from pipeline_helpers import compose_train

    with pytest.raises(ConfigError, match=r"trainer\.precision") as err:
        validate(compose_train(tmp_path, tmp_path, "trainer.precision=16-mixed"))
    assert "grad_clip" in str(err.value)
    validate(compose_train(tmp_path, tmp_path, "trainer.precision=16-mixed", "algo.grad_clip=0"))
    validate(compose_train(tmp_path, tmp_path, "trainer.precision=bf16-mixed"))
    validate(compose_train(tmp_path, tmp_path, "trainer.precision=16-mixed", "method=bon_sft"))


@pytest.mark.parametrize("method", ["bon_sft", "ipo"])
@pytest.mark.parametrize("override, key", [("calibration.temperature=0.7", "calibration.temperature"),
                                           ("calibration.max_new_tokens=40", "calibration.max_new_tokens"),
                                           ("+calibration.top_p=0.9", "calibration.top_p")])
def test_an_offline_baseline_draws_its_samples_as_its_algo_says(tmp_path, method, override, key):
    """BoN-SFT and IPO train on (best, worst)-of-N reference samples drawn with the ``calibration``
    sampling settings: those must be the algorithm's (temperature 1, its max_new_tokens, untruncated) --
    a review found calibration.temperature=0.7 drawn silently and algo.max_new_tokens ignored."""
    from infalign.apps.train import validate
    from pipeline_helpers import compose_train

    validate(compose_train(tmp_path, tmp_path, f"method={method}"))
    with pytest.raises(ConfigError, match=re.escape(key)):
        validate(compose_train(tmp_path, tmp_path, f"method={method}", override))


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["bon_sft", "ipo"])
def test_an_interrupted_offline_run_resumes_where_it_stopped(cache_dir, tmp_path, monkeypatch, algo):
    """An offline algorithm (SFT / IPO batches from a shuffling loader) stopped after step 4 of 6 -- mid-epoch:
    its epochs span 3 steps (prompts_per_step=2 of 6 prompts) -- resumes from its checkpoint: it trains
    steps 5-6 only, on the batches an uninterrupted run has, and ends with that run's policy and metrics."""
    from infalign.training.ipo import IPOModule
    from infalign.training.pretrain import LMPretrainModule

    module = {"bon_sft": LMPretrainModule, "ipo": IPOModule}[algo]
    args = [f"algo={algo}", "algo.steps=6", "policy_cache=false", "save_policy=true"]
    straight = run(cache_dir, tmp_path / "straight", *args)

    trained = []
    step = module.training_step
    monkeypatch.setattr(module, "training_step", lambda self, *a: trained.append(self.global_step) or step(self, *a))

    def stop_after_step_4(self, outputs, batch, batch_idx):  # after the checkpoint callback has saved step 4
        if self.global_step == 4:
            raise RuntimeError("interrupted")

    monkeypatch.setattr(module, "on_train_batch_end", stop_after_step_4, raising=False)
    with pytest.raises(RuntimeError, match="interrupted"):
        run(cache_dir, tmp_path / "killed", *args)
    monkeypatch.undo()
    monkeypatch.setattr(module, "training_step", lambda self, *a: trained.append(self.global_step) or step(self, *a))
    trained.clear()
    resumed = run(cache_dir, tmp_path / "killed", *args, "ckpt_path=last")
    assert trained == [4, 5]
    assert resumed["eval"]["judges"] == straight["eval"]["judges"]
    weights = [torch.load(tmp_path / d / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
               for d in ("straight", "killed")]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["algo=bon_sft", "algo=rloo"])
def test_a_fit_a_trainer_setting_cuts_short_is_an_error_not_a_policy(cache_dir, tmp_path, algo):
    """Review finding: +trainer.max_epochs=1 stopped an offline fit after one pass over its loader (3 of
    its 4 steps here) and the policy was recorded -- and cached -- as the 4-step run's; max_time or a
    callback can cut any algorithm's fit alike. A fit short of its optimizer steps is now an error."""
    from infalign.pipeline import trainer as trainer_mod

    stop = ["+trainer.max_epochs=1"] if algo == "algo=bon_sft" else ["+trainer.max_time=00:00:00:00"]
    with pytest.raises(RuntimeError, match=r"training stopped at optimizer step \d of 4"):
        run(cache_dir, tmp_path / "run", algo, "algo.steps=4", *stop)
    assert trainer_mod.check_fit_complete(types.SimpleNamespace(global_step=4), 4) is None


@pytest.mark.slow
def test_an_offline_run_whose_trainer_is_not_step_indexed_restarts_instead(cache_dir, tmp_path, caplog):
    """With a trainer key that makes Lightning iterate the loader its own way (here max_epochs; DDP,
    accumulation, batch limits alike: pipeline/baselines.offline_resumable) the fit is the loader's, as
    before offline runs resumed, and a resume trains from step 0 again, with a warning that says so."""
    from infalign.training.pretrain import LMPretrainModule

    args = ["algo=bon_sft", "algo.steps=4", "policy_cache=false", "+trainer.max_epochs=100"]
    run(cache_dir, tmp_path / "run", *args)
    # interrupted after its last checkpoint (a finished run would be kept as it is: nothing to train)
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"status": "interrupted"}))
    trained = []
    step = LMPretrainModule.training_step
    LMPretrainModule.training_step = lambda self, *a: trained.append(self.global_step) or step(self, *a)
    try:
        caplog.set_level("WARNING")
        run(cache_dir, tmp_path / "run", *args, "ckpt_path=last")
    finally:
        LMPretrainModule.training_step = step
    assert trained == [0, 1, 2, 3]
    assert any("trains from step 0 again (its batches are not a function of the step" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("trainer, resumable", [
    ({}, True), ({"strategy": "auto", "devices": 1}, True), ({"accumulate_grad_batches": 2}, False),
    ({"strategy": "ddp", "devices": 1}, False), ({"max_epochs": 3}, False), ({"limit_train_batches": 0.5}, False),
    ({"overfit_batches": 2}, False)])
def test_offline_runs_read_step_indexed_batches_only_with_a_plain_trainer(trainer, resumable, monkeypatch):
    from infalign.pipeline.baselines import offline_resumable

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    assert offline_resumable(trainer) is resumable
    monkeypatch.setenv("WORLD_SIZE", "2")  # a torchrun launch: Lightning's distributed sampler
    assert offline_resumable(trainer) is False


def test_an_offline_checkpoint_is_continued_restarted_or_refused_by_what_it_records(tmp_path, caplog):
    """apps/train.offline_resume_step on hand-written checkpoints: continued at its step; restarted (None, a
    warning) without an optimizer state or -- for bon_sft, whose learning rate decays over algo.steps --
    without the schedule length older checkpoints did not record; refused when that length differs."""
    from infalign.apps.train import offline_resume_step
    from infalign.training.algorithms import make_algorithm

    def ckpt(name, **contents):
        torch.save({"global_step": 2, "optimizer_states": [{"state": {}}], **contents}, tmp_path / name)
        return str(tmp_path / name)

    sft, ipo = make_algorithm({"name": "bon_sft", "steps": 4}), make_algorithm({"name": "ipo", "steps": 4})
    assert offline_resume_step(ckpt("a.ckpt", schedule_steps=4), sft, {}) == 2
    assert offline_resume_step(ckpt("b.ckpt"), ipo, {}) == 2  # constant learning rate: no length needed
    caplog.set_level("WARNING")
    assert offline_resume_step(ckpt("c.ckpt"), sft, {}) is None
    assert "does not record the length of its learning-rate schedule" in caplog.text
    assert offline_resume_step(ckpt("d.ckpt", optimizer_states=[]), ipo, {}) is None
    with pytest.raises(ConfigError, match=r"algo\.steps"):
        offline_resume_step(ckpt("e.ckpt", schedule_steps=8), sft, {})
    with pytest.raises(ConfigError, match=r"algo\.steps"):  # more steps trained than asked for
        offline_resume_step(ckpt("f.ckpt", global_step=6, schedule_steps=4), make_algorithm(
            {"name": "bon_sft", "steps": 4}), {})


def test_only_algorithms_with_a_step_independent_schedule_may_resume_longer(tmp_path):
    """algo.steps is left out of the resume settings (a resume may train longer, continuing a shorter run
    exactly: test_resume_continues_the_same_run) except for bon_sft, whose learning rate decays over it."""
    from infalign.pipeline.policy_cache import _resume_training

    for algo, kept in (("rloo", False), ("ppo", False), ("ipo", False), ("bon_sft", True)):
        training = _resume_training(compose_train(tmp_path, tmp_path, f"algo={algo}", "algo.steps=7"), 0.1)
        assert ("steps" in training["algo"]) is kept, algo


@pytest.mark.slow
def test_a_longer_resume_of_bon_sft_is_refused(cache_dir, tmp_path):
    """A 4-step resume of a 2-step bon_sft run would be neither run (its learning rate decays over
    algo.steps): refused before compute, naming algo.steps."""
    run(cache_dir, tmp_path / "sft", "algo=bon_sft", "algo.steps=2", "policy_cache=false")
    with pytest.raises(ConfigError, match=r"ckpt_path.*training\.algo\.steps"):
        run(cache_dir, tmp_path / "sft", "algo=bon_sft", "algo.steps=4", "ckpt_path=last")


def test_replica_seeds_are_distinct_per_replica_and_per_seed():
    """The A/A control's replicas are independent trainings: replica 0 is the seed itself, every (seed,
    replica) its own training seed, replica r of seed s = hash((s, r)) (pipeline/settings.training_seed)."""
    from omegaconf import OmegaConf

    from infalign.pipeline.settings import training_seed

    def ts(seed, replica):
        return training_seed(OmegaConf.create({"seed": seed, "replica": replica}))

    assert ts(3, 0) == 3 and training_seed(OmegaConf.create({"seed": 3})) == 3
    assert len({ts(s, r) for s in (0, 1, 2) for r in (0, 1, 2, 3)}) == 12
    assert ts(0, 2) == hash((0, 2)) & 0x7FFF_FFFF


@pytest.mark.parametrize("notice", [
    "You defined a `validation_step` but have no `val_dataloader`. Skipping val loop.",  # BoN-SFT's module
    "Your `train_dataloader` dataloader is not resumable.",  # ours only counts steps: resumes are exact
    "ModelCheckpoint with manual optimization and every_n_train_steps",
])
def test_the_app_silences_lightning_notices_that_do_not_apply_to_its_runs(notice):
    """apps/train.py's warning filters, as its import installs them (pytest resets the filters after
    collection): a Lightning notice about a situation the app creates by design is not printed in
    every run; another still is."""
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.resetwarnings()
        train_app.silence_lightning_notices()
        warnings.warn(notice, UserWarning, stacklevel=1)
        warnings.warn("an unrelated notice", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["an unrelated notice"]


def test_the_float32_step_sum_limit_is_for_online_training_only(tmp_path):
    """The offline baselines (ipo, bon_sft) never compute Phi: a t past the step-sum limit is theirs to ignore (a
    review: algo=ipo transform.t=87 was refused, naming step sums IPO does not have); RLOO at t = 88.5 is
    refused (e^88.5 x the tiny step's 2 x 2 rows > 3.4e38)."""
    train_app.validate(compose_train(tmp_path, tmp_path, "algo=ipo", "transform.t=88.5"))
    with pytest.raises(ConfigError, match=r"transform\.t=88.5"):
        train_app.validate(compose_train(tmp_path, tmp_path, "transform.t=88.5"))


def test_the_world_stage_checks_the_toy_prompt_counts(tmp_path):
    """pipeline/world.check_world_config (the world stage's first check, also for runs that skip apps/train's
    validation) refuses more toy prompts than the world has."""
    from infalign.pipeline.world import check_world_config

    small = ["data.toy.world.n_attributes=4", "data.toy.world.prompt_len=[2,3]"]  # 4 x 3 + 4 x 3 x 2 = 36 prompts
    with pytest.raises(ConfigError, match=r"data\.train_prompts=30 .*at most the toy world's 36 distinct prompts"):
        check_world_config(compose_train(tmp_path, tmp_path, *small, "data.train_prompts=30", "data.eval_prompts=7"))
