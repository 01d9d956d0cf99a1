"""Hide credentials in URIs before lem prints, logs, uploads or keeps them.

One helper for every place text leaves lem's hands: warnings and errors on stderr, MLflow
params, tags and metric names, artefacts (configs, overrides, summaries), and the copies of the
config Hydra and lem keep in a run folder. It hides

- the password of a URI's user info: ``postgresql://user:secret@host/db`` → ``postgresql://user:***@host/db``
  (a user name alone, ``https://token@host``, is hidden whole: it is often a token);
- credential-like query parameters: ``?password=…``, ``&token=…``, ``access_key=…``, ``sig=…``.

Imports nothing from lem: any layer may use it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MASK = "***"

# scheme://user:password@   (user and password stop at the characters that end user info)
_USER_PASSWORD = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s'\"]*):(?P<password>[^@/\s'\"]*)@")
# scheme://token@ (no colon): a bare user info is usually a token (https://ghp_xxx@github.com)
_USER_ONLY = re.compile(r"(?P<scheme>\b(?:https?|git|ssh)://)(?P<user>[^:/@\s'\"]+)@")
_SECRET_PARAM = re.compile(
    r"(?P<key>[?&;](?:[A-Za-z0-9_.\-]*(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|auth|credential)"
    r"[A-Za-z0-9_.\-]*|sig|signature))=(?P<value>[^&;#\s'\"]+)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with every URI credential replaced by ``***`` (text without one is returned unchanged)."""
    if not isinstance(text, str) or ("://" not in text and "=" not in text):
        return text
    out = _USER_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@" if m["password"] != MASK else m[0], text)
    out = _USER_ONLY.sub(lambda m: f"{m['scheme']}{MASK}@" if m["user"] != MASK else m[0], out)
    return _SECRET_PARAM.sub(lambda m: f"{m['key']}={MASK}", out)


def has_secret(text: str) -> bool:
    return redact(text) != text


def redact_obj(obj: Any) -> Any:
    """A copy of a nested dict/list/tuple with every string (keys too) redacted."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, Mapping):
        return {redact_obj(k): redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_obj(v) for v in obj)
    return obj
