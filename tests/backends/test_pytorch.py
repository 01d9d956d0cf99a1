"""The PyTorch backend on a tiny random Llama: batching, padding, EOS, timing, dtype, describe()."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lem.backends.base import EngineSpec
from lem.backends.pytorch.config import AttnImplementation
from lem.backends.pytorch.engine import PyTorchBackend
from lem.backends.registry import create_engine
from lem.config.schema import LemConfig
from lem.config.types import Device, DType
from lem.errors import LemError
from lem.workload.types import GenerationParams, PreparedRequest
from tests.tiny_model import EOS_ID, PAD_ID, make_tiny_model_dir

torch.set_num_threads(1)  # the CPU is shared with other test runs

PROMPTS = [
    "what is the capital of france ?",
    "one two three",
    "the quick brown fox jumps over the lazy dog .",
    "hello",
]
GREEDY = GenerationParams(max_output_tokens=10)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny"))


def make_backend(model_dir: Path, **pytorch_overrides) -> PyTorchBackend:
    cfg = LemConfig()
    cfg.model.name_or_path = str(model_dir)
    cfg.backend.device = Device.cpu
    cfg.backend.pytorch.num_threads = 1
    for key, value in pytorch_overrides.items():
        if key == "dtype":
            cfg.precision.dtype = value
        else:
            setattr(cfg.backend.pytorch, key, value)
    backend = PyTorchBackend(EngineSpec.of(cfg))
    backend.init_engine()
    backend.load_model()
    return backend


@pytest.fixture(scope="module")
def backend(tiny_dir: Path) -> PyTorchBackend:
    return make_backend(tiny_dir)


def requests(backend: PyTorchBackend, texts: list[str], first_id: int = 0) -> list[PreparedRequest]:
    tok = backend.tokenizer
    return [PreparedRequest(first_id + i, tuple(tok(t).input_ids), t, False) for i, t in enumerate(texts)]


def test_one_result_per_request_in_input_order(backend: PyTorchBackend) -> None:
    batch = requests(backend, PROMPTS, first_id=100)[::-1]  # ids 103..100: order must follow the batch, not the id
    out = backend.generate(batch, GREEDY)
    assert [r.request_id for r in out] == [103, 102, 101, 100]
    assert all(len(r.output_token_ids) == GREEDY.max_output_tokens for r in out)  # tiny model never emits EOS here
    assert {r.padded_input_tokens for r in out} == {max(len(r.input_ids) for r in batch)}


def test_token_times_are_real_per_step_times(backend: PyTorchBackend) -> None:
    out = backend.generate(requests(backend, PROMPTS[:2]), GREEDY)
    for r in out:
        assert len(r.token_times) == len(r.output_token_ids)
        assert r.start_time < r.token_times[0]
        assert all(a < b for a, b in zip(r.token_times, r.token_times[1:]))  # one distinct time per decoding step


def test_left_padding_gives_the_same_tokens_as_the_prompt_alone(backend: PyTorchBackend) -> None:
    batch = requests(backend, PROMPTS)
    together = backend.generate(batch, GREEDY)
    for req, in_batch in zip(batch, together):
        alone = backend.generate([req], GREEDY)[0]
        assert alone.output_token_ids == in_batch.output_token_ids, req.text
        assert alone.padded_input_tokens == len(req.input_ids)


def test_input_ids_are_authoritative_not_the_text(backend: PyTorchBackend) -> None:
    [req] = requests(backend, PROMPTS[:1])
    lying = PreparedRequest(req.request_id, req.input_ids, "some entirely different text", False)
    assert backend.generate([lying], GREEDY)[0].output_token_ids == backend.generate([req], GREEDY)[0].output_token_ids


def _first_stop(ids: list[int], eos: set[int]) -> int | None:
    return next((i for i, t in enumerate(ids) if t in eos), None)


def _model_with_eos(src: Path, dst: Path, eos_token: int) -> Path:
    """A copy of the tiny model whose generation config also stops on ``eos_token``."""
    shutil.copytree(src, dst)
    gen_path = dst / "generation_config.json"
    gen = json.loads(gen_path.read_text())
    gen["eos_token_id"] = [eos_token]  # the tokenizer's eos stays in the backend's union
    gen_path.write_text(json.dumps(gen))
    return dst


def test_rows_that_hit_eos_early_are_padded(backend: PyTorchBackend, tiny_dir: Path, tmp_path: Path) -> None:
    batch = requests(backend, PROMPTS[:2])
    a, b = (r.output_token_ids for r in backend.generate(batch, GREEDY))
    # Make a token row A emits but row B never does an EOS: A stops early, B runs on.
    j, stop = next((j, t) for j, t in enumerate(a) if t not in a[:j] and t not in b and j < len(a) - 1)
    eos_backend = make_backend(_model_with_eos(tiny_dir, tmp_path / "eos", stop))
    assert eos_backend.eos_token_ids == {stop, EOS_ID}

    out_a, out_b = eos_backend.generate(batch, GREEDY)
    assert out_a.output_token_ids == a[: j + 1] + [PAD_ID] * (len(a) - j - 1)  # EOS, then padding
    assert out_b.output_token_ids == b  # the unfinished row is untouched
    assert len(out_a.token_times) == len(out_a.output_token_ids)

    alone = eos_backend.generate(batch[:1], GREEDY)[0]
    assert alone.output_token_ids == a[: j + 1]  # alone, generation stops at EOS

    ignoring = eos_backend.generate(batch[:1], GenerationParams(max_output_tokens=10, ignore_eos=True))[0]
    assert len(ignoring.output_token_ids) == 10
    assert not set(ignoring.output_token_ids) & eos_backend.eos_token_ids


def test_min_output_tokens_delays_eos(backend: PyTorchBackend, tiny_dir: Path, tmp_path: Path) -> None:
    batch = requests(backend, PROMPTS[:1])
    a = backend.generate(batch, GREEDY)[0].output_token_ids
    eos_backend = make_backend(_model_with_eos(tiny_dir, tmp_path / "eos0", a[0]))  # would stop at once
    out = eos_backend.generate(batch, GenerationParams(max_output_tokens=10, min_output_tokens=4))[0].output_token_ids
    assert len(out) >= 5 and a[0] not in out[:4]


def test_sampling_is_seeded(backend: PyTorchBackend) -> None:
    batch = requests(backend, PROMPTS[:2])
    params = GenerationParams(max_output_tokens=12, do_sample=True, temperature=1.5, top_p=0.95, top_k=0, seed=7)
    first = [r.output_token_ids for r in backend.generate(batch, params)]
    again = [r.output_token_ids for r in backend.generate(batch, params)]
    other = [r.output_token_ids for r in backend.generate(batch, GenerationParams(**{**params.__dict__, "seed": 8}))]
    assert first == again
    assert first != other


def test_dtype_auto_keeps_the_checkpoint_dtype(tmp_path: Path) -> None:
    bf16_dir = make_tiny_model_dir(tmp_path / "bf16", dtype="bfloat16")
    assert make_backend(bf16_dir, dtype=DType.auto).describe().dtype == "bfloat16"
    assert make_backend(bf16_dir, dtype=DType.float32).describe().dtype == "float32"


def test_describe_reports_what_is_in_use(tiny_dir: Path) -> None:
    backend = make_backend(tiny_dir, attn_implementation=AttnImplementation.eager, use_cache=False)
    d = backend.describe()
    import transformers

    assert d.engine == "pytorch"
    assert d.engine_version == f"transformers {transformers.__version__}, torch {torch.__version__}"
    assert d.device_type == "cpu" and len(d.device_names) == 1 and d.device_names[0]
    assert d.dtype == "float32"
    assert d.num_threads == 1 == torch.get_num_threads()
    assert d.extra["attn_implementation"] == "eager"
    assert d.extra["use_cache"] is False
    assert d.extra["torch_compile"] is False
    assert d.extra["num_parameters"] == sum(p.numel() for p in backend.model.parameters())
    # use_cache=False recomputes the whole sequence each step: same greedy tokens, more work.
    batch = requests(backend, PROMPTS[:2])
    cached = make_backend(tiny_dir, attn_implementation=AttnImplementation.eager)
    assert [r.output_token_ids for r in backend.generate(batch, GREEDY)] == [
        r.output_token_ids for r in cached.generate(batch, GREEDY)
    ]


def test_tokenizer_pads_left_and_eos_comes_from_tokenizer_and_generation_config(backend: PyTorchBackend) -> None:
    assert backend.tokenizer.padding_side == "left"
    assert backend.eos_token_ids == {EOS_ID}


def test_missing_pad_token_falls_back_to_eos(tiny_dir: Path, tmp_path: Path) -> None:
    no_pad = tmp_path / "nopad"
    shutil.copytree(tiny_dir, no_pad)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = no_pad / name
        if path.exists():
            data = json.loads(path.read_text())
            data.pop("pad_token", None)
            path.write_text(json.dumps(data))
    backend = make_backend(no_pad)
    assert backend.tokenizer.pad_token_id == EOS_ID
    assert len(backend.generate(requests(backend, PROMPTS[:2]), GREEDY)) == 2


def test_empty_batch_and_empty_prompt(backend: PyTorchBackend) -> None:
    assert backend.generate([], GREEDY) == []
    with pytest.raises(LemError, match="request 5 has no input tokens"):
        backend.generate([PreparedRequest(5, (), "", False)], GREEDY)


def test_unloadable_model_is_a_one_line_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LemError, match="could not load it") as info:
        make_backend(empty)
    assert "\n" not in str(info.value)


def test_unload_frees_the_model(tiny_dir: Path) -> None:
    backend = make_backend(tiny_dir)
    backend.unload()
    with pytest.raises(RuntimeError, match="load_model"):
        backend.generate(requests(backend, PROMPTS[:1]), GREEDY)


def test_create_backend_imports_no_torch() -> None:
    code = (
        "import sys\nfrom lem.backends.registry import create_engine\nfrom lem.config.schema import LemConfig\n"
        "b = create_engine(LemConfig())\nassert type(b).__name__ == 'PyTorchBackend'\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_create_backend_picks_pytorch() -> None:
    assert isinstance(create_engine(LemConfig()), PyTorchBackend)


@pytest.mark.slow
def test_torch_compile_generates_the_same_tokens(backend: PyTorchBackend, tiny_dir: Path) -> None:
    compiled = make_backend(tiny_dir, torch_compile=True)
    batch = requests(backend, PROMPTS[:2])
    expected = [r.output_token_ids for r in backend.generate(batch, GREEDY)]
    for _ in range(2):  # the second call reuses the compiled graph
        out = compiled.generate(batch, GREEDY)
        assert [r.output_token_ids for r in out] == expected
        assert all(len(r.token_times) == len(r.output_token_ids) for r in out)
    assert compiled.describe().extra["torch_compile"]


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@cuda
def test_cuda_float16_load_and_generate(tiny_dir: Path) -> None:
    cfg = LemConfig()
    cfg.model.name_or_path = str(tiny_dir)
    cfg.backend.device = Device.cuda
    cfg.precision.dtype = DType.float16
    backend = PyTorchBackend(EngineSpec.of(cfg))
    backend.init_engine()
    backend.load_model()
    d = backend.describe()
    assert d.device_type == "cuda" and d.dtype == "float16"
    assert d.device_names == [torch.cuda.get_device_name(0)]
    out = backend.generate(requests(backend, PROMPTS), GREEDY)
    assert all(len(r.token_times) == len(r.output_token_ids) > 0 for r in out)
    backend.unload()


@pytest.mark.gpu
@cuda
def test_cuda_left_padding_matches_alone_in_float32(tiny_dir: Path) -> None:
    cfg = LemConfig()
    cfg.model.name_or_path = str(tiny_dir)
    cfg.backend.device = Device.cuda
    cfg.precision.dtype = DType.float32
    backend = PyTorchBackend(EngineSpec.of(cfg))
    backend.init_engine()
    backend.load_model()
    batch = requests(backend, PROMPTS)
    together = backend.generate(batch, GREEDY)
    for req, in_batch in zip(batch, together):
        assert backend.generate([req], GREEDY)[0].output_token_ids == in_batch.output_token_ids
