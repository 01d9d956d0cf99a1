"""backend=tensorrt: config → LLM arguments, sampling mapping, streamed output parsing, token counting, timing.

Most tests run the adapter against tests/backends/standins/tensorrt_llm, a stand-in for TensorRT-LLM 1.x
(1.0 to 1.2) built from its sources: ``LLM`` (PyTorch runtime) and ``_tensorrt_engine.LLM``
with their argument checks, ``generate_async(..., streaming=True)`` results iterated with
``async for`` (``outputs[0].token_ids_diff``), ``SamplingParams``, ``KvCacheConfig``,
``BuildConfig``, ``QuantConfig``/``QuantAlgo``. The tests marked ``gpu`` run the real engine
through ``python -m lem`` and skip where tensorrt_llm or a CUDA GPU is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lem.backends.base import EngineSpec
from lem.backends.tensorrt.config import TensorRTRuntime
from lem.config.checks import validate
from lem.config.schema import BackendName, LemConfig
from lem.config.types import ArrivalProcess, DType, FlopsStrategy, ShardingStrategy
from lem.errors import ConfigError, LemError
from lem.workload.serve import generation_params
from lem.workload.traffic import arrival_offsets_s
from lem.workload.types import GenerationParams
from tests.backends import engine_standins
from tests.backends.engine_standins import (
    PROMPTS,
    engine_cfg,
    loaded_backend,
    prepared,
    serve_direct,
    serve_records,
)
from tests.tiny_model import EOS_ID, make_tiny_model_dir

REAL_TRTLLM = importlib.util.find_spec("tensorrt_llm") is not None  # looked up before any stand-in is on sys.path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def trtllm(monkeypatch: pytest.MonkeyPatch):
    module = engine_standins.install(monkeypatch, "tensorrt_llm")
    import tensorrt_llm.llmapi as llmapi

    llmapi.CONSTRUCTED.clear()
    llmapi.SUBMITTED.clear()
    yield llmapi
    engine_standins.uninstall("tensorrt_llm")
    assert module is not None


def make_cfg(model_dir: Path, **trt_overrides) -> LemConfig:
    return engine_cfg(model_dir, BackendName.tensorrt, **trt_overrides)


def submitted_for(llmapi, input_ids) -> dict:
    """The executor-side record of the request with these prompt ids."""
    matches = [s for s in llmapi.SUBMITTED.values() if s["prompt_token_ids"] == list(input_ids)]
    assert len(matches) == 1, "each prompt is submitted once, as token ids"
    return matches[0]


def natural_length(input_ids) -> int:
    """How many tokens the stand-in's fake model generates before (and including) its end_id."""
    return 2 + sum(input_ids) % 5


# -- config → LLM arguments ------------------------------------------------------------------------


def test_pytorch_runtime_arguments(trtllm, tiny_dir: Path) -> None:
    from lem.backends.tensorrt.engine import tensorrt_llm_args

    cfg = make_cfg(
        tiny_dir,
        max_batch_size=64,
        max_num_tokens=4096,
        kv_cache_free_gpu_memory_fraction=0.7,
        llm_args={"kv_cache_config": {"dtype": "fp8", "enable_block_reuse": False}, "stream_interval": 2},
    )
    cfg.precision.dtype = DType.float16
    cfg.sharding.strategy, cfg.sharding.num_shards = ShardingStrategy.tensor_parallel, 2
    args = tensorrt_llm_args(EngineSpec.of(cfg), str(tiny_dir), trtllm)
    kv = args.pop("kv_cache_config")
    assert (kv.free_gpu_memory_fraction, kv.dtype, kv.enable_block_reuse) == (0.7, "fp8", False)
    assert args == {
        "model": str(tiny_dir),
        "dtype": "float16",
        "trust_remote_code": False,
        "tensor_parallel_size": 2,
        "pipeline_parallel_size": 1,
        "max_batch_size": 64,
        "max_seq_len": 64 + 16,
        "max_num_tokens": 4096,
        "stream_interval": 2,
    }  # max_input_len only when set: the PyTorch runtime checks prompts against max_num_tokens


