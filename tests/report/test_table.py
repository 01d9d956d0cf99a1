"""The terminal table: key figures visible, missing figures shown as a dash, never as 0."""

from __future__ import annotations

from pathlib import Path

from lem.records import (
    EndRecord,
    EnergyReading,
    HeaderRecord,
    MemoryRecord,
    PhaseRecord,
    RequestRecord,
    to_json_dict,
)
from lem.report.table import DASH, fmt_bytes, fmt_num, render_summary
from lem.results.aggregate import summarize
from lem.results.reader import RawProcessRecords


def run_records(energy: list[EnergyReading]) -> RawProcessRecords:
    header = HeaderRecord(0, 1, 1_700_000_000.0, "host", 1, "0.1.0", "cpu", ["Xeon"], "pytorch", "transformers 4.56", "SmolLM2-135M", "float32", 2)
    requests = []
    for i in range(4):
        times = [1.0 + 0.02 * (k + 1) for k in range(50)]
        requests.append(
            RequestRecord(i, 0, 4, 20, 50, 1.0, 1.0, times[0], times[-1], times, "length", padded_input_tokens=20)
        )
    return RawProcessRecords(
        path=Path("process-0.jsonl"),
        header=to_json_dict(header),
        phases=[
            to_json_dict(PhaseRecord("engine_init", 0.0, 0.25)),
            to_json_dict(PhaseRecord("model_load", 0.25, 1.0)),
            to_json_dict(PhaseRecord("generation", 1.0, 9.0, energy=energy)),
        ],
        requests=[to_json_dict(r) for r in requests],
        memory=[to_json_dict(MemoryRecord(peak_rss_bytes=512 * 1024**2))],
        end=to_json_dict(EndRecord("completed", 9.0)),
    )


def line(text: str, label: str) -> str:
    return next(ln for ln in text.splitlines() if ln.strip().startswith(label))


def test_table_shows_key_figures():
    text = render_summary(summarize([run_records([EnergyReading("cuda:0", "gpu", 80.0, "counter")])]))
    assert "SmolLM2-135M" in text and "completed" in text
    assert "25.00 tok/s" in line(text, "output rate")  # 200 tokens / 8 s
    assert "8.00 s" in line(text, "generation wall")
    ttft = line(text, "TTFT").split()
    assert ttft[1:5] == ["20.00"] * 4  # mean p50 p90 p99 in ms
    assert "0.400 J/tok" in line(text, "per output token")  # 80 J / 200 tokens
    gen = line(text, "generation  ").split()  # the phase row, not "generation wall"
    assert gen[1:6] == ["8.00", "80.00", DASH, "10.00", "counter"]  # wall, energy, net (no baseline), mean W, source
    assert "512.0 MiB" in line(text, "peak RSS")
    for section in ("tokens", "throughput", "latency (ms)", "phases", "memory"):
        assert section in text.splitlines()


def test_nulls_render_as_dash_never_zero():
    text = render_summary(summarize([run_records([EnergyReading("cuda:0", "gpu", None, None)])]))
    assert line(text, "per output token").split()[-1] == DASH
    assert line(text, "mean power").split()[-1] == DASH
    assert line(text, "CUDA peak allocated").split()[-1] == DASH
    engine_init = line(text, "engine_init")
    assert DASH in engine_init and "not measured" in engine_init
    assert line(text, "generation  ").split()[1:7] == ["8.00", DASH, DASH, DASH, "not", "measured"]
    assert "energy (generation): not measured" in text
    assert "no energy measured" in text  # the warning is shown


def test_table_renders_an_almost_empty_summary():
    text = render_summary({"status": "incomplete", "warnings": ["run incomplete: 0 requests recorded"]})
    assert "incomplete" in text and "run incomplete: 0 requests recorded" in text
    assert line(text, "TTFT").split()[1] == DASH


def test_number_formats():
    assert fmt_num(None, "s") == DASH
    assert fmt_num(0.0123, "J/tok") == "0.0123 J/tok"
    assert fmt_num(1234.5, "tok/s") == "1,234 tok/s" or fmt_num(1234.5, "tok/s") == "1,235 tok/s"
    assert fmt_num(12, "") == "12"
    assert fmt_bytes(3 * 1024**3) == "3.00 GiB"
    assert fmt_bytes(None) == DASH


def test_net_with_its_uncertainty_a_partial_total_and_the_gpu_config_are_shown():
    reading = EnergyReading("cuda:0", "gpu", 80.0, "counter", net_energy_j=40.0, idle_power_w=5.0, net_energy_uncertainty_j=2.0)
    summary = summarize([run_records([reading])])
    summary["energy"]["devices"] = [{"device": "cuda:0", "config": {
        "driver_version": "550.54.15", "enforced_power_limit_w": 700.0, "persistence_mode": True, "pstate": "P0",
        "mig_mode": {"current": "disabled", "pending": "disabled"}}}]
    text = render_summary(summary)
    assert "net of idle 0.200 ± 0.0100 J/tok" in line(text, "per output token")  # 40 ± 2 J over 200 tokens
    assert line(text, "cuda:0 config").split(None, 2)[2] == "driver 550.54.15, power limit 700.0 W, persistence on, P0 at start, MIG disabled"

    missing = summarize([run_records([EnergyReading("cuda:0", "gpu", 80.0, "counter"), EnergyReading("cuda:1", "gpu", None, None)])])
    text = render_summary(missing)
    assert line(text, "per output token").split()[-1] == DASH  # not 80 J passed off as both GPUs'
    assert "80.00 J; no reading for cuda:1 (gpu)" in line(text, "partial (not a total)")


def test_the_report_opens_with_its_headline_and_wraps_long_warnings_at_words():
    reading = EnergyReading("cuda:0", "gpu", 80.0, "counter", net_energy_j=40.0, idle_power_w=5.0, net_energy_uncertainty_j=2.0)
    summary = summarize([run_records([reading])])
    long_warning = "the idle baseline of cuda:0 drifted by 12.5 % between the start and the end of the run " * 3
    summary["warnings"] = [long_warning.strip()]
    lines = render_summary(summary, width=60).splitlines()
    head = lines[0]
    assert head.startswith("J/token 0.400 gross, 0.200 ± 0.0100 net (counter)")  # 80 J, 40 ± 2 J net, 200 tokens
    assert "tok/s" in head and "TTFT p50" in head and "p99" in head and "TPOT p50" in head
    warning_lines = lines[lines.index("warnings") + 1:]
    assert len(warning_lines) > 3 and all(len(ln) <= 60 for ln in warning_lines)
    assert warning_lines[0].startswith("  ! ") and all(ln.startswith("    ") for ln in warning_lines[1:])
    words = long_warning.split()
    assert " ".join(" ".join(ln.split()) for ln in warning_lines)[2:] == " ".join(words)  # no word was cut


def test_the_headline_says_not_measured_rather_than_zero():
    from lem.report.headline import headline_line

    text = headline_line({"energy": {}, "throughput": {"output_tokens_per_s": 12.5}})
    assert text.startswith(f"J/token {DASH} (not measured)") and "12.50 tok/s" in text and " 0 " not in text
