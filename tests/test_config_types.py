"""Values of the wrong type are ConfigErrors naming the key, before any compute (apps/config.py:
check_value_types, errors.require_type, the algorithms' typed configs, pipeline/trainer.probe_trainer).

Before, a mistyped override either did the wrong thing silently -- ``policy_cache=off`` is a string, so
truthy: the cache was used -- or crashed later with a traceback that named no key (``algo.beta=abc``:
TypeError at the first comparison; ``algo.beta=inf``: NaN probabilities mid-training;
``trainer.precision=abc``: Lightning's error after the world and the calibration pool)."""

from __future__ import annotations

import json

import pytest

from infalign.apps import train as train_app
from infalign.apps.config import default_types
from infalign.errors import ConfigError, require_type
from infalign.training.algorithms import ALGORITHMS, make_algorithm
from pipeline_helpers import compose_train


def validate(tmp_path, *overrides):
    return train_app.validate(compose_train(tmp_path / "cache", tmp_path / "run", *overrides))


@pytest.mark.parametrize("override, key, allowed", [
    ("policy_cache=off", "policy_cache", "true or false"),
    ("save_policy=no", "save_policy", "true or false"),
    ("deterministic=abc", "deterministic", "true or false"),
    ("calibration.smoothing=1", "calibration.smoothing", "true or false"),
    ("calibration.K=abc", "calibration.K", "an integer"),
    ("calibration.K=4.9", "calibration.K", "an integer"),  # was truncated to 4 and recorded as 4.9
    ("eval.samples=abc", "eval.samples", "an integer"),
    ("eval.samples=1", "eval.samples", "M >= 2"),  # evaluation needed two, after training
    ("eval.bootstrap=abc", "eval.bootstrap", "an integer"),
    ("eval.batch_size=0", "eval.batch_size", ">= 1"),
    ("calibration.batch_size=0", "calibration.batch_size", ">= 1"),
    ("eval.ns=4", "eval.ns", "a non-empty list of integers"),
    ("eval.ns=[1,x]", "eval.ns", "a non-empty list of integers"),
    ("eval.temperature=abc", "eval.temperature", "a finite number"),
    ("eval.top_k=2.5", "eval.top_k", "an integer or null"),
    ("objective.kl_penalty=inf", "objective.kl_penalty", "a finite number"),
    ("objective.kl_penalty=-1", "objective.kl_penalty", ">= 0"),  # rewarded going over the budget
    ("objective.kl_budget=-1", "objective.kl_budget", "> 0"),  # penalised every run
    ("eval.max_new_tokens=0", "eval.max_new_tokens", ">= 1"),  # failed at the evaluation, after training
    ("checkpoint_every=-5", "checkpoint_every", ">= 1"),  # Lightning's message, exit 1
    ("log_every_n_steps=0", "log_every_n_steps", ">= 1"),  # ran, silently
    ("eval.max_new_tokens=abc", "eval.max_new_tokens", "an integer"),
    ("data.train_prompts=abc", "data.train_prompts", "an integer"),
    ("seed=abc", "seed", "an integer"),
    ("seed=-1", "seed", ">= 0"),
    ("algo.beta=abc", "algo.beta", "a finite number"),
    ("algo.beta='0.3'", "algo.beta", "a finite number"),  # a quoted number is a string
    ("algo.beta=inf", "algo.beta", "a finite number"),  # passed beta > 0, then NaN probabilities in training
    ("algo.lr=inf", "algo.lr", "a finite number"),
    ("algo.steps=2.5", "algo.steps", "an integer"),  # passed, then crashed inside fit
    ("algo.steps=true", "algo.steps", "an integer"),
    ("algo.kl_target=inf", "algo.kl_target", "a finite number or null"),  # was reported as kl_budgets, late
    ("algo.max_new_tokens=abc", "algo.max_new_tokens", "an integer"),
    ("trainer.devices=abc", "trainer.devices", "an integer >= 1"),
    ("trainer.devices=0", "trainer.devices", "an integer >= 1"),
])
def test_a_value_of_the_wrong_type_is_a_config_error_naming_its_key(tmp_path, override, key, allowed):
    with pytest.raises(ConfigError) as err:
        validate(tmp_path, override)
    assert err.value.key == key and allowed in err.value.allowed, err.value


@pytest.mark.parametrize("override", ["policy_cache=false", "algo.beta=1", "algo.kl_target=0.3", "eval.top_k=5",
                                      "trainer.devices=auto", "trainer.accelerator=gpu trainer.devices=[0]",
                                      "calibration.K=8", "seed=3"])
def test_values_of_the_right_type_pass(tmp_path, override):
    """(A list of device ids is a GPU's: the CPU accelerator takes a count, test_apps_pins.)"""
    validate(tmp_path, *override.split())


