"""The sweep's verdict: every job sorted by J/token, Pareto rows marked, the best named with its run."""

from __future__ import annotations

from typing import Any

from lem.report.verdict import (
    best_of,
    noise_warnings,
    pareto_flags,
    ranked,
    render_verdict,
    row_from_summary,
)


def summary(j: float | None, tok_s: float | None, *, net: float | None = None, ttft_p99: float = 50.0,
            source: str = "nvml", cycles: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "status": "completed",
        "energy": {"j_per_output_token": j, "net_j_per_output_token": net, "source": source},
        "throughput": {"output_tokens_per_s": tok_s},
        "latency": {"ttft_ms": {"p50": 10.0, "p99": ttft_p99}},
    }
    if cycles is not None:
        out["cycles"] = {"n_cycles": cycles}
    return out


def job(num: int, bs: str, j: float | None, tok_s: float | None, **kw: Any) -> dict[str, Any]:
    status = kw.pop("status", None)
    extra = {k: kw.pop(k) for k in ("run_id", "run_dir") if k in kw}
    return row_from_summary(summary(j, tok_s, **kw) if status != "failed" else None, num=num, swept={"batching.batch_size": bs},
                            status=status, **extra)


def test_rows_sort_by_j_per_token_with_failed_last_and_the_front_marked() -> None:
    rows = [
        job(0, "1", 0.50, 10.0),
        job(1, "2", None, None, status="failed"),
        job(2, "4", 0.20, 40.0, run_id="abc123", run_dir="/sweep/2"),
        job(3, "8", 0.30, 80.0),
        job(4, "16", 0.35, 60.0),  # dominated by #3: more J/token and fewer tok/s
    ]
    order = ranked(rows)
    assert [r["label"] for r in order] == ["#2", "#3", "#4", "#0", "#1"]
    assert pareto_flags(order) == [True, True, False, False, False]
    assert best_of(rows)["label"] == "#2"

    text = render_verdict(rows)
    lines = text.splitlines()
    table = [line for line in lines if line.lstrip().startswith("#")]
    assert [line.split()[0] for line in table] == ["#2", "#3", "#4", "#0", "#1"]
    assert table[0].rstrip().endswith("*") and table[1].rstrip().endswith("*") and not table[2].rstrip().endswith("*")
    assert "failed" in table[-1]
    assert "batch_size" in lines[1] and "TTFT p99 ms" in lines[1]
    best = next(line for line in lines if line.startswith("best job"))
    assert "#2" in best and "batching.batch_size=4" in best and "MLflow run abc123" in best and "folder /sweep/2" in best
    assert "energy: nvml" in text


def test_estimated_energy_is_labelled_and_mixed_sources_mark_each_figure() -> None:
    estimated = render_verdict([job(0, "1", 0.5, 10.0, source="estimated"), job(1, "2", 0.2, 40.0, source="estimated")])
    assert "J/tok (estimated)" in estimated.splitlines()[1] and "energy: estimated" in estimated
    assert "net (estimated)" in next(line for line in estimated.splitlines() if line.startswith("best job"))
    mixed = render_verdict([job(0, "1", 0.5, 10.0, source="estimated"), job(1, "2", 0.2, 40.0, source="nvml")])
    assert "0.500 est." in mixed and "0.200 est." not in mixed


def test_one_cycle_jobs_closer_than_the_noise_get_a_warning() -> None:
    rows = [job(0, "1", 0.200, 40.0), job(1, "2", 0.2042, 41.0), job(2, "4", 0.30, 50.0)]
    warnings = noise_warnings(rows)
    assert warnings == ["jobs #0 and #1 differ by 2.1 % in J/token from one cycle each: within run-to-run noise; "
                        "set cycles=3 or more to separate them"]
    assert "warning: jobs #0 and #1 differ by 2.1 %" in render_verdict(rows)
    # Several cycles each: the jobs' own spread decides, not this rule.
    assert noise_warnings([job(0, "1", 0.200, 40.0, cycles=3), job(1, "2", 0.2042, 41.0, cycles=3)]) == []
    assert noise_warnings([job(0, "1", 0.200, 40.0), job(1, "2", 0.30, 41.0)]) == []


def test_no_energy_names_the_fastest_and_no_completed_job_names_none() -> None:
    rows = [job(0, "1", None, 10.0), job(1, "2", None, 40.0)]
    assert best_of(rows)["label"] == "#1"
    assert "best job #1 (most tok/s; J/token not measured)" in render_verdict(rows)
    failed = [job(0, "1", None, None, status="failed")]
    assert best_of(failed) is None and "best job: none" in render_verdict(failed)
    assert "best trial: none" in render_verdict(failed, best=None, what="trial")


def test_with_latency_objectives_each_job_shows_j_per_good_token_and_the_share_good() -> None:
    def with_slo(num: int, bs: str, j: float, good_j: float | None, good: float) -> dict[str, Any]:
        s = {**summary(j, 50.0), "goodput": {"j_per_good_output_token": good_j, "good_fraction": good}}
        return row_from_summary(s, num=num, swept={"batching.batch_size": bs})

    text = render_verdict([with_slo(0, "16", 0.20, 0.80, 0.25), with_slo(1, "4", 0.30, 0.30, 1.0), with_slo(2, "64", 0.10, None, 0.0)])
    lines = text.splitlines()
    assert "J/good tok" in lines[1] and " good " in lines[1]
    rows = {line.split()[0]: line.split() for line in lines if line.lstrip().startswith("#")}
    assert rows["#0"][4:6] == ["0.800", "25"] and rows["#1"][4:6] == ["0.300", "100"]
    assert rows["#2"][4:6] == ["—", "0"]  # no request good: no energy per good token, never 0
    assert "no request met the latency objectives" in next(line for line in lines if line.startswith("best job"))  # least J/token
    study_best = render_verdict([with_slo(1, "4", 0.30, 0.30, 1.0)], best=with_slo(1, "4", 0.30, 0.30, 1.0), why="minimize J/good token")
    assert "(minimize J/good token)" in study_best and "0.300 J per good token (100 % of requests good)" in study_best
    assert "J/good tok" not in render_verdict([job(0, "1", 0.5, 10.0)])  # no objectives: no such column
