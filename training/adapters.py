"""Adapters: public datasets in ../shared/data -> turnout's stable JSONL formats (``training.formats``).

Why a module of its own: trainers, off-policy evaluation and the load simulator only ever read the stable
formats. Everything source-specific (column names, the quirks listed in each ``SOURCE.md``, and the
assumptions we must add, such as prices and token lengths) lives here once, as named constants.

=============  ===========  ==========================================  ============================
source         --in         --out                                       format
=============  ===========  ==========================================  ============================
routerbench    DIR          DIR: train.jsonl, test.jsonl                outcomes
routellm       DIR          DIR: mmlu.jsonl, gsm8k.jsonl,               outcomes, outcomes,
                            categories.jsonl                            labelled
clinc150       DIR          FILE                                        labelled
mooncake       FILE         FILE                                        trace
ragpulse       DIR          FILE                                        trace
servegen       DIR          FILE                                        trace (synthesised arrivals)
sharegpt       FILE         FILE                                        prompts
=============  ===========  ==========================================  ============================

``prompts`` is a fourth, unlabelled format for replaying real user text against a running router:
``{"text": first human turn, "session_id": conversation id, "n_turns": int}`` (``formats.ReplayPrompt``).

Every converter has the signature ``convert_<source>(in_path, out_path, *, seed=0, limit=None, ...)``;
``limit`` caps the rows of each output file (the first rows in output order) and ``seed`` only matters
where a converter samples (servegen). Each returns a summary::

    {"source": str, "files": {path: n_rows}, "n_rows": int, "n_skipped": int, "categories": {category: n}}

``n_skipped`` counts input records deliberately left out (unmapped intents, duplicate texts, rows with
fewer than two models, conversations not starting with a human turn, ...); ``categories`` is empty for
traces. Malformed input raises :class:`~training.formats.DataFormatError` naming file, line and field.
"""

from __future__ import annotations

import ast
import csv
import difflib
import hashlib
import inspect
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from training.formats import (
    DataFormatError,
    LabelledPrompt,
    Outcome,
    OutcomeRow,
    ReplayPrompt,
    TraceRow,
    iter_json_objects,
    write_jsonl,
)

Summary = dict[str, Any]
Converter = Callable[..., Summary]

# Some RouterBench cells hold full model responses; the csv default (128 KiB) is too small.
_CSV_FIELD_LIMIT = 2**31 - 1

# ---------------------------------------------------------------------------------------- shared helpers


def _require_input(path: Path, kind: Literal["dir", "file"], source: str, expected: str) -> Path:
    if not path.exists():
        raise DataFormatError(f"{source}: input {path} does not exist; expected {expected}")
    if kind == "dir" and not path.is_dir():
        raise DataFormatError(f"{source}: input {path} is a file; expected a directory ({expected})")
    if kind == "file" and not path.is_file():
        raise DataFormatError(f"{source}: input {path} is a directory; expected a file ({expected})")
    return path


def _require_output(path: Path, kind: Literal["dir", "file"], source: str) -> Path:
    if kind == "file" and path.is_dir():
        raise DataFormatError(f"{source}: output {path} is a directory; expected a file path such as {path}/out.jsonl")
    if kind == "dir" and path.exists() and not path.is_dir():
        raise DataFormatError(f"{source}: output {path} is a file; expected a directory (created if missing)")
    return path


def _check_common(source: str, seed: int, limit: int | None) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise DataFormatError(f"{source}: seed must be an integer >= 0; got {seed!r}")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise DataFormatError(f"{source}: limit must be None or an integer >= 1; got {limit!r}")


def _head(rows: list[Any], limit: int | None) -> list[Any]:
    return rows if limit is None else rows[:limit]


def _summary(source: str, files: Mapping[Path, int], n_skipped: int, categories: Counter[str]) -> Summary:
    return {
        "source": source,
        "files": {str(p): n for p, n in files.items()},
        "n_rows": sum(files.values()),
        "n_skipped": n_skipped,
        "categories": dict(sorted(categories.items())),
    }


def _count_categories(rows: Iterable[LabelledPrompt | OutcomeRow]) -> Counter[str]:
    return Counter(r.category for r in rows if r.category is not None)


def _read_json(path: Path, source: str) -> Any:
    if not path.is_file():
        raise DataFormatError(f"{source}: missing file {path}")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}: not valid UTF-8 (byte offset {e.start})") from e
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from e


def _csv_dict_rows(path: Path, required: Sequence[str]) -> Iterator[tuple[str, dict[str, str]]]:
    """Yield ``("file:line", record)`` for a headed CSV after checking its required columns.

    Short rows read as blank cells (``restval=""``), which converters treat as missing values.
    """
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, restval="")
        with _csv_errors(path, reader):
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise DataFormatError(f"{path}: missing column(s) {missing}; header is {reader.fieldnames}")
            for record in reader:
                yield f"{path}:{reader.line_num}", record


class _LineCounter(Protocol):
    line_num: int


@contextmanager
def _csv_errors(path: Path, reader: _LineCounter) -> Iterator[None]:
    """Turn decoding and CSV syntax errors into a DataFormatError naming the line."""
    try:
        yield
    except UnicodeDecodeError as e:
        # Decoding is buffered, so the reader has not reached the bad line yet: say "at or after".
        raise DataFormatError(f"{path}: not valid UTF-8 at or after line {reader.line_num + 1}") from e
    except csv.Error as e:
        raise DataFormatError(f"{path}:{reader.line_num}: malformed CSV ({e})") from e


