"""``study_visit.json``: where one job stood in its study, written into its folder before it starts.

Read into the job's summary (``summary.study``) by ``lem.results.summarize``; kept apart from
``lem.study.state`` so reading a run folder imports nothing of the study machinery.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VISIT_FILE = "study_visit.json"


def read_visit_file(run_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(run_dir) / VISIT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
