"""Mutation pins for pipeline/ (pools, fit, baselines, toy_prompts, settings, policy_cache, record,
run_record) and training/{checkpoint,step_batches,rollout}.py: each test kills a behaviour-changing mutant
the rest of the (non-slow) suite let survive; its docstring says what a user would see."""

from __future__ import annotations

import functools
import logging
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from infalign.pipeline import pools

GEN = {"max_new_tokens": 8, "temperature": 1.0, "batch_size": 2, "top_k": None, "top_p": 1.0}
CPU = functools.partial(L.Trainer, accelerator="cpu", precision="32-true")


def _world(reads=None):
    return SimpleNamespace(reward=object(), reward_fingerprint="rm", reference_fingerprint="ref",
                           reward_reads=lambda prompts: reads, policy=None, reference=None, tokenizer=None)


def _pool_settings(world, gen=None, trainer=CPU):
    return pools._pool_settings(world, ["a", "b"], 2, {"reward": world.reward},
                                OmegaConf.create({**GEN, **(gen or {})}),
                                0, trainer)


# ---------------------------------------------------------------- pools.py: what keys a cached pool


@pytest.mark.parametrize("key,value", [("max_new_tokens", 9), ("temperature", 0.7), ("batch_size", 3),
                                       ("top_k", 5), ("top_p", 0.9)])
def test_each_generation_setting_keys_a_pool(key, value):
    """Another length, temperature, batch split (the per-batch streams) or nucleus/top-k cut draws other
    samples: a key without it serves the old pool -- silently wrong calibration tables and win rates."""
    world = _world()
    assert _pool_settings(world, {key: value}) != _pool_settings(world)


def test_the_dataset_text_the_reward_reads_keys_a_pool():
    """The reward model's scores depend on the dataset text it reads (World.reward_reads): other text, other pool."""
    assert _pool_settings(_world(["x", "y"])) != _pool_settings(_world(["x", "z"]))


def test_half_precision_or_another_device_keys_a_pool_apart_from_float32_on_the_cpu():
    """bf16 autocast / a GPU's kernels sample other tokens: their pools must not be served to a float32 CPU run."""
    assert pools.sampling_hardware(CPU) == ()
    assert pools.sampling_hardware(functools.partial(L.Trainer, accelerator="cpu", precision="32")) == ()
    bf16 = functools.partial(L.Trainer, accelerator="cpu", precision="bf16-mixed")
    assert pools.sampling_hardware(bf16) == ({"precision": "bf16-mixed", "accelerator": "cpu"},)
    gpu = functools.partial(L.Trainer, accelerator="gpu", precision="32-true")
    assert pools.sampling_hardware(gpu) == ({"precision": "32-true", "accelerator": "cuda"},)
    world = _world()
    assert _pool_settings(world, trainer=bf16) != _pool_settings(world)


def test_a_distributed_policy_pool_is_drawn_fresh_not_cached(tmp_path, monkeypatch):
    """Every rank draws its share and all gather it: a rank-local cache entry would be written by every rank."""
    monkeypatch.setattr(pools.distributed, "is_distributed", lambda: True)
    drawn = []
    monkeypatch.setattr(pools, "draw_pool", lambda *a, **k: drawn.append(1) or {"fresh": True})
    pool, hit = pools.policy_pool(_world(), "policy-key", ["a"], 2, {}, OmegaConf.create(GEN), None, 0, tmp_path)
    assert pool == {"fresh": True} and hit is None and drawn == [1] and not (tmp_path / "pools").exists()


def test_a_stored_pool_keeps_which_rows_the_reward_model_read_cut():
    """eval.reward_cut is computed from the stored pool's cut/<judge> tensors: a cache hit must still have them."""
    cut = torch.tensor([[True, False, False], [False, False, True]])
    pool = {"scores": {"reward": torch.zeros(2, 3)}, "cut": {"reward": cut}, "lengths": torch.ones(2, 3),
            "ended": torch.ones(2, 3, dtype=torch.bool)}
    assert torch.equal(pools._unflatten(pools._flatten(pool))["cut"]["reward"], cut)


