"""Algorithms as registered classes (docs/architecture.md §6, "An algorithm"; formulas in
docs/method.md §6).

An algorithm is a class with

* ``name`` -- what ``algo.name`` selects (the registry key, and the ``conf/algo/<name>.yaml`` entry);
* ``Config`` -- a dataclass of its own settings (the keys of its YAML entry), range-checked in
  ``__post_init__``; every algorithm shares :class:`AlgoConfig`;
* what it trains on: *online* algorithms (:class:`OnlineAlgorithm`) run the CTRL step on their own
  samples of ``Phi(C_hat)`` (``training/ctrl.py``); *offline* ones (:class:`OfflineAlgorithm`) fit
  (best, worst)-of-N reference samples (``pipeline/baselines.py``);
* what the theory predicts for it: :meth:`Algorithm.theory_target`, the ``(Phi, beta)`` whose
  tilted policy ``pi_ref * exp(Phi(C) / beta)`` (docs/method.md (1.2)) it aims at, or None.

:func:`make_algorithm` builds one from the ``algo`` config.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import ClassVar

from infalign.errors import ConfigError, require, require_type
from infalign.math.transforms import Transform

log = logging.getLogger(__name__)
ALGORITHMS: dict[str, type[Algorithm]] = {}


def register_algorithm(cls: type[Algorithm]) -> type[Algorithm]:
    """Class decorator: make ``cls`` selectable as ``algo.name = cls.name``."""
    if cls.name in ALGORITHMS:
        raise ValueError(f"algorithm {cls.name!r} is registered twice "
                         f"({ALGORITHMS[cls.name].__name__}, {cls.__name__})")
    ALGORITHMS[cls.name] = cls
    return cls


def check_field_types(config: object, prefix: str) -> None:
    """Each field of the dataclass ``config`` annotated ``bool`` / ``int`` / ``float`` (or ``... | None``)
    holds a value of that type (:func:`~infalign.errors.require_type`): ``algo.beta=abc`` is a
    ConfigError naming the key before compute, not a TypeError at the first comparison."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        hint = hints.get(f.name)
        args = set(typing.get_args(hint)) if typing.get_origin(hint) in (typing.Union, types.UnionType) else {hint}
        kinds = [k for k in (bool, int, float) if k in args]
        if len(kinds) == 1 and args <= {kinds[0], type(None)}:
            require_type(f"{prefix}.{f.name}", getattr(config, f.name), kinds[0], optional=type(None) in args)


@dataclass
class AlgoConfig:
    """Settings every algorithm has.

    ``max_new_tokens`` and ``temperature`` also set how every pool of the run is sampled (the
    ``calibration`` and ``eval`` groups interpolate them; ``eval`` also ``top_k`` and ``top_p``).
    ``temperature`` must be 1, ``top_k`` null and ``top_p`` 1: log-probs are the model's own at T = 1,
    untruncated (``models/generation.py``), so with any other sampler the KL and the policy gradient
    would refer to another distribution than the one sampled (docs/method.md §6). Evaluation may
    sample otherwise (``eval.temperature`` / ``eval.top_k`` / ``eval.top_p``).
    """

    name: str
    lr: float = 1e-4
    steps: int = 100
    prompts_per_step: int = 16
    weight_decay: float = 0.0
    max_new_tokens: int = 20
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0

    def __post_init__(self) -> None:
        check_field_types(self, "algo")
        require(self.lr > 0, "algo.lr", self.lr, "lr > 0")
        require(self.steps >= 1, "algo.steps", self.steps, ">= 1")
        require(self.prompts_per_step >= 1, "algo.prompts_per_step", self.prompts_per_step, ">= 1")
        require(self.weight_decay >= 0, "algo.weight_decay", self.weight_decay, ">= 0")
        require(self.max_new_tokens >= 1, "algo.max_new_tokens", self.max_new_tokens, ">= 1")
        require(self.temperature == 1.0, "algo.temperature", self.temperature, "1.0",
                "log-probs are taken at temperature 1, so with samples from pi_T the KL and the policy "
                "gradient would be off-policy (neither KL(pi_T || ref) nor KL(pi || ref)); docs/method.md §6")
        off_policy = ("log-probs are the untruncated model's, so with samples from a top-k / nucleus cut the KL and "
                      "the policy gradient would be off-policy (docs/method.md §6); to evaluate with it, set "
                      "eval.top_k / eval.top_p instead")
        require(self.top_k is None, "algo.top_k", self.top_k, "null (training samples the full distribution)",
                off_policy)
        require(self.top_p == 1.0, "algo.top_p", self.top_p, "1.0 (training samples the full distribution)",
                off_policy)


