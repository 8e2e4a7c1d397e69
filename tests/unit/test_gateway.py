"""serving.gateway.GatewayCore with a fake model caller, and serving.decision_log.DecisionLogWriter.

No Ray, no pytest-asyncio: every coroutine runs under ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from router.bundle import Bundle
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


def test_error_param_names_the_field(bundle: Bundle, log: DecisionLogWriter) -> None:
    core = _core(bundle, log)
    assert _chat(core, _user(max_tokens=0)).body["error"]["param"] == "max_tokens"
    assert _chat(core, {"messages": [{"role": "user", "content": 1}]}).body["error"]["param"] == "messages[0].content"


# --- valid requests ---------------------------------------------------------------------------------

TURNOUT_KEYS = {"request_id", "category", "confidence", "ood", "fallback", "cache_tier", "cache_hit", "model", "replica",
                "propensity", "policy", "bundle_version", "arm", "cost_usd", "latency_ms", "decision_ms", "simulated"}


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


def test_backend_failure_is_a_logged_503(bundle: Bundle, log: DecisionLogWriter) -> None:
    caller = FakeCaller(fail=BackendError("large is overloaded", status=503))
    core = _core(bundle, log, caller)
    reply = _chat(core, _user())
    assert reply.status == 503
    assert reply.body["error"]["type"] == "upstream_error"
    assert "failed: large is overloaded" in reply.body["error"]["message"]
    assert len(log) == 1
    log.close()
    (row,) = read_logs(log.out_dir).to_pylist()
    assert row["error"] == "large is overloaded"
    assert row["model"] == caller.calls[0][0]
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
    assert [r["error"] for r in rows] == [None, None, "boom"]
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


def test_writer_close_flushes_the_rest_and_is_idempotent(tmp_path: Path) -> None:
    w = DecisionLogWriter(tmp_path / "new-dir", prefix="d", flush_rows=1000, flush_s=3600.0)
    w.close()
    assert _shards(tmp_path / "new-dir") == []  # an empty buffer writes no shard
    w.append(RECORD)
    w.close()
    w.close()
    assert len(_shards(tmp_path / "new-dir")) == 1 and w.n_written == 1