def test_draw_pool_samples_with_the_groups_top_k_and_top_p(monkeypatch):
    """eval.top_k / eval.top_p must reach the sampler (and the key says they did): otherwise a silently untruncated
    draw."""
    seen = {}
    monkeypatch.setattr(pools, "RolloutModule", lambda *a, **kw: seen.update(kw))
    monkeypatch.setattr(pools, "gather", lambda outputs, num_prompts=None: outputs)
    trainer = functools.partial(lambda **kw: SimpleNamespace(predict=lambda module: "out"))
    pools.draw_pool(None, None, ["a"], 2, {}, OmegaConf.create({**GEN, "top_k": 5, "top_p": 0.9}), trainer, 0)
    assert seen["top_k"] == 5 and seen["top_p"] == 0.9


def test_a_predict_loop_stopped_early_gives_no_pool(monkeypatch):
    """trainer.limit_predict_batches cut the loop: a partial pool would pass for (and be cached as) the whole."""
    monkeypatch.setattr(pools, "RolloutModule", lambda *a, **kw: None)
    one = {"index": torch.tensor([0]), "scores": {"reward": torch.zeros(1, 2)}, "cut": {}, "log_ratio": None,
           "responses": [], "response_ids": [], "lengths": torch.ones(1, 2),
           "ended": torch.ones(1, 2, dtype=torch.bool)}
    trainer = functools.partial(lambda **kw: SimpleNamespace(predict=lambda module: [one]))
    with pytest.raises(RuntimeError, match="sampled 1 of 2 prompts"):
        pools.draw_pool(None, None, ["a", "b"], 2, {}, OmegaConf.create(GEN), trainer, 0)


# ---------------------------------------------------------------- rollout.py


def test_a_rank_without_a_batch_of_its_own_still_gets_one_empty_batch():
    """More ranks than prompt batches: Lightning needs >= 1 batch per rank, else the predict loop hangs/fails."""
    from infalign.training.rollout import prompt_loader

    batches = list(prompt_loader(["a"], 4, rank=1, world_size=2))
    assert len(batches) == 1 and batches[0]["prompt"] == []


# ---------------------------------------------------------------- fit.py


def _cfg(**over):
    return OmegaConf.create({"seed": 3, "replica": 1, "calibration": {"K": 2, "smoothing": False, "scope": "prompt",
                                                                      "max_new_tokens": 3, "temperature": 1.0,
                                                                      "batch_size": 2}, **over})


def test_a_replica_draws_the_calibration_pool_of_its_seed(monkeypatch, tmp_path):
    """A replica is paired with the other methods of its seed (docs/method.md §10): same calibration table."""
    from infalign.pipeline import fit

    seen = []
    scores = torch.arange(4.0).view(2, 2)
    monkeypatch.setattr(fit, "reference_pool", lambda world, prompts, n, judges, gen, trainer, seed, cache, tag:
                        (seen.append(seed), ({"scores": {"reward": scores}}, False))[1])
    fit.calibration_table(SimpleNamespace(train_prompts=["a", "b"], reward=None), _cfg(), None, tmp_path)
    assert seen == [3]


def test_a_replica_trains_with_its_own_seed_and_ppo_for_all_its_optimizer_steps(monkeypatch):
    """replica=1 is an independent re-training (training_seed); PPO's fit runs steps x epochs x minibatches optimizer
    steps -- with max_steps=algo.steps it stopped early and check_fit_complete still passed."""
    import tiny_policy
    from infalign.pipeline import fit
    from infalign.pipeline.settings import training_seed
    from infalign.training.algorithms import make_algorithm

    seen = {}
    monkeypatch.setattr(fit, "CTRLModule", lambda *a, seed, **kw: seen.update(seed=seed))
    monkeypatch.setattr(fit, "fit_steps", lambda trainers, module, loader, max_steps, steps, ckpt:
                        seen.update(max_steps=max_steps, steps=steps))
    algo = make_algorithm({"name": "ppo", "steps": 3})
    assert algo.optimizer_steps > 3
    fit.fit_policy(tiny_policy.world(), _cfg(), algo, None, None, None, None)
    assert seen == {"seed": training_seed(_cfg()), "max_steps": algo.optimizer_steps, "steps": 3}
    assert seen["seed"] != 3


