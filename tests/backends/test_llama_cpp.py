"""backend=llama_cpp: the decoding map and the serving loop on a stand-in, then real runs on the embedded GGUF.

The real runs need llama-cpp-python (``pip install -e ".[llamacpp]"``, a ~9 minute compile) and
skip with that reason without it; CI sets LEM_REQUIRE_LLAMA_CPP=1 so a failed build fails them instead.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import math
import os
import shutil
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from lem.backends.base import EngineSpec
from lem.backends.llama_cpp.engine import LlamaCppBackend, llama_kwargs
from lem.backends.llama_cpp.sampler import (
    SamplerStep,
    eos_mask_until,
    request_seed,
    sampler_steps,
)
from lem.config.checks import validate
from lem.config.schema import BackendName, LemConfig
from lem.config.types import DType, Quantization, ShardingStrategy
from lem.errors import ConfigError
from lem.workload.types import GenerationParams, PreparedRequest
from tests import lem_cli
from tests.backends.engine_standins import serve_direct

REPO = Path(__file__).resolve().parents[2]
HAVE_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
MISSING = 'llama-cpp-python is not installed: pip install -e ".[llamacpp]" (compiles llama.cpp, ~9 minutes on 2 cores)'
if not HAVE_LLAMA_CPP and os.environ.get("LEM_REQUIRE_LLAMA_CPP") == "1":
    raise RuntimeError(f"LEM_REQUIRE_LLAMA_CPP=1 but {MISSING}")  # CI: a failed build must not turn into skips
needs_llama_cpp = pytest.mark.skipif(not HAVE_LLAMA_CPP, reason=MISSING)

EOS = 2


def llama_cfg(**dataset: Any) -> LemConfig:
    cfg = LemConfig()
    cfg.backend.name = BackendName.llama_cpp
    for key, value in dataset.items():
        setattr(cfg.dataset, key, value)
    return cfg


# -- decoding settings → llama.cpp sampler chain --------------------------------------------


def test_greedy_is_argmax_after_the_repetition_penalty() -> None:
    greedy = GenerationParams(max_output_tokens=8)
    assert sampler_steps(greedy, eos_ids=[EOS], mask_eos=False, penalty_window_tokens=100, seed=1) == [SamplerStep("greedy")]
    penalised = replace(greedy, repetition_penalty=1.3)
    assert sampler_steps(penalised, eos_ids=[EOS], mask_eos=False, penalty_window_tokens=100, seed=1) == [
        SamplerStep("penalties", (100, 1.3, 0.0, 0.0)),
        SamplerStep("greedy"),
    ]


def test_sampling_follows_hugging_face_order() -> None:
    params = GenerationParams(max_output_tokens=8, do_sample=True, temperature=0.8, top_p=0.95, top_k=50, repetition_penalty=1.1)
    steps = sampler_steps(params, eos_ids=[EOS, 0], mask_eos=True, penalty_window_tokens=300, seed=7)
    assert [s.kind for s in steps] == ["logit_bias", "penalties", "temp", "top_k", "top_p", "dist"]
    assert steps[0].args == ((0, -math.inf), (EOS, -math.inf))
    assert steps[2].args == (0.8,) and steps[3].args == (50,) and steps[4].args == (0.95, 1) and steps[5].args == (7,)


def test_neutral_sampling_settings_add_no_sampler() -> None:
    params = GenerationParams(max_output_tokens=8, do_sample=True, temperature=1.0, top_p=1.0, top_k=0)
    assert [s.kind for s in sampler_steps(params, eos_ids=[EOS], mask_eos=False, penalty_window_tokens=9, seed=3)] == ["dist"]


def test_eos_is_masked_for_min_tokens_or_all_with_ignore_eos() -> None:
    assert eos_mask_until(GenerationParams(max_output_tokens=16)) == 0
    assert eos_mask_until(GenerationParams(max_output_tokens=16, min_output_tokens=5)) == 5
    assert eos_mask_until(GenerationParams(max_output_tokens=16, min_output_tokens=5, ignore_eos=True)) == 16


def test_each_request_has_its_own_reproducible_seed() -> None:
    params = GenerationParams(max_output_tokens=4, seed=3)
    assert request_seed(params, 1) == request_seed(params, 1)
    assert request_seed(params, 1) != request_seed(params, 2)
    assert request_seed(params, 1) != request_seed(replace(params, seed=4), 1)


def test_llama_arguments_named_keys_win_and_threads_cover_prefill() -> None:
    cfg = llama_cfg(max_input_tokens=100, max_output_tokens=20)
    cfg.backend.llama_cpp.n_threads = 2
    cfg.backend.llama_cpp.llama_args = {"use_mmap": False, "verbose": True}
    kwargs = llama_kwargs(EngineSpec.of(cfg), "/m.gguf")
    assert kwargs == {
        "verbose": True, "use_mmap": False, "model_path": "/m.gguf", "n_ctx": 120, "n_batch": 512,
        "n_gpu_layers": 0, "flash_attn": False, "n_threads": 2, "n_threads_batch": 2,
    }
    cfg.backend.llama_cpp.n_ctx = 4096
    cfg.backend.llama_cpp.n_threads = None
    kwargs = llama_kwargs(EngineSpec.of(cfg), "/m.gguf")
    assert kwargs["n_ctx"] == 4096 and "n_threads" not in kwargs and kwargs["verbose"] is True


# -- validation (in process: the bad-config table in test_cli_config runs the CLI) -------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: setattr(c.backend.llama_cpp, "n_ctx", 100), "backend.llama_cpp.n_ctx=100: expected at least dataset.max_input_tokens + dataset.max_output_tokens (576)"),
        (lambda c: setattr(c.precision, "quantization", Quantization.int4), "precision.quantization=int4: expected none with backend=llama_cpp"),
        (lambda c: setattr(c.precision, "dtype", DType.float32), "precision.dtype=float32: expected auto with backend=llama_cpp"),
        (lambda c: setattr(c.backend.llama_cpp, "llama_args", {"n_batch": 8}), "backend.llama_cpp.llama_args.n_batch=8: expected no value here: set backend.llama_cpp.n_batch"),
        (lambda c: setattr(c.model, "name_or_path", "HuggingFaceTB/SmolLM2-360M"), "backend.llama_cpp.model_path=null: expected a .gguf file of model.name_or_path=HuggingFaceTB/SmolLM2-360M"),
        (lambda c: (setattr(c.sharding, "strategy", ShardingStrategy.data_parallel), setattr(c.sharding, "num_processes", 2)), "sharding.strategy=data_parallel: expected none with backend=llama_cpp"),
    ],
)
def test_validation_refuses_what_llama_cpp_cannot_honour(change: Any, expected: str) -> None:
    cfg = llama_cfg()
    change(cfg)
    with pytest.raises(ConfigError) as refused:
        validate(cfg)
    assert expected in str(refused.value)


def test_a_gguf_of_another_model_needs_its_model_named(tmp_path: Path) -> None:
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF")
    cfg = llama_cfg()
    cfg.backend.llama_cpp.model_path = str(other)
    with pytest.raises(ConfigError, match="model.name_or_path=embedded:smollm2-135m-instruct: expected the model in"):
        validate(cfg)
    cfg.backend.llama_cpp.model_path = str(tmp_path / "weights.bin")
    with pytest.raises(ConfigError, match="expected an existing .gguf file"):
        validate(cfg)


def test_missing_package_names_the_install_command_and_its_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real_find_spec(name, *a))
    with pytest.raises(ConfigError) as refused:
        validate(llama_cfg())
    message = str(refused.value)
    assert message.startswith("backend.name=llama_cpp: expected the 'llama_cpp' package, which is not installed")
    assert 'pip install -e ".[llamacpp]"' in message and "9 minutes" in message


# -- the serving loop on a stand-in llama.cpp ---------------------------------------------------


class _Bias(ctypes.Structure):
    _fields_ = [("token", ctypes.c_int32), ("bias", ctypes.c_float)]


class FakeChain:
    def __init__(self) -> None:
        self.steps: list[tuple] = []
        self.history: list[int] = []
        self.freed = False


class FakeLlama:
    """The model "wants" to emit ``script`` in order; a banned token is replaced by ``FALLBACK``."""

    FALLBACK = 9

    def __init__(self, script: list[int]) -> None:
        self.script = list(script)
        self.calls: list[tuple] = []
        self.ctx = self

    def reset(self) -> None:
        self.calls.append(("reset",))

    def eval(self, tokens: list[int]) -> None:
        self.calls.append(("eval", list(tokens)))
        time.sleep(0.0005)  # token times must be strictly increasing, as on a real engine


class FakeLib:
    llama_logit_bias = _Bias
    llama_logit_bias_p = ctypes.POINTER(_Bias)

    def __init__(self) -> None:
        self.chains: list[FakeChain] = []

    def llama_sampler_chain_default_params(self) -> Any:
        return SimpleNamespace(no_perf=False)

    def llama_sampler_chain_init(self, params: Any) -> FakeChain:
        self.chains.append(FakeChain())
        return self.chains[-1]

    def llama_sampler_chain_add(self, chain: FakeChain, sampler: tuple) -> None:
        chain.steps.append(sampler)

    def llama_sampler_init_logit_bias(self, n_vocab: int, n: int, biases: Any) -> tuple:
        return ("ban", frozenset(biases[i].token for i in range(n) if biases[i].bias == -math.inf))

    def llama_sampler_init_penalties(self, n_vocab: int, *args: Any) -> tuple:
        return ("penalties", args)

    def llama_sampler_init_greedy(self) -> tuple:
        return ("greedy",)

    def llama_sampler_init_dist(self, seed: int) -> tuple:
        return ("dist", seed)

    def llama_sampler_accept(self, chain: FakeChain, token: int) -> None:
        chain.history.append(token)

    def llama_sampler_sample(self, chain: FakeChain, ctx: FakeLlama, idx: int) -> int:
        banned = set().union(*(s[1] for s in chain.steps if s[0] == "ban"))
        wanted = ctx.script.pop(0)
        token = FakeLlama.FALLBACK if wanted in banned else wanted
        chain.history.append(token)
        return token

    def llama_sampler_free(self, chain: FakeChain) -> None:
        chain.freed = True


def fake_backend(script: list[int]) -> tuple[LlamaCppBackend, FakeLlama, FakeLib]:
    backend = LlamaCppBackend(EngineSpec.of(llama_cfg()))
    llm, lib = FakeLlama(script), FakeLib()
    backend._llm, backend._lib = llm, lib
    backend._eos_ids, backend._n_vocab, backend._n_ctx = frozenset({EOS}), 32, 64
    return backend, llm, lib


PROMPT = PreparedRequest(request_id=4, input_ids=(11, 12, 13), text="x", truncated=False)


def test_generation_stops_at_eos_counts_it_and_times_every_token() -> None:
    backend, llm, lib = fake_backend([5, 6, EOS, 7])
    (raw,) = backend.generate([PROMPT], GenerationParams(max_output_tokens=8))
    assert raw.output_token_ids == [5, 6, EOS]
    assert len(raw.token_times) == 3 and raw.token_times == sorted(raw.token_times)
    assert raw.start_time < raw.token_times[0]
    # Whole prompt evaluated after a reset (no prefix reuse), then each token but the last fed back.
    assert llm.calls == [("reset",), ("eval", [11, 12, 13]), ("eval", [5]), ("eval", [6])]
    assert [c.freed for c in lib.chains] == [True]
    assert lib.chains[0].history == [11, 12, 13, 5, 6, EOS]  # the penalty sees prompt + output


def test_min_tokens_mask_eos_then_release_it_with_one_history() -> None:
    backend, _, lib = fake_backend([5, 6, EOS, 7, EOS, 8])
    (raw,) = backend.generate([PROMPT], GenerationParams(max_output_tokens=8, min_output_tokens=4, repetition_penalty=1.2))
    assert raw.output_token_ids == [5, 6, FakeLlama.FALLBACK, 7, EOS]
    masked, free = lib.chains
    assert masked.steps[0] == ("ban", frozenset({EOS})) and all(s[0] != "ban" for s in free.steps)
    assert masked.history == free.history == [11, 12, 13, 5, 6, FakeLlama.FALLBACK, 7, EOS]


def test_ignore_eos_runs_to_max_output_tokens() -> None:
    backend, llm, lib = fake_backend([EOS, 5, EOS, EOS])
    (raw,) = backend.generate([PROMPT], GenerationParams(max_output_tokens=4, ignore_eos=True))
    assert raw.output_token_ids == [FakeLlama.FALLBACK, 5, FakeLlama.FALLBACK, FakeLlama.FALLBACK]
    assert len(lib.chains) == 1 and sum(c[0] == "eval" for c in llm.calls) == 4  # prompt + 3 fed back


def test_serve_is_first_come_first_served_one_at_a_time() -> None:
    backend, _, _ = fake_backend([5, EOS] * 3)
    requests = [replace(PROMPT, request_id=i) for i in range(3)]
    now = time.perf_counter()
    arrivals = [now + 0.03, now, now + 0.01]
    served = list(serve_direct(backend, requests, arrivals, GenerationParams(max_output_tokens=4), batch_size=1))
    assert [r.request_id for r in served] == [1, 2, 0]
    for raw in served:
        assert raw.arrival_time == arrivals[raw.request_id] <= raw.start_time < raw.token_times[0]
    assert served[0].token_times[-1] <= served[1].start_time and served[1].token_times[-1] <= served[2].start_time


def test_a_request_longer_than_the_loaded_context_is_refused() -> None:
    backend, _, _ = fake_backend([5] * 80)
    with pytest.raises(ConfigError, match=r"backend.llama_cpp.n_ctx=null: expected >= 67"):
        backend.generate([PROMPT], GenerationParams(max_output_tokens=64))


# -- real runs on the embedded GGUF ---------------------------------------------------------------


run_lem = partial(lem_cli.run_lem, timeout_s=900)


COMMON = [
    "experiment=quick",
    "dataset.n_prompts=4",
    "dataset.max_output_tokens=12",
    "energy.idle_baseline_s=0",
    "backend.llama_cpp.n_threads=1",
    "backend.pytorch.num_threads=1",
]


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@needs_llama_cpp
@pytest.mark.slow
def test_llama_cpp_run_records_real_token_times(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_lem([*COMMON, "backend=llama_cpp", f"hydra.run.dir={run_dir}", "tracking.enabled=false"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    lines = read_lines(run_dir / "raw" / "process-0.jsonl")
    header = lines[0]
    assert header["engine"] == "llama_cpp"
    assert header["engine_version"].startswith("llama-cpp-python 0.3.") and "llama.cpp" in header["engine_version"]
    assert header["dtype"] == "Q4_1" and header["num_threads"] == 1
    settings = header["engine_settings"]
    assert settings["gguf_path"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert settings["max_concurrent_requests"] == 1 and settings["llama_args"]["n_threads"] == 1
    assert [p["name"] for p in lines if p["kind"] == "phase"] == ["engine_init", "model_load", "warmup", "generation"]

    requests = sorted((r for r in lines if r["kind"] == "request"), key=lambda r: r["start_s"])
    assert sorted(r["request_id"] for r in requests) == [0, 1, 2, 3]
    for r in requests:
        assert r["batch_id"] is None and r["batch_size"] is None and r["padded_input_tokens"] is None
        assert 1 <= r["output_tokens"] <= 12 and len(r["token_times_s"]) == r["output_tokens"]
        assert r["token_times_s"] == sorted(r["token_times_s"])
        assert r["arrival_s"] <= r["start_s"] < r["first_token_s"] <= r["end_s"]
        assert r["finish_reason"] in ("stop", "length")
        assert (r["finish_reason"] == "length") == (r["output_tokens"] == 12)
    # One at a time: a request starts only after the previous one produced its last token.
    assert all(a["end_s"] <= b["start_s"] for a, b in zip(requests, requests[1:]))

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run"]["engine"] == "llama_cpp" and summary["n_requests"] == 4
    steps = summary["batching"]["engine_steps"]  # one request at a time, whatever batching says
    assert steps["source"] == "lem serial handovers" and steps["max_running"] == 1 and steps["mean_running"] == 1.0
    assert steps["n_steps"] == sum(r["output_tokens"] for r in requests)
    assert summary["throughput"]["output_tokens_per_s"] > 0
    assert summary["batching"]["mean_batch_size"] is None
    assert summary["flops"]["total_flops"]  # counted from the Hugging Face config beside the GGUF (extra.model_path)


@needs_llama_cpp
@pytest.mark.slow
def test_two_engine_sweep_serves_the_same_prompts_and_logs_two_children(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    db = tmp_path / "mlflow.db"
    result = run_lem(
        ["-m", *COMMON, "backend=pytorch,llama_cpp", f"hydra.sweep.dir={sweep_dir}", f"tracking.tracking_uri=sqlite:///{db}"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = {}
    for job in ("0", "1"):
        summary = json.loads((sweep_dir / job / "summary.json").read_text())
        summaries[summary["run"]["engine"]] = summary
    assert set(summaries) == {"pytorch", "llama_cpp"}

    def requests(engine: str) -> dict[int, dict]:
        job = "0" if engine == "pytorch" else "1"
        return {r["request_id"]: r for r in read_lines(sweep_dir / job / "raw" / "process-0.jsonl") if r["kind"] == "request"}

    pt, lc = requests("pytorch"), requests("llama_cpp")
    assert set(pt) == set(lc) == {0, 1, 2, 3}
    assert {i: r["input_tokens"] for i, r in pt.items()} == {i: r["input_tokens"] for i, r in lc.items()}
    assert summaries["pytorch"]["tokens"]["input_tokens"] == summaries["llama_cpp"]["tokens"]["input_tokens"]
    for summary in summaries.values():
        assert summary["energy"]["j_per_output_token"] is not None and summary["throughput"]["output_tokens_per_s"] > 0

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("lem")
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    parents = {r.data.tags["mlflow.parentRunId"] for r in children}
    assert len(children) == 2 and len(parents) == 1 and parents <= {r.info.run_id for r in runs}
    assert sorted(r.data.params["backend.name"] for r in children) == ["llama_cpp", "pytorch"]
    assert all("lem.engine_version" in r.data.tags for r in children)


@needs_llama_cpp
@pytest.mark.slow
def test_a_gguf_of_another_vocabulary_is_refused(tmp_path: Path) -> None:
    from lem.models.embedded import find_embedded_gguf
    from tests.tiny_model import make_tiny_model_dir

    tiny = make_tiny_model_dir(tmp_path / "tiny")  # a random model with its own tokenizer
    result = run_lem(
        [*COMMON, "backend=llama_cpp", f"model.name_or_path={tiny}", f"backend.llama_cpp.model_path={find_embedded_gguf().gguf_path}",
         f"hydra.run.dir={tmp_path / 'run'}", "tracking.enabled=false"],
        cwd=tmp_path, timeout_s=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "does not match the tokenizer of model.name_or_path=" in result.stderr
    assert "Traceback" not in result.stderr


@needs_llama_cpp
@pytest.mark.slow
def test_a_directory_holding_only_a_gguf_is_a_model(tmp_path: Path) -> None:
    from lem.models.embedded import find_embedded_gguf

    model_dir = tmp_path / "gguf-only"
    model_dir.mkdir()
    gguf = model_dir / "model.gguf"
    shutil.copyfile(find_embedded_gguf().gguf_path, gguf)
    run_dir = tmp_path / "run"
    result = run_lem(
        ["backend=llama_cpp", f"model.name_or_path={model_dir}", f"backend.llama_cpp.model_path={gguf}", "dataset.n_prompts=2",
         "dataset.max_output_tokens=4", "energy.idle_baseline_s=0", "backend.llama_cpp.n_threads=1",
         f"hydra.run.dir={run_dir}", "tracking.enabled=false"],
        cwd=tmp_path, timeout_s=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run"]["model"] == str(model_dir) and summary["n_requests"] == 2
    assert summary["flops"]["total_flops"]  # the config transformers read from the GGUF
