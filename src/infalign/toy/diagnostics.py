"""Does the built toy world show the paper's phenomena? Quality spread and best-of-N gains.

Samples ``M`` responses per held-out prompt from the reference LM and reports:

- spread of the quality ``q`` within a prompt (mean over prompts of the per-prompt std) and
  across prompts (std of per-prompt means); the same for the gold reward, whose across-prompt
  spread (from the per-prompt offsets) dwarfs the within-prompt one -- raw rewards are
  miscalibrated;
- best-of-``n`` vs a single sample, judged by gold, with the best chosen by gold and by the
  learned reward model: exact averages over every ``n``-subset of the pool and every single sample
  *outside* it (the ``k``-th lowest-scored sample is the best of a random ``n``-subset with
  probability ``C(k-1, n-1) / C(M, n)``; ties count one half), i.e. the served win rate of
  docs/method.md §3 estimated from one pool of ``M`` samples;
- the reward model's pairwise accuracy against the gold ordering over all within-prompt pairs.
"""

from __future__ import annotations

from math import comb

import torch

from infalign.math.calibration import check_finite
from infalign.math.miscalibration import pairwise_accuracy
from infalign.models.generation import sample
from infalign.toy.build import ToyArtifacts

__all__ = ["best_of_n_win_rate", "reference_diagnostics"]


def best_of_n_win_rate(select: torch.Tensor, judge: torch.Tensor, n: int) -> torch.Tensor:
    """Per prompt, ``P(judge(best-of-n by select) > judge(independent single sample))`` + ties/2.

    ``select`` and ``judge`` are ``[P, M]``. Exact over the pool: the best (by ``select``, assumed
    tie-free) of a uniformly random ``n``-subset is the ``k``-th lowest with probability
    ``C(k-1, n-1) / C(M, n)``; the single sample is uniform over the ``M - n`` samples outside the
    subset. Those ranked above ``k`` are all outside; of the ``k - 1`` below it the subset holds a
    uniformly random ``n - 1``, so each is outside with probability ``(k - n) / (k - 1)``:

        W_k = [ (k-n)/(k-1) * sum_{j<k} w(k, j) + sum_{j>k} w(k, j) ] / (M - n),
        w(k, j) = 1{judge_k > judge_j} + 1/2 * 1{judge_k = judge_j}.

    With ``select = judge`` tie-free, ``W = n / (n + 1)`` exactly (the best of ``n`` of ``n + 1``
    exchangeable draws), whatever ``M > n``.
    """
    P, M = select.shape
    if P == 0:
        raise ValueError("best_of_n_win_rate: no prompts")
    check_finite("best_of_n_win_rate: select", select)  # a NaN would rank as the best sample
    check_finite("best_of_n_win_rate: judge", judge)  # ... or lose every pair
    if not 1 <= n < M:
        raise ValueError(f"n={n} must be in [1, {M - 1}] (a single sample outside the n-subset)")
    order = select.argsort(dim=1)
    k = torch.arange(1, M + 1, dtype=torch.float64)
    weights = torch.tensor([comb(i - 1, n - 1) / comb(M, n) for i in range(1, M + 1)], dtype=torch.float64)
    j = judge.double().gather(1, order)  # judge values sorted by select
    w = (j[:, :, None] > j[:, None, :]).double() + 0.5 * (j[:, :, None] == j[:, None, :]).double()
    below = torch.ones(M, M, dtype=torch.float64).tril(-1)  # [k, j]: j ranked below k
    outside_below = torch.where(k > 1, (k - n) / (k - 1).clamp(min=1), torch.zeros_like(k))
    wins = outside_below * (w * below).sum(-1) + (w * below.T).sum(-1)
    return (weights * wins / (M - n)).sum(-1)


@torch.no_grad()
def reference_diagnostics(
    art: ToyArtifacts,
    n_prompts: int = 200,
    n_samples: int = 16,
    n: int = 4,
    split: str = "test",
    seed: int = 0,
    max_new_tokens: int = 24,
) -> dict[str, float]:
    """The figures of the module docstring for ``n_prompts`` prompts of ``split``."""
    world, tok = art.world, art.load_tokenizer("left")
    ref, scorer = art.load_reference(), art.load_reward_scorer()
    prompts = world.prompts(split, n_prompts)
    roll = sample(
        ref, tok, prompts, n_samples, max_new_tokens, generator=torch.Generator().manual_seed(seed)
    )
    xs = [p for p in prompts for _ in range(n_samples)]
    q = world.quality(xs, roll.responses).view(n_prompts, n_samples)
    gold = world.gold_reward(xs, roll.responses).view(n_prompts, n_samples)
    rm = scorer.score(xs, roll.responses).view(n_prompts, n_samples)
    return {
        "q_mean": float(q.mean()),
        "q_std_within_prompt": float(q.std(1).mean()),
        "q_std_across_prompts": float(q.mean(1).std()),
        "gold_std_within_prompt": float(gold.std(1).mean()),
        "gold_std_across_prompts": float(gold.mean(1).std()),
        "mean_response_words": sum(len(r.split()) for r in roll.responses) / len(roll.responses),
        f"bo{n}_by_gold_vs_single_gold_winrate": float(best_of_n_win_rate(gold, gold, n).mean()),
        f"bo{n}_by_rm_vs_single_gold_winrate": float(best_of_n_win_rate(rm, gold, n).mean()),
        f"wo{n}_by_rm_vs_single_gold_winrate": float(best_of_n_win_rate(-rm, gold, n).mean()),
        "rm_pairwise_gold_accuracy": pairwise_accuracy(rm, gold),
    }
