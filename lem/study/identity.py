"""What a run measures, after resolution: two sweep points with equal identity measure the same thing.

``effective_settings`` is the validated config with every value that cannot change the measurement
removed or resolved the way the run resolves it: only the chosen engine's options, ``batching=auto``
resolved for the engine (``lem.backends.registry.effective_batching``) and the batch size capped by
the number of prompts, sampling knobs dropped under greedy decoding, arrival knobs dropped for
offline traffic, the dataset fields of other sources dropped, and report, tracking, study and
fault-handling settings left out. ``cycles`` is kept apart (``settings_key`` ignores it, so a
previous run's time per cycle can estimate a study with another cycle count).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from enum import Enum
from typing import Any

from lem.config.schema import LemConfig
from lem.config.types import ArrivalProcess, BatchingStrategy, DatasetSource

# Settings that never change what a run measures (how it is reported, logged, bounded in time, ordered).
NOT_MEASURED = ("report", "tracking", "study", "cycles")
RUN_NOT_MEASURED = ("job_timeout_s", "gpu_lease", "gpu_lease_timeout_s", "reuse_engine", "isolation", "record_token_ids")


def plain_values(node: Any) -> Any:
    """A dataclass tree as JSON-able values (enums by value)."""
    if dataclasses.is_dataclass(node):
        return {f.name: plain_values(getattr(node, f.name)) for f in dataclasses.fields(node)}
    if isinstance(node, Enum):
        return node.value
    if isinstance(node, dict):
        return {str(k): plain_values(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [plain_values(v) for v in node]
    return node


def effective_settings(cfg: LemConfig) -> dict[str, Any]:
    """The settings that decide what ``cfg`` measures, resolved as the run resolves them (module docstring)."""
    from lem.backends.registry import effective_batching

    out = plain_values(cfg)
    for key in NOT_MEASURED:
        out.pop(key, None)
    for key in RUN_NOT_MEASURED:
        out["run"].pop(key, None)
    engine = cfg.backend.name.value
    out["backend"] = {"name": engine, "device": out["backend"]["device"], engine: out["backend"][engine]}

    batching = effective_batching(cfg)
    n_prompts = cfg.dataset.n_prompts
    out["batching"] = {
        "strategy": batching.strategy.value,
        "batch_size": min(batching.batch_size, n_prompts),  # a batch never holds more requests than there are
        "max_tokens_per_batch": None if batching.strategy is BatchingStrategy.static else batching.max_tokens_per_batch,
    }
    if not cfg.decoder.do_sample:  # greedy: temperature, top-p, top-k and the sampling seed have no effect
        out["decoder"] = {"do_sample": False, "repetition_penalty": cfg.decoder.repetition_penalty}
    else:
        out["decoder"].pop("preset", None)  # a label; its values are the fields beside it
    if cfg.traffic.arrival is ArrivalProcess.offline:
        out["traffic"] = {"arrival": "offline"}
    dataset = out["dataset"]
    source = cfg.dataset.source
    if source is not DatasetSource.synthetic:
        dataset.pop("synthetic", None)
    if source is not DatasetSource.file:
        dataset.pop("path", None)
    if source not in (DatasetSource.file, DatasetSource.hf):
        dataset.pop("column", None)
    if source is not DatasetSource.hf:
        for key in ("hf_name", "hf_config", "hf_split"):
            dataset.pop(key, None)
    if not cfg.dataset.shuffle:
        dataset.pop("seed", None)
    return out


def settings_key(cfg: LemConfig) -> str:
    """A short hash of :func:`effective_settings` (cycles not included)."""
    text = json.dumps(effective_settings(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_key(cfg: LemConfig) -> str:
    """The identity of a run: its settings and its number of cycles."""
    return f"{settings_key(cfg)}x{cfg.cycles}"


def differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: old → new`` for every leaf that differs between two :func:`effective_settings`."""
    out: list[str] = []
    for key in sorted(set(a) | set(b)):
        path = f"{prefix}{key}"
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += differences(va, vb, path + ".")
        elif va != vb:
            out.append(f"{path}: {va!r} → {vb!r}")
    return out