def test_a_calibration_pool_of_tied_rewards_is_warned_about(monkeypatch, tmp_path, caplog):
    """Tied rewards make C_hat non-uniform: the theory and a kl_target's beta hold only roughly -- the run must say
    so."""
    from infalign.pipeline import fit

    monkeypatch.setattr(fit, "reference_pool", lambda *a, **k: ({"scores": {"reward": torch.ones(2, 4)}}, False))
    with caplog.at_level(logging.WARNING, logger="infalign.pipeline.fit"):
        fit.calibration_table(SimpleNamespace(train_prompts=["a", "b"], reward=None), _cfg(replica=0), None, tmp_path)
    assert "tie" in caplog.text


class _DenseLM(torch.nn.Module):
    """Bigram LM without a mask (finite logits), whose logits are scaled by a plain attribute (not a weight)."""

    def __init__(self) -> None:
        import tiny_policy

        super().__init__()
        self.table = torch.nn.Parameter(tiny_policy.reference_logits())
        self.scale = 1.0

    def forward(self, input_ids, **_):
        return SimpleNamespace(logits=self.table[input_ids] * self.scale, past_key_values=None)


def test_a_diverged_policy_is_refused_by_its_weights_or_by_its_logits():
    """A NaN weight that the probe prompts never read, and NaN logits from finite weights, are each refused
    (FloatingPointError) before the policy is cached or evaluated."""
    import tiny_policy
    from infalign.pipeline.fit import check_trained_policy

    world = SimpleNamespace(policy=_DenseLM(), tokenizer=tiny_policy.tokenizer(), train_prompts=["x1", "x2"])
    check_trained_policy(world)  # healthy
    with torch.no_grad():
        world.policy.table[tiny_policy.ID["b3"], 0] = float("nan")  # a row the probe (x1, x2) never reads
    with pytest.raises(FloatingPointError, match="non-finite weights"):
        check_trained_policy(world)
    world.policy = _DenseLM()
    world.policy.scale = float("inf")  # 0 * inf: NaN logits from finite weights
    with pytest.raises(FloatingPointError, match="next-token logits"):
        check_trained_policy(world)


# ---------------------------------------------------------------- baselines.py


def _offline(monkeypatch, best_ended, worst_ended):
    from infalign.data.batches import SampledResponses
    from infalign.pipeline import baselines

    def resp(ended):
        return SampledResponses(ids=[[5, 1] if e else [5, 6] for e in ended], ended=list(ended),
                                texts=["t"] * len(ended))

    monkeypatch.setattr(baselines, "best_and_worst_of_n", lambda *a, **k: (resp(best_ended), resp(worst_ended)))
    seen = {}
    monkeypatch.setattr(baselines, "fit_steps", lambda trainers, module, loader, *a: seen.update(module=module,
                                                                                                  loader=loader))
    algo = SimpleNamespace(cfg=SimpleNamespace(n_samples=4, steps=2), name="ipo", optimizer_steps=2,
                           fit_module=lambda *a: (SimpleNamespace(), torch.utils.data.DataLoader(
                               list(range(4)), batch_size=2, shuffle=True, generator=torch.Generator().manual_seed(0))))
    world = SimpleNamespace(train_prompts=["p", "q", "r"], policy=torch.nn.Linear(1, 1), reference=None,
                            tokenizer=None)
    return baselines, algo, world, seen


def test_fit_offline_records_the_pairs_and_how_many_picks_were_cut(monkeypatch):
    """metrics.json's offline: {pairs, n, cut_best, cut_worst} -- pairs is one per prompt, cut counts the picks
    without a stop token."""
    baselines, algo, world, _ = _offline(monkeypatch, [True, False, True], [False, False, True])
    out = baselines.fit_offline(algo, world, OmegaConf.create({"max_new_tokens": 4}), SimpleNamespace(predict=None), 0)
    assert out == {"pairs": 3, "n": 4, "cut_best": 1, "cut_worst": 2}


def test_a_step_indexed_offline_fit_reads_its_batches_by_step(monkeypatch):
    """step_indexed (one process, plain trainer): the module reads StepBatches(loader)[global_step] and the loader
    only counts steps -- the exact resume of docs; without it a resume restarts the epoch's batches."""
    baselines, algo, world, seen = _offline(monkeypatch, [True] * 3, [True] * 3)
    baselines.fit_offline(algo, world, OmegaConf.create({"max_new_tokens": 4}), SimpleNamespace(predict=None), 0,
                          step_indexed=True)
    assert seen["module"].step_batches is not None and list(seen["loader"]) == [0, 1]


