"""``algo.kl_target``: choose beta for a KL budget before training (docs/method.md, "KL targets").

Comparing methods at matched KL needs each method's runs to span the same KL range, but beta
means different things for different reward ranges. With ``algo.kl_target=k`` the run's beta is
the one whose *ideal* tilted policy has KL k:

* calibrated transforms of the per-prompt C_hat: exact, from the calibrated-space theory
  (``theory.frontier``);
* rewards the theory does not describe (``theory.applies`` is false): ``raw``, and any transform
  of the *pooled* calibrated reward C_pool, which is not Uniform within a prompt -- a small-tilt
  match to calibrated identity. For a small tilt ``KL ~ Var(R) / (2 beta^2)`` per prompt; the
  reference's calibrated reward is Uniform with variance 1/12, so matching the mean KL over
  prompts gives ``beta = beta_identity(k) * sqrt(12 * mean_p Var_p(R))``, with ``Var_p(R)`` the
  variance of RL's reward over prompt p's K reference samples (the calibration table): the
  reward-model scores for ``raw``, ``Phi(C_pool)`` of them when pooled.

Trained policies fall short of their ideal KL by different amounts, so the report interpolates
every method's measured curve; ``kl_target`` only spreads the runs over a common range.
"""

from __future__ import annotations

import math

from infalign.errors import ConfigError, require
from infalign.math import theory
from infalign.math.calibration import CalibrationTable
from infalign.math.procedures import Procedure
from infalign.math.transforms import Identity, Transform


def beta_for_target(kl_target: float, transform: Transform, procedure: Procedure,
                    table: CalibrationTable | None) -> float:
    """beta whose ideal policy has KL ``kl_target`` (module docstring)."""
    require(kl_target > 0, "algo.kl_target", kl_target, "a KL budget > 0 nats (or null to use algo.beta)")
    pooled = table is not None and table.pooled
    if theory.applies(transform, pooled):
        return _theory_beta(transform, procedure, kl_target)
    if table is None:
        raise ConfigError("algo.kl_target", kl_target, "a calibration table to scale beta for raw rewards")
    reward = transform(table.reference_calibrated()) if pooled else table.prompt_rewards
    require_spread_samples(kl_target, transform, pooled, reward.shape[1])
    var = reward.double().var(dim=1).mean().item()
    require(var > 0, "algo.kl_target", kl_target, "reward scores that vary within a prompt",
            "the reward model gives every reference sample of every prompt the same score")
    return _theory_beta(Identity(), procedure, kl_target) * math.sqrt(12.0 * var)


def require_spread_samples(kl_target: float | None, transform: Transform, pooled: bool, k: int) -> None:
    """``calibration.K >= 2`` where :func:`beta_for_target` scales beta by the reward's spread within a
    prompt (a ``kl_target`` the theory does not describe: module docstring), which one sample per prompt
    cannot show (its variance is NaN); a ConfigError naming the key. apps/train checks it before compute."""
    require(kl_target is None or theory.applies(transform, pooled) or int(k) >= 2, "calibration.K", k,
            f">= 2 with algo.kl_target={kl_target} and {transform.label}: beta is scaled by the reward's "
            "spread within a prompt, which one sample per prompt cannot show")


def _theory_beta(transform: Transform, procedure: Procedure, kl: float) -> float:
    f = theory.frontier(transform, procedure, [kl])
    if not bool(f.valid[0]) or not math.isfinite(float(f.beta[0])):
        raise ConfigError("algo.kl_target", kl, f"a KL the transform {transform.label} can reach",
                          f"theory: {f.reason[0]}")
    return float(f.beta[0])