def test_trt_engine_runtime_builds_with_build_and_quant_config(trtllm, tiny_dir: Path) -> None:
    cfg = make_cfg(tiny_dir, runtime=TensorRTRuntime.trt_engine, quantization="w4a16_awq", max_batch_size=32)
    cfg.sharding.strategy, cfg.sharding.num_shards = ShardingStrategy.pipeline_parallel, 2
    backend = loaded_backend(cfg)
    built = trtllm.CONSTRUCTED[-1]
    assert built["class"] == "tensorrt_llm.llmapi._TrtLLM"  # tensorrt_llm._tensorrt_engine.LLM
    build = built["build_config"]
    assert (build.max_batch_size, build.max_input_len, build.max_seq_len, build.max_num_tokens) == (32, 64, 80, 8192)
    assert built["quant_config"].quant_algo is trtllm.QuantAlgo.W4A16_AWQ
    assert (built["tensor_parallel_size"], built["pipeline_parallel_size"]) == (1, 2)
    d = backend.describe()
    assert (d.engine, d.engine_version) == ("tensorrt", "tensorrt_llm 1.2.1")
    assert d.extra["runtime"] == "trt_engine" and d.extra["llm_args"]["quant_config"]["quant_algo"] == "W4A16_AWQ"
    json.dumps(d.extra)  # goes into the run header as is
    backend.unload()


def test_unknown_quant_algo_is_refused_with_the_names(trtllm, tiny_dir: Path) -> None:
    cfg = make_cfg(tiny_dir, runtime=TensorRTRuntime.trt_engine, quantization="fp7")
    with pytest.raises(ConfigError, match=r"backend\.tensorrt\.quantization=fp7: expected a QuantAlgo name: .*W4A16_AWQ.*FP8"):
        loaded_backend(cfg)


def test_engine_refusal_is_one_lem_error(trtllm, tiny_dir: Path) -> None:
    with pytest.raises(LemError, match=r"backend=tensorrt: TensorRT-LLM refused to start the engine: LLM got invalid argument: no_such_knob"):
        loaded_backend(make_cfg(tiny_dir, llm_args={"no_such_knob": 1}))


def test_sampling_kwargs_greedy_and_sampled() -> None:
    from lem.backends.tensorrt.engine import tensorrt_sampling_kwargs

    greedy = tensorrt_sampling_kwargs(GenerationParams(max_output_tokens=20, min_output_tokens=3, repetition_penalty=1.1), frozenset({4, 9}), 4)
    assert greedy == {
        "n": 1,
        "max_tokens": 20,
        "ignore_eos": False,
        "repetition_penalty": 1.1,
        "detokenize": False,
        "end_id": 4,
        "min_tokens": 3,
        "temperature": 0.0,
        "stop_token_ids": [9],
    }
    sampled = tensorrt_sampling_kwargs(
        GenerationParams(max_output_tokens=20, ignore_eos=True, do_sample=True, temperature=0.8, top_p=0.95, top_k=0, seed=5), frozenset({4}), 4
    )
    assert (sampled["temperature"], sampled["top_p"], sampled["top_k"], sampled["seed"]) == (0.8, 0.95, 0, 5)
    assert sampled["ignore_eos"] is True and "stop_token_ids" not in sampled and "min_tokens" not in sampled


# -- the adapter on the stand-in engine ---------------------------------------------------------------


def test_offline_records_count_tokens_and_time_from_arrival(trtllm, tiny_dir: Path) -> None:
    cfg = make_cfg(tiny_dir)
    backend = loaded_backend(cfg)
    requests = prepared(backend, cfg)
    records, _ = serve_records(backend, cfg, requests, [0.0] * len(requests))
    by_id = {r.request_id: r for r in records}
    assert sorted(by_id) == list(range(len(requests)))
    for request in requests:
        r = by_id[request.request_id]
        sent = submitted_for(trtllm, request.input_ids)  # token ids, never text
        assert sent["params"].end_id == EOS_ID and sent["params"].temperature == 0.0 and sent["params"].detokenize is False
        assert r.output_tokens == natural_length(request.input_ids) and r.finish_reason == "stop"
        assert len(r.token_times_s) == r.output_tokens and r.token_times_s == sorted(r.token_times_s)
        assert r.first_token_s - r.arrival_s >= trtllm.STEP_S * 0.9  # a duration from arrival
        assert r.first_token_s - r.arrival_s < 5.0
        assert r.arrival_s <= r.start_s <= r.first_token_s <= r.end_s
        assert r.batch_id is None and r.padded_input_tokens is None


def test_fixed_length_with_ignore_eos(trtllm, tiny_dir: Path) -> None:
    cfg = make_cfg(tiny_dir)
    cfg.dataset.ignore_eos = True
    backend = loaded_backend(cfg)
    records, _ = serve_records(backend, cfg, prepared(backend, cfg), [0.0] * len(PROMPTS))
    assert [r.output_tokens for r in records] == [16] * len(PROMPTS)
    assert {r.finish_reason for r in records} == {"length"}


def test_min_output_tokens_hold_back_eos(trtllm, tiny_dir: Path) -> None:
    cfg = make_cfg(tiny_dir)
    cfg.dataset.min_output_tokens = 9
    backend = loaded_backend(cfg)
    records, _ = serve_records(backend, cfg, prepared(backend, cfg), [0.0] * len(PROMPTS))
    assert all(9 <= r.output_tokens < 16 and r.finish_reason == "stop" for r in records)


