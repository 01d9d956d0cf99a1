"""The MLflow client lem logs through: credentials redacted, a dead store given up at once.

Every MLflow call lem makes goes through :class:`GuardedClient` (``lem.tracking.store.open_client``
returns one), so

- whatever lem sends — run names, params, tags, metric names, artefact files — has credential-
  bearing URIs hidden (``lem.redact``); an artefact that holds one is uploaded as a redacted copy;
- the first call that fails because the store cannot be reached (a server that died mid-sweep,
  a database that went away) marks the store unavailable for the rest of the process: later
  calls raise :class:`~lem.tracking.store.TrackingUnavailable` at once instead of each waiting
  minutes in HTTP retries. The local results are never touched; the caller says once how to
  log them later (``lem.tracking.store.warn_unavailable``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lem.errors import first_line
from lem.redact import has_secret, redact
from lem.session import current

# MLflow's HTTP client retries a refused connection 7 times with backoff factor 2 (about 4 min);
# lem's own calls give up after a few seconds. A value the user set in the environment wins.
HTTP_RETRY_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
_MAX_ARTIFACT_SCAN_BYTES = 20_000_000  # larger files (raw records of long runs) are uploaded as they are
_TRANSPORT_WORDS = (
    "failed with exception", "max retries exceeded", "connection refused", "connection reset", "connection aborted",
    "timed out", "name or service not known", "temporarily unavailable", "unable to open database file",
    "remote end closed", "502", "503", "504",
)


class TrackingUnavailable(Exception):
    """The tracking store could not be reached (or refused to open)."""


def error_line(exc: BaseException) -> str:
    """``Type: first line`` of an exception, at most 300 characters, for a warning or an error message.

    A TrackingUnavailable gives its line alone (it already says what failed); an exception
    without a message gives its type's name.
    """
    line = first_line(exc)
    if isinstance(exc, TrackingUnavailable) or not str(exc).strip():
        return line[:300]
    return f"{type(exc).__name__}: {line}"[:300]


def short_http_retries() -> None:
    for key, value in HTTP_RETRY_ENV.items():
        os.environ.setdefault(key, value)


def is_transport_failure(exc: BaseException) -> bool:
    """The store could not be reached (as opposed to a request it refused: a bad value, a name taken)."""
    seen: set[int] = set()
    current_exc: BaseException | None = exc
    while current_exc is not None and id(current_exc) not in seen:
        seen.add(id(current_exc))
        name = type(current_exc).__name__
        if name in ("ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "MaxRetryError", "NewConnectionError",
                    "RemoteDisconnected", "ConnectionRefusedError", "ConnectionResetError", "OperationalError"):
            return True
        text = str(current_exc).lower()
        if "api request to" in text and any(w in text for w in _TRANSPORT_WORDS):
            return True
        if name not in ("MlflowException", "RestException") and any(w in text for w in _TRANSPORT_WORDS[1:10]):
            return True
        current_exc = current_exc.__cause__ or current_exc.__context__
    return False


class GuardedClient:
    """An ``MlflowClient`` whose writes are redacted and whose first transport failure is sticky."""

    def __init__(self, client: Any, uri: str) -> None:
        self._client = client
        self._uri = uri

    @property
    def tracking_uri(self) -> str:
        return self._uri

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr
        prepare = _PREPARE.get(name)

        def call(*args: Any, **kwargs: Any) -> Any:
            state = current().tracking
            if self._uri in state.unavailable:
                raise TrackingUnavailable(state.unavailable[self._uri])
            with (prepare(args, kwargs) if prepare else _unchanged(args, kwargs)) as (a, kw):
                try:
                    return attr(*a, **kw)
                except Exception as exc:
                    if not is_transport_failure(exc):
                        raise
                    reason = redact(error_line(exc))
                    mark_unavailable(self._uri, reason)
                    raise TrackingUnavailable(reason) from None

        return call


def mark_unavailable(uri: str, reason: str) -> None:
    """No more MLflow calls to ``uri`` in this process: its connections are dropped, its reason kept."""
    state = current().tracking
    state.unavailable.setdefault(uri, reason)
    for target in [t for t in state.connections if getattr(t, "uri", None) == uri]:
        state.connections.pop(target, None)


# --- what each write sends, redacted -----------------------------------------------------------


@contextmanager
def _unchanged(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[tuple[tuple[Any, ...], dict[str, Any]]]:
    yield args, kwargs


@contextmanager
def _prep_log_batch(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[tuple[tuple[Any, ...], dict[str, Any]]]:
    from mlflow.entities import Metric, Param, RunTag

    args_list = list(args)
    for index, name in ((1, "metrics"), (2, "params"), (3, "tags")):
        value = kwargs.get(name, args_list[index] if index < len(args_list) else None)
        if not value:
            continue
        if name == "metrics":
            new = [Metric(redact(m.key), m.value, m.timestamp, m.step) for m in value]
        elif name == "params":
            new = [Param(redact(p.key), redact(p.value)) for p in value]
        else:
            new = [RunTag(redact(t.key), redact(t.value)) for t in value]
        if name in kwargs or index >= len(args_list):
            kwargs[name] = new
        else:
            args_list[index] = new
    yield tuple(args_list), kwargs


def _prep_keys(value_index: int | None) -> Callable[..., Any]:
    """set_tag / log_param / log_metric: ``(run_id, key, value, ...)``."""

    @contextmanager
    def prep(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[tuple[tuple[Any, ...], dict[str, Any]]]:
        a = list(args)
        if len(a) > 1:
            a[1] = redact(str(a[1]))
        if "key" in kwargs:
            kwargs["key"] = redact(str(kwargs["key"]))
        if value_index is not None:
            if len(a) > value_index and isinstance(a[value_index], str):
                a[value_index] = redact(a[value_index])
            if isinstance(kwargs.get("value"), str):
                kwargs["value"] = redact(kwargs["value"])
        yield tuple(a), kwargs

    return prep


@contextmanager
def _prep_create(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[tuple[tuple[Any, ...], dict[str, Any]]]:
    """create_run(experiment_id, start_time, tags, run_name) / create_experiment(name, artifact_location, tags)."""
    if isinstance(kwargs.get("tags"), dict):
        kwargs["tags"] = {redact(str(k)): redact(str(v)) for k, v in kwargs["tags"].items()}
    if isinstance(kwargs.get("run_name"), str):
        kwargs["run_name"] = redact(kwargs["run_name"])
    yield args, kwargs


@contextmanager
def _prep_artifact(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[tuple[tuple[Any, ...], dict[str, Any]]]:
    """log_artifact(run_id, local_path, artifact_path) / log_artifacts(run_id, local_dir, artifact_path):
    files that hold a credential are uploaded as redacted copies (same names)."""
    a = list(args)
    key = "local_dir" if "local_dir" in kwargs else "local_path"
    source = kwargs.get(key, a[1] if len(a) > 1 else None)
    if source is None or not _tree_has_secret(Path(source)):
        yield args, kwargs
        return
    with tempfile.TemporaryDirectory(prefix="lem-redacted-") as tmp:
        staged = Path(tmp) / Path(source).name
        copy_redacted(Path(source), staged)
        if key in kwargs:
            kwargs[key] = str(staged)
        else:
            a[1] = str(staged)
        yield tuple(a), kwargs


_PREPARE: dict[str, Callable[..., Any]] = {
    "log_batch": _prep_log_batch,
    "set_tag": _prep_keys(2),
    "log_param": _prep_keys(2),
    "log_metric": _prep_keys(None),
    "create_run": _prep_create,
    "create_experiment": _prep_create,
    "log_artifact": _prep_artifact,
    "log_artifacts": _prep_artifact,
}


def _files(path: Path) -> Iterator[Path]:
    if path.is_file():
        yield path
    elif path.is_dir():
        yield from (p for p in sorted(path.rglob("*")) if p.is_file())


def _read_text(path: Path) -> str | None:
    try:
        if path.stat().st_size > _MAX_ARTIFACT_SCAN_BYTES:
            return None
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None  # binary (a plot) or unreadable: uploaded as it is


def _tree_has_secret(path: Path) -> bool:
    return any((text := _read_text(f)) is not None and has_secret(text) for f in _files(path))


def copy_redacted(source: Path, dest: Path) -> None:
    """Copy a file or folder, text files with credentials redacted."""
    if source.is_dir():
        for f in _files(source):
            copy_redacted(f, dest / f.relative_to(source))
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    text = _read_text(source)
    if text is not None and has_secret(text):
        dest.write_text(redact(text), encoding="utf-8")
    else:
        shutil.copy2(source, dest)
