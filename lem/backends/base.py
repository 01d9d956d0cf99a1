"""The engine adapter protocol: load, generate with per-token times, unload, describe.

Adapters stay small. Token accounting (what counts as an output token), truncation,
timing arithmetic and energy live outside them, so engines are compared on equal terms.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Literal, Protocol, Sequence

from lem.errors import LemError
from lem.workload.types import GenerationParams, PreparedRequest

if TYPE_CHECKING:
    from lem.config.schema import (
        LemConfig,
        ModelConfig,
        PrecisionConfig,
        ShardingConfig,
    )
    from lem.config.types import Device
    from lem.workload.admission import Admission
    from lem.workload.steps import StepLog

# How an engine is handed the workload: "batch" — lem forms batches and calls generate();
# "continuous" — serve() gets every request at its arrival and the engine schedules them;
# "serial" — serve() too, one request at a time in arrival order.
Scheduling = Literal["batch", "continuous", "serial"]


@dataclass(frozen=True)
class Engine:
    """One registered engine (``lem.backends.registry``): what ``lem.backends.<name>.config`` declares."""

    name: str
    config: type  # the dataclass of backend.<name>.*
    adapter: str  # "module:Class" of the adapter, imported when a run starts
    check: Callable[[Any], None]  # the engine's own validation of the whole LemConfig
    # The engine starts its own GPU workers for tensor/pipeline parallelism (vLLM, TensorRT-LLM):
    # lem runs it as one process whose meter watches every GPU, not one process per rank.
    self_parallel: bool = False
    # More ``backend=<name>`` options of Hydra's backend group: name -> overlay of the backend node
    # (e.g. backend=vllm_server sets backend.name=openai, backend.openai.preset=vllm, launch=true).
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The CUDA devices a run's meter watches, when the engine decides (None: lem's rule in lem.pipeline).
    cuda_indices: Callable[[Any], list[int]] | None = None

    def adapter_class(self) -> type:
        module, _, cls = self.adapter.partition(":")
        return getattr(importlib.import_module(module), cls)


@dataclass
class EngineSpec:
    """What an engine adapter is built from: the config sections it needs, nothing else of the run's config."""

    model: ModelConfig
    options: Any  # backend.<engine>: the engine's own dataclass
    device: Device  # backend.device
    precision: PrecisionConfig
    sharding: ShardingConfig
    max_input_tokens: int  # dataset.max_input_tokens: the longest prompt lem will send
    max_output_tokens: int  # dataset.max_output_tokens
    seed: int  # run.seed
    backend_config: Any = None  # cfg.backend, every engine's options: a server is launched with an embedded engine's settings

    @classmethod
    def of(cls, cfg: LemConfig) -> EngineSpec:
        return cls(
            model=cfg.model,
            options=getattr(cfg.backend, cfg.backend.name.value),
            device=cfg.backend.device,
            precision=cfg.precision,
            sharding=cfg.sharding,
            max_input_tokens=cfg.dataset.max_input_tokens,
            max_output_tokens=cfg.dataset.max_output_tokens,
            seed=cfg.run.seed,
            backend_config=cfg.backend,
        )


@dataclass
class RawGeneration:
    """What an engine returns for one request, before engine-independent accounting.

    ``output_token_ids`` may still hold padding or tokens after EOS (batched HF generate
    pads finished rows); ``lem.workload.tokens.count_output_tokens`` trims them.
    ``token_times`` has one ``time.perf_counter()`` value per entry of ``output_token_ids``:
    when that token became available to the caller.
    """

    request_id: int
    output_token_ids: list[int]
    token_times: list[float]
    start_time: float  # perf_counter when the engine started on this request (scheduled it)
    padded_input_tokens: int | None = None  # None: the engine does not pad (paged / continuous batching)
    arrival_time: float | None = None  # perf_counter when the request was handed to the engine (continuous engines)


@dataclass
class EngineDescription:
    engine: str  # "pytorch"
    engine_version: str  # "transformers 5.23.0, torch 2.13.0+cpu"
    device_type: str  # "cpu" | "cuda"
    device_names: list[str]
    dtype: str  # dtype the weights are held in
    num_threads: int | None
    extra: dict[str, Any]


