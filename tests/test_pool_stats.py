"""math/pool_stats.py: per-prompt win-rate / KL columns of two pools and their bootstrap summaries."""

import numpy as np
import torch

from infalign.math.estimators import bootstrap_ci
from infalign.math.pool_stats import pool_report, summarize_columns


def test_summarize_columns_counts_prompts_and_honours_level_and_seed():
    """Each column's CI is bootstrap_ci's over the same resamples (all columns at once, at the level and
    seed asked), n_prompts is the number of rows; a 50 % interval is narrower than the default 95 %."""
    rng = np.random.default_rng(0)
    cols = {"a": torch.tensor(rng.normal(size=30)), "b": torch.tensor(rng.normal(size=30))}
    r = summarize_columns(cols, num_resamples=400, level=0.5, seed=11)
    assert r["a"]["n_prompts"] == 30
    est, low, high = bootstrap_ci(np.stack([cols["a"].numpy(), cols["b"].numpy()], 1), 400, 0.5, 11)
    assert (r["a"]["low"], r["a"]["high"]) == (low[0], high[0])
    assert (r["b"]["low"], r["b"]["high"]) == (low[1], high[1])
    ref = torch.tensor(rng.normal(size=(30, 4)))
    wide = pool_report(ref + 0.3, ref, "bon", [2], num_resamples=400)
    narrow = pool_report(ref + 0.3, ref, "bon", [2], num_resamples=400, level=0.5)

    def width(c):
        return c["standard_win_rate"]["high"] - c["standard_win_rate"]["low"]

    assert width(narrow) < width(wide)
    assert narrow["standard_win_rate"]["n_prompts"] == 30
