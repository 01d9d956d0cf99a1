"""CodeCarbon, offline: estimated CPU/RAM energy where no sensor exists, and the grid's carbon intensity.

CodeCarbon's CPU figure without RAPL is a model: TDP x (0.1 + 0.9 x load^3) for the whole
machine (its ``cpu_load`` mode), with the TDP taken from its table of CPU models, else 4 W
per thread; its RAM figure is a model of DIMM power from the memory size. Both are labelled
``estimated``. lem asks CodeCarbon's hardware models for their mean power since the last
read, at every window boundary and every ``measure_power_secs``, and integrates it over its
own timestamps — exact windows that nest, which CodeCarbon's one-at-a-time task API cannot
give. Its GPU figure is never used: NVML is read directly.

Kept quiet and local: log level error, no output methods (no CSV, no API), offline data
only, one process-wide tracker per meter, PUE 1 (lem applies the PUE itself, to CO2 and
facility energy only).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lem.measure.energy.sources import Channel, Key, Source

INSTALL = "pip install codecarbon"


def quiet_codecarbon_logs() -> None:
    logging.getLogger("codecarbon").setLevel(logging.ERROR)


def carbon_intensity(country_iso_code: str, region: str | None = None) -> tuple[float, str]:
    """Grid carbon intensity (gCO2e/kWh) from CodeCarbon's offline data, and where it came from."""
    import codecarbon
    from codecarbon.core.emissions import Emissions
    from codecarbon.core.units import Energy
    from codecarbon.external.geography import GeoMetadata
    from codecarbon.input import DataSource

    quiet_codecarbon_logs()
    iso = country_iso_code.upper()
    data = DataSource()
    emissions = Emissions(data)
    one_kwh = Energy.from_energy(kWh=1)
    country = emissions.get_country_emissions(one_kwh, GeoMetadata(country_iso_code=iso, country_name=None)) * 1000.0
    where = f"CodeCarbon {codecarbon.__version__} offline data"
    if iso not in data.get_global_energy_mix_data():
        return country, f"{where}: world average (no data for country {iso})"
    if region:
        try:
            value = emissions.get_private_infra_emissions(one_kwh, GeoMetadata(country_iso_code=iso, country_name=None, region=region.lower())) * 1000.0
        except Exception:
            value = country
        if value != country:
            return value, f"{where}: {iso}/{region.lower()}"
        return country, f"{where}: {iso} (no regional data for {region!r}; country average)"
    return country, f"{where}: {iso}"


def intensity_setting(
    override: float | None, enabled: bool, country_iso_code: str, region: str | None
) -> Callable[[], tuple[float | None, str | None]]:
    """When the meter starts: the grid carbon intensity and its source (``override`` wins; None without CodeCarbon)."""

    def intensity() -> tuple[float | None, str | None]:
        if override is not None:
            return float(override), "config: energy.carbon_intensity_g_per_kwh"
        if not enabled:
            return None, None
        return carbon_intensity(country_iso_code, region)

    return intensity


def estimate_detail(info: dict[str, Any] | None) -> str:
    """What CodeCarbon's CPU/RAM estimate rests on (from ``CodeCarbonSource.describe()``), for a warning."""
    if not info:
        return ""
    return (
        f" (CodeCarbon {info.get('version')}: CPU {info.get('cpu_model')!r}, TDP {info.get('cpu_tdp_w')} W from "
        f"{info.get('tdp_basis')}; RAM {info.get('ram_power_w')} W)"
    )


