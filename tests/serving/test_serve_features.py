"""The production features through real HTTP on the session's Serve app (tests/serving/conftest.py):
streaming and client-disconnect cancellation, feedback joined to the log, A/B stickiness and split,
keys/401, rate limit/429, other 4xx, hot reload with a bad bundle and the watcher, Prometheus
metrics, and a model replica killed under load."""

from __future__ import annotations

import concurrent.futures as cf
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.log_schema import join_feedback, read_feedback, read_logs
from serving.experiments import assign_arm
from tests.serving.helpers import auth, copy_bundle

pytestmark = pytest.mark.serve


def _post(url: str, path: str, body: Any = None, tenant: str | None = "acme", **kw: Any) -> httpx.Response:
    headers = {**(auth(tenant) if tenant else {}), **kw.pop("headers", {})}
    return httpx.post(f"{url}{path}", json=body, headers=headers, timeout=30.0, **kw)


def _msg(text: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **extra}


def _flush_and_read(app: dict[str, Any], ids: set[str]) -> dict[str, dict[str, Any]]:
    assert _post(app["url"], "/admin/flush").status_code == 200
    t = read_logs(app["log_dir"])
    return {r["request_id"]: r for r in t.to_pylist() if r["request_id"] in ids}


def _wait(cond: Any, timeout_s: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"{what} not met after {timeout_s}s")


def _sse_events(text: str) -> list[Any]:
    return [json.loads(x[6:]) if x[6:] != "[DONE]" else "[DONE]" for x in text.strip().split("\n\n")]


# --- streaming, cancellation ---------------------------------------------------------------------------------

def test_streaming_sends_several_token_chunks(serve_app: dict[str, Any]) -> None:
    r = _post(serve_app["url"], "/v1/chat/completions", _msg("write a haiku about autumn rain", stream=True))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    contents = [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]]
    assert len(contents) >= 5 and "".join(contents).startswith("[simulated")  # word chunks, SIMULATED
    first, last = chunks[0]["turnout"], chunks[-1]["turnout"]
    assert first["arm"] in ("a", "b") and first["request_id"] == last["request_id"]
    assert last["replica"].startswith(f"LLM_{last['model']}#") and last["simulated"] is True
    logged = _flush_and_read(serve_app, {last["request_id"]})[last["request_id"]]
    assert logged["error"] is None and logged["output_tokens"] > 0


