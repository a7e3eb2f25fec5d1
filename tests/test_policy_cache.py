"""Trained policies cached by content: a second identical training is a load, never a retrain."""

import json

import pytest

from infalign.apps import train as train_app
from infalign.apps.config import settings_defaults
from infalign.pipeline import policy_cache
from infalign.pipeline.policy_cache import policy_key
from pipeline_helpers import compose_config, compose_train


class _World:
    reference_fingerprint, reward_fingerprint, train_prompts = "ref", "rm", ["a0 ->"]


def early(ckpt, cfg, beta=None):
    """check_resume_early as a run makes it: a key one side lacks stands for the run's default
    (apps/config.settings_defaults)."""
    policy_cache.check_resume_early(ckpt, cfg, beta, "last", settings_defaults(cfg))


def finished(run, cfg):
    """check_finished_run as a run makes it (:func:`early`)."""
    policy_cache.check_finished_run(run, cfg, settings_defaults(cfg))


@pytest.mark.slow
def test_key_ignores_evaluation_and_reads_training(tmp_path):
    base = compose_train(tmp_path, tmp_path)
    key = policy_key(base, _World(), 0.1)
    for same in (["eval.samples=8", "eval.ns=[1,2]"], ["procedure=won"], ["logger=csv"], ["kl_point=0"],
                 ["data.eval_prompts=7"], ["data.toy.progress_bar=false", "data.toy.num_threads=1"]):
        assert policy_key(compose_train(tmp_path, tmp_path, *same), _World(), 0.1) == key, same
    for other in (["algo.lr=0.001"], ["seed=3"], ["transform=identity"], ["calibration.K=8"],
                  ["data.train_prompts=9"], ["data.toy.seed=5"]):
        assert policy_key(compose_train(tmp_path, tmp_path, *other), _World(), 0.1) != key, other
    assert policy_key(base, _World(), 0.2) != key  # the effective beta
    # a transform that reads procedure.n (optimal) depends on N through its resolved config
    opt = [policy_key(compose_train(tmp_path, tmp_path, "transform=optimal", f"procedure.n={n}"), _World(), 0.1)
           for n in (2, 4)]
    assert opt[0] != opt[1]


def test_an_offline_baselines_key_leaves_out_what_it_never_reads(tmp_path):
    """BoN-SFT reads no beta, no transform and no calibration of a reward: an experiment's algo.beta,
    transform.t or calibration.K does not retrain it (a review found toy_bon and toy_won's bon_sft, one
    BoNSFTConfig, under two keys); what it reads -- its own settings, how its samples are drawn -- still
    moves the key, and IPO's beta (its tau) is read."""
    def key(*overrides):
        return policy_key(compose_train(tmp_path, tmp_path, *overrides), _World(), None)

    base = key("method=bon_sft")
    for same in (["algo.beta=0.3"], ["transform=exp", "transform.t=-4"], ["calibration.K=8"],
                 ["calibration.scope=pooled"], ["experiment=toy_won", "procedure=bon"]):
        assert key("method=bon_sft", *same) == base, same
    for other in (["algo.lr=0.001"], ["algo.steps=7"], ["calibration.batch_size=7"], ["seed=3"]):
        assert key("method=bon_sft", *other) != base, other
    assert key("method=ipo", "algo.beta=0.3") != key("method=ipo", "algo.beta=0.2")
    assert key("method=ipo", "transform.t=8") == key("method=ipo")


def test_a_settings_file_that_still_holds_the_evaluation_and_runtime_data_keys_resumes(tmp_path):
    """run_settings.json written before data.eval_prompts and data.toy.progress_bar / num_threads left
    the training settings holds them (at depth 3 and 4 of the file): its checkpoint still resumes --
    early and full check -- whatever their values; a training key that differs is still refused."""
    import json

    from infalign.errors import ConfigError

    class World(_World):
        stats = {}

    cfg = compose_train(tmp_path, tmp_path)
    settings = policy_cache.resume_settings(cfg, World(), 0.1)
    data = settings["training"]["data"]
    assert "eval_prompts" not in data and "progress_bar" not in data["toy"]
    old = json.loads(json.dumps(settings))
    old["training"]["data"]["eval_prompts"] = 999
    old["training"]["data"]["toy"].update(progress_bar=False, num_threads=7)
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    (ckpt / policy_cache.RESUME_FILE).write_text(json.dumps(old))
    policy_cache.check_resume_early(ckpt, cfg, 0.1, "last")
    policy_cache.check_resume(ckpt, settings, True, "last")
    other = compose_train(tmp_path, tmp_path, "algo.lr=0.5")
    with pytest.raises(ConfigError, match=r"algo\.lr"):
        policy_cache.check_resume_early(ckpt, other, 0.1, "last")


