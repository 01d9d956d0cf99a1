"""Bad input is refused before anything runs, in one line naming the key, the value and what is allowed.

The whole table runs in-process through Hydra's compose API and lem's validation
(``lem.config.compose.compose_config``, the path ``python -m lem`` takes); tests/test_cli.py keeps
a handful of cases as real commands for the exit code, the single stderr line and the absent
results folder.
"""

from __future__ import annotations

import pytest

from lem.config.compose import compose_config
from lem.errors import LemError

# (overrides, the text the one-line error must contain)
BAD_CONFIGS: list[tuple[list[str], str]] = [
    (["batching=foo"], "batching=foo: expected one of auto, continuous, dynamic, sorted_dynamic, sorted_static, static"),
    (["backend=tensorflow"], "backend=tensorflow: expected one of llama_cpp, llamacpp_server, openai, pytorch, sglang_server, tensorrt, trtllm_server, vllm, vllm_server"),
    (["batching.foo=1"], "batching.foo=1: unknown key; batching has: strategy, batch_size"),
    (["+batching.foo=1"], "batching.foo=1: unknown key"),
    (["foo=bar"], "foo=bar: unknown key"),
    (["batching.batch_size=abc"], "batching.batch_size=abc: expected an integer"),
    (["batching.batch_size=0"], "batching.batch_size=0: expected a number >= 1"),
    (["batching.batch_size=-3"], "batching.batch_size=-3: expected a number >= 1"),
    (["batching.strategy=weird"], "batching.strategy=weird: expected one of auto, continuous, static, sorted_static, dynamic, sorted_dynamic"),
    (["batching=dynamic", "batching.max_tokens_per_batch=10"], "batching.max_tokens_per_batch=10: expected room for at least one request"),
    (["batching.max_tokens_per_batch=4096"], "batching.max_tokens_per_batch=4096: expected null unless batching.strategy is dynamic, sorted_dynamic or continuous"),
    (["dataset=file"], "dataset.path=null: expected a .jsonl, .json or .csv file"),
    (["dataset=file", "dataset.path=/nonexistent/prompts.jsonl"], "dataset.path=/nonexistent/prompts.jsonl: expected an existing"),
    (["dataset.source=hf"], "dataset.hf_name=null: expected a dataset name"),
    (["dataset.n_prompts=0"], "dataset.n_prompts=0: expected a number >= 1"),
    (["dataset.max_output_tokens=-1"], "dataset.max_output_tokens=-1: expected a number >= 1"),
    (["dataset.max_input_tokens=0"], "dataset.max_input_tokens=0: expected a number >= 1"),
    (["dataset.min_output_tokens=100"], "dataset.min_output_tokens=100: expected at most dataset.max_output_tokens (64)"),
    (["dataset.ignore_eos=maybe"], "dataset.ignore_eos=maybe: expected true or false"),
    (["dataset.synthetic.input_length_distribution=zipf"], "expected one of fixed, uniform, normal, lognormal"),
    (["dataset=synthetic", "dataset.synthetic.input_tokens_min=300", "dataset.synthetic.input_tokens_max=200"], "dataset.synthetic.input_tokens_max=200: expected at least"),
    (["decoder.top_p=1.5"], "decoder.top_p=1.5: expected a number in (0.0, 1.0]"),
    (["decoder=creative", "decoder.temperature=0"], "decoder.temperature=0.0: expected a number in (0.0, 100.0]"),
    (["decoder.top_k=-1"], "decoder.top_k=-1: expected a number >= 0"),
    (["decoder.repetition_penalty=0"], "decoder.repetition_penalty=0.0: expected a number in (0.0, 100.0]"),
    (["traffic.target_qps=3"], "traffic.target_qps=3.0: expected null when traffic.arrival=offline"),
    (["traffic=poisson", "traffic.target_qps=0"], "traffic.target_qps=0.0: expected a rate > 0 requests/s when traffic.arrival=poisson"),
    (["traffic=constant", "traffic.target_qps=null"], "traffic.target_qps=null: expected a rate > 0"),
    (["traffic=poisson", "traffic.burstiness=0"], "traffic.burstiness=0.0: expected a number in (0.0, 1000.0]"),
    (["traffic.arrival=bursty"], "expected one of offline, constant, poisson"),
    (["precision=int8"], "precision.quantization=int8"),
    (["precision.dtype=float64"], "precision.dtype=float64: expected one of auto, float32, float16, bfloat16"),
    (["backend.pytorch.num_threads=0"], "backend.pytorch.num_threads=0: expected a number >= 1"),
    (["sharding=data_parallel", "sharding.num_processes=1"], "sharding.num_processes=1: expected a number >= 2 replicas"),
    (["sharding=tensor_parallel", "sharding.num_shards=1"], "sharding.num_shards=1: expected a number >= 2 devices"),
    (["sharding=pipeline_parallel", "backend.device=cpu"], "sharding.strategy=pipeline_parallel: expected tensor_parallel or data_parallel on a CPU"),
    (["sharding=data_parallel", "sharding.num_processes=4", "dataset.n_prompts=2"], "dataset.n_prompts=2: expected at least one prompt per replica"),
    (["cycles=0"], "cycles=0: expected a number >= 1"),
    (["backend.pytorch.attn_implementation=magic"], "expected one of sdpa, eager, flash_attention_2"),
    (["backend.device=cpu", "backend.pytorch.attn_implementation=flash_attention_2"], "expected sdpa or eager on backend.device=cpu"),
    (["backend=llama_cpp", "backend.llama_cpp.n_threads=0"], "backend.llama_cpp.n_threads=0: expected a number >= 1"),
    (["backend=llama_cpp", "backend.llama_cpp.n_batch=0"], "backend.llama_cpp.n_batch=0: expected a number >= 1"),
    (["backend=llama_cpp", "backend.llama_cpp.n_ctx=64"], "backend.llama_cpp.n_ctx=64: expected at least dataset.max_input_tokens + dataset.max_output_tokens (576)"),
    (["backend=llama_cpp", "backend.llama_cpp.model_path=/nonexistent/m.gguf"], "backend.llama_cpp.model_path=/nonexistent/m.gguf: expected an existing .gguf file"),
    (["backend=llama_cpp", "model.name_or_path=HuggingFaceTB/SmolLM2-360M"], "backend.llama_cpp.model_path=null: expected a .gguf file of model.name_or_path=HuggingFaceTB/SmolLM2-360M"),
    (["backend=llama_cpp", "precision=int8"], "precision.quantization=int8: expected none with backend=llama_cpp: a GGUF carries its own quantisation"),
    (["backend=llama_cpp", "precision=bfloat16"], "precision.dtype=bfloat16: expected auto with backend=llama_cpp"),
    (["backend=llama_cpp", "+backend.llama_cpp.llama_args.n_ctx=4096"], "backend.llama_cpp.llama_args.n_ctx=4096: expected no value here: set backend.llama_cpp.n_ctx"),
    (["backend=llama_cpp", "backend.llama_cpp.n_gpu_layers=-2"], "backend.llama_cpp.n_gpu_layers=-2: expected a number >= -1"),
    (["backend=llama_cpp", "backend.device=cpu", "backend.llama_cpp.n_gpu_layers=-1"], "backend.llama_cpp.n_gpu_layers=-1: expected 0 on backend.device=cpu"),
    (["model=hf"], 'model.name_or_path="": expected a Hugging Face model id'),
    (["model.name_or_path=embedded:gpt5"], "model.name_or_path=embedded:gpt5: expected embedded:smollm2-135m-instruct"),
    (["model.name_or_path=./no/such/dir"], "model.name_or_path=./no/such/dir: expected an existing local model directory"),
    (["model.trust_remote_code=sometimes"], "model.trust_remote_code=sometimes: expected true or false"),
    (["run.warmup_batches=-1"], "run.warmup_batches=-1: expected a number >= 0"),
    (["backend=tensorrt"], "backend.name=tensorrt: expected the 'tensorrt_llm' package, which is not installed (pip install tensorrt_llm --extra-index-url https://pypi.nvidia.com"),
    (["backend=vllm", "backend.vllm.gpu_memory_utilization=1.5"], "backend.vllm.gpu_memory_utilization=1.5: expected a number in (0.0, 1.0]"),
    (["backend=vllm", "precision=int8"], "precision.quantization=int8: expected none with backend=vllm (bitsandbytes is a PyTorch option); use backend.vllm.quantization"),
    (["backend=vllm", "backend.vllm.max_num_seqs=4"], "backend.vllm.max_num_seqs=4: expected at least batching.batch_size (8)"),
    (["batching=continuous"], "batching.strategy=continuous: expected auto, static, sorted_static, dynamic or sorted_dynamic with backend=pytorch"),
    (["backend=vllm", "batching=continuous", "batching.max_tokens_per_batch=10"], "batching.max_tokens_per_batch=10: expected room for at least one request"),
    (["backend=vllm", "backend.vllm.cpu_kvcache_space_gib=0"], "backend.vllm.cpu_kvcache_space_gib=0: expected a number >= 1"),
    (["backend=vllm", "sharding=tensor_parallel", "sharding.num_shards=2", "backend.vllm.tensor_parallel_size=4"], "backend.vllm.tensor_parallel_size=4: expected tensor_parallel_size x pipeline_parallel_size = sharding.num_shards (2)"),
    (["backend=vllm", "+backend.vllm.engine_args.dtype=half"], "backend.vllm.engine_args.dtype=half: expected no value here: lem sets it from precision.dtype"),
    (["backend=tensorrt", "backend.tensorrt.kv_cache_free_gpu_memory_fraction=0"], "backend.tensorrt.kv_cache_free_gpu_memory_fraction=0.0: expected a number in (0.0, 1.0]"),
    (["backend=tensorrt", "backend.tensorrt.quantization=FP8"], "backend.tensorrt.quantization=FP8: expected null with backend.tensorrt.runtime=pytorch"),
    (["backend=tensorrt", "backend.tensorrt.runtime=tensorrt"], "backend.tensorrt.runtime=tensorrt: expected one of pytorch, trt_engine"),
    (["x=["], "could not compose the config"),
]

