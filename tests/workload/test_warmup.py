"""Warmup runs the run's largest shapes at the run's output length, then keeps going until measured power is steady."""

from __future__ import annotations

from lem.measure.energy import EnergyMeter
from lem.workload.types import GenerationParams, PreparedRequest
from lem.workload.warmup import largest_shapes, warm_up
from tests.measure.energy_fakes import FakeClock, FakeDevice


def req(i: int, n_in: int) -> PreparedRequest:
    return PreparedRequest(request_id=i, input_ids=tuple(range(n_in)), text="", truncated=False)


class FakeEngine:
    """Each generate() call takes 0.5 s of fake time, sampled by the meter; records the shapes it ran."""

    def __init__(self, clock: FakeClock, meter: EnergyMeter) -> None:
        self.clock, self.meter = clock, meter
        self.calls: list[tuple[int, int, int]] = []  # (rows, widest prompt, max_output_tokens)

    def generate(self, batch, params):
        self.calls.append((len(batch), max(r.input_tokens for r in batch), params.max_output_tokens))
        for _ in range(5):
            self.clock.sleep(0.1)
            self.meter.tick()


def setup(power_kind: str | None = "instant", counter: str | None = "counter"):
    clock = FakeClock()
    gpu = FakeDevice(clock, power_w=100.0, power_kind=power_kind, counter_source=counter)
    meter = EnergyMeter([gpu], clock=clock, sleep=clock.sleep, t0=clock.t, sample_interval_s=0.1).start(background=False)
    return clock, gpu, meter, FakeEngine(clock, meter)


BATCHES = [[req(0, 5), req(1, 6)], [req(2, 40)], [req(3, 7), req(4, 8), req(5, 9)], [req(6, 3)]]
PARAMS = GenerationParams(max_output_tokens=64)


def test_largest_shapes_are_the_biggest_batch_and_the_longest_prompt():
    shapes = largest_shapes(BATCHES)
    assert [len(b) for b in shapes] == [3, 1] and shapes[1][0].input_tokens == 40


def test_first_passes_run_the_largest_shapes_at_the_runs_output_length():
    _, _, meter, engine = setup(power_kind=None, counter="estimated")  # estimated only: minimum passes decide
    record = warm_up(engine, BATCHES, PARAMS, min_passes=1, min_s=0.0, max_s=60.0, max_output_tokens=None, meter=meter)
    assert engine.calls[:2] == [(3, 9, 64), (1, 40, 64)]  # not an 8-token pass of the first batch
    assert record.passes == 2 and record.stable is None and "no measured power" in record.criterion
    assert (record.largest_batch_size, record.largest_input_tokens, record.max_output_tokens) == (3, 40, 64)


def test_keeps_warming_up_until_power_is_steady():
    clock, gpu, meter, engine = setup()
    ramp = {"t": 0.0}

    def heating(dt: float) -> None:  # power climbs for 6 s under load, then holds
        ramp["t"] += dt
        gpu.power_w = 200.0 + 40.0 * min(ramp["t"], 6.0)

    clock.listeners.insert(0, heating)
    record = warm_up(engine, BATCHES, PARAMS, min_passes=1, min_s=0.0, max_s=60.0, max_output_tokens=8, meter=meter)
    assert record.stable is True and "steady" in record.criterion
    assert 5.5 <= record.duration_s < 12.0 and record.passes > 10  # not one pass: the ramp is over, or nearly
    assert record.power_w_by_span[0] < 300.0 and record.power_w_by_span[-1] > 0.95 * 440.0
    assert all(out == 8 for _, _, out in engine.calls)  # run.warmup_max_output_tokens caps every pass


def test_gives_up_at_the_time_limit_and_says_so():
    clock, gpu, meter, engine = setup()

    def climbing(dt: float) -> None:
        gpu.power_w += 20.0 * dt * 10

    clock.listeners.insert(0, climbing)
    record = warm_up(engine, BATCHES, PARAMS, min_passes=1, min_s=0.0, max_s=5.0, max_output_tokens=None, meter=meter)
    assert record.stable is False and "not steady" in record.criterion and record.duration_s >= 5.0


def test_zero_passes_is_a_cold_start_on_record():
    _, _, meter, engine = setup()
    record = warm_up(engine, BATCHES, PARAMS, min_passes=0, min_s=0.0, max_s=60.0, max_output_tokens=None, meter=meter)
    assert engine.calls == [] and record.passes == 0 and "cold" in record.criterion
