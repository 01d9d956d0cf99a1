"""The PyTorch / Hugging Face Transformers engine adapter.

torch and transformers are imported in ``init_engine``, not at module import, so their
import cost is measured as part of the engine_init phase (as for any other engine).
"""

from __future__ import annotations

import functools
import gc
import platform
import time
import warnings
from typing import TYPE_CHECKING, Any, Sequence

from lem.backends.base import (
    EngineDescription,
    EngineSpec,
    LoadedTokenizer,
    RawGeneration,
    check_requests_fit,
)
from lem.backends.hf_files import hub_revision
from lem.config.rules import resolve_device
from lem.config.types import Device, DType, Quantization, ShardingStrategy
from lem.errors import LemError, first_line
from lem.workload.types import GenerationParams, PreparedRequest

if TYPE_CHECKING:
    import torch


class PyTorchBackend(LoadedTokenizer):
    """``Backend`` for ``model.generate`` in Transformers, with per-step token times from a streamer."""

    scheduling = "batch"  # lem forms the batches; generate() serves each

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self._device: torch.device | None = None
        self._model: Any = None
        self._pad_id: int | None = None
        self._num_threads: int | None = None
        self._model_path: str | None = None
        self._compile: str | None = None  # how torch.compile is applied, when it is
        self._compile_kwargs: dict[str, Any] = {}

    # -- phases -------------------------------------------------------------------------

    def init_engine(self) -> None:
        import torch
        import transformers  # importing it is part of this engine's start-up cost

        transformers.utils.logging.disable_progress_bar()  # a bar per load would garble the run's output

        pt = self.spec.options
        if pt.num_threads is not None:
            torch.set_num_threads(pt.num_threads)
        self._num_threads = torch.get_num_threads()  # recorded even when left at torch's default
        torch.manual_seed(self.spec.seed)
        # Full-precision float32 matmuls (no TF32) unless the user picks a lower dtype.
        torch.set_float32_matmul_precision("highest")
        device = resolve_device(self.spec.device)
        rank = local_rank()  # data/tensor parallel: one process per device
        if device is Device.cuda:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # allow_tf32 is deprecated in newer torch but still honoured
                torch.backends.cuda.matmul.allow_tf32 = False
                torch.backends.cudnn.allow_tf32 = False
            torch.cuda.set_device(rank)
            self._device = torch.device("cuda", rank)
            torch.empty(1, device=self._device)  # create the CUDA context now, not inside model_load
        else:
            self._device = torch.device("cpu")
        if self.spec.sharding.strategy is ShardingStrategy.tensor_parallel:
            import torch.distributed as dist

            if not dist.is_initialized():  # lem's own rank launcher (lem.distributed) or torchrun set the env
                dist.init_process_group(backend="nccl" if device is Device.cuda else "gloo")

    def load_model(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self._device is None:
            self.init_engine()
        assert self._device is not None
        from lem.models.resolve import resolve_model_path

        model_cfg = self.spec.model
        path = resolve_model_path(model_cfg)
        self._model_path = path
        pt = self.spec.options
        common: dict[str, Any] = {"trust_remote_code": model_cfg.trust_remote_code}
        revision = hub_revision(model_cfg, path)
        if revision:
            common["revision"] = revision
        kwargs: dict[str, Any] = dict(common, dtype=self._load_dtype(), attn_implementation=pt.attn_implementation.value)
        quant = self.spec.precision.quantization
        if quant is not Quantization.none:
            kwargs["quantization_config"] = self._bnb_config(quant, kwargs["dtype"])
        sharding = self.spec.sharding
        if sharding.strategy is ShardingStrategy.tensor_parallel:
            kwargs.update(_tensor_parallel_kwargs(sharding.num_shards))  # every rank holds 1/num_shards of each layer
        elif sharding.strategy is ShardingStrategy.pipeline_parallel:
            # Whole layers spread evenly over the first num_shards GPUs; one process drives them in turn.
            kwargs["device_map"] = "balanced"
            kwargs["max_memory"] = {i: torch.cuda.get_device_properties(i).total_memory for i in range(sharding.num_shards)}
        elif self._device.type == "cuda":
            kwargs["device_map"] = {"": self._device.index or 0}  # load straight onto the GPU
        try:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left", **common)
        except (OSError, ValueError, ImportError) as e:
            raise LemError(f"model.name_or_path={model_cfg.name_or_path}: could not load it: {first_line(e)}") from e
        if self._device.type == "cpu" and sharding.strategy is not ShardingStrategy.tensor_parallel:
            model.to(self._device)
        model.eval()

        if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
            tokenizer.pad_token = tokenizer.eos_token  # padding value is irrelevant under the attention mask
        gen_eos = model.generation_config.eos_token_id
        eos: set[int] = set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos.add(int(tokenizer.eos_token_id))
        self._eos_ids = frozenset(int(i) for i in eos)
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = model.generation_config.pad_token_id
        if pad is None:
            pad = min(self._eos_ids) if self._eos_ids else 0
        self._pad_id = int(pad)

        if pt.torch_compile:
            self._compile = self._setup_compile(model, torch)
        self._model = model
        self._tokenizer = tokenizer

    def generate(self, batch: Sequence[PreparedRequest], params: GenerationParams) -> list[RawGeneration]:
        import torch

        if not batch:
            return []
        model = self._require_model()
        check_requests_fit(batch, params.max_output_tokens)
        # Left padding: every row's last prompt token sits in the same column, so decoding starts together.
        width = max(len(r.input_ids) for r in batch)
        input_ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, req in enumerate(batch):
            n = len(req.input_ids)
            input_ids[row, width - n :] = torch.tensor(req.input_ids, dtype=torch.long)
            attention_mask[row, width - n :] = 1
        input_ids = input_ids.to(self._device)
        attention_mask = attention_mask.to(self._device)

        gen_kwargs = self._generation_kwargs(params)
        timer = _token_timer_class()(self.synchronize)
        if params.do_sample:
            torch.manual_seed(params.seed)  # seeds CUDA too
        start = time.perf_counter()
        with torch.inference_mode():
            output = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, streamer=timer, **gen_kwargs
            )
        new_tokens = output[:, width:].tolist()
        steps = len(new_tokens[0])
        if len(timer.times) != steps:
            raise RuntimeError(f"token timer saw {len(timer.times)} decoding steps, generate returned {steps} tokens")
        return [
            RawGeneration(
                request_id=req.request_id,
                output_token_ids=ids,
                token_times=list(timer.times),  # all rows advance together: one time per step
                start_time=start,
                padded_input_tokens=width,
            )
            for req, ids in zip(batch, new_tokens)
        ]

    def synchronize(self) -> None:
        if self._device is not None and self._device.type == "cuda":
            import torch

            if self.spec.sharding.strategy is ShardingStrategy.pipeline_parallel:
                for i in range(self.spec.sharding.num_shards):  # every stage's GPU, not just the first
                    torch.cuda.synchronize(i)
            else:
                torch.cuda.synchronize(self._device)

    def describe(self) -> EngineDescription:
        import torch
        import transformers

        device_type = self._device.type if self._device is not None else resolve_device(self.spec.device).value
        if device_type == "cuda":
            index = self._device.index if self._device is not None and self._device.index is not None else 0
            if self.spec.sharding.strategy is ShardingStrategy.pipeline_parallel:
                device_names = [torch.cuda.get_device_name(i) for i in range(self.spec.sharding.num_shards)]
            else:
                device_names = [torch.cuda.get_device_name(index)]
        else:
            device_names = [cpu_name()]
        pt = self.spec.options
        extra: dict[str, Any] = {
            "attn_implementation": pt.attn_implementation.value,
            "use_cache": pt.use_cache,
            "torch_compile": self._compile or False,
            "quantization": self.spec.precision.quantization.value,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "model_path": self._model_path,
            "sharding": self.spec.sharding.strategy.value,
            "num_shards": self.spec.sharding.num_shards,
        }
        dtype = self.spec.precision.dtype.value
        if self._model is not None:
            # What the model actually runs with, which may differ from what was asked (sdpa fallback, auto dtype).
            extra["attn_implementation"] = getattr(self._model.config, "_attn_implementation", None)
            extra["num_parameters"] = sum(p.numel() for p in self._model.parameters())
            dtype = str(self._model.dtype).removeprefix("torch.")
            quant = self.spec.precision.quantization
            if quant is not Quantization.none:
                extra["compute_dtype"] = dtype
                dtype = "int8" if quant is Quantization.int8 else "nf4"
        return EngineDescription(
            engine="pytorch",
            engine_version=f"transformers {transformers.__version__}, torch {torch.__version__}",
            device_type=device_type,
            device_names=device_names,
            dtype=dtype,
            num_threads=self._num_threads,
            extra=extra,
        )

    def unload(self) -> None:
        self._model = None
        gc.collect()
        if self._device is not None and self._device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    # -- protocol properties --------------------------------------------------------------

    @property
    def model(self) -> Any:
        return self._require_model()

    # -- helpers --------------------------------------------------------------------------

    def _require_model(self) -> Any:
        if self._model is None:
            raise RuntimeError("load_model() must run before generate()")
        return self._model

    def _load_dtype(self) -> Any:
        import torch

        requested = self.spec.precision.dtype
        if self.spec.precision.quantization is not Quantization.none and requested is DType.auto:
            # bitsandbytes computes in half precision; pick the one the GPU does natively.
            return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float16
        if requested is DType.auto:
            return "auto"  # the checkpoint's own dtype (config.json "dtype")
        return getattr(torch, requested.value)

    @staticmethod
    def _bnb_config(quant: Quantization, compute_dtype: Any) -> Any:
        from transformers import BitsAndBytesConfig

        if quant is Quantization.int8:
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)

    def _setup_compile(self, model: Any, torch: Any) -> str:
        from transformers import CompileConfig

        if self.spec.options.use_cache:
            # Transformers' own path: a static KV cache keeps shapes fixed, so generate compiles the forward once.
            on_cuda = self._device is not None and self._device.type == "cuda"
            compile_config = CompileConfig(fullgraph=False, mode="reduce-overhead" if on_cuda else "default")
            if not on_cuda:
                compile_config._compile_all_devices = True  # generate only auto-compiles on accelerators otherwise
            # Passed to every generate call: generate copies model.generation_config through to_dict(), which drops the flag.
            self._compile_kwargs = {"cache_implementation": "static", "compile_config": compile_config}
            return "generate(static cache, inductor)"
        # Without a cache every step re-runs the whole sequence: compile the forward with dynamic shapes.
        model.forward = torch.compile(model.forward, dynamic=True)
        return "forward(dynamic, inductor)"

    def _generation_kwargs(self, params: GenerationParams) -> dict[str, Any]:
        min_new = params.max_output_tokens if params.ignore_eos else params.min_output_tokens
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_output_tokens,
            "min_new_tokens": min_new,  # ignore_eos: EOS is masked until max_output_tokens
            "do_sample": params.do_sample,
            "num_beams": 1,
            # Explicit, so a hub model's generation_config cannot change lem's decoding settings.
            "repetition_penalty": params.repetition_penalty,
            "use_cache": self.spec.options.use_cache,
            "pad_token_id": self._pad_id,
            "eos_token_id": sorted(self._eos_ids) or None,
        }
        if params.do_sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
        if params.repetition_penalty != 1.0:
            # lem's penalty (EOS ids exempt) and the warpers after it, in generate's order; generate's own off.
            from lem.backends.pytorch.penalty import penalty_chain

            kwargs["logits_processor"] = penalty_chain(params, self._eos_ids)
            kwargs["repetition_penalty"] = 1.0
            if params.do_sample:
                kwargs.update(temperature=1.0, top_p=1.0, top_k=0)
        kwargs.update(self._compile_kwargs)
        return kwargs


