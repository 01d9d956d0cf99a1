"""lem's option vocabularies: the enums the schema's fields take (light: no Hydra, no torch)."""

from __future__ import annotations

from enum import Enum

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"


class Device(Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class DType(Enum):
    auto = "auto"  # the checkpoint's natural dtype
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


class Quantization(Enum):
    none = "none"
    int8 = "int8"  # bitsandbytes 8-bit, CUDA only
    int4 = "int4"  # bitsandbytes 4-bit NF4, CUDA only


class DatasetSource(Enum):
    builtin = "builtin"
    file = "file"
    hf = "hf"
    synthetic = "synthetic"


class LengthDistribution(Enum):
    fixed = "fixed"
    uniform = "uniform"
    normal = "normal"
    lognormal = "lognormal"


class BatchingStrategy(Enum):
    auto = "auto"  # static for engines lem batches (PyTorch), continuous for engines that schedule themselves
    continuous = "continuous"  # requests handed over at arrival, at most batch_size in flight (lem.workload.admission)
    static = "static"
    sorted_static = "sorted_static"
    dynamic = "dynamic"
    sorted_dynamic = "sorted_dynamic"


class ShardingStrategy(Enum):
    none = "none"
    tensor_parallel = "tensor_parallel"
    pipeline_parallel = "pipeline_parallel"
    data_parallel = "data_parallel"


class ArrivalProcess(Enum):
    offline = "offline"
    constant = "constant"
    poisson = "poisson"


class ChatTemplate(Enum):
    auto = "auto"  # apply the tokenizer's template when it has one
    on = "on"  # apply it, fail when the tokenizer has none
    off = "off"  # feed the raw prompt text


class FlopsStrategy(Enum):
    auto = "auto"  # calflops, else analytical, else 2 x params x tokens
    calflops = "calflops"
    analytical = "analytical"
    params = "params"  # 2 x parameters x tokens
    off = "off"


class Isolation(Enum):
    worker = "worker"  # the engine runs in a spawned child process: a crash ends the worker, not the sweep
    inline = "inline"  # in the launching process (debugging: one process, breakpoints work)


class ReportFormat(Enum):
    table = "table"  # the aligned text table
    json = "json"  # summary.json on stdout, for scripts (the table is not printed)


class ReportProgress(Enum):
    auto = "auto"  # live progress on stderr when stderr is a terminal and report.format is not json
    on = "on"  # always (a non-terminal gets each phase's final line only)
    off = "off"  # no progress output


class RecordTokenIds(Enum):
    auto = "auto"  # on when dataset.n_prompts x cycles x dataset.max_output_tokens <= 1,000,000 tokens
    on = "on"  # every request record carries its output token ids
    off = "off"  # output_token_ids is null in every request record


class StudyOrder(Enum):
    """The order a ``-m`` sweep's configurations and cycles run in (``lem.study.order``)."""

    grouped = "grouped"  # configurations in the sweep's order, each job running all its cycles back to back
    interleaved = "interleaved"  # round-robin: cycle 1 of every configuration, then cycle 2 of every one, ...
    shuffled = "shuffled"  # every (configuration, cycle) run in a seeded random order
    latin_square = "latin_square"  # each round a row of a seeded Williams square: every configuration in every position


class StudyResume(Enum):
    auto = "auto"  # continue an unfinished study of the same command (same overrides), else start a new one
    never = "never"  # always a new study folder
