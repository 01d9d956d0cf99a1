"""backend=vllm: config → engine arguments, sampling mapping, output parsing, token counting, timing.

Most tests run the adapter against tests/backends/standins/vllm, a stand-in for vLLM 0.33.0 built from
that release's source (LLM / EngineArgs / LLMEngine.add_request + step / SamplingParams /
RequestOutput with DELTA outputs and RequestStateStats); the tests marked ``gpu`` run the real
engine through ``python -m lem`` and skip where vLLM or a CUDA GPU is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lem.backends.base import EngineSpec
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
    serve_records,
)
from tests.tiny_model import EOS_ID, make_tiny_model_dir

REAL_VLLM = importlib.util.find_spec("vllm") is not None  # looked up before any stand-in is on sys.path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def vllm(monkeypatch: pytest.MonkeyPatch):
    module = engine_standins.install(monkeypatch, "vllm")
    module.CONSTRUCTED.clear()
    module.ADDED.clear()
    yield module
    engine_standins.uninstall("vllm")


def make_cfg(model_dir: Path, **vllm_overrides) -> LemConfig:
    return engine_cfg(model_dir, BackendName.vllm, **vllm_overrides)


def natural_length(input_ids) -> int:
    """How many tokens the stand-in's fake model generates before (and including) its EOS."""
    return 2 + sum(input_ids) % 5


# -- config → engine arguments (no engine needed) -------------------------------------------------