@pytest.mark.parametrize("extra, key", [
    (["replica=2"], "training.replica"),
    (["+trainer.gradient_clip_val=0.001"], "training.trainer.gradient_clip_val"),
    (["+trainer.accumulate_grad_batches=4"], "training.trainer.accumulate_grad_batches"),
    (["+callbacks.swa._target_=lightning.pytorch.callbacks.StochasticWeightAveraging", "+callbacks.swa.swa_lrs=0.5"],
     "training.callbacks.swa"),
])
def test_a_setting_only_one_side_records_matches_only_its_default(tmp_path, extra, key):
    """Review finding: a key only one side held (replica 0 and unset callbacks are left out of the training
    settings, a ``+trainer.*`` key exists only when given) was logged and not compared, so a replica-0
    checkpoint resumed as replica 2 and gradient clipping, accumulation or a callback could join mid-run.
    Such a key now matches only its default -- a settings file written before replica and callbacks were
    stored (without them) still resumes as itself and with a trainer key set to Lightning's default -- in
    both directions, and a finished run is not re-run as another configuration's either."""
    import json

    from omegaconf import OmegaConf

    from infalign.errors import ConfigError
    from infalign.infra.cache import atomic_write_json

    base = ["algo=bon_sft", "algo.steps=4"]
    cfg, other = compose_train(tmp_path, tmp_path, *base), compose_train(tmp_path, tmp_path, *base, *extra)
    ckpt = tmp_path / "checkpoints"
    old = policy_cache._resume_training(cfg, None)
    del old["replica"], old["callbacks"]  # as the settings file was written before they were stored
    (ckpt.mkdir(), (ckpt / policy_cache.RESUME_FILE).write_text(json.dumps({"training": old})))
    early(ckpt, cfg)
    early(ckpt, compose_train(tmp_path, tmp_path, *base, "+trainer.accumulate_grad_batches=1",
                              "+trainer.gradient_clip_val=null"))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        early(ckpt, other)
    atomic_write_json(ckpt / policy_cache.RESUME_FILE, {"training": policy_cache._resume_training(other, None)})
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):  # the other way round
        early(ckpt, cfg)
    run = tmp_path / "run"
    atomic_write_json(run / "metrics.json", {"version": 1, "status": "finished", "eval": {"judges": {}},
                                             "config": OmegaConf.to_container(cfg, resolve=True)})
    finished(run, cfg)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        finished(run, other)


def test_a_setting_older_files_lack_stands_for_its_value_in_the_runs_config_group_entries(tmp_path):
    """Review finding: a key only one side held had a default only for replica, callbacks, trainer.* and
    algo.*; any other key a settings file or record written before it existed lacks -- reward.prompt_format
    (added to conf/reward/hf.yaml), policy.train_dtype -- was a difference no override fixed, so every HF
    checkpoint and finished run written before it was refused. Such a key stands for its value in the config
    composed from the run's config-group choices without value overrides (docs/architecture.md §4): the
    entry's ``full``, what the HH experiments' reward model read before -- not the experiment's
    ``last_user_turn``; a key no config holds is still a difference."""
    import json

    from omegaconf import OmegaConf

    from infalign.errors import ConfigError

    def hf(*extra):
        return compose_train(tmp_path, tmp_path, "experiment=hh_helpful_bon", *extra, toy=False)

    old = policy_cache._resume_training(hf("reward.prompt_format=full"), None)
    del old["reward"]["prompt_format"], old["policy"]["train_dtype"]
    ckpt = tmp_path / "checkpoints"
    (ckpt.mkdir(), (ckpt / policy_cache.RESUME_FILE).write_text(json.dumps({"training": old})))
    early(ckpt, hf("reward.prompt_format=full"))
    for other, key in ((hf(), "reward.prompt_format"), (hf("reward.prompt_format=full", "policy.train_dtype=bfloat16"),
                                                        "policy.train_dtype"),
                       (hf("reward.prompt_format=full", "+reward.new_setting=1"), "reward.new_setting")):
        with pytest.raises(ConfigError, match=rf"training\.{key}"):
            early(ckpt, other)
    config = OmegaConf.to_container(hf("reward.prompt_format=full"), resolve=True)
    del config["reward"]["prompt_format"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"version": 1, "status": "finished", "config": config}))
    finished(run, hf("reward.prompt_format=full"))
    with pytest.raises(ConfigError, match=r"training\.reward\.prompt_format"):
        finished(run, hf())


def test_the_default_of_a_setting_is_the_entry_the_run_chose(tmp_path):
    """A one-sided key's default is its value in the run's own group entry (Hydra's runtime choices: the
    app's, or a config composed with its hydra node): reward.max_length is 1024 in conf/reward/hf.yaml and
    null in reward/toy.yaml. Without the choices (a config composed without its hydra node) the key's group
    ranges over its entries, which disagree here: no default, a difference."""
    import json

    from infalign.apps.config import config_choices
    from infalign.errors import ConfigError
    from pipeline_helpers import TINY_RUN, compose_config

    overrides = [*TINY_RUN, "experiment=hh_helpful_bon"]
    chosen = compose_config("train", *overrides, hydra=True)
    assert config_choices(chosen)["reward"] == "hf"
    old = policy_cache._resume_training(chosen, None)
    del old["reward"]["max_length"]
    ckpt = tmp_path / "checkpoints"
    (ckpt.mkdir(), (ckpt / policy_cache.RESUME_FILE).write_text(json.dumps({"training": old})))
    early(ckpt, chosen)
    unknown = compose_config("train", *overrides)
    assert config_choices(unknown) is None
    with pytest.raises(ConfigError, match=r"training\.reward\.max_length"):
        early(ckpt, unknown)


def test_an_evaluation_setting_an_older_record_lacks_stands_for_its_default(tmp_path):
    """Review finding: the finished-run skip compared the evaluation settings with no defaults, so a record
    written before eval.top_p existed made every ``last_or_new`` re-run a ConfigError no override fixed. A
    setting the record lacks stands for its default, as in a resume (docs/architecture.md §4): the record
    is kept at eval.top_p=1.0 (train.yaml's ${algo.top_p}), refused at another value."""
    import json

    from omegaconf import OmegaConf

    from infalign.errors import ConfigError

    cfg = compose_train(tmp_path, tmp_path)
    config = OmegaConf.to_container(cfg, resolve=True)
    del config["eval"]["top_p"]
    record = {"version": 4, "status": "finished", "run_name": "done", "eval": {"judges": {"gold": {}}},
              "code": policy_cache.run_code(), "config": config}
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps(record))
    assert policy_cache.finished_record_to_keep(run, cfg, "last_or_new", settings_defaults(cfg))["run_name"] == "done"
    other = compose_train(tmp_path, tmp_path, "eval.top_p=0.9")
    with pytest.raises(ConfigError, match=r"evaluated with other values of \['eval\.top_p'\]"):
        policy_cache.finished_record_to_keep(run, other, "last_or_new", settings_defaults(other))


