"""How many lem processes a sharded job runs as, and which GPUs each one meters.

PyTorch is parallelised by lem (a rank process per tensor-parallel shard or data-parallel replica);
vLLM and TensorRT-LLM start their own GPU workers for tensor/pipeline parallelism, so lem runs them
as one process whose energy meter watches every GPU the engine uses. No GPU needed: the configs are
built directly (validation of these engines asks for CUDA) and the functions read them only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lem import session
from lem.backends.registry import ENGINES, process_count, self_parallel
from lem.config.schema import BackendName, LemConfig
from lem.config.types import Device, Isolation, ShardingStrategy
from lem.launch import gpu_lease, job, ranks
from lem.pipeline import measured_cuda_indices

SELF_PARALLEL = [BackendName.vllm, BackendName.tensorrt]


def sharded_cfg(backend: BackendName, strategy: ShardingStrategy, num_shards: int = 1, num_processes: int = 1) -> LemConfig:
    cfg = LemConfig()
    cfg.backend.name = backend
    cfg.backend.device = Device.cuda
    cfg.sharding.strategy, cfg.sharding.num_shards, cfg.sharding.num_processes = strategy, num_shards, num_processes
    return cfg


def test_the_registry_marks_the_engines_that_start_their_own_workers() -> None:
    assert {name for name, engine in ENGINES.items() if engine.self_parallel} == {"vllm", "tensorrt"}
    assert self_parallel("vllm") and self_parallel("tensorrt")
    assert not self_parallel("pytorch") and not self_parallel("llama_cpp") and not self_parallel("no_such_engine")


@pytest.mark.parametrize("backend", SELF_PARALLEL)
@pytest.mark.parametrize("strategy", [ShardingStrategy.tensor_parallel, ShardingStrategy.pipeline_parallel])
def test_a_self_parallel_engine_is_one_process_metering_every_gpu(backend: BackendName, strategy: ShardingStrategy) -> None:
    cfg = sharded_cfg(backend, strategy, num_shards=2)
    assert process_count(cfg) == 1
    assert measured_cuda_indices(cfg) == [0, 1]
    assert gpu_lease.gpus_needed(cfg) == 2  # one process still leases the engine's tp x pp GPUs


@pytest.mark.parametrize("backend", SELF_PARALLEL)
def test_a_tp_by_pp_split_meters_tp_times_pp_gpus(backend: BackendName) -> None:
    cfg = sharded_cfg(backend, ShardingStrategy.tensor_parallel, num_shards=4)
    options = getattr(cfg.backend, backend.value)
    options.tensor_parallel_size, options.pipeline_parallel_size = 2, 2
    assert process_count(cfg) == 1
    assert measured_cuda_indices(cfg) == [0, 1, 2, 3]
    assert gpu_lease.gpus_needed(cfg) == 4


@pytest.mark.parametrize("backend", SELF_PARALLEL)
def test_a_self_parallel_engine_on_cpu_meters_no_gpu(backend: BackendName) -> None:
    cfg = sharded_cfg(backend, ShardingStrategy.tensor_parallel, num_shards=2)
    cfg.backend.device = Device.cpu
    assert measured_cuda_indices(cfg) == [] and gpu_lease.gpus_needed(cfg) == 0


def test_pytorch_keeps_a_process_per_rank() -> None:
    tp = sharded_cfg(BackendName.pytorch, ShardingStrategy.tensor_parallel, num_shards=2)
    assert process_count(tp) == 2
    assert [measured_cuda_indices(tp, local_rank=r) for r in (0, 1)] == [[0], [1]]  # each rank its own GPU
    assert gpu_lease.gpus_needed(tp) == 2
    pp = sharded_cfg(BackendName.pytorch, ShardingStrategy.pipeline_parallel, num_shards=2)
    assert process_count(pp) == 1 and measured_cuda_indices(pp) == [0, 1]  # one process drives every stage
    dp = sharded_cfg(BackendName.pytorch, ShardingStrategy.data_parallel, num_processes=3)
    assert process_count(dp) == 3 and measured_cuda_indices(dp, local_rank=2) == [2]
    assert process_count(sharded_cfg(BackendName.pytorch, ShardingStrategy.none)) == 1


# -- execute_job: where the job runs ---------------------------------------------------------------


@pytest.fixture
def launches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Record how ``execute_job`` runs a job instead of running it: in this process, a worker, or rank processes."""
    import lem.models.resolve
    import lem.pipeline

    calls: list[tuple[str, Any]] = []

    def measure(cfg: LemConfig, run_dir: Path, **kwargs: Any) -> dict[str, Any]:
        calls.append(("inline", kwargs.get("process_index", 0)))
        return {}

    class Workers:
        def run(self, cfg: LemConfig, run_dir: Path) -> dict[str, Any]:
            calls.append(("worker", None))
            return {}

    monkeypatch.setattr(lem.pipeline, "run_measurement", measure)
    monkeypatch.setattr(lem.pipeline, "report_summary", lambda cfg, run_dir: {})
    monkeypatch.setattr(lem.models.resolve, "resolve_model_path", lambda model: None)
    monkeypatch.setattr(ranks, "run_ranks", lambda cfg, run_dir: calls.append(("ranks", process_count(cfg))))
    monkeypatch.setattr(ranks, "launched_by_torchrun", lambda: False)
    monkeypatch.setattr(job, "workers", Workers)
    session.begin()
    yield calls
    session.begin()


@pytest.mark.parametrize("backend", SELF_PARALLEL)
@pytest.mark.parametrize(("isolation", "where"), [(Isolation.inline, "inline"), (Isolation.worker, "worker")])
def test_a_tensor_parallel_serving_engine_job_runs_as_one_process(
    launches: list, tmp_path: Path, backend: BackendName, isolation: Isolation, where: str
) -> None:
    cfg = sharded_cfg(backend, ShardingStrategy.tensor_parallel, num_shards=2)
    cfg.run.isolation = isolation
    job.execute_job(cfg, tmp_path)
    assert [kind for kind, _ in launches] == [where]  # no rank processes, each building the whole engine


def test_a_tensor_parallel_pytorch_job_runs_as_rank_processes(launches: list, tmp_path: Path) -> None:
    job.execute_job(sharded_cfg(BackendName.pytorch, ShardingStrategy.tensor_parallel, num_shards=2), tmp_path)
    assert launches == [("ranks", 2)]
