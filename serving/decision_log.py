"""Buffered Parquet writer for decision records, one per gateway replica.

Records are buffered and written as one shard when ``flush_rows`` accumulate or the oldest buffered
record is ``flush_s`` old (checked on every append and by the gateway's periodic flush), and on
``close()``. A clean stop loses nothing; a crash loses at most the buffer. A failed write keeps the
records for the next flush and is logged: an answered request never fails because of its log.

``background=True`` (the gateway): a flush that ``append`` finds due runs on one writer thread, so
building and writing a 500-row shard (tens of ms) never stalls the event loop that serves requests;
``close()`` waits for it, then writes the rest.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from router.log_schema import LogRecord, write_shard

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
        if self._pending is not None:
            self._pending.result()
        self.flush()

    def __len__(self) -> int:
        return len(self._buffer)
