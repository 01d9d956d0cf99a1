"""Late aggregation on synthetic records: throughput windows, clocks, incomplete runs, energy honesty."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lem.records import (
    EndRecord,
    EnergyReading,
    FlopsRecord,
    HeaderRecord,
    MemoryRecord,
    PhaseRecord,
    RequestRecord,
    to_json_dict,
)
from lem.results.aggregate import summarize
from lem.results.reader import RawProcessRecords
from lem.results.summarize import main, write_summary
from lem.results.writer import RawWriter, raw_path

REPO = Path(__file__).resolve().parents[2]


def req(i: int, start: float, n_out: int = 100, n_in: int = 50, batch_id: int = 0, batch_size: int = 1, padded: int | None = None) -> RequestRecord:
    times = [start + 0.01 * (k + 1) for k in range(n_out)]
    return RequestRecord(
        request_id=i,
        batch_id=batch_id,
        batch_size=batch_size,
        input_tokens=n_in,
        output_tokens=n_out,
        arrival_s=start,
        start_s=start,
        first_token_s=times[0] if times else None,
        end_s=times[-1] if times else start,
        token_times_s=times,
        finish_reason="length",
        padded_input_tokens=padded,
    )


def proc(
    index: int = 0,
    t0: float = 1_700_000_000.0,
    world_size: int = 1,
    phases: list[PhaseRecord] | None = None,
    requests: list[RequestRecord] | None = None,
    complete: bool = True,
    memory: MemoryRecord | None = None,
    flops: FlopsRecord | None = None,
    hostname: str = "host",
) -> RawProcessRecords:
    h = HeaderRecord(index, world_size, t0, hostname, 1, "0.1.0", "cpu", ["cpu"], "pytorch", "t", "tiny", "float32", 2)
    return RawProcessRecords(
        path=Path(f"process-{index}.jsonl"),
        header=to_json_dict(h),
        phases=[to_json_dict(p) for p in phases or []],
        requests=[to_json_dict(r) for r in requests or []],
        memory=[to_json_dict(memory)] if memory else [],
        flops=[to_json_dict(flops)] if flops else [],
        end=to_json_dict(EndRecord("completed", 100.0)) if complete else None,
    )


def gen(start: float, end: float, *energy: EnergyReading) -> PhaseRecord:
    return PhaseRecord("generation", start, end, energy=list(energy))


def test_throughput_is_tokens_over_generation_wall_span():
    # Generation phase 2 → 12 s; the 4 requests end earlier, but the window is the phase.
    p = proc(phases=[PhaseRecord("model_load", 0.0, 2.0), gen(2.0, 12.0)], requests=[req(i, 2.0 + i) for i in range(4)])
    s = summarize([p])
    th = s["throughput"]
    assert th["generation_wall_s"] == pytest.approx(10.0)
    assert th["output_tokens_per_s"] == pytest.approx(400 / 10.0)
    assert th["total_tokens_per_s"] == pytest.approx((400 + 200) / 10.0)
    assert th["requests_per_s"] == pytest.approx(0.4)
    assert s["n_requests"] == 4 and s["tokens"]["output_tokens"] == 400
    assert s["phases"]["model_load"]["wall_s"] == pytest.approx(2.0)
    assert s["latency"]["ttft_ms"]["p50"] == pytest.approx(10.0)
    assert s["latency"]["tpot_ms"]["mean"] == pytest.approx(10.0)
    assert s["status"] == "completed"


def test_multi_process_window_aligns_clocks_with_t0():
    # p0: t0=1000, generation 5→15 (wall 1005→1015); p1 started 3 s later: 4→14 (wall 1007→1017).
    p0 = proc(0, 1000.0, 2, phases=[gen(5.0, 15.0)], requests=[req(0, 5.0)])
    p1 = proc(1, 1003.0, 2, phases=[gen(4.0, 14.0)], requests=[req(1, 4.0), req(2, 4.0)])
    s = summarize([p1, p0])
    assert s["throughput"]["generation_wall_s"] == pytest.approx(12.0)  # not 11 (unaligned 4→15)
    assert s["throughput"]["output_tokens_per_s"] == pytest.approx(300 / 12.0)
    assert s["phases"]["generation"]["wall_s"] == pytest.approx(12.0)
    assert [pp["process_index"] for pp in s["phases_per_process"]] == [0, 1]
    assert s["phases_per_process"][1]["phases"]["generation"]["wall_s"] == pytest.approx(10.0)
    assert s["status"] == "completed" and s["run"]["n_processes"] == 2


def test_killed_run_is_summarized_and_marked_incomplete():
    p0 = proc(0, 1000.0, 3, phases=[gen(0.0, 10.0)], requests=[req(0, 0.0)])
    # p1 killed during generation: no phase record, no end record; process 2 left no file at all.
    p1 = proc(1, 1000.0, 3, requests=[req(1, 1.0), req(2, 11.0)], complete=False)
    s = summarize([p0, p1])
    run = s["run"]
    assert s["status"] == "incomplete"
    assert (run["n_processes"], run["n_processes_completed"], run["world_size"]) == (2, 1, 3)
    assert s["n_requests"] == 3
    assert any(w.startswith("run incomplete: 3 requests recorded") for w in s["warnings"])
    # p1's requests bound its part of the window: 0 → 11 + 100 tokens × 10 ms.
    assert s["throughput"]["generation_wall_s"] == pytest.approx(12.0)


def test_missing_process_alone_makes_run_incomplete():
    s = summarize([proc(0, world_size=2, phases=[gen(0.0, 10.0)], requests=[req(0, 0.0)])])
    assert s["status"] == "incomplete"


def test_energy_nulls_stay_null():
    nothing = EnergyReading("cpu-package-0", "cpu", None, None)
    p = proc(phases=[PhaseRecord("model_load", 0.0, 1.0, [nothing]), gen(1.0, 30.0, nothing)], requests=[req(0, 1.0)])
    s = summarize([p])
    g = s["phases"]["generation"]
    assert g["energy_j"] is None and g["energy_source"] is None
    assert g["measured_energy_j"] is None and g["estimated_energy_j"] is None
    e = s["energy"]
    assert e["generation_energy_j"] is None and e["source"] is None
    assert e["j_per_output_token"] is None and e["mean_power_w"] is None and e["output_tokens_per_j"] is None
    assert any(w.startswith("no energy measured") for w in s["warnings"])
    assert "0.0" not in json.dumps(e)  # no figure turned into a zero


def test_measured_and_estimated_energy_are_kept_apart():
    p = proc(
        phases=[
            gen(
                0.0,
                20.0,
                EnergyReading("cuda:0", "gpu", 100.0, "counter"),
                EnergyReading("cpu-package-0", "cpu", 40.0, "estimated"),
            )
        ],
        requests=[req(0, 0.0), req(1, 0.0)],
    )
    s = summarize([p])
    g = s["phases"]["generation"]
    assert (g["energy_j"], g["energy_source"], g["energy_components"]) == (100.0, "counter", ["gpu"])
    assert g["measured_energy_j"] == 100.0 and g["estimated_energy_j"] == 40.0
    e = s["energy"]
    assert e["j_per_output_token"] == pytest.approx(100.0 / 200)
    assert e["estimated_j_per_output_token"] == pytest.approx(40.0 / 200)
    assert e["mean_power_w"] == pytest.approx(100.0 / 20.0)
    assert 140.0 not in _all_numbers(s)  # measured + estimated never added
    assert any("estimated" in w for w in s["warnings"])


def test_only_estimated_energy_is_labelled_estimated():
    p = proc(phases=[gen(0.0, 20.0, EnergyReading("cpu-package-0", "cpu", 40.0, "estimated"))], requests=[req(0, 0.0)])
    s = summarize([p])
    assert s["energy"]["source"] == "estimated"
    assert s["energy"]["j_per_output_token"] == pytest.approx(0.4)
    assert s["energy"]["measured_j_per_output_token"] is None
    assert any(w.startswith("energy estimated") for w in s["warnings"])


def test_measured_components_add_but_whole_system_is_not_added_on_top():
    p = proc(
        phases=[
            gen(
                0.0,
                20.0,
                EnergyReading("cuda:0", "gpu", 100.0, "counter"),
                EnergyReading("cpu-package-0", "cpu", 20.0, "rapl"),
                EnergyReading("system", "system", 300.0, "sampled"),
            )
        ],
        requests=[req(0, 0.0)],
    )
    g = summarize([p])["phases"]["generation"]
    assert g["energy_j"] == pytest.approx(120.0)  # gpu + cpu; system already contains them
    assert g["energy_source"] == "counter+rapl" and g["energy_components"] == ["cpu", "gpu"]
    assert {(c["component"], c["energy_j"]) for c in g["energy_by_component"]} == {("gpu", 100.0), ("cpu", 20.0), ("system", 300.0)}


def test_energy_sums_over_processes_and_phases():
    def p(i: int) -> RawProcessRecords:
        return proc(
            i,
            world_size=2,
            phases=[
                PhaseRecord("model_load", 0.0, 5.0, [EnergyReading("cuda:0", "gpu", 10.0, "counter")]),
                gen(5.0, 25.0, EnergyReading("cuda:0", "gpu", 50.0, "counter")),
            ],
            requests=[req(i, 5.0)],
        )

    s = summarize([p(0), p(1)])
    assert s["phases"]["generation"]["energy_j"] == pytest.approx(100.0)
    assert s["energy"]["j_per_output_token"] == pytest.approx(100.0 / 200)
    assert s["energy"]["all_phases_energy_j"] == pytest.approx(120.0)
    assert s["phases_per_process"][0]["phases"]["generation"]["energy_j"] == pytest.approx(50.0)

    # One phase not measured: no "all phases" total that silently leaves it out.
    partial = p(0)
    partial.phases.append(to_json_dict(PhaseRecord("warmup", 25.0, 26.0)))
    assert summarize([partial])["energy"]["all_phases_energy_j"] is None


def test_one_host_meter_read_by_two_processes_is_flagged():
    def p(i: int) -> RawProcessRecords:
        return proc(i, world_size=2, phases=[gen(0.0, 10.0, EnergyReading("cpu-package-0", "cpu", 30.0, "rapl"))], requests=[req(i, 0.0)])

    warnings = summarize([p(0), p(1)])["warnings"]
    assert any("cpu-package-0 on host reported by processes [0, 1]" in w for w in warnings)


def test_flops_memory_batching():
    requests = [req(0, 0.0, n_in=30, batch_id=0, batch_size=2, padded=50), req(1, 0.0, n_in=50, batch_id=0, batch_size=2, padded=50)]
    requests.append(req(2, 2.0, n_in=20, batch_id=1, batch_size=1, padded=20))
    p = proc(
        phases=[gen(0.0, 10.0)],
        requests=requests,
        memory=MemoryRecord(peak_rss_bytes=2_000, cuda_peak_allocated_bytes=[5, 9], cuda_peak_reserved_bytes=[7, 11]),
        flops=FlopsRecord(total_flops=3e12, source="analytical"),
    )
    s = summarize([p])
    f = s["flops"]
    assert (f["total_flops"], f["source"]) == (3e12, "analytical")
    assert f["executed_flops_per_output_token"] == pytest.approx(1e10) and f["flops_per_s"] == pytest.approx(3e11)
    assert f["mfu"] is None and any("MFU is null on CPU" in n for n in f["notes"])  # no CPU peak table
    assert (s["memory"]["peak_rss_bytes"], s["memory"]["cuda_peak_allocated_bytes"], s["memory"]["cuda_peak_reserved_bytes"]) == (2000, 9, 11)
    b = s["batching"]
    assert b["n_batches"] == 2 and b["batch_size_histogram"] == {"1": 1, "2": 1}
    assert b["padding_fraction"] == pytest.approx(20 / 120)


def test_unknowns_are_null_not_zero():
    s = summarize([proc(phases=[gen(0.0, 10.0)], requests=[req(0, 0.0)], flops=FlopsRecord())])
    assert s["flops"]["total_flops"] is None and s["flops"]["executed_flops_per_output_token"] is None
    assert s["memory"]["peak_rss_bytes"] is None and s["batching"]["padding_fraction"] is None


def test_short_window_warns_with_its_length():
    s = summarize([proc(phases=[gen(0.0, 1.2)], requests=[req(0, 0.0, n_out=10)])])
    assert "generation window 1.2 s is shorter than 5 s; aim for >= 20 s" in " ".join(s["warnings"])
    long = summarize([proc(phases=[gen(0.0, 30.0)], requests=[req(0, 0.0)])])
    assert not any("shorter than" in w for w in long["warnings"])


def test_truncated_prompts_are_counted_once_each_and_warned_about():
    import dataclasses

    cut = [dataclasses.replace(req(i, 0.0), truncated=i in (1, 3)) for i in range(4)]
    again = [dataclasses.replace(r, cycle=1) for r in cut]  # a second cycle serves the same prompts again
    s = summarize([proc(phases=[gen(0.0, 30.0)], requests=cut + again)])
    assert s["tokens"]["truncated_prompts"] == 2
    assert "2 of 4 prompts were cut to dataset.max_input_tokens" in s["warnings"]
    whole = summarize([proc(phases=[gen(0.0, 30.0)], requests=[req(0, 0.0)])])
    assert whole["tokens"]["truncated_prompts"] == 0 and not any("were cut" in w for w in whole["warnings"])


def test_empty_generation_gives_null_latency_and_throughput():
    s = summarize([proc(phases=[PhaseRecord("model_load", 0.0, 1.0)], complete=False)])
    assert s["latency"]["ttft_ms"]["mean"] is None
    assert s["throughput"]["output_tokens_per_s"] is None and s["throughput"]["generation_wall_s"] is None


def _all_numbers(obj: object) -> list[float]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _all_numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _all_numbers(v)]
    return [obj] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


# --- summary.json on disk and the recompute command --------------------------------------


def make_run(run_dir: Path, complete: bool = True) -> None:
    with RawWriter(raw_path(run_dir, 0)) as w:
        w.write(HeaderRecord(0, 1, 1_700_000_000.0, "host", 1, "0.1.0", "cpu", ["cpu"], "pytorch", "t", "tiny", "float32", 2))
        w.write(PhaseRecord("model_load", 0.0, 1.0))
        for i in range(3):
            w.write(req(i, 1.0))
        if complete:
            w.write(gen(1.0, 8.0))
            w.write(EndRecord("completed", 8.0))
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text("dataset:\n  n_prompts: 4\nrun:\n  dir: ${hydra:runtime.output_dir}\n")


def test_write_summary_is_recomputable_and_reads_the_config(tmp_path: Path):
    make_run(tmp_path)
    first = write_summary(tmp_path)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == first == write_summary(tmp_path)  # pure: recomputing gives the same summary
    assert first["config"]["dataset"]["n_prompts"] == 4
    assert first["run"]["n_requests_expected"] == 4
    assert any("3 requests recorded but the config asked for 4 (dataset.n_prompts x cycles)" in w for w in first["warnings"])


def test_cli_recomputes_and_fails_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    run = tmp_path / "run"
    make_run(run, complete=False)
    with open(raw_path(run, 0), "ab") as f:
        f.write(b'{"kind": "request", "request_id": 3, "bat')  # killed mid-write
    assert main([str(run), "--no-write"]) == 0
    assert not (run / "summary.json").exists()
    assert "incomplete" in capsys.readouterr().out
    assert main([str(run)]) == 0 and (run / "summary.json").exists()
    written = json.loads((run / "summary.json").read_text())
    assert written["status"] == "incomplete" and written["n_requests"] == 3
    assert any("torn last line dropped in process-0.jsonl" in w for w in written["warnings"])

    empty = tmp_path / "empty"
    empty.mkdir()
    capsys.readouterr()
    assert main([str(empty)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no raw records" in err


def test_python_dash_m_lem_summarize(tmp_path: Path):
    make_run(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "lem", "summarize", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "throughput" in out.stdout and (tmp_path / "summary.json").exists()


def test_processes_that_did_not_overlap_are_flagged():
    together = [proc(i, world_size=2, phases=[gen(0.0, 10.0)], requests=[req(i, 0.0)]) for i in range(2)]
    s = summarize(together)
    assert s["run"]["process_overlap_fraction"] == pytest.approx(1.0)
    assert not any("generated together" in w for w in s["warnings"])
    apart = [proc(0, world_size=2, phases=[gen(0.0, 10.0)], requests=[req(0, 0.0)]),
             proc(1, world_size=2, t0=1_700_000_008.0, phases=[gen(0.0, 10.0)], requests=[req(1, 0.0)])]
    s = summarize(apart)
    assert s["run"]["process_overlap_fraction"] == pytest.approx(2.0 / 18.0)  # 8..10 of 0..18
    assert any("generated together for only 11%" in w for w in s["warnings"])
    assert s["throughput"]["generation_wall_s"] == pytest.approx(18.0)  # span of all processes
    assert s["tokens"]["output_tokens"] == 200  # tokens summed over processes