def test_client_disconnect_cancels_the_model_stream(serve_app: dict[str, Any]) -> None:
    from ray import serve

    counters = serve.get_deployment_handle("LLM_small", app_name="turnout").options(method_name="stream_counters")
    before = counters.remote().result(timeout_s=30)
    body = _msg("tell me a very long story about a lighthouse keeper", stream=True, model="small",
                metadata={"sim_latency_scale": 500})  # SIMULATED pace stretched: the stream lasts minutes
    with httpx.Client(timeout=30.0) as client:
        with client.stream("POST", f"{serve_app['url']}/v1/chat/completions", json=body, headers=auth()) as r:
            assert r.status_code == 200
            events = (json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: "))
            first = next(events)
            # wait for the first model token: the model's stream is running when the client leaves
            assert next(e for e in events if e["choices"][0]["delta"].get("content"))
            started = counters.remote().result(timeout_s=30)
            assert started["streams"] == before["streams"] + 1
        # leaving the block closes the connection mid-stream
    rid = first["turnout"]["request_id"]
    after = _wait(lambda: (c := counters.remote().result(timeout_s=30))["streams_cancelled"] > before["streams_cancelled"]
                  and c, what="LLM_small saw the cancellation")
    assert after["streams_completed"] == before["streams_completed"]
    row = _wait(lambda: _flush_and_read(serve_app, {rid}).get(rid), what="cancelled request logged")
    assert row["error"] == "cancelled" and row["model"] == "small"


# --- feedback ---------------------------------------------------------------------------------------------------

def test_feedback_is_joined_to_the_decision_log(serve_app: dict[str, Any]) -> None:
    url = serve_app["url"]
    rid = _post(url, "/v1/chat/completions", _msg("what is the capital of Australia?")).json()["turnout"]["request_id"]
    bad = _post(url, "/v1/feedback", {"request_id": rid, "quality": "great"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "quality"
    assert _post(url, "/v1/feedback", {"quality": 0.5}).json()["error"]["param"] == "request_id"
    assert _post(url, "/v1/feedback", {"request_id": rid, "quality": 0.5}, tenant=None).status_code == 401
    ok = _post(url, "/v1/feedback", {"request_id": rid, "quality": 0.123})
    assert ok.status_code == 200 and ok.json()["request_id"] == rid
    logs = read_logs(serve_app["log_dir"]) if _flush_and_read(serve_app, {rid}) else None
    assert logs is not None
    joined = {r["request_id"]: r for r in join_feedback(logs, read_feedback(serve_app["log_dir"])).to_pylist()}
    assert joined[rid]["quality"] == pytest.approx(0.123, abs=1e-6)


# --- A/B --------------------------------------------------------------------------------------------------------

def test_ab_assignment_is_sticky_and_splits_by_weight(serve_app: dict[str, Any]) -> None:
    url = serve_app["url"]
    arms = serve_app["config"].arms()
    users = [f"user-{i}" for i in range(60)]

    def ask(i: int) -> dict[str, Any]:
        user = users[i % len(users)]
        body = _msg(f"give me one fun fact about the number {i}")
        return _post(url, "/v1/chat/completions", body, headers={"x-turnout-user": user}).json()["turnout"] | {"user": user}

    with cf.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(ask, range(120)))
    by_user: dict[str, set[str]] = {}
    for t in replies:
        by_user.setdefault(t["user"], set()).add(t["arm"])
        assert t["bundle_version"] == {"a": "test-1", "b": "test-b"}[t["arm"]]
    assert all(len(a) == 1 for a in by_user.values())  # sticky: one arm per user
    expected = {u: assign_arm(u, arms) for u in users}
    assert {u: next(iter(a)) for u, a in by_user.items()} == expected  # the documented hash, on every replica
    share_b = sum(a == "b" for a in expected.values()) / len(users)
    assert 0.3 < share_b < 0.7  # 50/50 weights; 60 users
    logged = _flush_and_read(serve_app, {t["request_id"] for t in replies})
    assert len(logged) == 120 and all(r["arm"] == expected[t["user"]] for t, r in
                                      ((t, logged[t["request_id"]]) for t in replies))


# --- keys, rate limits, bad input --------------------------------------------------------------------------------

def test_missing_or_unknown_key_is_a_401(serve_app: dict[str, Any]) -> None:
    url = serve_app["url"]
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "Basic abc"}):
        r = httpx.post(f"{url}/v1/chat/completions", json=_msg("hi"), headers=headers, timeout=30.0)
        assert r.status_code == 401, r.text
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and "API key" in err["message"]
    assert _post(url, "/admin/reload", {}, tenant="other").status_code == 403  # not an admin tenant


def test_rate_limited_tenant_gets_429_with_retry_after(serve_app: dict[str, Any]) -> None:
    url = serve_app["url"]
    statuses = [_post(url, "/v1/chat/completions", _msg(f"short question {i}"), tenant="tiny") for i in range(5)]
    assert [r.status_code for r in statuses[:3]] == [200, 200, 200]  # burst 3
    limited = [r for r in statuses[3:] if r.status_code == 429]
    assert limited, [r.status_code for r in statuses]
    assert int(limited[0].headers["retry-after"]) >= 1 and limited[0].json()["error"]["type"] == "rate_limit_error"
    assert _post(url, "/v1/chat/completions", _msg("still fine")).status_code == 200  # other tenants unaffected


