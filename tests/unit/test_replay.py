"""turnout replay: a run that gets no answer says why."""

from __future__ import annotations

import asyncio
import socket

from serving.replay import ReplayResult, replay


def _closed_port() -> int:
    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_gateway_is_named_in_the_summary() -> None:
    result = asyncio.run(replay(f"http://127.0.0.1:{_closed_port()}", [{"messages": [{"role": "user", "content": "hi"}]}] * 3,
                                concurrency=2, progress=False))
    summary = result.summary()
    assert summary["statuses"] == {"0": 3} and summary["ok"] == 0
    assert summary["errors"][0]["count"] == 3 and "ConnectError" in summary["errors"][0]["error"]


def test_errors_are_counted_most_frequent_first() -> None:
    result = ReplayResult(errors=["HTTP 429: slow down"] * 2 + ["HTTP 400: bad"] + ["HTTP 429: slow down"])
    assert result.summary()["errors"] == [{"count": 3, "error": "HTTP 429: slow down"}, {"count": 1, "error": "HTTP 400: bad"}]
