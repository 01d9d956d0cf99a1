"""calflops' count of a model's forwards, in a subprocess of its own, fitted to a per-forward cost.

calflops patches torch functionals and may leave them patched: it only ever runs in
``calflops_worker.py``, started as a script (this module never imports calflops' counting).
Its counts are cached per architecture in lem's user cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Mapping, Sequence

from lem.files import cache_root, write_json_atomic
from lem.measure.flops.analytical import SOURCE_CALFLOPS, FlopsUnavailable, ForwardCost

CALFLOPS_FIT_LENGTHS = (8, 16, 32)  # prefill lengths the quadratic per-forward cost is solved from
STRUCTURE_TOLERANCE = 1e-3  # calflops counts must follow c + a·q + b·pairs this closely at the check points
WORKER = Path(__file__).with_name("calflops_worker.py")


@dataclass(frozen=True)
class CalflopsFit:
    cost: ForwardCost  # solved from prefill counts at CALFLOPS_FIT_LENGTHS
    prefill_flops: dict[int, int]  # calflops' count of a prefill forward (batch 1, last-position logits)
    prefill_macs: dict[int, int]  # its multiply-accumulates (matmuls only): 2 × these is the analytical convention
    decode: dict[str, int] | None  # {"kv_tokens", "flops"}: one decode step counted by calflops
    structure_error: float  # worst relative miss of the fitted cost at the check points (prefill and decode)
    check_length: int
    version: str | None = None


def calflops_available() -> bool:
    return importlib.util.find_spec("calflops") is not None


def calflops_fit(
    config: Any = None,
    *,
    model_path: str | None = None,
    trust_remote_code: bool = False,
    check_length: int = 128,
    timeout_s: float = 300.0,
    inject_failure: bool = False,
) -> CalflopsFit:
    """Count forwards with calflops in a subprocess and solve the per-forward cost from them.

    Counts prefill forwards at ``CALFLOPS_FIT_LENGTHS`` and ``check_length`` and one decode step
    over ``check_length + 1`` keys; the three fit lengths give c, a, b exactly, the other two
    check that calflops' counts follow that structure. Raises FlopsUnavailable with the reason.
    """
    if not calflops_available():
        raise FlopsUnavailable("calflops: not installed (pip install calflops)")
    if config is None and model_path is None:
        raise FlopsUnavailable("calflops: neither a config nor a model path to build the model from")
    lengths = sorted({*CALFLOPS_FIT_LENGTHS, check_length})
    with tempfile.TemporaryDirectory(prefix="lem-calflops-") as tmp:
        request: dict[str, Any] = {
            "trust_remote_code": trust_remote_code,
            "lengths": lengths,
            "decode_kv_tokens": check_length + 1,
            "inject_failure": inject_failure,
        }
        # The config the run actually loaded; a remote-code config needs its own directory for its code.
        if config is not None and not (getattr(config, "auto_map", None) and model_path):
            config.save_pretrained(tmp)
            request["config_dir"] = tmp
        else:
            request["model_path"] = model_path
        cache_file = _calflops_cache_file(config, request) if "config_dir" in request and not inject_failure else None
        cached = _read_json(cache_file) if cache_file is not None else None
        if cached is not None:
            return _fit_from_result(cached, check_length)
        req_path, out_path = Path(tmp, "request.json"), Path(tmp, "result.json")
        req_path.write_text(json.dumps(request))
        env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false")
        env["CUDA_VISIBLE_DEVICES"] = ""  # meta device only: never open a CUDA context beside the measured one
        try:
            proc = subprocess.run(
                [sys.executable, str(WORKER), str(req_path), str(out_path)],
                capture_output=True, text=True, timeout=timeout_s, env=env,
            )
        except subprocess.TimeoutExpired:
            raise FlopsUnavailable(f"calflops: worker did not finish within {timeout_s:.0f} s") from None
        if not out_path.exists():
            tail = (proc.stderr or "").strip().splitlines()
            raise FlopsUnavailable(f"calflops: worker exited with {proc.returncode}: {tail[-1] if tail else 'no output'}")
        result = json.loads(out_path.read_text())
    if not result.get("ok"):
        raise FlopsUnavailable(f"calflops: {result.get('error')}" + (" (its patches stayed inside the worker)" if result.get("torch_left_patched") else ""))
    if cache_file is not None:
        _write_json_atomic(cache_file, result)
    return _fit_from_result(result, check_length)


def _calflops_cache_file(config: Any, request: Mapping[str, Any]) -> Path | None:
    """calflops' counts depend only on the architecture and the lengths: cache them (a worker costs seconds)."""
    try:
        from importlib.metadata import version

        import calflops  # noqa: F401 - its version is part of the key

        arch = config.to_json_string(use_diff=False)
        key = json.dumps([arch, request["lengths"], request["decode_kv_tokens"], version("calflops"), version("transformers")])
    except Exception:  # noqa: BLE001 - no cache, count afresh
        return None
    return cache_root() / "flops" / f"calflops-{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("ok") else None


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    try:
        write_json_atomic(path, data)
    except OSError:
        pass  # a read-only cache only costs the next run a recount


def _fit_from_result(result: Mapping[str, Any], check_length: int) -> CalflopsFit:
    prefill = {int(n): int(f) for n, f in result["prefill"].items()}
    cost = _solve_quadratic(prefill, CALFLOPS_FIT_LENGTHS)
    errors = [_rel(cost.forward_flops(check_length), prefill[check_length])]
    decode = result.get("decode")
    if decode:
        errors.append(_rel(cost.forward_flops(1, int(decode["kv_tokens"])), int(decode["flops"])))
    macs = {int(n): int(m) for n, m in result["prefill_macs"].items()}
    return CalflopsFit(cost, prefill, macs, decode, max(errors), check_length, result.get("calflops_version"))


def _solve_quadratic(counts: Mapping[int, int], lengths: Sequence[int]) -> ForwardCost:
    """F(n) = c + a·n + b·n² through three points (exact rational arithmetic)."""
    (n1, n2, n3) = lengths
    f1, f2, f3 = (Fraction(counts[n]) for n in lengths)
    d21 = (f2 - f1) / (n2 - n1)
    d32 = (f3 - f2) / (n3 - n2)
    b = (d32 - d21) / (n3 - n1)
    a = d21 - b * (n1 + n2)
    c = f1 - a * n1 - b * n1 * n1
    return ForwardCost(float(a), float(b), float(c), source=SOURCE_CALFLOPS)


def _rel(predicted: float, measured: float) -> float:
    return abs(predicted - measured) / measured if measured else float(predicted != 0)