class LoadedTokenizer:
    """The ``tokenizer`` and ``eos_token_ids`` of the Backend protocol, for adapters that set
    ``self._tokenizer`` and ``self._eos_ids`` in ``load_model``."""

    _tokenizer: Any = None
    _eos_ids: frozenset[int] = frozenset()

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            raise RuntimeError("load_model() must run before the tokenizer is available")
        return self._tokenizer

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self._eos_ids


class Backend(Protocol):
    scheduling: ClassVar[Scheduling]
    spec: EngineSpec

    def init_engine(self) -> None:
        """Set up the runtime (threads, device, compile caches) — the engine_init phase."""

    def load_model(self) -> None:
        """Load weights onto the device — the model_load phase."""

    @property
    def tokenizer(self) -> Any:
        """A Hugging Face tokenizer for the loaded model, used by the engine-independent layer."""

    @property
    def eos_token_ids(self) -> frozenset[int]: ...

    def generate(self, batch: Sequence[PreparedRequest], params: GenerationParams) -> list[RawGeneration]:
        """Serve one batch; return one RawGeneration per request, in input order."""

    def synchronize(self) -> None:
        """Wait for queued device work, so a measurement window closes on finished work."""

    def describe(self) -> EngineDescription: ...

    def unload(self) -> None: ...


class ContinuousBackend(Backend, Protocol):
    """An engine that schedules requests itself (``scheduling`` "continuous": vLLM, TensorRT-LLM;
    or "serial": llama.cpp) and implements ``serve`` instead of being handed batches. Which
    request it is handed when is lem's, engine-independent (``lem.workload.admission``): arrivals
    and the batching policy are the same for every engine; the engine batches what it holds.
    """

    def serve(self, admission: Admission, params: GenerationParams, steps: StepLog) -> Iterator[RawGeneration]:
        """Serve every request of ``admission``: between engine steps, add the requests
        ``admission.due(now)`` returns, report each finished one with ``admission.finished``, and
        yield its RawGeneration (``arrival_time`` and ``start_time`` set) as soon as it finishes.
        Record what the engine ran at each step in ``steps`` where the engine can tell.
        """


def serve_together(backend: ContinuousBackend, batch: Sequence[PreparedRequest], params: GenerationParams) -> list[RawGeneration]:
    """``generate`` for a continuous engine: ``batch`` served at once (warmup); one RawGeneration per request, in input order."""
    from lem.workload.admission import Admission
    from lem.workload.steps import NullStepLog

    admission = Admission.all_at_once(batch, time.perf_counter(), params.max_output_tokens)
    done = {raw.request_id: raw for raw in backend.serve(admission, params, NullStepLog())}
    return [done[request.request_id] for request in batch]


def check_requests_fit(requests: Sequence[PreparedRequest], max_output_tokens: int, limit: int | None = None, limit_key: str = "") -> None:
    """Refuse, before any is served, a request without input tokens or one whose prompt plus
    ``max_output_tokens`` exceeds the loaded engine's sequence limit (``limit``, set by ``limit_key``)."""
    for request in requests:
        if not request.input_ids:
            raise LemError(f"request {request.request_id} has no input tokens; every prompt needs at least one")
        if limit is not None and request.input_tokens + max_output_tokens > limit:
            # Possible when an engine loaded for an earlier job is reused with longer prompts or outputs.
            raise LemError(
                f"request {request.request_id} needs {request.input_tokens + max_output_tokens} tokens "
                f"(prompt + max_output_tokens) but the engine holds {limit_key.rsplit('.', 1)[-1]}={limit}; "
                f"raise {limit_key} or set run.reuse_engine=false"
            )


def unload_quietly(backend: Backend | None) -> None:
    """Unload an engine after its job, whatever happened: freeing memory must not mask the job's own outcome."""
    if backend is None:
        return
    try:
        backend.unload()
    except Exception:  # noqa: BLE001
        pass


def keep_artefacts(backend: Backend | None, run_dir: Path) -> None:
    """Copy the files an engine keeps beside its run (its optional ``artefacts()``: a launched server's log)
    into the run folder, where they are logged with the run."""
    import shutil

    for name, path in (getattr(backend, "artefacts", lambda: {})() if backend is not None else {}).items():
        try:
            shutil.copyfile(path, run_dir / name)
        except OSError:
            pass  # a missing log must not hide the job's own outcome
