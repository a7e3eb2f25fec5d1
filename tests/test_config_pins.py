"""Pins found by mutation testing of the apps' config validation: ``apps/train.py:validate`` (bounds
of checkpoint_every, eval.bootstrap, objective.kl_budget, eval.ns, trainer.accelerator and
trainer.precision), ``apps/analyze.py:validate`` (best_t.num, t) and ``apps/config.py``'s resolvers
(``${bon_beta:N}``, ``${at:list,i}``).

Compose + validate only (no toy world, no compute): ``pipeline_helpers.compose_train`` (tiny settings,
cached composes) and ``compose_config("analyze", ...)``. Each boundary is tested on both sides where the
mutant moves it by one."""

from __future__ import annotations

import pytest

from infalign.apps import analyze as analyze_app
from infalign.apps import train as train_app
from infalign.apps.config import _at, _bon_beta
from infalign.errors import ConfigError
from pipeline_helpers import compose_config, compose_train

ANALYZE_FAST = ["kl.num=4", "optimal=false", "best_t.num=4", "best_t.budgets=[0.5]", "plot=false"]


def validate_train(tmp_path, *overrides):
    return train_app.validate(compose_train(tmp_path / "cache", tmp_path / "run", *overrides))


def refused_key(validate, *args) -> str:
    with pytest.raises(ConfigError) as err:
        validate(*args)
    return err.value.key


# ------------------------------------------------------------------------------ apps/train.py


def test_checkpoint_every_zero_is_refused_and_one_passes(tmp_path):
    """A1: checkpoint_every >= 1 optimizer steps; 0 (which would silently turn periodic checkpoints off:
    callbacks.model_checkpoint=null is the way to have none) is a ConfigError naming the key; 1 passes."""
    assert refused_key(validate_train, tmp_path, "checkpoint_every=0") == "checkpoint_every"
    validate_train(tmp_path, "checkpoint_every=1")


def test_bootstrap_needs_at_least_40_resamples(tmp_path):
    """A2: with fewer than 40 resamples the 2.5 % / 97.5 % quantiles are the extremes: 39 is refused,
    40 (the boundary) passes."""
    assert refused_key(validate_train, tmp_path, "eval.bootstrap=39") == "eval.bootstrap"
    validate_train(tmp_path, "eval.bootstrap=40")


def test_a_zero_kl_budget_is_refused(tmp_path):
    """A3: objective.kl_budget is null or > 0 nats; 0 would penalise every run (its KL is > 0)."""
    assert refused_key(validate_train, tmp_path, "objective.kl_budget=0") == "objective.kl_budget"
    validate_train(tmp_path, "objective.kl_budget=0.5")


def test_eval_ns_must_start_at_one(tmp_path):
    """A5: every N in eval.ns is in [1, eval.samples]: N = 0 (a best-of-0 win rate) is refused."""
    assert refused_key(validate_train, tmp_path, "eval.ns=[0,1]") == "eval.ns"
    validate_train(tmp_path, "eval.ns=[1,2]")


def test_the_procedures_n_must_fit_in_the_eval_samples(tmp_path):
    """A6: the objective's best-of-n (procedure.n) is estimated from eval.samples draws per prompt, so
    procedure.n <= eval.samples: n = 8 with 4 samples is refused even though every N of eval.ns=[1,2] fits
    -- naming procedure.n (it named eval.ns, which an extension walkthrough found misleading: every N there
    fitted); n = 4 with 4 samples passes."""
    assert refused_key(validate_train, tmp_path, "procedure.n=8", "eval.samples=4", "eval.ns=[1,2]") == "procedure.n"
    validate_train(tmp_path, "procedure.n=4", "eval.samples=4", "eval.ns=[1,2]")


def test_mps_is_an_accepted_accelerator(tmp_path):
    """A7: validate accepts cpu, gpu, cuda, mps and auto (an Apple-silicon run: trainer.accelerator=mps);
    anything else (tpu) is a ConfigError naming trainer.accelerator. The default devices=1 needs no device
    count, so validate passes on a machine without an mps device."""
    validate_train(tmp_path, "trainer.accelerator=mps")
    assert refused_key(validate_train, tmp_path, "trainer.accelerator=tpu") == "trainer.accelerator"


@pytest.mark.parametrize("precision", ["16", "16-mixed"])
def test_fp16_precision_with_gradient_clipping_is_refused(tmp_path, precision):
    """A14: Lightning's "16" is an alias of "16-mixed" (a GradScaler: manual optimisation clips the
    still-scaled gradients), so both are refused with algo.grad_clip=1 and both pass with grad_clip=0."""
    key = refused_key(validate_train, tmp_path, f"trainer.precision={precision}", "algo.grad_clip=1")
    assert key == "trainer.precision"
    validate_train(tmp_path, f"trainer.precision={precision}", "algo.grad_clip=0")


# ---------------------------------------------------------------------------- apps/analyze.py


def validate_analyze(*overrides):
    return analyze_app.validate(compose_config("analyze", *ANALYZE_FAST, *overrides))


def test_best_t_scan_needs_two_points():
    """Z1: the best-t scan needs best_t.num >= 2 points (a grid of one is no scan); 1 is refused and 2
    passes."""
    assert refused_key(validate_analyze, "best_t.num=1") == "best_t.num"
    assert validate_analyze("best_t.num=2").num == 2


def test_t_zero_is_refused_even_when_no_exp_transform_reads_it():
    """Z2: t is checked whatever the transforms: t=0 (the identity transform in disguise) with
    transforms=[identity] is a ConfigError naming t, as with an exp family."""
    assert refused_key(validate_analyze, "transforms=[identity]", "t=0") == "t"
    validate_analyze("transforms=[identity]", "t=2")


# ----------------------------------------------------------------------------- apps/config.py


def test_bon_beta_needs_n_of_at_least_two():
    """G1: ${bon_beta:N} = 1 / (N - 1): N = 1 is a ConfigError naming procedure.n (not a
    ZeroDivisionError); N = 2 gives 1.0 and N = 5 gives 0.25."""
    assert refused_key(_bon_beta, 1) == "procedure.n"
    assert _bon_beta(2) == 1.0 and _bon_beta(5) == 0.25


def test_at_index_past_the_end_is_a_config_error():
    """G2: ${at:[a,b],i} takes i in [0, len - 1]: i = 2 of a 2-list is a ConfigError naming kl_point (not
    an IndexError); i = 1 is the last value."""
    assert refused_key(_at, [1, 2], 2) == "kl_point"
    assert _at([1, 2], 1) == 2 and _at([1, 2], 0) == 1