def test_client_mistakes_are_4xx_never_5xx(serve_app: dict[str, Any]) -> None:
    url = serve_app["url"]
    cases = [
        (b'{"messages": [{"role": "user", "content": 5}]}', 400),
        (b'{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', 400),
        (b'{"messages": [{"role": "user", "content": "hi"}], "user": 5}', 400),
        (b"[]", 400), (b"", 400),
    ]
    for body, status in cases:
        r = httpx.post(f"{url}/v1/chat/completions", content=body, headers=auth(), timeout=30.0)
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"]["message"]
    huge = httpx.post(f"{url}/v1/chat/completions", json=_msg("hi"), timeout=30.0,
                      headers={**auth(), "x-padding": "a" * 200_000})
    assert huge.status_code == 431 and "request headers are" in huge.json()["error"]["message"]
    assert _post(url, "/v1/chat/completions", _msg("alive after abuse")).status_code == 200


# --- hot reload -----------------------------------------------------------------------------------------------

def _arm_b_version(url: str) -> str:
    return next(a["bundle_version"] for a in httpx.get(f"{url}/healthz", timeout=10).json()["arms"] if a["name"] == "b")


def test_hot_reload_refuses_a_bad_bundle_and_swaps_a_good_one(serve_app: dict[str, Any], tmp_path: Path) -> None:
    url, arm_b = serve_app["url"], serve_app["arm_b"]
    bad = copy_bundle(serve_app["bundle"], tmp_path / "bad", "test-bad")
    (bad / "classifier.onnx").write_bytes(b"garbage")
    r = _post(url, "/admin/reload", {"arm": "b", "bundle": str(bad)})
    assert r.status_code == 409 and "classifier.onnx" in r.json()["error"]["message"]
    assert _arm_b_version(url) == "test-b"
    assert _post(url, "/admin/reload", {"arm": "zz"}).status_code == 404
    assert _post(url, "/admin/reload", {"arm": 3}).status_code == 400
    good = copy_bundle(serve_app["bundle"], tmp_path / "good", "test-b2")
    r = _post(url, "/admin/reload", {"arm": "b", "bundle": str(good)})
    assert r.status_code == 200 and r.json()["bundle_version"] == "test-b2" and _arm_b_version(url) == "test-b2"
    back = _post(url, "/admin/reload", {"arm": "b", "bundle": str(arm_b)})
    assert back.status_code == 200 and _arm_b_version(url) == "test-b"


