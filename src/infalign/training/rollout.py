"""Sampling + scoring as a Lightning predict loop (calibration pools and evaluation pools).

``trainer.predict(RolloutModule(...), prompt_loader(prompts))`` samples ``num_samples`` responses
per prompt and scores them with every scorer; with a ``reference`` model it also returns each
sample's log-ratio sum (for KL). Running it through ``Trainer.predict`` gives the same rich progress
bar, devices and (later) distributed sharding as training.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from infalign.infra.distributed import all_gather_objects
from infalign.math.rl_objectives import kl_penalty
from infalign.models.generation import rollout_logprobs, sample, sequence_logprobs
from infalign.models.reward import Scorer, score_rows


class _PromptBatches(Dataset):
    """Item i is the i-th whole batch ``{"index": [b], "prompt": [b]}`` of this rank's share."""

    def __init__(self, prompts: list[str], batches: list[list[int]]) -> None:
        self.prompts, self.batches = prompts, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        idx = self.batches[i]
        return {"index": torch.tensor(idx, dtype=torch.long), "prompt": [self.prompts[j] for j in idx]}


def prompt_loader(prompts: list[str], batch_size: int, rank: int = 0, world_size: int = 1) -> DataLoader:
    """Deterministic ``{"index": [b], "prompt": [b]}`` batches; rank r gets batches r, r+W, ...

    Whole batches are sharded (not single prompts), so each batch -- and its random stream --
    is the same whatever the number of ranks; uneven splits just give some ranks one batch less.
    """
    if not prompts:
        raise ValueError("no prompts: the prompt set is empty (check data.* sizes / files)")
    batches = [list(range(i, min(i + batch_size, len(prompts)))) for i in range(0, len(prompts), batch_size)]
    share = batches[rank::world_size] or [[]]  # an empty batch: Lightning needs >= 1 per rank
    return DataLoader(_PromptBatches(prompts, share), batch_size=None, collate_fn=_whole_batch)


def _whole_batch(batch: dict) -> dict:
    return batch


