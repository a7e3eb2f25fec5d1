"""Evaluation statistics from sample pools (docs/method.md §7): win rates for every N, KL, with CIs.

Per held-out prompt x with M policy and M' reference samples scored by a judge (the reward model or
the gold reward):

* standard win rate  W(pi > pi_ref | x)           -- all M x M' pairs, ties one half;
* inference-time     W(T_N(pi) > T_N(pi_ref) | x) -- exact over all N-subsets of both pools;
* KL(pi || pi_ref | x) = mean over the policy samples of sum_t log pi - log pi_ref.

Means over prompts come with percentile-bootstrap CIs over prompts; all columns share the same
resamples, so differences between columns are consistent.
"""

from __future__ import annotations

import torch

from infalign.math.estimators import bootstrap_ci
from infalign.math.procedures import STANDARD_WIN_RATE, Sample, make_procedure, pool_win_rates


def pool_columns(
    policy_scores: torch.Tensor,
    reference_scores: torch.Tensor,
    procedure: str,
    ns: list[int],
    log_ratio: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-prompt statistics ``{"standard_win_rate": [P], f"{procedure}{N}_win_rate": [P], ..., "kl": [P]}``.

    These are what the bootstrap resamples, and what a matched-KL comparison pairs across runs
    evaluated on the same prompts (float64).
    """
    family = make_procedure(procedure)
    columns: dict[str, torch.Tensor] = {
        STANDARD_WIN_RATE: pool_win_rates(Sample.name, policy_scores, reference_scores, [1])[0].double()
    }
    if family.uses_n:
        rates = pool_win_rates(procedure, policy_scores, reference_scores, ns)
        columns.update({family.at(n).win_rate_key: rates[i].double() for i, n in enumerate(ns)})
    if log_ratio is not None:
        columns["kl"] = log_ratio.double().mean(dim=1)
    return columns


def summarize_columns(
    columns: dict[str, torch.Tensor], num_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> dict:
    """``{name: {"mean", "low", "high", "n_prompts"}}``: mean over prompts with a percentile
    bootstrap CI; all columns share the same resamples."""
    names = list(columns)
    values = torch.stack([columns[k].double().cpu() for k in names], dim=1).numpy()  # [P, C]
    est, low, high = bootstrap_ci(values, num_resamples=num_resamples, level=level, seed=seed)
    return {
        k: {"mean": float(est[i]), "low": float(low[i]), "high": float(high[i]), "n_prompts": values.shape[0]}
        for i, k in enumerate(names)
    }


def pool_report(
    policy_scores: torch.Tensor,
    reference_scores: torch.Tensor,
    procedure: str,
    ns: list[int],
    log_ratio: torch.Tensor | None = None,
    num_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict:
    """``{"standard_win_rate": ci, f"{procedure}{N}_win_rate": ci, ..., "kl": ci}`` (ci: mean/low/high)."""
    columns = pool_columns(policy_scores, reference_scores, procedure, ns, log_ratio)
    return summarize_columns(columns, num_resamples, level, seed)
