"""Where an RL step's time goes, measured inside real training steps (ours and TRL's).

A :class:`PhaseClock` accumulates wall time per phase name while a step runs; :func:`timed` wraps a
callable so each call adds its duration to a phase (the phase may depend on the call, e.g. a
log-prob forward with gradients is the policy's, without them the reference's). The step's
time not inside any phase is ``overhead`` (framework, data movement, Python glue).

Phases (both implementations, where measurable):

- ``generation``: sampling the responses;
- ``reward``: reward-model scoring (+ calibration and Phi, which TRL runs inside its reward function);
- ``calibrate+Phi``: ours only, the rest of our rollout (calibration, transform, KL, advantages);
- ``reference``: reference-model log-probs;
- ``old_logprobs``: TRL only, its extra no-grad policy forward;
- ``policy_forward``: the policy forward with gradients;
- ``backward``; ``optimizer``: gradient clipping and the optimizer step;
- ``overhead``: the rest of the step.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

PHASES = ("generation", "reward", "calibrate+Phi", "reference", "old_logprobs", "policy_forward", "backward",
          "optimizer", "overhead")


class PhaseClock:
    """Accumulated seconds per phase since the last :meth:`take`."""

    def __init__(self) -> None:
        self.acc: dict[str, float] = defaultdict(float)

    def add(self, phase: str, seconds: float) -> None:
        self.acc[phase] += seconds

    def take(self, step_s: float) -> dict[str, float]:
        """The phases of a step that took ``step_s`` seconds, with ``overhead`` = the untimed rest;
        the clock restarts."""
        out = dict(self.acc)
        out["overhead"] = max(step_s - sum(out.values()), 0.0)
        self.acc = defaultdict(float)
        return out


def timed(fn: Callable, clock: PhaseClock, phase: str | Callable[..., str]) -> Callable:
    """``fn`` with each call's wall time added to ``phase`` (or ``phase(*args, **kwargs)``)."""

    def wrapper(*args, **kwargs):
        name = phase(*args, **kwargs) if callable(phase) else phase
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            clock.add(name, time.perf_counter() - t0)

    return wrapper


@contextlib.contextmanager
def patched(obj: object, attr: str, value: object) -> Iterator[None]:
    """Set ``obj.attr = value`` for the block, then restore the old attribute."""
    old = getattr(obj, attr)
    setattr(obj, attr, value)
    try:
        yield
    finally:
        setattr(obj, attr, old)


def median_phases(records: list[dict]) -> dict[str, float]:
    """Per phase, the median over steps of its seconds (a phase a step lacks counts 0 there)."""
    import statistics

    names = [p for p in PHASES if any(p in r["phases"] for r in records)]
    return {p: statistics.median(r["phases"].get(p, 0.0) for r in records) for p in names}
