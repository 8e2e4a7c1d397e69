"""Request ids for the gateway: random version-4 UUIDs (hex) drawn from a buffer of OS randomness.

``uuid.uuid4()`` makes one ``getrandom`` system call per id. In a Serve replica that call releases the
GIL, and with Ray's own threads busy the event loop then waits to get it back: a few microseconds of
work can become milliseconds of stall. Reading 4 KiB of ``os.urandom`` at a time and slicing 16 bytes
per id gives ids with the same unpredictability (feedback is joined by request id, so ids must not be
guessable) for one system call per 256 requests. Thread-safe; a forked child starts a new buffer (it
must never repeat its parent's ids).
"""

from __future__ import annotations

import os
import threading
import uuid

_BATCH = 256
_lock = threading.Lock()
_buffer = b""
_offset = 0


def new_request_id() -> str:
    """32 lowercase hex characters, a random UUID4 like ``uuid.uuid4().hex``."""
    global _buffer, _offset
    with _lock:
        if _offset >= len(_buffer):
            _buffer, _offset = os.urandom(16 * _BATCH), 0
        raw = _buffer[_offset:_offset + 16]
        _offset += 16
    return uuid.UUID(bytes=raw, version=4).hex


def _forget_buffer() -> None:
    global _buffer, _offset, _lock
    _buffer, _offset, _lock = b"", 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_buffer)
