"""Reward transforms Phi: [0, 1] -> R applied to the calibrated reward (docs/method.md §5).

=========  ====================================  ==============================================
name       Phi(u)                                use
=========  ====================================  ==============================================
identity   u                                     optimal for standard win rate
log        log(max(u, floor))                    = best-of-N distillation at beta = 1/(N-1)
exp        sign(t) * exp(t * u), t != 0          t > 0 for BoN, t < 0 for WoN (paper's choice)
exp (norm) (exp(t u) - 1) / (exp(t) - 1)          same policy family, beta rescaled; in [0, 1]
optimal    fixed point of docs/method.md §5            upper bound for a procedure, N and beta
raw        the reward model's score, uncalibrated the standard-RLHF baseline (training only)
=========  ====================================  ==============================================

A transform is any callable ``u -> Phi(u)`` on tensors or arrays. The theory engine also calls
``centered(u, s)`` with ``s = 1 - u`` passed separately: it returns ``Phi(u) - c`` for a constant
``c`` of the transform's choosing, computed without cancellation where ``u`` is within 1e-16 of
1 (``u`` itself is then not representable, ``s`` is). Only differences of Phi matter for the
tilted policy, so the constant is free. Arbitrary callables get the default ``centered``
(``Phi(u)``), which is exact wherever ``u`` is representable.

New transforms need no code change: a Hydra config entry ``_target_: infalign.math.transforms.Custom``
with ``fn: some.module.function`` (any callable ``[0,1] -> R``), or a subclass registered with
:func:`register_transform`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from infalign.errors import ConfigError, require, require_type

Array = Any  # torch.Tensor | np.ndarray

TRANSFORMS: dict[str, type[Transform]] = {}


def register_transform(name: str) -> Callable[[type[Transform]], type[Transform]]:
    """Class decorator adding a transform to the registry under ``name``."""

    def deco(cls: type[Transform]) -> type[Transform]:
        cls.kind = name
        TRANSFORMS[name] = cls
        return cls

    return deco


def _is_tensor(x: Array) -> bool:
    """``isinstance(x, torch.Tensor)`` without importing torch (if it is not loaded, x is no tensor):
    the calibrated-space theory (infalign-analyze) runs without torch's ~2.5 s import."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _lib(x: Array):
    return sys.modules["torch"] if _is_tensor(x) else np


class Transform:
    """Base class. ``calibrated`` is False only for ``raw`` (no calibration, no theory)."""

    kind: str = "transform"
    calibrated: bool = True

    def __call__(self, u: Array) -> Array:
        raise NotImplementedError

    def centered(self, u: np.ndarray, s: np.ndarray) -> np.ndarray:
        """Phi(u) - c for a constant c, accurate near both ends (see module docstring)."""
        return np.asarray(self(u), dtype=np.float64)

    @property
    def label(self) -> str:
        """``kind``, with the exponent of a family that has one, ``kind(t=2)`` (a registered ``u^t`` family
        without a ``label`` of its own: its runs at two ``t`` were named alike, and ``infalign-analyze`` refused
        its ``t: auto`` curves as one label); a subclass with other parameters names them in its own
        ``label``."""
        t = getattr(self, "t", None)
        if isinstance(t, int | float) and not isinstance(t, bool):
            return f"{self.kind}(t={t:g})"
        return self.kind

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label})"


@register_transform("identity")
class Identity(Transform):
    """Phi(u) = u."""

    def __call__(self, u):
        return u

    def centered(self, u, s):
        return -s  # u - 1


