"""``lem doctor``: on this machine (no GPU, no RAPL) and against fakes (NVML with and without the counter, RAPL readable or root-only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lem.doctor.checks import MISSING, OK, RAPL_FIX, WARN, nvml_findings, rapl_findings
from lem.doctor.cli import gather, render
from tests.lem_cli import run_lem


class FakeNvml:
    """pynvml with one GPU; ``counter=False``: nvmlDeviceGetTotalEnergyConsumption is not supported (pre-Volta)."""

    def __init__(self, counter: bool = True, init_fails: bool = False) -> None:
        self.counter, self.init_fails = counter, init_fails

    def nvmlInit(self) -> None:
        if self.init_fails:
            raise RuntimeError("Driver Not Loaded")

    def nvmlShutdown(self) -> None:
        pass

    def nvmlSystemGetDriverVersion(self) -> str:
        return "580.65"

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, i: int) -> str:
        return f"h{i}"

    def nvmlDeviceGetName(self, h: Any) -> bytes:
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUUID(self, h: Any) -> str:
        return "GPU-1234"

    def nvmlDeviceGetTotalEnergyConsumption(self, h: Any) -> int:
        if not self.counter:
            raise RuntimeError("Not Supported")
        return 123_456

    def nvmlDeviceGetPowerUsage(self, h: Any) -> int:
        return 71_500

    def nvmlDeviceGetTemperature(self, h: Any, sensor: int) -> int:
        return 34

    def nvmlDeviceGetPowerManagementLimit(self, h: Any) -> int:
        return 700_000

    def nvmlDeviceGetPowerManagementDefaultLimit(self, h: Any) -> int:
        return 700_000

    def nvmlDeviceGetPowerManagementLimitConstraints(self, h: Any) -> tuple[int, int]:
        return (200_000, 700_000)


def test_a_gpu_with_the_energy_counter_is_measured_by_it_with_its_power_limits() -> None:
    [driver, gpu] = nvml_findings(FakeNvml(), gpu_present=True)
    assert driver.status == OK and "580.65, 1 GPU(s)" in driver.detail
    assert gpu.status == OK and "energy counter (nvmlDeviceGetTotalEnergyConsumption)" in gpu.detail
    assert "power limit 700 W (default 700 W, settable 200–700 W)" in gpu.detail and "71.5 W, 34 °C" in gpu.detail
    report = gather(nvml=FakeNvml(), sensors=["gpu0"])
    assert report["verdict"]["gpu_energy"] == "NVML energy counter"


def test_a_gpu_without_the_counter_falls_back_to_power_samples_and_says_so() -> None:
    [_, gpu] = nvml_findings(FakeNvml(counter=False), gpu_present=True)
    assert gpu.status == WARN and "no energy counter" in gpu.detail and gpu.fix
    assert gather(nvml=FakeNvml(counter=False), sensors=[])["verdict"]["gpu_energy"] == "NVML power samples (integrated)"


def test_a_driver_that_does_not_load_is_missing_with_a_fix() -> None:
    [finding] = nvml_findings(FakeNvml(init_fails=True), gpu_present=True)
    assert finding.status == MISSING and "Driver Not Loaded" in finding.detail and "nvidia-smi" in (finding.fix or "")
    [binding] = nvml_findings(None, gpu_present=True)
    assert binding.status == MISSING and binding.fix == "pip install nvidia-ml-py"


def make_powercap(root: Path) -> Path:
    for zone, name in (("intel-rapl:0", "package-0"), ("intel-rapl:0:0", "core"), ("intel-rapl:0:1", "dram")):
        (root / zone).mkdir(parents=True)
        (root / zone / "name").write_text(name + "\n")
        (root / zone / "energy_uj").write_text("123456\n")
    return root


def test_readable_rapl_is_used(tmp_path: Path) -> None:
    [finding] = rapl_findings(make_powercap(tmp_path / "powercap"))
    assert finding.status == OK and "intel-rapl:0 (package-0)" in finding.detail and "intel-rapl:0:1 (dram)" in finding.detail


def test_root_only_rapl_names_the_files_to_make_readable(tmp_path: Path) -> None:
    def root_only(path: Path) -> str:
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(path))
        return path.read_text()

    [finding] = rapl_findings(make_powercap(tmp_path / "powercap"), read=root_only)
    assert finding.status == MISSING and "not readable by this user" in finding.detail
    assert finding.fix == RAPL_FIX and "chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj" in finding.fix


def test_no_rapl_falls_back_to_codecarbon(tmp_path: Path) -> None:
    [finding] = rapl_findings(tmp_path / "absent")
    assert finding.status == MISSING and "CodeCarbon's estimate" in finding.detail


def test_doctor_on_this_machine_says_what_it_measures_with(tmp_path: Path) -> None:
    """This VM and CI's: no GPU, no RAPL, CodeCarbon's estimate; PyTorch installed; one screen, exit 0."""
    text = run_lem(["doctor"], tmp_path, timeout_s=120)
    assert text.returncode == 0, text.stderr
    assert "  GPU energy: none (no GPU)" in text.stdout
    assert "  CPU energy: CodeCarbon TDP x load model (estimated)" in text.stdout
    assert "[ok] backend=pytorch: torch 2.13.0" in text.stdout
    assert "rapl: no RAPL zones under /sys/class/powercap" in text.stdout
    as_json = run_lem(["doctor", "--json"], tmp_path, timeout_s=120)
    report = json.loads(as_json.stdout)
    assert report["verdict"] == {"gpu_energy": "none (no GPU)", "cpu_energy": "CodeCarbon TDP x load model (estimated)"}
    assert {f["name"] for f in report["findings"]} >= {"rapl", "codecarbon", "backend=pytorch", "store", "wait_for_idle"}
    assert render(report).splitlines()[1] == "  GPU energy: none (no GPU)"
