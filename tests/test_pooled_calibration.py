"""Pooled calibration (calibration.scope=pooled), the control of docs/method.md §2: a response is
ranked among every training prompt's reference rewards instead of its own prompt's."""

from __future__ import annotations

import pytest
import torch

from infalign.apps import train as train_app
from infalign.errors import ConfigError
from infalign.math.calibration import CalibrationTable
from infalign.math.transforms import Identity
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
