"""Trust warnings on synthetic records: a busy host, a static batch size the prompts never filled."""

from __future__ import annotations

from typing import Any

from lem.records import EndRecord, to_json_dict
from lem.results.aggregate import summarize
from lem.results.reader import RawProcessRecords
from lem.results.trust import batch_cap_warnings, busy_host_warnings
from tests.results.test_aggregate import proc, req


def with_load(p: RawProcessRecords, *, cpus: int = 2, host: float | None, lem: float | None, threads: int | None = 2,
              load: float | None = 3.1) -> RawProcessRecords:
    p.header["num_threads"] = threads
    p.end = to_json_dict(EndRecord("completed", 100.0, cpu_count=cpus, load_avg_1m_start=load, load_avg_1m_end=load,
                                   host_busy_cores=host, lem_busy_cores=lem))
    return p


def with_batching(p: RawProcessRecords, strategy: str, batch_size: int) -> RawProcessRecords:
    p.header["engine_settings"] = {"batching": {"strategy": strategy, "batch_size": batch_size, "max_tokens_per_batch": None}}
    return p


def busy(p: RawProcessRecords) -> list[str]:
    return [w for w in summarize([p])["warnings"] if w.startswith("host busy")]


def test_other_work_on_the_cores_lem_used_is_named_with_its_figures() -> None:
    p = with_load(proc(requests=[req(0, 1.0)]), cpus=2, host=2.0, lem=0.2, threads=2)
    assert busy(p) == [
        "host busy: other processes kept 1.8 of 2 CPU cores busy during generation (load average 3.1) "
        "while lem used 2 threads; timings and energy include other work"
    ]


def test_a_host_busy_only_with_lem_itself_or_with_free_cores_is_not_warned_about() -> None:
    assert busy(with_load(proc(requests=[req(0, 1.0)]), cpus=2, host=2.0, lem=1.9, threads=2)) == []  # lem's own load
    # 8 cores, lem on 2 threads: 5 cores of other work still fit in the 6 lem left free.
    assert busy(with_load(proc(requests=[req(0, 1.0)]), cpus=8, host=7.0, lem=2.0, threads=2)) == []
    # ... 7 of them do not.
    assert busy(with_load(proc(requests=[req(0, 1.0)]), cpus=8, host=9.0, lem=2.0, threads=2, load=None)) == [
        "host busy: other processes kept 7.0 of 8 CPU cores busy during generation while lem used 2 threads; "
        "timings and energy include other work"
    ]


def test_an_engine_with_unknown_threads_is_taken_to_use_every_core() -> None:
    [warning] = busy(with_load(proc(requests=[req(0, 1.0)]), cpus=8, host=2.0, lem=1.0, threads=None))
    assert "kept 1.0 of 8 CPU cores" in warning and "lem used 8 threads" in warning


def test_old_records_without_load_figures_give_no_warning() -> None:
    assert busy_host_warnings([proc(requests=[req(0, 1.0)])]) == []
    assert busy_host_warnings([with_load(proc(), host=None, lem=None)]) == []


def test_ranks_on_one_host_count_as_lem_together() -> None:
    a = with_load(proc(0, world_size=2, requests=[req(0, 1.0)]), cpus=4, host=3.8, lem=1.9, threads=2)
    b = with_load(proc(1, world_size=2, requests=[req(1, 1.0)]), cpus=4, host=3.8, lem=1.9, threads=2)
    assert busy_host_warnings([a, b]) == []
    b.end["lem_busy_cores"] = 0.2  # rank 1 idle: 1.7 cores of other work on a host lem filled
    [warning] = busy_host_warnings([a, b])
    assert "kept 1.7 of 4 CPU cores" in warning and "lem used 4 threads" in warning


def test_a_static_batch_larger_than_the_prompts_is_named() -> None:
    requests = [req(i, 1.0, batch_size=16) for i in range(16)]
    p = with_batching(proc(requests=requests), "static", 64)
    assert "batching.batch_size=64 but only 16 prompts: batches held at most 16; the run measured batch size 16, not 64" in summarize([p])["warnings"]


def test_batch_cap_counts_one_cycle_and_only_static_strategies() -> None:
    requests = [req(i, 1.0) for i in range(4)]
    for cycle, r in enumerate(requests):
        r.cycle = cycle // 2  # 2 prompts x 2 cycles
    assert batch_cap_warnings([with_batching(proc(requests=requests), "sorted_static", 4)], None) == [
        "batching.batch_size=4 but only 2 prompts: batches held at most 2; the run measured batch size 2, not 4"
    ]
    assert batch_cap_warnings([with_batching(proc(requests=requests), "static", 2)], None) == []
    assert batch_cap_warnings([with_batching(proc(requests=requests), "continuous", 64)], None) == []


def test_batch_cap_falls_back_to_the_config_without_recorded_batching() -> None:
    config: dict[str, Any] = {"batching": {"strategy": "static", "batch_size": 8}, "dataset": {"n_prompts": 3}}
    p = proc(requests=[req(i, 1.0) for i in range(3)])
    assert any(w.startswith("batching.batch_size=8 but only 3 prompts") for w in summarize([p], config)["warnings"])
