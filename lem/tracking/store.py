"""Where runs are logged: the tracking URI, the experiment, and one connection per process.

Default store: SQLite at ``<project>/mlruns/mlflow.db`` with artifacts in
``<project>/mlruns/artifacts/`` (MLflow >= 3.13 refuses the old ``./mlruns`` file store).
The project root is the source checkout lem runs from, never the working directory
Hydra gives a job. ``tracking.tracking_uri`` wins, then ``MLFLOW_TRACKING_URI``, then
the default.

A store that cannot be reached is reported once per process (one warning line naming
``python -m lem sync``); the run's local results are never affected.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from lem.redact import redact
from lem.session import current
from lem.tracking.client import TrackingUnavailable, error_line

DEFAULT_EXPERIMENT = "lem"
STORE_DIRNAME = "mlruns"
DB_FILENAME = "mlflow.db"
ARTIFACTS_DIRNAME = "artifacts"

# How a sweep's parent run reaches its jobs: env vars (same process, or inherited by launcher
# subprocesses), and a file in the sweep directory (jobs on other nodes with a shared filesystem).
ENV_PARENT_RUN_ID = "LEM_MLFLOW_PARENT_RUN_ID"
ENV_SWEEP_ID = "LEM_SWEEP_ID"
SWEEP_FILE = ".lem_sweep.json"


@dataclass(frozen=True)
class Target:
    """A tracking store and the experiment to log into."""

    uri: str
    experiment_name: str = DEFAULT_EXPERIMENT

    @property
    def artifact_location(self) -> str | None:
        """Artifact folder for a new experiment in a SQLite store: beside the database, not in the cwd."""
        db = sqlite_path(self.uri)
        if db is None:
            return None  # a server or a database elsewhere decides where artifacts live
        return str(db.parent / ARTIFACTS_DIRNAME / _slug(self.experiment_name))


def project_root() -> Path:
    """The source checkout lem runs from; else the directory the command was started in."""
    here = Path(__file__).resolve().parent.parent.parent
    if (here / "pyproject.toml").is_file() and (here / "conf").is_dir():
        return here
    return original_cwd()


def original_cwd() -> Path:
    """The directory the user started lem in (Hydra's runtime.cwd inside a job)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return Path(HydraConfig.get().runtime.cwd)
    except Exception:  # noqa: BLE001 - outside Hydra, or Hydra not importable
        pass
    return Path.cwd()


def default_store_dir() -> Path:
    return project_root() / STORE_DIRNAME


def default_tracking_uri() -> str:
    return f"sqlite:///{default_store_dir() / DB_FILENAME}"


def resolve_tracking_uri(configured: str | None = None) -> str:
    """``tracking.tracking_uri`` > ``MLFLOW_TRACKING_URI`` > ``sqlite:///<project>/mlruns/mlflow.db``.

    A relative SQLite path is made absolute against the directory lem was started in, so a
    job's working directory never moves the store.
    """
    uri = (configured or "").strip() or os.environ.get("MLFLOW_TRACKING_URI", "").strip() or default_tracking_uri()
    if uri.startswith("sqlite:///"):
        path = unquote(uri[len("sqlite:///"):])
        if path and path != ":memory:" and not os.path.isabs(path):
            uri = f"sqlite:///{(original_cwd() / path).resolve()}"
    elif "://" not in uri and not uri.startswith(("databricks", "file:")):
        raise ValueError(
            f"tracking.tracking_uri={uri}: expected a URI such as sqlite:///path/mlflow.db, "
            "http://host:5000 or postgresql://...; MLflow >= 3.13 no longer accepts a bare ./mlruns folder"
        )
    return uri


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = unquote(uri[len("sqlite:///"):].split("?", 1)[0])
    return None if not path or path == ":memory:" else Path(path)


def target_from_config(cfg: Any) -> Target | None:
    """The Target of a config's ``tracking`` section (a LemConfig, DictConfig or dict); None when disabled."""
    section = _get(cfg, "tracking")
    if section is None:
        return Target(resolve_tracking_uri(None))
    if not _get(section, "enabled", True):
        return None
    name = _get(section, "experiment_name", None) or DEFAULT_EXPERIMENT
    return Target(resolve_tracking_uri(_get(section, "tracking_uri", None)), str(name))


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    try:
        return getattr(obj, key, default)
    except Exception:  # noqa: BLE001 - an OmegaConf node with a missing value
        return default


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "experiment"


# --- one connection per process; one warning per store ---------------------------------------
# Both are remembered in the process's session (lem.session.TrackingState): an unreachable store
# stays unavailable for the process, so a sweep does not wait for it again job after job.


def connect(target: Target) -> tuple[Any, str]:
    """``(MlflowClient, experiment_id)`` for ``target``, creating the experiment on first use.

    Raises TrackingUnavailable when the store cannot be reached; later calls for the same
    URI fail at once instead of waiting again.
    """
    state = current().tracking
    if target in state.connections:
        return state.connections[target]
    if target.uri in state.unavailable:
        raise TrackingUnavailable(state.unavailable[target.uri])
    try:
        with first_use_lock(target.uri):  # a fresh SQLite store: one process creates and migrates it
            client = open_client(target.uri)
            experiment_id = _ensure_experiment(client, target)
    except Exception as exc:  # noqa: BLE001 - any failure to open the store means "unavailable"
        reason = redact(error_line(exc))
        state.unavailable.setdefault(target.uri, reason)
        raise TrackingUnavailable(reason) from None
    state.connections[target] = (client, experiment_id)
    return client, experiment_id


def search_all_runs(client: Any, experiment_id: str, filter_string: str = "", order_by: list[str] | None = None) -> list[Any]:
    """Every run matching ``filter_string``, page after page (MLflow returns at most 1000 at a time)."""
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000, order_by=order_by, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def open_client(uri: str) -> Any:
    """An MlflowClient on ``uri`` (redacting what it sends; given up after its first transport failure),
    once the store answers (TrackingUnavailable at once when a server does not)."""
    from lem.tracking.client import GuardedClient, short_http_retries

    _probe(uri)
    _quiet_mlflow_logging()
    short_http_retries()
    from mlflow.tracking import MlflowClient

    return GuardedClient(MlflowClient(tracking_uri=uri), uri)


def pid_alive(pid: int) -> bool:
    """Whether a process of this host with ``pid`` exists (another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def first_use_lock(uri: str, timeout_s: float = 300.0) -> Any:
    """A file lock beside a SQLite store's database, held while a process creates or migrates it
    (MLflow's schema migration is not safe when two processes run it at once); a no-op elsewhere."""
    import contextlib

    db = sqlite_path(uri)
    if db is None:
        return contextlib.nullcontext()
    from filelock import FileLock

    db.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(db.parent / f".{db.name}.lock"), timeout=timeout_s)


def _probe(uri: str) -> None:
    """Fail fast: MLflow's own HTTP client retries for minutes before giving up."""
    if uri.startswith(("http://", "https://")):
        import urllib.request

        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as response:  # noqa: S310 - the user's server
                response.read(64)
        except Exception as exc:  # noqa: BLE001
            raise TrackingUnavailable(redact(f"no MLflow server answers at {uri} ({error_line(exc)})")) from None
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)


