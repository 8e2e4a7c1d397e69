"""turnout replay: a run that gets no answer says why."""

from __future__ import annotations

import asyncio
import socket

from rich.console import Console

from serving.replay import ReplayResult, print_summary, replay


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


def test_error_text_is_printed_verbatim() -> None:
    console = Console(record=True, width=200, color_system=None)
    print_summary(ReplayResult(errors=["HTTP 502: upstream said [/v1] [bold]x"]).summary(), console)
    assert "1 x HTTP 502: upstream said [/v1] [bold]x" in console.export_text()
