"""Errors with messages that name the offending key and what is allowed."""

from __future__ import annotations

CONFIG_ERROR_EXIT = 2  # a command's exit status for a configuration refused before any compute


class ConfigError(ValueError):
    """A configuration value is out of range. The message names the key and the allowed values."""

    def __init__(self, key: str, value: object, allowed: str, hint: str = "") -> None:
        self.key, self.value, self.allowed, self.hint = key, value, allowed, hint
        msg = f"{key}={value!r} is not allowed: {allowed}"
        super().__init__(msg + (f" ({hint})" if hint else ""))

    def __reduce__(self):  # pickled by its fields (it crosses process boundaries: infra/background.py)
        return type(self), (self.key, self.value, self.allowed, self.hint)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's time limit or preemption), raised by ``apps/train.py:
    terminate_on_sigterm``'s handler: the run stops like a Ctrl-C -- recorded ``interrupted``, resumable --
    and the process exits with 143 (128 + SIGTERM), as an unhandled SIGTERM would, so a scheduler or
    script does not read it as a success. Defined here, in a module never run as ``__main__``: under
    ``python -m infalign.apps.train`` the app module exists twice, and a class of its own was two classes
    (the run was recorded as interrupted by Ctrl-C)."""


# The lines OmegaConf appends to its errors' messages (``    full_key: algo.kl_target``, ``    object_type=dict``)
OMEGACONF_TRAILER = ("full_key:", "reference_type=", "object_type=")


def error_line(text: object) -> str:
    """The line of an error message that says what went wrong -- its last non-empty line (a recorded error is
    ``"<Type>: <message>"``; a wrapped error's cause comes last), skipping the ``full_key:`` / ``object_type=``
    lines OmegaConf appends (``InterpolationResolutionError: ... kl_point=9 is not allowed: an integer in
    [0, 4] ...`` was shown as ``object_type=dict``, sweep walkthrough); '' for no text."""
    lines = [ln.strip() for ln in str(text or "").strip().splitlines() if ln.strip()]
    told = [ln for ln in lines if not ln.startswith(OMEGACONF_TRAILER)]
    return (told or lines or [""])[-1]


def require(ok: bool, key: str, value: object, allowed: str, hint: str = "") -> None:
    """Raise :class:`ConfigError` unless ``ok``."""
    if not ok:
        raise ConfigError(key, value, allowed, hint)


def require_type(key: str, value: object, kind: type, optional: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``value`` is of ``kind`` -- ``bool`` (``true`` / ``false``; a
    string such as ``off`` would otherwise be truthy), ``int`` (not a bool, not a float) or ``float`` (an
    int or a float, finite) -- or None when ``optional``. What a command-line override such as
    ``algo.beta=abc`` or ``policy_cache=off`` is checked with before any compute."""
    import math

    if value is None and optional:
        return
    if kind is bool:
        ok, allowed = isinstance(value, bool), "true or false"
    elif kind is int:
        ok, allowed = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        allowed = "a finite number"
    else:
        raise TypeError(f"require_type checks bool, int or float, not {kind}")
    require(ok, key, value, allowed + (" or null" if optional else ""))
