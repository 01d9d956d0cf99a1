"""The raw record format, version ``lem.raw/1`` (documented in docs/records.md).

A run writes one JSON-lines file per process, ``raw/process-<index>.jsonl``. Each line is
one self-contained JSON object with a ``kind``; lines are appended and flushed as events
complete, so a killed run leaves every finished line readable. Nothing is aggregated in
place: the summary is computed later from these lines (``lem.results.aggregate``).

All times are seconds on one monotonic clock (``time.perf_counter``) relative to the
process's ``t0``; the header maps ``t0`` to wall-clock time (``t0_unix_s``).
Measurements that nothing took are ``null`` with ``source: null`` — never 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

RAW_SCHEMA_VERSION = "lem.raw/1"
SUMMARY_SCHEMA_VERSION = "lem.summary/1"

PhaseName = Literal["engine_init", "model_load", "warmup", "generation"]
PHASE_ORDER: tuple[str, ...] = ("engine_init", "model_load", "warmup", "generation")

# Where a figure came from. None means nothing measured it (the value is null too).
EnergySource = Literal["counter", "sampled", "rapl", "estimated"]


@dataclass
class HeaderRecord:
    process_index: int
    world_size: int
    t0_unix_s: float  # wall-clock time (time.time()) at t0
    hostname: str
    pid: int
    lem_version: str
    device_type: str  # "cpu" | "cuda"
    device_names: list[str]  # e.g. ["NVIDIA H100 80GB HBM3"] or ["Intel Xeon ..."]
    engine: str  # backend name
    engine_version: str  # e.g. "transformers 5.23.0, torch 2.13.0+cpu"
    model: str
    dtype: str  # the dtype the weights were actually loaded in
    num_threads: int | None  # torch intra-op threads actually in force (CPU)
    schema_version: str = RAW_SCHEMA_VERSION
    kind: str = "header"


@dataclass
class EnergyReading:
    """Energy of one phase on one device/component. Filled by the energy layer (issue 3)."""

    device: str  # e.g. "cuda:0", "cpu-package-0", "dram-0", "system"
    component: str  # "gpu" | "cpu" | "dram" | "system" (system: a whole-machine figure that already contains the others)
    energy_j: float | None = None
    source: EnergySource | None = None


@dataclass
class PhaseRecord:
    name: str  # one of PHASE_ORDER
    start_s: float
    end_s: float
    energy: list[EnergyReading] = field(default_factory=list)  # empty: nothing measured
    kind: str = "phase"

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class RequestRecord:
    request_id: int  # index of the prompt in the workload, stable across engines
    batch_id: int  # which measured batch served it
    batch_size: int  # requests in that batch
    input_tokens: int  # prompt tokens after chat template and truncation (no padding)
    output_tokens: int  # real generated tokens: up to and including EOS, no padding
    arrival_s: float  # when the request became available (offline traffic: the generation phase start)
    start_s: float  # when the engine started serving it (its batch started)
    first_token_s: float | None  # when its first output token was available; None if it produced none
    end_s: float  # when its last output token was available
    token_times_s: list[float]  # availability time of every output token (len == output_tokens)
    finish_reason: str  # "stop" (EOS) | "length" (hit max_output_tokens)
    padded_input_tokens: int | None = None  # input length the engine actually processed, padding included
    kind: str = "request"


@dataclass
class MemoryRecord:
    peak_rss_bytes: int | None
    cuda_peak_allocated_bytes: list[int] | None = None  # per visible CUDA device
    cuda_peak_reserved_bytes: list[int] | None = None
    source: str = "psutil+torch.cuda"
    kind: str = "memory"


@dataclass
class FlopsRecord:
    """FLOPs of the measured generation phase. Filled by the FLOPs layer (issue 3)."""

    total_flops: float | None = None
    source: str | None = None  # "calflops" | "analytical" | "2x_params" | None
    kind: str = "flops"


@dataclass
class EndRecord:
    status: str  # "completed"
    end_s: float
    kind: str = "end"


def to_json_dict(record: Any) -> dict[str, Any]:
    return asdict(record)
