"""Pooled calibration (calibration.scope=pooled), the control of docs/method.md §2: a response is
ranked among every training prompt's reference rewards instead of its own prompt's."""

from __future__ import annotations

import math

import pytest
import torch

from infalign.apps import train as train_app
from infalign.errors import ConfigError
from infalign.math.calibration import CalibrationTable
from infalign.math.procedures import BestOfN
from infalign.math.transforms import Identity
from infalign.pipeline.kl_target import beta_for_target
from infalign.pipeline.record import method_info
from pipeline_helpers import compose_train


def test_pooled_ranks_among_all_prompts_by_hand():
    rewards = torch.tensor([[2.0, 1.0], [4.0, 3.0]], dtype=torch.float64)
    per_prompt = CalibrationTable.from_rewards(rewards)
    pooled = CalibrationTable.from_rewards(rewards, scope="pooled")
    idx, r = torch.tensor([0, 1, 0, 1]), torch.tensor([2.5, 2.5, 3.0, 0.0], dtype=torch.float64)
    # own prompt: 2.5 beats both of prompt 0 (1.0), none of prompt 1 (0.0); 3.0 vs [1, 2] -> 1.0
    torch.testing.assert_close(per_prompt.calibrate(idx, r), torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64))
    # all prompts [1, 2, 3, 4]: 2.5 -> 2/4; 3.0 ties one -> (2 + 0.5)/4; 0.0 -> 0
    torch.testing.assert_close(pooled.calibrate(idx, r), torch.tensor([0.5, 0.5, 0.625, 0.0], dtype=torch.float64))
    assert pooled.num_prompts == 2 and pooled.k == 4
    with pytest.raises(IndexError):
        pooled.calibrate(torch.tensor([2]), torch.tensor([0.0], dtype=torch.float64))


def test_pooled_equals_per_prompt_when_every_prompt_has_the_same_rewards():
    """P = 20 prompts, K = 2000 draws each from N(0, 1): both are the empirical N(0, 1) CDF, within
    the DKW bound sqrt(log(2 / 0.001) / (2 K)) = 0.044 of it (probability >= 0.999 per prompt)."""
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(20, 2000, generator=g, dtype=torch.float64)
    idx = torch.arange(20).repeat_interleave(50)
    q = torch.randn(1000, generator=g, dtype=torch.float64)
    diff = CalibrationTable.from_rewards(rewards).calibrate(idx, q) - \
        CalibrationTable.from_rewards(rewards, scope="pooled").calibrate(idx, q)
    assert diff.abs().max() < 2 * 0.044


def test_pooled_differs_where_prompts_are_miscalibrated():
    """Prompt 1's rewards are prompt 0's shifted by +3: pooled ranks put prompt 1's median response
    at ~3/4 (above all of prompt 0 but 0.13 %, above half of prompt 1; the rank of 3.0 within
    prompt 1 has sd sqrt(500/4)/1000 = 0.011, tolerance 0.04), per-prompt calibration at ~1/2."""
    g = torch.Generator().manual_seed(1)
    base = torch.randn(1, 500, generator=g, dtype=torch.float64)
    table = torch.cat([base, base + 3.0])
    idx, q = torch.tensor([1]), torch.tensor([3.0], dtype=torch.float64)
    assert abs(CalibrationTable.from_rewards(table, scope="pooled").calibrate(idx, q).item() - 0.75) < 0.04
    assert abs(CalibrationTable.from_rewards(table).calibrate(idx, q).item() - 0.5) < 0.04


def test_scope_is_validated_before_compute(tmp_path):
    with pytest.raises(ConfigError, match=r"calibration\.scope.*prompt \| pooled"):
        train_app.validate(compose_train(tmp_path, tmp_path, "calibration.scope=pool"))
    with pytest.raises(ConfigError, match=r"calibration\.scope.*uncalibrated"):
        train_app.validate(compose_train(tmp_path, tmp_path, "calibration.scope=pooled", "transform=raw"))
    train_app.validate(compose_train(tmp_path, tmp_path, "calibration.scope=pooled", "transform=identity"))


def test_pooled_runs_are_their_own_method(tmp_path):
    cfg = compose_train(tmp_path, tmp_path, "method=identity_pooled")
    procedure, transform, rl = train_app.validate(cfg)
    assert cfg.calibration.scope == "pooled" and isinstance(transform, Identity)
    assert method_info(cfg, rl, transform, procedure)["method"] == "identity[pooled]"
    plain = compose_train(tmp_path, tmp_path, "method=identity")
    assert method_info(plain, rl, transform, procedure)["method"] == "identity"


def test_reference_calibrated_by_hand_in_both_scopes():
    """Prompts [0, 1] and [10, 11]: pooled, each sample's mid-rank among all four is 0.5, 1.5, 2.5, 3.5
    of 4; per prompt, among its own two, 0.5 and 1.5 of 2. The per-prompt rewards are kept either way."""
    rewards = torch.tensor([[1.0, 0.0], [11.0, 10.0]])
    pooled = CalibrationTable.from_rewards(rewards, scope="pooled")
    assert pooled.pooled and torch.equal(pooled.prompt_rewards, torch.tensor([[0.0, 1.0], [10.0, 11.0]]))
    assert torch.allclose(pooled.reference_calibrated(), torch.tensor([[0.125, 0.375], [0.625, 0.875]]))
    own = CalibrationTable.from_rewards(rewards)
    assert not own.pooled and torch.equal(own.prompt_rewards, pooled.prompt_rewards)
    assert torch.allclose(own.reference_calibrated(), torch.tensor([[0.25, 0.75], [0.25, 0.75]]))


