"""Real servers launched by lem on 127.0.0.1: llama.cpp's (llama-cpp-python's server extra) and vLLM's
(the CPU build), measured through backend=openai; lifecycle, failures, and no server left behind.

CI sets LEM_REQUIRE_LLAMA_CPP=1 and LEM_REQUIRE_VLLM=1, so a missing package fails these tests instead of skipping them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from tests.lem_cli import lem_env, run_lem

SERVER_EXTRA = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
HAVE_LLAMA_SERVER = all(importlib.util.find_spec(m) is not None for m in SERVER_EXTRA)
if not HAVE_LLAMA_SERVER and os.environ.get("LEM_REQUIRE_LLAMA_CPP") == "1":
    raise RuntimeError('LEM_REQUIRE_LLAMA_CPP=1 but llama-cpp-python\'s server extra is not installed: pip install -e ".[llamacpp]"')
needs_llama_server = pytest.mark.skipif(not HAVE_LLAMA_SERVER, reason='llama-cpp-python[server] is not installed: pip install -e ".[llamacpp]"')
HAVE_VLLM = importlib.util.find_spec("vllm") is not None
if not HAVE_VLLM and os.environ.get("LEM_REQUIRE_VLLM") == "1":
    raise RuntimeError("LEM_REQUIRE_VLLM=1 but vLLM is not installed (make vllm)")
needs_vllm = pytest.mark.skipif(not HAVE_VLLM, reason="vLLM is not installed (make vllm installs its CPU build)")

SMALL = ["experiment=quick", "dataset.n_prompts=4", "dataset.max_output_tokens=8", "energy.idle_baseline_s=0", "run.warmup_batches=1"]


def processes_with(marker: str) -> list[psutil.Process]:
    """Live processes whose command line holds ``marker`` (a served-model name unique to one test)."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and any(marker in part for part in p.info["cmdline"] or []):
                found.append(p)
        except psutil.Error:
            continue
    return found


