"""Late feedback (contract 1): shards round-trip, bad rows are named, the latest feedback wins the join."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from router.errors import LogSchemaError
from router.log_schema import (
    FEEDBACK_SCHEMA,
    LogRecord,
    join_feedback,
    read_feedback,
    read_logs,
    records_to_table,
    write_feedback_shard,
    write_shard,
)

BASE = LogRecord(
    request_id="r-0", timestamp_s=1.0, tenant="t", arm="default", bundle_version="v1", feature_version="1",
    prompt="p", n_turns=1, input_tokens=3, features=[0.5], category="chat", category_probs=[1.0], confidence=1.0,
    fallback=False, cache_tier="skip", cache_hit=False, model="small", candidates=["small", "large"],
    action_probs=[0.5, 0.5], propensity=0.5, policy="uniform", quality=0.25,
)


def _logs(n: int = 3) -> pa.Table:
    return records_to_table([replace(BASE, request_id=f"r-{i}", quality=None if i == 2 else 0.25) for i in range(n)])


def test_write_and_read_round_trip(tmp_path: Path) -> None:
    path = write_feedback_shard(tmp_path, [{"request_id": "r-1", "quality": 1, "timestamp_s": 5.0}])
    assert path.name.startswith("feedback-") and path.suffix == ".parquet"
    assert not list(tmp_path.glob("*.tmp"))
    fb = read_feedback(tmp_path)
    assert fb.schema.equals(FEEDBACK_SCHEMA)
    assert fb.to_pylist() == [{"request_id": "r-1", "quality": 1.0, "timestamp_s": 5.0}]


def test_read_feedback_empty_when_none(tmp_path: Path) -> None:
    write_shard(_logs(), tmp_path)
    fb = read_feedback(tmp_path)
    assert fb.num_rows == 0 and fb.schema.equals(FEEDBACK_SCHEMA)
    assert read_feedback(tmp_path / "absent").num_rows == 0


def test_read_logs_joins_feedback_shards_as_quality(tmp_path: Path) -> None:
    """Feedback shards are not decision rows; their quality reaches every reader of the logs (training,
    OPE, A/B) through read_logs, unless a caller asks for the logged quality alone."""
    write_shard(_logs(), tmp_path)
    write_feedback_shard(tmp_path, [{"request_id": "r-2", "quality": 0.75, "timestamp_s": 2.0}])
    assert read_logs(tmp_path).column("quality").to_pylist() == [0.25, 0.25, 0.75]
    assert read_logs(tmp_path, feedback=False).column("quality").to_pylist() == [0.25, 0.25, None]


@pytest.mark.parametrize(("row", "field"), [
    ({"request_id": "", "quality": 0.5, "timestamp_s": 1.0}, "request_id"),
    ({"request_id": "a", "quality": 1.5, "timestamp_s": 1.0}, "quality"),
    ({"request_id": "a", "quality": float("nan"), "timestamp_s": 1.0}, "quality"),
    ({"request_id": "a", "quality": "good", "timestamp_s": 1.0}, "quality"),
    ({"request_id": "a", "quality": 0.5}, "timestamp_s"),
    ({"request_id": "a", "quality": 0.5, "timestamp_s": 1.0, "score": 3}, "score"),
])
def test_bad_rows_name_row_and_field(tmp_path: Path, row: dict, field: str) -> None:
    good = {"request_id": "ok", "quality": 0.5, "timestamp_s": 1.0}
    with pytest.raises(LogSchemaError, match=rf"row 1: field '{field}'"):
        write_feedback_shard(tmp_path, [good, row])
    assert not list(tmp_path.glob("*.parquet"))


def test_corrupt_feedback_shard_is_named(tmp_path: Path) -> None:
    pq.write_table(pa.table({"request_id": ["a"], "quality": [2.0], "timestamp_s": [1.0]}), tmp_path / "feedback-x.parquet")
    with pytest.raises(LogSchemaError, match=r"feedback-x.parquet: row 0: field 'quality'"):
        read_feedback(tmp_path)


def test_join_latest_feedback_wins_and_others_keep_logged_quality(tmp_path: Path) -> None:
    logs = _logs()
    write_feedback_shard(tmp_path, [{"request_id": "r-0", "quality": 0.75, "timestamp_s": 9.0},
                                    {"request_id": "r-2", "quality": 1.0, "timestamp_s": 3.0}])
    write_feedback_shard(tmp_path, [{"request_id": "r-0", "quality": 0.5, "timestamp_s": 4.0},  # older: loses
                                    {"request_id": "zzz", "quality": 0.0, "timestamp_s": 1.0}])  # unknown id
    joined = join_feedback(logs, read_feedback(tmp_path))
    assert joined.schema.equals(logs.schema)
    assert joined.column("request_id").to_pylist() == ["r-0", "r-1", "r-2"]
    assert joined.column("quality").to_pylist() == [0.75, 0.25, 1.0]


def test_join_with_no_feedback_is_identity() -> None:
    logs = _logs()
    assert join_feedback(logs, FEEDBACK_SCHEMA.empty_table()).equals(logs)


def test_join_tie_on_timestamp_keeps_last_written() -> None:
    fb = pa.Table.from_pylist([{"request_id": "r-1", "quality": 0.0, "timestamp_s": 2.0},
                               {"request_id": "r-1", "quality": 1.0, "timestamp_s": 2.0}], schema=FEEDBACK_SCHEMA)
    assert join_feedback(_logs(), fb).column("quality").to_pylist()[1] == 1.0
