"""The embedded toy world: a synthetic prompt-conditioned language with a programmatic gold reward.

Everything is text, so the rest of the pipeline (tokenise, sample, score, calibrate, train)
runs on it exactly as on real data. Words are whitespace separated:

- a **prompt** is 4-6 distinct *attribute* words (``a0 .. a{A-1}``) followed by the separator
  ``->``, e.g. ``"a3 a11 a0 a7 ->"``;
- a **response** is 6-16 *symbol* words (``b0 .. b{S-1}``), e.g. ``"b4 b4 b17 b2 b9 b20"``; the
  language model ends it with ``<eos>``, which is not part of the response text.

Hidden structure (all drawn once from ``seed``):

- every attribute ``a`` *likes* ``liked_per_attribute`` symbols ``S(a)``; a prompt likes the union
  ``L_x = U_{a in x} S(a)`` (about a third of the symbols);
- every attribute has a propensity weight ``w_a ~ N(0, propensity_sigma)``; the prompt's
  propensity (the inverse of its difficulty) is
  ``p_x = sigmoid(propensity_mean + sum_{a in x} w_a / sqrt(|x|))``.

Quality of a response ``y = (y_1..y_n)`` for prompt ``x`` (``n_min`` = the shortest behaviour
length, 6 by default)::

    q(x, y) = #{t : y_t in L_x} / max(n, n_min)  -  repeat_penalty * #{t >= 2 : y_t = y_{t-1}} / max(n - 1, 1)

(the first term rewards liked symbols and cannot be gamed by very short answers; the second
penalises immediate repeats). ``q = 0`` for an empty response; any word that is not a symbol
counts as a token that is not liked.

Gold reward, miscalibrated across prompts in a way a reward model can learn::

    r*(x, y) = a_x * q(x, y) + b_x
    a_x = reward_scale * exp(scale_sigma * s_x + scale_noise_sigma * z1),  b_x = offset_sigma * z2
    s_x = sum_{a in x} v_a / sqrt(|x|),   v_a ~ N(0, 1) per attribute (drawn once from ``seed``)

The *learnable* part of the scale, ``s_x``, is a function of the prompt's attributes, so the
Bradley-Terry reward model (trained on labels whose noise depends on ``a_x``) carries it: its
scores spread widely on some prompts and narrowly on others, and RL on raw scores over-tilts the
former (the situation calibration fixes; docs/method.md, "toy world"). ``(z1, z2) ~ N(0, I)``
come from a seeded BLAKE2 hash of the prompt text: no model can predict them. Preference labels
never see offsets (they depend on reward differences within a prompt), so ``b_x`` only makes raw
gold values incomparable across prompts. Judges compare responses *within* a prompt, so win rates
are scale-free. ``scale_sigma = scale_noise_sigma = offset_sigma = propensity_sigma = 0`` is the
calibrated control (one scale, no offset, one difficulty: ``sweeps/paper_control.yaml``).

Labeler bias (reward-model error RL can exploit): preference labels are drawn from
``r_label(x, y) = r*(x, y) + a_x * spurious_weight * f(y)`` with ``f(y) = min(n, n_max) / n_max``
(``n_max`` = the longest behaviour length): labelers like long answers, the gold reward does not
(``q`` is a per-token rate). A reward model learns the bias; a policy that lengthens its answers
wins under the reward model and not under gold. ``spurious_weight = 0`` is its control.

Behaviour distribution (what the reference LM is pre-trained to imitate): for each response draw
a length ``n ~ U{6..16}`` and a response-level propensity ``rho ~ Beta(k p_x, k (1 - p_x))``
(``k = propensity_concentration``); then each token repeats the previous one with probability
``repeat_prob``, else is a uniform liked symbol with probability ``rho``, else a uniform
not-liked symbol. The per-response ``rho`` makes the quality of reference samples for the *same*
prompt widely spread, so best-of-N over reference samples clearly beats one sample.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from infalign.errors import require
from infalign.infra.cache import content_key

if TYPE_CHECKING:  # torch is imported where tensors are made: reading the toy defaults (every app's
    import torch  # config, infalign.toy.defaults) must not load it

SEP = "->"
PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPLITS = ("train", "val", "test")
# Prompt-hash buckets (out of 10) of each split: disjoint by construction.
_SPLIT_BUCKETS = {"train": range(0, 8), "val": range(8, 9), "test": range(9, 10)}

__all__ = [
    "SEP",
    "SPLITS",
    "PreferencePairs",
    "PromptParams",
    "ToyWorld",
    "make_preference_pairs",
]


@dataclass(frozen=True)
class PromptParams:
    """The hidden per-prompt quantities: liked symbols, gold scale/offset, propensity."""

    attributes: tuple[int, ...]
    liked: frozenset[int]
    scale: float
    offset: float
    propensity: float


@dataclass
class PreferencePairs:
    """Preference data: ``chosen[i]`` was preferred to ``rejected[i]`` for ``prompts[i]``.

    ``gold_margin[i] = r*(x, chosen) - r*(x, rejected)`` when a gold reward exists (toy world),
    else ``None``; it lets evaluation measure accuracy against the gold ordering.
    """

    prompts: list[str]
    chosen: list[str]
    rejected: list[str]
    gold_margin: torch.Tensor | None = None
    label_margin: torch.Tensor | None = None  # r_label(x, chosen) - r_label(x, rejected) (toy world)

    def __len__(self) -> int:
        return len(self.prompts)

    def __post_init__(self) -> None:
        if not len(self.prompts) == len(self.chosen) == len(self.rejected):
            raise ValueError(
                f"prompts/chosen/rejected lengths differ: "
                f"{len(self.prompts)}/{len(self.chosen)}/{len(self.rejected)}"
            )


def _hash_u64(*parts: object) -> int:
    blob = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little")


class ToyWorld:
    """A seeded toy world (see the module docstring for every formula).

    ``prompts`` and the gold reward are pure functions of ``seed`` and the constructor
    arguments; two worlds with the same arguments agree exactly.
    """

    def __init__(
        self,
        seed: int = 0,
        n_attributes: int = 16,
        n_symbols: int = 24,
        prompt_len: tuple[int, int] = (4, 6),
        response_len: tuple[int, int] = (6, 16),
        liked_per_attribute: int = 2,
        repeat_penalty: float = 0.5,
        reward_scale: float = 6.0,
        scale_sigma: float = 1.0,
        scale_noise_sigma: float = 0.0,
        offset_sigma: float = 3.0,
        spurious_weight: float = 0.1,
        propensity_mean: float = -0.3,
        propensity_sigma: float = 1.0,
        propensity_concentration: float = 3.0,
        repeat_prob: float = 0.1,
    ) -> None:
        prompt_len, response_len = tuple(prompt_len), tuple(response_len)
        require(n_attributes >= 2, "toy.world.n_attributes", n_attributes, ">= 2")
        require(n_symbols >= 2, "toy.world.n_symbols", n_symbols, ">= 2")
        require(
            len(prompt_len) == 2 and 1 <= prompt_len[0] <= prompt_len[1] <= n_attributes,
            "toy.world.prompt_len",
            prompt_len,
            "[lo, hi] with 1 <= lo <= hi <= n_attributes",
        )
        require(
            len(response_len) == 2 and 1 <= response_len[0] <= response_len[1],
            "toy.world.response_len",
            response_len,
            "[lo, hi] with 1 <= lo <= hi",
        )
        require(
            1 <= liked_per_attribute < n_symbols,
            "toy.world.liked_per_attribute",
            liked_per_attribute,
            "1 <= value < n_symbols",
        )
        require(reward_scale > 0, "toy.world.reward_scale", reward_scale, "> 0")
        for key, value in (("scale_sigma", scale_sigma), ("scale_noise_sigma", scale_noise_sigma),
                           ("offset_sigma", offset_sigma), ("spurious_weight", spurious_weight)):
            require(value >= 0, f"toy.world.{key}", value, ">= 0 (0 switches the effect off)")
        require(
            propensity_concentration > 0,
            "toy.world.propensity_concentration",
            propensity_concentration,
            "> 0",
        )
        require(0 <= repeat_prob < 1, "toy.world.repeat_prob", repeat_prob, "[0, 1)")
        self.seed = int(seed)
        self.n_attributes, self.n_symbols = int(n_attributes), int(n_symbols)
        self.prompt_len, self.response_len = prompt_len, response_len
        self.liked_per_attribute = int(liked_per_attribute)
        self.repeat_penalty = float(repeat_penalty)
        self.reward_scale, self.scale_sigma = float(reward_scale), float(scale_sigma)
        self.scale_noise_sigma = float(scale_noise_sigma)
        self.offset_sigma = float(offset_sigma)
        self.spurious_weight = float(spurious_weight)
        self.propensity_mean, self.propensity_sigma = (
            float(propensity_mean),
            float(propensity_sigma),
        )
        self.propensity_concentration = float(propensity_concentration)
        self.repeat_prob = float(repeat_prob)

        rng = np.random.default_rng([self.seed, 0])
        self._likes = [
            frozenset(int(s) for s in rng.choice(n_symbols, liked_per_attribute, replace=False))
            for _ in range(n_attributes)
        ]
        self._weights = rng.normal(0.0, self.propensity_sigma, size=n_attributes)
        # drawn from a separate stream so that adding the knob left likes/propensities unchanged
        self._scale_weights = np.random.default_rng([self.seed, 4]).standard_normal(n_attributes)
        self.attribute_words = [f"a{i}" for i in range(n_attributes)]
        self.symbol_words = [f"b{i}" for i in range(n_symbols)]
        self._attr_index = {w: i for i, w in enumerate(self.attribute_words)}
        self._sym_index = {w: i for i, w in enumerate(self.symbol_words)}
        self._params = lru_cache(maxsize=1 << 16)(self._compute_params)

    @property
    def fingerprint(self) -> str:
        """SHA-256 (16 hex digits) of the constructor's arguments: two worlds with the same fingerprint
        have the same prompts, behaviour and gold reward (a cache key for anything the gold reward
        scored)."""
        args = {name: getattr(self, name) for name in inspect.signature(type(self)).parameters}
        return content_key("toy-world", args)

    # ------------------------------------------------------------------ vocabulary / tokenizer
    @property
    def vocabulary(self) -> list[str]:
        """All words, specials first: ``<pad> <bos> <eos> <unk> -> a0.. b0..``."""
        return [PAD, BOS, EOS, UNK, SEP, *self.attribute_words, *self.symbol_words]

    def tokenizer(self):
        """A word-level ``PreTrainedTokenizerFast`` (WhitespaceSplit) over :attr:`vocabulary`.

        It adds no special tokens when encoding (prompt and response are encoded separately and
        concatenated, so a bos in the middle would be wrong); ``save_pretrained`` /
        ``AutoTokenizer.from_pretrained`` round-trip it.
        """
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        vocab = {w: i for i, w in enumerate(self.vocabulary)}
        backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return PreTrainedTokenizerFast(
            tokenizer_object=backend,
            pad_token=PAD,
            bos_token=BOS,
            eos_token=EOS,
            unk_token=UNK,
            model_max_length=4 * (self.prompt_len[1] + self.response_len[1] + 2),
        )

    # ------------------------------------------------------------------ prompts
    def _split_of(self, prompt: str) -> str:
        bucket = _hash_u64("split", self.seed, prompt) % 10
        return next(s for s, b in _SPLIT_BUCKETS.items() if bucket in b)

    def prompts(self, split: str, n: int) -> list[str]:
        """The first ``n`` distinct prompts of ``split`` (``train``/``val``/``test``).

        One seeded stream of candidate prompts is assigned to splits by a hash of the prompt
        text (80/10/10), so splits are disjoint, deterministic, and ``prompts(s, n)`` is a prefix
        of ``prompts(s, m)`` for ``n < m``.
        """
        require(split in SPLITS, "split", split, f"one of {SPLITS}")
        require(n >= 0, "n_prompts", n, ">= 0")
        rng = np.random.default_rng([self.seed, 1])
        lo, hi = self.prompt_len
        out: list[str] = []
        seen: set[str] = set()
        tries = 0
        while len(out) < n:
            tries += 1
            if tries > 100 * n + 10_000:
                raise ValueError(
                    f"could not find {n} distinct {split!r} prompts; "
                    f"raise toy.world.n_attributes or prompt_len"
                )
            k = int(rng.integers(lo, hi + 1))
            attrs = rng.choice(self.n_attributes, k, replace=False)
            prompt = " ".join(self.attribute_words[a] for a in attrs) + " " + SEP
            if prompt in seen:
                continue
            seen.add(prompt)
            if self._split_of(prompt) == split:
                out.append(prompt)
        return out

    # ------------------------------------------------------------------ hidden parameters
    def params(self, prompt: str) -> PromptParams:
        """Liked set, gold scale ``a_x``, offset ``b_x`` and propensity ``p_x`` of ``prompt``."""
        return self._params(" ".join(prompt.split()))

    def _compute_params(self, prompt: str) -> PromptParams:
        words = prompt.split()
        if not words or words[-1] != SEP:
            raise ValueError(f"not a toy-world prompt (must end with {SEP!r}): {prompt!r}")
        try:
            attrs = tuple(self._attr_index[w] for w in words[:-1])
        except KeyError as exc:
            raise ValueError(
                f"unknown attribute word {exc.args[0]!r} in prompt {prompt!r}"
            ) from None
        if not attrs:
            raise ValueError(f"toy-world prompt has no attributes: {prompt!r}")
        liked = frozenset().union(*(self._likes[a] for a in attrs))
        z1, z2 = np.random.default_rng(_hash_u64("reward", self.seed, prompt)).standard_normal(2)
        root = math.sqrt(len(attrs))
        logit = self.propensity_mean + float(self._weights[list(attrs)].sum()) / root
        s_x = float(self._scale_weights[list(attrs)].sum()) / root
        return PromptParams(
            attributes=attrs,
            liked=liked,
            scale=self.reward_scale
            * math.exp(self.scale_sigma * s_x + self.scale_noise_sigma * float(z1)),
            offset=self.offset_sigma * float(z2),
            propensity=1.0 / (1.0 + math.exp(-logit)),
        )

    # ------------------------------------------------------------------ quality and gold reward
    def quality(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """``q(x, y)`` of the module docstring, float32 ``[B]``."""
        import torch

        _check_lengths(prompts, responses)
        n_min = self.response_len[0]
        out = np.zeros(len(prompts), dtype=np.float64)
        for i, (x, y) in enumerate(zip(prompts, responses)):
            liked = self.params(x).liked
            words = y.split()
            n = len(words)
            if n == 0:
                continue
            hits = sum(1 for w in words if self._sym_index.get(w, -1) in liked)
            repeats = sum(1 for a, b in zip(words, words[1:]) if a == b)
            out[i] = hits / max(n, n_min) - self.repeat_penalty * repeats / max(n - 1, 1)
        return torch.from_numpy(out).float()

    def gold_reward(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """``r*(x, y) = a_x * q(x, y) + b_x``, float32 ``[B]`` (deterministic)."""
        return self._scaled(prompts, self.quality(prompts, responses).double()).float()

    def spurious_feature(self, responses: list[str]) -> torch.Tensor:
        """``f(y) = min(n, n_max) / n_max`` (the length labelers over-rate), float64 ``[B]``."""
        import torch

        n_max = self.response_len[1]
        return torch.tensor([min(len(y.split()), n_max) / n_max for y in responses], dtype=torch.float64)

    def label_reward(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """``r_label = a_x * (q + spurious_weight * f(y)) + b_x``: what preference labels follow."""
        q = self.quality(prompts, responses).double()
        if self.spurious_weight:
            q = q + self.spurious_weight * self.spurious_feature(responses)
        return self._scaled(prompts, q).float()

    def _scaled(self, prompts: list[str], q: torch.Tensor) -> torch.Tensor:
        import torch

        ab = torch.tensor(
            [(p.scale, p.offset) for p in map(self.params, prompts)], dtype=torch.float64
        ).reshape(-1, 2)
        return ab[:, 0] * q + ab[:, 1]

    # ------------------------------------------------------------------ behaviour distribution
    def behaviour_responses(self, prompt: str, n: int, rng: np.random.Generator) -> list[str]:
        """``n`` responses for ``prompt`` from the behaviour distribution (module docstring)."""
        p = self.params(prompt)
        liked = np.array(sorted(p.liked))
        other = (
            np.array([s for s in range(self.n_symbols) if s not in p.liked])
            if len(liked) < self.n_symbols
            else liked
        )
        k = self.propensity_concentration
        lo, hi = self.response_len
        out = []
        for _ in range(n):
            length = int(rng.integers(lo, hi + 1))
            rho = rng.beta(k * p.propensity, k * (1.0 - p.propensity))
            u_rep, u_like = rng.random(length), rng.random(length)
            pick_liked = rng.choice(liked, length)
            pick_other = rng.choice(other, length)
            toks: list[int] = []
            for t in range(length):
                if t > 0 and u_rep[t] < self.repeat_prob:
                    toks.append(toks[-1])
                else:
                    toks.append(int(pick_liked[t] if u_like[t] < rho else pick_other[t]))
            out.append(" ".join(self.symbol_words[s] for s in toks))
        return out

    def reference_corpus(
        self, n_prompts: int, per_prompt: int, seed: int = 0, split: str = "train"
    ) -> tuple[list[str], list[str]]:
        """``(prompts, responses)``: ``per_prompt`` behaviour responses for each of the first
        ``n_prompts`` prompts of ``split`` (prompt-major order), the reference LM's training text."""
        rng = np.random.default_rng([self.seed, 2, seed])
        prompts, responses = [], []
        for x in self.prompts(split, n_prompts):
            prompts.extend([x] * per_prompt)
            responses.extend(self.behaviour_responses(x, per_prompt, rng))
        return prompts, responses