def local_rank() -> int:
    """This process's device index among the node's ranks (torchrun / lem.distributed set LOCAL_RANK); 0 alone."""
    import os

    return int(os.environ.get("LOCAL_RANK", "0"))


def _tensor_parallel_kwargs(num_shards: int) -> dict[str, Any]:
    try:
        from transformers import DistributedConfig
    except ImportError:  # transformers before DistributedConfig: the older keyword
        return {"tp_plan": "auto"}
    return {"distributed_config": DistributedConfig(tp_plan="auto", tp_size=num_shards)}


@functools.cache
def _token_timer_class() -> type:
    from transformers.generation.streamers import BaseStreamer

    class TokenTimer(BaseStreamer):
        """Records when each decoding step's tokens reached the host.

        ``generate`` calls ``put`` once with the prompt, then once per step with a (batch,) tensor
        already copied to the CPU; the device is synchronised first so the time is when the
        token existed, not when its kernel was queued.
        """

        def __init__(self, synchronize: Any) -> None:
            self._synchronize = synchronize
            self._prompt_seen = False
            self.times: list[float] = []

        def put(self, value: Any) -> None:
            if not self._prompt_seen:
                self._prompt_seen = True
                return
            self._synchronize()
            now = time.perf_counter()
            # (batch,) per step; a (batch, k) chunk (assisted decoding) made k tokens available at once.
            self.times.extend([now] * (int(value.shape[-1]) if value.dim() > 1 else 1))

        def end(self) -> None:
            pass

    return TokenTimer


@functools.cache
def cpu_name() -> str:
    """The CPU model name (e.g. 'Intel(R) Xeon(R) Platinum 8480+'), best effort."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"