def test_poisson_arrivals_are_honoured(trtllm, tiny_dir: Path) -> None:
    cfg = make_cfg(tiny_dir)
    cfg.traffic.arrival, cfg.traffic.target_qps, cfg.traffic.seed = ArrivalProcess.poisson, 40.0, 3
    backend = loaded_backend(cfg)
    requests = prepared(backend, cfg)
    offsets_s = arrival_offsets_s(len(requests), cfg.traffic)
    records, clock = serve_records(backend, cfg, requests, offsets_s)
    by_id = {r.request_id: r for r in records}
    serve_start = min(r.arrival_s for r in records)
    for request, offset in zip(requests, offsets_s):
        r = by_id[request.request_id]
        submitted_s = clock.rel(submitted_for(trtllm, request.input_ids)["time"])
        assert r.arrival_s == pytest.approx(serve_start + offset, abs=1e-9)
        assert submitted_s >= r.arrival_s  # never submitted before it arrived
        assert submitted_s - r.arrival_s < 0.5  # ... and submitted soon after (an asyncio timer)
        assert r.first_token_s > submitted_s


def test_engine_queueing_shows_in_ttft(trtllm, tiny_dir: Path) -> None:
    cfg = make_cfg(tiny_dir, max_batch_size=2)
    cfg.dataset.ignore_eos = True
    cfg.dataset.max_output_tokens = 6
    backend = loaded_backend(cfg)
    records, _ = serve_records(backend, cfg, prepared(backend, cfg), [0.0] * len(PROMPTS))
    ttfts = sorted(r.first_token_s - r.arrival_s for r in records)
    assert ttfts[-1] >= ttfts[0] + 10 * trtllm.STEP_S  # the last pair waited for two full requests


def test_engine_error_reaches_the_caller_instead_of_hanging(trtllm, tiny_dir: Path) -> None:
    cfg = make_cfg(tiny_dir, max_num_tokens=8)
    backend = loaded_backend(cfg)
    requests = [r for r in prepared(backend, cfg) if r.input_tokens > 8]
    assert requests
    with pytest.raises(ValueError, match=r"should not exceed max_num_tokens \(8\)"):
        list(serve_direct(backend, requests, [time.perf_counter()] * len(requests), generation_params(cfg)))
    assert not any(t.name == "lem-tensorrt-serve" for t in threading.enumerate())


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")  # no response may hit a closed loop
def test_a_consumer_that_stops_early_aborts_the_rest(trtllm, tiny_dir: Path) -> None:
    cfg = make_cfg(tiny_dir)
    cfg.dataset.ignore_eos = True
    cfg.dataset.max_output_tokens = 200
    cfg.dataset.max_input_tokens = 40
    backend = loaded_backend(cfg)
    requests = prepared(backend, cfg)
    stream = serve_direct(backend, requests[:1] + requests[1:], [time.perf_counter()] + [time.perf_counter() + 0.01] * 5, GenerationParams(max_output_tokens=3))
    next(stream)
    stream.close()
    assert not any(t.name == "lem-tensorrt-serve" for t in threading.enumerate())
    executor = backend._llm._executor
    time.sleep(5 * trtllm.STEP_S)
    assert executor._active == [] and executor._waiting == []


def test_request_too_long_for_the_loaded_engine_is_refused(trtllm, tiny_dir: Path) -> None:
    cfg = make_cfg(tiny_dir, max_seq_len=40)
    backend = loaded_backend(cfg)
    longest = max(prepared(backend, cfg), key=lambda r: r.input_tokens)
    with pytest.raises(LemError, match=r"but the engine holds max_seq_len=40"):
        list(serve_direct(backend, [longest], [time.perf_counter()], GenerationParams(max_output_tokens=41 - longest.input_tokens)))
    assert trtllm.SUBMITTED == {}


def test_full_measured_run_on_the_stand_in(trtllm, tiny_dir: Path, tmp_path: Path) -> None:

    from lem.pipeline import run_measurement

    cfg = make_cfg(tiny_dir)
    cfg.dataset.n_prompts = 5
    cfg.dataset.ignore_eos = True
    cfg.energy.enabled = False
    cfg.flops.strategy = FlopsStrategy.analytical
    cfg.traffic.arrival, cfg.traffic.target_qps = ArrivalProcess.poisson, 30.0
    run_dir = tmp_path / "run"
    run_measurement(cfg, run_dir)
    lines = [json.loads(line) for line in (run_dir / "raw" / "process-0.jsonl").read_text().splitlines()]
    header = lines[0]
    assert (header["engine"], header["engine_version"]) == ("tensorrt", "tensorrt_llm 1.2.1")
    assert header["engine_settings"]["runtime"] == "pytorch"
    requests = [line for line in lines if line["kind"] == "request"]
    assert sorted(r["request_id"] for r in requests) == list(range(5))
    assert all(r["output_tokens"] == 16 == len(r["token_times_s"]) for r in requests)
    assert (run_dir / "summary.json").is_file()


