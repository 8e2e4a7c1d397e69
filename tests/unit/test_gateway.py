"""serving.gateway.GatewayCore with a fake model caller, and serving.decision_log.DecisionLogWriter.

No Ray, no pytest-asyncio: every coroutine runs under ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from router.bundle import Bundle, load_bundle
from router.decision import Router
from router.log_schema import LogRecord, read_logs
from serving.backends import BackendError, BackendResult, ModelReply
from serving.decision_log import DecisionLogWriter
from serving.gateway import GatewayCore, Reply

PROMPT = "Write a Python function that reverses a linked list"


class FakeCaller:
    """Answers every call (or raises ``fail``); records what it was asked."""

    def __init__(self, fail: BackendError | None = None) -> None:
        self.fail = fail
        self.calls: list[tuple[str, dict[str, Any], str]] = []

    async def __call__(self, model: str, body: dict[str, Any], category: str) -> ModelReply:
        self.calls.append((model, body, category))
        if self.fail is not None:
            raise self.fail
        result = BackendResult(text=f"answer from {model}", output_tokens=12, ttft_ms=5.0, latency_ms=20.0,
                               quality=0.75)
        return ModelReply(result, "fake#1", {"num_ongoing": 1})


@pytest.fixture
def log(tmp_path: Path) -> DecisionLogWriter:
    return DecisionLogWriter(tmp_path / "logs", prefix="decisions-test", flush_rows=1000, flush_s=3600.0)


def _core(bundle: Bundle, log: DecisionLogWriter, caller: FakeCaller | None = None) -> GatewayCore:
    return GatewayCore(Router(bundle), log, caller or FakeCaller(), seed=0)


def _chat(core: GatewayCore, body: object | bytes) -> Reply:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
    return asyncio.run(core.chat(raw))


def _user(text: str = PROMPT, **extra: object) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": text}], **extra}


# --- invalid input: status and message ----------------------------------------------------------------

INVALID: list[tuple[str, object | bytes, int, str]] = [
    ("malformed-json", b'{"messages": [', 400, "request body is not valid JSON ("),
    ("nan-number", b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', 400,
     "request body is not valid JSON (NaN is not a JSON number)"),
    ("huge-number", b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e999}', 400,
     "request body is not valid JSON (1e999 is out of range for a JSON number)"),
    ("invalid-utf8", b'{"messages": "\xff\xfe"}', 400, "request body is not valid UTF-8 (byte 0xff at offset 14)"),
    ("body-is-list", [{"role": "user", "content": "hi"}], 400, "request body must be a JSON object; got list"),
    ("missing-messages", {"model": "auto"}, 400, "missing required field 'messages'"),
    ("empty-messages", {"messages": []}, 400, "'messages' must be a non-empty list"),
    ("messages-not-list", {"messages": "hi"}, 400, "'messages' must be a non-empty list"),
    ("message-not-object", {"messages": ["hi"]}, 400, "messages[0] must be an object with 'role' and 'content'"),
    ("message-without-role", {"messages": [{"content": "hi"}]}, 400,
     "messages[0].role must be one of system, user, assistant, tool, developer; got None"),
    ("bad-role", {"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "hi"}]}, 400,
     "messages[1].role must be one of system, user, assistant, tool, developer; got 'robot'"),
    ("content-not-string", {"messages": [{"role": "user", "content": 42}]}, 400,
     "messages[0].content must be a string; got int"),
    ("empty-user-content", {"messages": [{"role": "user", "content": "  \n "}]}, 400, "messages[0].content is empty"),
    ("no-user-message", {"messages": [{"role": "system", "content": "be nice"}]}, 400,
     "'messages' has no message with role 'user'"),
    ("prompt-too-long", _user("x" * 32_001), 413, "prompt is 32001 characters; the limit is 32000"),
    ("unknown-model", _user(model="gpt-9"), 404, "unknown model 'gpt-9'; known models: auto, small, medium, large"),
    ("model-not-string", _user(model=3), 400, "'model' must be a string; got int"),
    ("max-tokens-zero", _user(max_tokens=0), 400, "'max_tokens' must be a positive integer; got 0"),
    ("max-tokens-string", _user(max_tokens="5"), 400, "'max_tokens' must be a positive integer; got '5'"),
    ("max-tokens-bool", _user(max_tokens=True), 400, "'max_tokens' must be a positive integer; got True"),
    ("stream-string", _user(stream="yes"), 400, "'stream' must be true or false; got 'yes'"),
    ("user-not-string", _user(user=5), 400, "'user' must be a string; got int"),
    ("metadata-not-object", _user(metadata="x"), 400, "'metadata' must be an object; got str"),
    ("body-over-4mib", b'{"messages": "' + b"x" * (4 * 1024 * 1024) + b'"}', 413, "the limit is 4194304"),
]


@pytest.mark.parametrize(("body", "status", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_request(bundle: Bundle, log: DecisionLogWriter, body: object | bytes, status: int,
                         message: str) -> None:
    caller = FakeCaller()
    reply = _chat(_core(bundle, log, caller), body)
    assert reply.status == status, reply.body
    err = reply.body["error"]
    assert message in err["message"], err["message"]
    assert err["code"] == status and err["type"] == "invalid_request_error"
    assert caller.calls == [] and len(log) == 0  # nothing routed, nothing logged


def test_lone_surrogate_in_content_is_a_400(bundle: Bundle, log: DecisionLogWriter) -> None:
    raw = b'{"messages": [{"role": "user", "content": "Write a Python function \\ud800 that reverses a list"}]}'
    reply = asyncio.run(_core(bundle, log).chat(raw))
    assert reply.status == 400
    assert "messages[0].content" in reply.body["error"]["message"]


@pytest.mark.parametrize("text", [5, None])
def test_content_part_with_non_string_text_is_a_400(bundle: Bundle, log: DecisionLogWriter, text: object) -> None:
    reply = _chat(_core(bundle, log), {"messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]})
    assert reply.status == 400
    assert "messages[0].content" in reply.body["error"]["message"]


def test_content_parts_keep_the_text(bundle: Bundle, log: DecisionLogWriter) -> None:
    parts = [{"type": "text", "text": "Write a Python function "}, {"type": "image_url", "image_url": {"url": "x"}},
             {"type": "text", "text": "that reverses a linked list"}]
    reply = _chat(_core(bundle, log), {"messages": [{"role": "user", "content": parts}]})
    assert reply.status == 200 and reply.body["turnout"]["category"] == "code"
    log.close()
    assert read_logs(log.out_dir).column("prompt").to_pylist() == [PROMPT]


def test_huge_headers_are_a_431(bundle: Bundle, log: DecisionLogWriter) -> None:
    reply = asyncio.run(_core(bundle, log).chat(json.dumps(_user()).encode(), headers={"x-pad": "a" * 40_000}))
    assert reply.status == 431 and "the limit is 32768" in reply.body["error"]["message"] and len(log) == 0


def test_error_param_names_the_field(bundle: Bundle, log: DecisionLogWriter) -> None:
    core = _core(bundle, log)
    assert _chat(core, _user(max_tokens=0)).body["error"]["param"] == "max_tokens"
    assert _chat(core, {"messages": [{"role": "user", "content": 1}]}).body["error"]["param"] == "messages[0].content"


# --- valid requests ---------------------------------------------------------------------------------

TURNOUT_KEYS = {"request_id", "category", "confidence", "ood", "fallback", "cache_tier", "cache_hit", "model", "replica",
                "propensity", "policy", "bundle_version", "arm", "tenant", "cost_usd", "latency_ms", "decision_ms",
                "simulated", "failover_from"}


def test_valid_request_has_the_openai_shape(bundle: Bundle, log: DecisionLogWriter) -> None:
    caller = FakeCaller()
    reply = _chat(_core(bundle, log, caller), _user(user="u-1", max_tokens=64))
    assert reply.status == 200 and reply.stream is False
    b = reply.body
    assert b["object"] == "chat.completion" and b["id"] == f"chatcmpl-{b['turnout']['request_id']}"
    assert isinstance(b["created"], int)
    choice = b["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": f"answer from {b['model']}"}
    assert choice["finish_reason"] == "stop" and choice["index"] == 0
    usage = b["usage"]
    assert usage["completion_tokens"] == 12
    assert usage["prompt_tokens"] > 0 and usage["total_tokens"] == usage["prompt_tokens"] + 12
    t = b["turnout"]
    assert set(t) == TURNOUT_KEYS
    assert t["category"] == "code" and t["model"] == b["model"] and t["replica"] == "fake#1"
    assert t["policy"] == "epsilon_greedy" and 0 < t["propensity"] <= 1
    assert t["cache_hit"] is False and t["simulated"] is False and t["arm"] == "default"
    assert t["bundle_version"] == "test-1" and t["cost_usd"] > 0
    assert caller.calls == [(b["model"], _user(user="u-1", max_tokens=64), "code")]


def test_stream_flag_is_passed_through(bundle: Bundle, log: DecisionLogWriter) -> None:
    assert _chat(_core(bundle, log), _user(stream=True)).stream is True


def test_pinned_model(bundle: Bundle, log: DecisionLogWriter) -> None:
    caller = FakeCaller()
    reply = _chat(_core(bundle, log, caller), _user("hey i cant sleep, its 1am. any tips?", model="large"))
    assert reply.status == 200
    t = reply.body["turnout"]
    assert (t["model"], t["policy"], t["propensity"]) == ("large", "pinned", 1.0)
    assert caller.calls[0][0] == "large"
    log.close()
    (row,) = read_logs(log.out_dir).to_pylist()
    assert (row["model"], row["candidates"], row["action_probs"], row["propensity"], row["policy"]) == (
        "large", ["large"], [1.0], 1.0, "pinned")


def test_second_identical_request_is_a_cache_hit(bundle: Bundle, log: DecisionLogWriter) -> None:
    caller = FakeCaller()
    core = _core(bundle, log, caller)
    first = _chat(core, _user())
    second = _chat(core, _user())
    assert len(caller.calls) == 1
    t = second.body["turnout"]
    assert (t["cache_hit"], t["policy"], t["propensity"], t["cost_usd"]) == (True, "cache", 1.0, 0.0)
    assert second.body["choices"][0]["message"]["content"] == first.body["choices"][0]["message"]["content"]


def test_a_failing_cache_insert_still_returns_the_answer(bundle: Bundle, log: DecisionLogWriter,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """The model has answered: a broken cache store is logged, never a 500 that loses the answer."""
    core = _core(bundle, log)
    router = core.routers[next(iter(core.routers))]

    def broken_insert(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    router.cache.insert = broken_insert  # type: ignore[method-assign]
    with caplog.at_level("WARNING", logger="turnout.gateway"):
        replies = [_chat(core, _user()) for _ in range(2)]
    for reply in replies:
        assert reply.status == 200 and reply.body["choices"][0]["message"]["content"] == "answer from " + reply.body["model"]
    lines = [r.getMessage() for r in caplog.records if "storing answers" in r.getMessage()]
    assert len(lines) == 1 and "(1 so far)" in lines[0] and "OSError: disk full" in lines[0]  # then counted, not logged
    assert len(log) == 2


def test_cached_answers_are_reused_only_under_the_same_generation_parameters(bundle: Bundle,
                                                                            log: DecisionLogWriter) -> None:
    caller = FakeCaller()
    core = _core(bundle, log, caller)
    assert _chat(core, _user(max_tokens=5)).body["turnout"]["cache_hit"] is False
    other = _chat(core, _user(max_tokens=2000, temperature=1.5, response_format={"type": "json_object"}))
    assert other.body["turnout"]["cache_hit"] is False and len(caller.calls) == 2  # a different answer is due
    again = _chat(core, _user(temperature=1.5, response_format={"type": "json_object"}, max_tokens=2000))
    assert again.body["turnout"]["cache_hit"] is True and len(caller.calls) == 2  # key order does not matter


def test_backend_failure_is_a_logged_503(bundle: Bundle, log: DecisionLogWriter) -> None:
    caller = FakeCaller(fail=BackendError("large is overloaded", status=503))
    core = _core(bundle, log, caller)
    reply = _chat(core, _user())
    assert reply.status == 503
    assert reply.body["error"]["type"] == "upstream_error"
    chosen = caller.calls[0][0]
    assert f"model {chosen!r} failed: {chosen}: large is overloaded" in reply.body["error"]["message"]
    # every model in the ranking was tried (twice each) before giving up; one log record
    assert len(caller.calls) == 2 * len({m for m, _, _ in caller.calls}) and len(log) == 1
    log.close()
    (row,) = read_logs(log.out_dir).to_pylist()
    assert row["error"].startswith(f"{chosen}: large is overloaded")
    assert row["model"] == chosen
    assert row["latency_ms"] is None and row["cost_usd"] is None and row["output_tokens"] is None


def test_one_log_record_per_answered_or_failed_request(bundle: Bundle, log: DecisionLogWriter) -> None:
    ok = FakeCaller()
    failing = FakeCaller(fail=BackendError("boom", status=502))
    core = _core(bundle, log, ok)
    statuses = [
        _chat(core, _user("how do you say good morning in Italian")).status,
        _chat(core, {"messages": []}).status,                                  # 400: not logged
        _chat(core, _user(model="nope")).status,                               # 404: not logged
        _chat(core, _user("What causes inflation, and how is it usually treated?", model="medium")).status,
        _chat(core, b"\xff").status,                                           # 400: not logged
    ]
    core.call_model = failing
    statuses.append(_chat(core, _user("whats 17 squared")).status)
    assert statuses == [200, 400, 404, 200, 400, 502]
    assert log.n_written == 0  # still buffered
    log.close()
    assert log.n_written == 3 and len(log) == 0
    rows = read_logs(log.out_dir).to_pylist()
    assert [r["prompt"] for r in rows] == ["how do you say good morning in Italian",
                                           "What causes inflation, and how is it usually treated?",
                                           "whats 17 squared"]
    assert [r["error"] is None for r in rows] == [True, True, False] and "boom" in rows[2]["error"]
    assert [r["replica"] for r in rows] == ["fake#1", "fake#1", None]
    assert rows[0]["quality"] == 0.75 and rows[0]["output_tokens"] == 12 and rows[0]["ttft_ms"] == 5.0
    assert json.loads(rows[0]["replica_stats"]) == {"num_ongoing": 1}
    assert all(r["arm"] == "default" and r["tenant"] == "default" for r in rows)


def test_models_lists_auto_and_the_catalogue(bundle: Bundle, log: DecisionLogWriter) -> None:
    ids = [m["id"] for m in _core(bundle, log).models()["data"]]
    assert ids == ["auto", "small", "medium", "large"]


# --- DecisionLogWriter ----------------------------------------------------------------------------

RECORD = LogRecord(
    request_id="r", timestamp_s=1.0, tenant="t", arm="a", bundle_version="v", feature_version="1", prompt="p",
    n_turns=1, input_tokens=1, features=[0.0], category="code", category_probs=[1.0], confidence=1.0,
    fallback=False, cache_tier="skip", cache_hit=False, model="small", candidates=["small"], action_probs=[1.0],
    propensity=1.0, policy="fallback",
)


def _shards(path: Path) -> list[Path]:
    return sorted(path.glob("*.parquet")) if path.exists() else []


def test_writer_flushes_at_flush_rows(tmp_path: Path) -> None:
    w = DecisionLogWriter(tmp_path, prefix="d", flush_rows=3, flush_s=3600.0)
    for i in range(2):
        w.append(replace(RECORD, request_id=f"r{i}"))
    assert len(w) == 2 and _shards(tmp_path) == []
    w.append(replace(RECORD, request_id="r2"))
    assert len(w) == 0 and w.n_written == 3 and len(_shards(tmp_path)) == 1
    for i in range(3, 7):
        w.append(replace(RECORD, request_id=f"r{i}"))
    assert len(_shards(tmp_path)) == 2 and len(w) == 1
    w.close()
    assert w.n_written == 7 and len(w) == 0
    assert sorted(read_logs(tmp_path).column("request_id").to_pylist()) == [f"r{i}" for i in range(7)]
    assert all(p.name.startswith("d-") for p in _shards(tmp_path))


def test_writer_flushes_at_flush_s(tmp_path: Path) -> None:
    w = DecisionLogWriter(tmp_path, prefix="d", flush_rows=1000, flush_s=0.05)
    w.append(RECORD)
    assert w.flush_if_due() is None and len(w) == 1  # younger than flush_s
    time.sleep(0.06)
    path = w.flush_if_due()
    assert path is not None and path.exists() and len(w) == 0
    assert w.flush_if_due() is None  # nothing buffered


def test_writer_tiny_flush_s_flushes_on_append(tmp_path: Path) -> None:
    w = DecisionLogWriter(tmp_path, prefix="d", flush_rows=1000, flush_s=1e-9)
    w.append(RECORD)
    time.sleep(0.001)
    w.append(replace(RECORD, request_id="r2"))
    assert len(w) == 0 and w.n_written == 2


def test_background_writer_writes_due_shards_off_the_caller_and_close_loses_nothing(tmp_path: Path) -> None:
    w = DecisionLogWriter(tmp_path, prefix="d", flush_rows=3, flush_s=3600.0, background=True)
    writers: set[str] = set()
    original = w.flush

    def spy() -> Any:
        writers.add(threading.current_thread().name)
        return original()

    w.flush = spy  # type: ignore[method-assign]
    for i in range(10):
        w.append(replace(RECORD, request_id=f"r{i}"))
    w.close()
    assert any(n.startswith("decision-log") for n in writers)  # due flushes ran on the writer thread
    assert sorted(read_logs(tmp_path).column("request_id").to_pylist()) == sorted(f"r{i}" for i in range(10))
    assert w.n_written == 10 and len(w) == 0


def test_writer_close_flushes_the_rest_and_is_idempotent(tmp_path: Path) -> None:
    w = DecisionLogWriter(tmp_path / "new-dir", prefix="d", flush_rows=1000, flush_s=3600.0)
    w.close()
    assert _shards(tmp_path / "new-dir") == []  # an empty buffer writes no shard
    w.append(RECORD)
    w.close()
    w.close()
    assert len(_shards(tmp_path / "new-dir")) == 1 and w.n_written == 1


# --- streaming and cancellation ----------------------------------------------------------------------------

class FakeStreamer:
    """Streams ``n`` word chunks with ``delay_s`` between them; records whether it was stopped early."""

    def __init__(self, n: int = 4, delay_s: float = 0.0) -> None:
        self.n, self.delay_s = n, delay_s
        self.stopped_early = 0
        self.finished = 0

    async def __call__(self, model: str, body: dict[str, Any], category: str):  # type: ignore[no-untyped-def]
        try:
            for i in range(self.n):
                if i:
                    await asyncio.sleep(self.delay_s)
                yield f"w{i} "
            self.finished += 1
            yield ModelReply(BackendResult(text="", output_tokens=self.n, ttft_ms=1.0, latency_ms=2.0, quality=0.5),
                             f"{model}#0", {})
        except (asyncio.CancelledError, GeneratorExit):
            self.stopped_early += 1
            raise


def _stream_core(bundle: Bundle, log: DecisionLogWriter, streamer: FakeStreamer) -> GatewayCore:
    return GatewayCore(Router(bundle), log, FakeCaller(), stream_model=streamer, seed=0)


def test_stream_sends_token_chunks_with_the_decision_first_and_complete_last(bundle: Bundle,
                                                                              log: DecisionLogWriter) -> None:
    streamer = FakeStreamer(n=4)

    async def run() -> list[str]:
        reply = await _stream_core(bundle, log, streamer).chat(json.dumps(_user(stream=True)).encode())
        assert reply.stream and reply.status == 200
        return [line async for line in reply.chunks]  # type: ignore[union-attr]

    lines = asyncio.run(run())
    assert all(line.startswith("data: ") and line.endswith("\n\n") for line in lines)
    assert lines[-1] == "data: [DONE]\n\n"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant" and chunks[0]["turnout"]["category"] == "code"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "w0 w1 w2 w3 "
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] == "stop" and last["usage"]["completion_tokens"] == 4
    assert last["turnout"]["replica"] == f"{last['model']}#0" and last["turnout"]["latency_ms"] > 0
    assert streamer.finished == 1 and streamer.stopped_early == 0
    log.close()
    (row,) = read_logs(log.out_dir).to_pylist()
    assert row["error"] is None and row["output_tokens"] == 4 and row["request_id"] == last["turnout"]["request_id"]


@pytest.mark.parametrize("how", ["aclose", "cancel"])
def test_client_disconnect_stops_the_model_stream_and_is_logged(bundle: Bundle, log: DecisionLogWriter,
                                                                 how: str) -> None:
    streamer = FakeStreamer(n=50, delay_s=0.05)

    async def run() -> int:
        reply = await _stream_core(bundle, log, streamer).chat(json.dumps(_user(stream=True)).encode())
        chunks = reply.chunks
        assert chunks is not None
        got = [await chunks.__anext__(), await chunks.__anext__()]  # decision chunk + first word
        if how == "aclose":  # what Starlette does when it stops iterating
            await chunks.aclose()  # type: ignore[attr-defined]
        else:  # what the Serve proxy does on disconnect: cancel the task that is iterating
            task = asyncio.ensure_future(chunks.__anext__())
            await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        return len(got)

    assert asyncio.run(run()) == 2
    assert streamer.stopped_early == 1 and streamer.finished == 0
    log.close()
    (row,) = read_logs(log.out_dir).to_pylist()
    assert row["error"] == "cancelled" and row["latency_ms"] is None and row["quality"] is None


def test_cancelled_non_streaming_request_is_logged(bundle: Bundle, log: DecisionLogWriter) -> None:
    class Hanging(FakeCaller):
        async def __call__(self, model: str, body: dict[str, Any], category: str) -> ModelReply:
            await asyncio.sleep(60)
            raise AssertionError("not reached")

    async def run() -> None:
        task = asyncio.ensure_future(_core(bundle, log, Hanging()).chat(json.dumps(_user()).encode()))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    log.close()
    (row,) = read_logs(log.out_dir).to_pylist()
    assert row["error"] == "cancelled"


def test_cache_hit_streams_the_cached_answer(bundle: Bundle, log: DecisionLogWriter) -> None:
    core = _stream_core(bundle, log, FakeStreamer(n=2))

    async def run() -> list[dict[str, Any]]:
        out = []
        for _ in range(2):
            reply = await core.chat(json.dumps(_user(stream=True)).encode())
            out.append([json.loads(x[6:]) for x in [line async for line in reply.chunks][:-1]])  # type: ignore[union-attr]
        return out[1]

    chunks = asyncio.run(run())
    assert chunks[-1]["turnout"]["cache_hit"] is True
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "w0 w1 "


# --- tenants, A/B arms, model load ----------------------------------------------------------------------

def test_keys_and_rate_limit_through_the_core(bundle: Bundle, log: DecisionLogWriter) -> None:
    from serving.tenants import RateLimit, TenantConfig, TenantDirectory

    tenants = TenantDirectory({"acme": TenantConfig(api_keys=("k1",)),
                               "tiny": TenantConfig(api_keys=("k2",), rate_limit=RateLimit(requests_per_s=0.01, burst=2))},
                              env={})
    core = GatewayCore(Router(bundle), log, FakeCaller(), tenants=tenants, seed=0)
    raw = json.dumps(_user("hello there, how are you")).encode()
    no_key = asyncio.run(core.chat(raw, headers={}))
    assert no_key.status == 401 and "missing API key" in no_key.body["error"]["message"]
    assert asyncio.run(core.chat(raw, headers={"authorization": "Bearer nope"})).status == 401
    ok = asyncio.run(core.chat(raw, headers={"authorization": "Bearer k1"}))
    assert ok.status == 200 and ok.body["turnout"]["tenant"] == "acme"
    statuses = [asyncio.run(core.chat(raw, headers={"authorization": "Bearer k2"})) for _ in range(3)]
    assert [r.status for r in statuses] == [200, 200, 429]
    limited = statuses[-1]
    assert limited.body["error"]["type"] == "rate_limit_error" and int(limited.headers["Retry-After"]) >= 1
    assert statuses[0].body["turnout"]["tenant"] == "tiny"
    # the same prompt from another tenant is not a cache hit: the cache is per tenant
    assert statuses[0].body["turnout"]["cache_hit"] is False and statuses[1].body["turnout"]["cache_hit"] is True
    log.close()
    assert sorted(read_logs(log.out_dir).column("tenant").to_pylist()) == ["acme", "tiny", "tiny"]


def test_ab_arms_are_sticky_and_logged(bundle: Bundle, log: DecisionLogWriter, tmp_path: Path) -> None:
    from serving.experiments import Arm

    other = _copy_bundle(bundle, tmp_path / "b2", "test-2")
    arms = (Arm(name="control", bundle=str(bundle.path)), Arm(name="treatment", bundle=str(other)))
    core = GatewayCore({"control": Router(bundle), "treatment": Router(load_bundle(other))}, log, FakeCaller(),
                       arms=arms, seed=0)
    seen: dict[str, set[str]] = {}
    for i in range(40):
        user = f"user-{i % 10}"
        r = asyncio.run(core.chat(json.dumps(_user(f"tell me a fact about the number {i}")).encode(),
                                  headers={"x-turnout-user": user}))
        t = r.body["turnout"]
        assert t["bundle_version"] == {"control": "test-1", "treatment": "test-2"}[t["arm"]]
        seen.setdefault(user, set()).add(t["arm"])
    assert all(len(a) == 1 for a in seen.values())  # sticky
    assert {a for s in seen.values() for a in s} == {"control", "treatment"}
    log.close()
    rows = read_logs(log.out_dir).to_pylist()
    assert {(r["arm"], r["bundle_version"]) for r in rows} == {("control", "test-1"), ("treatment", "test-2")}
    # the assignment unit is logged (hashed, never the raw user id): the A/B report resamples users
    units = {r["assignment_unit"] for r in rows}
    assert len(units) == 10 and not any(u.startswith("user-") for u in units)
    assert all(len({r["arm"] for r in rows if r["assignment_unit"] == u}) == 1 for u in units)


def test_model_load_is_passed_when_the_router_takes_it(bundle: Bundle, log: DecisionLogWriter) -> None:
    import inspect

    seen: list[Any] = []
    router = Router(bundle)
    original = router.decide

    def spy(request: Any, **kw: Any) -> Any:
        seen.append(kw.get("model_load"))
        return original(request, **kw)

    router.decide = spy  # type: ignore[method-assign]
    core = GatewayCore(router, log, FakeCaller(), capacity={"small": 4.0, "medium": 4.0, "large": 8.0}, seed=0)
    core.inflight["large"] = 2
    assert core.model_load() == {"small": 0.0, "medium": 0.0, "large": 0.25}
    _chat(core, _user())
    if "model_load" in inspect.signature(Router.decide).parameters:
        assert seen == [{"small": 0.0, "medium": 0.0, "large": 0.25}]
    else:  # contract 2 not merged yet: the gateway must not pass an unknown keyword
        assert seen == [None]


# --- hot reload ------------------------------------------------------------------------------------------

def _copy_bundle(bundle: Bundle, dst: Path, version: str) -> Path:
    import shutil

    shutil.copytree(bundle.path, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["bundle_version"] = version
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_reload_swaps_a_good_bundle_and_refuses_bad_ones(bundle: Bundle, log: DecisionLogWriter,
                                                         tmp_path: Path) -> None:
    core = _core(bundle, log)
    good = _copy_bundle(bundle, tmp_path / "good", "test-2")
    truncated = _copy_bundle(bundle, tmp_path / "truncated", "test-3")
    (truncated / "policy.onnx").write_bytes((truncated / "policy.onnx").read_bytes()[:100])
    bad_json = _copy_bundle(bundle, tmp_path / "bad-json", "test-4")
    (bad_json / "manifest.json").write_text("{not json")
    for path, problem in [(truncated, "truncated or replaced"), (bad_json, "not valid JSON"),
                          (tmp_path / "nowhere", "bundle directory not found")]:
        r = core.reload(bundle=str(path))
        assert r.status == 409 and problem in r.body["error"]["message"], r.body
        assert "keeps serving 'test-1'" in r.body["error"]["message"] and core.router.version == "test-1"
    assert core.reload(arm="nope").status == 404
    r = core.reload(bundle=str(good))
    assert r.status == 200 and r.body == {"arm": "default", "bundle": str(good), "previous_version": "test-1",
                                          "bundle_version": "test-2"}
    assert _chat(core, _user()).body["turnout"]["bundle_version"] == "test-2"


def test_reload_refuses_a_bundle_routing_to_undeployed_models(bundle: Bundle, log: DecisionLogWriter) -> None:
    core = _core(bundle, log)
    core.deployed_models = {"small", "medium"}
    r = core.reload()
    assert r.status == 409 and "['large'] that are not deployed" in r.body["error"]["message"]


def test_watcher_reloads_a_changed_bundle_and_ignores_a_broken_one(bundle: Bundle, log: DecisionLogWriter,
                                                                   tmp_path: Path) -> None:
    watched = _copy_bundle(bundle, tmp_path / "watched", "test-1")
    core = GatewayCore(Router(load_bundle(watched)), log, FakeCaller(), seed=0)
    assert core.poll_bundles() == []
    good_manifest = json.loads((watched / "manifest.json").read_text())
    (watched / "manifest.json").write_text('{"bundle_version": "half-writ')  # a broken update
    (refused,) = core.poll_bundles()
    assert refused.status == 409 and core.router.version == "test-1"
    assert core.poll_bundles() == []  # not retried until the directory changes again
    (watched / "manifest.json").write_text(json.dumps({**good_manifest, "bundle_version": "test-5"}))
    (loaded,) = core.poll_bundles()
    assert loaded.status == 200 and core.router.version == "test-5"


# --- feedback ---------------------------------------------------------------------------------------------

def test_feedback_is_written_and_joined(bundle: Bundle, log: DecisionLogWriter) -> None:
    from router.log_schema import join_feedback, read_feedback

    core = _core(bundle, log)
    rid = _chat(core, _user()).body["turnout"]["request_id"]
    bad = asyncio.run(core.feedback(b'{"request_id": "x", "quality": 2}'))
    assert bad.status == 400 and bad.body["error"]["param"] == "quality"
    assert asyncio.run(core.feedback(b"\xff")).status == 400
    ok = asyncio.run(core.feedback(json.dumps({"request_id": rid, "quality": 0.1}).encode()))
    assert ok.status == 200 and ok.body["request_id"] == rid
    log.close()
    joined = join_feedback(read_logs(log.out_dir), read_feedback(log.out_dir)).to_pylist()
    assert [(r["request_id"], round(r["quality"], 3)) for r in joined] == [(rid, 0.1)]


def test_writer_keeps_records_when_a_write_fails(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the log directory should be")
    w = DecisionLogWriter(blocker / "logs", prefix="d", flush_rows=2, flush_s=3600.0)
    for i in range(3):
        w.append(replace(RECORD, request_id=f"r{i}"))  # the failed flush at 2 records must not raise
    assert len(w) == 3 and w.n_written == 0 and w.n_failed_writes >= 1
    blocker.unlink()  # the disk is usable again: the next flush writes everything, nothing lost
    w.close()
    assert w.n_written == 3 and len(w) == 0
    assert sorted(read_logs(blocker / "logs").column("request_id").to_pylist()) == ["r0", "r1", "r2"]


def test_a_dead_replica_is_retried_without_opening_the_circuit(bundle: Bundle, log: DecisionLogWriter) -> None:
    from serving.resilience import BreakerConfig, FailoverConfig

    class DiesTwice(FakeCaller):
        async def __call__(self, model: str, body: dict[str, Any], category: str) -> ModelReply:
            if len(self.calls) < 2:  # the replica it was routed to died; Serve routes the retry elsewhere
                self.calls.append((model, body, category))
                raise BackendError(f"{model}: ActorDiedError", status=503, replica_lost=True)
            return await FakeCaller.__call__(self, model, body, category)

    caller = DiesTwice()
    failover = FailoverConfig(attempts_per_model=1, max_models=1, breaker=BreakerConfig(failure_threshold=1))
    core = GatewayCore(Router(bundle), log, caller, failover=failover, seed=0)
    reply = _chat(core, _user(model="large"))
    assert reply.status == 200, reply.body
    assert [c[0] for c in caller.calls] == ["large"] * 3 and core.breakers["large"].state == "closed"
    # a real failure still counts: one attempt, threshold 1 -> the circuit opens
    caller.calls.clear()
    core.call_model = FakeCaller(fail=BackendError("large answered 500"))
    assert _chat(core, _user("another prompt entirely", model="large")).status == 502
    assert core.breakers["large"].state == "open"
