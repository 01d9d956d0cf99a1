"""The checks every ``check_<group>`` is written with: ranges, installed packages, devices.

Each raises ``ConfigError`` (one line: the key, the value, what is allowed). Light: torch is
imported only where a config asks about CUDA.
"""

from __future__ import annotations

import importlib.util
import math
import os
from typing import Any

from lem.config.types import Device
from lem.errors import ConfigError


def at_least(key: str, value: float | int | None, minimum: float | int) -> None:
    if value is None or not _finite(value) or value < minimum:
        raise ConfigError(key, value, f"a {_finite_word(value)}number >= {minimum}")


def in_range(key: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    ok = _finite(value) and (low < value if low_open else low <= value) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ConfigError(key, value, f"a {_finite_word(value)}number in {bracket}{low}, {high}]")


def _finite(value: float | int) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def _finite_word(value: float | int | None) -> str:
    """'finite ' when the value is nan or ±inf, which pass no comparison a user would mean."""
    return "" if value is None or _finite(value) else "finite "


def require_package(key: str, value: Any, module: str, install: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ConfigError(key, value, f"the '{module}' package, which is not installed ({install})")


def resolve_device(device: Device) -> Device:
    """auto → cuda when torch sees a GPU, else cpu (imports torch only for auto)."""
    if device is not Device.auto:
        return device
    import torch

    return Device.cuda if torch.cuda.is_available() else Device.cpu


def require_cuda(key: str, value: Any) -> None:
    import torch  # only reached when the config explicitly asks for CUDA

    if not torch.cuda.is_available():
        raise ConfigError(key, value, "a machine with a CUDA GPU visible to torch (none found); use backend.device=cpu")


def nvidia_gpu_present() -> bool:
    """An NVIDIA GPU on this machine, asked of the driver's files (no torch import)."""
    gpus = "/proc/driver/nvidia/gpus"
    return os.path.exists("/dev/nvidia0") or (os.path.isdir(gpus) and bool(os.listdir(gpus)))