def _source_number(obj: Mapping[str, Any], key: str, where: str) -> float:
    """A finite number >= 0 from a source record; numeric strings are accepted (RAGPulse timestamps)."""
    value = obj.get(key)
    try:
        number = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else math.nan
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0:
        raise DataFormatError(
            f"{where}: field '{key}' must be a finite number >= 0 (or a numeric string); got {value!r}")
    return number


def _source_int(obj: Mapping[str, Any], key: str, where: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise DataFormatError(f"{where}: field '{key}' must be an integer >= 0; got {value!r}")
    return value


def _int_list(obj: Mapping[str, Any], key: str, where: str) -> tuple[int, ...]:
    value = obj.get(key)
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise DataFormatError(f"{where}: field '{key}' must be a list of integers; got {value!r:.80}")
    return tuple(value)


def _relative(rows: list[tuple[float, TraceRow]]) -> list[TraceRow]:
    """Sort ``(absolute_s, row)`` pairs stably by time and shift timestamps to start at 0."""
    rows.sort(key=lambda pair: pair[0])
    t0 = rows[0][0] if rows else 0.0
    return [_at(row, t - t0) for t, row in rows]


def _at(row: TraceRow, timestamp_s: float) -> TraceRow:
    return TraceRow(timestamp_s, row.input_tokens, row.output_tokens, row.prefix_hashes, row.session_id, row.extra)


# ------------------------------------------------------------------------------------------- routerbench

# RouterBench ``eval_name`` (hyphens normalised to underscores) -> turnout taxonomy category.
ROUTERBENCH_CATEGORIES: dict[str, str] = {
    "mbpp": "code",
    "arc_challenge": "knowledge",
    "winogrande": "knowledge",
}
ROUTERBENCH_SPLITS: tuple[str, ...] = ("train", "test")
# A row with one model left is not a routing decision; RouterBench has a few (see report in tests).
MIN_MODELS_PER_ROW = 2
_COST_SUFFIX = "|total_cost"


def convert_routerbench(in_path: Path, out_path: Path, *, seed: int = 0, limit: int | None = None) -> Summary:
    """RouterBench CSVs (``*_train.csv``/``*_test.csv``) -> ``train.jsonl``/``test.jsonl`` outcome tables.

    Keeps the dataset's own split. A model whose quality or cost cell is blank is left out of that row;
    rows with fewer than ``MIN_MODELS_PER_ROW`` models are skipped.
    """
    _check_common("routerbench", seed, limit)
    _require_input(in_path, "dir", "routerbench", "a folder of <task>_train.csv / <task>_test.csv")
    out_dir = _require_output(out_path, "dir", "routerbench")
    files: dict[Path, int] = {}
    categories: Counter[str] = Counter()
    n_skipped = 0
    for split in ROUTERBENCH_SPLITS:
        rows, skipped = _routerbench_split(in_path, split)
        rows = _head(rows, limit)
        files[out_dir / f"{split}.jsonl"] = write_jsonl(out_dir / f"{split}.jsonl", rows)
        categories += _count_categories(rows)
        n_skipped += skipped
    return _summary("routerbench", files, n_skipped, categories)


def _routerbench_split(folder: Path, split: str) -> tuple[list[OutcomeRow], int]:
    paths = sorted(folder.glob(f"*_{split}.csv"))
    if not paths:
        raise DataFormatError(f"routerbench: no *_{split}.csv in {folder}")
    rows: list[OutcomeRow] = []
    n_skipped = 0
    for path in paths:
        for where, record in _csv_dict_rows(path, ("sample_id", "prompt", "eval_name")):
            row = _routerbench_row(record, where)
            if row is None:
                n_skipped += 1
            else:
                rows.append(row)
    return rows, n_skipped


def _routerbench_row(record: dict[str, str], where: str) -> OutcomeRow | None:
    models = [c for c in record if isinstance(c, str) and c + _COST_SUFFIX in record]
    outcomes = {}
    for model in models:
        quality, cost = record[model].strip(), record[model + _COST_SUFFIX].strip()
        if quality and cost:
            cells = {"quality": _parse_float(quality, model, where),
                     "cost": _parse_float(cost, model + _COST_SUFFIX, where)}
            outcomes[model] = Outcome.from_json(cells, f"outcomes.{model}", where)
    if len(outcomes) < MIN_MODELS_PER_ROW:
        return None
    category = _routerbench_category(record["eval_name"], where)
    extra = {"source": "routerbench", "sample_id": record["sample_id"], "eval_name": record["eval_name"]}
    return OutcomeRow(_join_prompt(record["prompt"], where), outcomes, category, extra)


def _parse_float(text: str, column: str, where: str) -> float:
    try:
        return float(text)
    except ValueError as e:
        raise DataFormatError(f"{where}: column '{column}' must be a number; got {text!r:.80}") from e


def _routerbench_category(eval_name: str, where: str) -> str:
    key = eval_name.strip().replace("-", "_")
    if key not in ROUTERBENCH_CATEGORIES:
        raise DataFormatError(
            f"{where}: eval_name {eval_name!r} has no category; known: {', '.join(sorted(ROUTERBENCH_CATEGORIES))} "
            "(add it to ROUTERBENCH_CATEGORIES)")
    return ROUTERBENCH_CATEGORIES[key]


def _join_prompt(cell: str, where: str) -> str:
    """RouterBench stores prompts as a Python list literal of message strings; join them with newlines."""
    try:
        parts = ast.literal_eval(cell)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
        raise DataFormatError(f"{where}: column 'prompt' must be a Python list of strings; got {cell!r:.80}") from e
    if not isinstance(parts, list) or not parts or not all(isinstance(p, str) for p in parts):
        raise DataFormatError(f"{where}: column 'prompt' must be a non-empty list of strings; got {cell!r:.80}")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------- routellm

# CSV column -> model name used in the outcome table.
ROUTELLM_MODELS: dict[str, str] = {
    "mistralai/Mixtral-8x7B-Instruct-v0.1": "mixtral-8x7b-instruct",
    "gpt-4-1106-preview": "gpt-4-1106-preview",
}
# Public list prices, USD per 1M (input, output) tokens, at the time the RouteLLM answers were made (2024):
# OpenAI gpt-4-1106-preview $10/$30; Mixtral-8x7B-Instruct on hosted APIs (Together, Anyscale) $0.60/$0.60.
ROUTELLM_PRICES_USD_PER_1M: dict[str, tuple[float, float]] = {
    "gpt-4-1106-preview": (10.0, 30.0),
    "mixtral-8x7b-instruct": (0.60, 0.60),
}
# Token counts are estimated as ceil(characters / 4), the usual rule of thumb for English BPE tokenizers.
CHARS_PER_TOKEN = 4
# Output length when the data has no response text. MMLU prompts end in "Answer:" and are graded on one
# letter, so a handful of tokens; GSM8K has the real responses (their length is used instead).
ROUTELLM_ASSUMED_OUTPUT_TOKENS: dict[str, int] = {"mmlu": 4, "gsm8k": 200}
# MT-Bench's 8 categories -> turnout taxonomy.
MT_BENCH_CATEGORIES: dict[str, str] = {
    "writing": "writing",
    "roleplay": "chat",
    "reasoning": "knowledge",
    "math": "math",
    "coding": "code",
    "extraction": "knowledge",
    "stem": "knowledge",
    "humanities": "knowledge",
}
_ROUTELLM_LAYOUT = "the routellm folder with mmlu_responses/, gsm8k/ and mt_bench/"


def convert_routellm(in_path: Path, out_path: Path, *, seed: int = 0, limit: int | None = None) -> Summary:
    """RouteLLM evals -> ``mmlu.jsonl``, ``gsm8k.jsonl`` (two-model outcome tables) and ``categories.jsonl``.

    Quality is 1.0/0.0 from the True/False correctness columns. Cost is estimated (the data has none):
    ``ROUTELLM_PRICES_USD_PER_1M`` times ceil(chars/4) tokens of prompt and of response (GSM8K) or
    ``ROUTELLM_ASSUMED_OUTPUT_TOKENS`` (MMLU). ``categories.jsonl`` labels MT-Bench first turns.
    """
    _check_common("routellm", seed, limit)
    _require_input(in_path, "dir", "routellm", _ROUTELLM_LAYOUT)
    out_dir = _require_output(out_path, "dir", "routellm")
    outputs: dict[str, list[Any]] = {
        "mmlu.jsonl": _head(_routellm_mmlu(in_path / "mmlu_responses"), limit),
        "gsm8k.jsonl": _head(_routellm_table(in_path / "gsm8k" / "gsm8k_responses.csv", "gsm8k", "math", {}), limit),
        "categories.jsonl": _head(_mt_bench_prompts(in_path / "mt_bench" / "question.jsonl"), limit),
    }
    files = {out_dir / name: write_jsonl(out_dir / name, rows) for name, rows in outputs.items()}
    categories = sum((_count_categories(rows) for rows in outputs.values()), Counter[str]())
    return _summary("routellm", files, 0, categories)


def _routellm_mmlu(folder: Path) -> list[OutcomeRow]:
    paths = sorted(folder.glob("mmlu_*.csv"))
    if not paths:
        raise DataFormatError(f"routellm: no mmlu_*.csv in {folder}; expected {_ROUTELLM_LAYOUT}")
    rows: list[OutcomeRow] = []
    for path in paths:
        subject = path.stem.removeprefix("mmlu_")
        rows += _routellm_table(path, "mmlu", "knowledge", {"subject": subject})
    return rows


def _routellm_table(path: Path, dataset: str, category: str, extra: dict[str, str]) -> list[OutcomeRow]:
    if not path.is_file():
        raise DataFormatError(f"routellm: missing file {path}; expected {_ROUTELLM_LAYOUT}")
    rows = []
    for where, record in _csv_dict_rows(path, ("prompt", *ROUTELLM_MODELS)):
        outcomes = {name: _routellm_outcome(record, column, name, dataset, where)
                    for column, name in ROUTELLM_MODELS.items()}
        rows.append(OutcomeRow(record["prompt"], outcomes, category, {"source": f"routellm_{dataset}", **extra}))
    return rows


def _routellm_outcome(record: dict[str, str], column: str, model: str, dataset: str, where: str) -> Outcome:
    correct = record[column].strip()
    if correct not in ("True", "False"):
        raise DataFormatError(f"{where}: column '{column}' must be True or False; got {correct!r:.80}")
    response = record.get(f"{column}_response") or ""
    n_out = _estimate_tokens(response) if response.strip() else ROUTELLM_ASSUMED_OUTPUT_TOKENS[dataset]
    cost_usd = _request_cost_usd(model, _estimate_tokens(record["prompt"]), n_out)
    return Outcome(1.0 if correct == "True" else 0.0, cost_usd)


def _estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _request_cost_usd(model: str, input_tokens: int, output_tokens: int) -> float:
    price_in, price_out = ROUTELLM_PRICES_USD_PER_1M[model]
    return (input_tokens * price_in + output_tokens * price_out) / 1_000_000


def _mt_bench_prompts(path: Path) -> list[LabelledPrompt]:
    rows = []
    for line_no, obj in iter_json_objects(path):
        where = f"{path}:{line_no}"
        turns, category = obj.get("turns"), obj.get("category")
        if not isinstance(turns, list) or not turns or not isinstance(turns[0], str) or not turns[0].strip():
            raise DataFormatError(f"{where}: field 'turns' must be a non-empty list of strings; got {turns!r:.80}")
        if category not in MT_BENCH_CATEGORIES:
            raise DataFormatError(
                f"{where}: field 'category' must be one of {', '.join(MT_BENCH_CATEGORIES)}; got {category!r}")
        extra = {"source": "mt_bench", "mt_bench_category": category, "question_id": obj.get("question_id")}
        rows.append(LabelledPrompt(turns[0], MT_BENCH_CATEGORIES[category], extra))
    return rows


# ---------------------------------------------------------------------------------------------- clinc150

# Every intent of this domain is chit-chat.
CLINC_CHAT_DOMAIN = "small_talk"
CLINC_CHAT_CATEGORY = "chat"
# Single intents that match an LLM-traffic category.
CLINC_INTENT_CATEGORIES: dict[str, str] = {
    "translate": "translation",
    "calculator": "math",
    "definition": "knowledge",
}
CLINC_OOS_INTENT = "oos"
CLINC_OTHER_CATEGORY = "other"
CLINC_DATA_FILE = "data_full.json"
CLINC_DOMAINS_FILE = "domains.json"


def convert_clinc150(in_path: Path, out_path: Path, *, seed: int = 0, limit: int | None = None,
                     keep_other: bool = False) -> Summary:
    """CLINC150 (all splits of ``data_full.json``) -> labelled prompts, deduplicated by text.

    Mapped intents: the ``small_talk`` domain -> chat, plus ``CLINC_INTENT_CATEGORIES``. With
    ``keep_other`` the remaining in-scope intents become ``"other"`` and out-of-scope ``"oos"``;
    otherwise they are dropped. A text labelled with two different categories is dropped (ambiguous).
    """
    _check_common("clinc150", seed, limit)
    _require_input(in_path, "dir", "clinc150", f"the clinc150 folder with {CLINC_DATA_FILE} and {CLINC_DOMAINS_FILE}")
    _require_output(out_path, "file", "clinc150")
    intent_map = _clinc_intent_map(_read_json(in_path / CLINC_DOMAINS_FILE, "clinc150"), in_path / CLINC_DOMAINS_FILE)
    pairs = _clinc_pairs(_read_json(in_path / CLINC_DATA_FILE, "clinc150"), in_path / CLINC_DATA_FILE)
    rows, n_skipped = _clinc_rows(pairs, intent_map, keep_other)
    rows = _head(rows, limit)
    return _summary("clinc150", {out_path: write_jsonl(out_path, rows)}, n_skipped, _count_categories(rows))


def _clinc_intent_map(domains: Any, path: Path) -> dict[str, str]:
    if not isinstance(domains, dict) or not isinstance(domains.get(CLINC_CHAT_DOMAIN), list):
        raise DataFormatError(f"{path}: must map domain -> [intent] and include '{CLINC_CHAT_DOMAIN}'")
    return {**{i: CLINC_CHAT_CATEGORY for i in domains[CLINC_CHAT_DOMAIN]}, **CLINC_INTENT_CATEGORIES}


def _clinc_pairs(data: Any, path: Path) -> list[tuple[str, str]]:
    if not isinstance(data, dict):
        raise DataFormatError(f"{path}: must be an object of splits {{split: [[text, intent], ...]}}")
    pairs = []
    for split, items in data.items():
        for i, item in enumerate(items if isinstance(items, list) else [items]):
            if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)):
                raise DataFormatError(f"{path}: split '{split}' item {i} must be [text, intent]; got {item!r:.80}")
            pairs.append((item[0], item[1]))
    return pairs


