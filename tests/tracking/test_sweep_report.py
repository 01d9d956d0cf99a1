"""A sweep's parent run means what it says: the best job's headline metrics, the sweep's own params,
the verdict as its description and ``sweep/report.html``; the same verdict in the terminal."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import pytest

from lem.report.verdict import row_from_summary
from tests.tiny_model import make_tiny_model_dir
from tests.tracking.test_tracking import (
    FAST,
    MODEL_NAME,
    all_runs,
    artifact_paths,
    client_for,
    lem_env,
    run_lem,
    sqlite_uri,
)

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


def row(num: int, bs: str, j: float | None, tok_s: float | None, source: str = "nvml", status: str | None = None) -> dict[str, Any]:
    summary = {"energy": {"j_per_output_token": j, "net_j_per_output_token": j and j / 2, "source": source},
               "throughput": {"output_tokens_per_s": tok_s}, "latency": {"ttft_ms": {"p99": 20.0}}}
    return row_from_summary(summary if status != "failed" else None, num=num, swept={"batching.batch_size": bs},
                            status=status, run_id=f"run{num}", run_dir=f"/sweep/{num}")


# --- the HTML report -------------------------------------------------------------------------------------


def test_report_is_one_self_contained_page_with_a_sortable_table() -> None:
    from lem.tracking.html_report import sweep_report_html

    rows = [row(0, "1", 0.5, 10.0), row(1, "2", None, None, status="failed"), row(2, "4", 0.2, 40.0), row(3, "8", 0.3, 80.0),
            row(4, "16", 0.35, 60.0)]
    page = sweep_report_html(rows, title="lem sweep batching.batch_size", pareto_png=PNG, heatmap_png=PNG)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page) and "@import" not in page  # nothing fetched
    assert page.count('src="data:image/png;base64,') == 2 and base64.b64encode(PNG).decode() in page
    assert '<table id="jobs" class="sortable">' in page and "addEventListener('click'" in page and "<script>" in page
    body = page.split("<tbody>")[1].split("</tbody>")[0]
    trs = re.findall(r'<tr class="([^"]*)" data-run-id="[^"]*">(.*?)</tr>', body)
    assert [re.search(r">(#\d+)", cells).group(1) for _, cells in trs] == ["#2", "#3", "#4", "#0", "#1"]  # J/token, failed last
    assert [cls for cls, _ in trs] == ["completed best", "completed", "completed", "completed", "failed"]
    assert ["&#9733;" in cells for _, cells in trs] == [True, True, False, False, False]  # #4 is dominated by #3
    assert 'data-v="0.2"' in trs[0][1] and "run2" in trs[0][1] and "/sweep/2" in trs[0][1]
    assert '<tr class="completed best" data-run-id="run2">' in body  # a script (or the browser test) finds a job's row by its run id
    assert "best job #2 (least J/token): batching.batch_size=4" in page
    assert "estimated" not in page  # every figure measured


def test_report_says_estimated_where_energy_is_estimated() -> None:
    from lem.tracking.html_report import sweep_report_html

    page = sweep_report_html([row(0, "1", 0.5, 10.0, source="estimated"), row(1, "2", 0.2, 40.0, source="estimated")], title="t")
    assert "<th>J/token gross (estimated)</th>" in page and "Energy: estimated (a model" in page
    mixed = sweep_report_html([row(0, "1", 0.5, 10.0, source="estimated"), row(1, "2", 0.2, 40.0)], title="t")
    assert "<th>J/token gross (est. = estimated)</th>" in mixed and "0.500 est.</td>" in mixed and "0.200 est." not in mixed


# --- the parent run of a real sweep -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_job_sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("sweep-report")
    model = make_tiny_model_dir(tmp / MODEL_NAME)
    uri = sqlite_uri(tmp / "mlflow.db")
    sweep_dir = tmp / "multirun"
    result = run_lem(["lem", "-m", "batching.batch_size=1,2", f"model.name_or_path={model}", f"hydra.sweep.dir={sweep_dir}",
                      f"tracking.tracking_uri={uri}", *FAST], cwd=tmp, env=lem_env())
    return {"tmp": tmp, "uri": uri, "sweep_dir": sweep_dir, "result": result}


def test_parent_holds_the_sweep_params_and_the_best_jobs_headline(two_job_sweep: dict[str, Any]) -> None:
    from lem.tracking.metrics import HEADLINE_METRICS
    from lem.tracking.parent_verdict import OLD_NAMES

    result = two_job_sweep["result"]
    assert result.returncode == 0, result.stderr[-3000:]
    client = client_for(two_job_sweep["uri"])
    runs = all_runs(client)
    parent = next(r for r in runs if r.data.tags.get("lem.kind") == "sweep")
    children = [r for r in runs if r is not parent]
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)

    def metric(run: Any, name: str) -> float | None:  # a child logged before the headline/ names has the old ones
        return run.data.metrics.get(name, run.data.metrics.get(OLD_NAMES[name]))

    best = min(children, key=lambda c: metric(c, "headline/j_per_output_token"))
    assert parent.data.tags["lem.best_run_id"] == best.info.run_id
    assert parent.data.tags["lem.best_job_num"] == best.data.tags["lem.job_num"]
    assert parent.data.tags["lem.best.batching.batch_size"] == best.data.params["batching.batch_size"]
    for name in HEADLINE_METRICS:
        if metric(best, name) is not None:
            assert parent.data.metrics[name] == pytest.approx(metric(best, name)), name
    assert parent.data.metrics["headline/j_per_output_token"] > 0
    assert {k for k in parent.data.metrics if not k.startswith("headline/")} == {"sweep/n_jobs", "sweep/n_finished", "sweep/n_failed"}

    # params: the sweep's own overrides, not the base config's defaults
    assert parent.data.params["batching.batch_size"] == "1,2"
    assert parent.data.params["dataset.n_prompts"] == "6"
    assert "decoder.temperature" not in parent.data.params and "backend.name" not in parent.data.params
    assert not any(k.startswith("hydra.") for k in parent.data.params)

    note = parent.data.tags["mlflow.note.content"]
    assert f"best job #{best.data.tags['lem.job_num']} (least J/token): batching.batch_size=" in note and best.info.run_id in note
    assert "sweep/report.html" in artifact_paths(client, parent.info.run_id)
    page = Path(client.download_artifacts(parent.info.run_id, "sweep/report.html", str(two_job_sweep["tmp"] / "dl"))).read_text()
    assert best.info.run_id in page and 'class="completed best"' in page and "data:image/png;base64," in page


def test_terminal_verdict_names_the_best_job_and_its_run(two_job_sweep: dict[str, Any]) -> None:
    result = two_job_sweep["result"]
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "lem sweep verdict: 2 jobs, 0 failed" in out
    client = client_for(two_job_sweep["uri"])
    parent = next(r for r in all_runs(client) if r.data.tags.get("lem.kind") == "sweep")
    best_line = next(line for line in out.splitlines() if line.startswith("best job"))
    assert f"MLflow run {parent.data.tags['lem.best_run_id']}" in best_line
    assert f"folder {two_job_sweep['sweep_dir'] / parent.data.tags['lem.best_job_num']}" in best_line
    assert out.index("lem sweep verdict") < out.index("setup against generation")  # the verdict first