def test_an_infinite_setting_resumes_and_reruns_as_itself(tmp_path):
    """A setting of inf (``algo.grad_clip=inf``: no clipping) is
    written as null (strict JSON, infra/cache.json_safe): the stored settings, the checkpoint's
    settings file and a finished run's recorded config must still match this run's -- early and full
    resume check, and the last_or_new check of a finished run -- while another value is refused."""
    from infalign.errors import ConfigError
    from infalign.infra.cache import atomic_write_json

    class World(_World):
        stats = {}

    from omegaconf import OmegaConf

    cfg = compose_train(tmp_path, tmp_path, "algo.grad_clip=inf")
    ckpt = tmp_path / "checkpoints"
    settings = policy_cache.resume_settings(cfg, World(), 0.1)
    policy_cache.check_resume(ckpt, settings, False, "last")  # a fresh start writes the file
    assert "Infinity" not in (ckpt / policy_cache.RESUME_FILE).read_text()
    policy_cache.check_resume_early(ckpt, cfg, 0.1, "last")
    policy_cache.check_resume(ckpt, policy_cache.resume_settings(cfg, World(), 0.1), True, "last")
    run = tmp_path / "run"
    atomic_write_json(run / "metrics.json", {"version": 1, "status": "finished", "eval": {"judges": {}},
                                             "config": OmegaConf.to_container(cfg, resolve=True)})
    policy_cache.check_finished_run(run, cfg)
    other = compose_train(tmp_path, tmp_path, "algo.grad_clip=1.0")
    with pytest.raises(ConfigError, match=r"algo\.grad_clip"):
        policy_cache.check_resume_early(ckpt, other, 0.1, "last")
    with pytest.raises(ConfigError, match=r"algo\.grad_clip"):
        policy_cache.check_finished_run(run, other)


def test_equal_numbers_are_one_policy_but_a_fraction_of_batches_is_not_a_count(tmp_path):
    """Review finding: ``transform.t=4`` (an int) and the config file's ``t: 4.0`` trained and cached the
    same policy twice (infra/cache.content_key now keys numbers by value). Lightning reads an int
    ``limit_train_batches`` as a count of batches and a float as a fraction of the epoch: those stay apart."""
    base = policy_key(compose_train(tmp_path, tmp_path, "transform=exp", "transform.t=4.0"), _World(), 0.1)
    assert policy_key(compose_train(tmp_path, tmp_path, "transform=exp", "transform.t=4"), _World(), 0.1) == base
    assert policy_key(compose_train(tmp_path, tmp_path, "transform=exp", "transform.t=4.5"), _World(), 0.1) != base
    count, fraction = (policy_key(compose_train(tmp_path, tmp_path, f"+trainer.limit_train_batches={v}"), _World(), 0.1)
                       for v in ("1", "1.0"))
    assert count != fraction


def test_a_checkpoint_trained_on_a_count_of_batches_does_not_resume_on_a_fraction(tmp_path):
    """Review finding: the policy key told ``limit_train_batches=1`` (one batch) from ``1.0`` (the whole
    epoch), but the resume and finished-run checks compared them with ``==`` (``1 == 1.0``), so a checkpoint
    trained on one batch per epoch resumed training on all of them. Every comparison now reads such a
    trainer argument as the key does -- in a settings file written before the rule too -- and a one-sided
    one is compared with Lightning's default read the same way (``overfit_batches``: ``0.0``)."""
    import json

    from omegaconf import OmegaConf

    from infalign.errors import ConfigError
    from infalign.infra.cache import atomic_write_json

    base = ["algo=bon_sft", "algo.steps=4"]
    count, fraction = (compose_train(tmp_path, tmp_path, *base, f"+trainer.limit_train_batches={v}")
                       for v in ("1", "1.0"))
    ckpt = tmp_path / "checkpoints"
    stored = policy_cache._resume_training(count, None)
    atomic_write_json(ckpt / policy_cache.RESUME_FILE, {"training": stored})
    early(ckpt, count)
    with pytest.raises(ConfigError, match=r"training\.trainer\.limit_train_batches"):
        early(ckpt, fraction)
    old = policy_cache._resume_training(fraction, None)  # as written before the rule: a plain 1.0
    old["trainer"]["limit_train_batches"] = 1.0
    (ckpt / policy_cache.RESUME_FILE).write_text(json.dumps({"training": old}))
    early(ckpt, fraction)
    with pytest.raises(ConfigError, match=r"training\.trainer\.limit_train_batches"):
        early(ckpt, count)
    run = tmp_path / "run"
    atomic_write_json(run / "metrics.json", {"version": 1, "status": "finished",
                                             "config": OmegaConf.to_container(count, resolve=True)})
    finished(run, count)
    with pytest.raises(ConfigError, match=r"training\.trainer\.limit_train_batches"):
        finished(run, fraction)
    atomic_write_json(ckpt / policy_cache.RESUME_FILE, {"training": policy_cache._resume_training(
        compose_train(tmp_path, tmp_path, *base), None)})
    early(ckpt, compose_train(tmp_path, tmp_path, *base, "+trainer.overfit_batches=0.0"))


