"""backend=vllm without an engine: config → engine arguments, sampling mapping, the CPU defaults,
and validation against the installed build (CPU or GPU). The real engine runs in
test_vllm_engine.py (the adapter) and test_vllm_runs.py (``python -m lem``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lem.backends.base import EngineSpec
from lem.config.checks import validate
from lem.config.schema import BackendName, LemConfig
from lem.config.types import DType, ShardingStrategy
from lem.errors import ConfigError
from lem.workload.types import GenerationParams
from tests.backends.engine_standins import engine_cfg
from tests.tiny_model import make_tiny_model_dir


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny"))


def make_cfg(model_dir: Path, **vllm_overrides) -> LemConfig:
    return engine_cfg(model_dir, BackendName.vllm, **vllm_overrides)


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


def test_the_eos_exempt_penalty_processor_is_always_loaded_except_with_speculative_decoding(tiny_dir: Path) -> None:
    from lem.backends.vllm.engine import vllm_engine_args

    cfg = make_cfg(tiny_dir)
    processor = "lem.backends.vllm.eos_exempt:EosExemptRepetitionPenalty"
    # Always: a reused engine may serve a later job whose decoder sets a repetition penalty.
    assert vllm_engine_args(EngineSpec.of(cfg), str(tiny_dir))["logits_processors"] == [processor]
    cfg.backend.vllm.engine_args = {"logits_processors": ["mine:Processor"]}  # the user's run after lem's
    assert vllm_engine_args(EngineSpec.of(cfg), str(tiny_dir))["logits_processors"] == [processor, "mine:Processor"]
    cfg.backend.vllm.engine_args = {}
    cfg.backend.vllm.speculative_config = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4}
    assert "logits_processors" not in vllm_engine_args(EngineSpec.of(cfg), str(tiny_dir))


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




def test_cpu_build_defaults_are_eager_float32_and_no_gpu_memory_share(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lem.backends.vllm import engine

    monkeypatch.setattr(engine, "cpu_has_amx", lambda: False)
    args = engine.vllm_engine_args(EngineSpec.of(make_cfg(tiny_dir)), str(tiny_dir), on_cpu=True)
    assert args["dtype"] == "float32"  # auto: bfloat16 without AMX is emulated, several times slower
    assert args["enforce_eager"] is True and "gpu_memory_utilization" not in args
    assert args["enable_prefix_caching"] is False  # every engine evaluates every prompt in full
    monkeypatch.setattr(engine, "cpu_has_amx", lambda: True)
    assert engine.vllm_engine_args(EngineSpec.of(make_cfg(tiny_dir)), str(tiny_dir), on_cpu=True)["dtype"] == "auto"
    gpu = engine.vllm_engine_args(EngineSpec.of(make_cfg(tiny_dir)), str(tiny_dir), on_cpu=False)
    assert gpu["dtype"] == "auto" and gpu["enforce_eager"] is False and gpu["gpu_memory_utilization"] == 0.9


def test_cpu_knobs_become_vllms_environment(tiny_dir: Path) -> None:
    from lem.backends.vllm.engine import vllm_cpu_environment

    cfg = make_cfg(tiny_dir, cpu_kvcache_space_gib=2, cpu_omp_threads_bind="0-1", cpu_reserved_cpus=0)
    assert vllm_cpu_environment(cfg.backend.vllm) == {
        "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": "0-1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    }
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in vllm_cpu_environment(make_cfg(tiny_dir).backend.vllm)


# -- validation against the installed build ------------------------------------------------------


def _validate_with(monkeypatch: pytest.MonkeyPatch, cfg: LemConfig, *, has_package: bool, gpus: int) -> None:
    import torch

    import lem.backends.vllm.config as vllm_config

    monkeypatch.setattr(vllm_config, "installed_vllm_build", lambda: "gpu" if has_package else None)  # vLLM's GPU build
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
    cfg.sharding.strategy, cfg.sharding.num_shards = ShardingStrategy.tensor_parallel, 3  # divides SmolLM2's 9 and 3 heads
    _validate_with(monkeypatch, cfg, has_package=True, gpus=3)