def test_watcher_picks_up_a_rewritten_bundle_and_ignores_a_broken_one(serve_app: dict[str, Any]) -> None:
    url, manifest = serve_app["url"], serve_app["arm_b"] / "manifest.json"
    original = manifest.read_text()
    try:
        manifest.write_text(original[: len(original) // 2])  # a half-written manifest
        time.sleep(2.0)  # several watcher periods (0.5 s)
        assert _arm_b_version(url) == "test-b"
        assert _post(url, "/v1/chat/completions", _msg("still answering?")).status_code == 200
        manifest.write_text(original.replace('"test-b"', '"test-b3"'))
        _wait(lambda: _arm_b_version(url) == "test-b3", what="watcher reload")
    finally:
        manifest.write_text(original)
        _wait(lambda: _arm_b_version(url) == "test-b", what="watcher restore")


# --- metrics ----------------------------------------------------------------------------------------------------

def test_prometheus_metrics_record_decisions_and_errors(serve_app: dict[str, Any]) -> None:
    url = serve_app["url"]
    _post(url, "/v1/chat/completions", _msg("count me in the metrics"))
    httpx.post(f"{url}/v1/chat/completions", json=_msg("no key"), timeout=30.0)

    def scraped() -> str | None:
        text = httpx.get(f"{url}/metrics", timeout=10.0).text
        ok = all(name in text for name in ("ray_turnout_decisions_total{", "ray_turnout_errors_total{",
                                           "ray_turnout_decision_latency_ms_bucket{"))
        return text if ok else None

    text = _wait(scraped, timeout_s=30.0, what="turnout metrics exported")
    line = next(x for x in text.splitlines() if x.startswith("ray_turnout_decisions_total{"))
    assert 'arm="' in line and 'model="' in line and 'category="' in line and float(line.rsplit(" ", 1)[1]) >= 1
    assert 'kind="unauthorized"' in text


# --- a model replica killed under load ---------------------------------------------------------------------------

def test_replica_killed_under_load_loses_under_one_percent(serve_app: dict[str, Any]) -> None:
    import ray

    url = serve_app["url"]
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if "LLM_large" in a["name"] and a["name"].startswith("SERVE_REPLICA")]
    assert len(replicas) == 2, replicas
    words = ["amber", "basalt", "cedar", "delta", "ember", "fjord", "granite", "harbor", "iris", "juniper"]
    prompts = [f"describe the {a} {b} in {n} words" for n in range(3) for a in words for b in words if a != b][:200]

    def ask(p: str) -> httpx.Response:
        return _post(url, "/v1/chat/completions", _msg(p, model="large"))

    with cf.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(ask, p) for p in prompts]
        _wait(lambda: sum(f.done() for f in futures) >= 30, what="load running")
        ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=True)
        results = [f.result() for f in futures]
    errors = [r for r in results if r.status_code != 200]
    assert len(errors) <= 0.01 * len(results), [(r.status_code, r.text[:200]) for r in errors]
    assert all(r.status_code < 500 or r.status_code in (502, 503, 504) for r in errors)
    ids = {r.json()["turnout"]["request_id"] for r in results if r.status_code == 200}
    logged = _wait(lambda: (got := _flush_and_read(serve_app, ids)) and len(got) == len(ids) and got,
                   what="every accepted request logged")
    assert set(logged) == ids and all(row["error"] is None for row in logged.values())
    from ray import serve

    def recovered() -> bool:  # leave two healthy LLM_large replicas for the tests that follow
        status = serve.status().applications["turnout"].deployments["LLM_large"]
        return status.status == "HEALTHY" and status.replica_states.get("RUNNING", 0) == 2

    _wait(recovered, timeout_s=60, what="LLM_large replaced")


# --- graceful shutdown flushes the decision log ----------------------------------------------------------------

def test_clean_stop_loses_no_decision_record(serve_app: dict[str, Any], tmp_path: Path) -> None:
    """A second gateway (never flushing on its own) over the session's model deployments: deleting the
    app gracefully must write every buffered record."""
    from ray import serve

    from serving.app import Gateway

    cfg = serve_app["config"].model_copy(update={
        "log_dir": str(tmp_path / "logs"), "tenants": {}, "experiment": None,
        "gateway": serve_app["config"].gateway.model_copy(update={"log_flush_s": 3600.0, "log_flush_rows": 10_000,
                                                                   "graceful_shutdown_timeout_s": 10.0})})
    models = {m: serve.get_deployment_handle(f"LLM_{m}", app_name="turnout") for m in ("small", "medium", "large")}
    serve.run(Gateway.options(name="FlushGateway", ray_actor_options={"num_cpus": 0.05}).bind(cfg.model_dump(), models),
              name="flush-test", route_prefix="/flush-test", blocking=False)
    base = f"{serve_app['url']}/flush-test"
    _wait(lambda: _ok(f"{base}/healthz"), timeout_s=60, what="second gateway up")
    ids = {httpx.post(f"{base}/v1/chat/completions", json=_msg(f"question number {i} about rivers"),
                      timeout=30).json()["turnout"]["request_id"] for i in range(6)}
    assert len(ids) == 6 and not list((tmp_path / "logs").glob("*.parquet"))  # all still buffered
    serve.delete("flush-test")  # graceful: drain, then the replica's __del__ closes the writer
    logged = read_logs(tmp_path / "logs").column("request_id").to_pylist()
    assert sorted(logged) == sorted(ids)


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False
