"""gpu.power_limit_w and gpu.locked_sm_clock_mhz on a fake NVML: applied, refused in one line, restored — also after a crash."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from lem.errors import ConfigError, LemError
from lem.measure import gpu_control
from lem.measure.gpu_restore import GpuControlRefused, restore_left_by, restore_orphans
from lem.measure.gpu_state import Marker, marker_path, read_markers, write_marker
from tests.measure.energy_fakes import FakeNVMLError, fake_pynvml

SM_CLOCKS_MHZ = list(range(345, 1981, 15))  # what an H100 lists, roughly


class NvmlCodeError(FakeNVMLError):
    """An NVMLError with its return code, as pynvml raises them."""

    def __init__(self, value: int) -> None:
        super().__init__({3: "Not Supported", 4: "Insufficient Permissions"}.get(value, "Unknown Error"))
        self.value = value


def controllable_nvml(n_gpus: int = 1) -> Any:
    """The shared fake pynvml with NVML's setters: each GPU starts at 700 W, clocks unlocked."""
    m = fake_pynvml([{"uuid": f"GPU-{'abcdef'[i]}{i}00-0000"} for i in range(n_gpus)])
    m.NVML_ERROR_NOT_SUPPORTED, m.NVML_ERROR_NO_PERMISSION = 3, 4
    m.fail = {}  # (gpu index, call) -> NVML error code
    for h in m.handles:
        h.locked = None

    def call(name: str, fn: Any) -> Any:
        def run(h: Any, *args: Any) -> Any:
            code = m.fail.get((h.index, name))
            if code is not None:
                raise NvmlCodeError(code)
            return fn(h, *args)

        return run

    def set_limit(h: Any, mw: int) -> None:
        h.config["power_limit_mw"] = h.config["enforced_power_limit_mw"] = int(mw)

    def lock(h: Any, low: int, high: int) -> None:
        h.locked = (low, high)

    def reset(h: Any) -> None:
        h.locked = None

    m.nvmlDeviceSetPowerManagementLimit = call("set_limit", set_limit)
    m.nvmlDeviceSetGpuLockedClocks = call("lock", lock)
    m.nvmlDeviceResetGpuLockedClocks = call("reset", reset)
    m.nvmlDeviceGetPowerManagementLimitConstraints = call("constraints", m.nvmlDeviceGetPowerManagementLimitConstraints)
    m.nvmlDeviceGetSupportedMemoryClocks = call("mem_clocks", lambda h: [2619, 1593])
    m.nvmlDeviceGetSupportedGraphicsClocks = lambda h, mem: list(SM_CLOCKS_MHZ)
    m.nvmlDeviceGetClockInfo = lambda h, kind: (h.locked[0] if h.locked else 1980) if kind == 1 else 2619
    return m


def limit_w(m: Any, i: int = 0) -> float:
    return m.handles[i].config["power_limit_mw"] / 1000.0


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LEM_GPU_LOCK_DIR", str(tmp_path / "locks"))
    return tmp_path / "locks"


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_power_limit_and_locked_clock_are_applied_then_restored(folder: Path) -> None:
    m = controllable_nvml()
    control = gpu_control.apply([0], 250.0, 1410, nvml=m, env={})
    assert control is not None
    assert limit_w(m) == 250.0 and m.handles[0].locked == (1410, 1410)
    marker = json.loads(marker_path("GPU-a000-0000").read_text())  # written before the change, for a crash
    assert marker["power_limit_before_mw"] == 700_000 and marker["clocks_locked"] is True and marker["pid"] == os.getpid()
    (row,) = control.record().devices
    assert (row.device, row.power_limit_before_w, row.enforced_power_limit_w, row.sm_clock_mhz_after) == ("cuda:0", 700.0, 250.0, 1410.0)
    assert row.power_limit_range_w == [200.0, 700.0] and not row.restored

    assert control.restore() == []
    assert limit_w(m) == 700.0 and m.handles[0].locked is None
    assert read_markers() == [] and control.record().restored is True
    assert control.restore() == [] and limit_w(m) == 700.0  # idempotent (the pipeline's finally calls it again)


def test_nothing_to_apply_is_none() -> None:
    assert gpu_control.apply([0], None, None, nvml=controllable_nvml(), env={}) is None