def _clinc_category(intent: str, intent_map: Mapping[str, str], keep_other: bool) -> str | None:
    if intent in intent_map:
        return intent_map[intent]
    if not keep_other:
        return None
    return CLINC_OOS_INTENT if intent == CLINC_OOS_INTENT else CLINC_OTHER_CATEGORY


def _clinc_rows(pairs: list[tuple[str, str]], intent_map: Mapping[str, str],
                keep_other: bool) -> tuple[list[LabelledPrompt], int]:
    first: dict[str, LabelledPrompt] = {}
    ambiguous: set[str] = set()
    for text, intent in pairs:
        category = _clinc_category(intent, intent_map, keep_other)
        if category is None:
            continue
        seen = first.setdefault(text, LabelledPrompt(text, category, {"source": "clinc150", "intent": intent}))
        if seen.category != category:
            ambiguous.add(text)
    rows = [row for text, row in first.items() if text not in ambiguous]
    return rows, len(pairs) - len(rows)


# ---------------------------------------------------------------------------------------------- mooncake


def convert_mooncake(in_path: Path, out_path: Path, *, seed: int = 0, limit: int | None = None) -> Summary:
    """A Mooncake trace (ms timestamps, 512-token block ``hash_ids``) -> trace in seconds from the first request."""
    _check_common("mooncake", seed, limit)
    _require_input(in_path, "file", "mooncake", "a Mooncake *_trace.jsonl file")
    _require_output(out_path, "file", "mooncake")
    rows = _head(mooncake_trace_rows(in_path), limit)
    return _summary("mooncake", {out_path: write_jsonl(out_path, rows)}, 0, Counter())