def test_an_offline_fit_limited_by_epochs_is_not_step_indexed():
    """trainer.max_epochs limits the real loader; step-indexed, it would limit range(steps) instead (another fit)."""
    from infalign.pipeline.baselines import offline_resumable

    assert offline_resumable({"strategy": "auto"})
    assert not offline_resumable({"max_epochs": 1})


# ---------------------------------------------------------------- toy_prompts.py


def test_a_small_toy_worlds_split_bound_is_six_standard_deviations_above_its_share():
    """Refusing fewer prompts than a small world has refuses configs that run (the bound is documented as 6 sd)."""
    from infalign.pipeline.toy_prompts import toy_split_bound

    assert toy_split_bound(100, 0.8) == 100  # 80 + 6 * 4 + 1 = 105, at most all 100
    assert toy_split_bound(1000, 0.1) == int(100 + 6 * (1000 * 0.1 * 0.9) ** 0.5) + 1  # 157


def test_the_toy_prompt_checks_accept_the_bound_itself_and_ignore_other_data_sources():
    """Exactly the documented bound is allowed; an HH / TL;DR run is not checked against the toy world's size;
    unusable prompt_len gives None (ToyWorld refuses it by name) rather than a capacity of 0."""
    from infalign.pipeline.toy_prompts import check_toy_prompt_counts, toy_prompt_capacity, toy_split_bound

    capacity = toy_prompt_capacity({})
    most = toy_split_bound(capacity, 0.8)
    check_toy_prompt_counts(OmegaConf.create({"source": "toy", "train_prompts": most, "eval_prompts": 2, "toy": {}}))
    check_toy_prompt_counts(OmegaConf.create({"source": "hh", "train_prompts": 10 * capacity, "eval_prompts": 2}))
    assert toy_prompt_capacity({"n_attributes": 4, "prompt_len": [5, 6]}) is None


def test_a_config_error_from_the_toy_world_reaches_the_user_as_it_is():
    """toy_prompts re-wraps only the search's ValueError: a ConfigError naming another key must not be renamed."""
    from infalign.errors import ConfigError
    from infalign.pipeline.toy_prompts import toy_prompts

    def prompts(split, n):
        raise ConfigError("data.toy.world.prompt_len", [9, 9], "at most n_attributes")

    with pytest.raises(ConfigError) as exc:
        toy_prompts(SimpleNamespace(prompts=prompts), OmegaConf.create({"train_prompts": 4, "eval_prompts": 2}))
    assert exc.value.key == "data.toy.world.prompt_len"


# ---------------------------------------------------------------- training/checkpoint.py


def test_a_checkpoint_is_written_beside_its_path_and_recorded_as_lightnings_save(tmp_path):
    """The save goes to a temp file renamed into place (a kill mid-save keeps the old last.ckpt) and Lightning's
    _last_global_step_saved is set (its skip-if-already-saved-at-this-step check reads it)."""
    from pathlib import Path

    from lightning.pytorch.strategies import SingleDeviceStrategy

    from infalign.training.checkpoint import RunCheckpoint

    cb = RunCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=2)
    written = []
    trainer = SimpleNamespace(strategy=SingleDeviceStrategy(device=torch.device("cpu")), is_global_zero=True,
                              global_step=7, loggers=[],
                              save_checkpoint=lambda path, weights_only: (written.append(path),
                                                                         Path(path).write_text("state")))
    target = tmp_path / "last.ckpt"
    cb._save_checkpoint(trainer, str(target))
    assert written and Path(written[0]) != target and target.read_text() == "state"
    assert cb._last_global_step_saved == 7


# ---------------------------------------------------------------- settings.py


def test_sampling_settings_allow_greedy_and_refuse_an_empty_nucleus():
    """temperature 0 is documented as greedy (allowed); top_p 0 keeps no token (a ConfigError naming the key)."""
    from infalign.errors import ConfigError
    from infalign.pipeline.settings import sampling_settings

    assert sampling_settings(OmegaConf.create({**GEN, "temperature": 0.0}))[0] == 0.0
    with pytest.raises(ConfigError, match="eval.top_p"):
        sampling_settings(OmegaConf.create({**GEN, "top_p": 0.0}))


