"""Net of idle with its uncertainty, a device without a reading, and each physical device counted once (synthetic records)."""

from __future__ import annotations

import math

import pytest

from lem.records import EnergyReading, PhaseRecord
from lem.results.aggregate import summarize
from lem.results.phase_energy import energy_of
from tests.results.test_aggregate import gen, proc, req


def gpu(device: str, energy_j: float | None, net: float | None = None, sigma: float | None = None, uuid: str | None = None) -> EnergyReading:
    return EnergyReading(
        device, "gpu", energy_j, "counter" if energy_j is not None else None, net_energy_j=net, idle_power_w=60.0 if net is not None else None,
        device_id=uuid or f"GPU-{device[-1]}", net_energy_uncertainty_j=sigma,
    )


def test_uncertainty_adds_linearly_over_one_devices_windows_and_in_quadrature_across_devices():
    readings = [
        gpu("cuda:0", 1000.0, 400.0, 3.0), gpu("cuda:0", 1000.0, 400.0, 3.0),  # two cycles: the same idle error twice
        gpu("cuda:1", 1000.0, 400.0, 4.0),
    ]
    e = energy_of([vars(r) for r in readings], [])
    assert e["net_energy_j"] == pytest.approx(1200.0)
    assert e["net_energy_uncertainty_j"] == pytest.approx(math.hypot(6.0, 4.0))


def test_net_and_its_uncertainty_per_token_in_the_summary():
    p = proc(phases=[gen(0.0, 10.0, gpu("cuda:0", 1000.0, 400.0, 20.0))], requests=[req(i, 0.0, n_out=100) for i in range(4)])
    en = summarize([p])["energy"]
    assert en["net_generation_energy_j"] == pytest.approx(400.0) and en["net_generation_energy_uncertainty_j"] == pytest.approx(20.0)
    assert en["net_j_per_output_token"] == pytest.approx(1.0) and en["net_j_per_output_token_uncertainty"] == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("net", "sigma", "said"),
    [(-3.0, 1.0, "<= 0"), (5.0, 4.0, "within 2 sigma"), (400.0, 4.0, None)],
)
def test_net_at_or_near_zero_is_flagged(net, sigma, said):
    p = proc(phases=[gen(0.0, 10.0, gpu("cuda:0", 1000.0, net, sigma))], requests=[req(0, 0.0)])
    warnings = summarize([p])["warnings"]
    hits = [w for w in warnings if "net-of-idle" in w]
    if said is None:
        assert hits == []
    else:
        assert hits and (said in hits[0] or "indistinguishable from idle" in hits[0])


def test_a_device_without_a_reading_does_not_vanish_from_the_total():
    readings = [gpu("cuda:0", 1000.0), gpu("cuda:1", None)]  # cuda:1's counter read failed
    p = proc(phases=[gen(0.0, 10.0, *readings)], requests=[req(i, 0.0, n_out=100) for i in range(4)])
    s = summarize([p])
    en = s["energy"]
    assert en["generation_energy_j"] is None and en["j_per_output_token"] is None  # not 1000 J passed off as the total
    assert en["partial_generation_energy_j"] == pytest.approx(1000.0) and en["missing_devices"] == ["cuda:1 (gpu)"]
    assert any("no energy reading for cuda:1" in w and "left null" in w for w in s["warnings"])
    assert s["phases"]["generation"]["energy_j"] is None


def test_same_gpu_metered_by_two_processes_is_caught_by_its_uuid():
    a = proc(0, phases=[gen(0.0, 10.0, gpu("cuda:0", 1000.0, uuid="GPU-aaaa"))], requests=[req(0, 0.0)], world_size=2)
    b = proc(1, phases=[gen(0.0, 10.0, gpu("cuda:0", 1000.0, uuid="GPU-aaaa"))], requests=[req(1, 0.0)], world_size=2, hostname="other")
    s = summarize([a, b])
    assert s["energy"]["devices_counted_once"] is False
    assert any("GPU-aaaa is metered by processes [0, 1]" in w for w in s["warnings"])

    c = proc(1, phases=[gen(0.0, 10.0, gpu("cuda:0", 1000.0, uuid="GPU-bbbb"))], requests=[req(1, 0.0)], world_size=2)
    assert summarize([a, c])["energy"]["devices_counted_once"] is True


def test_rapl_zones_are_per_host():
    zone = "/sys/class/powercap/intel-rapl:0"

    def cpu() -> EnergyReading:
        return EnergyReading("cpu-package-0", "cpu", 500.0, "rapl", device_id=zone)

    a = proc(0, phases=[PhaseRecord("generation", 0.0, 10.0, energy=[cpu()])], requests=[req(0, 0.0)], world_size=2, hostname="n1")
    b = proc(1, phases=[PhaseRecord("generation", 0.0, 10.0, energy=[cpu()])], requests=[req(1, 0.0)], world_size=2, hostname="n2")
    assert summarize([a, b])["energy"]["devices_counted_once"] is True  # the same path on two hosts: two packages
