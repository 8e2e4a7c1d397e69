"""serving.decision_log.records_table: the columnar shard builder equals router.log_schema.records_to_table."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from router.bundle import Bundle
from router.decision import Router
from router.log_schema import LogRecord, read_logs, records_to_table
from serving.backends import BackendError, BackendResult, ModelReply
from serving.decision_log import DecisionLogWriter, records_table
from serving.gateway import GatewayCore

RECORD = LogRecord(
    request_id="r", timestamp_s=1.0, tenant="t", arm="a", bundle_version="v", feature_version="1", prompt="p",
    n_turns=1, input_tokens=1, features=[0.0], category="code", category_probs=[1.0], confidence=1.0,
    fallback=False, cache_tier="skip", cache_hit=False, model="small", candidates=["small"], action_probs=[1.0],
    propensity=1.0, policy="fallback",
)


def _same(records: list[LogRecord]) -> None:
    expected, got = records_to_table(records), records_table(records)
    assert got.schema.equals(expected.schema, check_metadata=True)
    assert got.equals(expected)


def test_gateway_records_build_the_same_table(bundle: Bundle, tmp_path: Path) -> None:
    """Answered, cached, failed and streamed-style records, as the gateway writes them."""
    fail = {"on": False}

    async def caller(model: str, body: dict[str, Any], category: str) -> ModelReply:
        if fail["on"]:
            raise BackendError("upstream down", status=503)
        return ModelReply(BackendResult(f"answer from {model}", 7, 3.0, 9.0, quality=0.5, simulated=True), "LLM#1",
                          {"num_ongoing": 2, "ewma_latency_ms": 1.5})

    log = DecisionLogWriter(tmp_path, prefix="d", flush_rows=1000, flush_s=3600.0)
    core = GatewayCore(Router(bundle), log, caller, seed=0)
    prompts = ["Write a Python function that reverses a linked list", "What is 17 * 23?",
               "Translate 'good morning' to French", "Write a Python function that reverses a linked list",
               "ünïcödé ✓ and emoji 🚀 in a prompt"]

    async def run() -> None:
        for p in prompts:
            await core.chat(json.dumps({"messages": [{"role": "user", "content": p}], "user": "u1"}).encode())
        fail["on"] = True
        await core.chat(json.dumps({"messages": [{"role": "user", "content": "fails upstream"}]}).encode())

    asyncio.run(run())
    records = list(log._buffer)
    assert len(records) == len(prompts) + 1
    assert any(r.cache_hit for r in records) and any(r.error for r in records)  # both kinds are covered
    _same(records)


def test_numpy_scalars_nulls_and_tuples_build_the_same_table() -> None:
    records = [
        RECORD,
        replace(RECORD, request_id="np", features=np.array([0.25, 1.5], dtype=np.float32), confidence=np.float32(0.7),
                propensity=np.float64(0.9), input_tokens=np.int64(12), n_turns=np.int32(2), fallback=np.bool_(True),
                candidates=("small", "large"), action_probs=(np.float64(0.9), np.float64(0.1)), model="small",
                output_tokens=np.int64(5), latency_ms=np.float64(3.5), cost_usd=0.0, quality=np.float32(0.25)),
        replace(RECORD, request_id="nulls", replica=None, replica_stats=None, error="cancelled",
                assignment_unit="ab12"),
    ]
    _same(records)


@pytest.mark.parametrize("features", [["not a number"], [0.5, None]])
def test_a_record_records_to_table_refuses_is_refused_alike(features: list[Any]) -> None:
    bad = [RECORD, replace(RECORD, features=features)]
    with pytest.raises(Exception) as expected:
        records_to_table(bad)
    with pytest.raises(type(expected.value), match=re.escape(str(expected.value))):
        records_table(bad)


def test_writer_shards_read_back_with_validation(tmp_path: Path) -> None:
    w = DecisionLogWriter(tmp_path, prefix="d", flush_rows=2, flush_s=3600.0)
    for i in range(3):
        w.append(replace(RECORD, request_id=f"r{i}", features=(0.5, float(i))))
    w.close()
    table = read_logs(tmp_path)  # validates every shard against SCHEMA
    assert sorted(table.column("request_id").to_pylist()) == ["r0", "r1", "r2"]
    assert sorted(table.column("features").to_pylist()) == [[0.5, 0.0], [0.5, 1.0], [0.5, 2.0]]


@pytest.mark.parametrize("bad", [replace(RECORD, request_id="bad", features=["not a number"]),   # unconvertible
                                 replace(RECORD, request_id="bad", propensity=2.0)])             # fails validation
def test_a_bad_record_is_quarantined_and_the_rest_written(tmp_path: Path, bad: LogRecord) -> None:
    """One record read_logs would refuse must neither block later writes nor poison the directory."""
    w = DecisionLogWriter(tmp_path, prefix="d", flush_rows=1000, flush_s=3600.0)
    for r in (replace(RECORD, request_id="a"), bad, replace(RECORD, request_id="b")):
        w.append(r)
    w.flush()
    w.append(replace(RECORD, request_id="c"))
    w.close()
    assert sorted(read_logs(tmp_path).column("request_id").to_pylist()) == ["a", "b", "c"]
    assert (w.n_written, w.n_quarantined, len(w)) == (3, 1, 0)
    (q,) = tmp_path.glob("d-quarantine-*.jsonl")
    row = json.loads(q.read_text())
    assert "request_id='bad'" in row["record"] and row["problem"]


def test_a_long_write_outage_keeps_at_most_max_buffer_rows(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the log directory should be")
    w = DecisionLogWriter(blocker, prefix="d", flush_rows=2, flush_s=3600.0, max_buffer_rows=5)
    for i in range(9):
        w.append(replace(RECORD, request_id=f"r{i}"))  # the first due flush fails; later appends do not retry
    assert w.n_failed_writes == 1 and len(w) == 5 and w.n_dropped == 4  # the cap holds between retries
    w.flush()  # an explicit flush (close, /admin/flush) still tries, and fails
    assert len(w) == 5 and w.n_dropped == 4 and w.n_failed_writes == 2
    assert [r.request_id for r in w._buffer] == [f"r{i}" for i in range(4, 9)]  # the newest are kept