def test_where_a_model_is_read_from_is_keyed_by_its_contents_not_its_path(tmp_path):
    """Review finding: the policy key held ``policy.name_or_path``, ``reward.name_or_path`` and
    ``reward.train.accelerator``, whose effect the key already holds as the world's fingerprints (a local
    dir's files, a hub model's commit; a Bradley-Terry model's files), so a model dir moved or copied
    elsewhere retrained an identical policy. The same fingerprints are one key whatever the paths; other
    fingerprints at the same paths are another."""
    from types import SimpleNamespace

    from infalign.pipeline.world import fingerprint_dir

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"same weights")
    same = fingerprint_dir(tmp_path / "a")
    assert fingerprint_dir(tmp_path / "b") == same

    def world(fingerprint):
        return SimpleNamespace(reference_fingerprint=fingerprint, reward_fingerprint="rm", train_prompts=["a0 ->"])

    def key(path, fingerprint, *extra):
        return policy_key(compose_train(tmp_path, tmp_path, f"policy.name_or_path={path}",
                                        f"reward.name_or_path={path}", *extra), world(fingerprint), 0.1)

    base = key(tmp_path / "a", same)
    assert key(tmp_path / "b", same, "+reward.train.accelerator=cpu") == base
    assert key(tmp_path / "a", "other weights") != base


def test_reward_pad_token_is_keyed_by_the_reward_fingerprint_not_by_its_setting(tmp_path):
    """reward.pad_token (new in conf/reward/hf.yaml, null by default) changes where the score is read, which
    the reward fingerprint holds (its input format says "pad == eos" exactly when the rows are padded with the
    eos): keyed as a setting too, its null retired every real-data policy cached before it existed (a review
    of the change). A real-data config keys as it did without the key; another fingerprint is another key."""
    from types import SimpleNamespace

    from omegaconf import open_dict

    def world(rm):
        return SimpleNamespace(reference_fingerprint="ref", reward_fingerprint=rm, train_prompts=["p"])

    cfg = compose_train(tmp_path, tmp_path, "experiment=hh_helpful_bon", toy=False)
    assert "pad_token" in cfg.reward and cfg.reward.pad_token is None
    with_key = policy_key(cfg, world("rm"), 0.1)
    with open_dict(cfg):
        del cfg.reward["pad_token"]
    assert policy_key(cfg, world("rm"), 0.1) == with_key
    assert policy_key(cfg, world("rm read at eos"), 0.1) != with_key


def test_the_policy_key_holds_the_device_kind_auto_resolves_to(tmp_path, monkeypatch):
    """Review finding: trainer.accelerator=auto was keyed as written, so a policy trained under auto on a
    GPU node (its rollouts drawn by CUDA generators: other samples) was served to a CPU node, while the
    pools resolve auto. Now auto is keyed as the kind it runs on: the same key as cpu on a CPU node,
    another where a GPU is visible; the default CPU runs keep their keys."""
    import torch

    def key(*overrides):
        return policy_key(compose_train(tmp_path, tmp_path, *overrides), _World(), None)

    cpu = key()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert key("trainer.accelerator=auto") == cpu
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert key("trainer.accelerator=auto") != cpu and key() == cpu
    assert key("trainer.accelerator=auto") == key("trainer.accelerator=gpu")
    # a trainer without the key runs Lightning's default, auto: keyed as that (was: as the CPU on a GPU node)
    assert key("~trainer.accelerator") == key("trainer.accelerator=auto") != cpu
    # review finding (caches): Lightning's precision aliases were keyed apart (a needless retraining)
    assert key("trainer.precision=32") == key("trainer.precision=32-true") == key()
    assert key("trainer.precision=bf16") == key("trainer.precision=bf16-mixed") != key()
    assert policy_cache.training_settings(compose_train(tmp_path, tmp_path), None)["trainer"]["accelerator"] == "cpu"


def test_key_changes_with_the_training_code(tmp_path, monkeypatch):
    cfg = compose_train(tmp_path, tmp_path)
    key = policy_key(cfg, _World(), 0.1)
    monkeypatch.setattr(policy_cache, "TRAINING_CODE", (*policy_cache.TRAINING_CODE[:-1], "infalign.math.theory"))
    assert policy_key(cfg, _World(), 0.1) != key


def test_key_covers_every_registered_algorithms_code(tmp_path, monkeypatch):
    """Adding an algorithm needs no line in TRAINING_CODE: the module of every registered class is
    in the digest (here a stand-in class whose module is another file)."""
    from infalign.training.algorithms import base

    cfg = compose_train(tmp_path, tmp_path)
    key = policy_key(cfg, _World(), 0.1)
    stand_in = type("StandIn", (), {"__module__": "infalign.math.theory"})
    monkeypatch.setitem(base.ALGORITHMS, "stand_in", stand_in)
    assert policy_key(cfg, _World(), 0.1) != key


def test_key_of_an_algorithm_without_beta(tmp_path):
    """bon_sft has no beta (``Algorithm.beta`` is None): the key is its config as composed."""
    cfg = compose_train(tmp_path, tmp_path, "algo=bon_sft")
    key = policy_key(cfg, _World(), None)
    assert key == policy_key(cfg, _World(), None)
    assert key != policy_key(compose_train(tmp_path, tmp_path, "algo=bon_sft", "algo.steps=7"), _World(), None)


def test_code_digest_ignores_comments_and_docstrings_not_code():
    src = 'def f(x):\n    """Doc."""\n    return x + 1\n'
    same = '# a comment\ndef f(x):\n    """Other doc,\n    two lines."""\n\n    return x + 1  # why\n'
    changed = 'def f(x):\n    """Doc."""\n    return x - 1\n'
    fp = policy_cache._code_fingerprint
    assert fp(src) == fp(same)
    assert fp(src) != fp(changed)


def test_a_missing_training_module_is_an_error(monkeypatch):
    monkeypatch.setattr(policy_cache, "TRAINING_CODE", ("infalign.no_such_module",))
    with pytest.raises(ModuleNotFoundError, match="TRAINING_CODE"):
        policy_cache.code_digest()


