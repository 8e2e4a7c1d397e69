"""router.log_schema: lossless round trips, and errors that name the field and the row."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from router.errors import LogSchemaError
from router.log_schema import (
    FIELD_NAMES,
    FIELDS,
    SCHEMA,
    LogRecord,
    read_logs,
    records_to_table,
    schema_markdown,
    validate_table,
    write_shard,
)

# Values are exactly representable in float32 so the round trip can compare with ==.
FULL = LogRecord(
    request_id="r-1", timestamp_s=1_700_000_000.123456, tenant="acme", arm="B", bundle_version="v7",
    feature_version="1", prompt="héllo ✓\nsecond line", n_turns=2, input_tokens=42,
    features=[0.5, 1.25, -3.0, 0.0], category="chat", category_probs=[0.25, 0.75], confidence=0.75,
    fallback=False, cache_tier="exact", cache_hit=False, model="medium", candidates=["small", "medium", "large"],
    action_probs=[0.25, 0.5, 0.25], propensity=0.5, policy="epsilon_greedy", replica="medium#1",
    replica_stats='{"num_ongoing": 3}', ttft_ms=12.5, latency_ms=250.0, output_tokens=17, cost_usd=0.0009765625,
    error=None, quality=0.875, label_category="chat",
)
MINIMAL = LogRecord(
    request_id="r-2", timestamp_s=2.0, tenant="default", arm="default", bundle_version="v7", feature_version="1",
    prompt="x", n_turns=1, input_tokens=1, features=[], category="code", category_probs=[1.0], confidence=1.0,
    fallback=True, cache_tier="skip", cache_hit=False, model="large", candidates=["large"], action_probs=[1.0],
    propensity=1.0, policy="fallback",
)  # every nullable field null, empty features list
FAILED = replace(MINIMAL, request_id="r-3", error="BackendError: 503", replica="large#2")


def _rows(table: pa.Table) -> list[dict[str, Any]]:
    return table.to_pylist()


def test_schema_documents_every_field() -> None:
    assert FIELD_NAMES == tuple(f.name for f in SCHEMA)
    assert all(f.doc for f in FIELDS)
    md = schema_markdown()
    assert all(f"| `{n}` |" in md for n in FIELD_NAMES)


def test_round_trip_one_shard_is_lossless(tmp_path: Path) -> None:
    records = [FULL, MINIMAL, FAILED]
    path = write_shard(records, tmp_path)
    assert path.parent == tmp_path and re.fullmatch(r"part-[0-9a-f]{12}\.parquet", path.name)
    assert not list(tmp_path.glob("*.tmp"))
    table = read_logs(tmp_path)
    assert table.schema.equals(SCHEMA)
    assert _rows(table) == [r.to_row() for r in records]
    assert _rows(table)[1]["quality"] is None and _rows(table)[1]["features"] == []
    assert _rows(table)[2]["error"] == "BackendError: 503"


def test_read_a_single_file(tmp_path: Path) -> None:
    path = write_shard([FULL], tmp_path, prefix="decisions-gw-1")
    assert path.name.startswith("decisions-gw-1-")
    assert _rows(read_logs(path)) == [FULL.to_row()]


def test_read_over_several_shards(tmp_path: Path) -> None:
    shards = [[FULL], [MINIMAL, FAILED], [replace(FULL, request_id=f"r-{i}") for i in range(10, 15)]]
    for batch in shards:
        write_shard(batch, tmp_path)
    (tmp_path / "nested").mkdir()
    write_shard([replace(MINIMAL, request_id="deep")], tmp_path / "nested")
    table = read_logs(tmp_path)
    expected = {r.request_id: r.to_row() for batch in shards for r in batch}
    expected["deep"] = replace(MINIMAL, request_id="deep").to_row()
    assert table.num_rows == len(expected)
    assert {row["request_id"]: row for row in _rows(table)} == expected


def test_write_shard_accepts_a_table(tmp_path: Path) -> None:
    write_shard(records_to_table([FULL]), tmp_path)
    assert _rows(read_logs(tmp_path)) == [FULL.to_row()]


# --- invalid rows: the message names the field and the row ----------------------------------------

ROW_PROBLEMS = [
    ("propensity-zero", dict(propensity=0.0), "propensity", r"= 0\.0 must be in \(0, 1\]"),
    ("propensity-above-one", dict(propensity=1.5), "propensity", r"= 1\.5 must be in \(0, 1\]"),
    ("model-not-candidate", dict(model="huge"), "model", r"= 'huge' is not among candidates \['small', 'medium', 'large'\]"),
    ("action-probs-sum", dict(action_probs=[0.5, 0.5, 0.5]), "action_probs", r"sums to 1\.5000, expected 1"),
    ("action-probs-length", dict(action_probs=[0.5, 0.5]), "action_probs", r"has 2 entries for 3 candidates"),
    ("propensity-disagrees", dict(propensity=0.25), "propensity",
     r"= 0\.250000 but action_probs gives 0\.500000 for 'medium'"),
    ("bad-cache-tier", dict(cache_tier="fuzzy"), "cache_tier", r"= 'fuzzy'; allowed: skip, exact, semantic"),
    ("quality-above-one", dict(quality=1.2), "quality", r"= 1\.2\d* must be in \[0, 1\]"),
    ("quality-negative", dict(quality=-0.5), "quality", r"= -0\.5 must be in \[0, 1\]"),
    ("negative-latency", dict(latency_ms=-1.0), "latency_ms", r"= -1\.0 must be >= 0"),
    ("nan-latency", dict(latency_ms=float("nan")), "latency_ms", r"= nan must be >= 0"),
    ("negative-cost", dict(cost_usd=-0.5), "cost_usd", r"= -0\.5 must be >= 0"),
]


@pytest.mark.parametrize(("change", "field", "pattern"), [c[1:] for c in ROW_PROBLEMS], ids=[c[0] for c in ROW_PROBLEMS])
def test_invalid_row_names_field_and_row(change: dict[str, Any], field: str, pattern: str) -> None:
    good = [replace(FULL, request_id=f"ok-{i}") for i in range(3)]
    table = records_to_table([*good, replace(FULL, **change), FULL])
    with pytest.raises(LogSchemaError) as exc:
        validate_table(table, source="shard.parquet")
    message = str(exc.value)
    assert message.startswith(f"shard.parquet: row 3: field '{field}' "), message
    assert re.search(pattern, message), message


def test_valid_table_passes_and_is_cast_to_schema_order() -> None:
    table = records_to_table([FULL, MINIMAL])
    shuffled = table.select(list(reversed(FIELD_NAMES)))
    out = validate_table(shuffled)
    assert out.schema.equals(SCHEMA)
    assert _rows(out) == _rows(table)


def test_missing_column() -> None:
    table = records_to_table([FULL]).drop_columns(["propensity", "arm"])
    with pytest.raises(LogSchemaError, match=re.escape("logs: missing field(s) ['arm', 'propensity']")):
        validate_table(table)


@pytest.mark.parametrize(("name", "values", "expected"), [
    ("timestamp_s", ["yesterday", "today"], "double"),
    ("features", ["x", "y"], "list<item: float>"),
    ("fallback", ["yes", "no"], "bool"),
    ("n_turns", [[1], [2]], "int32"),
])
def test_wrong_type_column(name: str, values: list[Any], expected: str) -> None:
    table = records_to_table([FULL, MINIMAL])
    arr = pa.array(values)
    table = table.set_column(table.schema.get_field_index(name), name, arr)
    with pytest.raises(LogSchemaError, match=re.escape(f"logs: field '{name}' has type {arr.type}, expected {expected}")):
        validate_table(table)


def _with_null(name: str, row: int) -> pa.Table:
    table = records_to_table([FULL, MINIMAL, FAILED])
    values = table.column(name).to_pylist()
    values[row] = None
    field = pa.field(name, table.schema.field(name).type, nullable=True)
    return table.set_column(table.schema.get_field_index(name), field, pa.array(values, field.type))


@pytest.mark.parametrize("name", ["prompt", "input_tokens", "propensity"])
def test_null_in_required_field(name: str) -> None:
    table = _with_null(name, 2)
    with pytest.raises(LogSchemaError, match=re.escape(f"logs: row 2: field '{name}' is null; it is required")):
        validate_table(table)


def test_read_logs_with_a_null_in_a_required_field(tmp_path: Path) -> None:
    pq.write_table(_with_null("model", 1), tmp_path / "part-0.parquet")
    with pytest.raises(LogSchemaError, match="row 1: field 'model' is null"):
        read_logs(tmp_path)


def test_null_in_a_nullable_field_is_fine() -> None:
    table = _with_null("quality", 0)
    assert validate_table(table).column("quality").to_pylist()[0] is None


# --- files --------------------------------------------------------------------------------------


def test_directory_without_shards(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi", encoding="utf-8")
    with pytest.raises(LogSchemaError, match=re.escape(f"no Parquet shards (*.parquet) found under {tmp_path}")):
        read_logs(tmp_path)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(LogSchemaError, match="no Parquet shards"):
        read_logs(tmp_path / "absent")


def test_non_parquet_file_named_parquet(tmp_path: Path) -> None:
    write_shard([FULL], tmp_path)
    bogus = tmp_path / "zz-bogus.parquet"
    bogus.write_text("request_id,model\nr1,small\n", encoding="utf-8")
    with pytest.raises(LogSchemaError, match=re.escape(f"{bogus}: not a readable Parquet file")):
        read_logs(tmp_path)


def test_invalid_shard_is_named_in_read_logs(tmp_path: Path) -> None:
    write_shard([FULL], tmp_path, prefix="a")
    bad = write_shard([MINIMAL, replace(FULL, quality=1.2)], tmp_path, prefix="b")
    with pytest.raises(LogSchemaError, match=re.escape(f"{bad}: row 1: field 'quality'")):
        read_logs(tmp_path)
    assert read_logs(tmp_path, validate=False).num_rows == 3


def test_shards_from_before_a_added_field_read_alongside_new_ones(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from router.log_schema import ADDED_FIELDS, records_to_table

    old = records_to_table([FULL]).drop_columns(list(ADDED_FIELDS))  # a schema-1 shard
    pq.write_table(old, tmp_path / "part-old.parquet")
    write_shard([replace(FULL, request_id="new", assignment_unit="abc")], tmp_path, prefix="part")
    for validate in (True, False):
        rows = {r["request_id"]: r for r in read_logs(tmp_path, validate=validate).to_pylist()}
        assert rows[FULL.request_id]["assignment_unit"] is None and rows["new"]["assignment_unit"] == "abc"


# --- the simulator's logs -----------------------------------------------------------------------


def test_simulated_logs_validate_with_exact_propensities(sim_logs: Path) -> None:
    table = read_logs(sim_logs)
    assert table.num_rows == 2000
    rows = table.select(["model", "candidates", "action_probs", "propensity", "policy"]).to_pylist()
    for r in rows:
        k = len(r["candidates"])
        assert r["policy"] == "uniform"
        assert r["model"] in r["candidates"]
        assert r["propensity"] == float(np.float32(1.0 / k))
        assert r["action_probs"] == [float(np.float32(1.0 / k))] * k
    assert {len(r["candidates"]) for r in rows} == {2, 3}  # chat is restricted to [small, medium]
