"""Physical limits of a GPU: dense peak FLOP/s, peak memory bandwidth and board power (the physical floor's inputs).

Rows are keyed by ``lem.measure.gpu_peaks``' canonical names, so a device name is matched once,
by the same normalisation and first-match-wins patterns as the peak FLOP/s table. Where one
``GpuPeak`` row covers parts with different memory or power (A100 40GB/80GB, SXM/PCIe), its
entry lists variants, each with a regex searched in the normalised device name; the first that
matches wins and a variant without a regex is the row's default. Figures are the vendor
datasheet's: memory bandwidth in bytes/s (1 TB/s = 10¹² B/s, as datasheets count), and the
TDP or maximum board power in W (the top of a configurable range). Unknown devices, CPUs and
parts a row does not single out give ``None`` — never a guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lem.measure.gpu_peaks import TERA, _normalise, find_gpu, normalise_dtype

GIGA = 1e9


@dataclass(frozen=True)
class DeviceSpec:
    name: str  # canonical, e.g. "A100 80GB SXM"
    memory_bandwidth_bytes_per_s: float
    tdp_w: float  # TDP / maximum board power
    source: str
    variant: str | None = None  # regex searched in the normalised device name; None: the row's default


@dataclass(frozen=True)
class DeviceLimits:
    name: str  # canonical, e.g. "H100 SXM"
    peak_flops_per_s: float | None  # dense, at the dtype asked (from gpu_peaks); None when the GPU has no path for it
    memory_bandwidth_bytes_per_s: float
    tdp_w: float
    source: str


def _spec(name: str, bandwidth_bytes_per_s: float, tdp_w: float, source: str, variant: str | None = None) -> DeviceSpec:
    return DeviceSpec(name, bandwidth_bytes_per_s, tdp_w, source, variant)


# Keyed by GpuPeak.name; within an entry the first matching variant wins.
DEVICE_SPECS: dict[str, tuple[DeviceSpec, ...]] = {
    "GB200": (_spec("GB200", 8.0 * TERA, 1200.0,
                    "NVIDIA GB200 NVL72 datasheet: 576 TB/s HBM3e over 72 Blackwell GPUs; 1200 W per GPU (NVIDIA's GB200 figure)"),),
    "B200": (_spec("B200", 8.0 * TERA, 1000.0, "NVIDIA DGX/HGX B200 datasheet, per GPU: 8 TB/s HBM3e, 1000 W"),),
    "H200 NVL": (_spec("H200 NVL", 4.8 * TERA, 600.0, "NVIDIA H200 datasheet, NVL column: 4.8 TB/s, up to 600 W (configurable)"),),
    "H200": (_spec("H200 SXM", 4.8 * TERA, 700.0, "NVIDIA H200 datasheet, SXM column: 4.8 TB/s, up to 700 W (configurable)"),),
    "GH200": (
        _spec("GH200 144GB HBM3e", 4.9 * TERA, 1000.0,
              "NVIDIA GH200 datasheet: 4.9 TB/s HBM3e; 1000 W is the whole superchip's (Grace CPU + GPU + memory, 450-1000 W)",
              r"144\s?gb?\b|hbm3e"),
        _spec("GH200 96GB HBM3", 4.0 * TERA, 1000.0,
              "NVIDIA GH200 datasheet: 4 TB/s HBM3; 1000 W is the whole superchip's (Grace CPU + GPU + memory, 450-1000 W)"),
    ),
    "H100 NVL": (_spec("H100 NVL", 3.9 * TERA, 400.0, "NVIDIA H100 datasheet, NVL column: 3.9 TB/s, 350-400 W (configurable)"),),
    "H100 PCIe": (_spec("H100 PCIe", 2.0 * TERA, 350.0, "NVIDIA H100 datasheet, PCIe column: 2 TB/s, 300-350 W (configurable)"),),
    "H100 SXM": (_spec("H100 SXM", 3.35 * TERA, 700.0, "NVIDIA H100 datasheet, SXM column: 3.35 TB/s, up to 700 W (configurable)"),),
    "A100": (
        _spec("A100 40GB PCIe", 1555.0 * GIGA, 250.0, "NVIDIA A100 datasheet, 40GB PCIe: 1,555 GB/s, 250 W", r"(?=.*\b40\s?gb\b)(?=.*pcie)"),
        _spec("A100 80GB PCIe", 1935.0 * GIGA, 300.0, "NVIDIA A100 datasheet, 80GB PCIe: 1,935 GB/s, 300 W", r"pcie"),
        _spec("A100 40GB SXM", 1555.0 * GIGA, 400.0, "NVIDIA A100 datasheet, 40GB SXM: 1,555 GB/s, 400 W", r"\b40\s?gb\b"),
        # Generic names ("A100", "A100-SXM4-80GB", "A100 80GB") take the 80GB SXM row: the commonest part.
        _spec("A100 80GB SXM", 2039.0 * GIGA, 400.0,
              "NVIDIA A100 datasheet, 80GB SXM: 2,039 GB/s, 400 W (up to 500 W with custom thermals); used for A100 names without '40GB' or 'PCIe'"),
    ),
    "L40S": (_spec("L40S", 864.0 * GIGA, 350.0, "NVIDIA L40S datasheet: 864 GB/s GDDR6, 350 W max power"),),
    "L40": (_spec("L40", 864.0 * GIGA, 300.0, "NVIDIA L40 datasheet: 864 GB/s GDDR6, 300 W max power"),),
    "L4": (_spec("L4", 300.0 * GIGA, 72.0, "NVIDIA L4 datasheet: 300 GB/s GDDR6, 72 W max power"),),
    "A10G": (_spec("A10G", 600.0 * GIGA, 300.0,
                   "approximate: AWS publishes no datasheet; the A10's 600 GB/s GDDR6, and the 300 W power limit NVML reports on EC2 G5"),),
    "A10": (_spec("A10", 600.0 * GIGA, 150.0, "NVIDIA A10 datasheet: 600 GB/s GDDR6, 150 W max power"),),
    "RTX A6000": (_spec("RTX A6000", 768.0 * GIGA, 300.0, "NVIDIA RTX A6000 datasheet: 768 GB/s GDDR6, 300 W"),),
    "RTX 4090": (_spec("RTX 4090", 1008.0 * GIGA, 450.0, "NVIDIA GeForce RTX 4090 specifications: 1,008 GB/s GDDR6X, 450 W total graphics power"),),
    "RTX 3090": (_spec("RTX 3090", 936.0 * GIGA, 350.0, "NVIDIA GeForce RTX 3090 specifications: 936 GB/s GDDR6X, 350 W total graphics power"),),
    # The "V100 SXM2" peak row matches any "V100-SXM…" name; SXM3 (DGX-2) parts draw more: SXM2 only.
    "V100 SXM2": (_spec("V100 SXM2", 900.0 * GIGA, 300.0, "NVIDIA V100 datasheet, SXM2 column: 900 GB/s, 300 W", r"sxm2"),),
    "V100 PCIe": (_spec("V100 PCIe", 900.0 * GIGA, 250.0, "NVIDIA V100 datasheet, PCIe column: 900 GB/s, 250 W", r"pcie"),),
    "T4": (_spec("T4", 320.0 * GIGA, 70.0, "NVIDIA T4 datasheet: 320 GB/s GDDR6, 70 W"),),
    "MI300X": (_spec("MI300X", 5.3 * TERA, 750.0, "AMD Instinct MI300X data sheet: 5.3 TB/s HBM3, 750 W peak board power"),),
}


def find_device_spec(device_name: str | None) -> DeviceSpec | None:
    """The bandwidth/power row for a ``torch.cuda.get_device_name()`` string, or None when unknown."""
    row = find_gpu(device_name)
    if row is None or device_name is None:
        return None
    name = _normalise(device_name)
    for spec in DEVICE_SPECS.get(row.name, ()):
        if spec.variant is None or re.search(spec.variant, name):
            return spec
    return None


def device_limits(device_name: str | None, dtype: str | None, *, tf32: bool = False) -> DeviceLimits | None:
    """Peak FLOP/s at ``dtype`` (dense), memory bandwidth and TDP of ``device_name``; None when unknown.

    ``peak_flops_per_s`` is None when ``dtype`` is None or the GPU has no path for it (bfloat16 on a T4).
    ``tf32=True`` when float32 matmuls were allowed to run as TF32 on tensor cores.
    """
    row = find_gpu(device_name)
    spec = find_device_spec(device_name)
    if row is None or spec is None:
        return None
    tflops = row.tflops.get(normalise_dtype(dtype, tf32=tf32)) if dtype else None
    return DeviceLimits(
        name=spec.name,
        peak_flops_per_s=tflops * TERA if tflops is not None else None,
        memory_bandwidth_bytes_per_s=spec.memory_bandwidth_bytes_per_s,
        tdp_w=spec.tdp_w,
        source=f"{spec.source}; peak FLOP/s: {row.source}",
    )
