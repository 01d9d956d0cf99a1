"""Device table for the physical floor: bandwidth and TDP keyed by gpu_peaks' rows, the same matching."""

from __future__ import annotations

import pytest

from lem.measure.device_specs import (
    DEVICE_SPECS,
    DeviceLimits,
    device_limits,
    find_device_spec,
)
from lem.measure.gpu_peaks import GPU_PEAKS, TERA, find_gpu, peak_flops_per_s

# The GPUs issue 18 names, as torch.cuda.get_device_name() spells them (or close to it).
ISSUE_GPUS = {
    "NVIDIA H100 80GB HBM3": "H100 SXM",
    "NVIDIA H100 PCIe": "H100 PCIe",
    "NVIDIA H100 NVL": "H100 NVL",
    "NVIDIA H200": "H200 SXM",
    "NVIDIA H200 NVL": "H200 NVL",
    "NVIDIA B200": "B200",
    "NVIDIA GB200": "GB200",
    "NVIDIA A100-SXM4-80GB": "A100 80GB SXM",
    "NVIDIA A100-SXM4-40GB": "A100 40GB SXM",
    "NVIDIA A100 80GB PCIe": "A100 80GB PCIe",
    "NVIDIA A100-PCIE-40GB": "A100 40GB PCIe",
    "NVIDIA L4": "L4",
    "NVIDIA L40S": "L40S",
    "NVIDIA L40": "L40",
    "NVIDIA A10": "A10",
    "NVIDIA A10G": "A10G",
    "AMD Instinct MI300X": "MI300X",
}


@pytest.mark.parametrize(("device_name", "canonical"), ISSUE_GPUS.items())
def test_every_issue_named_gpu_has_limits(device_name, canonical):
    limits = device_limits(device_name, "bfloat16")
    assert isinstance(limits, DeviceLimits) and limits.name == canonical
    assert limits.memory_bandwidth_bytes_per_s > 0 and limits.tdp_w > 0 and limits.source
    assert limits.peak_flops_per_s == peak_flops_per_s(device_name, "bfloat16")


def test_every_gpu_peaks_row_the_issue_names_has_a_device_specs_row():
    named = {find_gpu(n).name for n in ISSUE_GPUS}
    assert named <= set(DEVICE_SPECS)
    assert set(DEVICE_SPECS) <= {row.name for row in GPU_PEAKS}  # one table of patterns: no stray keys


@pytest.mark.parametrize(
    ("device_name", "bandwidth_tb_s", "tdp_w"),
    [
        ("NVIDIA H100 80GB HBM3", 3.35, 700.0),
        ("NVIDIA H200", 4.8, 700.0),
        ("NVIDIA H200 NVL", 4.8, 600.0),
        ("NVIDIA B200", 8.0, 1000.0),
        ("NVIDIA A100-SXM4-80GB", 2.039, 400.0),
        ("NVIDIA A100-SXM4-40GB", 1.555, 400.0),
        ("NVIDIA A100-PCIE-40GB", 1.555, 250.0),
        ("NVIDIA A100 80GB PCIe", 1.935, 300.0),
        ("NVIDIA A100", 2.039, 400.0),  # a generic name takes the 80GB SXM row
        ("NVIDIA L4", 0.3, 72.0),
        ("NVIDIA L40S", 0.864, 350.0),
        ("AMD Instinct MI300X", 5.3, 750.0),
        ("AMD Instinct MI300X VF", 5.3, 750.0),
    ],
)
def test_datasheet_figures(device_name, bandwidth_tb_s, tdp_w):
    limits = device_limits(device_name, None)
    assert limits.memory_bandwidth_bytes_per_s == pytest.approx(bandwidth_tb_s * TERA)
    assert limits.tdp_w == tdp_w
    assert limits.peak_flops_per_s is None  # no dtype asked


def test_h200_nvl_is_matched_before_h200_and_h100_variants_apart():
    assert device_limits("NVIDIA H200 NVL", "bfloat16").tdp_w == 600.0
    assert device_limits("NVIDIA H200", "bfloat16").tdp_w == 700.0
    assert {device_limits(n, None).name for n in ("NVIDIA H100 NVL", "NVIDIA H100 PCIe", "NVIDIA H100 80GB HBM3")} == {
        "H100 NVL", "H100 PCIe", "H100 SXM"
    }


def test_a100_40gb_and_80gb_differ_in_bandwidth_only_on_sxm():
    sxm80, sxm40 = device_limits("NVIDIA A100-SXM4-80GB", "float16"), device_limits("NVIDIA A100-SXM4-40GB", "float16")
    assert sxm80.memory_bandwidth_bytes_per_s > sxm40.memory_bandwidth_bytes_per_s
    assert sxm80.tdp_w == sxm40.tdp_w == 400.0
    assert sxm80.peak_flops_per_s == sxm40.peak_flops_per_s == 312.0 * TERA


def test_mi300x_peaks():
    assert find_gpu("AMD Instinct MI300X").name == "MI300X"
    for dtype, tflops in {"bfloat16": 1307.4, "float16": 1307.4, "float8": 2614.9, "float32": 163.4}.items():
        assert device_limits("AMD Instinct MI300X", dtype).peak_flops_per_s == pytest.approx(tflops * TERA)


def test_dtype_without_a_path_keeps_the_memory_limits():
    t4 = device_limits("Tesla T4", "bfloat16")
    assert t4.peak_flops_per_s is None and t4.memory_bandwidth_bytes_per_s == pytest.approx(320e9)


@pytest.mark.parametrize(
    "device_name",
    [None, "", "AMD EPYC 7T83 64-Core Processor", "Intel(R) Xeon(R) Platinum 8480+", "cpu", "NVIDIA GeForce GTX 1080",
     "Tesla V100-SXM3-32GB", "AMD Instinct MI250X"],
)
def test_unknown_devices_and_cpus_are_none(device_name):
    assert device_limits(device_name, "float32") is None
    assert find_device_spec(device_name) is None