def gone_within(marker: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while processes_with(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@needs_llama_server
@pytest.mark.slow
def test_llama_cpp_server_is_launched_measured_and_stopped(tmp_path: Path) -> None:
    alias = f"lem-test-{uuid.uuid4().hex[:8]}"
    run_dir = tmp_path / "run"
    result = run_lem(
        [*SMALL, "backend=llamacpp_server", f"backend.openai.model={alias}", "backend.llama_cpp.n_threads=1", "dataset.ignore_eos=true",
         f"hydra.run.dir={run_dir}", "tracking.enabled=false"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not processes_with(alias), "the server outlived the run"
    lines = read_lines(run_dir / "raw" / "process-0.jsonl")
    header = lines[0]
    settings = header["engine_settings"]
    assert header["engine"] == "openai" and header["engine_version"].startswith("llama_cpp_python 0.3.")
    assert settings["launched"] is True and settings["server_ready_s"] > 0 and settings["served_model"] == alias
    assert "--logits_all" in settings["server_command"] and "--interrupt_requests" in settings["server_command"]
    assert settings["prompt"].startswith("templated text") and settings["output_tokens"].startswith("lem's tokenizer")
    phases = {p["name"]: p for p in lines if p["kind"] == "phase"}
    assert list(phases) == ["engine_init", "model_load", "warmup", "generation"]
    assert all(phases[p]["end_s"] > phases[p]["start_s"] for p in ("engine_init", "model_load"))
    requests = [r for r in lines if r["kind"] == "request"]
    assert len(requests) == 4
    for r in requests:
        # ignore_eos: exactly 8 generated; counted from the text by lem's tokenizer, which can merge two
        # generated tokens into one (never split one into more than were generated: capped at max_tokens).
        assert 6 <= r["output_tokens"] <= 8 and r["finish_reason"] == "length"
        assert r["arrival_s"] <= r["start_s"] < r["first_token_s"] <= r["end_s"] and r["token_times_s"] == sorted(r["token_times_s"])
    log = (run_dir / "server.log").read_text()
    assert "llama_cpp.server" in log and "Uvicorn running on" in log


@needs_llama_server
@pytest.mark.slow
def test_a_killed_run_leaves_no_server(tmp_path: Path) -> None:
    alias = f"lem-test-{uuid.uuid4().hex[:8]}"
    lem = subprocess.Popen(
        [sys.executable, "-m", "lem", "experiment=quick", "dataset.n_prompts=64", "dataset.max_output_tokens=64", "backend=llamacpp_server",
         f"backend.openai.model={alias}", f"hydra.run.dir={tmp_path / 'run'}", "tracking.enabled=false"],
        cwd=tmp_path, env=lem_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while not processes_with(alias):
            assert lem.poll() is None, "lem ended before its server started"
            assert time.monotonic() < deadline, "the server never started"
            time.sleep(0.2)
        time.sleep(2.0)  # the server is loading or serving
        os.kill(lem.pid, signal.SIGKILL)  # no handler runs: only the kernel's parent-death signals are left
        lem.wait(timeout=30)
        assert gone_within(alias, 30), "a server outlived the killed run"
    finally:
        if lem.poll() is None:
            lem.kill()
        for p in processes_with(alias):
            p.kill()


@pytest.mark.parametrize(
    ("command", "extra", "expected"),
    [
        (["{python}", "-c", "import sys; print('boom: no such model {model}'); sys.exit(3)"], [], "exited with code 3 before GET http://127.0.0.1:"),
        (["{python}", "-c", "import time; time.sleep(300)  # {model}"], ["backend.openai.startup_timeout_s=3"], "did not answer GET http://127.0.0.1:"),
    ],
    ids=["exits", "never answers"],
)
def test_a_server_that_exits_or_never_answers_is_one_line_and_stopped(tmp_path: Path, command: list[str], extra: list[str], expected: str) -> None:
    alias = f"lem-test-{uuid.uuid4().hex[:8]}"
    from tests.tiny_model import make_tiny_model_dir

    tiny = make_tiny_model_dir(tmp_path / "tiny")
    result = run_lem(
        ["backend=openai", "backend.openai.launch=true", f"backend.openai.model={alias}", f"backend.openai.server_command={json.dumps(command)}",
         f"model.name_or_path={tiny}", "energy.idle_baseline_s=0", *extra, f"hydra.run.dir={tmp_path / 'run'}", "tracking.enabled=false"],
        cwd=tmp_path, timeout_s=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().count("\n") == 0 and expected in result.stderr and "Traceback" not in result.stderr
    if "exits" in expected:
        assert f"boom: no such model {alias}" in result.stderr  # its last log line says why
    assert gone_within(alias, 10), "the launched command outlived the failed run"


@needs_vllm
@pytest.mark.slow
def test_vllm_serve_generates_what_embedded_vllm_generates(tmp_path: Path) -> None:
    """The same build behind HTTP: same prompts as ids, same greedy outputs, token for token."""
    alias = f"lem-test-{uuid.uuid4().hex[:8]}"
    sweep_dir = tmp_path / "sweep"
    result = run_lem(
        ["-m", *SMALL, "backend=vllm,vllm_server", "precision.dtype=float32", f"backend.openai.model={alias}", "run.record_token_ids=on",
         f"hydra.sweep.dir={sweep_dir}", "tracking.enabled=false"],
        cwd=tmp_path, timeout_s=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not processes_with(alias), "vllm serve outlived the sweep"

    def requests(job: str) -> dict[int, dict]:
        return {r["request_id"]: r for r in read_lines(sweep_dir / job / "raw" / "process-0.jsonl") if r["kind"] == "request"}

    embedded, served = requests("0"), requests("1")
    assert set(embedded) == set(served) == {0, 1, 2, 3}
    for i in embedded:
        assert served[i]["input_tokens"] == embedded[i]["input_tokens"]
        assert served[i]["output_token_ids"] == embedded[i]["output_token_ids"]  # greedy, float32, the same engine
        assert served[i]["output_tokens"] == embedded[i]["output_tokens"]
    header = read_lines(sweep_dir / "1" / "raw" / "process-0.jsonl")[0]
    assert header["engine_settings"]["output_tokens"] == "the server's streamed token ids"
    assert "--no-enable-prefix-caching" in header["engine_settings"]["server_command"]
    assert (sweep_dir / "1" / "server.log").is_file()
