"""Offline baselines the paper compares against, trained on (best, worst)-of-N reference samples.

* ``bon_sft`` -- best-of-N distillation by SFT on the best of N (``training/algorithms/bon_sft.py``);
* ``ipo`` -- IPO on (best, worst)-of-N pairs, the BoNBoN recipe (``training/algorithms/ipo.py``).

This module draws the data (docs/method.md §6, "Offline baselines"); the algorithm class builds the
Lightning module and loader that fit it.

(The RL form of best-of-N distillation is an experiment entry: ``transform=log`` with
``algo.beta = 1/(N-1)``, see ``conf/experiment/toy_bon_distill.yaml``.)
"""

from __future__ import annotations

from infalign.pipeline.pools import draw_pool
from infalign.pipeline.trainer import StageTrainers, TrainerFactory
from infalign.training.algorithms import OfflineAlgorithm


def best_and_worst_of_n(world, prompts: list[str], n: int, gen_cfg, trainer: TrainerFactory, seed: int):
    """Per prompt, the reward model's best and worst of ``n`` reference samples (texts), drawn with
    ``trainer`` (a ``predict`` factory)."""
    pool = draw_pool(world.reference, world.tokenizer, prompts, n, {"reward": world.reward}, gen_cfg,
                     trainer, seed, keep_responses=True)
    scores, texts = pool["scores"]["reward"], pool["responses"]
    best, worst = scores.argmax(dim=1).tolist(), scores.argmin(dim=1).tolist()
    return [t[i] for t, i in zip(texts, best)], [t[i] for t, i in zip(texts, worst)]


def fit_offline(algo: OfflineAlgorithm, world, gen_cfg, trainers: StageTrainers, seed: int) -> dict:
    """Draw ``algo.cfg.n_samples`` reference samples per training prompt (``trainers.predict``), keep
    the reward model's (best, worst), and fit the algorithm's module on them for ``algo.cfg.steps``
    steps (``trainers.fit``)."""
    prompts, n = world.train_prompts, algo.cfg.n_samples
    best, worst = best_and_worst_of_n(world, prompts, n, gen_cfg, trainers.predict, seed)
    module, loader = algo.fit_module(world.policy, world.reference, world.tokenizer, prompts, best, worst, seed)
    world.policy.train()
    trainers.fit(max_steps=algo.cfg.steps).fit(module, loader)
    return {"offline_pairs": len(prompts), "offline_n": n}
