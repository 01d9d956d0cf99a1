"""Load the workload's prompt texts from the configured source.

Sources (``dataset.source``):

- ``builtin``: lem's own prompt set (``lem.workload.builtin_prompts``).
- ``file``: a ``.jsonl`` file (one JSON object or string per line), a ``.json`` file (a list of
  objects or strings) or a ``.csv`` file with a header row. The text is in ``dataset.column``;
  plain strings need no column.
- ``hf``: ``datasets.load_dataset(hf_name, hf_config, split=hf_split)``, text in ``dataset.column``.
  It must be in the local Hugging Face cache or the hub must be reachable.
- ``synthetic``: word sequences whose token count (under the model's tokenizer, without special
  tokens or chat template) follows ``dataset.synthetic``; needs the tokenizer.

Alpaca-style records (file and hf): when ``column`` is the default ``prompt`` and the records have
no ``prompt`` but an ``instruction`` field, the prompt is the instruction, followed by a blank line
and the ``input`` field when that is non-empty.

Selection: with ``dataset.shuffle`` the source order is shuffled once with ``dataset.seed``; then
the first ``n_prompts`` are taken. A source with fewer than ``n_prompts`` texts is cycled through
(the same texts again, in the same order) so the run still serves ``n_prompts`` requests;
``request_id`` is always the position in the final list, 0..n_prompts-1.

Heavy libraries (``datasets``) are imported only inside the functions that need them.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
from itertools import cycle, islice
from typing import Any, Callable, Iterable, Sequence

from lem.config.schema import DatasetConfig, SyntheticConfig
from lem.config.types import DatasetSource, LengthDistribution
from lem.errors import ConfigError, LemError
from lem.workload.types import Prompt

log = logging.getLogger(__name__)

ALPACA_INSTRUCTION = "instruction"
ALPACA_INPUT = "input"
DEFAULT_COLUMN = "prompt"
FILE_SUFFIXES = (".jsonl", ".json", ".csv")


def load_prompts(ds: DatasetConfig, tokenizer: Any = None) -> list[Prompt]:
    """The ``ds.n_prompts`` prompts of the workload, with request_id = position (see module doc)."""
    texts = _source_texts(ds, tokenizer)
    return select_prompts(texts, ds.n_prompts, shuffle=ds.shuffle, seed=ds.seed)


def select_prompts(texts: Sequence[str], n_prompts: int, *, shuffle: bool, seed: int) -> list[Prompt]:
    """Shuffle (optionally), then take n_prompts texts, cycling when the source is shorter."""
    if not texts:
        raise LemError("the dataset holds no prompts")
    order = list(texts)
    if shuffle:
        random.Random(seed).shuffle(order)
    if len(order) < n_prompts:
        log.info("the dataset has %d prompts; cycling through it to serve %d", len(order), n_prompts)
    chosen = islice(cycle(order), n_prompts)
    return [Prompt(request_id=i, text=text) for i, text in enumerate(chosen)]


def _source_texts(ds: DatasetConfig, tokenizer: Any) -> list[str]:
    if ds.source is DatasetSource.builtin:
        from lem.workload.builtin_prompts import builtin_prompts

        return builtin_prompts()
    if ds.source is DatasetSource.file:
        return file_texts(ds.path, ds.column)
    if ds.source is DatasetSource.hf:
        return _hf_texts(ds)
    if ds.source is DatasetSource.synthetic:
        if tokenizer is None:
            raise LemError("dataset.source=synthetic needs the model's tokenizer to size prompts in tokens")
        return synthetic_texts(ds.synthetic, ds.n_prompts, tokenizer, seed=ds.seed)
    raise ConfigError("dataset.source", ds.source, "one of " + ", ".join(s.value for s in DatasetSource))


# --- file -------------------------------------------------------------------------------------


def file_texts(path: str | None, column: str) -> list[str]:
    """The non-empty prompt texts of a .jsonl/.json/.csv file; one-line LemError for anything unreadable."""
    if not path or not os.path.isfile(path):
        raise ConfigError("dataset.path", path, "an existing .jsonl, .json or .csv file")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in FILE_SUFFIXES:
        raise ConfigError("dataset.path", path, "a file ending in .jsonl, .json or .csv")
    readers: dict[str, Callable[[str], list[Any]]] = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv}
    try:
        records = readers[suffix](path)
    except UnicodeDecodeError as exc:
        raise ConfigError("dataset.path", path, f"a UTF-8 text file (byte {exc.start} is not UTF-8: {exc.reason})") from None
    except OSError as exc:
        raise ConfigError("dataset.path", path, f"a readable file ({exc.strerror or type(exc).__name__})") from None
    except csv.Error as exc:
        raise ConfigError("dataset.path", path, f"a CSV file with a header row ({exc})") from None
    if not records:
        raise ConfigError("dataset.path", path, "a file holding at least one prompt (this one holds no prompts)")
    texts = _texts_from_records(records, column, where=f"dataset.path={path}")
    if not texts:
        raise ConfigError("dataset.path", path, f"a file with at least one non-empty '{column}' value")
    return texts


def _read_jsonl(path: str) -> list[Any]:
    records = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue  # a trailing newline or blank separator line is not a record
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise LemError(f"dataset.path={path}: line {line_no} is not valid JSON ({exc.msg})") from None
    return records


def _read_json(path: str) -> list[Any]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LemError(f"dataset.path={path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, list):
        raise LemError(f"dataset.path={path}: expected a JSON list of objects or strings, found a {type(data).__name__}")
    return data


def _read_csv(path: str) -> list[Any]:
    with open(path, encoding="utf-8-sig", newline="") as f:  # utf-8-sig: spreadsheet exports often start with a BOM
        return list(csv.DictReader(f))


def _texts_from_records(records: Sequence[Any], column: str, where: str) -> list[str]:
    """Pull the prompt text out of each record (a string, or a mapping with ``column``)."""
    if all(isinstance(r, str) for r in records):
        return _skip_empty(records)
    if not all(isinstance(r, dict) for r in records):
        raise LemError(f"{where}: records must all be objects or all be strings")
    columns = _ordered_columns(records)
    if column not in columns:
        if column == DEFAULT_COLUMN and ALPACA_INSTRUCTION in columns:
            return _skip_empty(_alpaca_text(r.get(ALPACA_INSTRUCTION), r.get(ALPACA_INPUT)) for r in records)
        raise ConfigError("dataset.column", column, "one of the file's columns: " + ", ".join(columns))
    for row_no, record in enumerate(records, start=1):
        if column not in record:
            raise LemError(f"{where}: record {row_no} has no '{column}' field")
    return _skip_empty(record[column] for record in records)


def _ordered_columns(records: Iterable[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for record in records:
        seen.update(dict.fromkeys(record))
    return list(seen)


def _alpaca_text(instruction: Any, input_text: Any) -> str:
    """Alpaca convention: the instruction, then the optional input after a blank line."""
    instruction = "" if instruction is None else str(instruction)
    input_text = "" if input_text is None else str(input_text)
    return f"{instruction}\n\n{input_text}" if input_text.strip() else instruction


def _skip_empty(values: Iterable[Any]) -> list[str]:
    """Keep non-empty texts; an empty prompt would measure nothing but the template."""
    texts, n_empty = [], 0
    for value in values:
        text = "" if value is None else str(value)
        if text.strip():
            texts.append(text)
        else:
            n_empty += 1
    if n_empty:
        log.warning("skipped %d empty prompts", n_empty)
    return texts


# --- Hugging Face datasets ----------------------------------------------------------------------


def _hf_texts(ds: DatasetConfig) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise LemError("dataset.source=hf needs the 'datasets' package, which is not installed: pip install datasets") from None
    name = ds.hf_name
    if not name:
        raise ConfigError("dataset.hf_name", name, "a dataset name such as tatsu-lab/alpaca when dataset.source=hf")
    try:
        dataset = datasets.load_dataset(name, ds.hf_config, split=ds.hf_split)
    except Exception as exc:  # load_dataset raises many types (connection, not found, bad split)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise LemError(
            f"dataset.hf_name={name}: could not load split '{ds.hf_split}' ({type(exc).__name__}: {reason}); "
            "the dataset must be in the local Hugging Face cache or the hub must be reachable"
        ) from None
    columns = list(dataset.column_names)
    where = f"dataset.hf_name={name}"
    if ds.column in columns:
        texts = _skip_empty(dataset[ds.column])
    elif ds.column == DEFAULT_COLUMN and ALPACA_INSTRUCTION in columns:
        inputs = dataset[ALPACA_INPUT] if ALPACA_INPUT in columns else [None] * len(dataset)
        texts = _skip_empty(_alpaca_text(i, x) for i, x in zip(dataset[ALPACA_INSTRUCTION], inputs))
    else:
        raise ConfigError("dataset.column", ds.column, f"one of the columns of {name}: " + ", ".join(columns))
    if not texts:
        raise LemError(f"{where}: split '{ds.hf_split}' holds no non-empty '{ds.column}' values")
    return texts


# --- synthetic ----------------------------------------------------------------------------------

# Common English words; the ones the tokenizer encodes as one token are preferred, so a prompt of
# n words is n tokens and lengths can be hit exactly.
WORD_POOL: tuple[str, ...] = tuple(
    dict.fromkeys(  # de-duplicated, order kept
        """
    the of and to in is it that for on was with as at be by this from or have an they which one
    you were all we her she there would their will when who him been has more if no out so said
    what up its about than into them can only other new some could time these two may then do
    first any my now such like our over man me even most made after also did many before must
    through back years where much your way well down should because each just those people how
    too little state good very make world still own see men work long get here between both life
    being under never day same another know while last might us great old year off come since
    against go came right used take three states himself few house use during without again place
    around however home small found thought went say part once general high upon school every
    does got united left number course war until always away something fact though water less
    public put think almost hand enough far took head yet government system better set told
    nothing night end why called eyes find going look asked later knew point next program city
    business give group toward young days let room president side social given present several
    order national possible rather second face per among form important often things looked early
    white case become large big need four within felt along children saw best church ever
    least power development light thing seemed family interest want members mind country area
    others done turned although open problem things certain kind began different door thus help
    sense means whole matter perhaps itself times law human line above name example action
    company hands local show whether five history gave today either act feet across taken past
    quite anything seen having death week experience body word half really field am car words
    already themselves information tell together college shall money period held keep sure real
    probably free seems behind cannot miss political air question making office brought whose
    special heard major problems ago became federal moment study available known result street
    economic boy position reason change south board individual job society areas west close turn
    love community true court force full seem am wife future age wanted department voice center
    woman control common policy necessary following front sometimes six girl clear further land
    run students provide feel party able mother music education university child effect level
    stood military short town morning total outside rate figure class art century
    """.split()
    )
)

_ANCHOR = "the"  # a word before the probe, so a word's cost is measured mid-text, as it will be used


def synthetic_texts(syn: SyntheticConfig, n_prompts: int, tokenizer: Any, seed: int) -> list[str]:
    """n_prompts word sequences, each ``target`` tokens long (±1 for unusual tokenizers).

    Targets are drawn from ``syn`` with ``random.Random(seed)``; the words come from
    ``WORD_POOL`` with a second generator on the same seed, so a seed reproduces every text.
    Lengths count the text's own tokens: no special tokens, no chat template.
    """
    targets = synthetic_lengths(syn, n_prompts, seed)
    pool = _single_token_words(tokenizer) or list(WORD_POOL)
    rng = random.Random(f"lem-synthetic-words-{seed}")
    return [_text_of_length(target, pool, rng, tokenizer) for target in targets]


def synthetic_lengths(syn: SyntheticConfig, n_prompts: int, seed: int) -> list[int]:
    """Token targets from the configured distribution, clamped to [input_tokens_min, input_tokens_max]."""
    rng = random.Random(seed)
    low, high = syn.input_tokens_min, syn.input_tokens_max
    mean, std = syn.input_tokens_mean, syn.input_tokens_std
    dist = syn.input_length_distribution
    if dist is LengthDistribution.fixed:
        draws = [float(mean)] * n_prompts
    elif dist is LengthDistribution.uniform:
        draws = [float(rng.randint(low, high)) for _ in range(n_prompts)]
    elif dist is LengthDistribution.normal:
        draws = [rng.gauss(mean, std) for _ in range(n_prompts)]
    elif dist is LengthDistribution.lognormal:
        # Parameters chosen so the draws' own mean and std are input_tokens_mean and _std.
        sigma2 = math.log(1.0 + (std / mean) ** 2)
        mu = math.log(mean) - sigma2 / 2
        draws = [rng.lognormvariate(mu, math.sqrt(sigma2)) for _ in range(n_prompts)]
    else:
        raise ConfigError("dataset.synthetic.input_length_distribution", dist, "fixed, uniform, normal or lognormal")
    return [min(high, max(low, round(d))) for d in draws]


def _count_tokens(tokenizer: Any, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _single_token_words(tokenizer: Any) -> list[str]:
    """The pool words that cost exactly one token after a space, in pool order."""
    probes = [_ANCHOR] + [f"{_ANCHOR} {word}" for word in WORD_POOL]
    counts = _count_tokens(tokenizer, probes)
    return [word for word, n in zip(WORD_POOL, counts[1:]) if n - counts[0] == 1]


def _text_of_length(target: int, pool: list[str], rng: random.Random, tokenizer: Any) -> str:
    """Words joined by spaces whose token count is ``target`` (or the closest reachable)."""
    words = [rng.choice(pool) for _ in range(2 * target + 4)]  # room for multi-token first words
    n_words = _longest_prefix_within(words, target, tokenizer)
    text = " ".join(words[:n_words])
    count = _count_tokens(tokenizer, [text])[0]
    if count == target:
        return text
    # Short of the target: try finishing with one word that covers the gap exactly.
    candidates = [f"{text} {word}" if text else word for word in pool[:64]]
    for candidate, n in zip(candidates, _count_tokens(tokenizer, candidates)):
        if n == target:
            return candidate
    return text  # within one or two tokens; only reached with tokenizers that merge across spaces


def _longest_prefix_within(words: list[str], target: int, tokenizer: Any) -> int:
    """Largest k with tokens(" ".join(words[:k])) <= target: guess k = target, then binary search."""
    guess = min(target, len(words))
    if _count_tokens(tokenizer, [" ".join(words[:guess])])[0] == target:
        return guess  # the usual case: every word is one token
    low, high = 0, len(words)
    while low < high:
        mid = (low + high + 1) // 2
        if _count_tokens(tokenizer, [" ".join(words[:mid])])[0] <= target:
            low = mid
        else:
            high = mid - 1
    return low
