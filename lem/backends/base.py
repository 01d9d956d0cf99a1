"""The engine adapter protocol: load, generate with per-token times, unload, describe.

Adapters stay small. Token accounting (what counts as an output token), truncation,
timing arithmetic and energy live outside them, so engines are compared on equal terms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from lem.workload.types import GenerationParams, PreparedRequest


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
    start_time: float  # perf_counter when the engine started on this request
    padded_input_tokens: int | None = None


@dataclass
class EngineDescription:
    engine: str  # "pytorch"
    engine_version: str  # "transformers 5.23.0, torch 2.13.0+cpu"
    device_type: str  # "cpu" | "cuda"
    device_names: list[str]
    dtype: str  # dtype the weights are held in
    num_threads: int | None
    extra: dict[str, Any]


class Backend(Protocol):
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
