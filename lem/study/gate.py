"""The pauses between a study's runs: a fixed gap, or a gate that waits for the devices to be idle again.

The thermal gate (``study.wait_for_idle=true``) watches every device lem can read on this machine —
NVIDIA GPUs through NVML (power and temperature), CPU packages through RAPL (power from the
energy counter) and the kernel's thermal zones (temperature) — and measures their idle baseline
once, before the study's first run. Before each later run it waits until, for every device, the
temperature is within ``idle_temp_band_c`` of its baseline and the power has come down: the mean
over the last ``WINDOW`` readings within the band above the baseline (the larger of
``idle_power_band_pct`` and ``idle_power_band_w``), or — where something lem keeps between jobs
holds the device above its cold idle (an engine worker's CUDA context and resident model keep an
H200 at ~126 W against ~81 W without one, measured) — no longer falling: the window's readings
within one band of each other. Which of the two held is recorded (``power``: ``at_baseline`` or
``settled_above_baseline``). After ``idle_timeout_s`` the run starts anyway, recorded as ``reached: false``.
The wait happens between jobs, before the next job's energy meter starts: it is in no measured phase.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

POLL_S = 1.0  # one reading per second
WINDOW = 5  # readings whose mean power must be in the band


class Sensors(Protocol):
    def devices(self) -> list[str]: ...

    def read(self) -> dict[str, tuple[float | None, float | None]]:
        """device -> (power W, temperature °C); None where the device has no such reading."""
        ...


class MachineSensors:
    """NVML GPUs, RAPL packages and thermal zones of this machine (whichever are readable)."""

    def __init__(self, nvml: Any = None, powercap: Path = Path("/sys/class/powercap"), thermal: Path = Path("/sys/class/thermal")) -> None:
        self._gpus: list[tuple[str, Any]] = []
        self._nvml = nvml
        if nvml is not None:
            try:
                nvml.nvmlInit()
                self._gpus = [(f"gpu{i}", nvml.nvmlDeviceGetHandleByIndex(i)) for i in range(nvml.nvmlDeviceGetCount())]
            except Exception:  # noqa: BLE001 - no driver: no GPU readings
                self._gpus = []
        self._rapl = [p / "energy_uj" for p in sorted(powercap.glob("intel-rapl:*")) if ":" not in p.name.split("intel-rapl:")[1] and _readable(p / "energy_uj")]
        self._zones = [p / "temp" for p in sorted(thermal.glob("thermal_zone*")) if _readable(p / "temp")]
        self._last_rapl: dict[str, tuple[float, float]] = {}

    def devices(self) -> list[str]:
        return [g for g, _ in self._gpus] + [f"cpu-package-{i}" for i in range(len(self._rapl))] + [f"thermal-{p.parent.name}" for p in self._zones]

    def read(self) -> dict[str, tuple[float | None, float | None]]:
        out: dict[str, tuple[float | None, float | None]] = {}
        for name, handle in self._gpus:
            out[name] = (_try(lambda h=handle: self._nvml.nvmlDeviceGetPowerUsage(h) / 1000.0),
                         _try(lambda h=handle: float(self._nvml.nvmlDeviceGetTemperature(h, 0))))  # 0: NVML_TEMPERATURE_GPU
        now = time.monotonic()
        for i, path in enumerate(self._rapl):
            name, energy_j = f"cpu-package-{i}", _try(lambda p=path: int(p.read_text()) / 1e6)
            last = self._last_rapl.get(name)
            power = (energy_j - last[1]) / (now - last[0]) if energy_j is not None and last and now > last[0] and energy_j >= last[1] else None
            if energy_j is not None:
                self._last_rapl[name] = (now, energy_j)
            out[name] = (power, None)
        for path in self._zones:
            out[f"thermal-{path.parent.name}"] = (None, _try(lambda p=path: int(p.read_text()) / 1000.0))
        return out


def _readable(path: Path) -> bool:
    try:
        path.read_text()
        return True
    except (OSError, ValueError):
        return False


def _try(read: Callable[[], float]) -> float | None:
    try:
        return float(read())
    except Exception:  # noqa: BLE001 - a reading that failed once is missing, not an error
        return None


def machine_sensors() -> MachineSensors:
    try:
        import pynvml
    except ImportError:
        pynvml = None
    return MachineSensors(pynvml)


def measure_baseline(sensors: Sensors, duration_s: float, *, clock: Callable[[], float] = time.monotonic,
                     sleep: Callable[[float], None] = time.sleep) -> dict[str, dict[str, float | None]]:
    """Each device's median power and temperature over ``duration_s`` of readings."""
    readings: list[dict[str, tuple[float | None, float | None]]] = []
    start = clock()
    while True:
        readings.append(sensors.read())
        if clock() - start >= duration_s:
            break
        sleep(POLL_S)
    baseline: dict[str, dict[str, float | None]] = {}
    for device in sensors.devices():
        powers = [r[device][0] for r in readings if device in r and r[device][0] is not None]
        temps = [r[device][1] for r in readings if device in r and r[device][1] is not None]
        baseline[device] = {"power_w": statistics.median(powers) if powers else None, "temp_c": statistics.median(temps) if temps else None}
    return baseline