# -- validation (config problems before anything loads) --------------------------------------------


def _validate_with(monkeypatch: pytest.MonkeyPatch, cfg: LemConfig, gpus: int) -> None:
    import torch

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "tensorrt_llm" else real_find_spec(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    validate(cfg)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"quantization": "FP8"}, "backend.tensorrt.quantization=FP8: expected null with backend.tensorrt.runtime=pytorch"),
        ({"llm_args": {"build_config": {"opt_num_tokens": 64}}}, "backend.tensorrt.llm_args.build_config={'opt_num_tokens': 64}: expected nothing with backend.tensorrt.runtime=pytorch"),
        ({"runtime": TensorRTRuntime.trt_engine, "llm_args": {"build_config": {"max_seq_len": 64}}},
         "backend.tensorrt.llm_args.build_config.max_seq_len=64: expected no value here: lem sets it from backend.tensorrt.max_seq_len"),
        ({"llm_args": {"kv_cache_config": {"free_gpu_memory_fraction": 0.5}}},
         "expected no value here: lem sets it from backend.tensorrt.kv_cache_free_gpu_memory_fraction"),
        ({"llm_args": {"quant_config": "FP8"}}, "backend.tensorrt.llm_args.quant_config=FP8: expected no value here: lem sets it from backend.tensorrt.quantization"),
        ({"max_input_len": 100}, "backend.tensorrt.max_input_len=100: expected at least dataset.max_input_tokens (512)"),
        ({"max_seq_len": 512}, "backend.tensorrt.max_seq_len=512: expected at least dataset.max_input_tokens + dataset.max_output_tokens (576)"),
        ({"kv_cache_free_gpu_memory_fraction": 0.0}, "backend.tensorrt.kv_cache_free_gpu_memory_fraction=0.0: expected a number in (0.0, 1.0]"),
        ({"max_batch_size": 0}, "backend.tensorrt.max_batch_size=0: expected a number >= 1"),
    ],
)
def test_validation_refusals(monkeypatch: pytest.MonkeyPatch, overrides: dict, message: str) -> None:
    cfg = LemConfig()
    cfg.backend.name = BackendName.tensorrt
    for key, value in overrides.items():
        setattr(cfg.backend.tensorrt, key, value)
    with pytest.raises(ConfigError) as info:
        _validate_with(monkeypatch, cfg, gpus=1)
    assert message in str(info.value)


def test_validation_passes_for_a_quantised_engine_build(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = LemConfig()
    cfg.backend.name = BackendName.tensorrt
    cfg.backend.tensorrt.runtime = TensorRTRuntime.trt_engine
    cfg.backend.tensorrt.quantization = "FP8"
    _validate_with(monkeypatch, cfg, gpus=1)
    with pytest.raises(ConfigError, match="backend.name=tensorrt: expected a machine with a CUDA GPU"):
        _validate_with(monkeypatch, cfg, gpus=0)


# -- the real engine ------------------------------------------------------------------------------


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _has_cuda(), reason="needs a CUDA GPU")
@pytest.mark.skipif(not REAL_TRTLLM, reason="needs tensorrt_llm (pip install tensorrt_llm --extra-index-url https://pypi.nvidia.com)")
@pytest.mark.parametrize("traffic", [["traffic=offline"], ["traffic=poisson", "traffic.target_qps=8"]])
def test_real_tensorrt_llm_end_to_end(tmp_path: Path, traffic: list[str]) -> None:
    run_dir = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [
            sys.executable, "-m", "lem", "backend=tensorrt", f"hydra.run.dir={run_dir}", "tracking.enabled=false",
            "dataset.n_prompts=12", "dataset.max_output_tokens=24", "dataset.ignore_eos=true",
            "energy.idle_baseline_s=0.5", "backend.tensorrt.kv_cache_free_gpu_memory_fraction=0.5", *traffic,
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    lines = [json.loads(line) for line in (run_dir / "raw" / "process-0.jsonl").read_text().splitlines()]
    header = lines[0]
    assert header["engine"] == "tensorrt" and header["engine_version"].startswith("tensorrt_llm ")
    assert header["device_type"] == "cuda" and header["device_names"]
    requests = [line for line in lines if line["kind"] == "request"]
    assert len(requests) == 12
    for r in requests:
        assert r["output_tokens"] == 24 == len(r["token_times_s"])  # ignore_eos: fixed length
        assert 0 < r["first_token_s"] - r["arrival_s"] < 60