def _ensure_experiment(client: Any, target: Target) -> str:
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(target.experiment_name)
    if exp is None:
        try:
            from lem.tracking.view import experiment_tags

            return str(
                client.create_experiment(
                    target.experiment_name, artifact_location=target.artifact_location, tags=experiment_tags()
                )
            )
        except MlflowException:  # created meanwhile by a parallel job
            exp = client.get_experiment_by_name(target.experiment_name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    from lem.tracking.view import apply_experiment_view

    apply_experiment_view(client, str(exp.experiment_id))  # an experiment made before lem set its view gets it now
    return str(exp.experiment_id)


def _quiet_mlflow_logging() -> None:
    # Database migrations on a fresh store log a dozen INFO lines into the run's output.
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.store.sqlalchemy", "mlflow.tracking"):
        logging.getLogger(name).setLevel(logging.WARNING)


def warn_unavailable(target: Target, reason: str, results_path: str | os.PathLike[str] | None) -> None:
    """One warning line per store and process, saying where the results are and how to log them later."""
    warned = current().tracking.warned
    if target.uri in warned:
        return
    warned.add(target.uri)
    where = f"; local results are in {results_path}" if results_path else ""
    later = f"python -m lem sync {results_path}" if results_path else "python -m lem sync RESULTS_DIR"
    shown = redact(target.uri)
    if shown != target.uri:  # the run folder keeps the URI redacted: the password must be given again
        later += f" --tracking-uri '{shown}' (with the password)"
    print(
        f"lem: warning: MLflow tracking store {shown} unavailable ({redact(reason)}){where}; "
        f"log them later with: {later}",
        file=sys.stderr,
        flush=True,
    )


def warn_logging_failed(run_dir: str | os.PathLike[str], exc: BaseException, target: Target | None = None) -> None:
    """One line for a run that could not be logged; a store that went away is said once (``warn_unavailable``)."""
    if isinstance(exc, TrackingUnavailable) and target is not None:
        warn_unavailable(target, str(exc), run_dir)
        return
    if isinstance(exc, TrackingUnavailable) and current().tracking.warned:
        return  # the store's one warning, naming how to sync, is already out
    print(
        f"lem: warning: could not log {run_dir} to MLflow ({redact(error_line(exc))}); "
        f"the local results are complete; retry with: python -m lem sync {run_dir}",
        file=sys.stderr,
        flush=True,
    )


def reset_connections() -> None:
    """Forget connections and failures (tests; a long-lived process whose server came back)."""
    state = current().tracking
    state.connections.clear()
    state.unavailable.clear()
    state.warned.clear()


# --- provenance ----------------------------------------------------------------------------------


def git_commit(root: Path | None = None) -> tuple[str, bool] | None:
    """``(commit, dirty)`` of the project checkout, or None outside a git checkout."""
    root = root or project_root()
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        )
        return head.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None