def make_preference_pairs(
    world: ToyWorld,
    prompts: list[str],
    responses_a: list[str],
    responses_b: list[str],
    seed: int = 0,
) -> PreferencePairs:
    """Bradley-Terry labels from the labelers' reward: ``a`` is chosen with probability
    ``sigmoid(r_label(x, a) - r_label(x, b))``, so the label noise depends on the per-prompt
    scale ``a_x``; ``gold_margin`` is the gold reward's margin (labels may disagree with it)."""
    import torch

    _check_lengths(prompts, responses_a)
    _check_lengths(prompts, responses_b)
    ra = world.gold_reward(prompts, responses_a)
    rb = world.gold_reward(prompts, responses_b)
    la = world.label_reward(prompts, responses_a)
    lb = world.label_reward(prompts, responses_b)
    p_a = torch.sigmoid(la - lb).numpy()
    a_wins = np.random.default_rng([world.seed, 3, seed]).random(len(prompts)) < p_a
    chosen = [a if w else b for a, b, w in zip(responses_a, responses_b, a_wins)]
    rejected = [b if w else a for a, b, w in zip(responses_a, responses_b, a_wins)]
    sign = torch.from_numpy(np.where(a_wins, 1.0, -1.0)).float()
    return PreferencePairs(list(prompts), chosen, rejected, gold_margin=sign * (ra - rb),
                           label_margin=sign * (la - lb))


def _check_lengths(prompts: list[str], responses: list[str]) -> None:
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
