"""Buffered Parquet writer for decision records, one per gateway replica.

Records are buffered and written as one shard when ``flush_rows`` accumulate or the oldest buffered
record is ``flush_s`` old (checked on every append and by the gateway's periodic flush), and on
``close()``. A clean stop loses nothing; a crash loses at most the buffer. A failed write keeps the
records for the next flush and is logged: an answered request never fails because of its log.

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

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa

from router.log_schema import FIELD_NAMES, SCHEMA, LogRecord, records_to_table, write_shard

_LOG = logging.getLogger("turnout.decision_log")


class DecisionLogWriter:
    def __init__(self, out_dir: str | Path, *, prefix: str, flush_rows: int = 500, flush_s: float = 5.0,
                 background: bool = False) -> None:
        self.out_dir = Path(out_dir)
        self.prefix = prefix
        self.flush_rows = flush_rows
        self.flush_s = flush_s
        self._buffer: list[LogRecord] = []
        self._oldest_s: float | None = None
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
        if self._writer is None:
            self.flush_if_due()
        elif self._is_due() and (self._pending is None or self._pending.done()):
            self._pending = self._writer.submit(self.flush)

    def _is_due(self) -> bool:
        return len(self._buffer) >= self.flush_rows or (
            self._oldest_s is not None and time.monotonic() - self._oldest_s >= self.flush_s)

    def flush_if_due(self) -> Path | None:
        return self.flush() if self._is_due() else None

    def flush(self) -> Path | None:
        with self._lock:
            batch, self._buffer, self._oldest_s = self._buffer, [], None
        if not batch:
            return None
        try:
            path = write_shard(records_table(batch), self.out_dir, prefix=self.prefix)
        except Exception as e:  # disk full, log_dir unusable: keep the records, never fail the request
            with self._lock:
                self._buffer[:0] = batch
                self._oldest_s = time.monotonic()
            self.n_failed_writes += 1
            _LOG.error("decision log write to %s failed (%s: %s); %d records kept in memory, retried at the "
                       "next flush", self.out_dir, type(e).__name__, e, len(self._buffer))
            return None
        self.n_written += len(batch)
        return path

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
