"""``lem model`` (``python -m lem model``): prepare the embedded model's cache (converting the GGUF on first use) and print its path."""

from __future__ import annotations

import logging
import sys

from lem.errors import LemError


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print("usage: lem model\n\nPrepare the embedded model (SmolLM2-135M-Instruct) cache and print its directory.")
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    from lem.models.embedded import ensure_embedded_model

    try:
        path = ensure_embedded_model()
    except LemError as e:
        print(f"lem: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
