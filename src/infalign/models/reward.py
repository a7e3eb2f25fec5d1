"""Reward scorers: one small interface, ``score(prompts, responses) -> float32 [B]``.

RL, calibration and evaluation only ever call ``score``; whether it is a learned
sequence-classification model (:class:`RewardScorer`), a user's own scorer named by a config entry's
``_target_`` (:class:`CheckedScorer`, ``reward=<entry>``; docs/architecture.md §6) or the toy world's
programmatic gold reward (:class:`GoldScorer`, the evaluation's second judge) is a config choice.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Protocol, runtime_checkable

import torch

from infalign.errors import ConfigError
from infalign.models.builders import (
    appended_eos,
    encode_prompt_response,
    min_row_length,
    response_lead,
    row_special_tokens,
)
from infalign.models.generation import length_buckets

log = logging.getLogger(__name__)

__all__ = [
    "MODEL_INPUTS",
    "PAD_IS_EOS_READ",
    "REWARD_INPUTS",
    "REWARD_PROMPT_FORMATS",
    "REWARD_INPUT_VERSION",
    "CheckedScorer",
    "GoldScorer",
    "RewardScorer",
    "Scorer",
    "check_finite",
    "check_reward_max_length",
    "reward_input_format",
    "reward_model_inputs",
    "reward_prompts",
    "score_rows",
]

# Bump when reward_model_inputs changes: it is part of every trained reward model's cache key.
REWARD_INPUT_VERSION = "rm-input-v3"  # v3: responses without leading whitespace; the text-pair layout
REWARD_INPUTS = ("joined", "pair")  # reward.input
REWARD_PROMPT_FORMATS = ("full", "last_user_turn")  # reward.prompt_format
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # what the model reads of an encoding


@runtime_checkable
class Scorer(Protocol):
    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """Scalar reward per (prompt, response) pair: float32 ``[B]`` on the CPU."""
        ...


def check_finite(scores: torch.Tensor, what: str) -> torch.Tensor:
    """Raise ``FloatingPointError`` naming the offending rows if any score is NaN or infinite."""
    bad = ~torch.isfinite(scores)
    if bad.any():
        rows = bad.nonzero().flatten()[:10].tolist()
        raise FloatingPointError(
            f"{what} produced {int(bad.sum())} non-finite scores (rows {rows}...); "
            f"its weights, code or inputs are broken"
        )
    return scores


def reward_prompts(prompts: list[str], prompt_format: str = "full") -> list[str]:
    """The prompt text a reward model reads (``reward.prompt_format``): ``full`` -- the dataset's prompt
    as is (every prompt of the toy world and TL;DR; the whole HH dialogue with its ``Human:`` /
    ``Assistant:`` markers); ``last_user_turn`` -- the text of an HH dialogue's last Human turn alone, no
    markers (:func:`~infalign.data.formats.split_turns`; a prompt without turns is its stripped text),
    the *question* of OpenAssistant's DeBERTa reward models, trained as ``tokenizer(question, answer)``
    with the HH question stripped of its markers (docs/method.md §6, "The reward model's prompt")."""
    if prompt_format == "full":
        return list(prompts)
    if prompt_format != "last_user_turn":
        raise ValueError(f"prompt_format={prompt_format!r}: one of {REWARD_PROMPT_FORMATS}")
    from infalign.data.formats import split_turns

    return [next(m["content"] for m in reversed(split_turns(p)) if m["role"] == "user") for p in prompts]


def reward_model_inputs(
    tokenizer, prompts: list[str], responses: list[str], max_length: int | None = None, pair: bool = False,
    prompt_format: str = "full", ended: list[bool] | None = None,
) -> dict[str, torch.Tensor]:
    """How a reward model sees ``(prompt, response)`` -- the one encoding used by Bradley-Terry
    training (:class:`~infalign.data.batches.PreferenceCollator`) and by every scoring call
    (:class:`RewardScorer`: calibration, RL, evaluation).

    ``prompt`` is the *dataset's* prompt text (e.g. HH's ``"\n\nHuman: ...\n\nAssistant:"``), never
    the policy's chat-templated rendering. ``response`` starts the same way whoever wrote it: the
    datasets' responses are stored without their leading space (``data/formats.py``) while a policy
    continuing ``"Assistant:"`` samples ``" Sure"``, so the leading whitespace is dropped and, in a
    joined row, :func:`~infalign.models.builders.response_lead` put back -- one space for a byte-level
    BPE tokenizer, which reads ``" Sure"`` after ``"Assistant:"`` in the datasets' text (and in the
    public reward models' training rows: cleanrl's TL;DR models read ``"...TL;DR: summary<eos>"``, scored
    at that eos when the rows are padded with their own ``[PAD]``: ``reward.pad_token``),
    nothing for tokenizers that ignore the space or add their own; an empty response stays empty (no
    lone space token before its eos). A text pair gets no space
    (``tokenizer(prompt, response)`` encodes the response on its own).
    ``reward.input`` (``pair``): ``joined`` is ``[prefix] prompt response [end]`` with the reward
    tokenizer's own special tokens (``[CLS] ... [SEP]`` for an encoder, ``<s> ... </s>`` for a
    Llama-style model); ``pair`` is its text-pair template ``[CLS] prompt [SEP] response [SEP]`` with
    token types, for cross-encoders trained as ``tokenizer(question, answer)`` (OpenAssistant's
    DeBERTa reward models). ``reward.prompt_format`` (``prompt_format``) chooses what of the prompt it
    reads (:func:`reward_prompts`: the whole dataset prompt, or an HH dialogue's last Human turn).
    ``ended`` (per row, None: all): a response that did not end (it hit ``max_new_tokens``) gets no appended
    eos (:class:`RewardScorer`'s ``unended_eos``). See :func:`~infalign.models.builders.encode_prompt_response`.
    """
    lead = "" if pair else response_lead(tokenizer)
    return encode_prompt_response(
        tokenizer, reward_prompts(prompts, prompt_format), [lead + r.lstrip() if r.strip() else "" for r in responses],
        append_eos=True,
        max_length=max_length,
        special_tokens=True, pair=pair, ended=ended,
    )


# Where a causal LM's sequence classifier reads the score when the tokenizer pads with its eos (GPT-2, Pythia):
# HF's *ForSequenceClassification heads read each row at its last token that is not config.pad_token_id (the
# attention mask aside), so the eos appended to the row counts as padding and the score is read at the
# response's last token -- as in a reward model trained here or by TRL with that tokenizer (the same rows).
PAD_IS_EOS_READ = "score read at the last token before padding (pad == eos: the appended {eos} counts as padding)"


def reward_input_format(tokenizer, max_length: int | None = None, pair: bool = False,
                        prompt_format: str = "full", unended_eos: bool = True) -> str:
    """A short description of :func:`reward_model_inputs` for ``tokenizer``, recorded in the trained
    reward model's cache key and in ``metrics.json``; e.g.
    ``'rm-input-v3:[CLS]{prompt}{response}[SEP];max_length=512'``, for a byte-level BPE tokenizer
    ``'rm-input-v3:{prompt} {response}<|endoftext|>'`` (the response's leading space,
    :func:`~infalign.models.builders.response_lead`) or, with ``pair``,
    ``'rm-input-v3:[CLS]{prompt}[SEP]{response}[SEP]'``.

    When the row ends with the eos and the tokenizer pads with the eos too (GPT-2 / Pythia tokenizers
    have no pad token: :func:`~infalign.models.builders.load_tokenizer` makes eos the pad), it also
    says where the score is read: HF's causal-LM sequence classifiers read each row at its last token
    that is not the pad id, so the appended eos reads as padding and the score is the one at the
    response's last token (:data:`PAD_IS_EOS_READ`, e.g. ``'rm-input-v3:{prompt}
    {response}<|endoftext|>;score read at the last token before padding (pad == eos: the appended
    <|endoftext|> counts as padding)'``). That is where reward models trained here (and by TRL) on
    these rows read it too, so the rows are left as they are; with a distinct pad (the toy world's
    ``<pad>``) the score is read at the eos and nothing is added (those formats -- cache keys -- are
    unchanged). A ``prompt_format`` other than ``full`` is shown in the prompt's place
    (``'rm-input-v3:[CLS]{last_user_turn}[SEP]{response}[SEP]'``; ``full`` keeps ``{prompt}``). Where the
    appended eos is read (a pad of its own) and ``unended_eos`` is false, ``;no <eos> after an unended
    response`` (:func:`eos_says_ended`)."""

    def show(ids: list[int]) -> str:
        return "".join(tokenizer.convert_ids_to_tokens(ids))

    prefix, middle, end, _ = row_special_tokens(tokenizer, append_eos=True, pair=pair)
    lead = "" if pair else response_lead(tokenizer)  # (shown only where it exists: older keys stay valid)
    shown = "prompt" if prompt_format == "full" else prompt_format
    text = f"{REWARD_INPUT_VERSION}:{show(prefix)}{{{shown}}}{show(middle)}{lead}{{response}}{show(end)}"
    eos = tokenizer.eos_token_id
    if eos is not None and end == [eos] and tokenizer.pad_token_id == eos:
        text += ";" + PAD_IS_EOS_READ.format(eos=show([eos]))
    if not unended_eos and eos_says_ended(tokenizer, pair):
        text += f";no {show([eos])} after an unended response"
    return text + (f";max_length={max_length}" if max_length else "")


def eos_says_ended(tokenizer, pair: bool = False) -> bool:
    """Whether the reward model reads the eos :func:`reward_model_inputs` appends -- a joined row that ends with
    the eos appended (not a tokenizer's own closing token: an encoder reads its score at [CLS] / <s>), padded with
    a pad of its own (with pad == eos the classifier reads the token before it,
    :data:`PAD_IS_EOS_READ`): only then does an eos after a response that hit ``max_new_tokens`` tell it,
    wrongly, that the response ended."""
    return appended_eos(tokenizer, pair=pair) and tokenizer.pad_token_id not in (None, tokenizer.eos_token_id)


def check_reward_max_length(tokenizer, max_length: int | None, pair: bool = False) -> None:
    """``reward.max_length`` (None: no cut) must hold a row's special tokens and one prompt and one
    response token (:func:`~infalign.models.builders.min_row_length` of :func:`reward_model_inputs`'
    layout): a shorter one is a ``ConfigError`` naming ``reward.max_length``, before any compute."""
    if max_length is None:
        return
    least = min_row_length(tokenizer, append_eos=True, pair=pair)
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < least:
        raise ConfigError("reward.max_length", max_length, f"null or an integer >= {least}",
                          f"{least - 2} special tokens of the reward tokenizer's "
                          f"{'text-pair' if pair else 'joined'} row plus one prompt and one response token")


def dataset_texts(prompts: list[str], dataset_prompts: Mapping[str, str] | None) -> list[str]:
    """The dataset's text of each prompt (``dataset_prompts``: the policy's rendering -> the dataset prompt),
    what a reward reads; the prompts themselves without a map. A prompt the map lacks is a KeyError: its text
    is unknown (a reward model and a custom scorer alike; the custom scorer had read the rendering instead)."""
    if dataset_prompts is None:
        return list(prompts)
    missing = [p for p in prompts if p not in dataset_prompts]
    if missing:
        raise KeyError(f"{len(missing)} prompts are not among the world's prompts, so their dataset text "
                       f"(what the reward reads) is unknown; first: {missing[0][:200]!r}")
    return [dataset_prompts[p] for p in prompts]


class RewardScorer:
    """Score with a sequence-classification model whose single logit is the reward.

    Inputs are built by :func:`reward_model_inputs` (with ``pair`` and ``prompt_format``, the
    ``reward.input`` / ``reward.prompt_format`` settings), the encoding the reward model is trained on.
    ``dataset_prompts`` maps the prompts callers pass (the policy's rendering, e.g. chat-templated)
    back to the dataset prompt text the reward model reads; with a mapping, an unknown prompt is an
    error (it would be scored in a format the reward model never saw). Runs in eval mode under
    ``no_grad`` on the model's device, ``batch_size`` rows at a time; returns CPU float32.
    (The model is switched to eval mode on every call; its parameters are left untouched.)
    """

    def __init__(
        self,
        model,
        tokenizer,
        batch_size: int = 64,
        max_length: int | None = None,
        dataset_prompts: Mapping[str, str] | None = None,
        pair: bool = False,
        prompt_format: str = "full",
        unended_eos: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_length, self.pair = batch_size, max_length, pair
        self.dataset_prompts = dataset_prompts
        check_reward_max_length(tokenizer, max_length, pair)
        reward_prompts([], prompt_format)  # (an unknown format fails here, not at the first score)
        self.prompt_format = prompt_format
        # an unended response without the eos where the model reads it (reward.unended_eos: false); the toy
        # world's reward model was trained with it after every response, so it is scored so
        self.drop_unended_eos = not unended_eos and eos_says_ended(tokenizer, pair)
        self.input_format = reward_input_format(tokenizer, max_length, pair, prompt_format, unended_eos)
        self.warned_truncation = False

    def score(self, prompts: list[str], responses: list[str], ended: list[bool] | None = None) -> torch.Tensor:
        return self.score_and_cut(prompts, responses, ended)[0]

    @torch.no_grad()
    def score_and_cut(self, prompts: list[str], responses: list[str], ended: list[bool] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores, cut)``: :meth:`score`'s float32 ``[B]``, and bool ``[B]``, whether the row's input was
        longer than ``max_length`` and cut (the prompt first, from the left) -- a score of less than the whole
        conversation, which the pools keep and the run records (``eval.reward_cut``). ``ended`` (per row; None:
        all): whether each response ended, read where ``unended_eos`` is false and the model reads the eos."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        ended = [bool(e) for e in ended] if ended is not None and self.drop_unended_eos else None
        prompts = dataset_texts(prompts, self.dataset_prompts)
        self.model.eval()
        device = next(self.model.parameters()).device
        # float32 whatever default dtype a caller set (Lightning's *-true precisions set it for its steps), and
        # without a surrounding autocast (Lightning's *-mixed): the weights' own dtype (reward.dtype) decides
        scores = torch.zeros(len(prompts), dtype=torch.float32)
        cut = torch.zeros(len(prompts), dtype=torch.bool)
        with torch.autocast(device.type, enabled=False):
            for idx, enc in self.encoded_chunks(prompts, responses, ended):
                logits = self.model(**{k: enc[k].to(device) for k in MODEL_INPUTS if k in enc}).logits
                scores[idx] = logits[:, 0].float().cpu()
                cut[idx] = enc["truncated"].bool().cpu()
                self._warn_truncation(enc["truncated"])
        return check_finite(scores, "reward model"), cut

    def _warn_truncation(self, truncated: torch.Tensor) -> None:
        """Say once per scorer that inputs over ``max_length`` are being cut (prompt first, from the
        left; :func:`~infalign.models.builders.encode_prompt_response`): the reward model then scores
        less than the whole conversation."""
        if self.warned_truncation or not bool(truncated.any()):
            return
        self.warned_truncation = True
        log.warning("reward model inputs longer than reward.max_length=%s tokens are cut (the prompt first, "
                    "from the left; then the response's end): %d of %d rows in this batch; a larger "
                    "reward.max_length (up to the model's positions) reads them whole", self.max_length,
                    int(truncated.sum()), truncated.numel())

    def chunks(self, prompts: list[str], responses: list[str]) -> list[torch.Tensor]:
        """Row indices per forward: :func:`~infalign.models.generation.length_buckets` by text length
        (a proxy for their tokens), at most ``batch_size`` rows each, so each forward is padded to the
        length of rows like its own, not to the longest of all. Each score is its row's alone."""
        if not prompts:
            return []
        lengths = torch.tensor([len(p) + len(r) for p, r in zip(prompts, responses)])
        return length_buckets(lengths, max_rows=self.batch_size)

    def encoded_chunks(self, prompts: list[str], responses: list[str], ended: list[bool] | None = None
                       ) -> Iterator[tuple[torch.Tensor, dict]]:
        """``(row indices, encoding)`` of each forward :meth:`score` runs: the :meth:`chunks`, each
        encoded by :func:`reward_model_inputs` with this scorer's ``max_length`` and layout (``prompts``
        already the dataset's text; ``ended`` as :meth:`score_and_cut` passes it)."""
        for idx in self.chunks(prompts, responses):
            yield idx, reward_model_inputs(self.tokenizer, [prompts[i] for i in idx], [responses[i] for i in idx],
                                           max_length=self.max_length, pair=self.pair,
                                           prompt_format=self.prompt_format,
                                           ended=None if ended is None else [ended[i] for i in idx])


def score_rows(scorer: Scorer, prompts: list[str], responses: list[str], ended=None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(scores, cut)`` of any scorer: a reward model's ``score_and_cut`` (``cut``: bool ``[B]``, the rows it read
    cut at ``max_length``; ``ended``, bool ``[B]`` or None, whether each response ended: a reward model reads it,
    :class:`RewardScorer`), else its ``score`` and None (a scorer that reads no tokens)."""
    if callable(getattr(scorer, "score_and_cut", None)):
        if ended is not None and getattr(scorer, "drop_unended_eos", False):  # (only a scorer that reads it)
            return scorer.score_and_cut(prompts, responses, ended)
        return scorer.score_and_cut(prompts, responses)
    return scorer.score(prompts, responses), None


class CheckedScorer:
    """A custom scorer (``reward._target_``, any object with ``score(prompts, responses)``) held to what every
    reward model gives: one finite number per pair, returned as float32 ``[B]`` on the CPU -- a wrong count or
    shape is a ValueError naming the scorer, a NaN or infinite score a FloatingPointError (:func:`check_finite`).
    It is called as :class:`RewardScorer` runs: without a graph and outside any autocast; a torch module it
    holds as ``model`` follows the run to its device. A scorer whose scores depend on more than its entry and
    its module's code (weights read from a path) says so with a ``fingerprint`` attribute, part of its key."""

    def __init__(self, scorer, name: str, dataset_prompts: Mapping[str, str] | None = None) -> None:
        if not callable(getattr(scorer, "score", None)):
            raise TypeError(f"reward._target_={name} built a {type(scorer).__name__}, which has no "
                            "score(prompts, responses) method")
        self.scorer, self.name, self.dataset_prompts = scorer, name, dataset_prompts

    @property
    def input_format(self) -> str:
        """What it reads (``world.stats["reward_input_format"]``): the texts, through its own code."""
        return f"custom scorer {self.name} (prompt and response texts)"

    @property
    def model(self):
        """The scorer's own ``model`` (a torch module it runs), if it has one: the stages move it to the run's
        device, as a reward model's."""
        model = getattr(self.scorer, "model", None)
        return model if isinstance(model, torch.nn.Module) else None

    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        # the dataset's prompt text, as a reward model reads it (not the policy's chat-templated rendering)
        texts = dataset_texts(prompts, self.dataset_prompts)
        # as a reward model scores: no graph, and no surrounding autocast (Lightning's *-mixed) rounding it
        with torch.no_grad(), torch.autocast("cpu", enabled=False), (
                torch.autocast("cuda", enabled=False) if torch.cuda.is_available() else contextlib.nullcontext()):
            out = self.scorer.score(texts, list(responses))
        try:
            scores = torch.as_tensor(out).detach().to("cpu", torch.float32)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"reward scorer {self.name} returned a {type(out).__name__} that is not numbers "
                             f"({exc}): one float per pair expected (a list, a numpy array or a tensor)") from exc
        if scores.shape != (len(prompts),):
            raise ValueError(f"reward scorer {self.name} returned scores of shape {tuple(scores.shape)} for "
                             f"{len(prompts)} pairs (one number per pair expected)")
        return check_finite(scores, f"reward scorer {self.name}")


class GoldScorer:
    """The toy world's gold reward ``r*(x, y)`` behind the :class:`Scorer` interface."""

    def __init__(self, world):
        self.world = world

    @property
    def fingerprint(self) -> str:
        """What its scores depend on: the world's parameters (a cache key; docs/method.md §11)."""
        return f"gold:{self.world.fingerprint}"

    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        return check_finite(self.world.gold_reward(prompts, responses), "gold reward")