@pytest.mark.slow
def test_second_training_is_a_load_with_identical_results(tmp_path, tiny_cache):
    cache = tiny_cache
    first = train_app.run(compose_train(cache, tmp_path / "a", "transform=identity"))
    assert first["cache"]["policy_hit"] is False
    # same training, other evaluation: the policy is loaded, and equals a fresh training's policy
    second = train_app.run(compose_train(cache, tmp_path / "b", "transform=identity", "eval.ns=[1,2]"))
    fresh = train_app.run(compose_train(cache, tmp_path / "c", "transform=identity", "eval.ns=[1,2]",
                                        "policy_cache=false"))
    assert second["cache"]["policy_hit"] is True and fresh["cache"]["policy_hit"] is None
    # the evaluation pool of the cached policy (other N, same pool settings) is loaded too, and its
    # evaluation equals the one from a freshly trained policy's freshly drawn pool
    assert first["cache"]["eval_policy_hit"] is False and second["cache"]["eval_policy_hit"] is True
    assert fresh["cache"]["eval_policy_hit"] is None
    assert second["eval"]["judges"] == fresh["eval"]["judges"]
    assert second["eval"]["per_prompt"] == fresh["eval"]["per_prompt"]
    assert second["eval"]["samples"] == fresh["eval"]["samples"] and second["eval"]["samples"]
    assert second["timings"]["train_s"] < first["timings"]["train_s"]
    third = train_app.run(compose_train(cache, tmp_path / "d", "transform=identity", "algo.lr=0.001"))
    assert third["cache"]["policy_hit"] is False


def test_entries_load_by_key_and_a_misplaced_file_is_retrained(tmp_path):
    import shutil

    import torch

    from infalign.pipeline.policy_cache import train_or_load

    policy, calls = torch.nn.Linear(2, 1), []

    def train(value):
        def go():
            calls.append(value)
            torch.nn.init.constant_(policy.weight, value)
            return {"trained_at": value}
        return go

    assert train_or_load(policy, "aaaa", tmp_path, train(1.0), "run-a") == (False, {"trained_at": 1.0})
    torch.nn.init.zeros_(policy.weight)
    # loaded, not retrained: with what its training reported
    assert train_or_load(policy, "aaaa", tmp_path, train(9.0), "run-b") == (True, {"trained_at": 1.0})
    assert calls == [1.0] and torch.all(policy.weight == 1.0)
    shutil.copy(tmp_path / "policies" / "aaaa.pt", tmp_path / "policies" / "bbbb.pt")  # wrong name
    assert train_or_load(policy, "bbbb", tmp_path, train(2.0), "run-c")[0] is False
    assert calls == [1.0, 2.0] and torch.all(policy.weight == 2.0)


def _default(*overrides: str):
    from hydra import compose, initialize_config_dir

    from infalign.apps.config import CONFIG_DIR

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=["paths.run_dir=/nonexistent/run", *overrides])


def test_default_config_key_inputs_are_pinned():
    """What the default config contributes to the key, pinned (the hash itself also covers the code
    digest, which any edit of a training module changes): the same top-level keys and the same five
    trainer settings as before the trainer / callbacks / logger groups were instantiated by Hydra --
    so cached policies stay valid across that refactor and any key added to those groups."""
    settings = policy_cache.training_settings(_default(), 0.2)
    assert sorted(settings) == ["algo", "calibration", "data", "deterministic", "policy", "reward", "seed",
                                "trainer", "transform"]
    assert settings["trainer"] == {"accelerator": "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto",
                                   "precision": "32-true"}
    assert settings["algo"]["beta"] == 0.2 and settings["seed"] == 0 and settings["deterministic"] is False
    # replica 0 (the default) is not in the key; an independent re-training is
    assert policy_cache.training_settings(_default("replica=1"), 0.2)["replica"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    ["+trainer.benchmark=false", "trainer.enable_model_summary=true", "trainer.progress_bar=none"],
    ["callbacks.model_checkpoint.save_top_k=1", "save_optimizer=false", "checkpoint_every=3"],
    ["callbacks.progress_bar=null", "callbacks.model_checkpoint=null"],
    ["run_name=mine", "tags=[a,b]", "logger=csv", "trainer._target_=lightning.pytorch.Trainer"],
])
def test_trainer_callbacks_and_logger_keys_that_cannot_change_weights_keep_the_key(overrides):
    assert policy_cache.training_settings(_default(*overrides), 0.2) == policy_cache.training_settings(_default(), 0.2)


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    ["trainer.precision=bf16-mixed"], ["trainer.devices=2"], ["trainer.strategy=ddp"],
    ["+callbacks.swa._target_=lightning.pytorch.callbacks.StochasticWeightAveraging", "+callbacks.swa.swa_lrs=0.01"],
    # keys a user adds that change the offline baselines (Lightning's automatic optimisation)
    ["+trainer.gradient_clip_val=1.0"], ["+trainer.accumulate_grad_batches=2"], ["+trainer.limit_train_batches=3"],
])
def test_trainer_settings_and_callbacks_that_can_change_weights_change_the_key(overrides):
    assert policy_cache.training_settings(_default(*overrides), 0.2) != policy_cache.training_settings(_default(), 0.2)


