"""``python -m lem ui`` (``make ui``): the MLflow UI on 127.0.0.1 over the project's store.

One place builds the server command, so ``make ui`` and the browser test start the same
thing: ``mlflow server`` with the SQLite store under ``mlruns/``, its artifact folder, one
uvicorn worker, and MLflow's background job runner off (it only serves GenAI evaluation
jobs and would start eight more processes).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from lem.tracking.store import (
    ARTIFACTS_DIRNAME,
    DB_FILENAME,
    default_store_dir,
    sqlite_path,
)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000


def server_command(store_dir: Path, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, workers: int = 1,
                   backend_store_uri: str | None = None) -> list[str]:
    """The ``mlflow server`` command line for a store folder (``mlflow.db`` + ``artifacts/``)."""
    store_dir = store_dir.resolve()
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_store_uri or f"sqlite:///{store_dir / DB_FILENAME}",
        # Where runs created through the UI or a client without an artifact location go; lem's
        # own experiments already name their folder under the same root.
        "--default-artifact-root", str(store_dir / ARTIFACTS_DIRNAME),
        "--host", host,
        "--port", str(port),
        "--workers", str(workers),
    ]


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no huey job runner: faster start, fewer processes
    env.pop("MLFLOW_TRACKING_URI", None)  # the server's own store is given on its command line
    return env


def start_server(store_dir: Path, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, log_path: Path | None = None,
                 backend_store_uri: str | None = None) -> subprocess.Popen[bytes]:
    """Start the UI in the background (its own process group, so it can be stopped with its worker)."""
    out = open(log_path, "wb") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    return subprocess.Popen(
        server_command(store_dir, host=host, port=port, backend_store_uri=backend_store_uri),
        env=server_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )


def wait_until_up(url: str, timeout_s: float = 120.0, proc: subprocess.Popen[bytes] | None = None) -> float:
    """Seconds until ``url``/health answers; raises TimeoutError, or RuntimeError if the server exits."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the MLflow server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=2) as response:  # noqa: S310 - our server
                if response.status == 200:
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"no answer from {url} after {timeout_s:.0f} s")


def stop_server(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """SIGTERM the server's process group (mlflow's launcher and its uvicorn worker), then SIGKILL."""
    import signal

    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout_s)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=timeout_s)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lem ui", description="The MLflow UI over lem's runs, on 127.0.0.1.")
    parser.add_argument("--store", type=Path, default=None, help="store folder holding mlflow.db and artifacts/ (default: <project>/mlruns)")
    parser.add_argument("--host", default=DEFAULT_HOST, help="interface to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    args = parser.parse_args(argv)

    store_dir, backend = args.store, None
    if store_dir is None:
        env_uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
        if env_uri.startswith(("http://", "https://")):
            print(f"lem.ui: MLFLOW_TRACKING_URI points at a server: open {env_uri} in a browser", file=sys.stderr)
            return 2
        db = sqlite_path(env_uri) if env_uri else None
        if db is not None:  # the same store lem logs to
            store_dir, backend = db.parent, env_uri
        elif env_uri:
            store_dir, backend = default_store_dir(), env_uri  # e.g. postgresql://: artifacts stay under mlruns/
        else:
            store_dir = default_store_dir()
    store_dir.mkdir(parents=True, exist_ok=True)
    command = server_command(store_dir, host=args.host, port=args.port, backend_store_uri=backend)
    print(f"lem.ui: MLflow UI on http://{args.host}:{args.port} over {backend or store_dir / DB_FILENAME} (Ctrl-C stops it)", flush=True)
    experiment_id = _lem_experiment_id(store_dir / DB_FILENAME) if backend is None else None
    if experiment_id is not None:
        from lem.tracking.view import runs_url

        print(f"lem.ui: lem's runs by J/token: {runs_url(f'http://{args.host}:{args.port}', experiment_id)}", flush=True)
    import signal

    server = subprocess.Popen(command, env=server_env())
    # ``kill`` reaches only this process: pass it on, so the server never outlives its launcher.
    signal.signal(signal.SIGTERM, lambda *_: server.terminate())
    try:
        return server.wait()
    except KeyboardInterrupt:  # Ctrl-C also reached the server (same process group): let it finish shutting down
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.terminate()
            server.wait(timeout=10)
        return 0


def _lem_experiment_id(db: Path, name: str = "lem") -> str | None:
    """The id of the experiment lem logs to, read straight from the SQLite store (no MLflow import)."""
    import sqlite3

    if not db.is_file():
        return None
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            row = conn.execute("SELECT experiment_id FROM experiments WHERE name = ?", (name,)).fetchone()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None
