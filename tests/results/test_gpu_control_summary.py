"""The summary's gpu_control section: what gpu.* applied, whether the power cap bound, whether the clocks held."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lem.records import (
    EndRecord,
    EnergyReading,
    GpuControlDevice,
    GpuControlRecord,
    HeaderRecord,
    PhaseRecord,
    PowerSamplesRecord,
)
from lem.results.gpu_control import gpu_control_section as section_from_series
from lem.results.reader import RawProcessRecords, read_run
from lem.results.steady_state import power_series
from lem.results.writer import RawWriter, raw_path


def gpu_control_section(procs: list[RawProcessRecords], warnings: list[str]) -> dict | None:
    return section_from_series(procs, power_series(procs), warnings)


def device(power_limit_w: float | None = 400.0, clock_mhz: int | None = None, restored: bool = True, **kw: Any) -> GpuControlDevice:
    return GpuControlDevice(
        device="cuda:0", uuid="GPU-a000", name="NVIDIA H100", power_limit_w=power_limit_w,
        power_limit_before_w=700.0 if power_limit_w is not None else None, enforced_power_limit_w=power_limit_w,
        locked_sm_clock_mhz=clock_mhz, sm_clock_mhz_after=float(clock_mhz) if clock_mhz else None, restored=restored, **kw,
    )


def samples(power_w: list[float | None], clock_mhz: float | None = 1980.0, masks: list[int] | None = None, t_start: float = 0.0) -> PowerSamplesRecord:
    """One sample a second from ``t_start``."""
    n = len(power_w)
    return PowerSamplesRecord(
        device="cuda:0", component="gpu", power_kind="instant", source="counter",
        t_s=[t_start + i for i in range(n)], power_w=power_w, energy_j=[None] * n,
        sm_clock_mhz=[clock_mhz] * n, throttle_reasons=masks if masks is not None else [0] * n,
    )


def write_run(run_dir: Path, *records: Any, complete: bool = True, generation_reasons: list[str] | None = None) -> list[RawProcessRecords]:
    """A process file as the pipeline writes it: warmup 0-10 s, generation 10-20 s."""
    with RawWriter(raw_path(run_dir, 0)) as w:
        w.write(HeaderRecord(0, 1, 1.7e9, "host", 1, "0.1", "cuda", ["NVIDIA H100"], "vllm", "v", "m", "bfloat16", None, cuda_device_indices=[0]))
        for r in records:
            w.write(r)
        w.write(PhaseRecord("warmup", 0.0, 10.0))
        reading = EnergyReading("cuda:0", "gpu", 1000.0, "counter", throttle_reasons=generation_reasons)
        w.write(PhaseRecord("generation", 10.0, 20.0, energy=[reading], cycle=0))
        if complete:
            w.write(EndRecord("completed", 21.0))
    return read_run(run_dir)


def record(*devices: GpuControlDevice, restored: bool = True) -> GpuControlRecord:
    d0 = devices[0]
    return GpuControlRecord(power_limit_w=d0.power_limit_w, locked_sm_clock_mhz=d0.locked_sm_clock_mhz, devices=list(devices), restored=restored)


WARMUP_AT_700_W = [700.0] * 10  # t 0..9: outside generation, never counted


def test_a_run_that_set_nothing_has_no_section(tmp_path: Path) -> None:
    warnings: list[str] = []
    assert gpu_control_section(write_run(tmp_path, samples([300.0] * 20)), warnings) is None
    assert warnings == []


def test_the_cap_bound_when_generation_power_reached_it(tmp_path: Path) -> None:
    procs = write_run(tmp_path, record(device(250.0)), samples(WARMUP_AT_700_W + [200.0] * 5 + [246.0] + [230.0] * 5))
    warnings: list[str] = []
    s = gpu_control_section(procs, warnings)
    assert s is not None and s["cap_bound"] is True and s["power_limit_w"] == 250.0 and s["restored"] is True
    (row,) = s["devices"]
    assert row["max_generation_power_w"] == 246.0 and row["power_limit_before_w"] == 700.0 and row["enforced_power_limit_w"] == 250.0
    assert warnings == []


def test_the_cap_bound_when_nvml_said_sw_power_cap(tmp_path: Path) -> None:
    # A 1 s averaged power reading can sit below the cap while the GPU throttles to stay under it.
    masks = [0] * 10 + [0, 0x4, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    procs = write_run(tmp_path, record(device(300.0)), samples(WARMUP_AT_700_W + [250.0] * 11, masks=masks))
    s = gpu_control_section(procs, [])
    assert s is not None and s["cap_bound"] is True and s["devices"][0]["sw_power_cap_seen"] is True


def test_the_cap_bound_when_the_generation_phase_lists_sw_power_cap(tmp_path: Path) -> None:
    procs = write_run(tmp_path, record(device(300.0)), generation_reasons=["sw_power_cap"])  # no timeline at all
    assert gpu_control_section(procs, [])["cap_bound"] is True  # type: ignore[index]


def test_a_cap_generation_never_reached_is_a_warning(tmp_path: Path) -> None:
    procs = write_run(tmp_path, record(device(400.0)), samples(WARMUP_AT_700_W + [200.0, 212.0, 190.0, 200.0] + [None]))
    warnings: list[str] = []
    s = gpu_control_section(procs, warnings)
    assert s is not None and s["cap_bound"] is False
    row = s["devices"][0]
    assert row["max_generation_power_w"] == 212.0 and row["mean_generation_power_w"] == pytest.approx(200.5)
    assert row["sw_power_cap_seen"] is False
    assert len(warnings) == 1 and warnings[0].startswith("gpu.power_limit_w=400: the cap never bound (generation power peaked at 212 W on cuda:0")


def test_no_power_samples_means_unknown_not_false(tmp_path: Path) -> None:
    warnings: list[str] = []
    s = gpu_control_section(write_run(tmp_path, record(device(400.0))), warnings)
    assert s is not None and s["cap_bound"] is None and s["max_generation_power_w"] is None and warnings == []


def test_locked_clocks_requested_against_the_clock_seen_during_generation(tmp_path: Path) -> None:
    held = write_run(tmp_path / "held", record(device(None, clock_mhz=1410)), samples(WARMUP_AT_700_W + [300.0] * 10, clock_mhz=1410.0))
    warnings: list[str] = []
    s = gpu_control_section(held, warnings)
    assert s is not None and s["locked_sm_clock_mhz"] == 1410 and s["mean_generation_sm_clock_mhz"] == 1410.0
    assert s["cap_bound"] is None and warnings == []  # no power limit set: nothing to bind

    lowered = write_run(tmp_path / "lowered", record(device(None, clock_mhz=1980)), samples(WARMUP_AT_700_W + [700.0] * 10, clock_mhz=1650.0))
    warnings = []
    gpu_control_section(lowered, warnings)
    assert warnings == ["gpu.locked_sm_clock_mhz=1980: generation ran at 1650 MHz on average on cuda:0 (a power or thermal limit lowered it)"]


def test_a_run_cut_short_says_its_gpu_was_left_changed_and_how_to_fix_it(tmp_path: Path) -> None:
    first = record(device(250.0, clock_mhz=1410, restored=False), restored=False)  # the only record a killed run leaves
    procs = write_run(tmp_path, first, samples(WARMUP_AT_700_W + [249.0] * 5, clock_mhz=1410.0), complete=False)
    warnings: list[str] = []
    s = gpu_control_section(procs, warnings)
    assert s is not None and s["restored"] is False
    assert warnings == [
        "gpu.power_limit_w=250: cuda:0 was not restored when this run was cut short; the next lem run on that GPU restores it, "
        "or run `sudo nvidia-smi -i GPU-a000 -pl 700` and `sudo nvidia-smi -i GPU-a000 -rgc`"
    ]


def test_the_last_record_of_a_process_is_what_happened(tmp_path: Path) -> None:
    before = record(device(250.0, restored=False), restored=False)
    after = record(device(250.0, restored=True, notes=["NVML enforces 245 W, not the 250 W set"]))
    s = gpu_control_section(write_run(tmp_path, before, samples(WARMUP_AT_700_W + [245.0] * 5), after), [])
    assert s is not None and s["restored"] is True and s["devices"][0]["notes"] == ["NVML enforces 245 W, not the 250 W set"]
