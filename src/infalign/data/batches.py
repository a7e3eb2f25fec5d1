"""Batches of text for the LM / reward-model modules (layer 2: data, no Lightning).

* :class:`TextPairs` -- a dataset of parallel text columns (prompt, response[, rejected]);
* :class:`PromptResponseCollator` / :func:`make_lm_dataloader` -- response-only LM batches;
* :class:`PreferenceCollator` / :func:`make_preference_dataloader` -- Bradley-Terry batches
  (chosen rows then rejected rows of the same prompts);
* :class:`SampledResponses` -- sampled responses as the offline baselines train on them: the
  sampled token ids (stop token last where the response ended), ``ended`` flags, decoded texts;
* :class:`SampledResponseCollator` -- (prompt, sampled ids) -> response-only LM batches (BoN-SFT);
* :class:`PolicyPairCollator` -- (prompt, chosen ids, rejected ids) as the policy reads them (IPO);
* :class:`StepBatches` -- a shuffling loader's batches by optimisation step (exact resumes).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from infalign.models.builders import encode_prompt_response, pad_id, padded
from infalign.models.generation import prompt_ids_within
from infalign.models.reward import MODEL_INPUTS, reward_model_inputs


class TextPairs(Dataset):
    """Parallel lists of strings as a map-style dataset of tuples."""

    def __init__(self, *columns: list[str]):
        if len({len(c) for c in columns}) != 1:
            raise ValueError(f"columns differ in length: {[len(c) for c in columns]}")
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns[0])

    def __getitem__(self, i: int) -> tuple[str, ...]:
        return tuple(c[i] for c in self.columns)


class PromptResponseCollator:
    """``[(prompt, response), ...]`` -> ``input_ids, attention_mask, labels`` (labels ``-100``
    outside the response)."""

    def __init__(self, tokenizer, max_length: int | None = None):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, batch: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
        prompts, responses = zip(*batch)
        enc = encode_prompt_response(
            self.tokenizer, list(prompts), list(responses), max_length=self.max_length
        )
        labels = enc["input_ids"].masked_fill(enc["response_mask"] == 0, -100)
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "labels": labels,
        }


def make_lm_dataloader(
    tokenizer,
    prompts: list[str],
    responses: list[str],
    batch_size: int = 64,
    shuffle: bool = True,
    seed: int = 0,
    max_length: int | None = None,
) -> DataLoader:
    """A ``DataLoader`` of :class:`PromptResponseCollator` batches (seeded shuffling)."""
    return DataLoader(
        TextPairs(prompts, responses),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
        collate_fn=PromptResponseCollator(tokenizer, max_length),
    )


class PreferenceCollator:
    """``[(prompt, chosen, rejected), ...]`` -> one right-padded batch of ``2B`` rows: the first
    ``B`` are ``prompt + chosen``, the last ``B`` ``prompt + rejected`` (one forward pass), encoded
    by :func:`~infalign.models.reward.reward_model_inputs` -- exactly what the scorer feeds the
    trained model."""

    def __init__(self, tokenizer, max_length: int | None = None, pair: bool = False, prompt_format: str = "full"):
        self.tokenizer, self.max_length, self.pair, self.prompt_format = tokenizer, max_length, pair, prompt_format

    def __call__(self, batch: list[tuple[str, str, str]]) -> dict[str, torch.Tensor]:
        prompts, chosen, rejected = (list(c) for c in zip(*batch))
        enc = reward_model_inputs(
            self.tokenizer, prompts + prompts, chosen + rejected, max_length=self.max_length, pair=self.pair,
            prompt_format=self.prompt_format,
        )
        return {k: enc[k] for k in MODEL_INPUTS if k in enc}


def make_preference_dataloader(
    tokenizer,
    prompts: list[str],
    chosen: list[str],
    rejected: list[str],
    batch_size: int = 32,
    shuffle: bool = True,
    seed: int = 0,
    max_length: int | None = None,
    pair: bool = False,
    prompt_format: str = "full",
) -> DataLoader:
    """A ``DataLoader`` of :class:`PreferenceCollator` batches (``batch_size`` pairs each)."""
    return DataLoader(
        TextPairs(prompts, chosen, rejected),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
        collate_fn=PreferenceCollator(tokenizer, max_length, pair, prompt_format),
    )


@dataclass
class SampledResponses:
    """Responses as a sampler drew them (``pipeline/baselines.best_and_worst_of_n``), one per prompt:
    ``ids`` the sampled token ids -- the stop token last where the response ended, none where it was cut
    at ``max_new_tokens`` -- ``ended`` those flags, ``texts`` the decoded texts (reports, tests). The
    offline baselines train on ``ids``: decoding and re-encoding can give other tokens than those sampled
    (a byte-level BPE sampler may draw a non-canonical split, ``"Ġ" "can"`` for ``"Ġcan"``; decoding skips
    special tokens), and appending an eos to every text would end the cut responses too."""

    ids: list[list[int]]
    ended: list[bool]
    texts: list[str]

    def __post_init__(self) -> None:
        if not len(self.ids) == len(self.ended) == len(self.texts):
            raise ValueError(f"{len(self.ids)} ids, {len(self.ended)} ended flags, {len(self.texts)} texts")
        if any(not ids for ids in self.ids):
            raise ValueError("a sampled response has at least one token (its stop token)")

    def __len__(self) -> int:
        return len(self.ids)


class SampledResponseCollator:
    """``[(prompt, sampled response ids), ...]`` -> right-padded ``input_ids, attention_mask, labels``
    (labels ``-100`` outside the response): ``[prompt | response]`` with the prompt encoded as the
    sampler encodes it (:func:`~infalign.models.builders.encode_prompts`) and the response ids as
    sampled (:class:`SampledResponses`: the stop token is there where the response ended, and only
    there), so BoN-SFT's NLL is that of the very token sequences it distils. For a tokenizer that adds
    nothing after a text and a response that re-encodes to its own ids this is the row
    :class:`PromptResponseCollator` builds from the texts with its eos (the toy world's finished
    responses). ``prompt_limit`` (:func:`~infalign.models.generation.prompt_token_limit` of the sampler's
    model and ``max_new_tokens``): prompts longer than it are cut from the left as the sampler cut them
    (:func:`~infalign.models.generation.prompt_ids_within`), so each response is learnt in the context it
    was sampled in."""

    def __init__(self, tokenizer, prompt_limit: int | None = None):
        self.tokenizer, self.prompt_limit = tokenizer, prompt_limit

    def __call__(self, batch: list[tuple[str, list[int]]]) -> dict[str, torch.Tensor]:
        prompts, responses = zip(*batch)
        prompt_ids = prompt_ids_within(self.tokenizer, list(prompts), self.prompt_limit)[0]
        input_ids, attention_mask = padded([p + list(r) for p, r in zip(prompt_ids, responses)],
                                           pad_id(self.tokenizer))
        response_mask = torch.zeros_like(attention_mask)
        for i, (p, r) in enumerate(zip(prompt_ids, responses)):
            response_mask[i, len(p) : len(p) + len(r)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "labels": input_ids.masked_fill(response_mask == 0, -100)}


class PolicyPairCollator:
    """``[(prompt, chosen ids, rejected ids), ...]`` -> left-padded ``prompt_ids``/``prompt_mask`` and
    right-padded ``chosen_ids``/``chosen_mask``, ``rejected_ids``/``rejected_mask``, the layout
    :func:`~infalign.models.generation.sequence_logprobs` takes (as the sampler emits). The responses
    are the sampled ids (:class:`SampledResponses`: the stop token last where the response ended, none
    where it was cut). Prompts are tokenised as the sampler tokenises them
    (:func:`~infalign.models.builders.encode_prompts`: the tokenizer's leading special tokens, a
    Llama-style ``<s>``, never a trailing eos) and, longer than ``prompt_limit``, cut from the left as the
    sampler cut them (see :class:`SampledResponseCollator`): the pairs' log-ratios are taken in the context
    the policy is sampled in."""

    def __init__(self, tokenizer, prompt_limit: int | None = None) -> None:
        self.tok, self.prompt_limit = tokenizer, prompt_limit

    def _responses(self, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        return padded([list(r) for r in ids], pad_id(self.tok))

    def __call__(self, batch: list[tuple[str, str, str]]) -> dict[str, torch.Tensor]:
        prompts, chosen, rejected = zip(*batch)
        # as models/generation.sample: leading special tokens only (encode_prompts), cut to the limit, left-padded
        prompt_ids, prompt_mask = padded(prompt_ids_within(self.tok, list(prompts), self.prompt_limit)[0],
                                         pad_id(self.tok), left=True)
        c_ids, c_mask = self._responses(list(chosen))
        r_ids, r_mask = self._responses(list(rejected))
        return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "chosen_ids": c_ids,
                "chosen_mask": c_mask, "rejected_ids": r_ids, "rejected_mask": r_mask}


class StepBatches:
    """The batches a seeded shuffling ``DataLoader`` gives a Lightning fit, by optimisation step:
    ``batches[s]`` is the fit's ``s``-th batch (``len(loader)`` batches an epoch, epoch after epoch), so a
    module that reads its batch as ``batches[global_step]`` resumes from a checkpoint with the batches an
    uninterrupted run has -- where Lightning restarts a plain loader's epoch from its first batch.

    ``loader`` must shuffle with its own seeded, not yet used generator (``DataLoader(...,
    shuffle=True, generator=torch.Generator().manual_seed(seed))``). The order is replayed by an
    index-only twin (same batch size, ``drop_last`` and seed: each epoch draws from the one generator
    what the loader draws, the iterator's base seed and then the permutation), so only step ``s``'s
    rows are collated (``tests/test_data.py`` checks it against a Lightning fit of the loader itself)."""

    def __init__(self, loader: DataLoader):
        if not isinstance(loader.sampler, RandomSampler) or loader.generator is None or loader.batch_size is None:
            raise ValueError("StepBatches needs a DataLoader with shuffle=True, a batch_size and its own seeded "
                             "generator")
        if len(loader.dataset) == 0 or loader.drop_last and len(loader.dataset) < loader.batch_size:
            raise ValueError(f"StepBatches: {len(loader.dataset)} rows make no batch of {loader.batch_size}")
        self.dataset, self.collate_fn = loader.dataset, loader.collate_fn
        self._twin = DataLoader(range(len(loader.dataset)), batch_size=loader.batch_size, shuffle=True,
                                drop_last=loader.drop_last, collate_fn=list,
                                generator=torch.Generator().manual_seed(loader.generator.initial_seed()))
        self._order: list[list[int]] = []

    def indices(self, step: int) -> list[int]:
        """The dataset rows of step ``step`` (0-based)."""
        if step < 0:
            raise IndexError(f"step {step} < 0")
        while len(self._order) <= step:
            # Lightning takes len(loader) batches of an epoch and starts the next one without asking the
            # exhausted iterator for more -- which would draw the sampler's trailing (empty) permutation
            # from the generator when the rows fill the batches exactly: a plain for-loop's order differs
            self._order.extend(itertools.islice(iter(self._twin), len(self._twin)))
        return self._order[step]

    def __getitem__(self, step: int):
        return self.collate_fn([self.dataset[i] for i in self.indices(step)])
