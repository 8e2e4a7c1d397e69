"""training.formats: round trips, and the messages that bad rows and bad files produce."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from router.errors import RouterError
from training.formats import (
    DataFormatError,
    LabelledPrompt,
    Outcome,
    OutcomeRow,
    ReplayPrompt,
    TraceRow,
    read_jsonl,
    write_jsonl,
)

ROWS = {
    "labelled": [LabelledPrompt("hello there", "chat"), LabelledPrompt("2+2?", "math", {"source": "unit"})],
    "outcomes": [
        OutcomeRow("q1", {"a": Outcome(1.0, 0.002), "b": Outcome(0.0, 0.0)}),
        OutcomeRow("q2", {"a": Outcome(0.5, 1e-6)}, "code", {"source": "unit", "subject": "x"}),
    ],
    "trace": [
        TraceRow(0.0, 10, 3),
        TraceRow(0.0, 5, 1, (1, 2, 2**62), "s1"),
        TraceRow(1.5, 0, 0, (), None, {"note": "keep me"}),
    ],
    "prompts": [ReplayPrompt("hi", "abc_0", 2), ReplayPrompt("héllo ✓", "abc_1", 1)],
}


def _write_lines(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"".join((ln if isinstance(ln, bytes) else ln.encode()) + b"\n" for ln in lines))
    return path


@pytest.mark.parametrize("kind", sorted(ROWS))
def test_round_trip_is_lossless(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.jsonl"
    assert write_jsonl(path, ROWS[kind]) == len(ROWS[kind])
    assert read_jsonl(path, kind) == ROWS[kind]
    assert not list(tmp_path.glob("*.tmp"))


def test_json_keys_follow_the_design_doc() -> None:
    assert ROWS["outcomes"][1].to_json() == {
        "prompt": "q2", "outcomes": {"a": {"quality": 0.5, "cost": 1e-6}}, "category": "code",
        "source": "unit", "subject": "x"}
    assert ROWS["trace"][1].to_json() == {
        "timestamp": 0.0, "input_tokens": 5, "output_tokens": 1, "prefix_hashes": [1, 2, 2**62], "session_id": "s1"}
    assert ROWS["trace"][0].to_json() == {"timestamp": 0.0, "input_tokens": 10, "output_tokens": 3}


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "x.jsonl", ["", '{"text": "a", "category": "chat"}', "   ", ""])
    assert read_jsonl(path, "labelled") == [LabelledPrompt("a", "chat")]


def test_bom_and_crlf_are_accepted(tmp_path: Path) -> None:  # files saved by Windows editors / PowerShell
    path = tmp_path / "w.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "a", "category": "chat"}\r\n{"text": "b", "category": "code"}\r\n')
    assert read_jsonl(path, "labelled") == [LabelledPrompt("a", "chat"), LabelledPrompt("b", "code")]


BAD_ROWS = [
    ("labelled", {"text": "a"}, r"missing required field 'category' \(keys present: \['text'\]\)"),
    ("labelled", {"text": 3, "category": "chat"}, r"field 'text' must be a non-empty string; got 3"),
    ("labelled", {"text": "  ", "category": "chat"}, r"field 'text' must be a non-empty string; got '  '"),
    ("outcomes", {"prompt": "p", "outcomes": {}}, r"field 'outcomes' must be a non-empty object"),
    ("outcomes", {"prompt": "p", "outcomes": {"m": {"quality": 1.5, "cost": 0}}},
     r"field 'outcomes\.m\.quality' must be a number in \[0, 1\]; got 1\.5"),
    ("outcomes", {"prompt": "p", "outcomes": {"m": {"quality": True, "cost": 0}}},
     r"field 'outcomes\.m\.quality' must be a number in \[0, 1\]; got True"),
    ("outcomes", {"prompt": "p", "outcomes": {"m": {"quality": 1, "cost": -0.1}}},
     r"field 'outcomes\.m\.cost' must be a finite number >= 0; got -0\.1"),
    ("outcomes", {"prompt": "p", "outcomes": {"m": {"quality": 1}}},
     r"outcomes\.m: missing required field 'cost'"),
    ("outcomes", {"prompt": "p", "outcomes": {"m": {"quality": 1, "cost": 0, "latency": 3}}},
     r"field 'outcomes\.m\.latency' must be absent \(allowed keys: quality, cost\); got 3"),
    ("outcomes", {"prompt": "p", "outcomes": {"m": 0.5}}, r"field 'outcomes\.m' must be an object"),
    ("outcomes", {"prompt": "p", "outcomes": {"m": {"quality": 1, "cost": 0}}, "category": 7},
     r"field 'category' must be a non-empty string; got 7"),
    ("trace", {"timestamp": 0, "input_tokens": 1.5, "output_tokens": 1},
     r"field 'input_tokens' must be an integer >= 0; got 1\.5"),
    ("trace", {"timestamp": "0", "input_tokens": 1, "output_tokens": 1},
     r"field 'timestamp' must be a finite number >= 0; got '0'"),
    ("trace", {"timestamp": -1, "input_tokens": 1, "output_tokens": 1},
     r"field 'timestamp' must be a finite number >= 0; got -1"),
    ("trace", {"input_tokens": 1, "output_tokens": 1}, r"missing required field 'timestamp'"),
    ("trace", {"timestamp": 0, "input_tokens": 1, "output_tokens": 1, "prefix_hashes": ["a"]},
     r"field 'prefix_hashes' must be a list of integers; got \['a'\]"),
    ("trace", {"timestamp": 0, "input_tokens": 1, "output_tokens": 1, "session_id": 5},
     r"field 'session_id' must be a string; got 5"),
    ("prompts", {"text": "hi", "session_id": "s", "n_turns": -1}, r"field 'n_turns' must be an integer >= 0; got -1"),
]


@pytest.mark.parametrize(("kind", "row", "message"), BAD_ROWS)
def test_invalid_rows_name_file_line_field_and_value(tmp_path: Path, kind: str, row: dict[str, object],
                                                     message: str) -> None:
    good = {"labelled": ROWS["labelled"][0], "outcomes": ROWS["outcomes"][0], "trace": ROWS["trace"][0],
            "prompts": ROWS["prompts"][0]}[kind]
    path = _write_lines(tmp_path / "bad.jsonl", [json.dumps(good.to_json()), json.dumps(row)])
    with pytest.raises(DataFormatError, match=re.escape(str(path)) + ":2: .*" + message):
        read_jsonl(path, kind)


def test_nan_is_rejected(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "nan.jsonl", ['{"timestamp": NaN, "input_tokens": 1, "output_tokens": 1}'])
    with pytest.raises(DataFormatError, match=r":1: not valid JSON \(NaN is not a JSON number\)"):
        read_jsonl(path, "trace")


BAD_FILES: list[tuple[list[str | bytes], str]] = [
    (['{"text": "a", "category": "c"}', "", '{"text": "b", "category": '],
     r":3: not valid JSON \(Expecting value at column 27\)"),
    (['{"text": "a", "category": "c"}', b'{"text": "\xff", "category": "c"}'],
     r":2: not valid UTF-8 \(byte 0xff at offset 10\)"),
    (["[1, 2]"], r":1: must be a JSON object; got list"),
]


@pytest.mark.parametrize(("lines", "message"), BAD_FILES)
def test_unreadable_lines_are_named(tmp_path: Path, lines: list[str | bytes], message: str) -> None:
    path = _write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataFormatError, match=re.escape(str(path)) + message):
        read_jsonl(path, "labelled")


def test_unsorted_trace_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    write_jsonl(path, [TraceRow(2.0, 1, 1), TraceRow(1.0, 1, 1)])
    with pytest.raises(DataFormatError, match=r"trace row 2 has timestamp 1\.0 < previous 2\.0; traces must be sorted"):
        read_jsonl(path, "trace")


def test_unknown_kind_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=r"kind must be one of labelled, outcomes, trace, prompts; got 'trac'"):
        read_jsonl(tmp_path / "x.jsonl", "trac")
    with pytest.raises(DataFormatError, match=r"x\.jsonl: no such file"):
        read_jsonl(tmp_path / "x.jsonl", "trace")


def test_write_rejects_non_finite_and_leaves_no_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    rows = [OutcomeRow("p", {"m": Outcome(1.0, 0.0)}), OutcomeRow("p", {"m": Outcome(float("nan"), 0.0)})]
    with pytest.raises(DataFormatError, match=r"o\.jsonl: row 2 holds a non-finite number"):
        write_jsonl(path, rows)
    assert list(tmp_path.iterdir()) == []


def test_data_format_error_is_a_router_error() -> None:
    assert issubclass(DataFormatError, RouterError)


def test_read_texts_takes_any_string_and_ignores_other_keys(tmp_path: Path) -> None:
    from training.formats import read_texts

    path = tmp_path / "ood.jsonl"
    path.write_text('{"text": "Wie spät ist es?"}\n{"text": "", "category": "ood"}\n\n{"text": "\\ud800"}\n',
                    encoding="utf-8")
    assert read_texts(path) == ["Wie spät ist es?", "", "\ud800"]
    path.write_text('{"text": 3}\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"ood.jsonl:1: field 'text' must be a string; got int"):
        read_texts(path)