def mooncake_trace_rows(in_path: Path) -> list[TraceRow]:
    """The rows of a Mooncake trace file, in seconds from the first request (what ``convert_mooncake``
    writes; ``Trace.read`` uses it to replay a Mooncake file as is)."""
    return _relative([_mooncake_row(obj, f"{in_path}:{line_no}") for line_no, obj in iter_json_objects(in_path)])


def is_mooncake_trace(path: Path) -> bool:
    """True when the first object of a JSONL file has Mooncake's keys (``input_length``,
    ``output_length``, ``timestamp`` in ms) rather than the DESIGN.md trace fields."""
    for _, obj in iter_json_objects(path):
        return isinstance(obj, dict) and {"timestamp", "input_length", "output_length"} <= obj.keys()
    return False


def _mooncake_row(obj: Mapping[str, Any], where: str) -> tuple[float, TraceRow]:
    timestamp_s = _source_number(obj, "timestamp", where) / 1000.0
    n_in, n_out = _source_int(obj, "input_length", where), _source_int(obj, "output_length", where)
    return timestamp_s, TraceRow(timestamp_s, n_in, n_out, _int_list(obj, "hash_ids", where))


# ---------------------------------------------------------------------------------------------- ragpulse

RAGPULSE_TRACE_FILE = "0_trace.jsonl"
# Prompt segments in the order they are concatenated into the model input.
RAGPULSE_SEGMENTS: tuple[str, ...] = ("sys_prompt", "passages_ids", "history", "web_search", "user_input")


