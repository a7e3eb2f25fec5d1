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


@pytest.mark.parametrize("override, key", [("eval.samples=1", "eval.samples"), ("eval.samples=0", "eval.samples"),
                                           ("eval.batch_size=0", "eval.batch_size"), ("threads=abc", "threads"),
                                           ("data.eval_prompts=0", "data.eval_prompts"),
                                           ("eval.temperature=abc", "eval.temperature"),
                                           ("eval.max_new_tokens=0", "eval.max_new_tokens"),
                                           # (a review: 'pairs' scored the reward model in the joined layout)
                                           ("+reward.input=pairs", "reward.input"),
                                           ("policy.dtype=float8", "policy.dtype"),
                                           ("+reward.prompt_format=last_user_turn", "reward.prompt_format"),
                                           # more than the toy world has (it searched for hours)
                                           ("data.train_prompts=100000000", "data.train_prompts")])
def test_bad_values_are_config_errors_before_the_world(tmp_path, override, key):
    """infalign-calibration had no checks of its own: eval.samples=1 drew and cached the pool, then failed
    in the summary; threads=abc printed a traceback."""
    from infalign.apps.calibration import validate
    from infalign.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        validate(compose_train(tmp_path / "cache", tmp_path / "run", override))
    assert err.value.key == key


def test_a_trainer_lightning_refuses_is_a_config_error_before_the_world(tmp_path, monkeypatch):
    """trainer.precision=bogus loaded (or built) the world and drew the pool's first batch before
    Lightning's traceback; the trainer is now probed first, as infalign-train does."""
    from infalign.apps import calibration
    from infalign.errors import ConfigError
    from infalign.pipeline import world

    def no_world(*args, **kwargs):
        raise AssertionError("the world was loaded before the trainer was checked")

    monkeypatch.setattr(world, "load_world", no_world)
    with pytest.raises(ConfigError) as err:
        calibration.diagnose(compose_train(tmp_path / "cache", tmp_path / "run", "trainer.precision=bogus"))
    assert err.value.key == "trainer"


@pytest.mark.slow  # a process start
def test_the_cli_prints_one_block_and_exits_2(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).with_name("infalign-calibration")
    proc = subprocess.run([str(script), "eval.samples=1", f"hydra.run.dir={tmp_path / 'run'}",
                           f"paths.cache_dir={tmp_path / 'cache'}"], capture_output=True, text=True,
                          env={**os.environ, "HYDRA_FULL_ERROR": "0"}, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "infalign-calibration: configuration error" in proc.stderr and "key:     eval.samples" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "cache").exists()
