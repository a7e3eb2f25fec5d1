"""infalign-calibration (paper Fig. 3): diagnostics of a tiny world, written and consistent."""

import json

import pytest
import torch

from infalign.apps.calibration import diagnose
from infalign.math.miscalibration import miscalibration_summary
from infalign.pipeline.pools import SCORE_PREFIX
from pipeline_helpers import compose_train


@pytest.mark.slow
def test_writes_plot_summary_and_per_prompt_rows(tmp_path, tiny_cache):
    cfg = compose_train(tiny_cache, tmp_path / "run")
    summary = diagnose(cfg)
    written = json.loads((tmp_path / "run" / "calibration.json").read_text())
    assert written == summary  # JSON round trip of floats is exact
    assert (tmp_path / "run" / "calibration.png").stat().st_size > 10_000
    rows = (tmp_path / "run" / "calibration_prompts.csv").read_text().splitlines()
    assert len(rows) == 1 + cfg.data.eval_prompts and "reward_model_std" in rows[0] and "gold_std" in rows[0]
    # the same numbers as the summary of the cached evaluation pool a training run would use
    pools = list((tmp_path / "cache" / "pools").glob("eval-*.pt"))
    assert len(pools) == 1
    scores = torch.load(pools[0], weights_only=True)["tensors"]
    again = miscalibration_summary(scores[SCORE_PREFIX + "reward_model"], scores[SCORE_PREFIX + "gold"])
    assert again["reward_model"] == pytest.approx(summary["reward_model"])
    assert again["log_std_corr"] == pytest.approx(summary["log_std_corr"], nan_ok=True)
    assert diagnose(cfg)["reference_pool_cache_hit"] is True
