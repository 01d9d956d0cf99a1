"""Bad input of every class is refused before anything starts (issue 15), table-driven, several variants each.

Classes: a prompt file's contents, a model that cannot load (offline id, folder, config.json),
non-finite numbers in every float key of the schema, a tensor-parallel degree the model's heads
do not divide, config files (YAML syntax, a bad value from a file: file, line, column and value).
Settings that run but surprise are warned about (and labelled: the decoder preset). A few cases
run as real commands: exit 2 in seconds, one line, no folder, no MLflow run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest

from lem.config.compose import compose_config
from lem.config.inputs import _splits
from lem.config.schema import LemConfig
from lem.errors import LemError
from tests.tiny_model import make_tiny_model_dir

# --- prompt files ------------------------------------------------------------------------------

PROMPT_FILES: list[tuple[str, bytes, str]] = [  # (file name, contents, what the one line must say)
    ("malformed.jsonl", b'{"prompt": "a"}\n{bad\n', "line 2 is not valid JSON"),
    ("truncated.jsonl", b'{"prompt": "a"}\n{"prompt": "b"', "line 2 is not valid JSON"),
    ("malformed.json", b'[{"prompt": "a"},', "not valid JSON"),
    ("object.json", b'{"prompt": "a"}', "expected a JSON list of objects or strings, found a dict"),
    ("empty.jsonl", b"", "expected a file holding at least one prompt"),
    ("blank.json", b"  \n", "expected a file holding at least one prompt"),
    ("header_only.csv", b"prompt\n", "expected a file holding at least one prompt"),
    ("latin1.jsonl", '{"prompt": "café"}\n'.encode("latin-1"), "expected a UTF-8 text file"),
    ("binary.csv", b"\xff\xfe\x00\x01prompt\n", "expected a UTF-8 text file"),
    ("other_column.jsonl", b'{"text": "a"}\n', "dataset.column=prompt: expected one of the file's columns: text"),
    ("other_column.csv", b"text,id\nhello,1\n", "dataset.column=prompt: expected one of the file's columns: text, id"),
    ("mixed.json", b'["a", {"prompt": "b"}]', "records must all be objects or all be strings"),
    ("all_empty.jsonl", b'{"prompt": ""}\n{"prompt": "  "}\n', "expected a file with at least one non-empty 'prompt' value"),
]


@pytest.mark.parametrize(("name", "content", "expected"), PROMPT_FILES, ids=[p[0] for p in PROMPT_FILES])
def test_a_prompt_file_that_cannot_be_read_is_refused(tmp_path: Path, name: str, content: bytes, expected: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    assert expected in refusal(["dataset=file", f"dataset.path={path}"])


# --- models ------------------------------------------------------------------------------------

def _model_folder(tmp_path: Path, config: str | None) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(config)
    return folder


MODEL_FOLDERS: list[tuple[str | None, str]] = [  # (config.json text or None for no file, expected)
    (None, "expected a model folder holding a config.json"),
    ("{not json", "config.json is readable JSON"),
    ("", "config.json is readable JSON"),
    ("[1, 2]", "config.json is a JSON object"),
    ('{"hidden_size": 64}', "'model_type' missing"),
    ('{"model_type": ""}', "'model_type' missing"),
]


@pytest.mark.parametrize(("config", "expected"), MODEL_FOLDERS, ids=[str(c) for c, _ in MODEL_FOLDERS])
def test_a_model_folder_that_cannot_load_is_refused(tmp_path: Path, config: str | None, expected: str) -> None:
    folder = _model_folder(tmp_path, config)
    message = refusal([f"model.name_or_path={folder}"])
    assert message.startswith(f"model.name_or_path={folder}: expected") and expected in message


REMOTE_CODE = '{"model_type": "my_custom_lm", "auto_map": {"AutoModelForCausalLM": "modeling_custom.MyLM"}}'


def test_a_model_that_needs_remote_code_names_the_key_that_allows_it(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path, REMOTE_CODE)
    message = refusal([f"model.name_or_path={folder}"])
    assert "'my_custom_lm' is defined by Python code in the checkpoint" in message and "model.trust_remote_code=true" in message


def test_remote_code_passes_validation_only_when_trusted_or_when_transformers_ships_the_architecture(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path, REMOTE_CODE)
    compose_config([f"model.name_or_path={folder}", "model.trust_remote_code=true"])
    (folder / "config.json").write_text('{"model_type": "llama", "auto_map": {"AutoConfig": "configuration_llama.LlamaConfig"}}')
    compose_config([f"model.name_or_path={folder}"])  # an old auto_map beside an architecture transformers has


@pytest.mark.parametrize("name", ["nobody/no-such-model-xyz", "gpt2-no-such-model", "nobody/no-such-model-xyz@main"])
def test_a_model_id_that_cannot_resolve_offline_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache
    repo, _, revision = name.partition("@")
    overrides = [f"model.name_or_path={repo}"] + ([f"model.revision={revision}"] if revision else [])
    message = refusal(overrides)
    assert f"model.name_or_path={name}: not in the local Hugging Face cache and the hub is unreachable" in message


def test_a_missing_local_model_folder_is_refused(tmp_path: Path) -> None:
    assert "expected an existing local model directory" in refusal([f"model.name_or_path={tmp_path}/absent"])


# --- tensor-parallel degree vs attention heads -------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny"))  # 4 attention heads, 2 KV heads


@pytest.mark.parametrize("degree", [3, 4, 5])
def test_a_tensor_parallel_degree_the_heads_do_not_divide_is_refused(tiny_model: Path, degree: int) -> None:
    message = refusal([f"model.name_or_path={tiny_model}", "sharding=tensor_parallel", f"sharding.num_shards={degree}"])
    assert message == (
        f"sharding.num_shards={degree}: expected a tensor-parallel degree that divides {tiny_model}'s "
        "4 attention heads and 2 KV heads: 1, 2"
    )


def test_a_tensor_parallel_degree_that_divides_the_heads_is_accepted(tiny_model: Path) -> None:
    _, cfg = compose_config([f"model.name_or_path={tiny_model}", "sharding=tensor_parallel", "sharding.num_shards=2"])
    assert cfg.sharding.num_shards == 2


@pytest.mark.parametrize(
    ("degree", "heads", "kv_heads", "replicates_kv", "ok"),
    [(8, 32, 8, False, True), (16, 32, 8, False, False), (16, 32, 8, True, True), (3, 32, 8, True, False), (6, 12, 4, True, False), (4, 12, 2, True, True)],
)
def test_the_divisibility_rule_per_engine(degree: int, heads: int, kv_heads: int, replicates_kv: bool, ok: bool) -> None:
    # vLLM and TensorRT-LLM replicate KV heads when the degree is a multiple of them; PyTorch's TP plan shards them.
    assert _splits(degree, heads, kv_heads, replicates_kv) is ok


# --- non-finite numbers: every float key of the schema ------------------------------------------

def _float_keys(node: type, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(node)
    for f in dataclasses.fields(node):
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(args[0]):
            keys += _float_keys(args[0], key + ".")
        elif args[0] is float:
            keys.append(key)
    return keys


FLOAT_KEYS = _float_keys(LemConfig)


def test_the_schema_has_float_keys_in_every_section() -> None:
    sections = {key.split(".")[0] for key in FLOAT_KEYS}
    assert {"decoder", "traffic", "energy", "run", "backend"} <= sections, sections
    assert len(FLOAT_KEYS) >= 15


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_every_float_key_refuses_non_finite_values(value: str) -> None:
    accepted = []
    for key in FLOAT_KEYS:
        extra = ["traffic=poisson"] if key == "traffic.target_qps" else []
        try:
            compose_config([*extra, f"{key}={value}"])
        except LemError as refused:
            assert str(refused).startswith(f"{key}="), str(refused)
            assert "finite" in str(refused), str(refused)
            continue
        accepted.append(key)
    assert accepted == []


# --- config files: syntax and values, with file, line and column ------------------------------

YAML_SYNTAX: list[tuple[str, str]] = [  # (the experiment file's text, where the error is)
    ("# @package _global_\ndataset:\n  n_prompts: [4\n", ":4:1: not valid YAML"),
    ("# @package _global_\ndataset:\n  n_prompts: 4\n   max_output_tokens: 8\n", ":4:21: not valid YAML"),
    ("# @package _global_\ndataset:\n\tn_prompts: 4\n", ":3:1: not valid YAML"),
    ("# @package _global_\ndataset: {n_prompts: 4\n", ":3:1: not valid YAML"),
]


@pytest.mark.parametrize(("text", "expected"), YAML_SYNTAX, ids=range(len(YAML_SYNTAX)))
def test_a_yaml_syntax_error_names_file_line_and_column(tmp_path: Path, text: str, expected: str) -> None:
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text(text)
    message = refusal([f"hydra.searchpath=[file://{tmp_path}]", "experiment=mine"])
    assert message.startswith(str(tmp_path / "experiment" / "mine.yaml") + expected), message


FILE_VALUES: list[tuple[str, str, str]] = [  # (group/option, text, expected)
    ("experiment/mine", "# @package _global_\ndataset:\n  max_output_tokens: lots\n", "dataset.max_output_tokens=lots (in {file}:3:22): expected an integer"),
    ("experiment/mine", "# @package _global_\ndecoder:\n  do_sample: maybe\n", "decoder.do_sample=maybe (in {file}:3:14): expected true or false"),
    ("batching/mine", "strategy: static\nbatch_size: many\n", "batching.batch_size=many (in {file}:2:13): expected an integer"),
    ("experiment/mine", "# @package _global_\nbatching:\n  batch_size: -3\n", "batching.batch_size=-3: expected a number >= 1 (set in {file}:3:15)"),
    ("traffic/mine", "arrival: poisson\ntarget_qps: -2.5\n", "traffic.target_qps=-2.5: expected a rate > 0 requests/s when traffic.arrival=poisson (set in {file}:2:13)"),
    ("experiment/mine", "# @package _global_\nenergy:\n  pue: .nan\n", "energy.pue=nan: expected a finite number (set in {file}:3:8)"),
]


@pytest.mark.parametrize(("option", "text", "expected"), FILE_VALUES, ids=range(len(FILE_VALUES)))
def test_a_bad_value_from_a_config_file_names_the_value_and_where_it_is(tmp_path: Path, option: str, text: str, expected: str) -> None:
    file = tmp_path / f"{option}.yaml"
    file.parent.mkdir(parents=True)
    file.write_text(text)
    group, name = option.split("/")
    assert refusal([f"hydra.searchpath=[file://{tmp_path}]", f"{group}={name}"]) == expected.format(file=file)


# --- settings that run but surprise: warned, or labelled ----------------------------------------

def test_more_prompts_than_the_file_holds_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(5)))
    with caplog.at_level(logging.WARNING):
        compose_config(["dataset=file", f"dataset.path={path}", "dataset.n_prompts=12"])
    assert f"dataset.n_prompts=12: {path} holds 5 prompts; they are cycled (each served up to 3 times)" in caplog.text


@pytest.mark.parametrize(("batch_size", "n_prompts", "warned"), [(16, 4, True), (64, 63, True), (8, 8, False), (2, 64, False)])
def test_a_batch_larger_than_the_workload_is_a_warning(caplog: pytest.LogCaptureFixture, batch_size: int, n_prompts: int, warned: bool) -> None:
    with caplog.at_level(logging.WARNING):
        compose_config([f"batching.batch_size={batch_size}", f"dataset.n_prompts={n_prompts}"])
    assert ("no batch holds more than" in caplog.text) is warned


@pytest.mark.parametrize(
    ("overrides", "label"),
    [
        (["decoder=creative"], "creative"),
        (["decoder=creative", "decoder.do_sample=false"], "creative+do_sample=false"),
        (["decoder=deterministic", "decoder.do_sample=true"], "deterministic+do_sample=true"),
        (["decoder=factual", "decoder.temperature=0.5", "decoder.top_k=10"], "factual+temperature=0.5+top_k=10"),
        (["decoder=factual", "decoder.temperature=0.3"], "factual"),
        (["decoder=creative", "decoder.preset=mine", "decoder.do_sample=false"], "mine"),
    ],
)
def test_the_decoder_label_names_what_changed_from_the_preset(overrides: list[str], label: str) -> None:
    composed, cfg = compose_config(overrides)
    assert cfg.decoder.preset == label


# --- as real commands --------------------------------------------------------------------------

def _cli_cases(tmp_path: Path) -> list[list[str]]:
    bad_utf8 = tmp_path / "bad.jsonl"
    bad_utf8.write_bytes(b"\xff\xfe{}\n")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{oops")
    user = tmp_path / "conf" / "experiment"
    user.mkdir(parents=True)
    (user / "mine.yaml").write_text("# @package _global_\ndataset: [\n")
    return [
        ["dataset=file", f"dataset.path={bad_utf8}"],
        ["traffic=poisson", "traffic.target_qps=nan"],
        [f"model.name_or_path={folder}"],
        ["--config-dir", str(tmp_path / "conf"), "experiment=mine"],
        ["model.name_or_path=nobody/no-such-model-xyz"],
    ]


def test_refusals_as_commands_exit_2_in_seconds_leaving_nothing(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    for args in _cli_cases(tmp_path):
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "lem", *args], cwd=work, env=env, capture_output=True, text=True, timeout=120)
        took_s = time.monotonic() - started
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("lem: error: "), (args, result.stderr)
        assert took_s < 30, (args, took_s)  # seconds of imports on a busy 2-core machine; never a model load
        leftovers = sorted(str(p.relative_to(work)) for p in work.rglob("*"))
        assert leftovers == [], (args, leftovers)  # no run folder, no MLflow store (not even a FAILED run)


def refusal(overrides: list[str]) -> str:
    with pytest.raises(LemError) as refused:
        compose_config(overrides)
    message = str(refused.value)
    assert message and "\n" not in message and "Traceback" not in message, message
    return message


# --- latency objectives and device limits (goodput, the physical floor) ---------------------------

@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("slo.ttft_ms=-5", "slo.ttft_ms=-5.0: expected a number in (0.0, 86400000.0]"),
        ("slo.tpot_ms=0", "slo.tpot_ms=0.0: expected a number in (0.0, 3600000.0]"),
        ("slo.tpot_ms=nan", "slo.tpot_ms=nan: expected a finite number"),
        ("hardware.power_w=0", "hardware.power_w=0.0: expected a number in (0.0, 1000000.0]"),
        ("hardware.peak_tflops=-1", "hardware.peak_tflops=-1.0: expected a number in (0.0, 1000000.0]"),
    ],
)
def test_an_objective_or_device_limit_that_is_not_positive_is_refused(override: str, expected: str) -> None:
    assert refusal([override]) == expected


def test_the_mlperf_objectives_compose_from_the_slo_group() -> None:
    _, cfg = compose_config(["slo=mlperf_llama3_1_8b_interactive"])
    assert (cfg.slo.ttft_ms, cfg.slo.tpot_ms) == (500.0, 30.0)