def test_code_digest_follows_an_edited_file_and_parses_each_version_once(tmp_path, monkeypatch):
    """The digest reads the files every time (an edit made while a process runs counts) and parses
    each file's text once per process (``_code_fingerprint`` is memoised on the text)."""
    import ast

    probe = tmp_path / "infalign_digest_probe.py"
    probe.write_text("def f():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(policy_cache, "TRAINING_CODE", (*policy_cache.TRAINING_CODE, "infalign_digest_probe"))
    first = policy_cache.code_digest()
    parses = []
    real_parse = ast.parse
    monkeypatch.setattr(ast, "parse", lambda *a, **k: (parses.append(1), real_parse(*a, **k))[1])
    assert policy_cache.code_digest() == first and parses == []  # nothing changed: nothing parsed again
    # a text no other test has digested (the memo is per process and keyed by text: another test's
    # identical probe left this one nothing to parse when both ran in one process)
    probe.write_text(f"def f():\n    return 2  # {tmp_path.name}\n")
    assert policy_cache.code_digest() != first and len(parses) == 1  # the edited file, only
    probe.write_text('def f():\n    """A docstring."""\n    return 1  # and a comment\n')
    assert policy_cache.code_digest() == first


# Modules a training module may import without being part of the key: errors and infrastructure
# (messages, caches, process groups), package re-exports, the Lightning trainer factory (keyed by
# its settings, all but NOT_TRAINING_TRAINER_KEYS), the algorithm registry (its classes' modules are digested) and the
# theory (beta from algo.kl_target enters the key as the beta's value; the optimal transform's table, which
# it computes when the config is instantiated, as the transform's values: transform_fingerprint).
NOT_TRAINING_CODE = ("infalign.errors", "infalign.infra", "infalign.math", "infalign.models",
                     "infalign.pipeline.trainer", "infalign.training.algorithms", "infalign.math.theory")


# What the pool code imports that cannot change a drawn pool: errors, caches and threads, the package
# re-exports and the Lightning trainer factory (pools run on one device in float32 whatever it says).
NOT_POOL_CODE = ("infalign.errors", "infalign.infra", "infalign.models", "infalign.pipeline.trainer")


def unkeyed_imports(scanned: set[str], irrelevant: tuple[str, ...]) -> set[tuple[str, str]]:
    """``(imported, importer)`` for every infalign module a ``scanned`` module imports that is neither
    scanned nor declared ``irrelevant`` (``infalign.infra.*`` never counts). ``from pkg import name``
    counts as an import of ``pkg.name`` when that is a module."""
    import ast
    import importlib.util

    def is_module(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            return False

    missing = set()
    for name in sorted(scanned):
        tree = ast.parse(open(importlib.util.find_spec(name).origin).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                subs = [f"{node.module}.{a.name}" for a in node.names] if node.module.startswith("infalign") else []
                imported = [node.module] + [m for m in subs if is_module(m)]
            elif isinstance(node, ast.Import):
                imported = [a.name for a in node.names]
            else:
                continue
            missing |= {(m, name) for m in imported if m.startswith("infalign") and m not in scanned
                        and m not in irrelevant and not m.startswith("infalign.infra.")}
    return missing


def test_every_infalign_module_training_code_imports_is_keyed_or_declared_irrelevant():
    """A training module importing an unlisted one (the code the sampler, pools or beta search
    run) would let a cached policy outlive a change to that code. The registered algorithms'
    modules are scanned too (code_digest adds them to the key)."""
    from infalign.pipeline.policy_cache import TRAINING_CODE
    from infalign.training.algorithms import ALGORITHMS

    scanned = set(TRAINING_CODE) | {cls.__module__ for cls in ALGORITHMS.values()}
    missing = unkeyed_imports(scanned, NOT_TRAINING_CODE)
    assert not missing, f"imported by training code but not in TRAINING_CODE: {sorted(missing)}"


def test_every_infalign_module_pool_code_imports_is_keyed_or_declared_irrelevant():
    """The same for the pools' key (POOL_CODE): reward-model input encoding lives in models/builders.py,
    which the pool key once left out -- a fix there kept serving the pools scored the old way."""
    from infalign.pipeline.pools import POOL_CODE

    missing = unkeyed_imports(set(POOL_CODE), NOT_POOL_CODE)
    assert not missing, f"imported by pool code but not in POOL_CODE: {sorted(missing)}"


def test_the_transform_is_keyed_by_its_values(tmp_path):
    """Same config, different Phi tables (what a change to the optimal-transform solver would give):
    different policies. Same values from a fresh instance: the same key. raw and offline runs (no
    transform) are keyed by the config alone."""
    import numpy as np

    from infalign.math.transforms import Exp, Raw, Tabulated
    from infalign.pipeline.policy_cache import transform_fingerprint

    cfg = compose_train(tmp_path, tmp_path, "transform=optimal")
    z = np.linspace(-10, 10, 101)
    a, b = Tabulated(z, np.tanh(z), "optimal"), Tabulated(z, np.tanh(z) + 1e-9 * z, "optimal")
    key = policy_key(cfg, _World(), 0.1, a)
    assert policy_key(cfg, _World(), 0.1, Tabulated(z, np.tanh(z), "optimal")) == key
    assert policy_key(cfg, _World(), 0.1, b) != key
    assert transform_fingerprint(Exp(t=4.0)) != transform_fingerprint(Exp(t=4.0 + 1e-12))
    assert transform_fingerprint(Raw()) is None and transform_fingerprint(None) is None
    torch_only = lambda u: u.clamp(0, 1) ** 2  # noqa: E731 - a user's callable that needs a tensor
    from infalign.math.transforms import as_transform

    assert transform_fingerprint(as_transform(torch_only)) is not None


# ---------------------------------------------------------------- guards found by mutation testing


def test_policy_key_covers_each_part_of_the_world(monkeypatch):
    """Same config, another reference / reward model / training prompts (an edited data file keeps
    data.train_file's path): another trained policy, never a cache hit."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from infalign.pipeline.policy_cache import policy_key

    def world(ref="ref", rm="rm", prompts=("a0 ->",)):
        return SimpleNamespace(reference_fingerprint=ref, reward_fingerprint=rm, train_prompts=list(prompts))

    from infalign.pipeline import policy_cache

    monkeypatch.setattr(policy_cache, "code_digest", lambda: "code")  # (keyed too; tested elsewhere)
    cfg = OmegaConf.create({"algo": {"name": "ctrl", "lr": 1e-3}, "seed": 0})
    key = policy_key(cfg, world(), 0.1)
    assert policy_key(cfg, world(), 0.1) == key
    for other in (world(ref="ref2"), world(rm="rm2"), world(prompts=("b1 ->",)), world(prompts=("a0 ->", "a1 ->"))):
        assert policy_key(cfg, other, 0.1) != key, vars(other)


def test_a_resume_of_an_algorithm_whose_schedule_reads_steps_is_refused_with_other_steps(tmp_path):
    """bon_sft's learning rate decays over algo.steps (resume_may_extend false): a resume asking for more
    steps is refused before compute; an algorithm that may extend resumes with more steps."""
    from omegaconf import OmegaConf

    from infalign.errors import ConfigError
    from infalign.infra.cache import atomic_write_json
    from infalign.pipeline.policy_cache import RESUME_FILE, _resume_training, check_resume_early
    from infalign.training.algorithms import ALGORITHMS

    def cfg(name, steps):
        return OmegaConf.create({"algo": {"name": name, "steps": steps, "lr": 1e-3}, "seed": 0})

    extendable = next(name for name, cls in ALGORITHMS.items() if cls.resume_may_extend)
    for name, refused in (("bon_sft", True), (extendable, False)):
        ckpt = tmp_path / name
        atomic_write_json(ckpt / RESUME_FILE, {"training": _resume_training(cfg(name, 10), None)})
        check_resume_early(ckpt, cfg(name, 10), None, "last")
        if refused:
            with pytest.raises(ConfigError, match="algo.steps"):
                check_resume_early(ckpt, cfg(name, 20), None, "last")
        else:
            check_resume_early(ckpt, cfg(name, 20), None, "last")


def test_a_resume_on_another_reference_or_reward_model_is_refused(tmp_path):
    """The checkpoint's settings file records the world's model fingerprints: a resume after the
    reference or reward model changed (same config, same paths) continues another model's policy."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from infalign.errors import ConfigError
    from infalign.pipeline.policy_cache import check_resume, resume_settings

    cfg = OmegaConf.create({"algo": {"name": "ctrl", "lr": 1e-3}, "seed": 0})
    world = lambda ref, rm: SimpleNamespace(reference_fingerprint=ref, reward_fingerprint=rm, stats={},  # noqa: E731
                                            train_prompts=["p"])
    check_resume(tmp_path, resume_settings(cfg, world("ref", "rm"), 0.1), False, "last")
    check_resume(tmp_path, resume_settings(cfg, world("ref", "rm"), 0.1), True, "last")
    for other in (world("ref2", "rm"), world("ref", "rm2")):
        with pytest.raises(ConfigError, match="world"):
            check_resume(tmp_path, resume_settings(cfg, other, 0.1), True, "last")
    # other training prompts (a data file edited at the same path): refused, naming them; a settings file from
    # before the prompts were kept resumes (nothing to compare them with)
    other_prompts = SimpleNamespace(reference_fingerprint="ref", reward_fingerprint="rm", stats={}, train_prompts=["q"])
    with pytest.raises(ConfigError, match=r"records other training prompts.*in a new run dir"):
        check_resume(tmp_path, resume_settings(cfg, other_prompts, 0.1), True, "last")
    # other prompts and other models: the general refusal names both (review finding: only the prompts' was said)
    both = SimpleNamespace(reference_fingerprint="ref2", reward_fingerprint="rm", stats={}, train_prompts=["q"])
    with pytest.raises(ConfigError, match=r"\['prompts', 'world'\].*the training prompts differ too"):
        check_resume(tmp_path, resume_settings(cfg, both, 0.1), True, "last")
    path = tmp_path / "run_settings.json"
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "prompts"}))
    check_resume(tmp_path, resume_settings(cfg, other_prompts, 0.1), True, "last")


