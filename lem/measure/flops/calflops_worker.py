"""Counts forward-pass FLOPs with calflops, in a process of its own.

    python calflops_worker.py REQUEST.json RESULT.json

Run by ``lem.measure.flops.calflops_count``, never imported by it: calflops monkeypatches
torch functionals (F.linear, torch.matmul, ...) and leaves them patched if the forward
raises, after which every count in that process doubles. A throw-away process cannot leak its patches.

The model is built from its config on the ``meta`` device with eager attention: no weights
are loaded and no arithmetic is done (calflops counts from tensor shapes), so this costs the
same for a 135M and a 70B model, and never a second copy of the weights in GPU memory.
Eager attention is required: with SDPA the score/value matmuls happen inside one fused
kernel calflops does not see.

Request keys: ``config_dir`` or ``model_path`` (where AutoConfig loads from),
``trust_remote_code``, ``lengths`` (prompt lengths to count a prefill forward at),
``decode_kv_tokens`` (count one decode step whose cache holds this many tokens; optional),
``inject_failure`` (tests: raise inside the patched forward). Each forward is one sequence
(batch 1) computing logits for its last position only, as ``generate`` does.
Result: ``{"ok": true, "prefill": {n: flops}, "prefill_macs": {...}, "decode": {...}}`` or
``{"ok": false, "error": ..., "torch_left_patched": bool}``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


class _Passthrough:
    """calflops calls ``.to(device)`` on every kwarg; this hands back a value that has no ``.to`` (a KV cache, a bool)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def to(self, _device: Any) -> Any:
        return self.value


def _count(calculate_flops: Any, model: Any, kwargs: dict[str, Any]) -> tuple[int, int]:
    flops, macs, _params = calculate_flops(
        model=model,
        kwargs=kwargs,
        forward_mode="forward",
        output_as_string=False,
        print_results=False,
        print_detailed=False,
    )
    return int(flops), int(macs)


def run(request: dict[str, Any]) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    original_linear, original_matmul = F.linear, torch.matmul
    try:
        import transformers
        from calflops import calculate_flops
        from transformers import AutoConfig, AutoModelForCausalLM

        transformers.utils.logging.set_verbosity_error()
        source = request.get("config_dir") or request["model_path"]
        trust = bool(request.get("trust_remote_code", False))
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust)
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # counting needs the float graph, not bitsandbytes layers
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", trust_remote_code=trust)
        model.eval()
        if request.get("inject_failure"):

            def _fail(*_args: Any) -> None:
                raise RuntimeError("injected failure inside the patched forward")

            model.register_forward_pre_hook(_fail)

        def ids(n: int) -> Any:
            return torch.ones((1, n), dtype=torch.long, device="meta")

        prefill: dict[str, int] = {}
        prefill_macs: dict[str, int] = {}
        for n in request["lengths"]:
            kwargs = {"input_ids": ids(n), "attention_mask": ids(n), "logits_to_keep": torch.tensor([n - 1])}
            prefill[str(n)], prefill_macs[str(n)] = _count(calculate_flops, model, kwargs)

        decode = None
        kv = request.get("decode_kv_tokens")
        if kv:
            with torch.no_grad():
                cache = model(input_ids=ids(kv - 1), attention_mask=ids(kv - 1), use_cache=True).past_key_values
            kwargs = {
                "input_ids": ids(1),
                "attention_mask": ids(kv),
                "past_key_values": _Passthrough(cache),
                "use_cache": _Passthrough(True),
                "logits_to_keep": torch.tensor([0]),
            }
            flops, macs = _count(calculate_flops, model, kwargs)
            decode = {"kv_tokens": kv, "flops": flops, "macs": macs}

        import importlib.metadata

        return {
            "ok": True,
            "prefill": prefill,
            "prefill_macs": prefill_macs,
            "decode": decode,
            "calflops_version": importlib.metadata.version("calflops"),
            "model_class": type(model).__name__,
        }
    except BaseException as e:  # noqa: BLE001 - report every failure to the parent as data
        text = str(e).strip().splitlines()
        return {
            "ok": False,
            "error": f"{type(e).__name__}: {text[0] if text else ''}".strip(),
            # Evidence for the isolation: was torch left patched in *this* process?
            "torch_left_patched": F.linear is not original_linear or torch.matmul is not original_matmul,
        }


def main(argv: list[str]) -> int:
    request_path, result_path = argv[1], argv[2]
    with open(request_path) as f:
        request = json.load(f)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # calflops and transformers may print; the result goes to a file
    try:
        result = run(request)
    finally:
        sys.stdout = real_stdout
    with open(result_path, "w") as f:
        json.dump(result, f)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
