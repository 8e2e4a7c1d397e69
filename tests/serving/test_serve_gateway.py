"""Real HTTP through the Ray Serve gateway: decisions come back and land in the Parquet log."""

from __future__ import annotations

import time

import httpx
import pytest

from router.log_schema import read_logs
from tests.serving.helpers import auth

pytestmark = pytest.mark.serve

PROMPTS = ["write a python function that merges two sorted lists",
           "Translate 'where is the train station?' into Spanish",
           "hey, how is your day going?",
           "What caused the fall of the Roman Empire?",
           "Solve for x: 3x + 7 = 22"]


def _chat(url: str, content: str, **extra: object) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=auth(), timeout=30.0)


def _wait_for_ids(log_dir, ids: set[str], timeout_s: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log_dir.exists() and any(log_dir.glob("*.parquet")):
            t = read_logs(log_dir)
            found = {r: row for r, row in zip(t.column("request_id").to_pylist(), t.to_pylist()) if r in ids}
            if len(found) == len(ids):
                return found
        time.sleep(0.5)
    raise AssertionError(f"decisions {sorted(ids)} not all in the Parquet log at {log_dir} after {timeout_s}s")


def test_requests_are_routed_answered_and_logged(serve_app) -> None:  # type: ignore[no-untyped-def]
    url = serve_app["url"]
    replies = [_chat(url, p).json() for p in PROMPTS]
    decisions = {r["turnout"]["request_id"]: r for r in replies}
    for r in replies:
        t = r["turnout"]
        assert r["choices"][0]["message"]["content"].startswith("[simulated")
        assert t["simulated"] is True and t["replica"].startswith(f"LLM_{t['model']}#")
        assert 0 < t["propensity"] <= 1
    # no explicit flush: the gateway's periodic flusher (log_flush_s=1) must write them
    logged = _wait_for_ids(serve_app["log_dir"], set(decisions))
    for rid, row in logged.items():
        t = decisions[rid]["turnout"]
        assert (row["model"], row["category"], row["replica"]) == (t["model"], t["category"], t["replica"])
        assert row["propensity"] == pytest.approx(t["propensity"], rel=1e-6)
        assert row["quality"] is not None and row["latency_ms"] > 0


def test_bad_input_gets_4xx_and_the_server_keeps_serving(serve_app) -> None:  # type: ignore[no-untyped-def]
    url = serve_app["url"]
    bad = [(b"{not json", 400, "request body is not valid JSON"), (b"\xff\xfe\x00", 400, "not valid UTF-8"),
           (b'{"model": "auto"}', 400, "missing required field 'messages'"),
           (b'{"messages": [{"role": "user", "content": "' + b"a" * 40_000 + b'"}]}', 413, "limit is 32000"),
           (b'{"messages": [{"role": "user", "content": "hi"}], "model": "gpt-9"}', 404, "unknown model 'gpt-9'")]
    for body, status, message in bad:
        r = httpx.post(f"{url}/v1/chat/completions", content=body, headers=auth(), timeout=30.0)
        assert r.status_code == status, r.text
        assert message in r.json()["error"]["message"]
    assert _chat(url, "hello again").status_code == 200
    health = httpx.get(f"{url}/healthz", timeout=10.0).json()
    assert health["status"] == "ok" and health["decision_log"]["quarantined"] == 0
    assert set(health["scoring_failures"]) == {a["name"] for a in health["arms"]}


def test_repeat_hits_the_cache_and_pinning_and_streaming_work(serve_app) -> None:  # type: ignore[no-untyped-def]
    url = serve_app["url"]
    prompt = "Translate 'the cat sleeps on the sofa' into French"
    first, second = _chat(url, prompt).json(), _chat(url, prompt).json()
    assert first["turnout"]["cache_tier"] == "exact" and not first["turnout"]["cache_hit"]
    assert second["turnout"]["cache_hit"] and second["choices"][0]["message"] == first["choices"][0]["message"]
    pinned = _chat(url, "explain recursion", model="large").json()["turnout"]
    assert (pinned["model"], pinned["policy"], pinned["propensity"]) == ("large", "pinned", 1.0)
    stream = _chat(url, "tell me a joke", stream=True)
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert stream.text.rstrip().endswith("data: [DONE]")


def test_models_endpoint_lists_the_catalogue(serve_app) -> None:  # type: ignore[no-untyped-def]
    ids = [m["id"] for m in httpx.get(f"{serve_app['url']}/v1/models", timeout=10.0).json()["data"]]
    assert ids == ["auto", "small", "medium", "large"]


def test_both_large_replicas_receive_traffic(serve_app) -> None:  # type: ignore[no-untyped-def]
    """Pow2ReplicaRouter spreads load over the two LLM_large replicas (pinned to isolate the router)."""
    import concurrent.futures as cf

    url = serve_app["url"]
    with cf.ThreadPoolExecutor(8) as pool:
        # distinct words, not just distinct numbers: the semantic cache must not answer these
        words = ["apples", "rivers", "engines", "violins", "glaciers", "sparrows", "lanterns", "canyons"]
        prompts = [f"write a short poem about {a} and {b}" for a in words for b in words if a != b][:40]
        replies = list(pool.map(lambda p: _chat(url, p, model="large"), prompts))
    replicas = {r.json()["turnout"]["replica"] for r in replies}
    assert len(replicas) == 2, replicas