# ---------------------------------------------------------------- record.py


def test_a_replicas_method_is_its_own_in_the_report():
    """replica r > 0 is the A/A control's second arm: grouped with replica 0 it would be averaged into the method."""
    from infalign.math.procedures import BestOfN
    from infalign.math.transforms import Identity
    from infalign.pipeline.record import method_info
    from infalign.training.algorithms import make_algorithm

    cfg = OmegaConf.create({"replica": 1, "calibration": {"scope": "prompt"}, "transform": {"name": "identity"},
                            "algo": {"name": "rloo"}})
    info = method_info(cfg, make_algorithm({"name": "rloo"}), Identity(), BestOfN(4))
    assert info["method"] == "identity[replica=1]"


def test_an_offline_baselines_trained_n_is_its_own_not_the_evaluated_n():
    """bon_sft(N=4) evaluated at bon8 was trained on 4 samples per prompt: trained_n is 4 (the report groups by it)."""
    from infalign.math.procedures import BestOfN
    from infalign.math.transforms import Identity
    from infalign.pipeline.record import method_info
    from infalign.training.algorithms import make_algorithm

    cfg = OmegaConf.create({"calibration": {"scope": "prompt"}, "transform": {"name": "identity"},
                            "algo": {"name": "bon_sft", "n_samples": 4}})
    info = method_info(cfg, make_algorithm({"name": "bon_sft", "n_samples": 4}), Identity(), BestOfN(8))
    assert info["trained_n"] == 4 and info["transform"] is None


def test_a_new_record_is_logged_again(tmp_path):
    """logged.json says which loggers took the dir's record: a new record must drop it, or W&B never gets it."""
    from infalign.pipeline.record import LOGGED, write_record
    from infalign.pipeline.run_record import RunRecord

    (tmp_path / LOGGED).write_text('["wandb"]')
    write_record(tmp_path, RunRecord(run_name="r"))
    assert not (tmp_path / LOGGED).exists()


# ---------------------------------------------------------------- policy_cache.py


def test_the_training_prompt_count_is_a_training_setting():
    """data.train_prompts changes the policy: check_finished_run / a kept finished record compare training_settings,
    which must hold it (the prompts' content key is only in the policy key and the resume file)."""
    from infalign.pipeline.policy_cache import training_settings

    cfg = OmegaConf.create({"algo": {"name": "rloo", "beta": 0.1}, "data": {"source": "toy", "train_prompts": 64,
                                                                             "eval_prompts": 8}})
    data = training_settings(cfg, None)["data"]
    assert data.get("train_prompts") == 64 and "eval_prompts" not in data


def test_an_offline_baselines_policy_key_ignores_the_transform():
    """bon_sft / ipo train on no transform: another transform in the experiment must hit the same cached policy."""
    from infalign.math.transforms import Identity, Log
    from infalign.pipeline.policy_cache import policy_key

    world = SimpleNamespace(reference_fingerprint="ref", reward_fingerprint="rm", train_prompts=["a", "b"],
                            reward_reads=lambda prompts: None)
    cfg = OmegaConf.create({"seed": 0, "algo": {"name": "bon_sft", "n_samples": 4}, "data": {"train_prompts": 2}})
    assert policy_key(cfg, world, None, Identity()) == policy_key(cfg, world, None, Log())


def test_a_new_record_removes_the_previous_records_policy_dir(tmp_path):
    """A continued run killed in evaluation had left the new weights' policy/ beside the old record (docstring)."""
    from infalign.pipeline.record import write_record
    from infalign.pipeline.run_record import RunRecord

    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "model.safetensors").write_text("old")
    write_record(tmp_path, RunRecord(run_name="r"))
    assert not (tmp_path / "policy").exists()


def test_a_record_without_a_tie_share_is_not_a_constant_reward():
    """Records written before tie_share keep their theory (constant_reward is False for them, as documented)."""
    from infalign.pipeline.run_record import constant_reward

    assert not constant_reward({"reward_model": {"std_cv": 0.3}})
    assert constant_reward({"reward_model": {"tie_share": 1.0}})


