"""Offline baselines the paper compares against, trained on (best, worst)-of-N reference samples.

* ``bon_sft`` -- best-of-N distillation by SFT on the best of N (``training/algorithms/bon_sft.py``);
* ``ipo`` -- IPO on (best, worst)-of-N pairs, the BoNBoN recipe (``training/algorithms/ipo.py``).

This module draws the data (docs/method.md §6, "Offline baselines"); the algorithm class builds the
Lightning module and loader that fit it.

(The RL form of best-of-N distillation is an experiment entry: ``transform=log`` with
``algo.beta = 1/(N-1)``, see ``conf/experiment/toy_bon_distill.yaml``.)
"""

from __future__ import annotations

import logging

from torch.utils.data import DataLoader

from infalign.data.batches import SampledResponses, StepBatches
from infalign.infra import distributed
from infalign.pipeline.pools import draw_pool
from infalign.pipeline.trainer import StageTrainers, TrainerFactory, fit_steps
from infalign.training.algorithms import OfflineAlgorithm

log = logging.getLogger(__name__)


def best_and_worst_of_n(world, prompts: list[str], n: int, gen_cfg, trainer: TrainerFactory, seed: int,
                        ) -> tuple[SampledResponses, SampledResponses]:
    """Per prompt, the reward model's best and worst of ``n`` reference samples, drawn with ``trainer``
    (a ``predict`` factory): each as sampled (:class:`~infalign.data.batches.SampledResponses`: the
    token ids, the stop token last only where the response ended, and the ``ended`` flags), which the
    offline algorithms train on -- not the decoded texts re-encoded with an eos appended."""
    pool = draw_pool(world.reference, world.tokenizer, prompts, n, {"reward": world.reward}, gen_cfg,
                     trainer, seed, keep_responses=True, keep_ids=True)
    scores = pool["scores"]["reward"]

    def pick(index: list[int]) -> SampledResponses:
        return SampledResponses(ids=[ids[i] for ids, i in zip(pool["response_ids"], index)],
                                ended=[bool(e[i]) for e, i in zip(pool["ended"].tolist(), index)],
                                texts=[t[i] for t, i in zip(pool["responses"], index)])

    return pick(scores.argmax(dim=1).tolist()), pick(scores.argmin(dim=1).tolist())


def fit_offline(algo: OfflineAlgorithm, world, gen_cfg, trainers: StageTrainers, seed: int,
                ckpt_path: str | None = None, step_indexed: bool = False) -> dict:
    """Draw ``algo.cfg.n_samples`` reference samples per training prompt (``trainers.predict``), keep
    the reward model's (best, worst) as sampled (:func:`best_and_worst_of_n`), and fit the algorithm's
    module on them for ``algo.cfg.steps`` steps (``trainers.fit``), continuing ``ckpt_path`` if given.
    Returns ``{pairs, n, cut_best, cut_worst}``: the pair count, ``n`` and how many best / worst picks were
    cut at ``max_new_tokens`` (also logged) -- ``metrics.json``'s ``offline``.

    ``step_indexed`` (:func:`offline_resumable`): the module reads step ``s``'s batch as
    ``StepBatches(loader)[s]`` -- the batches the algorithm's shuffling loader gives a Lightning fit, epoch
    after epoch -- and the loader only counts steps, so a resume continues with the batches an
    uninterrupted run has (``training/step_batches.py``). Otherwise Lightning iterates the algorithm's
    loader itself (shards it under DDP, accumulates, limits epochs), which a resume does not restore."""
    prompts, n = world.train_prompts, algo.cfg.n_samples
    best, worst = best_and_worst_of_n(world, prompts, n, gen_cfg, trainers.predict, seed)
    cut = {name: len(r) - sum(r.ended) for name, r in (("best", best), ("worst", worst))}
    if any(cut.values()):
        log.info("offline %s: %d best and %d worst of %d picks were cut at max_new_tokens=%s without a stop "
                 "token; they are trained as sampled, without one", algo.name, cut["best"], cut["worst"],
                 len(prompts), gen_cfg.max_new_tokens)
    module, loader = algo.fit_module(world.policy, world.reference, world.tokenizer, prompts, best, worst, seed)
    if step_indexed:
        module.step_batches = StepBatches(loader)
        loader = DataLoader(range(algo.cfg.steps), batch_size=None)  # counts steps (the module reads its batch)
    world.policy.train()
    fit_steps(trainers, module, loader, algo.optimizer_steps, algo.cfg.steps, ckpt_path)
    return {"pairs": len(prompts), "n": n, "cut_best": cut["best"], "cut_worst": cut["worst"]}


def offline_resumable(trainer_cfg) -> bool:
    """Whether an offline algorithm's fit takes step-indexed batches, and so resumes exactly: one process
    (no torchrun / srun launch) and a trainer (``conf/trainer``) that takes each of the loader's batches
    once per optimizer step, in order -- ``strategy: auto`` (a DDP / FSDP strategy, even on one device,
    swaps in a distributed sampler), no gradient accumulation, no ``max_epochs``, ``limit_train_batches``
    or ``overfit_batches``. Otherwise the fit is the loader's own, as before offline runs resumed."""
    t = dict(trainer_cfg or {})
    return (not distributed.launched_externally() and t.get("strategy", "auto") in ("auto", None)
            and t.get("accumulate_grad_batches", 1) == 1 and t.get("max_epochs") in (None, -1)
            and t.get("limit_train_batches") in (None, 1, 1.0) and not t.get("overfit_batches"))
