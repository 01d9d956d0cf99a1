"""CPU package and DRAM energy from Linux RAPL counters (``/sys/class/powercap/intel-rapl:*``).

Each zone's ``energy_uj`` counts microjoules and wraps to 0 after ``max_energy_range_uj``;
the meter reads it every sampler tick (100 ms by default, far below the minutes-long wrap
period), so each wrap is seen and unwrapped. ``core``/``uncore`` subzones are inside their
package and ``psys`` is the whole platform: neither is added. AMD Zen CPUs expose the same
interface (kernel >= 5.8). Since 2020 the counters are readable by root only on most distros.
"""

from __future__ import annotations

import re
from pathlib import Path

from lem.measure.energy.arithmetic import counter_delta
from lem.measure.energy.sources import Channel, Key, Source

DEFAULT_ROOT = "/sys/class/powercap"
_ZONE = re.compile(r"^intel-rapl:(\d+)(?::(\d+))?$")


class _Zone:
    def __init__(self, path: Path, channel: Channel, max_range_uj: float | None) -> None:
        self.energy_path = path / "energy_uj"
        self.channel = channel
        self.max_range_uj = max_range_uj
        self.last_raw: int | None = None
        self.total_uj = 0.0

    def read_raw(self) -> int:
        return int(self.energy_path.read_text().strip())


class RaplSource(Source):
    name = "rapl"

    def __init__(self, root: str | Path = DEFAULT_ROOT) -> None:
        super().__init__()
        self.root = Path(root)
        self._zones: list[_Zone] = []

    def open(self) -> None:
        if not self.root.is_dir():
            raise FileNotFoundError(f"RAPL not available: {self.root} does not exist (a VM or a non-Linux host)")
        dirs = {p.name: p for p in self.root.glob("intel-rapl:*")}
        dirs.update({p.name: p for p in self.root.glob("intel-rapl:*/intel-rapl:*:*") if p.name not in dirs})
        unreadable = []
        for name in sorted(dirs, key=_zone_order):
            m = _ZONE.match(name)
            if not m:
                continue
            path = dirs[name]
            try:
                label = (path / "name").read_text().strip()
            except OSError:
                continue
            package = int(m.group(1))
            if m.group(2) is None and label.startswith("package"):
                channel = Channel(f"cpu-package-{package}", "cpu", "rapl", name=label, identity=str(path))
            elif m.group(2) is not None and label == "dram":
                channel = Channel(f"dram-{package}", "dram", "rapl", name=f"package-{package} dram", identity=str(path))
            else:
                continue  # core/uncore: inside the package; psys: the whole platform
            zone = _Zone(path, channel, _read_float(path / "max_energy_range_uj"))
            try:
                zone.last_raw = zone.read_raw()
            except PermissionError:
                unreadable.append(str(zone.energy_path))
                continue
            except (OSError, ValueError):
                continue
            self._zones.append(zone)
            self.channels.append(channel)
        if not self._zones:
            if unreadable:
                raise PermissionError(
                    f"RAPL counters not readable ({unreadable[0]} …): run as root or "
                    "`sudo chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj /sys/class/powercap/intel-rapl:*:*/energy_uj`"
                )
            raise FileNotFoundError(f"RAPL not available: no package or dram zone under {self.root}")
        if unreadable:
            self.notes.append(f"RAPL zones not readable (need root): {', '.join(unreadable)}")

    def has(self, component: str) -> bool:
        return any(c.component == component for c in self.channels)

    def read_energy_j(self) -> dict[Key, float | None]:
        out: dict[Key, float | None] = {}
        for zone in self._zones:
            try:
                raw = zone.read_raw()
            except (OSError, ValueError):
                out[zone.channel.key] = None
                continue
            if zone.last_raw is not None:
                zone.total_uj += counter_delta(zone.last_raw, raw, zone.max_range_uj)
            zone.last_raw = raw
            out[zone.channel.key] = zone.total_uj / 1e6
        return out


def _zone_order(name: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", name))


def _read_float(path: Path) -> float | None:
    try:
        return float(path.read_text().strip())
    except (OSError, ValueError):
        return None