def step_generator(seed: int, *step: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator seeded from (seed, step...) -- identical draws wherever a run resumes."""
    g = torch.Generator(device=device)
    g.manual_seed(hash((int(seed), *map(int, step))) & 0x7FFF_FFFF_FFFF_FFFF)
    return g


class RolloutModule(L.LightningModule):
    """predict_step -> ``{"index": [b], "scores": {name: [b, n]}, "cut": {name: [b, n] bool} of the scorers that
    say which rows they read cut (a reward model's ``score_and_cut``), "log_ratio": [b, n] | None,
    "responses": [b][n] texts if keep_responses, "response_ids": [b][n] token-id lists if keep_ids,
    "lengths": [b, n], "ended": [b, n]}`` (response tokens incl. the stop token; whether it ended
    with one, see ``generation.Rollout``). ``response_ids`` are the sampled ids themselves (the
    stop token last where the response ended), which the decoded text does not always give back
    (a non-canonical BPE split, a special token the decoding skips)."""

    def __init__(
        self,
        policy,
        tokenizer,
        scorers: dict[str, Scorer],
        num_samples: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        seed: int = 0,
        reference=None,
        keep_responses: bool = False,
        prompts: list[str] | None = None,
        batch_size: int = 64,
        top_k: int | None = None,
        top_p: float = 1.0,
        keep_ids: bool = False,
    ) -> None:
        super().__init__()
        self.prompts, self.batch_size = prompts, batch_size
        self.policy = policy
        self._reference = [reference]  # not a registered submodule: frozen, never checkpointed
        self.tokenizer, self.scorers = tokenizer, scorers
        self.num_samples, self.max_new_tokens, self.temperature = (
            num_samples,
            max_new_tokens,
            temperature,
        )
        self.seed, self.keep_responses, self.keep_ids = seed, keep_responses, keep_ids
        self.top_k, self.top_p = top_k, top_p

    def predict_dataloader(self) -> DataLoader:
        """Built here, after the strategy knows this process's rank and the world size."""
        return prompt_loader(self.prompts, self.batch_size, self.global_rank, self.trainer.world_size)

    def on_predict_start(self) -> None:
        for scorer in self.scorers.values():  # learned scorers follow the module to its device
            model = getattr(scorer, "model", None)
            if model is not None:
                model.to(self.device)
        if self._reference[0] is not None:
            self._reference[0].to(self.device)

    @torch.no_grad()
    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        prompts, n = batch["prompt"], self.num_samples
        if not prompts:  # this rank's share of an uneven split is empty
            return None
        gen = step_generator(self.seed, int(batch["index"][0]), device=self.device)
        roll = sample(
            self.policy,
            self.tokenizer,
            prompts,
            n,
            self.max_new_tokens,
            self.temperature,
            self.top_k,
            generator=gen,
            top_p=self.top_p,
        )
        flat_prompts = [p for p in prompts for _ in range(n)]
        scores, cut = {}, {}
        for name, s in self.scorers.items():  # a reward model also says which rows it read cut (max_length)
            values, rows = score_rows(s, flat_prompts, roll.responses, roll.ended.tolist())
            scores[name] = values.view(len(prompts), n)
            if rows is not None:
                cut[name] = rows.view(len(prompts), n)
        log_ratio = None
        reference = self._reference[0]
        if reference is not None:
            ref_lp = sequence_logprobs(
                reference, roll.prompt_ids, roll.prompt_mask, roll.response_ids, roll.response_mask
            )
            kl = kl_penalty(rollout_logprobs(self.policy, roll), ref_lp, roll.response_mask, "k1")  # method.md §7
            log_ratio = kl.view(len(prompts), n).cpu()
        keep = [roll.responses[i * n : (i + 1) * n] for i in range(len(prompts))] if self.keep_responses else []
        ids = []
        if self.keep_ids:
            flat = [row[:k] for row, k in zip(roll.response_ids.tolist(), roll.response_lengths.tolist())]
            ids = [flat[i * n : (i + 1) * n] for i in range(len(prompts))]
        return {
            "index": batch["index"],
            "scores": scores,
            "cut": cut,
            "log_ratio": log_ratio,
            "responses": keep,
            "response_ids": ids,
            "lengths": roll.response_mask.sum(-1).view(len(prompts), n).cpu(),
            "ended": roll.ended.view(len(prompts), n).cpu(),
        }


def gather(outputs: list[dict], num_prompts: int | None = None) -> dict:
    """Every rank's predict outputs, in prompt order: scores ``{name: [P, n]}``, cut ``{name: [P, n]}``,
    log_ratio ``[P, n]``, lengths and ended ``[P, n]``, responses, response_ids (each empty when not kept).

    In a distributed run the per-rank lists are exchanged first (CPU tensors), so every rank ends
    with the full pool; each prompt index occurs exactly once. ``num_prompts``: every prompt index
    ``0 .. num_prompts-1`` must be there, else a RuntimeError -- a predict loop that a trainer setting
    stopped early (``limit_predict_batches``, ``fast_dev_run``) would otherwise give a partial pool
    that passes for the whole (and is cached under the whole prompt set's key).
    """
    outputs = [o for rank_outputs in all_gather_objects(_to_cpu(outputs)) for o in rank_outputs if o is not None]
    index = torch.cat([o["index"] for o in outputs]) if outputs else torch.zeros(0, dtype=torch.long)
    if len(torch.unique(index)) != len(index):
        raise RuntimeError("a prompt was sampled on more than one rank")
    if num_prompts is not None and sorted(index.tolist()) != list(range(num_prompts)):
        raise RuntimeError(f"the predict loop sampled {len(index)} of {num_prompts} prompts: a trainer setting "
                           "stopped it early (trainer.limit_predict_batches, trainer.fast_dev_run?); a partial "
                           "pool is neither used nor cached")
    order = torch.argsort(index)
    names = outputs[0]["scores"].keys()
    out = {
        "index": index[order],
        "scores": {k: torch.cat([o["scores"][k] for o in outputs])[order] for k in names},
        "cut": {k: torch.cat([o["cut"][k] for o in outputs])[order] for k in outputs[0].get("cut", {})},
        "lengths": torch.cat([o["lengths"] for o in outputs])[order],
        "ended": torch.cat([o["ended"] for o in outputs])[order],
        "responses": [flat[i] for i in order.tolist()] if (flat := _flat_responses(outputs)) else [],
        "response_ids": [flat[i] for i in order.tolist()] if (flat := _flat_responses(outputs, "response_ids"))
        else [],
    }
    out["log_ratio"] = (
        torch.cat([o["log_ratio"] for o in outputs])[order]
        if outputs[0]["log_ratio"] is not None
        else None
    )
    return out


def _flat_responses(outputs: list[dict], key: str = "responses") -> list[list]:
    return [per_prompt for o in outputs for per_prompt in o.get(key, [])]


def _to_cpu(outputs: list[dict]) -> list[dict]:
    def cpu(x):
        if isinstance(x, torch.Tensor):
            return x.cpu()
        if isinstance(x, dict):
            return {k: cpu(v) for k, v in x.items()}
        return x

    return [cpu(o) for o in outputs]
