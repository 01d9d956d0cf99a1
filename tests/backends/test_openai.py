"""backend=openai against a fake OpenAI-compatible server (tests/backends/fake_openai.py): request fields,
token counting and timing from streamed chunks, queueing in TTFT, and every way a server can fail.

Real servers (llama.cpp's, vLLM's) launched by lem: tests/backends/test_openai_servers.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from lem.backends.base import EngineSpec
from lem.backends.openai.client import Chunk, Streamed
from lem.backends.openai.config import OutputTokens, PromptFormat, ServerKind
from lem.backends.openai.engine import OpenAIBackend, text_tokens
from lem.config.checks import validate
from lem.config.schema import BackendName, LemConfig
from lem.errors import ConfigError, LemError
from lem.workload.types import GenerationParams, PreparedRequest
from tests import lem_cli
from tests.backends.engine_standins import serve_direct
from tests.backends.fake_openai import Behaviour, FakeOpenAI
from tests.tiny_model import EOS_ID, make_tiny_model_dir, make_tokenizer


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return make_tokenizer()


def openai_cfg(model_dir: Path, base_url: str | None, preset: ServerKind = ServerKind.vllm, **dataset: Any) -> LemConfig:
    cfg = LemConfig()
    cfg.backend.name = BackendName.openai
    cfg.model.name_or_path = str(model_dir)
    cfg.backend.openai.base_url = base_url
    cfg.backend.openai.preset = preset
    for key, value in dataset.items():
        setattr(cfg.dataset, key, value)
    return cfg


def loaded(cfg: LemConfig) -> OpenAIBackend:
    backend = OpenAIBackend(EngineSpec.of(cfg))
    backend.init_engine()
    backend.load_model()
    return backend


def requests_for(tokenizer: Any, n: int) -> list[PreparedRequest]:
    texts = ["what is the capital of france ?", "measure the power of every run", "one two three four", "hello world please answer"]
    out = []
    for i in range(n):
        text = texts[i % len(texts)]
        out.append(PreparedRequest(i, tuple(tokenizer(text, add_special_tokens=False)["input_ids"]), text, False))
    return out


# -- config: refused before anything starts -----------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: setattr(c.backend.openai, "base_url", None), "backend.openai.base_url=null: expected the server's URL"),
        (lambda c: setattr(c.backend.openai, "base_url", "ftp://x/v1"), "backend.openai.base_url=ftp://x/v1: expected an http:// or https:// URL"),
        (lambda c: setattr(c.backend.openai, "base_url", "http://example.com:8000/v1"), "expected a server on this machine while energy.enabled=true"),
        (lambda c: setattr(c.backend.openai, "api_key_env", "LEM_TEST_UNSET_KEY"), "backend.openai.api_key_env=LEM_TEST_UNSET_KEY: expected the name of an environment variable that is set"),
        (lambda c: setattr(c.backend.openai, "extra_body", {"max_tokens": 3}), "backend.openai.extra_body.max_tokens=3: expected no value here: lem sets it from dataset.max_output_tokens"),
        (lambda c: (setattr(c.backend.openai, "preset", ServerKind.llamacpp), setattr(c.backend.openai, "prompt_format", PromptFormat.token_ids)),
         "backend.openai.prompt_format=token_ids: expected text or auto with preset=llamacpp"),
        (lambda c: (setattr(c.backend.openai, "preset", ServerKind.generic), setattr(c.decoder, "repetition_penalty", 1.2)),
         "decoder.repetition_penalty=1.2: expected 1.0 with backend.openai.preset=generic"),
        (lambda c: (setattr(c.backend.openai, "preset", ServerKind.generic), setattr(c.dataset, "ignore_eos", True)), "dataset.ignore_eos=True: expected false with backend.openai.preset=generic"),
        (lambda c: setattr(c.backend.openai, "server_command", ["x"]), "backend.openai.server_command=['x']: expected null unless backend.openai.launch=true"),
        (lambda c: (setattr(c.backend.openai, "launch", True), setattr(c.backend.openai, "base_url", None), setattr(c.backend.openai, "server_command", ["{python}", "-m", "srv", "{nope}"])),
         "backend.openai.server_command={nope}: expected placeholders among"),
        (lambda c: (setattr(c.backend.openai, "launch", True), setattr(c.backend.openai, "base_url", None), setattr(c.backend.openai, "preset", ServerKind.generic)),
         "backend.openai.server_command=null: expected a command that starts the server"),
        (lambda c: setattr(c.energy.codecarbon, "tracking_mode", "process"), "energy.codecarbon.tracking_mode=process: expected machine with backend=openai"),
        (lambda c: setattr(c.backend.openai, "model", "other-model"), "backend.openai.model=other-model: expected a model http://127.0.0.1:"),
    ],
)
def test_config_refusals_name_the_key_and_what_is_allowed(tiny_dir: Path, tokenizer: Any, change: Any, expected: str) -> None:
    with FakeOpenAI(tokenizer) as fake:
        cfg = openai_cfg(tiny_dir, fake.base_url)
        change(cfg)
        with pytest.raises(ConfigError) as refused:
            validate(cfg)
    assert expected in str(refused.value)


def test_an_unreachable_server_is_refused_before_anything_starts(tiny_dir: Path) -> None:
    from lem.backends.openai.server import free_port

    cfg = openai_cfg(tiny_dir, f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(ConfigError, match=r"backend.openai.base_url=http://127.0.0.1:\d+/v1: expected a reachable OpenAI-compatible server \(.*cannot be reached: ConnectError"):
        validate(cfg)


def test_a_remote_server_is_allowed_when_energy_is_off(tiny_dir: Path, tokenizer: Any) -> None:
    from lem.backends.openai.config import is_local_host

    assert is_local_host("127.0.0.1") and is_local_host("localhost") and is_local_host("[::1]") and not is_local_host("10.1.2.3")
    with FakeOpenAI(tokenizer) as fake:
        cfg = openai_cfg(tiny_dir, fake.base_url.replace("127.0.0.1", "localhost"))
        validate(cfg)  # localhost is this machine


# -- requests, token counting and timing -----------------------------------------------------------------


def test_token_id_prompts_and_multi_token_chunks(tiny_dir: Path, tokenizer: Any) -> None:
    behaviour = Behaviour(tokens_per_chunk=3, token_delay_s=0.02)
    with FakeOpenAI(tokenizer, behaviour) as fake:
        backend = loaded(openai_cfg(tiny_dir, fake.base_url))
        requests = requests_for(tokenizer, 2)
        params = GenerationParams(max_output_tokens=7, repetition_penalty=1.1)
        now = time.perf_counter()
        raws = {r.request_id: r for r in serve_direct(backend, requests, [now, now], params)}
        backend.unload()
    body = behaviour.bodies[0]
    assert body["prompt"] in [list(r.input_ids) for r in requests]  # the ids every engine gets
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True} and body["return_token_ids"] is True
    assert body["max_tokens"] == 7 and body["temperature"] == 0.0 and body["repetition_penalty"] == 1.1
    assert body["stop_token_ids"] == [EOS_ID] and body["ignore_eos"] is False and body["model"] == "fake-model"
    for raw in raws.values():
        assert len(raw.output_token_ids) == 7 == len(raw.token_times)
        # Chunks of 3, 3 and 1 tokens: each chunk's tokens share the time it arrived.
        times = raw.token_times
        assert times[0] == times[1] == times[2] < times[3] == times[4] == times[5] < times[6]
        assert raw.arrival_time <= raw.start_time < times[0]


def test_text_answers_are_counted_with_lem_s_tokenizer_plus_the_eos(tiny_dir: Path, tokenizer: Any) -> None:
    behaviour = Behaviour(usage=False, stop_after=4)
    with FakeOpenAI(tokenizer, behaviour) as fake:
        cfg = openai_cfg(tiny_dir, fake.base_url, preset=ServerKind.generic)
        backend = loaded(cfg)
        assert not backend.prompt_ids and not backend.ids_out
        requests = requests_for(tokenizer, 1)
        now = time.perf_counter()
        (raw,) = list(serve_direct(backend, requests, [now], GenerationParams(max_output_tokens=10)))
        backend.unload()
    body = behaviour.bodies[0]
    assert body["prompt"] == requests[0].text and "return_token_ids" not in body and "top_k" not in body
    vocab = tokenizer.convert_tokens_to_ids(["the", "quick", "brown", "fox"])
    assert raw.output_token_ids == [*vocab, EOS_ID]  # the EOS was generated: it cost a step, as on every engine
    assert raw.token_times == sorted(raw.token_times)


def test_the_record_says_how_tokens_were_counted(tiny_dir: Path, tokenizer: Any) -> None:
    with FakeOpenAI(tokenizer) as fake:
        cfg = openai_cfg(tiny_dir, fake.base_url)
        cfg.backend.openai.output_tokens = OutputTokens.text
        backend = loaded(cfg)
        extra = backend.describe().extra
        backend.unload()
    assert extra["output_tokens"].startswith("lem's tokenizer on the streamed text")
    assert extra["prompt"].startswith("token ids") and extra["launched"] is False and extra["served_model"] == "fake-model"


def test_text_tokens_are_timed_by_the_chunk_that_completed_them(tokenizer: Any) -> None:
    streamed = Streamed(0, 0.0, [Chunk(1.0, "the qu", None), Chunk(2.0, "ick brown", None), Chunk(3.0, " fox", None)], "length", 3.0)
    ids, times = text_tokens(streamed, tokenizer)
    assert tokenizer.convert_ids_to_tokens(ids) == ["the", "quick", "brown", "fox"]
    assert times == [1.0, 2.0, 2.0, 3.0]


def test_ttft_includes_queueing_behind_a_slow_request(tiny_dir: Path, tokenizer: Any) -> None:
    behaviour = Behaviour(first_token_delay_s=0.3, serialise=True)
    with FakeOpenAI(tokenizer, behaviour) as fake:
        backend = loaded(openai_cfg(tiny_dir, fake.base_url))
        now = time.perf_counter()
        raws = sorted(serve_direct(backend, requests_for(tokenizer, 2), [now, now], GenerationParams(max_output_tokens=3), batch_size=1),
                      key=lambda r: r.token_times[0])
        backend.unload()
    first, second = raws
    assert first.token_times[0] - first.arrival_time >= 0.3
    # At most one in flight (batching.batch_size=1): the second waits in lem's queue for the whole first request.
    assert second.start_time >= first.token_times[-1]
    assert second.token_times[0] - second.arrival_time >= 0.6


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        (Behaviour(error_after_chunks=1), "broke off request 0 mid-stream: fake engine died"),
        (Behaviour(stream=False), "did not stream (Content-Type: application/json)"),
        (Behaviour(status=400), "answered HTTP 400: fake failure"),
    ],
    ids=["error mid-stream", "not streamed", "http error"],
)
def test_a_failing_server_is_one_line(tiny_dir: Path, tokenizer: Any, behaviour: Behaviour, expected: str) -> None:
    with FakeOpenAI(tokenizer, behaviour) as fake:
        backend = loaded(openai_cfg(tiny_dir, fake.base_url))
        now = time.perf_counter()
        with pytest.raises(LemError) as failed:
            list(serve_direct(backend, requests_for(tokenizer, 1), [now], GenerationParams(max_output_tokens=4)))
        backend.unload()
    assert expected in str(failed.value) and "\n" not in str(failed.value)


def test_a_server_counting_another_model_s_prompt_tokens_is_refused(tiny_dir: Path, tokenizer: Any) -> None:
    with FakeOpenAI(tokenizer) as fake:
        backend = loaded(openai_cfg(tiny_dir, fake.base_url, preset=ServerKind.generic))  # text prompts
        request = PreparedRequest(0, tuple(range(5, 45)), "what is the capital of france ?", False)  # 40 ids, 7 words in the text
        now = time.perf_counter()
        with pytest.raises(LemError, match="the server counted 7 prompt tokens for request 0 .*lem's tokenizer 40"):
            list(serve_direct(backend, [request], [now], GenerationParams(max_output_tokens=2)))
        backend.unload()


# -- the command line, against the fake server -------------------------------------------------------------


run_lem = partial(lem_cli.run_lem, timeout_s=300)


def test_a_running_server_is_measured_end_to_end(tiny_dir: Path, tokenizer: Any, tmp_path: Path) -> None:
    secret = "sk-lem-test-not-for-logs"
    behaviour = Behaviour(tokens_per_chunk=2, token_delay_s=0.005, api_key=secret)
    run_dir = tmp_path / "run"
    db = tmp_path / "mlflow.db"
    with FakeOpenAI(tokenizer, behaviour) as fake:
        args = ["backend=openai", f"backend.openai.base_url={fake.base_url}", "backend.openai.preset=vllm", f"model.name_or_path={tiny_dir}",
                "dataset.n_prompts=6", "dataset.max_output_tokens=5", "energy.idle_baseline_s=0", "batching.batch_size=3",
                f"hydra.run.dir={run_dir}", f"tracking.tracking_uri=sqlite:///{db}"]
        refused = run_lem([*args, "backend.openai.api_key_env=LEM_TEST_API_KEY"], cwd=tmp_path)
        os.environ["LEM_TEST_API_KEY"] = secret
        try:
            result = run_lem([*args, "backend.openai.api_key_env=LEM_TEST_API_KEY"], cwd=tmp_path)
        finally:
            del os.environ["LEM_TEST_API_KEY"]
    assert refused.returncode == 2 and "backend.openai.api_key_env=LEM_TEST_API_KEY: expected the name of an environment variable that is set" in refused.stderr
    assert result.returncode == 0, result.stderr[-3000:]
    # The key went to the server and nowhere else: not the run folder, not the tracking store.
    for path in [*run_dir.rglob("*"), db]:
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    lines = [json.loads(line) for line in (run_dir / "raw" / "process-0.jsonl").read_text().splitlines()]
    header = lines[0]
    assert header["engine"] == "openai" and header["engine_version"] == "vLLM's OpenAI server 9.9.9-fake"
    assert header["engine_settings"]["output_tokens"] == "the server's streamed token ids"
    assert [p["name"] for p in lines if p["kind"] == "phase"] == ["engine_init", "model_load", "warmup", "generation"]
    requests = [r for r in lines if r["kind"] == "request"]
    assert len(requests) == 6 and all(r["output_tokens"] == 5 and r["finish_reason"] == "length" for r in requests)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["tokens"]["output_tokens"] == 30 and summary["batching"]["engine_steps"]["source"] is None
    assert not (run_dir / "server.log").exists()  # nothing was launched


def test_an_unreachable_server_exits_2_with_one_line_and_no_results(tiny_dir: Path, tmp_path: Path) -> None:
    from lem.backends.openai.server import free_port

    run_dir = tmp_path / "run"
    result = run_lem(["backend=openai", f"backend.openai.base_url=http://127.0.0.1:{free_port()}/v1", f"model.name_or_path={tiny_dir}",
                      f"hydra.run.dir={run_dir}", "tracking.enabled=false"], cwd=tmp_path, timeout_s=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "expected a reachable OpenAI-compatible server" in result.stderr
    assert not run_dir.exists()


def test_backend_presets_are_options_of_the_backend_group(tmp_path: Path) -> None:
    result = run_lem(["backend=llamacpp_server", "--cfg", "job", "--package", "backend"], cwd=tmp_path, timeout_s=120)
    assert result.returncode == 0, result.stderr
    assert "name: openai" in result.stdout and "preset: llamacpp" in result.stdout and "launch: true" in result.stdout


# -- presets: request fields and launch commands --------------------------------------------------------


def test_each_preset_maps_lem_s_decoding_to_its_server_s_fields() -> None:
    from lem.backends.openai.presets import PRESETS

    sampled = GenerationParams(max_output_tokens=16, min_output_tokens=2, do_sample=True, temperature=0.7, top_p=0.9, top_k=0, repetition_penalty=1.1, seed=5)
    eos = frozenset({2, 7})
    vllm = PRESETS[ServerKind.vllm].fields(sampled, eos, True)
    assert vllm == {"max_tokens": 16, "temperature": 0.7, "top_p": 0.9, "min_tokens": 2, "ignore_eos": False, "repetition_penalty": 1.1,
                    "top_k": -1, "stop_token_ids": [2, 7], "return_token_ids": True}
    trtllm = PRESETS[ServerKind.trtllm].fields(sampled, eos, True)
    assert "return_token_ids" not in trtllm and trtllm["top_k"] == 0  # TensorRT-LLM refuses unknown fields; 0 is its "off"
    fixed_length = GenerationParams(max_output_tokens=16, ignore_eos=True)
    llama = PRESETS[ServerKind.llamacpp].fields(fixed_length, eos, False)
    assert llama["min_tokens"] == 16 and llama["temperature"] == 0.0 and llama["min_p"] == 0.0 and llama["typical_p"] == 1.0
    assert "stop_token_ids" not in PRESETS[ServerKind.vllm].fields(fixed_length, eos, True)  # ignore_eos: no stop ids
    assert PRESETS[ServerKind.generic].fields(sampled, eos, False) == {"max_tokens": 16, "temperature": 0.7, "top_p": 0.9, "seed": 5}


def test_launch_commands_carry_the_embedded_engines_settings(tiny_dir: Path) -> None:
    from lem.backends.openai.presets import PRESETS, Launch, cli_flags

    assert cli_flags({"a_b": True, "c": False, "d": [1, 2], "e": {"k": 1}, "f": None, "g": 3}) == [
        "--a-b", "--no-c", "--d", "1", "2", "--e", '{"k": 1}', "--g", "3"]
    cfg = openai_cfg(tiny_dir, None, preset=ServerKind.sglang, max_input_tokens=100, max_output_tokens=20)
    at = Launch("127.0.0.1", 9999, "served", str(tiny_dir), "/py")
    sglang, _ = PRESETS[ServerKind.sglang].command(EngineSpec.of(cfg), at)
    assert sglang[:3] == ["/py", "-m", "sglang.launch_server"] and "--disable-radix-cache" in sglang
    assert sglang[sglang.index("--context-length") + 1] == "120" and sglang[sglang.index("--port") + 1] == "9999"
    trtllm, _ = PRESETS[ServerKind.trtllm].command(EngineSpec.of(cfg), at)
    options = Path(trtllm[trtllm.index("--extra_llm_api_options") + 1])
    assert json.loads(options.read_text()) == {"kv_cache_config": {"enable_block_reuse": False}}
    options.unlink()
    cfg.backend.llama_cpp.n_threads = 2
    llama, _ = PRESETS[ServerKind.llamacpp].command(EngineSpec.of(cfg), at)
    assert llama[llama.index("--n_ctx") + 1] == "120" and llama[llama.index("--n_threads") + 1] == "2"
    assert llama[llama.index("--logits_all") + 1] == "False" and llama[llama.index("--interrupt_requests") + 1] == "False"


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (make vllm)")
def test_the_vllm_server_gets_the_engine_arguments_of_backend_vllm(tiny_dir: Path) -> None:
    from lem.backends.openai.presets import PRESETS, Launch
    from lem.backends.vllm.config import installed_vllm_build

    cfg = openai_cfg(tiny_dir, None, max_input_tokens=100, max_output_tokens=20)
    cfg.backend.vllm.cpu_kvcache_space_gib = 2
    command, env = PRESETS[ServerKind.vllm].command(EngineSpec.of(cfg), Launch("127.0.0.1", 9999, "served", str(tiny_dir), "/py"))
    assert command[:3] == ["/py", "-m", "vllm.entrypoints.openai.api_server"] and "--no-enable-prefix-caching" in command
    assert command[command.index("--max-model-len") + 1] == "120" and command[command.index("--seed") + 1] == "0"
    assert command[command.index("--served-model-name") + 1] == "served" and "--generation-config" in command
    assert command[command.index("--logits-processors") + 1] == "lem.backends.vllm.eos_exempt:EosExemptRepetitionPenalty"
    if installed_vllm_build() == "cpu":
        assert "--enforce-eager" in command and env["VLLM_CPU_KVCACHE_SPACE"] == "2"


def test_a_server_that_does_not_stream_fails_in_warmup_with_one_line(tiny_dir: Path, tokenizer: Any, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with FakeOpenAI(tokenizer, Behaviour(stream=False)) as fake:
        result = run_lem(["backend=openai", f"backend.openai.base_url={fake.base_url}", "backend.openai.preset=vllm", f"model.name_or_path={tiny_dir}",
                          "dataset.n_prompts=2", "batching.batch_size=2", "dataset.max_output_tokens=3", "energy.idle_baseline_s=0", f"hydra.run.dir={run_dir}",
                          "tracking.enabled=false"],
                         cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "did not stream (Content-Type: application/json): lem needs stream=true answered as server-sent events" in result.stderr
    raw = run_dir / "raw" / "process-0.jsonl"
    phases = [json.loads(line)["name"] for line in raw.read_text().splitlines() if json.loads(line)["kind"] == "phase"] if raw.exists() else []
    assert "generation" not in phases  # found in warmup, before anything was measured