def convert_ragpulse(in_path: Path, out_path: Path, *, seed: int = 0, limit: int | None = None) -> Summary:
    """RAGPulse ``0_trace.jsonl`` -> trace sorted by time (the source is not), seconds from the first request.

    ``prefix_hashes`` chains the segment ids in prompt order (see :func:`prefix_hashes`).
    """
    _check_common("ragpulse", seed, limit)
    _require_input(in_path, "dir", "ragpulse", f"the ragpulse folder with {RAGPULSE_TRACE_FILE}")
    _require_output(out_path, "file", "ragpulse")
    trace = in_path / RAGPULSE_TRACE_FILE
    timed = [_ragpulse_row(obj, f"{trace}:{line_no}") for line_no, obj in iter_json_objects(trace)]
    rows = _head(_relative(timed), limit)
    return _summary("ragpulse", {out_path: write_jsonl(out_path, rows)}, 0, Counter())


def _ragpulse_row(obj: Mapping[str, Any], where: str) -> tuple[float, TraceRow]:
    timestamp_s = _source_number(obj, "timestamp", where)
    n_in, n_out = _source_int(obj, "input_length", where), _source_int(obj, "output_length", where)
    hash_ids = obj.get("hash_ids")
    if not isinstance(hash_ids, dict):
        raise DataFormatError(f"{where}: field 'hash_ids' must be an object with keys "
                              f"{', '.join(RAGPULSE_SEGMENTS)}; got {hash_ids!r:.80}")
    session = obj.get("session_id")
    return timestamp_s, TraceRow(timestamp_s, n_in, n_out, prefix_hashes(hash_ids, where),
                                 None if session is None else str(session))


def prefix_hashes(hash_ids: Mapping[str, Any], where: str = "<row>") -> tuple[int, ...]:
    """Chain RAGPulse segment ids into Mooncake-style prefix hashes (63-bit, stable across runs).

    Element ``i`` hashes element ``i-1`` together with segment id ``i``, so equal hashes mean equal
    prefixes, as for Mooncake's block ``hash_ids``; a cache keyed by hash alone then only hits on a true
    prefix. Ids are namespaced by segment (sys_prompt 8302 and passage 8302 differ). ``hashlib`` rather
    than ``hash()``, which is salted per process. Unlike Mooncake, one element is a whole segment, not a
    512-token block.
    """
    out: list[int] = []
    previous = b""
    for segment in RAGPULSE_SEGMENTS:
        if segment not in hash_ids:
            raise DataFormatError(
                f"{where}: field 'hash_ids.{segment}' is missing; expected keys {', '.join(RAGPULSE_SEGMENTS)}")
        value = hash_ids[segment]
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, (int, str)) or isinstance(item, bool):
                raise DataFormatError(
                    f"{where}: field 'hash_ids.{segment}' must hold ints or strings; got {item!r:.80}")
            previous = hashlib.blake2b(previous + f"{segment}:{item}".encode(), digest_size=8).digest()
            out.append(int.from_bytes(previous, "big") >> 1)  # 63 bits: fits a signed int64 column
    return tuple(out)


# ---------------------------------------------------------------------------------------------- servegen

SERVEGEN_WINDOW_S = 600.0  # one CSV row per 10-minute window (SOURCE.md)
_SERVEGEN_CLIENT_FILE = re.compile(r"chunk-(\d+)-trace\.csv")
_SERVEGEN_COLUMNS = "window_start_s, rate, cv, dist, p1, p2"
# RNG stream tags: arrivals use [seed, 1, client, window], lengths [seed, 2]; distinct prefixes never collide.
_ARRIVAL_STREAM, _LENGTH_STREAM = 1, 2


@dataclass(frozen=True, slots=True)
class LogNormalTokens:
    """Token-length distribution: lognormal with this median and log-space sigma, clipped to [1, max_tokens]."""

    median: float
    sigma: float
    max_tokens: int

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        values = rng.lognormal(math.log(self.median), self.sigma, size=n)
        return np.clip(np.rint(values), 1, self.max_tokens).astype(np.int64)


