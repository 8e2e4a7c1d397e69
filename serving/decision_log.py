"""Buffered Parquet writer for decision records, one per gateway replica.

Records are buffered and written as one shard when ``flush_rows`` accumulate or the oldest buffered
record is ``flush_s`` old (checked on every append and by the gateway's periodic flush), and on
``close()``. A clean stop loses nothing; a crash loses at most the buffer.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from router.log_schema import LogRecord, write_shard


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
        path = write_shard(batch, self.out_dir, prefix=self.prefix)
        self.n_written += len(batch)
        return path

    def close(self) -> None:
        self.flush()

    def __len__(self) -> int:
        return len(self._buffer)
