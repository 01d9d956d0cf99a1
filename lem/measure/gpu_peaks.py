"""Dense peak FLOP/s of common NVIDIA GPUs (and AMD's MI300X), per compute dtype: the denominator of MFU.

Figures are the vendor datasheet's *dense* tensor-core throughput (the "with sparsity"
figure halved) for float16/bfloat16/float8/tfloat32, and CUDA-core (non-tensor) throughput
for float32: lem sets ``torch.backends.cuda.matmul.allow_tf32 = False``, so float32 matmuls
do not run on tensor cores unless the caller says so (``tf32=True``). They are boost-clock
peaks: a GPU that throttles or runs at a lower application clock cannot reach them.

Lookup is by ``torch.cuda.get_device_name()`` (e.g. "NVIDIA H100 80GB HBM3"), matched
case-insensitively against patterns tried in order, most specific first ("H100 PCIe"
before "H100", "A100" before "A10"). Memory bandwidth and board power of the same rows are in
``lem.measure.device_specs``. Unknown devices, CPUs and dtypes a GPU has no
tensor-core path for (bfloat16 on V100/T4) give ``None`` — never a guess.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

TERA = 1e12


@dataclass(frozen=True)
class GpuPeak:
    name: str  # canonical name, e.g. "H100 SXM"
    pattern: str  # regex searched in the lower-cased device name
    tflops: dict[str, float]  # dtype -> dense peak TFLOP/s
    source: str  # where the figures come from


# Order matters: the first pattern that matches wins.
GPU_PEAKS: tuple[GpuPeak, ...] = (
    # GB200 (Grace Blackwell superchip, up to 1200 W) is clocked above HGX B200 (1000 W): its own row, tried first.
    GpuPeak("GB200", r"\bgb200\b", {"float32": 80.0, "tfloat32": 1250.0, "bfloat16": 2500.0, "float16": 2500.0, "float8": 5000.0},
            "NVIDIA GB200 NVL72 datasheet, per Blackwell GPU (sparse figures halved)"),
    GpuPeak("B200", r"\bb200\b", {"float32": 75.0, "tfloat32": 1100.0, "bfloat16": 2250.0, "float16": 2250.0, "float8": 4500.0},
            "NVIDIA HGX B200 datasheet, per GPU (sparse figures halved)"),
    GpuPeak("H200 NVL", r"h200 nvl", {"float32": 60.0, "tfloat32": 417.5, "bfloat16": 835.5, "float16": 835.5, "float8": 1670.5},
            "NVIDIA H200 datasheet, NVL column (sparse figures halved)"),
    GpuPeak("H200", r"\bh200\b", {"float32": 67.0, "tfloat32": 494.5, "bfloat16": 989.5, "float16": 989.5, "float8": 1979.0},
            "NVIDIA H200 datasheet, SXM column (sparse figures halved)"),
    GpuPeak("GH200", r"\bgh200\b", {"float32": 67.0, "tfloat32": 494.5, "bfloat16": 989.5, "float16": 989.5, "float8": 1979.0},
            "NVIDIA GH200 datasheet (H100 SXM-class GPU, sparse figures halved)"),
    GpuPeak("H100 NVL", r"h100 nvl", {"float32": 60.0, "tfloat32": 417.5, "bfloat16": 835.5, "float16": 835.5, "float8": 1670.5},
            "NVIDIA H100 datasheet, NVL column (sparse figures halved)"),
    GpuPeak("H100 PCIe", r"h100 pcie", {"float32": 51.0, "tfloat32": 378.0, "bfloat16": 756.0, "float16": 756.0, "float8": 1513.0},
            "NVIDIA H100 datasheet, PCIe column (sparse figures halved)"),
    GpuPeak("H100 SXM", r"\bh100\b", {"float32": 67.0, "tfloat32": 494.5, "bfloat16": 989.5, "float16": 989.5, "float8": 1979.0},
            "NVIDIA H100 datasheet, SXM column (sparse figures halved); 'H100 80GB HBM3' is the SXM part"),
    GpuPeak("A100", r"\ba100\b", {"float32": 19.5, "tfloat32": 156.0, "bfloat16": 312.0, "float16": 312.0},
            "NVIDIA A100 datasheet (40GB/80GB, SXM and PCIe share these peaks)"),
    GpuPeak("L40S", r"\bl40s\b", {"float32": 91.6, "tfloat32": 183.0, "bfloat16": 362.05, "float16": 362.05, "float8": 733.0},
            "NVIDIA L40S datasheet (sparse figures halved)"),
    GpuPeak("L40", r"\bl40\b", {"float32": 90.5, "tfloat32": 90.5, "bfloat16": 181.0, "float16": 181.0, "float8": 362.0},
            "NVIDIA L40 datasheet (sparse figures halved)"),
    GpuPeak("L4", r"\bl4\b", {"float32": 30.3, "tfloat32": 60.0, "bfloat16": 121.0, "float16": 121.0, "float8": 242.5},
            "NVIDIA L4 datasheet (sparse figures halved)"),
    # AWS publishes no datasheet for the A10G; these are the A10's, which is what A10G MFU tables commonly use.
    GpuPeak("A10G", r"\ba10g\b", {"float32": 31.2, "tfloat32": 62.5, "bfloat16": 125.0, "float16": 125.0},
            "NVIDIA A10 datasheet (used for the AWS A10G; approximate)"),
    GpuPeak("A10", r"\ba10\b", {"float32": 31.2, "tfloat32": 62.5, "bfloat16": 125.0, "float16": 125.0},
            "NVIDIA A10 datasheet (sparse figures halved)"),
    GpuPeak("RTX A6000", r"rtx a6000", {"float32": 38.7, "tfloat32": 77.4, "bfloat16": 154.8, "float16": 154.8},
            "NVIDIA RTX A6000 datasheet (sparse figures halved)"),
    # GeForce: tensor rates with float32 accumulation (what PyTorch matmuls use) are half the FP16-accumulate figures.
    GpuPeak("RTX 4090", r"rtx 4090", {"float32": 82.6, "tfloat32": 82.6, "bfloat16": 165.2, "float16": 165.2, "float8": 330.3},
            "NVIDIA Ada Lovelace architecture whitepaper, RTX 4090 (FP32 accumulate, dense)"),
    GpuPeak("RTX 3090", r"rtx 3090", {"float32": 35.6, "tfloat32": 35.6, "bfloat16": 71.0, "float16": 71.0},
            "NVIDIA Ampere GA102 whitepaper, RTX 3090 (FP32 accumulate, dense)"),
    GpuPeak("V100 SXM2", r"v100 sxm", {"float32": 15.7, "float16": 125.0},
            "NVIDIA V100 datasheet, SXM2 column (no bfloat16 tensor cores)"),
    GpuPeak("V100 PCIe", r"\bv100\b", {"float32": 14.0, "float16": 112.0},
            "NVIDIA V100 datasheet, PCIe column (no bfloat16 tensor cores)"),
    GpuPeak("T4", r"\bt4\b", {"float32": 8.1, "float16": 65.0},
            "NVIDIA T4 datasheet (no bfloat16 tensor cores)"),
    # ROCm's torch.cuda.get_device_name() gives "AMD Instinct MI300X" (or "... MI300X VF" in a VM).
    GpuPeak("MI300X", r"\bmi300x\b", {"float32": 163.4, "tfloat32": 653.7, "bfloat16": 1307.4, "float16": 1307.4, "float8": 2614.9},
            "AMD Instinct MI300X data sheet (dense; the sparsity figures are twice these; float32 = its matrix/vector FP32)"),
)

_DTYPE_ALIASES = {
    "fp32": "float32", "float": "float32", "torch.float32": "float32",
    "tf32": "tfloat32",
    "bf16": "bfloat16", "torch.bfloat16": "bfloat16",
    "fp16": "float16", "half": "float16", "torch.float16": "float16",
    "fp8": "float8", "float8_e4m3fn": "float8", "float8_e5m2": "float8",
}


def _normalise(device_name: str) -> str:
    # "NVIDIA A100-SXM4-80GB" and "Tesla V100-PCIE-32GB" use dashes where others use spaces.
    return re.sub(r"[-_\s]+", " ", device_name.lower()).strip()


def find_gpu(device_name: str | None) -> GpuPeak | None:
    """The table row for a ``torch.cuda.get_device_name()`` string, or None when unknown."""
    if not device_name:
        return None
    name = _normalise(device_name)
    for row in GPU_PEAKS:
        if re.search(row.pattern, name):
            return row
    return None


def normalise_dtype(dtype: str, *, tf32: bool = False) -> str:
    d = _DTYPE_ALIASES.get(str(dtype).lower(), str(dtype).lower())
    return "tfloat32" if d == "float32" and tf32 else d


def peak_flops_per_s(device_name: str | None, dtype: str, *, tf32: bool = False) -> float | None:
    """Dense peak FLOP/s of ``device_name`` for matmuls in ``dtype``; None when unknown.

    ``tf32=True`` when float32 matmuls were allowed to run as TF32 on tensor cores.
    """
    row = find_gpu(device_name)
    if row is None:
        return None
    tflops = row.tflops.get(normalise_dtype(dtype, tf32=tf32))
    return tflops * TERA if tflops is not None else None


def devices_peak_flops_per_s(device_names: Sequence[str], dtype: str, *, tf32: bool = False) -> float | None:
    """Summed dense peak FLOP/s of every device an engine computes on (tensor/pipeline parallel: all of them).

    None when the list is empty or any device is unknown: a partial sum would overstate MFU.
    """
    peaks = [peak_flops_per_s(name, dtype, tf32=tf32) for name in device_names]
    if not peaks or any(p is None for p in peaks):
        return None
    return float(sum(peaks))  # type: ignore[arg-type]