@pytest.mark.parametrize(
    ("power_w", "clock_mhz", "message"),
    [
        (900.0, None, "gpu.power_limit_w=900.0: expected a limit in 200..700 W, the range NVML allows on cuda:0 (NVIDIA H100)"),
        (150.0, None, "gpu.power_limit_w=150.0: expected a limit in 200..700 W"),
        (None, 2500, "gpu.locked_sm_clock_mhz=2500: expected an SM clock in 345..1980 MHz, the range NVML lists for cuda:0 (NVIDIA H100)"),
        (300.0, 100, "gpu.locked_sm_clock_mhz=100: expected an SM clock in 345..1980 MHz"),
    ],
)
def test_out_of_range_values_are_refused_before_any_change(folder: Path, power_w: float | None, clock_mhz: int | None, message: str) -> None:
    m = controllable_nvml()
    with pytest.raises(ConfigError) as refused:
        gpu_control.apply([0], power_w, clock_mhz, nvml=m, env={})
    assert str(refused.value) == message or str(refused.value).startswith(message)
    assert limit_w(m) == 700.0 and m.handles[0].locked is None and read_markers() == []


@pytest.mark.parametrize(
    ("fail", "power_w", "clock_mhz", "message"),
    [
        (("set_limit", 4), 250.0, None, "gpu.power_limit_w=250: NVML refused on cuda:0 (NVIDIA H100): no permission; run lem as root, or set it beforehand with `sudo nvidia-smi -i GPU-a000-0000 -pl 250` and leave gpu.power_limit_w unset"),
        (("constraints", 3), 250.0, None, "gpu.power_limit_w=250: NVML refused on cuda:0 (NVIDIA H100): not supported; this GPU or its driver cannot change it; leave gpu.power_limit_w unset"),
        (("lock", 4), 250.0, 1410, "gpu.locked_sm_clock_mhz=1410: NVML refused on cuda:0 (NVIDIA H100): no permission; run lem as root, or set it beforehand with `sudo nvidia-smi -i GPU-a000-0000 -lgc 1410,1410`"),
        (("lock", 3), None, 1410, "gpu.locked_sm_clock_mhz=1410: NVML refused on cuda:0 (NVIDIA H100): not supported"),
    ],
)
def test_no_permission_or_no_support_is_one_line_and_leaves_the_gpu_as_it_was(
    folder: Path, fail: tuple[str, int], power_w: float | None, clock_mhz: int | None, message: str
) -> None:
    m = controllable_nvml()
    m.fail[(0, fail[0])] = fail[1]
    with pytest.raises(GpuControlRefused) as refused:
        gpu_control.apply([0], power_w, clock_mhz, nvml=m, env={})
    text = str(refused.value)
    assert text.startswith(message) and "\n" not in text
    assert limit_w(m) == 700.0 and m.handles[0].locked is None  # the limit set before the clock lock failed is back
    assert read_markers() == []


def test_a_refusal_on_the_second_gpu_puts_the_first_back(folder: Path) -> None:
    m = controllable_nvml(n_gpus=2)
    m.fail[(1, "lock")] = 4
    with pytest.raises(GpuControlRefused, match=r"cuda:1 .*no permission"):
        gpu_control.apply([0, 1], 300.0, 1200, nvml=m, env={})
    assert [limit_w(m, 0), limit_w(m, 1)] == [700.0, 700.0]
    assert [h.locked for h in m.handles] == [None, None] and read_markers() == []


