"""The real upstream path against a local OpenAI-compatible HTTP server (uvicorn in a thread):
retries with backoff, no retry on 4xx, per-attempt timeouts, stream pass-through and its
cancellation, and the gateway failing over to the next model in the ranking within its deadline
when an upstream times out or its circuit is open. No Ray."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from router.bundle import Bundle
from router.decision import Router
from serving.backends import BackendError, ModelReply, OpenAIUpstream
from serving.decision_log import DecisionLogWriter
from serving.gateway import GatewayCore
from serving.resilience import BreakerConfig, FailoverConfig, RetryPolicy

FAST_RETRY = RetryPolicy(attempts=3, base_backoff_s=0.01, max_backoff_s=0.02)


class FakeUpstream:
    """Behaviour by upstream model name: ok, slow (sleeps), down (503), bad (400), misconfigured (401),
    flaky (503 twice, then ok), stream-slow (one chunk, then sleeps). Counts hits and finished/aborted streams."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.streams_closed_early = 0
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self.chat)
        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error"))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        name = body["model"]
        self.hits[name] += 1
        if name == "slow" or name.startswith("slow-"):
            await asyncio.sleep(5)
        if name == "down" or (name == "flaky" and self.hits[name] <= 2):
            return JSONResponse({"error": "overloaded"}, status_code=503, headers={"Retry-After": "0"})
        if name == "bad":
            return JSONResponse({"error": {"message": "max_tokens too large"}}, status_code=400)
        if name == "misconfigured":
            return JSONResponse({"error": {"message": "invalid api key"}}, status_code=401)
        text = f"real answer from {name}"
        if body.get("stream"):
            return StreamingResponse(self._stream(name, text), media_type="text/event-stream")
        return JSONResponse({"id": "x", "object": "chat.completion", "model": name,
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
                             "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}})

    async def _stream(self, name: str, text: str) -> AsyncIterator[str]:
        try:
            for i, word in enumerate(text.split(" ")):
                delta = {"content": word if i == 0 else " " + word}
                yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': delta}]})}\n\n"
                if name == "stream-slow":
                    await asyncio.sleep(5)
            yield "data: [DONE]\n\n"
        except asyncio.CancelledError:
            self.streams_closed_early += 1
            raise


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    thread = threading.Thread(target=fake.server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not fake.server.started:
        assert time.monotonic() < deadline, "fake upstream did not start"
        time.sleep(0.02)
    try:
        yield fake
    finally:
        fake.server.should_exit = True
        thread.join(timeout=5)


def _client(upstream: FakeUpstream, name: str, timeout_s: float = 2.0) -> OpenAIUpstream:
    return OpenAIUpstream(name, upstream.base_url, "NO_SUCH_ENV", name, timeout_s, retry=FAST_RETRY, seed=0)


BODY = {"messages": [{"role": "user", "content": "hi"}], "metadata": {"x": 1}}


async def _generate(client: OpenAIUpstream) -> Any:
    try:
        return await client.generate(BODY, "chat")
    finally:
        await client.aclose()


def test_ok_and_flaky_upstreams_answer(upstream: FakeUpstream) -> None:
    assert asyncio.run(_generate(_client(upstream, "ok"))).text == "real answer from ok"
    result = asyncio.run(_generate(_client(upstream, "flaky")))  # 503, 503, then 200
    assert result.text == "real answer from flaky" and result.output_tokens == 4
    assert upstream.hits["flaky"] == 3


def test_down_upstream_fails_after_all_retries(upstream: FakeUpstream) -> None:
    before = upstream.hits["down"]
    with pytest.raises(BackendError, match="answered 503.*after 3 attempts") as e:
        asyncio.run(_generate(_client(upstream, "down")))
    assert e.value.retryable and e.value.status == 502
    assert upstream.hits["down"] - before == 3


def test_client_error_is_not_retried(upstream: FakeUpstream) -> None:
    with pytest.raises(BackendError, match="answered 400") as e:
        asyncio.run(_generate(_client(upstream, "bad")))
    assert not e.value.retryable and upstream.hits["bad"] == 1
    assert e.value.status == 400  # the upstream refused the request itself: a client mistake, not a 5xx


def test_upstream_misconfiguration_is_a_502_the_gateway_may_fail_over_from(upstream: FakeUpstream) -> None:
    with pytest.raises(BackendError, match="answered 401: .*invalid api key") as e:
        asyncio.run(_generate(_client(upstream, "misconfigured")))
    assert e.value.retryable and e.value.status == 502 and upstream.hits["misconfigured"] == 1


def test_timeout_is_per_attempt_and_reported(upstream: FakeUpstream) -> None:
    client = OpenAIUpstream("slow", upstream.base_url, "X", "slow-timeout", 0.2,
                            retry=RetryPolicy(attempts=2, base_backoff_s=0.01, max_backoff_s=0.01))
    with pytest.raises(BackendError, match="timed out") as e:
        asyncio.run(_generate(client))
    assert e.value.status == 504 and upstream.hits["slow-timeout"] == 2


def test_stream_passes_deltas_through(upstream: FakeUpstream) -> None:
    async def run() -> list[Any]:
        client = _client(upstream, "streamer")
        try:
            return [item async for item in client.stream(BODY, "chat")]
        finally:
            await client.aclose()

    items = asyncio.run(run())
    assert [i for i in items if isinstance(i, str)] == ["real", " answer", " from", " streamer"]
    assert items[-1].text == "real answer from streamer" and items[-1].ttft_ms <= items[-1].latency_ms


def test_cancelling_a_stream_closes_the_upstream_stream(upstream: FakeUpstream) -> None:
    async def run() -> str:
        client = _client(upstream, "stream-slow", timeout_s=10)
        gen = client.stream(BODY, "chat")
        first = await gen.__anext__()
        task = asyncio.ensure_future(gen.__anext__())
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await client.aclose()
        return first

    before = upstream.streams_closed_early
    assert asyncio.run(run()) == "real"
    deadline = time.monotonic() + 5
    while upstream.streams_closed_early == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream.streams_closed_early == before + 1  # the upstream saw the disconnect


# --- gateway failover against the real upstreams ---------------------------------------------------------

class UpstreamCaller:
    """The gateway's model caller with one ``OpenAIUpstream`` per turnout model (as ModelServer does)."""

    def __init__(self, upstream: FakeUpstream, names: dict[str, str], timeout_s: float) -> None:
        self.clients = {m: OpenAIUpstream(m, upstream.base_url, "X", n, timeout_s, retry=FAST_RETRY, seed=0)
                        for m, n in names.items()}
        self.calls: list[str] = []

    async def __call__(self, model: str, body: dict[str, Any], category: str) -> ModelReply:
        self.calls.append(model)
        return ModelReply(await self.clients[model].generate(body, category), f"{model}#0", {})

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()

    async def stream(self, model: str, body: dict[str, Any], category: str) -> AsyncIterator[Any]:
        self.calls.append(model)
        async for item in self.clients[model].stream(body, category):
            yield item if isinstance(item, str) else ModelReply(item, f"{model}#0", {})


def _core(bundle: Bundle, tmp_path: Any, caller: UpstreamCaller, deadline_s: float,
          threshold: int = 5) -> GatewayCore:
    log = DecisionLogWriter(tmp_path, prefix="d", flush_rows=1000, flush_s=3600)
    failover = FailoverConfig(deadline_s=deadline_s, attempts_per_model=1, max_models=3,
                              breaker=BreakerConfig(failure_threshold=threshold, reset_after_s=60))
    return GatewayCore(Router(bundle), log, caller, stream_model=caller.stream, failover=failover, seed=0)


PROMPT = {"messages": [{"role": "user", "content": "Write a Python function that reverses a linked list"}],
          "model": "auto"}


def _drawn(bundle: Bundle, tmp_path: Any, upstream: FakeUpstream) -> str:
    """The model the seeded policy draws for PROMPT (same seed -> same draw in a fresh core)."""
    probe = UpstreamCaller(upstream, {m: "ok" for m in ("small", "medium", "large")}, timeout_s=5)
    assert _run(probe, _core(bundle, tmp_path, probe, deadline_s=5).chat(json.dumps(PROMPT).encode())).status == 200
    return probe.calls[0]


def _run(caller: UpstreamCaller, coro: Any) -> Any:
    """Run ``coro`` and close the caller's HTTP clients on the same event loop."""

    async def main() -> Any:
        try:
            return await coro
        finally:
            await caller.aclose()

    return asyncio.run(main())


def test_timed_out_upstream_fails_over_within_the_deadline(bundle: Bundle, tmp_path: Any,
                                                            upstream: FakeUpstream) -> None:
    drawn = _drawn(bundle, tmp_path, upstream)
    caller = UpstreamCaller(upstream, {m: ("slow" if m == drawn else "ok") for m in ("small", "medium", "large")},
                            timeout_s=0.3)  # per-attempt HTTP timeout; the slow upstream sleeps 5 s
    for client in caller.clients.values():
        client.retry = RetryPolicy(attempts=1)
    core = _core(bundle, tmp_path, caller, deadline_s=3.0)
    reply = _run(caller, core.chat(json.dumps(PROMPT).encode()))
    # without the timeout the slow upstream would have answered itself after 5 s (no failover)
    assert reply.status == 200, reply.body
    assert caller.calls[0] == drawn and reply.body["turnout"]["failover_from"] == drawn


def test_all_upstreams_slow_is_a_504_at_the_deadline(bundle: Bundle, tmp_path: Any, upstream: FakeUpstream) -> None:
    caller = UpstreamCaller(upstream, {m: "slow" for m in ("small", "medium", "large")}, timeout_s=10)
    core = _core(bundle, tmp_path, caller, deadline_s=0.5)
    reply = _run(caller, core.chat(json.dumps(PROMPT).encode()))
    # without the deadline the slow upstreams would have answered (200) after 5 s
    assert reply.status == 504 and "deadline" in reply.body["error"]["message"]
    core.log.close()
    from router.log_schema import read_logs

    (row,) = read_logs(core.log.out_dir).to_pylist()
    assert "deadline" in row["error"] and row["latency_ms"] is None


@pytest.mark.parametrize("failure", ["down", "misconfigured"])
def test_gateway_fails_over_to_the_next_ranked_model(bundle: Bundle, tmp_path: Any, upstream: FakeUpstream,
                                                     failure: str) -> None:
    """A 503 after retries, or a 401 (our key or model name is wrong there, not the client's fault):
    the request fails over and the upstream's breaker opens."""
    drawn = _drawn(bundle, tmp_path, upstream)
    caller = UpstreamCaller(upstream, {m: (failure if m == drawn else "ok") for m in ("small", "medium", "large")},
                            timeout_s=5)
    core = _core(bundle, tmp_path, caller, deadline_s=5, threshold=1)

    async def twice() -> tuple[Any, Any]:
        return await core.chat(json.dumps(PROMPT).encode()), await core.chat(json.dumps(PROMPT).encode())

    reply, again = _run(caller, twice())
    assert reply.status == 200, reply.body
    t = reply.body["turnout"]
    assert caller.calls[0] == drawn and t["failover_from"] == drawn and t["model"] == caller.calls[1] != drawn
    assert t["policy"] == "failover" and t["propensity"] == 1.0
    assert reply.body["choices"][0]["message"]["content"] == "real answer from ok"
    # the drawn model's circuit is now open: the next request skips it without calling it
    assert core.breakers[drawn].state == "open"
    assert again.status == 200 and caller.calls.count(drawn) == 1
    core.log.close()
    from router.log_schema import read_logs

    rows = read_logs(core.log.out_dir).to_pylist()
    assert [(r["policy"], r["propensity"], r["error"]) for r in rows[-2:]] == [("failover", 1.0, None)] * 2


def test_streaming_fails_over_before_the_first_chunk(bundle: Bundle, tmp_path: Any, upstream: FakeUpstream) -> None:
    drawn = _drawn(bundle, tmp_path, upstream)
    caller = UpstreamCaller(upstream, {m: ("down" if m == drawn else "ok") for m in ("small", "medium", "large")},
                            timeout_s=5)
    core = _core(bundle, tmp_path, caller, deadline_s=5)

    async def run() -> list[dict[str, Any]]:
        reply = await core.chat(json.dumps({**PROMPT, "stream": True}).encode())
        assert reply.stream and reply.chunks is not None
        lines = [line async for line in reply.chunks]
        assert lines[-1] == "data: [DONE]\n\n"
        return [json.loads(line[6:]) for line in lines[:-1]]

    chunks = _run(caller, run())
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "real answer from ok"
    assert chunks[-1]["turnout"]["failover_from"] == drawn and chunks[-1]["choices"][0]["finish_reason"] == "stop"
