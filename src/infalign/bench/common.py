"""Shared pieces of the benchmark: environment, timing, and the toy models every section uses."""

from __future__ import annotations

import copy
import logging
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

QUIET_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "transformers",
                 "accelerate", "trl", "datasets", "httpx")


def setup_environment(threads: int | str = "auto") -> None:
    """Offline, no W&B, thread count (``auto`` = usable cores // concurrent jobs, infra/threads.py),
    quiet libraries. Call before importing transformers."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DISABLE_MLFLOW_INTEGRATION", "TRUE")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from infalign.infra.startup import import_frozen

    # Lightning's import sets its loggers to INFO: import first, then quieten. Frozen as the CLIs'
    # heavy imports are (infra/startup.py), so full collections in the timed steps do not walk
    # Lightning's and torch's import-time objects (modules the sections import later -- HF's model
    # classes, TRL -- are not frozen).
    import_frozen("lightning", "transformers")
    from transformers.utils import logging as hf_logging

    from infalign.infra.threads import set_threads

    set_threads(threads, "--threads")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")
    warnings.filterwarnings("ignore", message=".*ModelCheckpoint with manual optimization.*")
    warnings.filterwarnings("ignore", message=".*`max_epochs` was not set.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def default_output() -> Path:
    """``$INFALIGN_ROOT/outputs/bench/bench.json`` (``INFALIGN_ROOT`` defaults to ``.``, as in conf/paths)."""
    return Path(os.environ.get("INFALIGN_ROOT", ".")) / "outputs" / "bench" / "bench.json"


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


@dataclass
class Timing:
    """Wall-clock times (s) of repeated runs; ``best`` is the figure we report (shared machine)."""

    times: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def worst(self) -> float:
        return max(self.times)

    def as_dict(self) -> dict:
        return {"best_s": self.best, "median_s": self.median, "max_s": self.worst, "runs": len(self.times),
                "times_s": [round(t, 6) for t in self.times]}


def time_calls(fn: Callable[[], object], repeats: int, before: Callable[[], object] | None = None) -> Timing:
    """Run ``fn`` ``repeats`` times (``before`` untimed ahead of each run) and collect wall times."""
    timing = Timing()
    for _ in range(max(1, repeats)):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        timing.times.append(time.perf_counter() - t0)
    return timing


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("nan")


# ----------------------------------------------------------------------------------------------
# Toy models (randomly initialised from the builders, ToyWorld tokenizer)
# ----------------------------------------------------------------------------------------------


def num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class ToySetup:
    """A toy policy/reference/reward/calibration table; every model is randomly initialised."""

    world: object
    tokenizer: object
    prompts: list[str]
    policy: object
    reference: object
    reward_model: object
    scorer: object
    table: object
    size: str
    reward_size: str

    def fresh_policy(self):
        """An independent copy of the initial policy (RL mutates the policy it trains)."""
        return copy.deepcopy(self.reference).requires_grad_(True)


def toy_setup(size: str, n_prompts: int, k: int = 32, reward_size: str = "small", seed: int = 0,
              reward_batch_size: int = 256, calibration: bool = True) -> ToySetup:
    """Models of the given toy sizes and ``n_prompts`` train prompts of ``ToyWorld(seed)``.

    The calibration table holds ``k`` random reference rewards per prompt, drawn from a normal
    distribution with the mean/std of the (random) reward model's scores on behaviour responses,
    so calibrated values spread over [0, 1] instead of piling up at one end.
    """
    import numpy as np
    import torch

    from infalign.math.calibration import CalibrationTable
    from infalign.models import build_toy_lm, build_toy_reward_model
    from infalign.models.reward import RewardScorer
    from infalign.toy import ToyWorld

    world = ToyWorld(seed=seed)
    tokenizer = world.tokenizer()
    tokenizer.padding_side = "left"
    prompts = world.prompts("train", n_prompts)
    torch.manual_seed(seed)
    reference = build_toy_lm(tokenizer, size).eval()
    policy = copy.deepcopy(reference)
    reward_model = build_toy_reward_model(tokenizer, reward_size).eval()
    scorer = RewardScorer(reward_model, tokenizer, batch_size=reward_batch_size)
    table = None
    if calibration:
        rng = np.random.default_rng([seed, 7])
        probe_prompts = prompts[: min(len(prompts), 32)]
        flat_p = [p for p in probe_prompts for _ in range(4)]
        flat_r = [r for p in probe_prompts for r in world.behaviour_responses(p, 4, rng)]
        probe = scorer.score(flat_p, flat_r)
        mu, sd = float(probe.mean()), max(float(probe.std()), 1e-3)
        gen = torch.Generator().manual_seed(seed)
        table = CalibrationTable.from_rewards(mu + sd * torch.randn(len(prompts), k, generator=gen))
    return ToySetup(world, tokenizer, prompts, policy, reference, reward_model, scorer, table, size, reward_size)
