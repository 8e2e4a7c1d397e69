"""The JSONL data contracts that adapters write and trainers/simulators read.

Four row kinds, one JSON object per line (see DESIGN.md "Data formats"):

* ``labelled``  -> :class:`LabelledPrompt` ``{"text": str, "category": str}``
* ``outcomes``  -> :class:`OutcomeRow` ``{"prompt": str, "outcomes": {model: {"quality": float in [0, 1],
  "cost": float USD per request}}, "category": str (optional)}``
* ``trace``     -> :class:`TraceRow` ``{"timestamp": float s (ascending, from ~0), "input_tokens": int,
  "output_tokens": int, "prefix_hashes": [int] (optional), "session_id": str (optional)}``
* ``prompts``   -> :class:`ReplayPrompt` ``{"text": str, "session_id": str, "n_turns": int}``: unlabelled
  prompts to replay against a running router (e.g. from ShareGPT).

Extra top-level keys (e.g. ``"source"``, ``"subject"``) are kept in ``extra`` and written back, so a
round trip is lossless. Validation lives here, once, so every reader fails the same way: a
:class:`DataFormatError` naming the file, the line, the field, the bad value and what is allowed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeAlias, overload

from router.errors import RequestError, RouterError
from router.request import decode_json_object

RowKind = Literal["labelled", "outcomes", "trace", "prompts"]
ROW_KINDS: tuple[RowKind, ...] = ("labelled", "outcomes", "trace", "prompts")
JsonDict: TypeAlias = dict[str, Any]


class DataFormatError(RouterError):
    """A dataset file or row does not match its format, or an adapter was given bad input."""


def _fail(where: str, key: str, value: object, allowed: str) -> DataFormatError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return DataFormatError(f"{where}: field '{key}' must be {allowed}; got {shown}")


def _is_number(value: object) -> bool:
    # bool is an int subclass; True as a quality is almost always a bug upstream.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite_number(value: object) -> bool:
    """A JSON number a float holds finitely: not a bool, not NaN/inf, not a 400-digit integer
    (``float()`` of one raises OverflowError)."""
    if not _is_number(value):
        return False
    return abs(value) < 2**1023 if isinstance(value, int) else math.isfinite(value)  # type: ignore[arg-type]


def _require(data: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise DataFormatError(f"{where}: missing required field '{key}' (keys present: {sorted(data)})")
    return data[key]


def _text(data: Mapping[str, Any], key: str, where: str) -> str:
    value = _require(data, key, where)
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, key, value, "a non-empty string")
    return value


def _unit_float(value: object, key: str, where: str) -> float:
    if not _is_number(value) or not 0.0 <= float(value) <= 1.0:  # type: ignore[arg-type]
        raise _fail(where, key, value, "a number in [0, 1]")
    return float(value)  # type: ignore[arg-type]


def _nonneg_float(value: object, key: str, where: str) -> float:
    if not is_finite_number(value) or float(value) < 0:  # type: ignore[arg-type]
        raise _fail(where, key, value, "a finite number >= 0")
    return float(value)  # type: ignore[arg-type]


def _nonneg_int(value: object, key: str, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _fail(where, key, value, "an integer >= 0")
    return value


def _extra(data: Mapping[str, Any], known: Iterable[str]) -> JsonDict:
    known_keys = set(known)
    return {k: v for k, v in data.items() if k not in known_keys}


@dataclass(frozen=True, slots=True)
class LabelledPrompt:
    """A prompt with its category (a taxonomy name)."""

    text: str
    category: str
    extra: JsonDict = field(default_factory=dict)

    def to_json(self) -> JsonDict:
        return {"text": self.text, "category": self.category, **self.extra}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], line_no: int, *, source: str = "<row>") -> LabelledPrompt:
        where = f"{source}:{line_no}"
        return cls(_text(data, "text", where), _text(data, "category", where), _extra(data, ("text", "category")))


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one model achieved on one prompt: quality in [0, 1] and cost in USD for the request."""

    quality: float
    cost_usd: float

    def to_json(self) -> JsonDict:
        return {"quality": self.quality, "cost": self.cost_usd}

    @classmethod
    def from_json(cls, data: object, key: str, where: str) -> Outcome:
        if not isinstance(data, Mapping):
            raise _fail(where, key, data, 'an object {"quality": float, "cost": float}')
        unknown = sorted(set(data) - {"quality", "cost"})
        if unknown:
            raise _fail(where, f"{key}.{unknown[0]}", data[unknown[0]], "absent (allowed keys: quality, cost)")
        quality = _unit_float(_require(data, "quality", f"{where}: {key}"), f"{key}.quality", where)
        return cls(quality, _nonneg_float(_require(data, "cost", f"{where}: {key}"), f"{key}.cost", where))


