"""Output token ids in the request records (issue 16, item 11): what lem counted, and the checks they allow."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from lem.config.compose import compose_config
from lem.errors import LemError
from lem.records import RequestRecord, to_json_dict
from lem.results.token_ids import greedy_from_config, token_id_checks, token_id_warnings
from lem.workload.serve import PhaseClock, generation_params, request_record
from lem.workload.types import GenerationParams, PreparedRequest

EOS = 2


@dataclass
class _Engine:
    eos_token_ids: frozenset[int] = frozenset({EOS})


@dataclass
class _Raw:
    output_token_ids: list[int]
    token_times: list[float]
    start_time: float
    padded_input_tokens: int | None = None


def _record(output_ids: list[int], *, record_ids: bool, ignore_eos: bool = False) -> RequestRecord:
    clock = PhaseClock()
    raw = _Raw(output_ids, [clock.t0 + 0.1 * (i + 1) for i in range(len(output_ids))], clock.t0)
    request = PreparedRequest(3, (1, 5, EOS, 1, 6), "prompt", False)
    params = GenerationParams(max_output_tokens=len(output_ids), ignore_eos=ignore_eos, record_token_ids=record_ids)
    return request_record(_Engine(), request, raw, 0.0, 0, 1, params, clock)


def test_record_holds_the_tokens_lem_counted_eos_included_padding_not() -> None:
    record = _record([7, 8, EOS, EOS, EOS], record_ids=True)  # a batched row padded with the EOS id after it stopped
    assert record.output_token_ids == [7, 8, EOS]
    assert len(record.output_token_ids) == record.output_tokens
    assert record.finish_reason == "stop"


def test_ignore_eos_keeps_every_token_in_the_ids() -> None:
    record = _record([7, EOS, 9], record_ids=True, ignore_eos=True)
    assert record.output_token_ids == [7, EOS, 9] and record.output_tokens == 3


def test_off_writes_null_not_an_empty_list() -> None:
    record = _record([7, 8, EOS], record_ids=False)
    assert record.output_token_ids is None
    assert json.loads(json.dumps(to_json_dict(record)))["output_token_ids"] is None


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], True),  # 64 prompts x 1 cycle x 64 tokens
        (["dataset.n_prompts=1000", "cycles=10", "dataset.max_output_tokens=100"], True),  # exactly 1,000,000
        (["dataset.n_prompts=1000", "cycles=10", "dataset.max_output_tokens=101"], False),
        (["dataset.n_prompts=100000", "run.record_token_ids=on"], True),
        (["run.record_token_ids=off"], False),
    ],
)
def test_auto_records_ids_for_runs_up_to_a_million_output_tokens(overrides: list[str], expected: bool) -> None:
    _, cfg = compose_config(overrides)
    assert generation_params(cfg).record_token_ids is expected


def test_an_unknown_setting_is_refused_in_one_line() -> None:
    with pytest.raises(LemError) as refused:
        compose_config(["run.record_token_ids=sometimes"])
    message = str(refused.value)
    assert "run.record_token_ids" in message and "\n" not in message


def _req(request_id: int, ids: list[int] | None, cycle: int = 0, output_tokens: int | None = None) -> dict:
    n = len(ids) if ids is not None else 4
    return {"kind": "request", "request_id": request_id, "cycle": cycle, "output_tokens": n if output_tokens is None else output_tokens, "output_token_ids": ids}


def test_checks_find_a_count_that_disagrees_with_the_ids() -> None:
    checks = token_id_checks([_req(0, [1, 2]), _req(1, [3, 4], output_tokens=3)], greedy=False)
    assert checks["ids_match_output_tokens"] is False
    assert checks["mismatched_request_ids"] == [1]
    assert checks["deterministic_across_cycles"] is None  # sampled: not expected to repeat


def test_greedy_cycles_must_repeat_every_request_exactly() -> None:
    same = [_req(0, [1, 2], cycle=0), _req(0, [1, 2], cycle=1), _req(1, [5], cycle=0), _req(1, [5], cycle=1)]
    assert token_id_checks(same, greedy=True)["deterministic_across_cycles"] is True
    drift = same[:3] + [_req(1, [6, EOS], cycle=1)]
    checks = token_id_checks(drift, greedy=True)
    assert checks["deterministic_across_cycles"] is False
    assert checks["nondeterministic_request_ids"] == [1]
    assert checks["ids_match_output_tokens"] is True
    assert token_id_warnings(checks) == ["greedy decoding gave different tokens across cycles for 1 of 2 requests (request_id [1])"]
    assert token_id_checks(drift, greedy=greedy_from_config({"decoder": {"do_sample": True}}))["deterministic_across_cycles"] is None
    assert token_id_checks(drift, greedy=greedy_from_config(None))["deterministic_across_cycles"] is None


def test_old_records_without_the_field_give_null_checks() -> None:
    old = {"kind": "request", "request_id": 0, "cycle": 0, "output_tokens": 4, "finish_reason": "length"}  # before the field
    checks = token_id_checks([old, dict(old, cycle=1)], greedy=True)
    assert checks["records_with_token_ids"] == 0
    assert checks["ids_match_output_tokens"] is None
    assert checks["deterministic_across_cycles"] is None
