"""``infalign-analyze``: predict win rate vs KL curves in calibrated space before training.

For the chosen procedure and N it computes, at every KL budget, the inference-time and standard
win rates of each transform family (several t at once for exp), the optimal transform's frontier,
the best t per budget, and the best-of-N policy's own point; writes ``curves.csv``,
``best_t.csv``, ``metrics.json`` and ``frontier.png`` into the run dir and prints a table.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import hydra
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig

from infalign import theory
from infalign.apps.config import CONFIG_DIR, instantiate_entry, load_group_entry
from infalign.cache import atomic_write_csv, atomic_write_json
from infalign.errors import ConfigError, require
from infalign.procedures import Procedure

log = logging.getLogger(__name__)


def kl_budgets(cfg: DictConfig) -> np.ndarray:
    """The KL grid from ``kl.list`` or ``kl.start/stop/num`` (validated)."""
    if cfg.kl.get("list") is not None:
        return theory._check_budgets(list(cfg.kl.list))
    require(int(cfg.kl.num) >= 1, "kl.num", cfg.kl.num, "an integer >= 1")
    require(0 < cfg.kl.start <= cfg.kl.stop, "kl.start", cfg.kl.start, f"0 < kl.start <= kl.stop ({cfg.kl.stop})")
    return np.linspace(float(cfg.kl.start), float(cfg.kl.stop), int(cfg.kl.num))


def exponents(cfg: DictConfig, procedure: Procedure) -> list[float]:
    """The t values for exp-family transforms (``auto``: 2, 4, 8, 16, negated for worst-of-N)."""
    if cfg.t == "auto":
        sign = -1.0 if procedure.name == "won" else 1.0
        return [sign * t for t in (2.0, 4.0, 8.0, 16.0)]
    ts = list(cfg.t) if isinstance(cfg.t, ListConfig | list) else [cfg.t]
    require(len(ts) > 0, "t", ts, "a non-empty list of nonzero exponents or 'auto'")
    return [float(t) for t in ts]


def build_transforms(cfg: DictConfig, procedure: Procedure) -> list:
    """Instantiate every requested transform up front, so bad values fail before any compute."""
    names = list(cfg.transforms)
    require(len(names) > 0, "transforms", names, "a non-empty list of conf/transform/ entries")
    out = []
    for name in names:
        if name in ("optimal", "raw"):
            hint = "set optimal=true instead" if name == "optimal" else "raw has no calibrated-space theory"
            raise ConfigError("transforms", name, "calibrated transform families (identity, log, exp, ...)", hint)
        if load_group_entry("transform", name).get("t") is not None:  # an exp family: one line per t
            out += [instantiate_entry("transform", name, cfg, t=t) for t in exponents(cfg, procedure)]
        else:
            out.append(instantiate_entry("transform", name, cfg))
    return out


def analyze(cfg: DictConfig, out_dir: Path) -> dict:
    """Compute everything; write CSVs, plot and metrics into ``out_dir``; return the metrics."""
    procedure: Procedure = instantiate(cfg.procedure)
    transforms = build_transforms(cfg, procedure)
    budgets = kl_budgets(cfg)

    frontiers = [theory.frontier(tr, procedure, budgets) for tr in transforms]
    bt_budgets = theory._check_budgets(list(cfg.best_t.budgets))
    optimal_at: dict[float, float] = {}
    if cfg.optimal:  # one solve for the plotted budgets and the best-t budgets together
        both = np.unique(np.concatenate([budgets, bt_budgets]))
        opt = theory.optimal_frontier(procedure, both)
        optimal_at = dict(zip(both.tolist(), opt.win_rate.tolist()))
        keep = np.isin(both, budgets)
        frontiers.append(theory.Frontier(
            opt.transform, opt.procedure, opt.kl_budget[keep], opt.beta[keep], opt.kl[keep],
            opt.standard_win_rate[keep], opt.win_rate[keep], opt.reachable[keep],
            [r for r, k in zip(opt.reason, keep) if k]))
    best = theory.best_t(procedure, bt_budgets, theory.default_t_grid(procedure, int(cfg.best_t.num)))
    bon_point = theory.bon_policy_point(procedure.n) if procedure.n >= 2 else None
    bon_point_win = (theory.evaluate(_log_exact(), 1.0 / (procedure.n - 1), procedure)[0].win_rate
                     if bon_point else None)

    rows = [row | {"n": procedure.n} for f in frontiers for row in f.rows()]
    atomic_write_csv(out_dir / "curves.csv", rows)
    best_rows = [
        {"procedure": procedure.label, "kl_budget": b, "best_t": t, "beta": be, "win_rate": w,
         "optimal_win_rate": optimal_at.get(float(b), math.nan)}
        for b, t, be, w in zip(best.kl_budget, best.t, best.beta, best.win_rate)
    ]
    atomic_write_csv(out_dir / "best_t.csv", best_rows)
    metrics = {
        "procedure": procedure.label,
        "transforms": [f.transform for f in frontiers],
        "kl_budgets": budgets.tolist(),
        "best_t": best_rows,
        "unreachable": [r for r in rows if not r["reachable"]],
        "bon_policy": None if bon_point is None else {"kl": bon_point.kl, "win_rate": bon_point_win},
    }
    atomic_write_json(out_dir / "metrics.json", metrics)
    if cfg.plot:
        from infalign.plotting import plot_frontiers

        plot_frontiers(frontiers, out_dir / "frontier.png", procedure.label,
                       None if bon_point is None else (bon_point.kl, bon_point_win))
    _print_table(procedure, frontiers, best_rows)
    return metrics


def _log_exact():
    from infalign.transforms import Log

    return Log(floor=0.0)


def _print_table(procedure: Procedure, frontiers: list, best_rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    budgets = frontiers[0].kl_budget
    picks = np.unique(np.linspace(0, len(budgets) - 1, min(6, len(budgets))).round().astype(int))
    table = Table(title=f"{procedure.label} win rate vs pi_ref at KL budget (nats)")
    table.add_column("transform")
    for i in picks:
        table.add_column(f"KL={budgets[i]:.3g}", justify="right")
    for f in frontiers:
        table.add_row(f.transform, *[f"{f.win_rate[i]:.4f}" if f.reachable[i] else "unreach." for i in picks])
    console.print(table)
    bt = Table(title=f"best exp t for {procedure.label}")
    for col in ("KL budget", "best t", "beta", "win rate", "optimal"):
        bt.add_column(col, justify="right")
    for r in best_rows:
        bt.add_row(*(f"{r[k]:.4g}" for k in ("kl_budget", "best_t", "beta", "win_rate", "optimal_win_rate")))
    console.print(bt)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="analyze")
def main(cfg: DictConfig) -> dict:
    out_dir = Path(cfg.paths.run_dir)
    metrics = analyze(cfg, out_dir)
    log.info("wrote %s", out_dir)
    return metrics


if __name__ == "__main__":
    main()
