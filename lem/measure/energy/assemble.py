"""Which energy sources a meter opens: NVML for the engine's GPUs, RAPL, CodeCarbon where no sensor exists."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lem.measure.energy.carbon import CodeCarbonSource
from lem.measure.energy.nvml import NvmlSource
from lem.measure.energy.rapl import DEFAULT_ROOT, RaplSource
from lem.measure.energy.sources import Source


def available_sources(
    cuda_indices: Sequence[int],
    *,
    nvml: bool,
    rapl: bool,
    codecarbon: bool,
    host_meters: bool,
    rapl_root: str | Path | None,
    codecarbon_settings: Mapping[str, Any],
) -> tuple[list[Source], list[str]]:
    """The sources to open, in the order they are tried, and a note for each one switched off or left to another process."""
    sources: list[Source] = []
    notes: list[str] = []
    if cuda_indices and nvml:
        sources.append(NvmlSource(cuda_indices))
    elif cuda_indices:
        notes.append("energy.nvml=false: GPU energy not measured")
    if not host_meters:
        notes.append("host meters (RAPL, CodeCarbon) read by another process of this run on this host")
    elif rapl:
        sources.append(RaplSource(rapl_root or DEFAULT_ROOT))
    else:
        notes.append("energy.rapl=false: RAPL not read")
    if codecarbon and host_meters:
        sources.append(CodeCarbonSource(**codecarbon_settings))
    elif not codecarbon:
        notes.append("energy.codecarbon.enabled=false: no CPU/RAM estimate where no sensor exists")
    return sources, notes