@register_transform("log")
class Log(Transform):
    """Phi(u) = log(max(u, floor)).

    ``floor`` (default 1e-6) keeps Phi finite at u = 0, which the unsmoothed C_hat can return;
    prefer ``calibration.smoothing=true`` with this transform, which keeps C >= 0.5/(K+1). In the
    theory engine the floor changes the tilted density only on u < floor, which holds mass
    ~(1+1/beta) * floor^(1+1/beta) there (floor^(1+1/beta) without the floor).
    """

    def __init__(self, floor: float = 1e-6) -> None:
        require_type("transform.floor", floor, float)  # (a string compared with 0 raised a raw TypeError)
        require(0 <= floor < 1, "transform.floor", floor, "0 <= floor < 1")
        self.floor = float(floor)

    def __call__(self, u):
        lib = _lib(u)
        return lib.log(lib.clip(u, self.floor, None)) if self.floor > 0 else lib.log(u)

    def centered(self, u, s):
        """``log(max(u, floor))``, near u = 1 as ``log1p(-s)`` (s = 1 - u), floored there too (a
        floor >= 0.5 reaches past the midpoint)."""
        with np.errstate(divide="ignore"):
            val = np.where(u < 0.5, np.log(np.maximum(u, self.floor)), np.log1p(-s))
        return np.maximum(val, np.log(self.floor)) if self.floor > 0 else val


FLOAT32_MAX = float(np.finfo(np.float32).max)  # ~3.4e38


def finite_in_float32(transform, points: int = 1025, terms: int = 1) -> bool:
    """Whether ``transform`` is finite on a grid of ``[0, 1]`` in float32, training's precision, and so is a
    sum of ``terms`` of its values: ``terms * max |Phi| <= 3.4e38``. Training sums a step's rewards -- each
    RLOO group's G (its leave-one-out baseline) and all P x G rows (the logged mean) -- so ``exp(t u)``,
    finite up to ``t`` = 88.72, overflows the step from ``t`` = 88.72 - ln(P G) (84.6 at 16 x 4); the
    normalised form's ``expm1(t)`` overflows past 88.72 whatever the terms (its values are in [0, 1]).
    The float64 theory takes ``|t| <= 700``. Probed with a numpy array, else (a torch-only callable) a
    torch tensor; True when neither can be evaluated (training's own check then stops a non-finite
    ``Phi(C)``)."""
    grid = np.linspace(0.0, 1.0, points, dtype=np.float32)
    try:
        with np.errstate(all="ignore"):
            values = np.asarray(transform(grid), dtype=np.float32)
    except Exception:  # noqa: BLE001 - a callable written for torch tensors
        try:
            import torch

            values = transform(torch.from_numpy(grid)).float().numpy()
        except Exception:  # noqa: BLE001
            return True
    if not np.isfinite(values).all():
        return False
    return float(np.abs(values.astype(np.float64)).max(initial=0.0)) * terms <= FLOAT32_MAX


@register_transform("exp")
class Exp(Transform):
    """Phi(u) = sign(t) * exp(t * u); normalised: (exp(t u) - 1) / (exp(t) - 1).

    t > 0 rewards the top of the reference distribution (best-of-N), t < 0 punishes its bottom
    (worst-of-N). Both forms are increasing in u. The normalised form maps [0,1] onto [0,1] for
    either sign and equals the plain one divided by ``|exp(t) - 1|``, plus a constant, i.e. it is
    the same policy family with beta rescaled (``beta = beta_n * |expm1(t)|``, docs/method.md §5).
    t = 0 is rejected (the limit is the identity transform).
    """

    def __init__(self, t: float, normalized: bool = False) -> None:
        require(
            isinstance(t, int | float) and math.isfinite(t) and t != 0 and abs(t) <= 700,
            "transform.t", t, "a nonzero finite exponent with |t| <= 700 (t > 0 for BoN, t < 0 for WoN)",
            "t = 0 is the identity transform: use transform=identity",
        )
        # (bool("no") is True: transform.normalized=no trained the normalised transform without a word)
        require_type("transform.normalized", normalized, bool)
        self.t, self.normalized = float(t), bool(normalized)

    @property
    def label(self) -> str:
        t = f"{self.t:g}"
        return f"exp{'n' if self.normalized else ''}(t={t})"

    def __call__(self, u):
        lib = _lib(u)
        if self.normalized:
            return lib.expm1(self.t * u) / math.expm1(self.t)
        return math.copysign(1.0, self.t) * lib.exp(self.t * u)

    def centered(self, u, s):
        t = self.t
        scale = 1.0 / abs(math.expm1(t)) if self.normalized else 1.0
        if t > 0:  # Phi(u) - Phi(1) = e^t * expm1(-t s): exact near u = 1
            return scale * math.exp(t) * np.expm1(-t * s)
        return -scale * np.expm1(t * u)  # Phi(u) - Phi(0): exact near u = 0


