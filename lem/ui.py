"""``python -m lem.ui`` (``make ui``): the MLflow UI on 127.0.0.1 over the project's runs (see lem.tracking.ui)."""

from __future__ import annotations

from lem.tracking.ui import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
