"""backend=echo: a test engine that answers each prompt with its own first tokens (tests/backends/test_new_engine.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lem.backends.base import Engine
from lem.config.rules import at_least


@dataclass
class EchoConfig:
    delay_ms: float = 0.0  # per generated token


def check(cfg: Any) -> None:
    at_least("backend.echo.delay_ms", cfg.backend.echo.delay_ms, 0)


ENGINE = Engine("echo", EchoConfig, "lem.backends.echo.engine:EchoBackend", check)
