"""Turn ``model.name_or_path`` into something ``from_pretrained`` can load without surprises.

The embedded model → its converted cache directory; a local directory → itself; a Hugging
Face id → the id when the hub is reachable, else its cached snapshot directory, else a
one-line error (never a long network timeout or a traceback).
"""

from __future__ import annotations

import functools
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from lem.config.schema import ModelConfig
from lem.config.types import EMBEDDED_MODEL
from lem.errors import ConfigError, LemError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_TRUE = {"1", "true", "yes", "on"}


def resolve_model_path(model: ModelConfig) -> str:
    """A local directory or a hub id for ``from_pretrained`` (pass ``model.revision`` along with a hub id)."""
    name = model.name_or_path
    if name == EMBEDDED_MODEL:
        from lem.models.embedded import ensure_embedded_model

        return str(ensure_embedded_model())
    if name.startswith("embedded:"):
        raise ConfigError("model.name_or_path", name, f"{EMBEDDED_MODEL}, a Hugging Face model id or a local path")
    local = Path(name).expanduser()
    if local.is_dir():
        return str(local)
    if name.startswith((".", "/", "~")) or not _HUB_ID.match(name):
        raise ConfigError(
            "model.name_or_path", name, f"an existing local model directory, a Hugging Face model id or {EMBEDDED_MODEL}"
        )
    return _resolve_hub_id(name, model.revision)


def _resolve_hub_id(repo_id: str, revision: str | None) -> str:
    if hub_reachable():
        return repo_id
    snapshot = cached_snapshot(repo_id, revision)
    if snapshot is not None:
        return str(snapshot)  # a local directory: loads with no network access at all
    at = f"@{revision}" if revision else ""
    raise LemError(
        f"model.name_or_path={repo_id}{at}: not in the local Hugging Face cache and the hub is unreachable "
        f"(offline); fetch it where the hub is reachable (hf download {repo_id}), "
        f"or use a local directory or {EMBEDDED_MODEL}"
    )


def cached_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The snapshot directory of a model already in the Hugging Face cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return Path(found).parent if isinstance(found, str) else None


def hub_offline_flag() -> bool:
    """True when the user told Hugging Face libraries to stay offline."""
    return any(os.environ.get(var, "").strip().lower() in _TRUE for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable() -> bool:
    if hub_offline_flag():
        return False
    return _probe_endpoint(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))


@functools.cache
def _probe_endpoint(endpoint: str) -> bool:
    # Behind a proxy a direct connection proves nothing; let the hub client try.
    if any(os.environ.get(var) for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=3.0):
            return True
    except OSError:
        return False
