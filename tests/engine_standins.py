"""Put a stand-in engine package (tests/standins/<name>) in place of the real one for one test.

The stand-ins implement only the API surface lem's adapters use, as the engines' sources define
it (versions named in each stand-in's docstring). They let the adapters run end to end on a CPU.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

STANDINS_DIR = Path(__file__).resolve().parent / "standins"


def install(monkeypatch: pytest.MonkeyPatch, package: str) -> ModuleType:
    """Import tests/standins/<package> as ``package``; ``uninstall`` undoes it (monkeypatch restores the rest)."""
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        monkeypatch.delitem(sys.modules, name)  # a real engine already imported comes back after the test
    monkeypatch.syspath_prepend(str(STANDINS_DIR))
    module = importlib.import_module(package)
    assert Path(module.__file__).resolve().is_relative_to(STANDINS_DIR), module.__file__
    return module


def uninstall(package: str) -> None:
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        file = getattr(sys.modules[name], "__file__", None)
        if file and Path(file).resolve().is_relative_to(STANDINS_DIR):
            del sys.modules[name]
