"""Put a stand-in engine package (tests/backends/standins/<name>) in place of the real one for one test.

The stand-ins implement only the API surface lem's adapters use, as the engines' sources define
it (versions named in each stand-in's docstring). They let the adapters run end to end on a CPU.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from lem.backends.registry import effective_batching
from lem.config.schema import BackendName, BatchingConfig, LemConfig
from lem.config.types import BatchingStrategy
from lem.workload.admission import Admission
from lem.workload.prepare import prepare_requests
from lem.workload.serve import PhaseClock, generation_params, serve_open_loop
from lem.workload.steps import StepLog
from lem.workload.types import GenerationParams, Prompt

STANDINS_DIR = Path(__file__).resolve().parent / "standins"


def install(monkeypatch: pytest.MonkeyPatch, package: str) -> ModuleType:
    """Import tests/backends/standins/<package> as ``package``; ``uninstall`` undoes it (monkeypatch restores the rest)."""
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


# --- running an adapter on a stand-in ---------------------------------------------------------------

PROMPTS = [
    "what is the capital of france ?",
    "one two three",
    "the quick brown fox jumps over the lazy dog .",
    "hello",
    "measure the power , the latency and the throughput of every run !",
    "a language model predicts the next token",
]


def engine_cfg(model_dir: Path, backend: BackendName, **engine_overrides: Any) -> LemConfig:
    """A config for ``backend`` on ``model_dir``, with ``backend.<backend>.*`` fields overridden."""
    cfg = LemConfig()
    cfg.model.name_or_path = str(model_dir)
    cfg.backend.name = backend
    cfg.dataset.max_input_tokens = 64
    cfg.dataset.max_output_tokens = 16
    for key, value in engine_overrides.items():
        setattr(getattr(cfg.backend, backend.value), key, value)
    return cfg


def loaded_backend(cfg: LemConfig) -> Any:
    from lem.backends.registry import create_engine

    backend = create_engine(cfg)
    backend.init_engine()
    backend.load_model()
    return backend


def prepared(backend: Any, cfg: LemConfig, texts: list[str] = PROMPTS) -> list[Any]:
    return prepare_requests([Prompt(i, t) for i, t in enumerate(texts)], backend.tokenizer, cfg.model, cfg.dataset.max_input_tokens)


def serve_records(
    backend: Any, cfg: LemConfig, requests: Any, offsets_s: Any, params: GenerationParams | None = None, steps: StepLog | None = None
) -> tuple[list[Any], PhaseClock]:
    """Serve through the pipeline's own ``serve_open_loop``: the records lem would write, and the phase clock."""
    clock = PhaseClock()
    params = params or generation_params(cfg)
    steps = steps if steps is not None else StepLog("test")
    records = [record for batch in serve_open_loop(backend, requests, offsets_s, effective_batching(cfg), params, clock, steps) for record in batch]
    return records, clock


def admission(requests: Any, arrival_times: Any, params: GenerationParams, batch_size: int | None = None) -> Admission:
    """Requests handed over at ``arrival_times``, continuously (at most ``batch_size`` in flight; default all)."""
    batching = BatchingConfig(strategy=BatchingStrategy.continuous, batch_size=batch_size or max(1, len(requests)))
    return Admission(requests, arrival_times, batching, params.max_output_tokens)


def serve_direct(backend: Any, requests: Any, arrival_times: Any, params: GenerationParams, batch_size: int | None = None) -> Any:
    """``backend.serve`` on its own (a generator), requests handed over at their arrival times."""
    return backend.serve(admission(requests, arrival_times, params, batch_size), params, StepLog("test"))