def test_no_cuda_device_or_no_nvml_is_refused(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(GpuControlRefused, match=r"^gpu.power_limit_w=250: no CUDA GPU is measured in this run \(backend.device=cpu"):
        gpu_control.apply([], 250.0, None)
    broken = types.SimpleNamespace(nvmlInit=lambda: (_ for _ in ()).throw(FakeNVMLError("Driver Not Loaded")))
    with pytest.raises(GpuControlRefused, match=r"^gpu.locked_sm_clock_mhz=1200: NVML did not start \(Driver Not Loaded\): no NVIDIA driver"):
        gpu_control.apply([0], None, 1200, nvml=broken)


def test_a_killed_runs_marker_is_restored_by_the_next_run_with_one_warning(folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    m = controllable_nvml()
    m.handles[0].config["power_limit_mw"], m.handles[0].locked = 250_000, (1410, 1410)  # what the killed run left
    pid = dead_pid()
    write_marker(Marker("GPU-a000-0000", 700_000, True, pid, 0.0))
    with caplog.at_level(logging.WARNING, logger="lem"):
        warnings = restore_orphans([0], nvml=m, env={})
    assert warnings == [f"gpu 0: restored power limit 700 W and unlocked clocks left by a run that did not finish (pid {pid})"]
    assert warnings[0] in caplog.text
    assert limit_w(m) == 700.0 and m.handles[0].locked is None and read_markers() == []


def test_a_new_run_restores_first_and_records_it(folder: Path) -> None:
    m = controllable_nvml()
    m.handles[0].config["power_limit_mw"] = 250_000
    write_marker(Marker("GPU-a000-0000", 700_000, False, dead_pid(), 0.0))
    control = gpu_control.apply([0], 400.0, None, nvml=m, env={})
    assert control is not None and limit_w(m) == 400.0
    assert control.record().devices[0].power_limit_before_w == 700.0  # the real original, not what the killed run left
    assert "restored power limit 700 W" in control.record().notes[0]
    control.restore()
    assert limit_w(m) == 700.0


def test_a_live_processes_marker_is_left_alone(folder: Path) -> None:
    m = controllable_nvml()
    m.handles[0].config["power_limit_mw"] = 250_000
    live = os.getppid()
    write_marker(Marker("GPU-a000-0000", 700_000, False, live, 0.0))
    assert restore_orphans([0], nvml=m, env={}) == []
    assert restore_left_by(live, nvml=m) == []
    assert limit_w(m) == 250.0 and len(read_markers()) == 1
    with pytest.raises(GpuControlRefused, match=rf"another lem process \(pid {live}\) has changed cuda:0"):
        gpu_control.apply([0], 300.0, None, nvml=m, env={})
    assert limit_w(m) == 250.0 and len(read_markers()) == 1


def test_the_launcher_restores_what_its_dead_worker_left(folder: Path) -> None:
    m = controllable_nvml(n_gpus=2)
    m.handles[1].config["power_limit_mw"] = 300_000
    pid = dead_pid()
    write_marker(Marker("GPU-b100-0000", 650_000, False, pid, 0.0))
    assert restore_left_by(pid, nvml=m) == [f"gpu 1: restored power limit 650 W left by a run that did not finish (pid {pid})"]
    assert limit_w(m, 1) == 650.0 and read_markers() == []


def test_a_failed_restore_keeps_the_marker_and_says_how_to_fix_it(folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    m = controllable_nvml()
    control = gpu_control.apply([0], 250.0, None, nvml=m, env={})
    assert control is not None
    m.fail[(0, "set_limit")] = 4
    with caplog.at_level(logging.WARNING, logger="lem"):
        problems = control.restore()
    assert problems == ["cuda:0: power limit not restored to 700 W (no permission)"]
    assert "sudo nvidia-smi -i GPU-a000-0000" in caplog.text
    assert len(read_markers()) == 1 and control.record().restored is False
    del m.fail[(0, "set_limit")]
    assert restore_orphans([0], nvml=m, env={}) == []  # this process is alive: not an orphan
    assert control.restore() == [] and limit_w(m) == 700.0 and read_markers() == []


# -- in the pipeline -------------------------------------------------------------------------------


class FailingEngine:
    """An engine that fails in a measured phase, noting the GPU's power limit when it got there."""

    scheduling = "batch"

    def __init__(self, m: Any, fail_in: str, exc: BaseException) -> None:
        self.m, self.fail_in, self.exc = m, fail_in, exc
        self.seen_w: dict[str, float] = {}

    def _phase(self, name: str) -> None:
        self.seen_w[name] = limit_w(self.m)
        if name == self.fail_in:
            raise self.exc

    def init_engine(self) -> None:
        self._phase("engine_init")

    def load_model(self) -> None:
        self._phase("model_load")

    def describe(self) -> Any:  # first call after the idle baseline
        self._phase("after_idle")

    def synchronize(self) -> None:
        pass

    def unload(self) -> None:
        pass


class ReusedPool:
    def __init__(self, engine: FailingEngine) -> None:
        self.engine = engine

    def take(self, cfg: Any) -> tuple[Any, bool]:
        return self.engine, True


@pytest.mark.parametrize("exc", [RuntimeError("CUDA out of memory"), KeyboardInterrupt()], ids=["crash", "ctrl-c"])
@pytest.mark.parametrize("reused", [False, True], ids=["fresh engine", "reused engine"])
def test_the_pipeline_applies_before_measuring_and_restores_on_failure(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException, reused: bool
) -> None:
    import lem.measure.energy.nvml
    import lem.models.resolve
    import lem.pipeline
    import lem.workload.prompts
    from lem.config.schema import LemConfig
    from lem.config.types import Device

    m = controllable_nvml()
    monkeypatch.setattr(lem.measure.energy.nvml, "load_pynvml", lambda: m)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(lem.pipeline, "measured_cuda_indices", lambda cfg, local_rank=0: [0])
    monkeypatch.setattr(lem.models.resolve, "resolve_model_path", lambda model: None)
    monkeypatch.setattr(lem.workload.prompts, "load_prompts", lambda *a, **k: ["hello"])
    engine = FailingEngine(m, "after_idle" if reused else "model_load", exc)
    monkeypatch.setattr(lem.pipeline, "create_engine", lambda cfg: engine)
    cfg = LemConfig()
    cfg.backend.device = Device.cuda
    cfg.energy.enabled = False
    cfg.gpu.power_limit_w = 300.0

    with pytest.raises(type(exc)):
        lem.pipeline.run_measurement(cfg, tmp_path / "run", engines=ReusedPool(engine) if reused else None, summarize=False)
    if reused:  # no engine init: applied before this job's idle baseline
        assert engine.seen_w == {"after_idle": 300.0}
    else:  # applied before the engine starts and the model loads
        assert engine.seen_w == {"engine_init": 300.0, "model_load": 300.0}
    assert limit_w(m) == 700.0 and read_markers() == []


def test_the_pipeline_refuses_before_the_engine_starts(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lem.measure.energy.nvml
    import lem.models.resolve
    import lem.pipeline
    import lem.workload.prompts
    from lem.config.schema import LemConfig

    m = controllable_nvml()
    m.fail[(0, "set_limit")] = 4
    monkeypatch.setattr(lem.measure.energy.nvml, "load_pynvml", lambda: m)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(lem.pipeline, "measured_cuda_indices", lambda cfg, local_rank=0: [0])
    monkeypatch.setattr(lem.models.resolve, "resolve_model_path", lambda model: None)
    monkeypatch.setattr(lem.workload.prompts, "load_prompts", lambda *a, **k: ["hello"])
    monkeypatch.setattr(lem.pipeline, "create_engine", lambda cfg: pytest.fail("the engine must not start"))
    cfg = LemConfig()
    cfg.energy.enabled = False
    cfg.gpu.power_limit_w = 250.0
    with pytest.raises(LemError, match=r"^gpu.power_limit_w=250: NVML refused on cuda:0 \(NVIDIA H100\): no permission"):
        lem.pipeline.run_measurement(cfg, tmp_path / "run", summarize=False)
    assert not (tmp_path / "run" / "raw").exists() and limit_w(m) == 700.0 and read_markers() == []


def test_when_the_launcher_stops_a_killed_worker_its_gpu_settings_are_restored(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lem.measure.energy.nvml
    from lem.launch.job import WorkerManager

    m = controllable_nvml()
    monkeypatch.setattr(lem.measure.energy.nvml, "load_pynvml", lambda: m)
    m.handles[0].config["power_limit_mw"], m.handles[0].locked = 250_000, (1410, 1410)
    pid = dead_pid()  # the worker, SIGKILLed mid-generation (out of memory, run.job_timeout_s)
    write_marker(Marker("GPU-a000-0000", 700_000, True, pid, 0.0))
    manager = WorkerManager()
    manager.worker = types.SimpleNamespace(pid=pid, close=lambda timeout_s: None)  # type: ignore[assignment]
    manager.stop()
    assert limit_w(m) == 700.0 and m.handles[0].locked is None and read_markers() == []
