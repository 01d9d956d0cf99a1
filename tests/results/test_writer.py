"""Raw records: write → read round trip, refusal to mix runs, and what survives a killed process."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lem.errors import LemError
from lem.records import (
    EndRecord,
    EnergyReading,
    FlopsRecord,
    HeaderRecord,
    MemoryRecord,
    PhaseRecord,
    RequestRecord,
)
from lem.results.reader import read_raw_file, read_run
from lem.results.writer import RawWriter, raw_path, write_json_atomic

REPO = Path(__file__).resolve().parents[2]


def header(index: int = 0, world_size: int = 1) -> HeaderRecord:
    return HeaderRecord(
        process_index=index,
        world_size=world_size,
        t0_unix_s=1_700_000_000.0,
        hostname="host",
        pid=123,
        lem_version="0.1.0",
        device_type="cpu",
        device_names=["cpu"],
        engine="pytorch",
        engine_version="test",
        model="tiny",
        dtype="float32",
        num_threads=2,
    )


def a_request(i: int) -> RequestRecord:
    return RequestRecord(
        request_id=i,
        batch_id=0,
        batch_size=2,
        input_tokens=5,
        output_tokens=2,
        arrival_s=1.0,
        start_s=1.0,
        first_token_s=1.1,
        end_s=1.2,
        token_times_s=[1.1, 1.2],
        finish_reason="length",
        padded_input_tokens=6,
    )


def write_full_run(path: Path) -> None:
    with RawWriter(path) as w:
        w.write(header())
        w.write(PhaseRecord("model_load", 0.0, 1.0, energy=[EnergyReading("cuda:0", "gpu", 5.0, "counter")]))
        w.write(a_request(0))
        w.write(a_request(1))
        w.write(PhaseRecord("generation", 1.0, 2.0))
        w.write(MemoryRecord(peak_rss_bytes=1024))
        w.write(FlopsRecord())
        w.write(EndRecord(status="completed", end_s=2.0))


def test_round_trip_groups_records_by_kind(tmp_path: Path):
    path = raw_path(tmp_path, 0)
    write_full_run(path)
    lines = path.read_text().splitlines()
    assert len(lines) == 8 and all(json.loads(line)["kind"] for line in lines)  # one record per line

    rec = read_raw_file(path)
    assert rec.header["model"] == "tiny" and rec.header["schema_version"] == "lem.raw/1"
    assert [p["name"] for p in rec.phases] == ["model_load", "generation"]
    (reading,) = rec.phases[0]["energy"]
    assert {k: reading[k] for k in ("device", "component", "energy_j", "source")} == {"device": "cuda:0", "component": "gpu", "energy_j": 5.0, "source": "counter"}
    assert reading["net_energy_j"] is None  # no idle baseline: net stays null, never 0
    assert [r["request_id"] for r in rec.requests] == [0, 1]
    assert rec.requests[0]["token_times_s"] == [1.1, 1.2]
    assert rec.memory[0]["peak_rss_bytes"] == 1024
    assert rec.flops[0]["total_flops"] is None  # null stays null
    assert rec.complete and not rec.torn_last_line


def test_writer_refuses_an_existing_file(tmp_path: Path):
    path = raw_path(tmp_path, 0)
    write_full_run(path)
    before = path.read_bytes()
    with pytest.raises(LemError, match="already exists"):
        with RawWriter(path) as w:
            w.write(header())
    assert path.read_bytes() == before


def test_nan_is_a_bug_not_data(tmp_path: Path):
    path = raw_path(tmp_path, 0)
    with RawWriter(path) as w:
        w.write(header())
        with pytest.raises(ValueError, match="NaN"):
            w.write(PhaseRecord("generation", 0.0, math.nan))
        with pytest.raises(ValueError):
            w.write({"kind": "phase", "energy": [{"energy_j": math.inf}]})
    assert len(path.read_text().splitlines()) == 1  # nothing half-written


def test_torn_last_line_is_dropped_and_flagged(tmp_path: Path):
    path = raw_path(tmp_path, 0)
    write_full_run(path)
    with open(path, "ab") as f:
        f.write(b'{"kind":"request","request_id":7,"batch_id":0,"inpu')
    rec = read_raw_file(path)
    assert rec.torn_last_line
    assert [r["request_id"] for r in rec.requests] == [0, 1]
    assert rec.complete  # the end record before the torn line still counts


def test_complete_last_line_without_newline_is_kept(tmp_path: Path):
    path = raw_path(tmp_path, 0)
    with RawWriter(path) as w:
        w.write(header())
    with open(path, "ab") as f:
        f.write(json.dumps({"kind": "end", "status": "completed", "end_s": 1.0}).encode())
    rec = read_raw_file(path)
    assert rec.complete and not rec.torn_last_line


def test_corrupt_line_in_the_middle_is_an_error(tmp_path: Path):
    path = raw_path(tmp_path, 0)
    write_full_run(path)
    lines = path.read_text().splitlines()
    lines[2] = lines[2][:10]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(LemError, match=r"process-0\.jsonl:3"):
        read_raw_file(path)


def test_unknown_schema_version_is_rejected_by_name(tmp_path: Path):
    path = raw_path(tmp_path, 0)
    with RawWriter(path) as w:
        w.write({**json.loads(json.dumps(header().__dict__)), "schema_version": "lem.raw/99"})
    with pytest.raises(LemError, match=r"lem\.raw/99"):
        read_raw_file(path)


def test_read_run_orders_processes_numerically(tmp_path: Path):
    for i in (10, 2, 0):
        with RawWriter(raw_path(tmp_path, i)) as w:
            w.write(header(i, world_size=11))
    assert [p.process_index for p in read_run(tmp_path)] == [0, 2, 10]


def test_read_run_without_records_is_an_error(tmp_path: Path):
    with pytest.raises(LemError, match="no raw records"):
        read_run(tmp_path)


def test_write_json_atomic_replaces_whole_file(tmp_path: Path):
    target = tmp_path / "summary.json"
    write_json_atomic(target, {"a": 1})
    write_json_atomic(target, {"b": [1, 2, None]})
    assert json.loads(target.read_text()) == {"b": [1, 2, None]}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temp file left behind
    with pytest.raises(ValueError):
        write_json_atomic(target, {"x": math.nan})
    assert json.loads(target.read_text()) == {"b": [1, 2, None]}  # the failed write left the old file


CHILD = textwrap.dedent(
    """
    import sys
    from tests.results.test_writer import a_request, header
    from lem.results.writer import RawWriter
    with RawWriter(sys.argv[1]) as w:
        w.write(header())
        i = 0
        while True:  # until SIGKILL
            w.write(a_request(i))
            i += 1
    """
)


def test_sigkilled_writer_leaves_every_completed_line(tmp_path: Path):
    path = raw_path(tmp_path, 0)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if path.exists() and path.read_bytes().count(b"\n") >= 50:
                break
            if child.poll() is not None:
                pytest.fail(f"writer exited early with {child.returncode}")
            time.sleep(0.01)
        else:
            pytest.fail("writer did not produce 50 lines in 30 s")
        os.kill(child.pid, signal.SIGKILL)  # mid-stream: no chance to close or flush anything
    finally:
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL

    data = path.read_bytes()
    complete_lines = data.count(b"\n")
    rec = read_raw_file(path)
    assert not rec.complete  # no end record: the summary will call the run incomplete
    assert len(rec.requests) == complete_lines - 1  # every newline-terminated line but the header
    assert [r["request_id"] for r in rec.requests] == list(range(len(rec.requests)))
    assert rec.torn_last_line == (not data.endswith(b"\n"))
