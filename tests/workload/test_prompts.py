"""Where the workload's prompts come from: built-in set, files, HF datasets, synthetic lengths."""

from __future__ import annotations

import csv
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from lem.config.schema import DatasetConfig, SyntheticConfig
from lem.config.types import DatasetSource, LengthDistribution
from lem.errors import ConfigError, LemError
from lem.workload.builtin_prompts import builtin_prompts
from lem.workload.prompts import load_prompts, synthetic_lengths


def file_config(path: Path, n_prompts: int = 3, **kwargs: Any) -> DatasetConfig:
    return DatasetConfig(source=DatasetSource.file, path=str(path), n_prompts=n_prompts, **kwargs)


def texts(prompts: list) -> list[str]:
    return [p.text for p in prompts]


# --- built-in -----------------------------------------------------------------------------------


def test_builtin_set_is_large_distinct_and_deterministic() -> None:
    first, second = builtin_prompts(), builtin_prompts()
    assert len(first) >= 300
    assert len(set(first)) == len(first)
    assert first == second


def test_builtin_set_spreads_lengths_from_questions_to_long_briefs() -> None:
    words = [len(p.split()) for p in builtin_prompts()]
    assert min(words) >= 5 and max(words) <= 450
    buckets = {"short": (0, 25), "medium": (25, 80), "long": (80, 200), "very long": (200, 450)}
    counts = {name: sum(lo <= w < hi for w in words) for name, (lo, hi) in buckets.items()}
    assert all(count >= 20 for count in counts.values()), counts


def test_builtin_prefix_already_mixes_short_and_long() -> None:
    words = [len(p.split()) for p in builtin_prompts()[:10]]
    assert min(words) < 25 and max(words) > 100


def test_builtin_load_numbers_requests_by_position() -> None:
    prompts = load_prompts(DatasetConfig(n_prompts=12))
    assert [p.request_id for p in prompts] == list(range(12))
    assert texts(prompts) == builtin_prompts()[:12]


def test_builtin_cycles_when_asked_for_more_than_it_has() -> None:
    n_builtin = len(builtin_prompts())
    prompts = load_prompts(DatasetConfig(n_prompts=n_builtin + 5))
    assert [p.request_id for p in prompts] == list(range(n_builtin + 5))
    assert texts(prompts[n_builtin:]) == builtin_prompts()[:5]


def test_shuffle_is_seeded() -> None:
    plain = texts(load_prompts(DatasetConfig(n_prompts=50)))
    seed1 = texts(load_prompts(DatasetConfig(n_prompts=50, shuffle=True, seed=1)))
    seed1_again = texts(load_prompts(DatasetConfig(n_prompts=50, shuffle=True, seed=1)))
    seed2 = texts(load_prompts(DatasetConfig(n_prompts=50, shuffle=True, seed=2)))
    assert seed1 == seed1_again
    assert seed1 != plain and seed1 != seed2
    assert set(seed1) <= set(builtin_prompts())


# --- files --------------------------------------------------------------------------------------


def test_jsonl_objects_use_the_column(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    rows = [{"id": i, "text": f"question {i}?"} for i in range(3)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert texts(load_prompts(file_config(path, column="text"))) == ["question 0?", "question 1?", "question 2?"]


def test_jsonl_of_plain_strings_needs_no_column(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('"first"\n"second"\n')
    assert texts(load_prompts(file_config(path, n_prompts=2, column="ignored"))) == ["first", "second"]


def test_json_list_of_objects_and_of_strings(tmp_path: Path) -> None:
    objects = tmp_path / "objects.json"
    objects.write_text(json.dumps([{"prompt": "alpha"}, {"prompt": "beta"}]))
    strings = tmp_path / "strings.json"
    strings.write_text(json.dumps(["gamma", "delta"]))
    assert texts(load_prompts(file_config(objects, n_prompts=2))) == ["alpha", "beta"]
    assert texts(load_prompts(file_config(strings, n_prompts=2))) == ["gamma", "delta"]


def test_json_that_is_not_a_list_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"prompt": "alpha"}))
    with pytest.raises(LemError, match="expected a JSON list"):
        load_prompts(file_config(path))