class Algorithm:
    """Base of every algorithm: its config, and what the app and the record ask of it."""

    name: ClassVar[str]
    Config: ClassVar[type[AlgoConfig]]
    online: ClassVar[bool]
    kl_knob: ClassVar[str]  # the setting that moves the trained policy's KL (for messages)
    kl_knob_keys: ClassVar[tuple[str, ...]]  # its config keys (recorded: a method's curve walks them)
    # whether a resume may ask for more algo.steps than the run started with: true when the first steps
    # do not depend on the total (a constant learning rate), so a longer run continues a shorter one exactly
    resume_may_extend: ClassVar[bool] = True

    def __init__(self, cfg: AlgoConfig) -> None:
        self.cfg = cfg

    @classmethod
    def settings(cls) -> tuple[str, ...]:
        """The ``algo`` settings this algorithm reads: its ``Config``'s fields, in order (any other key of
        the ``algo`` group is another algorithm's, ignored: :func:`make_algorithm`)."""
        return tuple(f.name for f in dataclasses.fields(cls.Config))

    @property
    def beta(self) -> float | None:
        """The KL strength the run reports (``metrics.json: beta``), None if the algorithm has none."""
        return getattr(self.cfg, "beta", None)

    @property
    def kl_target(self) -> float | None:
        """``algo.kl_target`` (docs/method.md §9) if the algorithm takes one."""
        return getattr(self.cfg, "kl_target", None)

    def theory_target(self, transform: Transform) -> tuple[Transform, float] | None:
        """``(Phi, beta)`` of the tilted policy ``pi_ref * exp(Phi(C)/beta)`` this algorithm aims
        at (docs/method.md (1.2)), or None when the calibrated-space theory predicts nothing for it."""
        raise NotImplementedError

    def method_label(self, transform: Transform) -> str:
        """The run's ``method`` (docs/method.md §8), e.g. ``expn(t=4)``, ``identity+ppo``, ``ipo(N=4)``."""
        raise NotImplementedError

    def run_label(self, transform_label: str) -> str:
        """The part of the run name after the procedure, e.g. ``exp-t4-b20``, ``bon_sft-n4-s60``."""
        raise NotImplementedError

    @property
    def trained_n(self) -> int | None:
        """The N the training data depend on (offline: N reference samples per prompt), else None."""
        return None

    @property
    def optimizer_steps(self) -> int:
        """The optimizer steps (Lightning's ``global_step``) a run of ``algo.steps`` steps makes:
        ``algo.steps * optimizer_steps_per_batch`` -- the fit's ``max_steps``, and the step at which a
        checkpoint has nothing left to train."""
        return self.cfg.steps * self.optimizer_steps_per_batch

    def needs_calibration(self, transform: Transform) -> bool:
        """Whether the run needs the calibration table (stage 1)."""
        return False


class OnlineAlgorithm(Algorithm):
    """KL-regularised RL on the algorithm's own samples of ``Phi(C_hat)`` (``CTRLModule``, docs/method.md §6).

    Subclasses define the advantages of a rollout and the loss of one minibatch, and how many
    optimizer steps one rollout feeds (``epochs`` x ``minibatches``).
    """

    online = True
    kl_knob = "algo.beta or algo.kl_target"
    kl_knob_keys = ("algo.beta", "algo.kl_target")
    named_by_transform: ClassVar[bool] = False  # the default solver: method/run named by the transform alone
    epochs: int = 1
    minibatches: int = 1

    @property
    def optimizer_steps_per_batch(self) -> int:
        return self.epochs * self.minibatches

    def theory_target(self, transform: Transform) -> tuple[Transform, float] | None:
        """The KL-RL solution for its own reward: ``(Phi, beta)`` (docs/method.md (1.2))."""
        return transform, self.cfg.beta

    def method_label(self, transform: Transform) -> str:
        """``<transform label>+<name>`` (just the transform label for the default solver)."""
        return transform.label + ("" if self.named_by_transform else f"+{self.name}")

    def run_label(self, transform_label: str) -> str:
        """``<transform>-b<beta>`` or ``<transform>-kl<kl_target>``, then ``-<name>`` (not for the default)."""
        knob = f"kl{self.kl_target:g}" if self.kl_target is not None else f"b{self.cfg.beta:g}"
        return f"{transform_label}-{knob}" + ("" if self.named_by_transform else f"-{self.name}")

    def needs_calibration(self, transform: Transform) -> bool:
        """Calibrated transforms need the table; so does ``kl_target`` (``raw`` scales beta by it)."""
        return transform.calibrated or self.kl_target is not None

    @property
    def missing_eos_penalty(self) -> float | None:
        """``algo.missing_eos_penalty`` (docs/method.md (6.1b)) if the algorithm has one."""
        return getattr(self.cfg, "missing_eos_penalty", None)

    def advantages(self, task_reward, kl):
        """``(objective, advantages)`` per sequence ``[B]`` from the task reward and the KL estimate."""
        raise NotImplementedError

    def loss(self, logprobs, rollout_logprobs, advantages, mask):
        """``(loss, stats)`` of one minibatch: ``logprobs`` with grad, ``rollout_logprobs`` as sampled."""
        raise NotImplementedError


