"""``python -m lem.sync PATH...``: log result folders to MLflow later, skipping runs already there (see lem.tracking.sync)."""

from __future__ import annotations

from lem.tracking.sync import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