def limits(baseline: dict[str, dict[str, float | None]], power_band_pct: float, power_band_w: float, temp_band_c: float) -> dict[str, dict[str, float | None]]:
    """The highest power and temperature each device may show to count as idle."""
    out = {}
    for device, base in baseline.items():
        p, t = base.get("power_w"), base.get("temp_c")
        band = None if p is None else max(p * power_band_pct / 100.0, power_band_w)
        out[device] = {"power_w": None if p is None else p + band, "temp_c": None if t is None else t + temp_band_c, "band_w": band}
    return out


def wait_for_idle(sensors: Sensors, limit: dict[str, dict[str, float | None]], timeout_s: float, *,
                  clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Wait until every device is within its limit (module docstring) or ``timeout_s`` passed; what was seen."""
    start = clock()
    history: deque[dict[str, tuple[float | None, float | None]]] = deque(maxlen=WINDOW)
    while True:
        history.append(sensors.read())
        now = {d: _window(history, d) for d in limit}
        power = {d: _power_state(history, d, now[d], limit[d]) for d in limit}
        above = [d for d in limit if not _temp_ok(now[d], limit[d]) or power[d] is None]
        waited = clock() - start
        if (len(history) == WINDOW and not above) or waited >= timeout_s:
            return {"reached": not above and len(history) == WINDOW, "waited_s": round(waited, 3), "timeout_s": timeout_s,
                    "devices": {d: {**now[d], "power": power[d], "limit_power_w": limit[d]["power_w"], "limit_temp_c": limit[d]["temp_c"]}
                                for d in limit},
                    "above_idle": above}
        sleep(POLL_S)


def _window(history: deque[dict[str, tuple[float | None, float | None]]], device: str) -> dict[str, float | None]:
    powers = [r[device][0] for r in history if device in r and r[device][0] is not None]
    temps = [r[device][1] for r in history if device in r and r[device][1] is not None]
    return {"power_w": statistics.fmean(powers) if powers else None, "temp_c": temps[-1] if temps else None}


def _temp_ok(now: dict[str, float | None], limit: dict[str, float | None]) -> bool:
    return limit["temp_c"] is None or (now["temp_c"] is not None and now["temp_c"] <= limit["temp_c"])


def _power_state(history: deque[dict[str, tuple[float | None, float | None]]], device: str, now: dict[str, float | None],
                 limit: dict[str, float | None]) -> str | None:
    """at_baseline, settled_above_baseline, or None (still coming down, or no full window yet)."""
    if limit["power_w"] is None:
        return "no_power_reading"
    if now["power_w"] is None or len(history) < WINDOW:
        return None
    if now["power_w"] <= limit["power_w"]:
        return "at_baseline"
    readings = [r[device][0] for r in history if device in r and r[device][0] is not None]
    band = limit.get("band_w") or 0.0
    return "settled_above_baseline" if len(readings) == WINDOW and max(readings) - min(readings) <= band else None


def pause(seconds: float, *, sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> float:
    """Sleep a fixed gap; the seconds it took."""
    if seconds <= 0:
        return 0.0
    start = clock()
    sleep(seconds)
    return round(clock() - start, 3)
