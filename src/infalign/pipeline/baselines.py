"""Offline baselines the paper compares against, trained on (best, worst)-of-N reference samples.

* ``bon_sft`` -- best-of-N distillation by SFT: for every training prompt draw N reference samples,
  keep the one the reward model ranks highest, fine-tune the policy on it (response-only NLL).
  Its target is the best-of-N policy itself, i.e. the KL-RL solution with Phi = log u at
  beta = 1/(N-1) (docs/method.md §4) -- which is what the theory column reports for it.
* ``ipo`` -- IPO on (best, worst)-of-N pairs (the BoNBoN recipe), tau = ``algo.beta``.

(The RL form of best-of-N distillation is an experiment entry: ``transform=log`` with
``algo.beta = 1/(N-1)``, see ``conf/experiment/toy_bon_distill.yaml``.)
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from infalign.pipeline.pools import draw_pool
from infalign.training.ipo import IPOModule
from infalign.training.pretrain import LMPretrainModule, TextPairs, make_lm_dataloader

OFFLINE_ALGOS = ("bon_sft", "ipo")


def best_and_worst_of_n(world, prompts: list[str], n: int, gen_cfg, trainer_kwargs, seed: int):
    """Per prompt, the reward model's best and worst of ``n`` reference samples (texts)."""
    pool = draw_pool(world.reference, world.tokenizer, prompts, n, {"reward": world.reward}, gen_cfg,
                     trainer_kwargs, seed, keep_responses=True)
    scores, texts = pool["scores"]["reward"], pool["responses"]
    best, worst = scores.argmax(dim=1).tolist(), scores.argmin(dim=1).tolist()
    return [t[i] for t, i in zip(texts, best)], [t[i] for t, i in zip(texts, worst)]


class _PairCollator:
    """(prompt, chosen, rejected) -> left-padded prompt ids + right-padded response ids (+ eos)."""

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer

    def _responses(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = [r + [self.tok.eos_token_id] for r in self.tok(texts, add_special_tokens=False)["input_ids"]]
        width = max(len(r) for r in ids)
        out = torch.full((len(ids), width), self.tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, r in enumerate(ids):
            out[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
        return out, mask

    def __call__(self, batch):
        prompts, chosen, rejected = zip(*batch)
        self.tok.padding_side = "left"
        enc = self.tok(list(prompts), add_special_tokens=False, padding=True, return_tensors="pt")
        c_ids, c_mask = self._responses(list(chosen))
        r_ids, r_mask = self._responses(list(rejected))
        return {"prompt_ids": enc["input_ids"], "prompt_mask": enc["attention_mask"], "chosen_ids": c_ids,
                "chosen_mask": c_mask, "rejected_ids": r_ids, "rejected_mask": r_mask}


def fit_offline(name: str, world, rl, n: int, gen_cfg, trainer_kwargs, fit_kwargs: dict, seed: int) -> dict:
    """Build the (best, worst)-of-N data and fit ``bon_sft`` or ``ipo``; returns data statistics."""
    prompts = world.train_prompts
    best, worst = best_and_worst_of_n(world, prompts, n, gen_cfg, trainer_kwargs, seed)
    if name == "bon_sft":
        module = LMPretrainModule(world.policy, lr=rl.lr, warmup=0, weight_decay=rl.weight_decay)
        loader = make_lm_dataloader(world.tokenizer, prompts, best, batch_size=rl.prompts_per_step, seed=seed)
    elif name == "ipo":
        module = IPOModule(world.policy, world.reference, tau=rl.beta, lr=rl.lr, weight_decay=rl.weight_decay)
        loader = DataLoader(TextPairs(prompts, best, worst), batch_size=rl.prompts_per_step, shuffle=True,
                            generator=torch.Generator().manual_seed(seed), collate_fn=_PairCollator(world.tokenizer))
    else:
        raise ValueError(f"not an offline algo: {name}")
    world.policy.train()
    L.Trainer(max_steps=rl.steps, **fit_kwargs).fit(module, loader)
    return {"offline_pairs": len(prompts), "offline_n": n}