def test_engine_args_map_config_and_sharding(tiny_dir: Path) -> None:
    from lem.backends.vllm.engine import vllm_engine_args

    cfg = make_cfg(
        tiny_dir,
        gpu_memory_utilization=0.55,
        max_num_seqs=32,
        max_num_batched_tokens=4096,
        enable_prefix_caching=True,
        enforce_eager=True,
        kv_cache_dtype="fp8",
        quantization="fp8",
        speculative_config={"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4},
        engine_args={"stream_interval": 2},
    )
    cfg.precision.dtype = DType.bfloat16
    cfg.sharding.strategy = ShardingStrategy.tensor_parallel
    cfg.sharding.num_shards = 2
    cfg.run.seed = 7
    args = vllm_engine_args(EngineSpec.of(cfg), str(tiny_dir))
    assert args == {
        "model": str(tiny_dir),
        "trust_remote_code": False,
        "dtype": "bfloat16",
        "seed": 7,
        "max_model_len": 64 + 16,  # prompt budget + output budget, within the model's 256 positions
        "gpu_memory_utilization": 0.55,
        "enforce_eager": True,
        "kv_cache_dtype": "fp8",
        "tensor_parallel_size": 2,
        "pipeline_parallel_size": 1,
        "disable_log_stats": False,
        "max_num_seqs": 32,
        "max_num_batched_tokens": 4096,
        "enable_prefix_caching": True,
        "quantization": "fp8",
        "speculative_config": {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4},
        "stream_interval": 2,
    }


def test_pipeline_sharding_and_an_explicit_tp_by_pp_split(tiny_dir: Path) -> None:
    from lem.backends.vllm.engine import vllm_engine_args

    cfg = make_cfg(tiny_dir)
    cfg.sharding.strategy = ShardingStrategy.pipeline_parallel
    cfg.sharding.num_shards = 4
    args = vllm_engine_args(EngineSpec.of(cfg), str(tiny_dir))
    assert (args["tensor_parallel_size"], args["pipeline_parallel_size"]) == (1, 4)
    cfg.backend.vllm.tensor_parallel_size, cfg.backend.vllm.pipeline_parallel_size = 2, 2
    args = vllm_engine_args(EngineSpec.of(cfg), str(tiny_dir))
    assert (args["tensor_parallel_size"], args["pipeline_parallel_size"]) == (2, 2)


def test_max_model_len_is_capped_at_the_models_context(tiny_dir: Path) -> None:
    from lem.backends.vllm.engine import vllm_engine_args

    cfg = make_cfg(tiny_dir)
    cfg.dataset.max_input_tokens, cfg.dataset.max_output_tokens = 512, 64  # 576 > the tiny model's 256
    assert vllm_engine_args(EngineSpec.of(cfg), str(tiny_dir))["max_model_len"] == 256
    cfg.backend.vllm.max_model_len = 200  # an explicit value is the user's
    assert vllm_engine_args(EngineSpec.of(cfg), str(tiny_dir))["max_model_len"] == 200


def test_sampling_kwargs_greedy_and_sampled() -> None:
    from lem.backends.vllm.engine import vllm_sampling_kwargs

    eos = frozenset({4, 9})
    greedy = vllm_sampling_kwargs(GenerationParams(max_output_tokens=20, min_output_tokens=3, repetition_penalty=1.1), eos)
    assert greedy == {
        "n": 1,
        "max_tokens": 20,
        "min_tokens": 3,
        "ignore_eos": False,
        "repetition_penalty": 1.1,
        "detokenize": False,
        "temperature": 0.0,
        "stop_token_ids": [4, 9],
    }
    sampled = vllm_sampling_kwargs(
        GenerationParams(max_output_tokens=20, ignore_eos=True, do_sample=True, temperature=0.8, top_p=0.95, top_k=0, seed=3), eos
    )
    assert sampled["temperature"] == 0.8 and sampled["top_p"] == 0.95 and sampled["top_k"] == 0
    assert sampled["ignore_eos"] is True and "stop_token_ids" not in sampled
    assert "seed" not in sampled  # per-request seeds take vLLM's slow sampling path; the engine seed applies


# -- the adapter on the stand-in engine ---------------------------------------------------------------


def test_engine_is_built_with_the_mapped_args_and_described(vllm, tiny_dir: Path) -> None:
    cfg = make_cfg(tiny_dir, gpu_memory_utilization=0.6, max_num_seqs=4, engine_args={"stream_interval": 1})
    backend = loaded_backend(cfg)
    built = vllm.CONSTRUCTED[-1]
    assert built.model == str(tiny_dir) and built.gpu_memory_utilization == 0.6 and built.max_num_seqs == 4
    assert built.max_model_len == 80 and built.disable_log_stats is False and built.dtype == "auto"
    d = backend.describe()
    assert (d.engine, d.engine_version, d.device_type) == ("vllm", "vllm 0.33.0", "cuda")
    assert d.dtype == "bfloat16"  # what vLLM's "auto" made of the float32 checkpoint, read back from the engine
    assert d.extra["engine_args"]["max_num_seqs"] == 4 and d.extra["model_path"] == str(tiny_dir)
    json.dumps(d.extra)  # goes into the run header as is
    assert backend.eos_token_ids == frozenset({EOS_ID})
    backend.unload()
    assert built is vllm.CONSTRUCTED[-1]


def test_unknown_passthrough_argument_is_refused_at_engine_init(vllm, tiny_dir: Path) -> None:
    from lem.backends.registry import create_engine

    backend = create_engine(make_cfg(tiny_dir, engine_args={"max_num_seq": 8}))
    with pytest.raises(ConfigError, match=r"backend\.vllm\.engine_args\.max_num_seq=8: expected a vllm\.EngineArgs field"):
        backend.init_engine()


def test_engine_refusal_is_one_lem_error(vllm, tiny_dir: Path) -> None:
    with pytest.raises(LemError, match=r"backend=vllm: vLLM refused to start the engine: User-specified max_model_len \(300\)"):
        loaded_backend(make_cfg(tiny_dir, max_model_len=300))


def test_a_daemonic_process_is_refused_before_vllm_fails_in_it(vllm, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing

    monkeypatch.setattr(multiprocessing.current_process(), "daemon", True, raising=False)
    with pytest.raises(LemError, match=r"backend=vllm: this process is a daemonic worker.*run.isolation=inline"):
        loaded_backend(make_cfg(tiny_dir))
    assert vllm.CONSTRUCTED == []


def test_offline_records_count_tokens_and_time_from_arrival(vllm, tiny_dir: Path) -> None:
    cfg = make_cfg(tiny_dir)
    backend = loaded_backend(cfg)
    requests = prepared(backend, cfg)
    records, clock = serve_records(backend, cfg, requests, [0.0] * len(requests))
    assert sorted(r.request_id for r in records) == list(range(len(requests)))
    by_id = {r.request_id: r for r in records}
    for request in requests:
        r = by_id[request.request_id]
        sent = vllm.ADDED[f"lem-{request.request_id}"]
        assert sent["prompt_token_ids"] == list(request.input_ids) and sent["rendered"]  # token ids, never text
        assert r.input_tokens == request.input_tokens and r.padded_input_tokens is None
        assert r.batch_id is None and r.batch_size is None
        assert r.output_tokens == natural_length(request.input_ids) and r.finish_reason == "stop"
        assert len(r.token_times_s) == r.output_tokens and r.token_times_s == sorted(r.token_times_s)
        # TTFT is a duration from arrival: at least one engine step, never an absolute timestamp.
        assert r.first_token_s - r.arrival_s >= vllm.STEP_S * 0.9
        assert r.first_token_s - r.arrival_s < 5.0
        assert r.arrival_s <= r.start_s <= r.first_token_s <= r.end_s
    arrivals = {r.arrival_s for r in records}
    assert len(arrivals) == 1  # offline: every request arrived at the same instant
    sampling = vllm.ADDED["lem-0"]["params"]
    assert sampling.output_kind is vllm.sampling_params.RequestOutputKind.DELTA and sampling.detokenize is False
    assert sampling.temperature == 0.0 and EOS_ID in sampling.stop_token_ids


def test_fixed_length_with_ignore_eos(vllm, tiny_dir: Path) -> None:
    cfg = make_cfg(tiny_dir)
    cfg.dataset.ignore_eos = True
    backend = loaded_backend(cfg)
    records, _ = serve_records(backend, cfg, prepared(backend, cfg), [0.0] * len(PROMPTS))
    assert [r.output_tokens for r in records] == [16] * len(PROMPTS)
    assert {r.finish_reason for r in records} == {"length"}
    assert all(len(r.token_times_s) == 16 for r in records)


def test_min_output_tokens_hold_back_eos(vllm, tiny_dir: Path) -> None:
    cfg = make_cfg(tiny_dir)
    cfg.dataset.min_output_tokens = 9
    backend = loaded_backend(cfg)
    requests = prepared(backend, cfg)
    records, _ = serve_records(backend, cfg, requests, [0.0] * len(requests))
    assert all(r.output_tokens >= 9 for r in records)
    assert all(r.output_tokens < 16 and r.finish_reason == "stop" for r in records)  # the EOS came after min_tokens
    assert vllm.ADDED["lem-0"]["params"].min_tokens == 9


def test_sampled_decoding_reaches_the_engine(vllm, tiny_dir: Path) -> None:
    cfg = make_cfg(tiny_dir)
    cfg.decoder.do_sample, cfg.decoder.temperature, cfg.decoder.top_p, cfg.decoder.top_k = True, 0.7, 0.9, 40
    cfg.decoder.repetition_penalty = 1.2
    backend = loaded_backend(cfg)
    serve_records(backend, cfg, prepared(backend, cfg, PROMPTS[:1]), [0.0])
    sent = vllm.ADDED["lem-0"]["params"]
    assert (sent.temperature, sent.top_p, sent.top_k, sent.repetition_penalty, sent.seed) == (0.7, 0.9, 40, 1.2, None)


def test_poisson_arrivals_are_honoured(vllm, tiny_dir: Path) -> None:
    cfg = make_cfg(tiny_dir)
    cfg.traffic.arrival, cfg.traffic.target_qps, cfg.traffic.seed = ArrivalProcess.poisson, 40.0, 3
    backend = loaded_backend(cfg)
    requests = prepared(backend, cfg)
    offsets_s = arrival_offsets_s(len(requests), cfg.traffic)
    assert offsets_s[-1] > 0.05 and len(set(offsets_s)) == len(offsets_s)
    records, clock = serve_records(backend, cfg, requests, offsets_s)
    by_id = {r.request_id: r for r in records}
    serve_start = min(r.arrival_s for r in records)
    for request, offset in zip(requests, offsets_s):
        r = by_id[request.request_id]
        added_s = clock.rel(vllm.ADDED[f"lem-{request.request_id}"]["time"])
        assert r.arrival_s == pytest.approx(serve_start + offset, abs=1e-9)  # the open-loop arrival, not the hand-over
        assert added_s >= r.arrival_s  # never handed to the engine before it arrived
        assert added_s - r.arrival_s < 0.5  # ... and handed over soon after (between engine steps)
        assert r.first_token_s > added_s
    # Requests finished in arrival order here: arrivals were spread out, not all sent at t=0.
    assert [r.request_id for r in records] == [rq.request_id for _, rq in sorted(zip(offsets_s, requests), key=lambda x: x[0])]


def test_engine_queueing_shows_in_start_and_ttft(vllm, tiny_dir: Path) -> None:
    cfg = make_cfg(tiny_dir, max_num_seqs=2)
    cfg.dataset.ignore_eos = True
    cfg.dataset.max_output_tokens = 6
    backend = loaded_backend(cfg)
    records, _ = serve_records(backend, cfg, prepared(backend, cfg), [0.0] * len(PROMPTS))
    waits = sorted(r.start_s - r.arrival_s for r in records)  # start: the engine's scheduled_ts
    ttfts = sorted(r.first_token_s - r.arrival_s for r in records)
    # Two run at once: the last pair waits for two full requests (2 x 6 steps) before it is scheduled.
    assert waits[-1] >= waits[0] + 10 * vllm.STEP_S
    assert ttfts[-1] >= ttfts[0] + 10 * vllm.STEP_S


def test_multi_token_deltas_share_one_arrival_time(vllm, tiny_dir: Path) -> None:
    cfg = make_cfg(tiny_dir, engine_args={"stream_interval": 4})
    cfg.dataset.ignore_eos = True
    backend = loaded_backend(cfg)
    records, _ = serve_records(backend, cfg, prepared(backend, cfg, PROMPTS[:2]), [0.0, 0.0])
    for r in records:
        assert r.output_tokens == 16 and len(r.token_times_s) == 16
        # First token alone, then chunks of four tokens that reached lem together.
        assert len(set(r.token_times_s)) == 1 + 4  # 1 + 4 + 4 + 4 + 3
        assert r.token_times_s[1] == r.token_times_s[4] < r.token_times_s[5]


def test_warmup_generate_returns_in_input_order(vllm, tiny_dir: Path) -> None:
    cfg = make_cfg(tiny_dir)
    backend = loaded_backend(cfg)
    requests = prepared(backend, cfg)
    raws = backend.generate(requests[::-1], generation_params(cfg))
    assert [r.request_id for r in raws] == [r.request_id for r in requests[::-1]]
    assert all(len(r.token_times) == len(r.output_token_ids) > 0 for r in raws)


def test_request_too_long_for_the_loaded_engine_is_refused(vllm, tiny_dir: Path) -> None:
    cfg = make_cfg(tiny_dir, max_model_len=40)
    backend = loaded_backend(cfg)
    requests = prepared(backend, cfg)
    long_request = max(requests, key=lambda r: r.input_tokens)
    params = GenerationParams(max_output_tokens=40 - long_request.input_tokens + 1)
    with pytest.raises(LemError, match=r"but the engine holds max_model_len=40"):
        list(backend.serve([long_request], [time.perf_counter()], params))
    assert vllm.ADDED == {}  # refused before anything reached the engine


def test_a_consumer_that_stops_early_leaves_nothing_running(vllm, tiny_dir: Path) -> None:
    cfg = make_cfg(tiny_dir)
    cfg.dataset.ignore_eos = True
    backend = loaded_backend(cfg)
    stream = backend.serve(prepared(backend, cfg), [time.perf_counter()] * len(PROMPTS), generation_params(cfg))
    next(stream)
    stream.close()
    assert not backend._llm.llm_engine.has_unfinished_requests()


def test_full_measured_run_on_the_stand_in(vllm, tiny_dir: Path, tmp_path: Path) -> None:

    from lem.pipeline import run_measurement

    cfg = make_cfg(tiny_dir)
    cfg.dataset.n_prompts = 5
    cfg.energy.enabled = False
    cfg.flops.strategy = FlopsStrategy.analytical  # calflops would load the model in torch: slow and beside the point
    cfg.traffic.arrival, cfg.traffic.target_qps = ArrivalProcess.constant, 50.0
    run_dir = tmp_path / "run"
    run_measurement(cfg, run_dir)
    lines = [json.loads(line) for line in (run_dir / "raw" / "process-0.jsonl").read_text().splitlines()]
    header = lines[0]
    assert (header["engine"], header["engine_version"]) == ("vllm", "vllm 0.33.0")
    assert header["engine_settings"]["engine_args"]["max_model_len"] == 80
    phases = [line["name"] for line in lines if line["kind"] == "phase"]
    assert phases[:3] == ["engine_init", "model_load", "warmup"] and "generation" in phases
    requests = [line for line in lines if line["kind"] == "request"]
    assert sorted(r["request_id"] for r in requests) == list(range(5))
    gaps = sorted(r["arrival_s"] for r in requests)
    assert all(b - a == pytest.approx(0.02, abs=1e-6) for a, b in zip(gaps, gaps[1:]))  # constant 50 req/s
    for r in requests:
        assert r["output_tokens"] == len(r["token_times_s"]) >= 1 and r["batch_id"] is None
        assert r["first_token_s"] > r["arrival_s"]
    assert (run_dir / "summary.json").is_file()


# -- validation (config problems before anything loads) --------------------------------------------


def _validate_with(monkeypatch: pytest.MonkeyPatch, cfg: LemConfig, *, has_package: bool, gpus: int) -> None:
    import torch

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" and has_package else real_find_spec(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    validate(cfg)


@pytest.mark.parametrize(
    ("setup", "gpus", "message"),
    [
        (lambda c: None, 0, "backend.name=vllm: expected a machine with a CUDA GPU visible to torch (none found)"),
        (lambda c: (setattr(c.sharding, "strategy", ShardingStrategy.tensor_parallel), setattr(c.sharding, "num_shards", 2)), 1,
         "sharding.num_shards=2: expected at most 1, the number of CUDA GPUs visible here"),
        (lambda c: (setattr(c.decoder, "do_sample", True), setattr(c.decoder, "temperature", 3.0)), 1,
         "decoder.temperature=3.0: expected a number in (0.0, 2.0] with backend=vllm"),
        (lambda c: setattr(c.backend.vllm, "engine_args", {"dtype": "half"}), 1,
         "backend.vllm.engine_args.dtype=half: expected no value here: lem sets it from precision.dtype"),
        (lambda c: setattr(c.backend.vllm, "max_model_len", 100), 1,
         "backend.vllm.max_model_len=100: expected at least dataset.max_input_tokens + dataset.max_output_tokens (576)"),
        (lambda c: (setattr(c.sharding, "strategy", ShardingStrategy.data_parallel), setattr(c.sharding, "num_processes", 2)), 2,
         "sharding.strategy=data_parallel: expected none, tensor_parallel or pipeline_parallel with backend=vllm"),
    ],
)
def test_validation_refusals(monkeypatch: pytest.MonkeyPatch, setup, gpus: int, message: str) -> None:
    cfg = LemConfig()
    cfg.backend.name = BackendName.vllm
    setup(cfg)
    with pytest.raises(ConfigError) as info:
        _validate_with(monkeypatch, cfg, has_package=True, gpus=gpus)
    assert message in str(info.value)


def test_validation_passes_with_package_and_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = LemConfig()
    cfg.backend.name = BackendName.vllm
    cfg.sharding.strategy, cfg.sharding.num_shards = ShardingStrategy.tensor_parallel, 2
    _validate_with(monkeypatch, cfg, has_package=True, gpus=2)


# -- the real engine ------------------------------------------------------------------------------

requires_real_vllm = pytest.mark.skipif(not REAL_VLLM, reason="needs the vllm package (pip install -e '.[vllm]')")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _has_cuda(), reason="needs a CUDA GPU")
@requires_real_vllm
@pytest.mark.parametrize("traffic", [["traffic=offline"], ["traffic=poisson", "traffic.target_qps=8"]])
def test_real_vllm_end_to_end(tmp_path: Path, traffic: list[str]) -> None:
    run_dir = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [
            sys.executable, "-m", "lem", "backend=vllm", f"hydra.run.dir={run_dir}", "tracking.enabled=false",
            "dataset.n_prompts=12", "dataset.max_output_tokens=24", "dataset.ignore_eos=true",
            "energy.idle_baseline_s=0.5", "backend.vllm.gpu_memory_utilization=0.5",
            *traffic,
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    lines = [json.loads(line) for line in (run_dir / "raw" / "process-0.jsonl").read_text().splitlines()]
    header = lines[0]
    assert header["engine"] == "vllm" and header["engine_version"].startswith("vllm ")
    assert header["device_type"] == "cuda" and header["device_names"]
    requests = [line for line in lines if line["kind"] == "request"]
    assert len(requests) == 12
    for r in requests:
        assert r["output_tokens"] == 24 == len(r["token_times_s"])  # ignore_eos: fixed length
        assert 0 < r["first_token_s"] - r["arrival_s"] < 60
