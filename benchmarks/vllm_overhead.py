"""lem's vLLM backend vs a bare ``vllm.LLM.generate`` on the same prompts and settings (target ratio >= 0.95).

lem steps the engine itself (``LLMEngine.add_request`` + ``step``) so it can time every streamed
token, hand requests over at their arrival times and log the scheduler's batch per step; this
measures what that costs against vLLM's own offline loop. Both engines are built from the same
engine arguments (lem's mapping of the config: float32 on a CPU without AMX, eager, no prefix
caching), get the same token ids, greedy decoding with ``ignore_eos`` (so both produce exactly
the same number of tokens), and every request at once (lem: ``batching=continuous`` with
``batch_size`` = the number of prompts). The two engines are built once and alternate, lem first
then bare first, ``LEM_BENCH_REPEATS`` pairs; the ratio of median output tokens/s is printed with
the load average, which says how quiet the machine was.

    make vllm && python benchmarks/vllm_overhead.py       # 16 prompts x 32 tokens, 5 pairs
    LEM_BENCH_REPEATS=9 python benchmarks/vllm_overhead.py
"""

from __future__ import annotations

import os
import statistics
import time

REPEATS = int(os.environ.get("LEM_BENCH_REPEATS", "5"))
N_PROMPTS = int(os.environ.get("LEM_BENCH_PROMPTS", "16"))
MAX_OUTPUT_TOKENS = int(os.environ.get("LEM_BENCH_OUTPUT_TOKENS", "32"))


def main() -> None:
    from lem.backends.registry import create_engine, effective_batching
    from lem.config.schema import BackendName, LemConfig
    from lem.config.types import BatchingStrategy, Device
    from lem.workload.prepare import prepare_requests
    from lem.workload.prompts import load_prompts
    from lem.workload.serve import PhaseClock, generation_params, serve_open_loop
    from lem.workload.steps import StepLog

    cfg = LemConfig()
    cfg.backend.name, cfg.backend.device = BackendName.vllm, Device.cpu
    cfg.dataset.n_prompts, cfg.dataset.max_output_tokens, cfg.dataset.ignore_eos = N_PROMPTS, MAX_OUTPUT_TOKENS, True
    cfg.batching.strategy, cfg.batching.batch_size = BatchingStrategy.continuous, N_PROMPTS

    backend = create_engine(cfg)
    backend.init_engine()
    backend.load_model()
    requests = prepare_requests(load_prompts(cfg.dataset), backend.tokenizer, cfg.model, cfg.dataset.max_input_tokens)
    params = generation_params(cfg)

    import vllm
    from vllm.sampling_params import RequestOutputKind

    engine_args = {"model": backend.describe().extra["model_path"], **backend.describe().extra["engine_args"]}
    bare = vllm.LLM(**engine_args)
    sampling = vllm.SamplingParams(
        max_tokens=MAX_OUTPUT_TOKENS, ignore_eos=True, temperature=0.0, detokenize=False, output_kind=RequestOutputKind.FINAL_ONLY
    )
    prompts = [{"prompt_token_ids": list(r.input_ids)} for r in requests]

    def run_lem() -> float:
        clock = PhaseClock()
        start = time.perf_counter()
        records = [rec for batch in serve_open_loop(backend, requests, [0.0] * len(requests), effective_batching(cfg), params, clock, StepLog("bench")) for rec in batch]
        wall = time.perf_counter() - start
        return sum(r.output_tokens for r in records) / wall

    def run_bare() -> float:
        start = time.perf_counter()
        outputs = bare.generate(prompts, sampling, use_tqdm=False)
        wall = time.perf_counter() - start
        return sum(len(o.outputs[0].token_ids) for o in outputs) / wall

    run_lem(), run_bare()  # warm both engines on these shapes
    lem_rates, bare_rates = [], []
    for i in range(REPEATS):
        order = (run_lem, run_bare) if i % 2 == 0 else (run_bare, run_lem)
        for fn in order:
            (lem_rates if fn is run_lem else bare_rates).append(fn())
        print(f"pair {i + 1}: lem {lem_rates[-1]:.1f} tok/s, bare {bare_rates[-1]:.1f} tok/s", flush=True)
    ratio = statistics.median(lem_rates) / statistics.median(bare_rates)
    load = os.getloadavg()
    print(
        f"\nvLLM {vllm.__version__} (CPU build), {N_PROMPTS} prompts x {MAX_OUTPUT_TOKENS} tokens, {REPEATS} alternating pairs\n"
        f"  lem  median {statistics.median(lem_rates):.1f} tok/s\n"
        f"  bare median {statistics.median(bare_rates):.1f} tok/s (vllm.LLM.generate)\n"
        f"  lem / bare = {ratio:.3f} (target >= 0.95); load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    backend.unload()
    bare.llm_engine.engine_core.shutdown()


if __name__ == "__main__":  # vLLM spawns its engine core: building it must sit under this guard
    main()
