"""The thermal gate against a fake meter: it waits for power and temperature to come back within the band."""

from __future__ import annotations

from lem.study.gate import WINDOW, limits, measure_baseline, wait_for_idle


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


class CoolingGpu:
    """Power falls from ``start_w`` towards ``idle_w`` by ``step_w`` per reading; temperature likewise."""

    def __init__(self, start_w: float, idle_w: float, step_w: float, start_c: float = 70.0, idle_c: float = 35.0, step_c: float = 2.0) -> None:
        self.w, self.idle_w, self.step_w = start_w, idle_w, step_w
        self.c, self.idle_c, self.step_c = start_c, idle_c, step_c
        self.reads = 0

    def devices(self) -> list[str]:
        return ["gpu0"]

    def read(self) -> dict[str, tuple[float | None, float | None]]:
        self.reads += 1
        out = {"gpu0": (self.w, self.c)}
        self.w = max(self.idle_w, self.w - self.step_w)
        self.c = max(self.idle_c, self.c - self.step_c)
        return out


def test_the_baseline_is_each_devices_median_over_its_readings() -> None:
    clock = FakeClock()
    base = measure_baseline(CoolingGpu(60.0, 60.0, 0.0, 35.0, 35.0), 4.0, clock=clock, sleep=clock.sleep)
    assert base == {"gpu0": {"power_w": 60.0, "temp_c": 35.0}}


def test_the_gate_waits_until_power_and_temperature_are_within_the_band() -> None:
    clock = FakeClock()
    gpu = CoolingGpu(start_w=300.0, idle_w=60.0, step_w=20.0)
    limit = limits({"gpu0": {"power_w": 60.0, "temp_c": 35.0}}, power_band_pct=10.0, power_band_w=5.0, temp_band_c=3.0)
    assert limit == {"gpu0": {"power_w": 66.0, "temp_c": 38.0, "band_w": 6.0}}
    record = wait_for_idle(gpu, limit, timeout_s=600.0, clock=clock, sleep=clock.sleep)
    assert record["reached"] is True and record["above_idle"] == []
    # power reaches 60 W after 12 readings, and the mean of the last WINDOW readings must be <= 66 W
    assert 12 <= gpu.reads <= 12 + WINDOW + 1
    assert record["waited_s"] == clock.t
    assert record["devices"]["gpu0"]["power_w"] <= 66.0 and record["devices"]["gpu0"]["temp_c"] <= 38.0


def test_an_idle_machine_passes_after_one_window() -> None:
    clock = FakeClock()
    gpu = CoolingGpu(60.0, 60.0, 0.0, 35.0, 35.0)
    record = wait_for_idle(gpu, {"gpu0": {"power_w": 66.0, "temp_c": 38.0, "band_w": 6.0}}, timeout_s=600.0, clock=clock, sleep=clock.sleep)
    assert record["reached"] and gpu.reads == WINDOW and record["devices"]["gpu0"]["power"] == "at_baseline"


def test_the_gate_gives_up_at_its_timeout_and_says_which_device_is_still_warm() -> None:
    clock = FakeClock()
    gpu = CoolingGpu(start_w=300.0, idle_w=200.0, step_w=10.0, start_c=90.0, idle_c=60.0, step_c=1.0)  # stays hot
    record = wait_for_idle(gpu, {"gpu0": {"power_w": 66.0, "temp_c": 38.0, "band_w": 6.0}}, timeout_s=30.0, clock=clock, sleep=clock.sleep)
    assert record["reached"] is False and record["above_idle"] == ["gpu0"]
    assert record["waited_s"] == 30.0 and record["timeout_s"] == 30.0


def test_a_device_without_a_power_reading_is_judged_on_temperature_alone() -> None:
    class Zone:
        def devices(self) -> list[str]:
            return ["thermal-zone0"]

        def read(self) -> dict[str, tuple[float | None, float | None]]:
            return {"thermal-zone0": (None, 40.0)}

    clock = FakeClock()
    limit = limits({"thermal-zone0": {"power_w": None, "temp_c": 39.0}}, 10.0, 5.0, 3.0)
    assert limit["thermal-zone0"]["power_w"] is None
    assert wait_for_idle(Zone(), limit, 60.0, clock=clock, sleep=clock.sleep)["reached"] is True


def test_a_device_held_above_its_cold_idle_passes_once_cool_and_no_longer_falling() -> None:
    """On an H200 an engine worker's CUDA context keeps ~126 W against ~81 W cold (measured): the gate waits for
    the temperature and for the power to stop falling, and says the power settled above the baseline."""
    clock = FakeClock()
    gpu = CoolingGpu(start_w=620.0, idle_w=126.0, step_w=100.0, start_c=60.0, idle_c=40.0, step_c=1.0)
    limit = limits({"gpu0": {"power_w": 81.0, "temp_c": 39.0}}, 10.0, 5.0, 3.0)
    record = wait_for_idle(gpu, limit, timeout_s=600.0, clock=clock, sleep=clock.sleep)
    assert record["reached"] is True and record["devices"]["gpu0"]["power"] == "settled_above_baseline"
    assert record["devices"]["gpu0"]["temp_c"] <= 42.0 and gpu.reads >= 19  # 60 °C down to 42 °C at 1 °C per reading
    falling = CoolingGpu(start_w=620.0, idle_w=126.0, step_w=5.0, start_c=40.0, idle_c=40.0, step_c=0.0)
    clock2 = FakeClock()
    slow = wait_for_idle(falling, limit, timeout_s=600.0, clock=clock2, sleep=clock2.sleep)
    assert slow["reached"] and falling.reads >= (620 - 126) / 5  # cool at once, but power still falling: it waits