# ASSUMPTION, not data: the copied ServeGen files have no token lengths (the per-window length PDFs in
# chunk-*-dataset.json were not copied), so lengths are drawn from these chat-API-like lognormals.
SERVEGEN_INPUT_TOKENS = LogNormalTokens(median=800, sigma=1.0, max_tokens=32_768)
SERVEGEN_OUTPUT_TOKENS = LogNormalTokens(median=200, sigma=0.8, max_tokens=8_192)


@dataclass(frozen=True, slots=True)
class _Window:
    client_id: int
    start_s: float
    rate: float  # requests per second
    cv: float  # coefficient of variation of inter-arrival gaps


def convert_servegen(in_path: Path, out_path: Path, *, seed: int = 0, limit: int | None = None,
                     model: str | None = None, start_s: float = 0.0, duration_s: float = 600.0,
                     max_requests: int = 100_000) -> Summary:
    """Synthesise a multi-tenant arrival trace from ServeGen per-client window statistics.

    For each client and each non-idle window overlapping ``[start_s, start_s + duration_s)``, arrivals
    form a renewal process whose gaps are Gamma with the window's rate and CV (shape 1/cv^2, scale
    1/(rate*shape)); clients are summed. Windows fitted as Weibull use the Gamma with the same two
    moments. Output is the earliest ``min(max_requests, limit)`` arrivals, timestamps relative to
    ``start_s``, ``session_id`` = client id; token lengths are sampled (``SERVEGEN_INPUT_TOKENS``,
    ``SERVEGEN_OUTPUT_TOKENS``, an assumption). Deterministic in ``seed``; each (client, window) has
    its own RNG stream, so a window's arrivals do not depend on the chosen range.
    """
    _check_common("servegen", seed, limit)
    _check_servegen_range(start_s, duration_s, max_requests)
    _require_input(in_path, "dir", "servegen", "a ServeGen model folder or the servegen root")
    folder = _servegen_folder(in_path, model)
    _require_output(out_path, "file", "servegen")
    n_max = max_requests if limit is None else min(max_requests, limit)
    windows = _servegen_windows(folder, start_s, start_s + duration_s)
    times, clients = _servegen_arrivals(windows, seed, start_s, start_s + duration_s, n_max)
    rows = _servegen_rows(times - start_s, clients, np.random.default_rng([seed, _LENGTH_STREAM]))
    return _summary("servegen", {out_path: write_jsonl(out_path, rows)}, 0, Counter())


def _check_servegen_range(start_s: float, duration_s: float, max_requests: int) -> None:
    if not (math.isfinite(start_s) and start_s >= 0):
        raise DataFormatError(f"servegen: start_s must be a finite number >= 0; got {start_s!r}")
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise DataFormatError(f"servegen: duration_s must be a finite number > 0; got {duration_s!r}")
    if not isinstance(max_requests, int) or isinstance(max_requests, bool) or max_requests < 1:
        raise DataFormatError(f"servegen: max_requests must be an integer >= 1; got {max_requests!r}")


def _servegen_folder(path: Path, model: str | None) -> Path:
    if model is None:
        if _servegen_client_files(path):
            return path
        models = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise DataFormatError(f"servegen: {path} has no chunk-<client>-trace.csv files; pass it as the root with "
                              f"model=<one of {', '.join(models) or 'no subfolders'}>, or pass a model folder")
    folder = path / model
    if not folder.is_dir():
        models = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise DataFormatError(f"servegen: model {model!r} not found under {path}; available: "
                              f"{', '.join(models) or 'none'}{_did_you_mean(model, models)}")
    return folder


def _servegen_client_files(folder: Path) -> list[tuple[int, Path]]:
    matches = ((_SERVEGEN_CLIENT_FILE.fullmatch(p.name), p) for p in folder.iterdir())
    return sorted((int(m.group(1)), p) for m, p in matches if m)


def _servegen_windows(folder: Path, lo: float, hi: float) -> list[_Window]:
    windows = [w for client_id, path in _servegen_client_files(folder) for w in _read_client(path, client_id)
               if w.start_s < hi and w.start_s + SERVEGEN_WINDOW_S > lo]
    return sorted(windows, key=lambda w: (w.start_s, w.client_id))


def _read_client(path: Path, client_id: int) -> list[_Window]:
    windows = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        with _csv_errors(path, reader):
            for cells in reader:
                window = _parse_window(cells, client_id, f"{path}:{reader.line_num}")
                if window is not None:
                    windows.append(window)
    return windows


def _parse_window(cells: list[str], client_id: int, where: str) -> _Window | None:
    if len(cells) != 6:
        raise DataFormatError(f"{where}: expected 6 columns ({_SERVEGEN_COLUMNS}); got {len(cells)}: {cells!r:.80}")
    start, rate, cv = (_parse_float(cells[i], name, where) for i, name in enumerate(("window_start_s", "rate", "cv")))
    if not cells[3].strip() or rate <= 0:  # idle window
        return None
    if not (math.isfinite(rate) and math.isfinite(cv) and cv >= 0):
        raise DataFormatError(f"{where}: rate and cv must be finite and cv >= 0; got rate={rate!r}, cv={cv!r}")
    return _Window(client_id, start, rate, cv)