CPU_ONLY_BAD_CONFIGS: list[tuple[list[str], str]] = [
    (["precision=float16"], "precision.dtype=float16: expected float32, bfloat16 or auto on a CPU"),
    (["backend.device=cuda"], "backend.device=cuda: expected a machine with a CUDA GPU"),
    (["backend=llama_cpp", "backend.llama_cpp.n_gpu_layers=-1"], "backend.llama_cpp.n_gpu_layers=-1: expected 0 on a machine without an NVIDIA GPU"),
]


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False



def refusal(overrides: list[str]) -> str:
    """The one line ``python -m lem OVERRIDES`` prints after ``lem: error: ``."""
    with pytest.raises(LemError) as refused:
        compose_config(overrides)
    message = str(refused.value)
    assert message and "\n" not in message, f"expected one line, got:\n{message}"
    assert "Traceback" not in message
    return message


@pytest.mark.parametrize(("overrides", "expected"), BAD_CONFIGS, ids=[" ".join(o) for o, _ in BAD_CONFIGS])
def test_bad_config_is_refused_in_one_line(overrides: list[str], expected: str) -> None:
    assert expected in refusal(overrides)


@pytest.mark.skipif(_has_cuda(), reason="checks refusals that only apply without a GPU")
@pytest.mark.parametrize(("overrides", "expected"), CPU_ONLY_BAD_CONFIGS, ids=[" ".join(o) for o, _ in CPU_ONLY_BAD_CONFIGS])
def test_gpu_only_options_are_refused_on_cpu(overrides: list[str], expected: str) -> None:
    assert expected in refusal(overrides)


