"""The ``L.Trainer`` of every stage, from the ``trainer`` and ``callbacks`` config groups.

The app instantiates ``conf/trainer/`` as a factory -- ``hydra.utils.instantiate(cfg.trainer,
_partial_=True)``: its ``_target_`` (``lightning.Trainer``) with the settings every stage shares
(accelerator, devices, num_nodes, strategy, precision, ...) -- and ``conf/callbacks/`` as a list
(``apps/config.py``). :func:`stage_trainers` turns the two into the trainers a run builds:

* ``predict`` -- the sampling stages run as ``Trainer.predict`` (calibration and evaluation pools,
  the offline baselines' reference samples): every callback but the checkpoint callback;
* ``fit`` -- training: every callback, the run's logger and the fit-only arguments.

Each stage calls its factory with its own arguments (``max_steps``, ``logger=False``, ...).
``infalign-train`` and ``infalign-calibration`` both build their trainers here.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import lightning as L
from lightning.pytorch.callbacks import Callback, Checkpoint, ProgressBar

TrainerFactory = Callable[..., L.Trainer]
# Lightning's own use of a torch pytree API that torch deprecated (lightning/pytorch/utilities/
# _pytree.py), raised inside every fit and predict of every stage: nothing a user can act on
warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*", module="lightning")


def _no_litlogger_tip(record: logging.LogRecord) -> bool:
    """Lightning logs an advertisement for its cloud logger ("Tip: ... try installing litlogger") at
    INFO each time a trainer is built without one: several times per run, in every job's log."""
    return "litlogger" not in str(record.msg)


class _DeviceInfoOnce(logging.Filter):
    """Lightning logs which accelerators exist ("GPU available: False, used: False", "TPU available:
    ...") each time a trainer is built: a run builds one per stage, and every job's log repeated the
    same lines 6-8 times. Each distinct line is kept once per run (:func:`stage_trainers` starts a run's
    count, so each job of a multirun in one process logs them once; a new device setup still shows)."""

    PREFIXES = ("GPU available:", "TPU available:", "HPU available:", "IPU available:")

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def new_run(self) -> None:
        """A new run starts: its log shows each device line once again."""
        self.seen.clear()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(self.PREFIXES):
            return True
        first = message not in self.seen
        self.seen.add(message)
        return first


_rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
_rank_zero_log.addFilter(_no_litlogger_tip)
_device_info_once = _DeviceInfoOnce()
_rank_zero_log.addFilter(_device_info_once)


@dataclass(frozen=True)
class StageTrainers:
    """The trainer factories of one run (module docstring)."""

    predict: TrainerFactory
    fit: TrainerFactory


