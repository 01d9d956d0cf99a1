"""``lem doctor [--json]``: one screen on what this machine can measure (:mod:`lem.doctor.checks`).

Exit 0 whatever is missing: a machine without RAPL or a GPU still runs lem, with estimates labelled so.
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lem.doctor.checks import INFO, MISSING, OK, WARN, Finding

USAGE = """usage: lem doctor [--json]

What this machine can measure and what lem will fall back to: NVML (GPUs, energy counter, power
limits), RAPL (readable or not, and the fix), CodeCarbon's estimate, the installed engines and their
versions, the thermal gate's sensors and the MLflow store. --json prints the same as JSON."""

MARK = {OK: "ok", WARN: "!", MISSING: "x", INFO: "-"}


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def gather(nvml: Any = "auto", powercap: Path = Path("/sys/class/powercap"), sensors: list[str] | None = None) -> dict[str, Any]:
    """Every finding, and the verdict: what lem measures GPU and CPU energy with on this machine."""
    from lem.doctor import checks

    if nvml == "auto":
        try:
            import pynvml as nvml  # noqa: PLC0415
        except ImportError:
            nvml = None
    gpu_present = Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()
    findings: list[Finding] = checks.nvml_findings(nvml, gpu_present)
    rapl = checks.rapl_findings(powercap)
    rapl_ok = rapl[0].status in (OK, WARN)
    model = cpu_model()
    findings += rapl + checks.codecarbon_findings(model, rapl_ok)
    findings += checks.engine_findings()
    if sensors is None:
        from lem.study.gate import machine_sensors

        sensors = machine_sensors().devices()
    findings += checks.gate_findings(sensors) + checks.tracking_findings()
    gpus = [f for f in findings if f.name.startswith("gpu")]
    gpu = ("none (no GPU)" if not gpus else "NVML energy counter" if all(f.data.get("energy_counter") for f in gpus)
           else "NVML power samples (integrated)" if any(f.status != MISSING for f in gpus) else "not measured")
    has_cc = any(f.name == "codecarbon" and "not installed" not in f.detail for f in findings)
    cpu = "RAPL (measured)" if rapl_ok else ("CodeCarbon TDP x load model (estimated)" if has_cc else "not measured (null)")
    return {"machine": {"cpu_model": model, "cpus": __import__("os").cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform()},
            "verdict": {"gpu_energy": gpu, "cpu_energy": cpu}, "findings": [asdict(f) for f in findings]}


def render(report: dict[str, Any]) -> str:
    m, v = report["machine"], report["verdict"]
    lines = [f"lem doctor — {m['cpu_model'] or 'unknown CPU'}, {m['cpus']} CPUs, Python {m['python']}",
             f"  GPU energy: {v['gpu_energy']}", f"  CPU energy: {v['cpu_energy']}"]
    section = None
    for f in report["findings"]:
        if f["section"] != section:
            section = f["section"]
            lines.append(f"\n{section}")
        lines.append(f"  [{MARK[f['status']]:>2}] {f['name']}: {f['detail']}")
        if f.get("fix"):
            lines.append(f"       fix: {f['fix']}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if "--help" in argv or "-h" in argv:
        print(USAGE)
        return 0
    unknown = [a for a in argv if a != "--json"]
    if unknown:
        print(f"lem: error: lem doctor takes --json only, got {' '.join(unknown)}", file=sys.stderr)
        return 2
    report = gather()
    print(json.dumps(report, indent=1) if "--json" in argv else render(report))
    return 0