@dataclass(frozen=True, slots=True)
class OutcomeRow:
    """One prompt of a full-information table: every listed model's outcome is known."""

    prompt: str
    outcomes: dict[str, Outcome]
    category: str | None = None
    extra: JsonDict = field(default_factory=dict)

    def to_json(self) -> JsonDict:
        row: JsonDict = {"prompt": self.prompt, "outcomes": {m: o.to_json() for m, o in self.outcomes.items()}}
        if self.category is not None:
            row["category"] = self.category
        return {**row, **self.extra}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], line_no: int, *, source: str = "<row>") -> OutcomeRow:
        where = f"{source}:{line_no}"
        raw = _require(data, "outcomes", where)
        if not isinstance(raw, Mapping) or not raw:
            raise _fail(where, "outcomes", raw, "a non-empty object {model: {quality, cost}}")
        outcomes = {m: Outcome.from_json(v, f"outcomes.{m}", where) for m, v in raw.items()}
        category = _text(data, "category", where) if "category" in data else None
        known = ("prompt", "outcomes", "category")
        return cls(_text(data, "prompt", where), outcomes, category, _extra(data, known))


@dataclass(frozen=True, slots=True)
class TraceRow:
    """One request arrival: when, how many tokens in and out, and which prefix blocks it shares."""

    timestamp_s: float
    input_tokens: int
    output_tokens: int
    prefix_hashes: tuple[int, ...] | None = None
    session_id: str | None = None
    extra: JsonDict = field(default_factory=dict)

    def to_json(self) -> JsonDict:
        row: JsonDict = {"timestamp": self.timestamp_s, "input_tokens": self.input_tokens,
                         "output_tokens": self.output_tokens}
        if self.prefix_hashes is not None:
            row["prefix_hashes"] = list(self.prefix_hashes)
        if self.session_id is not None:
            row["session_id"] = self.session_id
        return {**row, **self.extra}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], line_no: int, *, source: str = "<row>") -> TraceRow:
        where = f"{source}:{line_no}"
        timestamp = _nonneg_float(_require(data, "timestamp", where), "timestamp", where)
        n_in = _nonneg_int(_require(data, "input_tokens", where), "input_tokens", where)
        n_out = _nonneg_int(_require(data, "output_tokens", where), "output_tokens", where)
        known = ("timestamp", "input_tokens", "output_tokens", "prefix_hashes", "session_id")
        return cls(timestamp, n_in, n_out, _prefix_hashes(data, where), _session_id(data, where), _extra(data, known))


def _prefix_hashes(data: Mapping[str, Any], where: str) -> tuple[int, ...] | None:
    value = data.get("prefix_hashes")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(h, int) and not isinstance(h, bool) for h in value):
        raise _fail(where, "prefix_hashes", value, "a list of integers")
    return tuple(value)


def _session_id(data: Mapping[str, Any], where: str) -> str | None:
    value = data.get("session_id")
    if value is not None and not isinstance(value, str):
        raise _fail(where, "session_id", value, "a string")
    return value


@dataclass(frozen=True, slots=True)
class ReplayPrompt:
    """An unlabelled user prompt to replay (first user turn of a conversation)."""

    text: str
    session_id: str
    n_turns: int
    extra: JsonDict = field(default_factory=dict)

    def to_json(self) -> JsonDict:
        return {"text": self.text, "session_id": self.session_id, "n_turns": self.n_turns, **self.extra}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], line_no: int, *, source: str = "<row>") -> ReplayPrompt:
        where = f"{source}:{line_no}"
        n_turns = _nonneg_int(_require(data, "n_turns", where), "n_turns", where)
        known = ("text", "session_id", "n_turns")
        return cls(_text(data, "text", where), _text(data, "session_id", where), n_turns, _extra(data, known))


Row: TypeAlias = LabelledPrompt | OutcomeRow | TraceRow | ReplayPrompt
_ROW_CLASSES: dict[str, type[LabelledPrompt] | type[OutcomeRow] | type[TraceRow] | type[ReplayPrompt]] = {
    "labelled": LabelledPrompt,
    "outcomes": OutcomeRow,
    "trace": TraceRow,
    "prompts": ReplayPrompt,
}