def logging_interval(every: int, steps: int) -> int:
    """The logging interval of a fit of ``steps`` steps (batches): at most ``every`` (the run's
    ``log_every_n_steps``) and a tenth of ``steps`` (at least 1), lowered to a divisor of ``steps`` so
    the last step is logged. (Lightning logs a step when its count is a multiple of the interval: with
    5, a 4-step BoN-SFT run logged no training curve, and no 4/8/16/32/64-step one its last step.)"""
    n = max(1, min(int(every), int(steps) // 10))
    while int(steps) % n:
        n -= 1
    return n


def fit_steps(trainers: StageTrainers, module, loader, max_steps: int, steps: int, ckpt_path=None) -> None:
    """``trainers.fit(...).fit(module, loader, ckpt_path)`` for ``steps`` batches and ``max_steps``
    optimizer steps, logging every :func:`logging_interval` batches; a fit that ends short of
    ``max_steps`` is an error (:func:`check_fit_complete`)."""
    every = factory_keywords(trainers.fit).get("log_every_n_steps", 50)
    trainer = trainers.fit(max_steps=max_steps, log_every_n_steps=logging_interval(every, steps))
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    check_fit_complete(trainer, max_steps)


def check_fit_complete(trainer, max_steps: int) -> None:
    """A fit that returned before ``max_steps`` optimizer steps -- stopped by a trainer setting
    (``max_epochs``, ``max_time``, ``limit_train_batches``), a callback or an exhausted loader -- is a
    RuntimeError: its policy would be recorded and cached as the whole run's."""
    if trainer.global_step < max_steps:
        raise RuntimeError(f"training stopped at optimizer step {trainer.global_step} of {max_steps} (a trainer "
                           "setting -- trainer.max_epochs, max_time, limit_train_batches -- or a callback stopped "
                           "it): the policy is not the run's; remove the setting (algo.steps sets the length)")


def factory_keywords(make: TrainerFactory) -> dict:
    """The ``L.Trainer`` arguments a factory holds: its keywords merged through nested factories
    (``functools.partial`` over Hydra's deferred target: a stage's ``predict`` / ``fit``), the
    outer ones winning, as a call would apply them."""
    chain, node = [], make
    while node is not None and len(chain) < 16:
        chain.append(dict(getattr(node, "keywords", None) or {}))
        node = getattr(node, "func", None)
    merged: dict = {}
    for kw in reversed(chain):
        merged.update(kw)
    return merged


def probe_trainer(make: TrainerFactory) -> None:
    """Build one throwaway trainer from ``make`` (the instantiated ``cfg.trainer``), so what Lightning
    refuses -- an unknown argument (``+trainer.max_step=5``), a precision it does not know,
    ``accelerator=gpu`` without one -- is a ConfigError naming ``trainer`` before any compute, not an
    error when the first stage builds its trainer after the world and the calibration pool. Lightning's
    device banner is muted for it (every stage prints it)."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from infalign.errors import ConfigError

    banner = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = banner.level
    banner.setLevel(logging.WARNING)
    try:
        make(logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[])
    except (TypeError, ValueError, MisconfigurationException) as exc:
        text, keywords = str(exc).lower(), factory_keywords(make)
        no_gpu = "no supported gpu backend" in text or "can not run on your system" in text
        several = "ddp" in str(keywords.get("strategy", "")).lower()
        raise ConfigError("trainer", keywords,
                          "settings lightning.Trainer accepts (conf/trainer/)", f"{type(exc).__name__}: {exc}"
                          + (f"; this machine has no GPU: trainer={'ddp_cpu' if several else 'cpu'}"
                             if no_gpu else "")) from exc
    finally:
        banner.setLevel(level)


def stage_trainers(make: TrainerFactory, callbacks: list[Callback], logger=None, deterministic: bool | None = None,
                   **fit_kwargs) -> StageTrainers:
    """``make`` (the instantiated ``cfg.trainer``) with the callbacks each kind of stage gets. The bar
    is on exactly when ``callbacks`` hold one (``trainer.progress_bar=none`` instantiates none), and
    fit checkpoints exactly when they hold a checkpoint callback (``callbacks.model_checkpoint=null``:
    none, rather than Lightning's default one). ``deterministic`` (the run's top-level key; None:
    Lightning's default, which leaves torch's setting alone) goes to every stage's trainer -- the
    sampling stages draw the calibration and evaluation pools, so a deterministic run's pools are drawn
    by deterministic kernels too, not only its training. ``fit`` also gets ``logger`` (``None``: no
    logger) and ``fit_kwargs``."""
    _device_info_once.new_run()
    bar = any(isinstance(c, ProgressBar) for c in callbacks)
    sampling = [c for c in callbacks if not isinstance(c, Checkpoint)]
    shared = {} if deterministic is None else {"deterministic": bool(deterministic)}
    return StageTrainers(
        predict=functools.partial(make, callbacks=sampling, enable_progress_bar=bar, **shared),
        fit=functools.partial(make, callbacks=list(callbacks), enable_progress_bar=bar, **shared,
                              enable_checkpointing=len(sampling) < len(callbacks),
                              logger=logger if logger is not None else False, **fit_kwargs),
    )