def _servegen_arrivals(windows: list[_Window], seed: int, lo: float, hi: float,
                       n_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Earliest ``n_max`` arrivals in ``[lo, hi)``, as (times, client ids) sorted by time.

    Windows are visited in time order and generation stops after the first window start at which
    ``n_max`` arrivals exist: later windows start later, so they cannot contribute to the earliest
    ``n_max``. Capping each window at ``n_max`` is exact for the same reason.
    """
    times: list[np.ndarray] = []
    clients: list[np.ndarray] = []
    n_total, i = 0, 0
    while i < len(windows) and n_total < n_max:
        window_start = windows[i].start_s
        while i < len(windows) and windows[i].start_s == window_start:
            arrivals = _window_arrivals(windows[i], seed, lo, hi, n_max)
            times.append(arrivals)
            clients.append(np.full(arrivals.size, windows[i].client_id, dtype=np.int64))
            n_total += arrivals.size
            i += 1
    if not times:
        return np.empty(0), np.empty(0, dtype=np.int64)
    all_times, all_clients = np.concatenate(times), np.concatenate(clients)
    order = np.argsort(all_times, kind="stable")[:n_max]
    return all_times[order], all_clients[order]


def _window_arrivals(w: _Window, seed: int, lo: float, hi: float, n_max: int) -> np.ndarray:
    """Arrival times of one client-window restricted to ``[lo, hi)``, at most ``n_max`` (the earliest)."""
    rng = np.random.default_rng([seed, _ARRIVAL_STREAM, w.client_id, int(w.start_s // SERVEGEN_WINDOW_S)])
    end = min(w.start_s + SERVEGEN_WINDOW_S, hi)
    t, n_kept, chunks = w.start_s, 0, []
    while n_kept < n_max:
        size = min(int(w.rate * (end - t) * 1.25) + 16, 4 * n_max + 16)
        gaps = _gamma_gaps(rng, w, size)
        if not chunks:
            gaps[0] = _first_gap(rng, w)
        arrivals = t + np.cumsum(gaps)
        inside = arrivals[arrivals < end]
        kept = inside[inside >= lo]
        chunks.append(kept)
        n_kept += kept.size
        if inside.size < size:
            break
        t = float(arrivals[-1])
    return np.concatenate(chunks)[:n_max]


def _gamma_gaps(rng: np.random.Generator, w: _Window, size: int) -> np.ndarray:
    if w.cv == 0:  # perfectly regular arrivals
        return np.full(size, 1.0 / w.rate)
    shape = 1.0 / w.cv**2
    return rng.gamma(shape, 1.0 / (w.rate * shape), size=size)


def _first_gap(rng: np.random.Generator, w: _Window) -> float:
    """Time from the window start to its first arrival, as if the process had been running before.

    A renewal process observed from an arbitrary instant waits U * G' (U uniform, G' the length-biased
    gap; for Gamma(k, s) that is Gamma(k + 1, s)). Starting with an ordinary gap instead would put a burst
    at every window boundary when the CV is large (shape -> 0 makes most gaps ~0): ServeGen has CVs > 100.
    """
    if w.cv == 0:
        return float(rng.uniform()) / w.rate
    shape = 1.0 / w.cv**2
    return float(rng.uniform() * rng.gamma(shape + 1.0, 1.0 / (w.rate * shape)))


def _servegen_rows(times: np.ndarray, clients: np.ndarray, rng: np.random.Generator) -> list[TraceRow]:
    n_in = SERVEGEN_INPUT_TOKENS.draw(rng, times.size)
    n_out = SERVEGEN_OUTPUT_TOKENS.draw(rng, times.size)
    return [TraceRow(float(t), int(i), int(o), None, str(c))
            for t, i, o, c in zip(times.tolist(), n_in.tolist(), n_out.tolist(), clients.tolist(), strict=True)]


# ---------------------------------------------------------------------------------------------- sharegpt


def convert_sharegpt(in_path: Path, out_path: Path, *, seed: int = 0, limit: int | None = None) -> Summary:
    """ShareGPT human turns -> unlabelled replay prompts (first human turn of each conversation).

    Conversations that do not start with a human turn (continuation splits) or whose first turn is blank
    are skipped. Repeated prompts are kept: they are what exact-match caches hit on.
    """
    _check_common("sharegpt", seed, limit)
    _require_input(in_path, "file", "sharegpt", "sharegpt_v3_human_turns.jsonl")
    _require_output(out_path, "file", "sharegpt")
    rows: list[ReplayPrompt] = []
    n_skipped = 0
    records = iter_json_objects(in_path)
    try:
        for line_no, obj in records:
            if limit is not None and len(rows) >= limit:
                break
            row = _sharegpt_row(obj, f"{in_path}:{line_no}")
            n_skipped += row is None
            rows += [row] if row is not None else []
    finally:
        records.close()
    return _summary("sharegpt", {out_path: write_jsonl(out_path, rows)}, n_skipped, Counter())


def _sharegpt_row(obj: Mapping[str, Any], where: str) -> ReplayPrompt | None:
    roles, turns = obj.get("turn_roles"), obj.get("human_turns")
    if not isinstance(roles, list) or not isinstance(turns, list):
        raise DataFormatError(
            f"{where}: fields 'turn_roles' and 'human_turns' must be lists; got {roles!r:.40}, {turns!r:.40}")
    if not roles or roles[0] != "human" or not turns or not isinstance(turns[0], str) or not turns[0].strip():
        return None
    if "id" not in obj:
        raise DataFormatError(f"{where}: missing required field 'id'")
    return ReplayPrompt(turns[0], str(obj["id"]), _source_int(obj, "n_turns", where))


# ---------------------------------------------------------------------------------------------- csv traces

# Recognised header names when no column option is given, compared after ``_column_key`` (case, spaces,
# ``_`` and ``-`` ignored): the Azure LLM inference traces use ``TIMESTAMP,ContextTokens,GeneratedTokens``,
# BurstGPT ``Timestamp,...,Request tokens,Response tokens``, Mooncake-style exports ``input_length``.
CSV_TRACE_COLUMNS: dict[str, tuple[str, ...]] = {
    "timestamp": ("timestamp", "time", "arrival_time", "arrival_timestamp"),
    "input": ("context_tokens", "input_tokens", "prompt_tokens", "request_tokens", "input_length", "prompt_length"),
    "output": ("generated_tokens", "output_tokens", "completion_tokens", "response_tokens", "output_length"),
}


def _column_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())
CSV_TIME_UNITS: dict[str, float] = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


def convert_csv(in_path: Path, out_path: Path, *, seed: int = 0, limit: int | None = None,
                timestamp_column: str | None = None, input_column: str | None = None,
                output_column: str | None = None, time_unit: str = "s") -> Summary:
    """A CSV arrival trace (timestamp, prompt tokens, generated tokens per row) -> trace JSONL in seconds
    from the first request, sorted by time; no prefix hashes.

    Columns are found by ``CSV_TRACE_COLUMNS`` unless named (``timestamp_column`` etc., case-insensitive).
    Timestamps are numbers in ``time_unit`` (s, ms, us) or ISO 8601 date-times.
    """
    _check_common("csv", seed, limit)
    _require_input(in_path, "file", "csv", "a CSV trace with timestamp, context and generated token columns")
    _require_output(out_path, "file", "csv")
    rows = _head(csv_trace_rows(in_path, timestamp_column=timestamp_column, input_column=input_column,
                                output_column=output_column, time_unit=time_unit), limit)
    return _summary("csv", {out_path: write_jsonl(out_path, rows)}, 0, Counter())


def csv_trace_rows(path: Path, *, timestamp_column: str | None = None, input_column: str | None = None,
                   output_column: str | None = None, time_unit: str = "s") -> list[TraceRow]:
    """The rows of a CSV arrival trace, sorted by time, timestamps relative to the first (see ``convert_csv``).

    Raises:
        DataFormatError: a missing column, an unknown ``time_unit``, or a value that does not parse
            (file:line, column and value named).
    """
    from datetime import datetime

    if time_unit not in CSV_TIME_UNITS:
        raise DataFormatError(f"csv: time_unit must be one of {', '.join(CSV_TIME_UNITS)}; got {time_unit!r}")
    scale = CSV_TIME_UNITS[time_unit]
    named = {"timestamp": timestamp_column, "input": input_column, "output": output_column}
    timed: list[tuple[float, TraceRow]] = []
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            with _csv_errors(path, reader):
                header = [h.strip() for h in next(reader, [])]
                keys = [_column_key(h) for h in header]
                cols: dict[str, int] = {}
                for key, names in CSV_TRACE_COLUMNS.items():
                    choices = (named[key].strip(),) if named[key] else names
                    found = next((keys.index(_column_key(n)) for n in choices if _column_key(n) in keys), None)
                    if found is None:
                        raise DataFormatError(f"{path}: no {key} column; expected one of {', '.join(choices)} "
                                              f"(case, spaces and _ ignored); header is {header}")
                    cols[key] = found
                for cells in reader:
                    if not cells:
                        continue
                    where = f"{path}:{reader.line_num}"
                    try:
                        raw = cells[cols["timestamp"]].strip()
                        try:
                            t = float(raw) * scale
                        except ValueError:
                            t = datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
                        n_in, n_out = int(float(cells[cols["input"]])), int(float(cells[cols["output"]]))
                    except (ValueError, IndexError) as e:
                        raise DataFormatError(f"{where}: cannot parse {cells!r:.80} ({e})") from e
                    if not math.isfinite(t) or n_in < 0 or n_out < 0:
                        raise DataFormatError(f"{where}: timestamp must be finite and token counts >= 0; "
                                              f"got {cells!r:.80}")
                    timed.append((t, TraceRow(t, n_in, n_out)))
    except OSError as e:
        raise DataFormatError(f"{path}: cannot read the CSV trace: {e}") from e
    if not timed:
        raise DataFormatError(f"{path}: the CSV trace has no rows")
    return _relative(timed)


# ---------------------------------------------------------------------------------------------- dispatch

CONVERTERS: dict[str, Converter] = {
    "routerbench": convert_routerbench,
    "routellm": convert_routellm,
    "clinc150": convert_clinc150,
    "mooncake": convert_mooncake,
    "ragpulse": convert_ragpulse,
    "servegen": convert_servegen,
    "sharegpt": convert_sharegpt,
    "csv": convert_csv,
}


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f". Did you mean {close[0]!r}?" if close else ""


def _check_options(source: str, converter: Converter, options: Mapping[str, Any]) -> None:
    allowed = [p.name for p in inspect.signature(converter).parameters.values() if p.kind is p.KEYWORD_ONLY]
    for name in options:
        if name not in allowed:
            raise DataFormatError(f"{source}: unknown option {name!r}; allowed: {', '.join(allowed)}"
                                  f"{_did_you_mean(name, allowed)}")


def convert(source: str, in_path: Path | str, out_path: Path | str, **options: Any) -> Summary:
    """Convert ``in_path`` with the converter registered for ``source``; return its summary.

    Raises:
        DataFormatError: unknown source or option (with a suggestion), an input path that is missing or
            of the wrong kind (file vs directory), or malformed input data.
    """
    if source not in CONVERTERS:
        raise DataFormatError(f"unknown source {source!r}; known sources: {', '.join(sorted(CONVERTERS))}"
                              f"{_did_you_mean(source, CONVERTERS)}")
    converter = CONVERTERS[source]
    _check_options(source, converter, options)
    return converter(Path(in_path), Path(out_path), **options)