class _JsonRow(Protocol):
    def to_json(self) -> JsonDict: ...


def iter_json_objects(path: Path) -> Generator[tuple[int, JsonDict], None, None]:
    """Yield ``(line_no, object)`` for every non-blank line of a JSONL file (line numbers from 1).

    Raises:
        DataFormatError: the file is missing, a line is not UTF-8, not JSON, or not a JSON object.
    """
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file (expected a JSONL file)")
    with path.open("rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):  # UTF-8 BOM (Windows editors, PowerShell)
                raw = raw[3:]
            if raw.strip():
                yield line_no, _parse_line(raw, path, line_no)


def _parse_line(raw: bytes, path: Path, line_no: int) -> JsonDict:
    try:
        return decode_json_object(raw)
    except RequestError as e:
        raise DataFormatError(f"{path}:{line_no}: {e}") from e


@overload
def read_jsonl(path: Path | str, kind: Literal["labelled"]) -> list[LabelledPrompt]: ...
@overload
def read_jsonl(path: Path | str, kind: Literal["outcomes"]) -> list[OutcomeRow]: ...
@overload
def read_jsonl(path: Path | str, kind: Literal["trace"]) -> list[TraceRow]: ...
@overload
def read_jsonl(path: Path | str, kind: Literal["prompts"]) -> list[ReplayPrompt]: ...
@overload
def read_jsonl(path: Path | str, kind: str) -> list[Row]: ...


def read_jsonl(path: Path | str, kind: str) -> list[Any]:
    """Read and validate a JSONL file of one row kind; blank lines are skipped.

    Traces must also be sorted by timestamp (replay relies on it).

    Raises:
        DataFormatError: unknown ``kind``, unreadable file, or the first invalid line (file:line, field, value).
    """
    if kind not in _ROW_CLASSES:
        raise DataFormatError(f"kind must be one of {', '.join(ROW_KINDS)}; got {kind!r}")
    path = Path(path)
    cls = _ROW_CLASSES[kind]
    rows = [cls.from_json(obj, line_no, source=str(path)) for line_no, obj in iter_json_objects(path)]
    if kind == "trace":
        _check_sorted(rows, path)  # type: ignore[arg-type]
    return rows


def read_texts(path: Path | str) -> list[str]:
    """The ``text`` of every object of a JSONL file, any other key ignored (e.g. an OOD set given as
    ``{"text": ...}`` rows, with or without a ``category``). Any string is kept -- empty, emoji, other
    scripts: the classifier must take them all.

    Raises:
        DataFormatError: unreadable file, a line that is not a JSON object, or ``text`` missing / not a string.
    """
    path = Path(path)
    out = []
    for line_no, obj in iter_json_objects(path):
        text = obj.get("text")
        if not isinstance(text, str):
            raise DataFormatError(f"{path}:{line_no}: field 'text' must be a string; got {type(text).__name__}")
        out.append(text)
    return out


def _check_sorted(rows: list[TraceRow], path: Path) -> None:
    for i in range(1, len(rows)):
        if rows[i].timestamp_s < rows[i - 1].timestamp_s:
            raise DataFormatError(
                f"{path}: trace row {i + 1} has timestamp {rows[i].timestamp_s} < previous "
                f"{rows[i - 1].timestamp_s}; traces must be sorted ascending")


def write_jsonl(path: Path | str, rows: Iterable[_JsonRow]) -> int:
    """Write rows (anything with ``to_json()``) as UTF-8 JSONL; return the number written.

    Writes to a temporary sibling and renames, so a crash never leaves a half-written file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n_rows = 0
    try:
        with tmp.open("w", encoding="utf-8", newline="\n") as fh:
            for row in rows:
                fh.write(_dumps(row, path, n_rows + 1) + "\n")
                n_rows += 1
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return n_rows


def _dumps(row: _JsonRow, path: Path, row_no: int) -> str:
    try:
        return json.dumps(row.to_json(), ensure_ascii=False, allow_nan=False)
    except ValueError as e:  # NaN/inf would be written as invalid JSON tokens
        raise DataFormatError(f"{path}: row {row_no} holds a non-finite number ({e}); got {row!r:.120}") from e
