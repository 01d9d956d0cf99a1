"""``python -m lem.summarize RUN_DIR...``: recompute summary.json from raw records (see lem.results.summarize)."""

from __future__ import annotations

from lem.results.summarize import main, write_summary

__all__ = ["main", "write_summary"]

if __name__ == "__main__":
    raise SystemExit(main())
