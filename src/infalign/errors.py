"""Errors with messages that name the offending key and what is allowed."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is out of range. The message names the key and the allowed values."""

    def __init__(self, key: str, value: object, allowed: str, hint: str = "") -> None:
        self.key, self.value, self.allowed, self.hint = key, value, allowed, hint
        msg = f"{key}={value!r} is not allowed: {allowed}"
        super().__init__(msg + (f" ({hint})" if hint else ""))

    def __reduce__(self):  # pickled by its fields (it crosses process boundaries: infra/background.py)
        return type(self), (self.key, self.value, self.allowed, self.hint)


def require(ok: bool, key: str, value: object, allowed: str, hint: str = "") -> None:
    """Raise :class:`ConfigError` unless ``ok``."""
    if not ok:
        raise ConfigError(key, value, allowed, hint)