@register_transform("custom")
class Custom(Transform):
    """Any callable ``fn: [0,1] -> R`` (or its dotted import path) as a transform.

    Example config entry (``conf/transform/sqrt.yaml``)::

        _target_: infalign.math.transforms.Custom
        fn: numpy.sqrt
        name: sqrt
    """

    def __init__(self, fn: Callable | str, name: str | None = None) -> None:
        if isinstance(fn, str):
            from importlib import import_module

            module, _, attr = fn.rpartition(".")
            try:
                fn = getattr(import_module(module), attr)
            except (ImportError, AttributeError, ValueError) as exc:
                raise ConfigError("transform.fn", fn, "an importable dotted path to a callable") from exc
        require(callable(fn), "transform.fn", fn, "a callable [0,1] -> R")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "custom")

    @property
    def label(self) -> str:
        return self.name

    def __call__(self, u):
        """``fn(u)`` on ``u``'s device: a one-argument NumPy ufunc runs as its ``torch`` namesake
        (``numpy.sqrt`` -> ``torch.sqrt``, on any device, ``meta`` included); any other callable
        gets the tensor and, if it cannot take it (NumPy code on a CUDA tensor), a host copy,
        with the result moved back to ``u``'s device and dtype."""
        if not _is_tensor(u):
            return self.fn(u)
        import torch  # loaded already: u is a tensor

        native = _torch_namesake(self.fn)
        if native is not None:
            return native(u)
        try:
            out = self.fn(u)
        except (TypeError, RuntimeError):  # e.g. "can't convert cuda:0 device type tensor to numpy"
            out = self.fn(u.detach().cpu().numpy())
        if isinstance(out, torch.Tensor) and out.device == u.device:
            return out
        return torch.as_tensor(np.asarray(out), dtype=u.dtype, device=u.device)


def _torch_namesake(fn: Callable) -> Callable | None:
    """``torch.<name>`` for a one-argument NumPy ufunc ``numpy.<name>`` (None if there is none)."""
    if isinstance(fn, np.ufunc) and fn.nin == 1:
        return getattr(sys.modules["torch"], fn.__name__, None)
    return None


@register_transform("raw")
class Raw(Transform):
    """No calibration: the reward model's score as is (the standard-RLHF baseline)."""

    calibrated = False

    def __call__(self, r):
        return r

    def centered(self, u, s):
        raise ConfigError(
            "transform", "raw", "a calibrated transform (identity, log, exp, optimal, custom)",
            "'raw' has no calibrated-space theory; it is meaningful only in the training pipeline",
        )


@register_transform("table")
class Tabulated(Transform):
    """Phi given on a grid in z = logit(u), linearly interpolated (clamped at the grid ends).

    The optimal transform (``infalign.math.theory.optimal_transform``) returns one of these.
    """

    def __init__(self, z: np.ndarray, phi: np.ndarray, name: str = "table") -> None:
        self.z, self.phi, self.name = np.asarray(z, np.float64), np.asarray(phi, np.float64), name

    @property
    def label(self) -> str:
        return self.name

    def centered(self, u, s):
        with np.errstate(divide="ignore"):
            z = np.log(u) - np.log(s)
        return np.interp(z, self.z, self.phi)

    def __call__(self, u):
        if _is_tensor(u):
            import torch

            uu = u.detach().double().cpu().numpy()
            return torch.as_tensor(self.centered(uu, 1.0 - uu), dtype=u.dtype, device=u.device)
        u = np.asarray(u, np.float64)
        return self.centered(u, 1.0 - u)


def as_transform(obj: Any) -> Transform:
    """Wrap a bare callable (e.g. a Hydra ``_partial_`` function) into a :class:`Transform`."""
    if isinstance(obj, Transform):
        return obj
    if callable(obj):
        return Custom(obj)
    raise ConfigError("transform", obj, "a Transform or a callable [0,1] -> R")
