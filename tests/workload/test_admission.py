"""lem's batching policy for engines that schedule themselves (lem.workload.admission), without an engine."""

from __future__ import annotations

import pytest

from lem.backends.registry import effective_batching
from lem.config.schema import BackendName, BatchingConfig, LemConfig
from lem.config.types import BatchingStrategy
from lem.workload.admission import Admission
from lem.workload.types import PreparedRequest


def req(request_id: int, input_tokens: int) -> PreparedRequest:
    return PreparedRequest(request_id=request_id, input_ids=tuple(range(1, input_tokens + 1)), text="", truncated=False)


def ids(handovers) -> list[int]:
    return [h.request.request_id for h in handovers]


def test_continuous_hands_over_on_arrival_up_to_batch_size_in_flight() -> None:
    requests = [req(i, 10) for i in range(5)]
    admission = Admission(requests, [0.0, 0.0, 0.0, 1.0, 2.0], BatchingConfig(BatchingStrategy.continuous, batch_size=2), 8)
    assert ids(admission.due(0.0)) == [0, 1]  # two slots
    assert admission.queued(0.0) == 1 and ids(admission.due(0.5)) == []  # full: request 2 waits in lem's queue
    admission.finished(0)
    assert ids(admission.due(0.5)) == [2]  # a finished request frees its slot at once
    admission.finished(1)
    assert ids(admission.due(0.9)) == [] and admission.wait_s(0.9) == pytest.approx(0.1)  # 3 has not arrived
    assert ids(admission.due(1.0)) == [3]
    for request_id in (2, 3):
        admission.finished(request_id)
    assert ids(admission.due(2.0)) == [4] and admission.handover(4).batch_id is None
    admission.finished(4)
    assert admission.done


def test_continuous_token_budget_is_first_come_first_served() -> None:
    requests = [req(0, 50), req(1, 50), req(2, 5)]
    # each request holds input + 10 output slots; the budget fits one 60-slot request and a 15-slot one
    admission = Admission(requests, [0.0] * 3, BatchingConfig(BatchingStrategy.continuous, batch_size=8, max_tokens_per_batch=80), 10)
    assert ids(admission.due(0.0)) == [0]  # request 1 does not fit beside 0, and 2 may not overtake it
    admission.finished(0)
    assert ids(admission.due(0.1)) == [1, 2]


def test_a_request_over_the_budget_alone_still_runs_alone() -> None:
    admission = Admission([req(0, 100)], [0.0], BatchingConfig(BatchingStrategy.continuous, batch_size=4, max_tokens_per_batch=20), 10)
    assert ids(admission.due(0.0)) == [0]


@pytest.mark.parametrize(
    ("strategy", "first_group"),
    [(BatchingStrategy.static, [0, 1]), (BatchingStrategy.sorted_static, [3, 1])],
)
def test_grouped_strategies_hand_over_lems_batches_and_wait_for_the_whole_group(strategy: BatchingStrategy, first_group: list[int]) -> None:
    requests = [req(0, 5), req(1, 30), req(2, 10), req(3, 40)]
    admission = Admission(requests, [0.0] * 4, BatchingConfig(strategy, batch_size=2), 8)
    group = admission.due(0.0)
    assert ids(group) == first_group and {h.batch_id for h in group} == {0} and {h.batch_size for h in group} == {2}
    admission.finished(first_group[0])
    assert admission.due(0.1) == []  # the rest of the group is still running
    admission.finished(first_group[1])
    second = admission.due(0.2)
    assert len(second) == 2 and {h.batch_id for h in second} == {1}


def test_grouped_batches_form_from_what_has_arrived() -> None:
    requests = [req(i, 10) for i in range(3)]
    admission = Admission(requests, [0.0, 0.5, 0.6], BatchingConfig(BatchingStrategy.static, batch_size=8), 8)
    assert ids(admission.due(0.0)) == [0]  # alone: nothing else had arrived
    admission.finished(0)
    assert ids(admission.due(1.0)) == [1, 2]


@pytest.mark.parametrize(
    ("engine", "asked", "runs"),
    [
        (BackendName.pytorch, BatchingStrategy.auto, BatchingStrategy.static),
        (BackendName.vllm, BatchingStrategy.auto, BatchingStrategy.continuous),
        (BackendName.vllm, BatchingStrategy.sorted_dynamic, BatchingStrategy.sorted_dynamic),
        (BackendName.tensorrt, BatchingStrategy.auto, BatchingStrategy.continuous),
        (BackendName.llama_cpp, BatchingStrategy.sorted_static, BatchingStrategy.continuous),
    ],
)
def test_auto_resolves_per_engine_and_a_serial_engine_runs_one_at_a_time(engine: BackendName, asked: BatchingStrategy, runs: BatchingStrategy) -> None:
    cfg = LemConfig()
    cfg.backend.name, cfg.batching.strategy = engine, asked
    batching = effective_batching(cfg)
    assert batching.strategy is runs
    assert batching.batch_size == (1 if engine is BackendName.llama_cpp else cfg.batching.batch_size)