def test_good_config_composes_and_validates() -> None:
    composed, cfg = compose_config(["backend=llama_cpp", "batching.batch_size=1", "experiment=quick"])
    assert cfg.backend.name.value == "llama_cpp" and composed.backend.name.value == "llama_cpp"
    assert cfg.dataset.n_prompts == 16


@pytest.mark.parametrize(
    ("build", "overrides", "expected"),
    [
        (None, ["backend=vllm"], "backend.name=vllm: expected the 'vllm' package, which is not installed (make vllm installs its CPU build here"),
        ("gpu", ["backend=vllm", "backend.device=cpu"], "backend.device=cpu: expected auto or cuda: the installed vLLM is its GPU build; for CPU runs install its CPU build (make vllm)"),
        ("cpu", ["backend=vllm", "backend.vllm.pipeline_parallel_size=2", "sharding=pipeline_parallel", "sharding.num_shards=2"], "expected 1 with vLLM's CPU build"),
    ],
)
def test_vllm_is_checked_against_the_installed_build(monkeypatch: pytest.MonkeyPatch, build: str | None, overrides: list[str], expected: str) -> None:
    import lem.backends.vllm.config as vllm_config

    monkeypatch.setattr(vllm_config, "installed_vllm_build", lambda: build)
    assert expected in refusal(overrides)


def test_vllm_cpu_build_validates_on_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    import lem.backends.vllm.config as vllm_config

    monkeypatch.setattr(vllm_config, "installed_vllm_build", lambda: "cpu")
    _, cfg = compose_config(["backend=vllm", "batching=sorted_dynamic", "backend.device=cpu"])
    assert cfg.backend.name.value == "vllm" and cfg.batching.strategy.value == "sorted_dynamic"
