"""The echo engine's adapter: lem forms the batches; each request's output is its prompt's tokens, repeated."""

from __future__ import annotations

import time
from typing import Sequence

from lem.backends.base import (
    EngineDescription,
    EngineSpec,
    LoadedTokenizer,
    RawGeneration,
)
from lem.workload.types import GenerationParams, PreparedRequest


class EchoBackend(LoadedTokenizer):
    scheduling = "batch"

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec

    def init_engine(self) -> None:
        pass

    def load_model(self) -> None:
        from lem.backends.hf_files import load_hf_tokenizer

        _, self._tokenizer, self._eos_ids = load_hf_tokenizer(self.spec.model)

    def generate(self, batch: Sequence[PreparedRequest], params: GenerationParams) -> list[RawGeneration]:
        start = time.perf_counter()
        out = []
        for request in batch:
            ids = [i for i in request.input_ids if i not in self._eos_ids] or [0]
            tokens = (ids * params.max_output_tokens)[: params.max_output_tokens]
            times = []
            for _ in tokens:
                time.sleep(self.spec.options.delay_ms / 1000)
                times.append(time.perf_counter())
            out.append(RawGeneration(request.request_id, tokens, times, start))
        return out

    def synchronize(self) -> None:
        pass

    def describe(self) -> EngineDescription:
        return EngineDescription("echo", "echo 1.0", "cpu", ["test"], "n/a", 1, {"delay_ms": self.spec.options.delay_ms})

    def unload(self) -> None:
        self._tokenizer = None
