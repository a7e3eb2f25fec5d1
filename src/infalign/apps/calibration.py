"""``infalign-calibration``: how miscalibrated is the reward model across prompts? (paper Fig. 3)

    infalign-calibration                                  # the default toy world
    infalign-calibration data.toy.world.scale_sigma=0 data.toy.world.scale_noise_sigma=0 \
        data.toy.world.offset_sigma=0 data.toy.world.propensity_sigma=0   # the calibrated control world
                                                          # (sweeps/paper_control.yaml, docs/method.md §11)
    infalign-calibration experiment=hh_helpful_bon ...    # any world infalign-train accepts

Draws (or reuses from the cache: it is the same pool ``infalign-train``'s evaluation uses) M
reference samples for each held-out prompt, scores them with the reward model (and the gold
reward, toy world), and writes into the run dir (``outputs/calibration/<date>``):

* ``calibration.png`` -- reward-model score against within-prompt rank for 10 prompts (lines of
  different slopes and heights = scores that mean different things on different prompts), the same
  for gold, and per-prompt spread of reward-model vs gold scores over all prompts;
* ``calibration.json`` -- the summary of ``infalign.math.miscalibration`` (per-prompt spread CV,
  mean-spread ratio, log-spread correlation with gold, within-prompt pairwise accuracy);
* ``calibration_prompts.csv`` -- one row per prompt: mean and std of each judge's scores.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig

from infalign.apps.config import (
    CONFIG_DIR,
    apply_threads,
    check_known_keys,
    check_value_types,
    exit_on_config_error,
    hydra_refusals_exit_2,
    instantiate_callbacks,
    instantiate_trainer,
)
from infalign.infra.cache import atomic_write_csv, atomic_write_json
from infalign.infra.startup import import_frozen

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
SHOWN_PROMPTS = 10


def diagnose(cfg: DictConfig) -> dict:
    """Reference pool on the held-out prompts -> summary, per-prompt rows, plot (module docstring)."""
    # the heavy imports (torch, Lightning, transformers): once per process, frozen (infra/startup.py)
    import_frozen("infalign.math.miscalibration", "infalign.pipeline.pools", "infalign.pipeline.world")
    from infalign.math.miscalibration import miscalibration_summary
    from infalign.pipeline.pools import reference_pool
    from infalign.pipeline.trainer import probe_trainer, stage_trainers
    from infalign.pipeline.world import load_world

    out_dir, cache_dir = Path(cfg.paths.run_dir), Path(cfg.paths.cache_dir)
    apply_threads(cfg.threads)
    make_trainer = instantiate_trainer(cfg.trainer)
    probe_trainer(make_trainer)  # what Lightning refuses (a precision, an argument): before the world's build
    predict = stage_trainers(make_trainer, instantiate_callbacks(cfg.get("callbacks"))).predict
    world = load_world(cfg, cache_dir)
    judges = {"reward_model": world.reward} | ({"gold": world.gold} if world.gold is not None else {})
    pool, hit = reference_pool(world, world.eval_prompts, int(cfg.eval.samples), judges, cfg.eval,
                               predict, int(cfg.seed) + 101, cache_dir, tag="eval")
    scores = pool["scores"]
    summary = miscalibration_summary(scores["reward_model"], scores.get("gold"))
    summary["reference_pool_cache_hit"] = hit
    rows = [{"prompt": p, **{f"{j}_{s}": float(getattr(v[i].double(), s)()) for j, v in scores.items()
                             for s in ("mean", "std")}} for i, p in enumerate(world.eval_prompts)]
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "calibration.json", summary)
    atomic_write_csv(out_dir / "calibration_prompts.csv", rows)
    plot(scores, out_dir / "calibration.png", summary)
    print_summary(summary)
    return summary


def plot(scores: dict[str, torch.Tensor], path: Path, summary: dict) -> None:
    import matplotlib.pyplot as plt
    import torch
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    from infalign.infra.plotting import save_png

    judges = list(scores)
    fig, axes = plt.subplots(1, len(judges) + (1 if "gold" in scores else 0), figsize=(5 * (len(judges) + 1), 4))
    axes = list(axes) if hasattr(axes, "__len__") else [axes]
    m = scores["reward_model"].shape[1]
    rank = (torch.arange(m, dtype=torch.float64) + 0.5) / m
    shown = torch.linspace(0, scores["reward_model"].shape[0] - 1, SHOWN_PROMPTS).round().long().unique()
    for ax, judge in zip(axes, judges):
        for i in shown.tolist():
            ax.plot(rank, scores[judge][i].double().sort().values, marker=".", lw=1)
        ax.set_xlabel("within-prompt rank of the reference sample (quantile)")
        ax.set_ylabel(f"{judge} score")
        cv, clean = summary[judge]["std_cv"], summary[judge].get("std_cv_denoised", float("nan"))
        ax.set_title(f"{judge}: {len(shown)} prompts\nspread CV across prompts {cv:.2f} "
                     f"(sampling noise removed: {clean:.2f})", fontsize=9)
        ax.grid(alpha=0.3)
    if "gold" in scores:
        ax = axes[-1]
        ax.scatter(scores["gold"].double().std(1), scores["reward_model"].double().std(1), s=8, alpha=0.6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):  # 1-2-5 ticks as plain numbers (the default minor labels ran together)
            axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("gold: per-prompt std of reference rewards")
        ax.set_ylabel("reward model: per-prompt std")
        ax.set_title(f"does the reward model carry gold's miscalibration?\ncorr(log std) = "
                     f"{summary['log_std_corr']:.2f}", fontsize=9)
        ax.grid(alpha=0.3, which="both")
    save_png(fig, path)


def print_summary(summary: dict) -> None:
    from rich.table import Table

    from infalign.infra.console import console

    table = Table(title=f"miscalibration across {summary['n_prompts']} held-out prompts "
                        f"({summary['n_samples']} reference samples each)")
    for col in ("judge", "per-prompt spread CV", "spread CV (noise removed)", "mean spread / within spread",
                "offsets / within spread (noise removed)"):
        table.add_column(col, justify="right")
    for judge in ("reward_model", "gold"):
        if judge in summary:
            s = summary[judge]
            table.add_row(judge, f"{s['std_cv']:.3f}", f"{s.get('std_cv_denoised', float('nan')):.3f}",
                          f"{s['mean_spread_ratio']:.3f}", f"{s['offset_ratio']:.3f}")
    console().print(table)
    if "log_std_corr" in summary:
        print(f"corr(log per-prompt std: reward model, gold) = {summary['log_std_corr']:.3f}; "
              f"within-prompt pairwise accuracy of the reward model vs gold = {summary['pairwise_accuracy']:.3f}")


def validate(cfg: DictConfig) -> None:
    """What can be checked before compute (ConfigError naming the key): the keys' types, the pool's
    size and batch, its sampling settings, the data, model (dtypes, the reward model's input format)
    and thread settings -- the checks ``infalign-train`` makes of the same keys."""
    from infalign.infra.threads import resolve_threads
    from infalign.pipeline.settings import data_settings, eval_pool_settings, model_settings
    from infalign.pipeline.toy_prompts import check_toy_prompt_counts

    check_known_keys(cfg)
    check_value_types(cfg)
    eval_pool_settings(cfg.eval)
    data_settings(cfg.data)
    check_toy_prompt_counts(cfg.data)
    model_settings(cfg)  # policy.dtype, reward.dtype, reward.input, reward.prompt_format
    resolve_threads(cfg.get("threads", "auto"))


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _app(cfg: DictConfig) -> None:
    """A ConfigError ends the run with one block (key, value, allowed values) and exit code 2, as in
    ``infalign-train``."""
    from infalign.errors import ConfigError

    try:  # (diagnose probes the trainer, the world's files and models before drawing: their errors too)
        validate(cfg)
        diagnose(cfg)
    except ConfigError as exc:
        exit_on_config_error(exc, "infalign-calibration")
        raise


def main() -> None:
    """``infalign-calibration``: the Hydra app; a command line Hydra itself refuses exits 2 as well."""
    with hydra_refusals_exit_2():
        _app()


if __name__ == "__main__":
    main()
