"""The sweep's lifecycle table: setup against generation per job, from the jobs' summaries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lem.report.lifecycle import (
    break_even_tokens,
    lifecycle_row,
    render_lifecycle,
    sweep_rows,
)


def summary(setup_s: list[float], setup_j: list[float | None], j_per_token: float, tok_s: float) -> dict:
    names = ("engine_init", "model_load", "warmup")[3 - len(setup_s):]
    phases = {n: {"wall_s": s, "energy_j": j} for n, s, j in zip(names, setup_s, setup_j)}
    phases["generation"] = {"wall_s": 10.0, "energy_j": 100.0}
    return {
        "phases": phases,
        "energy": {"j_per_output_token": j_per_token, "net_j_per_output_token": j_per_token / 4, "source": "estimated"},
        "throughput": {"output_tokens_per_s": tok_s},
        "latency": {"ttft_ms": {"p50": 120.0}, "tpot_ms": {"p50": 30.0}},
    }


def test_setup_sums_its_phases_and_a_reused_engine_says_so() -> None:
    row = lifecycle_row("backend=vllm", summary([10.0, 30.0, 2.0], [200.0, 700.0, 50.0], 0.2, 90.0))
    assert row["setup_s"] == 42.0 and row["setup_j"] == 950.0 and not row["engine_reused"]
    reused = lifecycle_row("b", summary([2.0], [50.0], 0.2, 90.0))
    assert reused["engine_reused"] and reused["setup_s"] == 2.0
    assert lifecycle_row("c", summary([1.0, 1.0, 1.0], [1.0, None, 1.0], 0.5, 1.0))["setup_j"] is None  # never a partial sum


def test_break_even_is_where_lower_per_token_energy_repays_a_costlier_setup() -> None:
    pytorch = lifecycle_row("pytorch", summary([2.0, 5.0, 1.0], [40.0, 100.0, 20.0], 0.6, 40.0))
    vllm = lifecycle_row("vllm", summary([10.0, 30.0, 2.0], [200.0, 700.0, 60.0], 0.2, 90.0))
    assert break_even_tokens(vllm, pytorch) == pytest.approx((960.0 - 160.0) / 0.4)
    assert break_even_tokens(pytorch, vllm) is None  # dearer per token: never pays off
    table = render_lifecycle([pytorch, vllm])
    assert "2,000 tok" in table and "estimated" in table and table.count("\n") == 4


def test_sweep_rows_read_every_finished_job_in_order_with_its_overrides(tmp_path: Path) -> None:
    for job, (backend, j) in enumerate([("pytorch", 0.6), ("vllm", 0.2), ("llama_cpp", 0.4)]):
        folder = tmp_path / str(job)
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(f"- backend={backend}\n- experiment=quick\n")  # shared: not in labels
        if backend != "llama_cpp":  # a failed job leaves no summary: no row
            (folder / "summary.json").write_text(json.dumps(summary([1.0, 2.0, 1.0], [10.0, 20.0, 5.0], j, 10.0)))
    assert [r["label"] for r in sweep_rows(tmp_path)] == ["backend=pytorch", "backend=vllm"]