def test_the_early_resume_check_compares_a_given_beta(tmp_path):
    """check_resume_early refuses another fixed beta before any compute (not only after calibration)."""
    from omegaconf import OmegaConf

    from infalign.errors import ConfigError
    from infalign.infra.cache import atomic_write_json
    from infalign.pipeline.policy_cache import RESUME_FILE, _resume_training, check_resume_early

    cfg = OmegaConf.create({"algo": {"name": "ctrl", "lr": 1e-3}, "seed": 0})
    atomic_write_json(tmp_path / RESUME_FILE, {"training": _resume_training(cfg, 0.1)})
    check_resume_early(tmp_path, cfg, 0.1, "last")
    check_resume_early(tmp_path, cfg, None, "last")  # kl_target: beta not known yet
    with pytest.raises(ConfigError, match="algo.beta"):
        check_resume_early(tmp_path, cfg, 0.2, "last")


def test_a_resume_under_other_code_is_warned_about_and_returned_not_refused(tmp_path, caplog):
    """Review finding: run_settings.json recorded neither the training code nor the library versions, so a
    resume after a code change or an upgrade continued silently. The file records them (the training code's
    digest: docstring and comment edits keep it); a resume under other code is warned about and returned
    for the run's record (docs/architecture.md §4: not refused), and a file without them says so."""
    import json
    import logging

    from omegaconf import OmegaConf

    from infalign.pipeline.policy_cache import RESUME_FILE, check_resume, code_digest, resume_settings

    class World(_World):
        stats = {}

    cfg = OmegaConf.create({"algo": {"name": "ctrl", "lr": 1e-3}, "seed": 0})
    settings = resume_settings(cfg, World(), 0.1)
    assert settings["code"] == code_digest() and set(settings["versions"]) == {"torch", "transformers", "lightning"}
    assert check_resume(tmp_path, settings, False, "last") == {}
    assert check_resume(tmp_path, settings, True, "last") == {}
    stored = json.loads((tmp_path / RESUME_FILE).read_text())
    stored["code"], stored["versions"]["torch"] = "0" * 16, "1.0"
    (tmp_path / RESUME_FILE).write_text(json.dumps(stored))
    with caplog.at_level(logging.WARNING, logger="infalign.pipeline.policy_cache"):
        changed = check_resume(tmp_path, settings, True, "last")
    assert changed == {"code": {"checkpoint": "0" * 16, "run": code_digest()},
                       "torch": {"checkpoint": "1.0", "run": settings["versions"]["torch"]}}
    assert "RESUMING UNDER OTHER CODE" in caplog.text
    del stored["code"], stored["versions"]  # a file written before they were recorded
    (tmp_path / RESUME_FILE).write_text(json.dumps(stored))
    changed = check_resume(tmp_path, settings, True, "last")
    assert set(changed) == {"code", "torch", "transformers", "lightning"}
    assert all(v["checkpoint"] is None for v in changed.values())



