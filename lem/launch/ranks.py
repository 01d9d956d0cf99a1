"""Multi-process runs: data parallel (replicas, each a share of the prompts) and tensor parallel (ranks).

``python -m lem sharding=data_parallel sharding.num_processes=4`` and
``python -m lem sharding=tensor_parallel sharding.num_shards=4`` need no torchrun: lem spawns
the ranks itself with torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT), one per device, into one run directory; each rank writes its own raw record file
and the launching process computes the summary from all of them once every rank has finished.
Launched by torchrun instead (``torchrun --nproc-per-node 4 -m lem ... hydra.run.dir=DIR``, the
same directory for every rank), each process runs its own rank and rank 0 writes the summary.
This is PyTorch's way: vLLM and TensorRT-LLM start their own GPU workers for tensor/pipeline
parallelism, so their jobs run as one process (``lem.backends.registry.process_count``).

A gloo process group (beside NCCL for tensor parallel on GPUs) lines the ranks up before the
measured generation phase starts, so their windows overlap; the summary checks that they did.
"""

from __future__ import annotations

import os
import socket
import traceback
from pathlib import Path
from typing import Any

from lem.config.schema import LemConfig
from lem.errors import LemError

RANK_ERROR_FILE = "error-rank-{rank}.txt"


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


class RankGroup:
    """This process's place among the ranks, with a barrier that lines them up (no-op alone)."""

    def __init__(self, rank: int = 0, size: int = 1, local_rank: int = 0) -> None:
        self.rank, self.size, self.local_rank = rank, size, local_rank
        self._group: Any = None

    @classmethod
    def from_env(cls) -> RankGroup:
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0")))

    def start(self) -> RankGroup:
        if self.size > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group(backend="gloo")
                self._group = dist.group.WORLD
            else:  # tensor parallel already made one (NCCL on GPUs): a gloo group beside it for CPU barriers
                self._group = dist.new_group(backend="gloo")
        return self

    def barrier(self) -> None:
        if self._group is not None:
            import torch.distributed as dist

            dist.barrier(group=self._group)

    def close(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    @property
    def measures_host(self) -> bool:
        """Only one rank per host reads host-wide meters (CPU package, DRAM, estimates), so none is counted twice."""
        return self.local_rank == 0


def run_ranks(cfg: LemConfig, run_dir: Path) -> None:
    """Spawn one process per rank, wait for all; raise LemError naming the ranks that failed."""
    import multiprocessing as mp

    from lem.backends.registry import process_count
    from lem.launch.gpu_lease import lease_for

    size = process_count(cfg)
    port = _free_port()
    ctx = mp.get_context("spawn")  # a clean interpreter per rank: no CUDA state inherited
    lease = lease_for(cfg)  # every rank's GPU, held until all ranks are done
    from lem.report.sweep_label import sweep_label

    label = sweep_label()  # "job 2 of 6": read here, where Hydra's job is; rank 0 shows it
    procs = [ctx.Process(target=_rank_main, args=(cfg, str(run_dir), rank, size, port, label), name=f"lem-rank-{rank}") for rank in range(size)]
    # Every rank sees the leased GPUs (inherited at start); LOCAL_RANK picks its own among them.
    env = {"CUDA_VISIBLE_DEVICES": lease.cuda_visible_devices} if lease is not None else None
    try:
        from lem.launch import spawn

        for p in procs:
            spawn.start(p, env)
        for p in procs:
            p.join()
    except BaseException:
        for p in procs:
            if p.is_alive():
                p.terminate()
        raise
    finally:
        from lem.launch.gpu_lease import restore_settings_left_by

        restore_settings_left_by(p.pid for p in procs if not p.is_alive())  # a killed rank's GPU settings, before the GPUs are free
        if lease is not None:
            lease.release()
    failed = [(rank, p.exitcode) for rank, p in enumerate(procs) if p.exitcode != 0]
    if failed:
        reasons = []
        for rank, code in failed:
            path = run_dir / RANK_ERROR_FILE.format(rank=rank)
            last = path.read_text().strip().splitlines()[-1] if path.is_file() and path.read_text().strip() else f"exit code {code}"
            reasons.append(f"rank {rank}: {last}")
        raise LemError(f"{len(failed)} of {size} ranks failed ({'; '.join(reasons)})")


def _rank_main(cfg: LemConfig, run_dir: str, rank: int, size: int, port: int, label: str | None = None) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if cfg.backend.pytorch.num_threads is None:
        # Replicas share the host's cores: an even split instead of every rank claiming them all.
        cfg.backend.pytorch.num_threads = max(1, (os.cpu_count() or 1) // size)
    try:
        run_rank(cfg, Path(run_dir), label=label)
    except BaseException as exc:  # the launcher reads why from the run directory
        Path(run_dir, RANK_ERROR_FILE.format(rank=rank)).write_text(
            "".join(traceback.format_exception(exc)) if not isinstance(exc, LemError) else f"{exc}\n"
        )
        raise SystemExit(1) from None


def run_rank(cfg: LemConfig, run_dir: Path, *, summarize: bool = False, label: str | None = None) -> dict[str, Any] | None:
    """Run this process's rank of a multi-process job; with ``summarize`` rank 0 writes the summary at the end.

    Rank 0 shows the live progress (``label``: "job 2 of 6" in a sweep), for its own share of the requests.
    """
    from lem.pipeline import run_measurement

    group = RankGroup.from_env().start()
    try:
        run_measurement(cfg, run_dir, process_index=group.rank, world_size=group.size, group=group, summarize=False, label=label)
        group.barrier()  # every rank's records are complete before anyone summarizes
    finally:
        group.close()
    if summarize and group.rank == 0:
        from lem.pipeline import report_summary

        return report_summary(cfg, run_dir)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