def test_calibration_draws_are_untruncated():
    """calibration.top_k would make C_hat rank against a truncated pi_ref (not uniform under RL's samples)."""
    from infalign.errors import ConfigError
    from infalign.pipeline.settings import calibration_sampler

    cfg = OmegaConf.create({"algo": {"temperature": 1.0, "max_new_tokens": 8},
                            "calibration": {**GEN, "top_k": 3}})
    with pytest.raises(ConfigError, match="calibration.top_k"):
        calibration_sampler(cfg)


def test_a_resume_on_other_transform_values_is_refused(tmp_path):
    """A custom transform's code is in no config or digest: its Phi(u) values are what stops a resume on another one."""
    from infalign.errors import ConfigError
    from infalign.pipeline.policy_cache import TRANSFORM_VALUES, check_resume

    settings = {"training": {"algo": {"name": "rloo"}}, TRANSFORM_VALUES: [0.0, 0.5, 1.0]}
    check_resume(tmp_path, settings, False, "last")
    assert check_resume(tmp_path, settings, True, "last") == {}
    with pytest.raises(ConfigError, match="transform"):
        check_resume(tmp_path, {**settings, TRANSFORM_VALUES: [0.0, 0.6, 1.0]}, True, "last")


def test_transform_values_match_only_to_rounding():
    """1e-9 relative: CPU rounding passes, a parameter edit (1e-6) does not; None only matches None; shapes must
    agree."""
    from infalign.pipeline.policy_cache import same_transform_values

    assert same_transform_values([1.0, 2.0], [1.0, 2.0 * (1 + 1e-12)])
    assert not same_transform_values([1.0, 2.0], [1.0, 2.0 * (1 + 1e-6)])
    assert not same_transform_values(None, [1.0]) and same_transform_values(None, None)
    assert not same_transform_values([1.0, 1.0], [1.0])


def test_a_record_with_unknown_fields_or_a_boolean_count_is_read_strictly():
    """A version >= 1 record with a field this schema lacks is not a record of this layout (RecordError); a JSON
    boolean is no prompt count."""
    from infalign.pipeline.run_record import CI, RecordError, RunRecord

    with pytest.raises(RecordError, match="unknown field"):
        RunRecord.from_json({"version": 1, "bogus": 1})
    assert CI.from_json({"mean": 0.5, "low": 0.4, "high": 0.6, "n_prompts": True}).n_prompts is None


class _MaskedLM(_DenseLM):
    """_DenseLM's logits plus a mask buffer (not a weight): ``-inf`` where a token is masked."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mask", torch.zeros_like(self.table))

    def forward(self, input_ids, **_):
        return SimpleNamespace(logits=self.table[input_ids] + self.mask[input_ids], past_key_values=None)


def test_a_masked_token_is_no_divergence_but_a_row_without_a_finite_logit_is():
    """check_trained_policy: a model that masks tokens with -inf logits is healthy (mutation round: any -inf was
    refused as "diverged"); +inf, or a row whose every logit is -inf, is not."""
    import tiny_policy
    from infalign.pipeline.fit import check_trained_policy

    world = SimpleNamespace(policy=_MaskedLM(), tokenizer=tiny_policy.tokenizer(), train_prompts=["x1", "x2"])
    world.policy.mask[:, 0] = float("-inf")  # token 0 masked after every token
    check_trained_policy(world)
    world.policy.mask[:, 1] = float("inf")
    with pytest.raises(FloatingPointError, match="next-token logits"):
        check_trained_policy(world)
    world.policy.mask[...] = float("-inf")
    with pytest.raises(FloatingPointError, match="next-token logits"):
        check_trained_policy(world)


def test_a_trainer_without_an_accelerator_key_keys_its_pools_by_the_device_lightning_picks(monkeypatch):
    """sampling_hardware: a predict factory without ``accelerator`` runs on Lightning's default, ``auto`` -- the
    GPU when there is one -- so its pools are keyed by that device (mutation round: it was read as the CPU, and a
    GPU-drawn pool was keyed as a CPU one)."""
    from infalign.infra import distributed

    monkeypatch.setattr(distributed.torch.cuda, "device_count", lambda: 1)
    factory = functools.partial(L.Trainer, precision="32-true")
    assert pools.sampling_hardware(factory) == ({"precision": "32-true", "accelerator": "cuda"},)
    assert pools.sampling_hardware(functools.partial(L.Trainer, accelerator="cpu", precision="32-true")) == ()
