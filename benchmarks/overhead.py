"""lem's measured generation path vs a bare transformers `generate` loop (target ratio >= 0.98).

Both sides use the same loaded model object, the same prepared token ids, the same batches
and greedy decoding, so they produce the same tokens. The lem side is what a measured run
does in its generation phase: open-loop scheduling, `PyTorchBackend.generate` (per-step
token timer, device sync), engine-independent token accounting, appending raw records with
fsync, and the energy meter's sampler thread running beside it. The bare side is
`model.generate` on the same padded tensors. Repeats alternate the order (lem first, then
bare first) so drift on a shared CPU falls on both sides; the ratio of medians is printed.

    python benchmarks/overhead.py            # embedded model, 16 prompts x 32 tokens, 5 repeats
    LEM_BENCH_REPEATS=9 python benchmarks/overhead.py
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

REPEATS = int(os.environ.get("LEM_BENCH_REPEATS", "5"))
N_PROMPTS = int(os.environ.get("LEM_BENCH_PROMPTS", "16"))
MAX_OUTPUT_TOKENS = int(os.environ.get("LEM_BENCH_OUTPUT_TOKENS", "32"))
BATCH_SIZE = int(os.environ.get("LEM_BENCH_BATCH", "8"))
NUM_THREADS = int(os.environ.get("LEM_BENCH_THREADS", "2"))


def main() -> None:
    import torch

    from lem.backends.base import EngineSpec
    from lem.backends.pytorch.engine import PyTorchBackend
    from lem.config.schema import LemConfig
    from lem.config.types import Device
    from lem.pipeline import _energy_meter
    from lem.results.writer import RawWriter
    from lem.workload.batching import plan_batches
    from lem.workload.prepare import prepare_requests
    from lem.workload.prompts import load_prompts
    from lem.workload.serve import PhaseClock, generation_params, serve_open_loop
    from lem.workload.tokens import count_output_tokens
    from lem.workload.traffic import arrival_offsets_s

    cfg = LemConfig()
    cfg.backend.device = Device.cpu
    cfg.backend.pytorch.num_threads = NUM_THREADS
    cfg.dataset.n_prompts = N_PROMPTS
    cfg.dataset.max_output_tokens = MAX_OUTPUT_TOKENS
    cfg.batching.batch_size = BATCH_SIZE

    backend = PyTorchBackend(EngineSpec.of(cfg))
    backend.init_engine()
    backend.load_model()
    requests = prepare_requests(load_prompts(cfg.dataset), backend.tokenizer, cfg.model, cfg.dataset.max_input_tokens)
    batches = plan_batches(requests, cfg.batching, cfg.dataset.max_output_tokens)
    params = generation_params(cfg)
    gen_kwargs = backend._generation_kwargs(params)
    pad_id = backend._pad_id
    model = backend.model

    padded = []
    for batch in batches:
        width = max(r.input_tokens for r in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, r in enumerate(batch):
            ids[row, width - r.input_tokens :] = torch.tensor(r.input_ids)
            mask[row, width - r.input_tokens :] = 1
        padded.append((ids, mask, width))

    offsets_s = arrival_offsets_s(len(requests), cfg.traffic)
    meter = _energy_meter(cfg.energy, None, None, True).start()  # sampler thread on, as in a measured run

    def run_lem(tmp: Path, rep: int) -> tuple[float, int]:
        clock = PhaseClock()
        total = 0
        start = time.perf_counter()
        with RawWriter(tmp / f"lem-{rep}.jsonl") as writer:
            for served in serve_open_loop(backend, requests, offsets_s, cfg, params, clock):
                for record in served:
                    writer.write(record)
                    total += record.output_tokens
        return time.perf_counter() - start, total

    def run_bare() -> tuple[float, int]:
        total = 0
        start = time.perf_counter()
        with torch.inference_mode():
            for ids, mask, width in padded:
                out = model.generate(input_ids=ids, attention_mask=mask, **gen_kwargs)
                for row in out[:, width:].tolist():
                    total += count_output_tokens(row, backend.eos_token_ids, params.ignore_eos)[0]
        return time.perf_counter() - start, total

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        run_bare()  # warm both paths (allocator, kernels); not counted
        run_lem(tmp, -1)
        lem_tps, bare_tps = [], []
        for rep in range(REPEATS):
            order = ("lem", "bare") if rep % 2 == 0 else ("bare", "lem")
            for side in order:
                if side == "lem":
                    elapsed_s, tokens = run_lem(tmp, rep)
                    lem_tps.append(tokens / elapsed_s)
                    lem_tokens = tokens
                else:
                    elapsed_s, tokens = run_bare()
                    bare_tps.append(tokens / elapsed_s)
                    bare_tokens = tokens
            if lem_tokens != bare_tokens:
                raise SystemExit(f"token counts differ: lem {lem_tokens}, bare {bare_tokens}")

    meter.stop()
    ratios = [a / b for a, b in zip(lem_tps, bare_tps)]
    load_1m = os.getloadavg()[0]
    print(
        f"lem vs bare transformers generate: embedded model, {N_PROMPTS} prompts x {MAX_OUTPUT_TOKENS} tokens, "
        f"batch {BATCH_SIZE}, {NUM_THREADS} torch threads, {REPEATS} alternating repeats; "
        f"load average (1 min) {load_1m:.2f} on {os.cpu_count()} CPUs"
    )
    print(f"  lem   output tokens/s: median {statistics.median(lem_tps):8.1f}  ({', '.join(f'{v:.1f}' for v in lem_tps)})")
    print(f"  bare  output tokens/s: median {statistics.median(bare_tps):8.1f}  ({', '.join(f'{v:.1f}' for v in bare_tps)})")
    # Each repeat's pair ran back to back, so the median of the per-repeat ratios is robust to load that
    # comes and goes on a shared machine; the ratio of medians is printed beside it.
    ratio = statistics.median(ratios)
    verdict = "meets" if ratio >= 0.98 else "BELOW"
    print(
        f"  lem / bare throughput: {ratio:.3f} (median of per-repeat ratios {', '.join(f'{r:.3f}' for r in ratios)}; "
        f"ratio of medians {statistics.median(lem_tps) / statistics.median(bare_tps):.3f}) -> {verdict} the 0.98 target"
    )


if __name__ == "__main__":
    main()