def _discrete_tilt_kl(reward: torch.Tensor, beta: float) -> float:
    """Mean over prompts of KL(pi_p || uniform) for pi_p(i) ∝ exp(R_pi / beta) over the K reference
    samples of prompt p: the ideal KL-RL policy when pi_ref is the prompt's K samples."""
    logp = torch.log_softmax(reward.double() / beta, dim=1)
    return float((logp.exp() * (logp + math.log(reward.shape[1]))).sum(dim=1).mean())


@pytest.mark.parametrize("kl", [0.02, 0.05])
def test_pooled_kl_target_reaches_its_kl_where_the_per_prompt_theory_misses(kl):
    """A miscalibrated world (per-prompt offsets sd 3, within-prompt sd 1): within a prompt the pooled
    C_pool spreads far less than Uniform, so the identity theory's beta tilts it ~10x too little.
    kl_target's pooled beta (the small-tilt match, docs/method.md §9) puts the ideal tilt of the
    prompts' own reference samples at the target within 20 % (the small-tilt error at these KLs);
    control: per-prompt calibration with the theory's beta reaches it within the same tolerance."""
    g = torch.Generator().manual_seed(0)
    rewards = 3.0 * torch.randn(100, 1, generator=g) + torch.randn(100, 256, generator=g)
    pooled = CalibrationTable.from_rewards(rewards, scope="pooled")
    own = CalibrationTable.from_rewards(rewards)
    beta_pooled = beta_for_target(kl, Identity(), BestOfN(n=4), pooled)
    beta_theory = beta_for_target(kl, Identity(), BestOfN(n=4), own)
    assert _discrete_tilt_kl(pooled.reference_calibrated(), beta_pooled) == pytest.approx(kl, rel=0.2)
    assert _discrete_tilt_kl(own.reference_calibrated(), beta_theory) == pytest.approx(kl, rel=0.2)
    assert _discrete_tilt_kl(pooled.reference_calibrated(), beta_theory) < kl / 3  # what the theory's beta gave



def test_an_offline_baseline_keeps_its_theory_whatever_the_calibration_scope(tmp_path):
    """bon_sft trains on reference samples and ranks no reward, so calibration.scope=pooled (accepted: the
    default transform is calibrated) must not drop its (5.8) theory, as it drops a pooled identity's
    (docs/method.md (2.4)); the report reads the scope the same way (report/naming.pooled_calibration)."""
    from infalign.apps.train_stages import theory_target
    from infalign.report.collect import Job
    from infalign.report.naming import pooled_calibration

    def target(*overrides):
        cfg = compose_train(tmp_path, tmp_path, *overrides)
        _, transform, algo = train_app.validate(cfg)
        return theory_target(cfg, algo, transform)

    assert target("method=identity_pooled") is None
    assert target("method=identity") is not None
    baseline, plain = target("algo=bon_sft", "calibration.scope=pooled"), target("algo=bon_sft")
    assert baseline is not None and (baseline[0].label, baseline[1]) == (plain[0].label, plain[1])

    def job(transform):
        config = {"calibration": {"scope": "pooled"}}
        info = {"algo": "bon_sft" if transform is None else "rloo", "transform": transform}
        record = type("R", (), {"method_info": info})()
        return Job(job="0", path=tmp_path, status="finished", record=record, config=config)

    assert pooled_calibration(job("identity")) and not pooled_calibration(job(None))


@pytest.mark.parametrize("algo", ["rloo", "ppo"])
def test_a_missing_eos_penalty_leaves_the_run_without_theory(tmp_path, algo):
    """With p > 0 the target is the tilt of Phi(C) - p * 1{cut} (docs/method.md (6.1b)), not of Phi(C):
    no calibrated-space theory beside the run (its record's eval.theory and kl_ratio are null; review: a
    penalised run printed a theory KL of 1.30 beside a measured 2.58). p = 0 (no penalty) and null keep it."""
    from infalign.apps.train_stages import theory_target

    def target(*overrides):
        cfg = compose_train(tmp_path, tmp_path, f"algo={algo}", "transform=identity", *overrides)
        _, transform, algorithm = train_app.validate(cfg)
        return theory_target(cfg, algorithm, transform)

    assert target("algo.missing_eos_penalty=0.5") is None
    for kept in (target("algo.missing_eos_penalty=0"), target()):
        assert kept is not None and kept[0].label == "identity"


def test_an_evaluation_at_another_horizon_leaves_the_run_without_theory(tmp_path):
    """eval.max_new_tokens other than algo.max_new_tokens (the trained and calibrated horizon): both evaluation
    pools are of other distributions than the theory tilts (review: a policy cut at 6 tokens recorded kl_ratio
    0.61, which the theory gap read as "under-tilted"). The same horizon given explicitly keeps the theory."""
    from infalign.apps.train_stages import theory_target

    def target(*overrides):
        cfg = compose_train(tmp_path, tmp_path, "transform=identity", "algo.max_new_tokens=8", *overrides)
        _, transform, algorithm = train_app.validate(cfg)
        return theory_target(cfg, algorithm, transform)

    assert target("eval.max_new_tokens=6") is None
    assert target("eval.max_new_tokens=8") is not None and target() is not None
