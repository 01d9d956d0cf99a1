"""User-facing errors: one line, naming the key, the value and what is allowed."""

from __future__ import annotations

from typing import Any


class LemError(Exception):
    """An error caused by the user's input or environment; printed as one line, never a traceback."""


class ConfigError(LemError):
    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        super().__init__(f"{key}={_show(value)}: expected {allowed}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable with its own arguments: launchers (joblib, submitit) send a job's exception back to the sweep.
        return (ConfigError, (self.key, self.value, self.allowed))


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if value == "":
        return '""'
    if hasattr(value, "value") and not isinstance(value, (int, float, str)):
        return str(value.value)  # an Enum
    return str(value)


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (its type's name when it has no message)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