class CodeCarbonSource(Source):
    name = "codecarbon"

    def __init__(
        self,
        *,
        country_iso_code: str = "USA",
        region: str | None = None,
        measure_power_secs: float = 1.0,
        cpu: bool = True,
        dram: bool = True,
        carbon_intensity_g_per_kwh: float | None = None,
        output_dir: str | Path | None = None,
        cpu_tdp_w: float | None = None,
        ram_power_w: float | None = None,
        tracking_mode: str = "machine",
    ) -> None:
        super().__init__()
        self.country_iso_code = country_iso_code
        self.region = region
        self.counter_interval_s = measure_power_secs
        self.want_cpu = cpu
        self.want_dram = dram
        self.intensity = carbon_intensity_g_per_kwh
        self.output_dir = Path(output_dir) if output_dir is not None else Path(tempfile.gettempdir())
        self.cpu_tdp_w = cpu_tdp_w
        self.ram_power_w = ram_power_w
        self.tracking_mode = tracking_mode
        self.tracker: Any = None
        self.info: dict[str, Any] = {}
        self._cpu_key: Key | None = None
        self._ram_key: Key | None = None
        self._parts: list[tuple[Key, Any]] = []  # (channel key, CodeCarbon hardware model)
        self._energy_j: dict[Key, float] = {}
        self._last_t = 0.0
        self.start_s: float | None = None  # time CodeCarbon took to start (hardware detection)
        self.measure_s = 0.0  # time spent in its measurements
        self.n_measures = 0

    def restrict(self, covered: set[str]) -> bool:
        # A sensor wins over the model: estimate only what RAPL (or another source) does not measure.
        self.want_cpu = self.want_cpu and "cpu" not in covered
        self.want_dram = self.want_dram and "dram" not in covered
        return self.want_cpu or self.want_dram

    def open(self) -> None:
        try:
            import codecarbon
            from codecarbon import OfflineEmissionsTracker
        except ImportError:
            raise ImportError(f"CodeCarbon not installed ({INSTALL}): no CPU/RAM estimate") from None
        quiet_codecarbon_logs()
        self.output_dir.mkdir(parents=True, exist_ok=True)  # CodeCarbon refuses a missing one (and writes nothing there)
        t = time.perf_counter()
        kwargs: dict[str, Any] = dict(
            country_iso_code=self.country_iso_code.upper(),
            measure_power_secs=self.counter_interval_s,
            output_methods=[],  # nothing written, nothing sent
            output_dir=str(self.output_dir),
            log_level="error",
            tracking_mode=self.tracking_mode,
            pue=1.0,
            allow_multiple_runs=True,  # no lock file in /tmp
            gpu_ids=[],
        )
        if self.region:
            kwargs["region"] = self.region.lower()
        if self.intensity is not None:
            kwargs["force_carbon_intensity_g_co2e_kwh"] = self.intensity  # also keeps any Electricity Maps token unused
        if self.cpu_tdp_w is not None:
            kwargs["force_cpu_power"] = self.cpu_tdp_w
        if self.ram_power_w is not None:
            kwargs["force_ram_power"] = self.ram_power_w
        tracker = OfflineEmissionsTracker(**kwargs)
        tracker.start()
        if getattr(tracker, "_start_time", None) is None:  # its __init__ and start swallow exceptions
            raise RuntimeError(f"CodeCarbon {codecarbon.__version__} tracker did not start")
        scheduler = getattr(tracker, "_scheduler", None)
        if scheduler is not None:
            scheduler.stop()  # its periodic accumulation is not used (see read_energy_j); its 1 s load monitor is
        self.tracker = tracker
        self._last_t = time.perf_counter()
        self.start_s = self._last_t - t

        hardware = list(getattr(tracker, "_hardware", []))
        cpu = next((h for h in hardware if type(h).__name__ == "CPU" and hasattr(h, "total_power")), None)
        ram = next((h for h in hardware if type(h).__name__ == "RAM" and hasattr(h, "total_power")), None)
        if cpu is None and ram is None:
            raise RuntimeError(f"CodeCarbon {codecarbon.__version__} found no CPU or RAM model to estimate from")
        model = str(getattr(cpu, "_model", None) or tracker._conf.get("cpu_model") or "unknown CPU")
        mode = getattr(cpu, "_mode", None)
        tdp = getattr(cpu, "_tdp", None)
        self.info = {
            "version": codecarbon.__version__,
            "cpu_model": model,
            "cpu_mode": mode,
            "cpu_tdp_w": float(tdp) if tdp is not None else None,
            "tdp_basis": self._tdp_basis(cpu, model),
            "ram_power_w": _ram_watts(ram),
            "ram_total_gb": tracker._conf.get("ram_total_size"),
            "tracking_mode": self.tracking_mode,
            "measure_power_secs": self.counter_interval_s,
        }
        if self.want_cpu and cpu is not None:
            label = "rapl" if mode in ("intel_rapl", "windows_emi") else "estimated"
            what = "RAPL read by CodeCarbon" if label == "rapl" else f"TDP {_w(tdp)} x load model"
            self.channels.append(Channel("cpu", "cpu", label, name=f"{model} (CodeCarbon: {what})", identity=f"codecarbon:{model}:{tdp}:{mode}"))
            self._cpu_key = ("cpu", "cpu")
            self._parts.append((self._cpu_key, cpu))
        if self.want_dram and ram is not None:
            self.channels.append(
                Channel("ram", "dram", "estimated", name=f"RAM {self.info['ram_total_gb'] or '?'} GB (CodeCarbon: {_w(self.info['ram_power_w'])} constant)", identity=f"codecarbon:ram:{self.info['ram_power_w']}")
            )
            self._ram_key = ("ram", "dram")
            self._parts.append((self._ram_key, ram))
        self._energy_j = {key: 0.0 for key, _ in self._parts}

    def _tdp_basis(self, cpu: Any, model: str) -> str:
        if self.cpu_tdp_w is not None:
            return "config: energy.codecarbon.cpu_tdp_w"
        if cpu is None or getattr(cpu, "_mode", None) in ("intel_rapl", "windows_emi"):
            return "not used (RAPL)"
        if getattr(cpu, "_is_generic_tdp", False):
            return "CodeCarbon generic constant (CPU model unknown)"
        try:
            from codecarbon.core import cpu as cc_cpu
            from codecarbon.core.hardware_cache import get_cached_tdp

            if get_cached_tdp(cc_cpu)._get_cpu_power_from_registry(model) is None:
                return f"CodeCarbon default 4 W per thread ({model!r} is not in its CPU table)"
            return "CodeCarbon CPU table"
        except Exception:
            return "CodeCarbon (basis unknown)"

    def read_energy_j(self) -> dict[Key, float | None]:
        # CodeCarbon's own accumulation drops the time its measurement takes (it restarts its clock
        # after measuring): lem integrates the model's mean power since the previous read over
        # lem's own, gap-free timestamps instead.
        if self.tracker is None:
            return {}
        t = time.perf_counter()
        out: dict[Key, float | None] = {}
        for key, hardware in self._parts:
            watts = float(hardware.total_power().W)  # mean power since the previous call (CPU: load-weighted)
            self._energy_j[key] += watts * (t - self._last_t)
            out[key] = self._energy_j[key]
        self._last_t = t
        self.measure_s += time.perf_counter() - t
        self.n_measures += 1
        return out

    def close(self) -> None:
        if self.tracker is not None:
            try:
                self.tracker.stop()
            except Exception:
                pass
            self.tracker = None

    def describe(self) -> dict[str, Any]:
        return {
            **self.info,
            "start_s": self.start_s,
            "n_measurements": self.n_measures,
            "measure_s_total": self.measure_s,
            "measure_ms_mean": 1000.0 * self.measure_s / self.n_measures if self.n_measures else None,
        }


def _ram_watts(ram: Any) -> float | None:
    try:
        return float(ram.total_power().W) if ram is not None else None
    except Exception:
        return None


def _w(x: Any) -> str:
    return "? W" if x is None else f"{float(x):g} W"
