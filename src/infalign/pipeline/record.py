"""Stage 4: plain files in the run dir (``metrics.json``, CSV, PNG), the printed table, W&B."""

from __future__ import annotations

import re
from pathlib import Path

from infalign.infra.cache import atomic_write_csv, atomic_write_json


def run_name(procedure, transform, algo) -> str:
    """Dashboard-friendly run name: the procedure, then the algorithm's part (``Algorithm.run_label``),
    e.g. ``bon4-exp-t8-b0.05`` (RLOO), ``bon4-identity-kl0.4-ppo`` (beta from ``algo.kl_target``),
    ``bon4-bon_sft-n4-s60``."""
    label = transform.label
    m = re.fullmatch(r"exp(n?)\(t=(.+)\)", label)
    if m:
        label = f"exp{m.group(1)}-t{m.group(2)}"
    label = re.sub(r"[^A-Za-z0-9.+-]+", "", label.split("(")[0]) if not m else label
    return f"{procedure.label}-{algo.run_label(label)}"


def method_info(cfg, algo, transform, procedure) -> dict:
    """What was trained, as the report groups it: ``{"method", "algo", "transform", "depends_on_n",
    "trained_n"}``.

    ``method`` is the algorithm's label (``Algorithm.method_label``): the transform's label for RLOO
    (``"expn(t=4)"``, ``"identity"``, ``"raw"``), ``"<label>+<algo>"`` for other RL algorithms, and
    the baseline's own name with its N for the offline baselines (``"bon_sft(N=4)"``,
    ``"ipo(N=4)"``), which never use the transform. ``depends_on_n``: whether the trained policy
    depends on ``procedure.n`` (offline baselines, trained on N samples per prompt, and any
    transform or algo setting that interpolates ``procedure``, e.g. ``optimal`` or
    ``algo.beta=${bon_beta:${procedure.n}}``); a policy that does not is trained once and evaluated
    at every N (docs/method.md §8).
    """
    from omegaconf import OmegaConf

    info = {"method": algo.method_label(transform), "algo": algo.name}
    if algo.trained_n is not None:
        return info | {"transform": None, "depends_on_n": True, "trained_n": algo.trained_n}
    raw = OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, ["transform", "algo"]), resolve=False)
    return info | {"transform": transform.label, "depends_on_n": "procedure." in raw, "trained_n": procedure.n}


def eval_rows(metrics: dict) -> list[dict]:
    rows = []
    for judge, cols in metrics["eval"]["judges"].items():
        for name, ci in cols.items():
            rows.append({"judge": judge, "metric": name, **ci})
    return rows