def test_csv_keeps_commas_quotes_and_newlines_in_the_text(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    tricky = 'Say "hi", then\nsay goodbye.'
    with open(path, "w", newline="", encoding="utf-8-sig") as f:  # with a BOM, as spreadsheets write it
        writer = csv.writer(f)
        writer.writerow(["question", "label"])
        writer.writerow([tricky, "a"])
        writer.writerow(["plain", "b"])
    assert texts(load_prompts(file_config(path, n_prompts=2, column="question"))) == [tricky, "plain"]


def test_column_that_no_record_has_names_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("text,label\nhello,1\n")
    with pytest.raises(ConfigError) as info:
        load_prompts(file_config(path, column="body"))
    assert info.value.key == "dataset.column"
    assert str(info.value) == "dataset.column=body: expected one of the file's columns: text, label"


def test_default_column_missing_in_jsonl_names_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"question": "a", "answer": "b"}\n')
    with pytest.raises(ConfigError, match="dataset.column=prompt: expected one of the file's columns: question, answer"):
        load_prompts(file_config(path))


def test_record_missing_the_column_is_named(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n{"other": "b"}\n')
    with pytest.raises(LemError, match="record 2 has no 'prompt' field"):
        load_prompts(file_config(path))


def test_bad_jsonl_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(LemError, match="line 2 is not valid JSON"):
        load_prompts(file_config(path))


@pytest.mark.parametrize(("name", "content"), [("e.jsonl", ""), ("e.json", "[]"), ("e.json", ""), ("e.csv", "prompt\n")])
def test_empty_file_says_it_holds_no_prompts(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(LemError, match="holds no prompts"):
        load_prompts(file_config(path))


def test_empty_texts_are_skipped_but_not_all(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "  "}\n{"prompt": "b"}\n')
    assert texts(load_prompts(file_config(path, n_prompts=2))) == ["a", "b"]
    path.write_text('{"prompt": ""}\n')
    with pytest.raises(LemError, match="empty"):
        load_prompts(file_config(path))


def test_missing_file_and_unknown_suffix_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dataset.path=.*nope.jsonl: expected an existing"):
        load_prompts(file_config(tmp_path / "nope.jsonl"))
    other = tmp_path / "p.txt"
    other.write_text("hello")
    with pytest.raises(ConfigError, match="ending in .jsonl, .json or .csv"):
        load_prompts(file_config(other))


def test_short_file_is_cycled_with_fresh_request_ids(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": t}) for t in ["a", "b", "c"]))
    prompts = load_prompts(file_config(path, n_prompts=7))
    assert texts(prompts) == ["a", "b", "c", "a", "b", "c", "a"]
    assert [p.request_id for p in prompts] == list(range(7))


def test_alpaca_records_join_instruction_and_input(tmp_path: Path) -> None:
    path = tmp_path / "alpaca.json"
    rows = [
        {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
        {"instruction": "Name a colour.", "input": "", "output": "Blue"},
    ]
    path.write_text(json.dumps(rows))
    assert texts(load_prompts(file_config(path, n_prompts=2))) == ["Translate to French.\n\nGood morning", "Name a colour."]


# --- Hugging Face datasets ----------------------------------------------------------------------


class FakeDataset:
    def __init__(self, columns: dict[str, list[str]]) -> None:
        self._columns = columns

    @property
    def column_names(self) -> list[str]:
        return list(self._columns)

    def __len__(self) -> int:
        return len(next(iter(self._columns.values())))

    def __getitem__(self, column: str) -> list[str]:
        return self._columns[column]


def install_fake_datasets(monkeypatch: pytest.MonkeyPatch, load_dataset: Any) -> list[tuple]:
    calls: list[tuple] = []

    def recording(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        return load_dataset(*args, **kwargs)

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=recording))
    return calls


def hf_config(**kwargs: Any) -> DatasetConfig:
    return DatasetConfig(source=DatasetSource.hf, hf_name="someone/prompts", **kwargs)


def test_hf_without_datasets_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(LemError, match="pip install datasets"):
        load_prompts(hf_config())


def test_hf_unreachable_and_uncached_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("Couldn't reach 'someone/prompts' on the Hub (LocalEntryNotFoundError)\nmore detail")

    install_fake_datasets(monkeypatch, offline)
    with pytest.raises(LemError) as info:
        load_prompts(hf_config())
    message = str(info.value)
    assert "\n" not in message
    assert "dataset.hf_name=someone/prompts" in message
    assert "cache" in message and "reachable" in message


def test_hf_passes_name_config_and_split_and_reads_the_column(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = install_fake_datasets(monkeypatch, lambda *a, **k: FakeDataset({"prompt": ["p0", "p1", "p2"], "x": ["", "", ""]}))
    prompts = load_prompts(hf_config(hf_config="main", hf_split="test", n_prompts=4))
    assert calls == [(("someone/prompts", "main"), {"split": "test"})]
    assert texts(prompts) == ["p0", "p1", "p2", "p0"]


def test_hf_alpaca_columns_are_joined(monkeypatch: pytest.MonkeyPatch) -> None:
    alpaca = FakeDataset({"instruction": ["Sum 2 and 3.", "Say hi."], "input": ["", "in Spanish"], "output": ["5", "Hola"]})
    install_fake_datasets(monkeypatch, lambda *a, **k: alpaca)
    assert texts(load_prompts(hf_config(n_prompts=2))) == ["Sum 2 and 3.", "Say hi.\n\nin Spanish"]


def test_hf_missing_column_names_the_dataset_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_datasets(monkeypatch, lambda *a, **k: FakeDataset({"question": ["q"], "answer": ["a"]}))
    with pytest.raises(ConfigError, match="dataset.column=text: expected one of the columns of someone/prompts: question, answer"):
        load_prompts(hf_config(column="text"))


# --- synthetic ----------------------------------------------------------------------------------


def synthetic_config(dist: LengthDistribution, n_prompts: int = 40, seed: int = 0, **syn: Any) -> DatasetConfig:
    defaults = dict(input_tokens_mean=48, input_tokens_std=12.0, input_tokens_min=4, input_tokens_max=96)
    return DatasetConfig(
        source=DatasetSource.synthetic,
        n_prompts=n_prompts,
        seed=seed,
        synthetic=SyntheticConfig(input_length_distribution=dist, **{**defaults, **syn}),
    )


def token_count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_synthetic_needs_a_tokenizer() -> None:
    with pytest.raises(LemError, match="needs the model's tokenizer"):
        load_prompts(synthetic_config(LengthDistribution.uniform))


@pytest.mark.parametrize("dist", list(LengthDistribution))
def test_synthetic_token_lengths_hit_their_targets(tiny_tokenizer: Any, dist: LengthDistribution) -> None:
    ds = synthetic_config(dist)
    targets = synthetic_lengths(ds.synthetic, ds.n_prompts, ds.seed)
    lengths = [token_count(tiny_tokenizer, p.text) for p in load_prompts(ds, tokenizer=tiny_tokenizer)]
    assert all(abs(got - want) <= 1 for got, want in zip(lengths, targets, strict=True)), list(zip(lengths, targets))
    assert sum(got == want for got, want in zip(lengths, targets)) >= 0.9 * len(targets)
    assert all(4 <= t <= 96 for t in targets)


def test_synthetic_distributions_have_their_shape() -> None:
    fixed = synthetic_lengths(synthetic_config(LengthDistribution.fixed).synthetic, 50, seed=0)
    assert set(fixed) == {48}
    uniform = synthetic_lengths(synthetic_config(LengthDistribution.uniform).synthetic, 2000, seed=0)
    assert min(uniform) == 4 and max(uniform) == 96
    syn = synthetic_config(LengthDistribution.lognormal, input_tokens_max=10_000).synthetic
    lognormal = synthetic_lengths(syn, 4000, seed=0)
    assert abs(sum(lognormal) / len(lognormal) - 48) < 2  # parameterised so the mean is input_tokens_mean
    normal = synthetic_lengths(synthetic_config(LengthDistribution.normal, input_tokens_std=100.0).synthetic, 500, seed=0)
    assert min(normal) == 4 and max(normal) == 96  # wide draws are clamped to [min, max]


def test_synthetic_seed_reproduces_and_varies(tiny_tokenizer: Any) -> None:
    run = lambda seed: texts(load_prompts(synthetic_config(LengthDistribution.normal, seed=seed), tokenizer=tiny_tokenizer))
    assert run(3) == run(3)
    assert run(3) != run(4)


class TwoTokensPerWord:
    """A tokenizer where no word is a single token: odd targets cannot be hit exactly."""

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict[str, list[list[int]]]:
        return {"input_ids": [[0, 1] * len(text.split()) for text in texts]}


def test_synthetic_stays_within_one_token_when_words_cost_two() -> None:
    ds = synthetic_config(LengthDistribution.uniform)
    targets = synthetic_lengths(ds.synthetic, ds.n_prompts, ds.seed)
    lengths = [2 * len(p.text.split()) for p in load_prompts(ds, tokenizer=TwoTokensPerWord())]
    assert all(want - 1 <= got <= want for got, want in zip(lengths, targets, strict=True))