def test_types_come_from_the_defaults_and_strings_stay_free():
    types = default_types()
    assert types["policy_cache"] == (bool, False) and types["eval.samples"] == (int, False)
    assert types["objective.kl_penalty"] == (float, False) and types["reward.max_length"] == (int, True)
    # strings, interpolations, Lightning's flexible devices and the toy world's own checked tree: not typed here
    assert not {"threads", "eval.temperature", "trainer.devices", "trainer.precision"} & set(types)
    assert not [k for k in types if k.startswith("data.toy")]


def test_require_type_by_hand():
    require_type("k", 3, float)  # an int is a number
    require_type("k", None, int, optional=True)
    for value, kind in ((True, int), (True, float), (3.0, int), (float("nan"), float), ("1", float), (0, bool)):
        with pytest.raises(ConfigError):
            require_type("k", value, kind)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_numeric_setting_of_every_algorithm_is_type_checked(name):
    import dataclasses
    import typing

    config = ALGORITHMS[name].Config
    hints = typing.get_type_hints(config)
    numeric = [f.name for f in dataclasses.fields(config)
               if {int, float, bool} & set(typing.get_args(hints[f.name]) or (hints[f.name],))]
    assert numeric, name
    for field in numeric:
        with pytest.raises(ConfigError) as err:
            make_algorithm({"name": name, field: "abc"})
        assert err.value.key == f"algo.{field}"


def test_trainer_settings_lightning_refuses_fail_before_the_world(tmp_path):
    """``+trainer.max_step=5`` (a typo) and ``trainer.precision=abc`` pass our checks; Lightning refuses
    them when a trainer is built -- now right after the config is checked, before the world stage."""
    for override in ("+trainer.max_step=5", "trainer.precision=abc"):
        run_dir = tmp_path / override.split("=")[0].lstrip("+")
        with pytest.raises(ConfigError) as err:
            train_app.run(compose_train(tmp_path / "cache", run_dir, override))
        assert err.value.key == "trainer", err.value
        record = json.loads((run_dir / "metrics.json").read_text())
        assert record["status"] == "failed" and "world_s" not in record["timings"]
        assert not (tmp_path / "cache").exists()  # no world built or loaded


def test_the_readmes_bon_beta_overrides_compose(tmp_path):
    """README's best-of-N distillation baseline, as the shell hands it to Hydra: the nested interpolation
    needs Hydra's quotes (unquoted, the override grammar rejects it: "extraneous input '}'")."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert '''"algo.beta='\\${bon_beta:\\${procedure.n}}'"''' in readme and "algo.beta='${bon_beta:4}'" in readme
    for hydra_sees in ("algo.beta='${bon_beta:${procedure.n}}'", "algo.beta=${bon_beta:4}"):
        cfg = compose_train(tmp_path, tmp_path, "transform=log", "procedure.n=4", hydra_sees)
        assert cfg.algo.beta == pytest.approx(1 / 3)


@pytest.mark.parametrize("override, key, suggestion", [
    ("+eval.sample=8", "eval.sample", "eval.samples"), ("+calibration.k=8", "calibration.k", "calibration.K"),
    ("+data.train_prompt=8", "data.train_prompt", "data.train_prompts"), ("+sead=3", "sead", "seed"),
    ("+objective.kl_budgit=1", "objective.kl_budgit", "objective.kl_budget"),
])
def test_a_key_no_config_file_defines_is_a_typo(tmp_path, override, key, suggestion):
    """Hydra's hint for a mistyped key is "use +key"; following it, the value was silently ignored."""
    with pytest.raises(ConfigError) as err:
        validate(tmp_path, override)
    assert err.value.key == key and suggestion in err.value.hint


@pytest.mark.parametrize("overrides", [["+sweeps=paper_bon"], ["+sweeps=paper_control"], ["experiment=toy_won"],
                                       ["method=identity_pooled"], ["+trainer.max_epochs=1"]])
def test_every_shipped_entry_and_library_keys_pass_the_key_check(overrides):
    from infalign.apps.config import check_known_keys
    from pipeline_helpers import compose_config

    check_known_keys(compose_config("train", *overrides))


def test_a_custom_function_not_finite_in_float32_is_not_told_about_exp(tmp_path):
    with pytest.raises(ConfigError) as err:
        validate(tmp_path, "transform=sqrt", "transform.fn=numpy.arccosh")  # arccosh(u) is NaN below 1
    assert err.value.key == "transform" and "exp" not in err.value.allowed and "NaN" in err.value.hint


def test_null_limits_keys_the_code_reads_and_null_only_defaults_are_typed_right(tmp_path):
    """Review findings: data.max_prompt_tokens=null ("no limit") was refused because every shipped entry
    sets an int; reward.train.accelerator (read by pipeline/world.py) was called a typo; and
    objective.kl_budget=abc passed (its only default is null) to fail after training."""
    from infalign.apps.config import known_keys

    types = default_types()
    assert types["data.max_prompt_tokens"] == (int, True) and types["data.max_response_tokens"] == (int, True)
    assert "reward.train.accelerator" in known_keys()
    validate(tmp_path, "objective.kl_budget=0.5")
    with pytest.raises(ConfigError) as err:
        validate(tmp_path, "objective.kl_budget=abc")
    assert err.value.key == "objective.kl_budget"


