"""GGUF and vocabulary helpers of the llama.cpp adapter: version and file-type names, the check that
the GGUF's vocabulary is the Hugging Face tokenizer's, the EOS ids, and a config.json read from a GGUF.

Each takes the ``llama_cpp`` module (or the loaded model) as an argument, or imports transformers
inside the function: importing this module loads neither.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

from lem.errors import LemError


def ftype_name(llama_cpp: Any, file_type: Any) -> str | None:
    """A GGUF ``general.file_type`` number as llama.cpp names it (3 → Q4_1), from the binding's constants."""
    try:
        number = int(file_type)
    except (TypeError, ValueError):
        return None
    for name, value in vars(llama_cpp).items():
        if name.startswith("LLAMA_FTYPE_") and value == number and name != "LLAMA_FTYPE_GUESSED":
            return name.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_").removeprefix("ALL_")
    return None


def llama_cpp_version(llama_cpp: Any) -> str:
    """``llama-cpp-python 0.3.36 (llama.cpp <version>)``; the llama.cpp part when the library reports one."""
    try:
        binding = importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        binding = getattr(llama_cpp, "__version__", "unknown")
    native = [f"{name} {value}" for name, value in (("llama.cpp", c_string(llama_cpp, "llama_version")),
                                                     ("ggml", c_string(llama_cpp, "ggml_version"))) if value]
    return f"llama-cpp-python {binding}" + (f" ({', '.join(native)})" if native else "")


def c_string(llama_cpp: Any, symbol: str) -> str | None:
    """A ``const char *(void)`` the loaded libllama (or the ggml it links) exports, or None where it does not."""
    import ctypes

    try:
        function = getattr(llama_cpp.llama_cpp._lib, symbol)
        function.argtypes, function.restype = [], ctypes.c_char_p
        raw = function()
    except Exception:  # noqa: BLE001 - an older library without the symbol: the version says less
        return None
    return raw.decode("utf-8", "replace") if raw else None


def check_vocabulary(lib: Any, llm: Any, tokenizer: Any, gguf: str, model_name: str) -> int:
    """Refuse a GGUF whose token ids mean other tokens than the Hugging Face tokenizer's; return its vocabulary size."""
    vocab = lib.llama_model_get_vocab(llm.model)
    n_gguf = int(lib.llama_vocab_n_tokens(vocab))
    n_hf = len(tokenizer)
    gguf_tokens = [lib.llama_vocab_get_text(vocab, i).decode("utf-8", "replace") for i in range(n_gguf)]
    hf_tokens = tokenizer.convert_ids_to_tokens(list(range(min(n_gguf, n_hf))))
    differ = [i for i, (a, b) in enumerate(zip(hf_tokens, gguf_tokens)) if a != b]
    if n_hf > n_gguf or differ:
        first = f"; first at id {differ[0]}: {hf_tokens[differ[0]]!r} vs {gguf_tokens[differ[0]]!r}" if differ else ""
        raise LemError(
            f"backend.llama_cpp.model_path={gguf}: its vocabulary ({n_gguf} tokens) does not match the tokenizer of "
            f"model.name_or_path={model_name} ({n_hf} tokens, {len(differ)} ids differ{first}); lem feeds every engine "
            f"the same token ids, so the GGUF must be that model's"
        )
    return n_gguf


def eos_token_ids(tokenizer: Any, hf_dir: str) -> frozenset[int]:
    """The ids that end a request: the generation config's EOS and the tokenizer's, as for the PyTorch adapter."""
    eos: set[int] = set()
    try:
        from transformers import GenerationConfig

        gen = GenerationConfig.from_pretrained(hf_dir).eos_token_id
        eos.update(gen if isinstance(gen, list) else [gen] if gen is not None else [])
    except (OSError, ValueError):
        pass  # no generation_config.json: the tokenizer's EOS alone
    if tokenizer.eos_token_id is not None:
        eos.add(int(tokenizer.eos_token_id))
    return frozenset(int(i) for i in eos)


def gguf_config_dir(directory: Path, gguf: Path) -> str | None:
    """A config.json read from the GGUF, cached for the FLOPs count; None when transformers cannot read it."""
    from lem.files import cache_root

    target = cache_root() / "gguf-configs" / f"{gguf.stem}-{gguf.stat().st_size}"
    if (target / "config.json").is_file():
        return str(target)
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(directory), gguf_file=gguf.name)
        target.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(str(target))
    except (OSError, ValueError, ImportError, KeyError):
        return None  # FLOPs then say why they are missing
    return str(target)
