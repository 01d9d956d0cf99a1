"""What NVML says about a GPU's configuration: driver, power limits, clocks, P-state, MIG, ECC.

Recorded with each GPU channel (``Channel.config``) so two runs can be compared knowing
whether the power cap, the clocks or the persistence mode differed. Every value is what NVML
reports, or None when the binding lacks the call or the driver answers with an error (not
supported, no permission, …): never a guess.

Locked clocks (``nvidia-smi -lgc/-lmc``, ``nvmlDeviceSetGpuLockedClocks``) cannot be read:
NVML has setters and resetters for them but no getter, so they are not recorded. The
applications clocks and the clock (VF) offsets, which NVML does report, are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

COMPUTE_MODES = {0: "default", 1: "exclusive_thread", 2: "prohibited", 3: "exclusive_process"}
PSTATE_UNKNOWN = 32  # NVML_PSTATE_UNKNOWN
# Settings that should not change during a run; a change is worth a warning (the P-state and
# the clocks follow the load, so they are not compared).
STABLE_KEYS = ("enforced_power_limit_w", "persistence_mode", "applications_clocks_mhz", "clock_offsets_mhz", "mig_mode", "compute_mode")


def _call(nvml: Any, name: str, *args: Any) -> Any:
    """``nvml.<name>(*args)``, or None when the binding lacks it or the call fails."""
    fn = getattr(nvml, name, None)
    if fn is None:
        return None
    try:
        return fn(*args)
    except Exception:  # NVMLError: not supported, no permission, GPU lost
        return None


def _first(nvml: Any, names: tuple[str, ...], *args: Any) -> Any:
    for name in names:
        value = _call(nvml, name, *args)
        if value is not None:
            return value
    return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _watts(milliwatts: Any) -> float | None:
    return None if milliwatts is None else float(milliwatts) / 1000.0


def _cuda_version(value: Any) -> str | None:
    """NVML's CUDA driver version integer (12040) as "12.4"."""
    if value is None:
        return None
    v = int(value)
    return f"{v // 1000}.{(v % 1000) // 10}"


def _pair(read: Callable[[str], Any], names: tuple[str, str] = ("sm", "mem")) -> dict[str, Any] | None:
    """Two readings as a dict; None when neither could be read."""
    out = {name: read(name) for name in names}
    return out if any(v is not None for v in out.values()) else None


def system_config(nvml: Any) -> dict[str, Any]:
    """Host-wide: driver, NVML and CUDA driver versions."""
    return {
        "driver_version": _text(_call(nvml, "nvmlSystemGetDriverVersion")),
        "nvml_version": _text(_call(nvml, "nvmlSystemGetNVMLVersion")),
        "cuda_driver_version": _cuda_version(_first(nvml, ("nvmlSystemGetCudaDriverVersion_v2", "nvmlSystemGetCudaDriverVersion"))),
    }


def dynamic_config(nvml: Any, handle: Any) -> dict[str, Any]:
    """The settings that can change while the process runs: power limit, clocks, P-state, modes."""
    clock_type = {"sm": getattr(nvml, "NVML_CLOCK_SM", 1), "mem": getattr(nvml, "NVML_CLOCK_MEM", 2)}
    pstate = _call(nvml, "nvmlDeviceGetPerformanceState", handle)
    mig = _call(nvml, "nvmlDeviceGetMigMode", handle)
    compute = _call(nvml, "nvmlDeviceGetComputeMode", handle)
    persistence = _call(nvml, "nvmlDeviceGetPersistenceMode", handle)
    return {
        "enforced_power_limit_w": _watts(_call(nvml, "nvmlDeviceGetEnforcedPowerLimit", handle)),
        "power_limit_w": _watts(_call(nvml, "nvmlDeviceGetPowerManagementLimit", handle)),
        "persistence_mode": None if persistence is None else bool(persistence),
        "applications_clocks_mhz": _pair(lambda k: _call(nvml, "nvmlDeviceGetApplicationsClock", handle, clock_type[k])),
        "clock_offsets_mhz": _pair(
            lambda k: _call(nvml, "nvmlDeviceGetGpcClkVfOffset" if k == "sm" else "nvmlDeviceGetMemClkVfOffset", handle)
        ),
        "pstate": None if pstate is None or int(pstate) == PSTATE_UNKNOWN else f"P{int(pstate)}",
        "mig_mode": None if mig is None else {"current": _enabled(mig[0]), "pending": _enabled(mig[1])},
        "compute_mode": None if compute is None else COMPUTE_MODES.get(int(compute), str(compute)),
    }


def gpu_config(nvml: Any, handle: Any, system: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything NVML reports about one GPU's configuration (``system``: ``system_config``, read once)."""
    clock_type = {"sm": getattr(nvml, "NVML_CLOCK_SM", 1), "mem": getattr(nvml, "NVML_CLOCK_MEM", 2)}
    limits = _call(nvml, "nvmlDeviceGetPowerManagementLimitConstraints", handle)
    ecc = _call(nvml, "nvmlDeviceGetEccMode", handle)
    pci = _call(nvml, "nvmlDeviceGetPciInfo", handle)
    dyn = dynamic_config(nvml, handle)
    return {
        **(system if system is not None else system_config(nvml)),
        "enforced_power_limit_w": dyn["enforced_power_limit_w"],
        "power_limit_w": dyn["power_limit_w"],
        "default_power_limit_w": _watts(_call(nvml, "nvmlDeviceGetPowerManagementDefaultLimit", handle)),
        "power_limit_range_w": None if limits is None else [_watts(limits[0]), _watts(limits[1])],
        "persistence_mode": dyn["persistence_mode"],
        "applications_clocks_mhz": dyn["applications_clocks_mhz"],
        "default_applications_clocks_mhz": _pair(lambda k: _call(nvml, "nvmlDeviceGetDefaultApplicationsClock", handle, clock_type[k])),
        "max_clocks_mhz": _pair(lambda k: _call(nvml, "nvmlDeviceGetMaxClockInfo", handle, clock_type[k])),
        "clock_offsets_mhz": dyn["clock_offsets_mhz"],
        "pstate": dyn["pstate"],
        "mig_mode": dyn["mig_mode"],
        "compute_mode": dyn["compute_mode"],
        "ecc_enabled": None if ecc is None else bool(ecc[0]),
        "serial": _text(_call(nvml, "nvmlDeviceGetSerial", handle)),
        "pci_bus_id": _text(getattr(pci, "busId", None)),
    }


def config_changes(device: str, before: dict[str, Any] | None, after: dict[str, Any]) -> list[str]:
    """A sentence for each ``STABLE_KEYS`` setting that differs between two reads (both known)."""
    if before is None:
        return []
    return [
        f"{device}: {key} changed during the run ({before[key]} -> {after[key]}); energy before and after is not comparable"
        for key in STABLE_KEYS
        if before.get(key) is not None and after.get(key) is not None and before[key] != after[key]
    ]


def _enabled(value: Any) -> str:
    return "enabled" if int(value) else "disabled"
