"""``python -m lem.export``: lem runs as CSV, from the MLflow store or from result folders (see lem.tracking.export)."""

from __future__ import annotations

from lem.tracking.export import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
