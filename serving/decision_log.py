"""Buffered Parquet writer for decision records, one per gateway replica.

Records are buffered and written as one shard when ``flush_rows`` accumulate or the oldest buffered
record is ``flush_s`` old (checked on every append and by the gateway's periodic flush), and on
``close()``. A clean stop loses nothing; a crash loses at most the buffer. A failed write keeps the
records for the next flush and is logged: an answered request never fails because of its log; the next
due flush then waits ``flush_s`` (not every append retrying the whole buffer during an outage). During
a long write outage at most ``max_buffer_rows`` are kept (the oldest beyond it are dropped, counted in
``n_dropped`` and logged) so the gateway's memory stays bounded.

Every shard is validated as ``read_logs`` will validate it (``validate_table``, ~4 us per record): a
record that fails is set aside in ``<prefix>-quarantine-*.jsonl`` beside the shards (``read_logs``
reads only Parquet) and counted in ``n_quarantined``, so one bad record can neither block later
writes nor make every later retrain refuse the whole log directory.

``background=True`` (the gateway): a flush that ``append`` finds due runs on one writer thread, so
building and writing a 500-row shard never stalls the event loop that serves requests; ``close()``
waits for it, then writes the rest.

The shard's table is built column by column (``records_table``): ``router.log_schema.records_to_table``
goes through ``dataclasses.asdict``, which deep-copies every float of every record: 0.15-0.3 ms of CPU
per gateway record on the reference box (a quarter to half a routing decision), taken on the writer
thread from the GIL the event loop needs. The columnar build is the same table (a unit test compares
them) at 10-30 us per record. ``background=True`` also builds one empty table at construction: pyarrow
imports pandas on first use (~0.4 s of CPU), which then happens at startup, not in the first flush.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa

from router.log_schema import FIELD_NAMES, SCHEMA, LogRecord, records_to_table, validate_table, write_shard

_LOG = logging.getLogger("turnout.decision_log")


class DecisionLogWriter:
    def __init__(self, out_dir: str | Path, *, prefix: str, flush_rows: int = 500, flush_s: float = 5.0,
                 background: bool = False, max_buffer_rows: int = 200_000) -> None:
        self.out_dir = Path(out_dir)
        self.prefix = prefix
        self.flush_rows = flush_rows
        self.flush_s = flush_s
        self.max_buffer_rows = max(max_buffer_rows, flush_rows)
        self.n_dropped = 0
        self.n_quarantined = 0
        self._buffer: list[LogRecord] = []
        self._oldest_s: float | None = None
        self._retry_at = 0.0  # after a failed write, no due flush before this (monotonic seconds)
        self._lock = threading.Lock()
        self.n_written = 0
        self.n_failed_writes = 0
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="decision-log") if background else None
        if background:
            records_table([])  # pyarrow's one-time lazy imports now, not under the first flush
        self._pending: Future[Path | None] | None = None

    def append(self, record: LogRecord) -> None:
        with self._lock:
            if not self._buffer:
                self._oldest_s = time.monotonic()
            self._buffer.append(record)
            if len(self._buffer) > self.max_buffer_rows:  # only while writes fail: the cap holds between retries
                del self._buffer[0]
                self.n_dropped += 1
        if self._writer is None:
            self.flush_if_due()
        elif self._is_due() and (self._pending is None or self._pending.done()):
            self._pending = self._writer.submit(self.flush)

    def _is_due(self) -> bool:
        if time.monotonic() < self._retry_at:
            return False
        return len(self._buffer) >= self.flush_rows or (
            self._oldest_s is not None and time.monotonic() - self._oldest_s >= self.flush_s)

    def flush_if_due(self) -> Path | None:
        return self.flush() if self._is_due() else None

    def flush(self) -> Path | None:
        with self._lock:
            batch, self._buffer, self._oldest_s = self._buffer, [], None
        if not batch:
            return None
        table, batch = self._valid_table(batch)
        if table is None:
            return None
        try:
            path = write_shard(table, self.out_dir, prefix=self.prefix)
        except Exception as e:  # disk full, log_dir unusable: keep the records, never fail the request
            with self._lock:
                self._buffer[:0] = batch
                self._oldest_s = time.monotonic()
                self._retry_at = self._oldest_s + self.flush_s
                excess = len(self._buffer) - self.max_buffer_rows
                if excess > 0:
                    del self._buffer[:excess]
                    self.n_dropped += excess
            self.n_failed_writes += 1
            _LOG.error("decision log write to %s failed (%s: %s); %d records kept in memory, retried at the "
                       "next flush%s", self.out_dir, type(e).__name__, e, len(self._buffer),
                       f"; {excess} oldest dropped (max_buffer_rows {self.max_buffer_rows})" if excess > 0 else "")
            return None
        self.n_written += len(batch)
        return path

    def _valid_table(self, batch: list[LogRecord]) -> tuple[pa.Table | None, list[LogRecord]]:
        """The shard for ``batch`` as ``read_logs`` will accept it, and the records in it; records that
        cannot be converted or validated are quarantined (one by one, to name each)."""
        try:
            return validate_table(records_table(batch), f"decision log {self.prefix}"), batch
        except Exception:  # noqa: BLE001 -- find the offending records below
            pass
        good: list[LogRecord] = []
        problems: list[tuple[LogRecord, str]] = []
        for r in batch:
            try:
                validate_table(records_table([r]), f"request {r.request_id!r}")
                good.append(r)
            except Exception as e:  # noqa: BLE001
                problems.append((r, f"{type(e).__name__}: {e}"))
        if problems:
            self._quarantine(problems)
        if not good:
            return None, []
        return validate_table(records_table(good), f"decision log {self.prefix}"), good

    def _quarantine(self, problems: list[tuple[LogRecord, str]]) -> None:
        self.n_quarantined += len(problems)
        _LOG.error("decision log: %d record(s) fail the log schema and are set aside in %s, e.g. %s",
                   len(problems), self.out_dir, problems[0][1])
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            path = self.out_dir / f"{self.prefix}-quarantine-{uuid.uuid4().hex[:12]}.jsonl"
            with path.open("w", encoding="utf-8") as fh:
                for r, why in problems:
                    fh.write(json.dumps({"problem": why, "record": repr(r)}, ensure_ascii=False) + "\n")
        except OSError as e:
            _LOG.error("decision log: cannot write the quarantine file (%s)", e)

    def close(self) -> None:
        if self._pending is not None:
            self._pending.result()
        self.flush()

    def __len__(self) -> int:
        return len(self._buffer)


_FLOAT_LISTS = ("features", "category_probs", "action_probs")  # records_to_table float()s their items


def records_table(records: list[LogRecord]) -> pa.Table:
    """``records_to_table(records)``, built from one list per column (no per-record dict). Records the
    fast path cannot convert as ``records_to_table`` would (a value pyarrow refuses, a null inside a
    float list) go through ``records_to_table`` itself, which raises naming the problem."""
    try:
        table = pa.table({name: [getattr(r, name) for r in records] for name in FIELD_NAMES}, schema=SCHEMA)
    except (pa.ArrowException, TypeError, ValueError):
        return records_to_table(records)
    if any(table.column(name).combine_chunks().values.null_count for name in _FLOAT_LISTS):
        return records_to_table(records)
    return table
