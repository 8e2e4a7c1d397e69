"""Buffered Parquet writer for decision records, one per gateway replica.

Records are buffered and written as one shard when ``flush_rows`` accumulate or the oldest buffered
record is ``flush_s`` old (checked on every append and by the gateway's periodic flush), and on
``close()``. A clean stop loses nothing; a crash loses at most the buffer. A failed write keeps the
records for the next flush and is logged: an answered request never fails because of its log.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from router.log_schema import LogRecord, write_shard

_LOG = logging.getLogger("turnout.decision_log")


class DecisionLogWriter:
    def __init__(self, out_dir: str | Path, *, prefix: str, flush_rows: int = 500, flush_s: float = 5.0) -> None:
        self.out_dir = Path(out_dir)
        self.prefix = prefix
        self.flush_rows = flush_rows
        self.flush_s = flush_s
        self._buffer: list[LogRecord] = []
        self._oldest_s: float | None = None
        self._lock = threading.Lock()
        self.n_written = 0
        self.n_failed_writes = 0

    def append(self, record: LogRecord) -> None:
        with self._lock:
            if not self._buffer:
                self._oldest_s = time.monotonic()
            self._buffer.append(record)
        self.flush_if_due()

    def flush_if_due(self) -> Path | None:
        due = len(self._buffer) >= self.flush_rows or (
            self._oldest_s is not None and time.monotonic() - self._oldest_s >= self.flush_s)
        return self.flush() if due else None

    def flush(self) -> Path | None:
        with self._lock:
            batch, self._buffer, self._oldest_s = self._buffer, [], None
        if not batch:
            return None
        try:
            path = write_shard(batch, self.out_dir, prefix=self.prefix)
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
        self.flush()

    def __len__(self) -> int:
        return len(self._buffer)