def write_files(out_dir: Path, metrics: dict, procedure) -> dict[str, Path]:
    """metrics.json, eval_metrics.csv and win_rates.png; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out_dir / "metrics.json", "csv": out_dir / "eval_metrics.csv", "plot": out_dir / "win_rates.png"}
    atomic_write_json(paths["metrics"], metrics)
    atomic_write_csv(paths["csv"], eval_rows(metrics))
    plot_win_rates(metrics, procedure, paths["plot"])
    return paths


def plot_win_rates(metrics: dict, procedure, path: Path) -> None:
    """Win rate vs N (with 95% CIs) per judge, and the theory's prediction beside them."""
    import matplotlib.pyplot as plt

    from infalign.infra.plotting import save_png

    ev = metrics["eval"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for judge, cols in ev["judges"].items():
        xs, ys, lo, hi = [], [], [], []
        for n in ev["ns"]:
            key = "standard_win_rate" if n == 1 or procedure.name == "sample" else f"{procedure.name}{n}_win_rate"
            if key in cols:
                c = cols[key]
                xs.append(n), ys.append(c["mean"]), lo.append(c["mean"] - c["low"]), hi.append(c["high"] - c["mean"])
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=f"trained policy ({judge})")
    th = ev.get("theory")
    if th:
        key = f"{procedure.label}_win_rate"
        ax.plot([1, procedure.n], [th["standard_win_rate"], th[key]], "k*--", ms=10, label=f"theory at beta={th['beta']:g}")
        if "at_measured_kl" in th:
            m = th["at_measured_kl"]
            ax.plot([1, procedure.n], [m["standard_win_rate"], m[key]], "s:", color="gray", ms=7,
                    label=f"theory at measured KL={m['kl']:.3g}")
    ax.axhline(0.5, color="gray", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"N ({procedure.name}; N=1 is the standard win rate)")
    ax.set_ylabel("win rate vs reference")
    ax.set_title(metrics.get("run_name", ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_png(fig, path)


def print_summary(metrics: dict, procedure) -> None:
    """The closing table: KL, standard and N win rates (reward model and gold) with CIs, theory."""
    from rich.console import Console
    from rich.table import Table

    ev = metrics["eval"]
    key = f"{procedure.name}{procedure.n}_win_rate" if procedure.name != "sample" else None
    table = Table(title=f"{metrics.get('run_name', '')}: trained policy vs reference ({ev['judges'][next(iter(ev['judges']))]['standard_win_rate']['n_prompts']} held-out prompts, 95% CI)")
    for col in ("judge", "KL (nats)", "standard win rate", f"{procedure.label} win rate" if key else ""):
        if col:
            table.add_column(col, justify="right")

    def fmt(c):
        return f"{c['mean']:.3f} [{c['low']:.3f}, {c['high']:.3f}]"

    for judge, cols in ev["judges"].items():
        row = [judge, fmt(cols["kl"]), fmt(cols["standard_win_rate"])]
        if key:
            row.append(fmt(cols[key]))
        table.add_row(*row)
    th = ev.get("theory")
    if th:
        row = [f"theory (beta={th['beta']:g})", f"{th['kl']:.3f}", f"{th['standard_win_rate']:.3f}"]
        if key:
            row.append(f"{th[procedure.label + '_win_rate']:.3f}")
        table.add_row(*row)
        if "at_measured_kl" in th:
            m = th["at_measured_kl"]
            row = ["theory (measured KL)", f"{m['kl']:.3f}", f"{m['standard_win_rate']:.3f}"]
            if key:
                row.append(f"{m[procedure.label + '_win_rate']:.3f}")
            table.add_row(*row)
    Console().print(table)
    mis = ev.get("miscalibration")
    if mis:
        Console().print(miscalibration_line(mis))


def miscalibration_line(mis: dict) -> str:
    """One line on how miscalibrated the reward model is across the held-out prompts."""
    line = (f"reward model across {mis['n_prompts']} prompts: per-prompt score spread CV "
            f"{mis['reward_model']['std_cv']:.2f}")
    if "gold" in mis:
        line += (f" (gold {mis['gold']['std_cv']:.2f}; corr of log spreads {mis['log_std_corr']:.2f}; "
                 f"within-prompt pairwise accuracy {mis['pairwise_accuracy']:.3f})")
    return line


def flat_summary(metrics: dict) -> dict[str, float]:
    """``eval/<judge>/<metric>`` (+ ``_low``/``_high``) and ``theory/*``: the W&B run summary."""
    out: dict[str, float] = {}
    for judge, cols in metrics["eval"]["judges"].items():
        for name, ci in cols.items():
            out[f"eval/{judge}/{name}"] = ci["mean"]
            out[f"eval/{judge}/{name}_low"] = ci["low"]
            out[f"eval/{judge}/{name}_high"] = ci["high"]
    th = metrics["eval"].get("theory") or {}
    for k, v in th.items():
        if isinstance(v, int | float):
            out[f"theory/{k}"] = float(v)
    for judge, stats in (metrics["eval"].get("miscalibration") or {}).items():
        if isinstance(stats, dict):
            out |= {f"world/{judge}/{k}": float(v) for k, v in stats.items()}
        elif isinstance(stats, float):
            out[f"world/{judge}"] = stats
    for k in ("reward_val_accuracy", "reward_val_loss", "reward_val_gold_accuracy"):
        if k in (metrics.get("world") or {}):
            out[f"reward_model/{k.removeprefix('reward_')}"] = float(metrics["world"][k])
    if "kl_ratio" in metrics and metrics["kl_ratio"] is not None:
        out["eval/kl_ratio_to_theory"] = metrics["kl_ratio"]
    return out