def test_a_setting_the_algorithm_does_not_read_matches_any_value_when_one_side_lacks_it(tmp_path):
    """Left from a review: ``algo.beta`` held by one side of an ``algo=bon_sft`` run -- which reads no beta;
    toy_bon, the default experiment, sets one -- had no default, so a checkpoint whose settings file lacks
    it refused the resume. Such a key now matches any value; one the algorithm reads (rloo's ``beta``)
    still matches only its default."""
    import json

    from infalign.errors import ConfigError

    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    for algo, refused in (("bon_sft", False), ("rloo", True)):
        # (with the hydra node: the run's config-group choices, which settings_defaults reads)
        cfg = compose_config("train", f"algo={algo}", "algo.steps=4", "algo.beta=0.3", hydra=True)
        current = {"training": policy_cache._resume_training(cfg, None)}
        stored = json.loads(json.dumps(current))
        assert stored["training"]["algo"].pop("beta") == 0.3  # as if written before the experiment set it
        (ckpt / policy_cache.RESUME_FILE).write_text(json.dumps(stored))
        if refused:
            with pytest.raises(ConfigError, match=r"training\.algo\.beta"):
                policy_cache.check_resume(ckpt, current, True, "last", settings_defaults(cfg))
        else:
            policy_cache.check_resume(ckpt, current, True, "last", settings_defaults(cfg))


def test_saved_overrides_read_back_as_written(tmp_path):
    """The overrides a run saves beside its checkpoints (what the report and a resumed sweep's grid
    check read when metrics.json has none): every string back as written -- quotes, '=' and ':' in
    values, an empty list -- and None for a missing or unreadable file."""
    from infalign.pipeline.policy_cache import OVERRIDES_FILE, load_overrides, save_overrides

    overrides = ["algo.beta=0.3", "+sweeps=paper_bon", "data.name='a: b'", 'tags=["x","y"]', "~logger"]
    save_overrides(tmp_path / "a", overrides)
    assert load_overrides(tmp_path / "a") == overrides
    save_overrides(tmp_path / "b", [])
    assert load_overrides(tmp_path / "b") == []
    assert load_overrides(tmp_path / "missing") is None
    (tmp_path / "a" / OVERRIDES_FILE).write_text("- [unclosed\n")
    assert load_overrides(tmp_path / "a") is None


def test_transform_values_are_one_transform_to_float_rounding_not_to_an_edit():
    """A run's record of its transform (policy_cache.transform_values: Phi at 65 points) is compared to within
    1e-9 relative, not bit for bit -- review finding: a bit-exact hash refused a run's own checkpoint where
    numpy's exp rounds its last bit otherwise (AVX-512 or not: 2e-16 relative) -- while an edit of a formula or
    a parameter (u^2 -> u^2.001: up to ~4e-4 apart on [0, 1]) is another transform; None only matches None."""
    import numpy as np

    from infalign.math.transforms import Custom, Exp, Raw
    from infalign.pipeline.policy_cache import TRANSFORM_VALUE_POINTS, same_transform_values, transform_values

    exp4 = transform_values(Exp(4.0))
    assert len(exp4) == TRANSFORM_VALUE_POINTS and exp4[-1] == pytest.approx(np.exp(4.0))  # sign(t) exp(t u), u = 1
    assert same_transform_values(exp4, [v * (1 + 2e-16) for v in exp4])
    assert not same_transform_values(exp4, transform_values(Exp(4.001)))
    square = transform_values(Custom(np.square, name="sq"))
    assert not same_transform_values(square, transform_values(Custom(lambda u: u ** 2.001, name="sq")))
    assert transform_values(Raw()) is None and same_transform_values(None, None)
    assert not same_transform_values(None, square) and not same_transform_values(square, square[:-1])
    # a kink moved by 0.01 (review: 65 points had none in (0.30, 0.31]); the steep exp(16u)'s low end counts
    kink = transform_values(Custom(lambda u: np.maximum(u - 0.30, 0.0), name="k"))
    assert not same_transform_values(kink, transform_values(Custom(lambda u: np.maximum(u - 0.31, 0.0), name="k")))
    steep = transform_values(Exp(16.0))
    assert not same_transform_values(steep, [v + (1e-6 if i < 8 else 0.0) for i, v in enumerate(steep)])
    assert same_transform_values("ab" * 32, square)  # a record of the earlier format (a hash): not compared