class OfflineAlgorithm(Algorithm):
    """Fits the policy on the reward model's (best, worst) of ``n_samples`` reference samples per
    training prompt (``pipeline/baselines.py``); no transform, no calibration table."""

    online = False
    optimizer_steps_per_batch = 1  # one optimizer step per SFT / IPO batch

    @property
    def trained_n(self) -> int:
        return self.cfg.n_samples

    def method_label(self, transform: Transform) -> str:
        return f"{self.name}(N={self.cfg.n_samples})"

    def fit_module(self, policy, reference, tokenizer, prompts: list[str], best, worst, seed: int):
        """``(LightningModule, DataLoader)`` that fit ``policy`` on the (best, worst) responses, each a
        :class:`~infalign.data.batches.SampledResponses` (one per prompt: the sampled token ids, the stop
        token last only where the response ended; collate ``ids``, never re-encode ``texts``). The loader
        is :meth:`shuffled_loader`'s (its own generator seeded by ``seed``) and the module is a
        ``training/step_batches.StepIndexed``: a resume replays its order (``pipeline/baselines.fit_offline``)."""
        raise NotImplementedError

    def shuffled_loader(self, columns: tuple, collate, seed: int):
        """The loader of :meth:`fit_module`: ``TextPairs(*columns)`` (prompts, then response ids) in
        batches of ``algo.prompts_per_step``, shuffled by a generator of its own seeded by ``seed``."""
        import torch
        from torch.utils.data import DataLoader

        from infalign.data.batches import TextPairs

        return DataLoader(TextPairs(*columns), batch_size=self.cfg.prompts_per_step, shuffle=True,
                          generator=torch.Generator().manual_seed(seed), collate_fn=collate)


def make_algorithm(settings: Mapping, explicit: Collection[str] | None = None) -> Algorithm:
    """The algorithm ``settings["name"]`` with its config built from ``settings`` (the ``algo`` group).

    A key no registered algorithm has is a ConfigError (a typo). A setting of *another* algorithm is
    ignored: experiments set RL hyper-parameters (``algo.beta``, ``algo.group_size``) that a method
    entry's offline algorithm does not have -- except a ``kl_target``, which the run could not honour
    and is an error. Ignoring one the user gave (``explicit``: the ``algo`` keys of the command line;
    None: unknown, all) is a warning; one only a config file set is logged at info (a walkthrough's
    ``algo=bon_sft`` was warned of "beta=20.0", toy_bon's, which it never typed).
    """
    name = settings.get("name")
    require(name in ALGORITHMS, "algo.name", name, f"one of {sorted(ALGORITHMS)}")
    cls = ALGORITHMS[name]
    own = list(cls.settings())
    owners = {key: sorted(n for n, c in ALGORITHMS.items() if key in c.settings())
              for key in settings if key not in own}
    for key, algos in owners.items():
        value = settings[key]
        if not algos or (key == "kl_target" and value is not None):
            hint = (f"algo={name} moves its KL with {cls.kl_knob}" if algos else
                    f"no algorithm has this setting (registered: {sorted(ALGORITHMS)})")
            raise ConfigError(f"algo.{key}", value, f"a setting of algo={name}: {own}", hint)
    for given in (True, False):
        keys = [k for k in owners if (explicit is None or k in explicit) == given]
        if keys:
            log.log(logging.WARNING if given else logging.INFO, "algo=%s ignores %s (settings of other algorithms%s)",
                    name, ", ".join(f"{k}={settings[k]!r} ({'|'.join(owners[k])})" for k in keys),
                    "" if given else ", from the config files")
    return cls(cls.Config(**{k: v for k, v in settings.items() if k in own}))