@pytest.mark.parametrize("overrides, refused", [(["method=identity", "algo.beta=0.3"], True),
                                                (["algo.kl_target=0.2", "++algo.beta=0.3"], True),
                                                (["method=identity"], False),  # beta: the default, then picked
                                                (["method=identity", "algo.kl_target=null", "algo.beta=0.3"], False),
                                                (["algo.beta=0.3"], False)])
def test_an_explicit_beta_with_a_kl_target_is_refused_not_dropped(tmp_path, overrides, refused):
    """``method=identity algo.beta=0.3`` trained at the beta its kl_target picked and recorded that, the
    user's 0.3 dropped without a word (a reviewer's find). The check reads the job's own overrides
    (Hydra's ``overrides.task``, as a command line or a sweep parameter sets them)."""
    from hydra.core.hydra_config import HydraConfig

    from pipeline_helpers import compose_config

    cfg = compose_config("train", *overrides, hydra=True)
    HydraConfig.instance().set_config(cfg)
    try:
        run_cfg = compose_train(tmp_path / "cache", tmp_path / "run", *overrides)
        if refused:
            with pytest.raises(ConfigError) as err:
                train_app.validate(run_cfg)
            assert err.value.key == "algo.beta" and "kl_target" in err.value.hint
        else:
            train_app.validate(run_cfg)
    finally:
        HydraConfig.instance().cfg = None


def test_a_key_misspelt_inside_a_new_entry_is_named_with_the_key_it_misses(tmp_path, monkeypatch):
    """Extension-walkthrough finding: ``val_fracton: 0.3`` in a new conf/data entry was silently unread (any
    key some file defines passed the key check), the default 0.05 held out no prompt, and the run died with
    a traceback. A key only one file defines, close to a key of the same node that the other entries define
    and that file lacks, is a ConfigError naming the key meant. Keys one file defines beside a close one it
    also defines (train.yaml's eval.top_k and eval.top_p) pass; so does every shipped entry (test above)."""
    import shutil

    from infalign.apps import config

    conf = tmp_path / "conf"
    shutil.copytree(config.CONFIG_DIR, conf)
    (conf / "data" / "mini_hh.yaml").write_text((conf / "data" / "hh_harmless.yaml").read_text().replace(
        "val_fraction:", "val_fracton:"))
    monkeypatch.setattr(config, "CONFIG_DIR", str(conf))
    files = config.key_files.__wrapped__()
    assert files["data.val_fracton"] == frozenset({str(conf / "data" / "mini_hh.yaml")})
    assert config._misspelt("data.val_fracton", files) == "data.val_fraction"
    assert config._misspelt("eval.top_k", files) is None and config._misspelt("data.val_fraction", files) is None
    monkeypatch.setattr(config, "key_files", lambda: files)
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"seed": 0, "data": {"val_fracton": 0.3, "source": "hh"}})
    with pytest.raises(ConfigError) as err:
        config.check_known_keys(cfg)
    assert err.value.key == "data.val_fracton" and "did you mean data.val_fraction?" in err.value.hint


def test_a_new_key_or_a_typo_in_another_file_never_refuses_a_shipped_key(tmp_path, monkeypatch):
    """Review findings on the check above: measured on whole dotted names (a shared prefix inflates the
    ratio) and in both directions, a user's experiment with ``eval.temprature`` refused train.yaml's
    eval.temperature in every run, and a reward entry adding a genuinely new ``train.epochs`` refused
    hf.yaml's reward.train.steps. Only the last parts are compared, a key conf/train.yaml defines is never
    flagged, and the key meant must be one train.yaml or two other files define: both pass; the typo itself,
    in its own entry, is still refused (eval.temperature: train.yaml's)."""
    import shutil

    from omegaconf import OmegaConf

    from infalign.apps import config

    conf = tmp_path / "conf"
    shutil.copytree(config.CONFIG_DIR, conf)
    (conf / "experiment" / "mine.yaml").write_text("# @package _global_\neval:\n  temprature: 0.7\n")
    (conf / "reward" / "my_rm.yaml").write_text("train:\n  enabled: true\n  epochs: 2\n")
    monkeypatch.setattr(config, "CONFIG_DIR", str(conf))
    files = config.key_files.__wrapped__()
    monkeypatch.setattr(config, "key_files", lambda: files)
    assert config._misspelt("eval.temperature", files) is None and config._misspelt("reward.train.steps", files) is None
    assert config._misspelt("reward.train.epochs", files) is None  # a new key: a spelling no other file shares
    assert config._misspelt("eval.temprature", files) == "eval.temperature"
    config.check_known_keys(OmegaConf.create({"seed": 0, "eval": {"temperature": 1.0},
                                              "reward": {"train": {"steps": 1000, "epochs": 2}}}))
