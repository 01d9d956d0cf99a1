"""RAPL against a fake /sys/class/powercap tree: domains, wraparound, permissions."""

from __future__ import annotations

from pathlib import Path

import pytest

from lem.measure.energy import EnergyMeter
from lem.measure.energy.rapl import RaplSource
from tests.measure.energy_fakes import FakeClock, write_zone


def tree(root: Path) -> Path:
    write_zone(root, "intel-rapl:0", "package-0", 1_000_000, max_uj=10_000_000)
    write_zone(root, "intel-rapl:0:0", "core", 5)
    write_zone(root, "intel-rapl:0:1", "dram", 2_000_000)
    write_zone(root, "intel-rapl:1", "package-1", 0)
    write_zone(root, "intel-rapl:2", "psys", 0)
    return root


def set_uj(root: Path, zone: str, value: int) -> None:
    (root / zone / "energy_uj").write_text(f"{value}\n")


def test_package_and_dram_domains_only(tmp_path: Path):
    src = RaplSource(tree(tmp_path))
    src.open()
    assert [(c.device, c.component, c.counter_source) for c in src.channels] == [
        ("cpu-package-0", "cpu", "rapl"),
        ("dram-0", "dram", "rapl"),
        ("cpu-package-1", "cpu", "rapl"),
    ]  # core is inside the package, psys is the whole platform: neither is added
    assert src.has("dram")


def test_counters_are_deltas_since_open_with_wraparound(tmp_path: Path):
    root = tree(tmp_path)
    src = RaplSource(root)
    src.open()
    set_uj(root, "intel-rapl:0", 9_000_000)
    set_uj(root, "intel-rapl:0:1", 2_500_000)
    e = src.read_energy_j()
    assert e[("cpu-package-0", "cpu")] == pytest.approx(8.0) and e[("dram-0", "dram")] == pytest.approx(0.5)
    set_uj(root, "intel-rapl:0", 500_000)  # wrapped at max_energy_range_uj = 10 J
    assert src.read_energy_j()[("cpu-package-0", "cpu")] == pytest.approx(8.0 + 1.0 + 0.5)


def test_meter_window_over_a_wrap(tmp_path: Path):
    root = tree(tmp_path)
    clock = FakeClock()
    m = EnergyMeter([RaplSource(root)], clock=clock, sleep=clock.sleep).start(background=False)
    m.begin_window("w")
    for value in (4_000_000, 8_000_000, 2_000_000, 6_000_000):  # one wrap between ticks
        clock.sleep(0.1)
        set_uj(root, "intel-rapl:0", value)
        m.tick()
    r = m.end_window("w", synchronize=lambda: None).reading("cpu-package-0")
    assert (r.source, r.energy_j) == ("rapl", pytest.approx(15.0))  # 1 -> 10 (9 J) then 0 -> 6 (6 J)
    assert r.sampled_energy_j is None  # a counter-only device has no independent power to cross-check


def test_missing_or_unreadable_rapl_becomes_a_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    m = EnergyMeter([RaplSource(tmp_path / "absent")]).start(background=False)
    assert m.channels == [] and any("does not exist" in n for n in m.notes)

    root = tree(tmp_path / "t")

    original = Path.read_text

    def denied(self: Path, *args, **kwargs) -> str:  # what a non-root user sees since 2020 (CVE-2020-8694)
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", denied)
    m2 = EnergyMeter([RaplSource(root)]).start(background=False)
    assert m2.channels == [] and any("run as root" in n for n in m2.notes)
