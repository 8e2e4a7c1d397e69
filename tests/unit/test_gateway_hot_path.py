"""The gateway's per-request path: buffered request ids and the optional decide thread."""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from router.bundle import Bundle
from router.decision import Router
from router.log_schema import read_logs
from serving import request_ids
from serving.backends import BackendResult, ModelReply
from serving.decision_log import DecisionLogWriter
from serving.gateway import GatewayCore
from serving.request_ids import new_request_id

PROMPTS = ["Write a Python function that reverses a linked list", "What is 17 * 23?",
           "Translate 'good morning' to French", "Summarise the plot of Hamlet in two sentences",
           "Explain TCP slow start", "Prove that the square root of 2 is irrational",
           "Write a haiku about autumn", "How do I sort a dict by value in Python?"]


def test_request_ids_are_uuid4_hex_and_unique() -> None:
    ids = [new_request_id() for _ in range(1000)]  # crosses several 256-id buffers
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}", i) for i in ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_never_repeats_its_parents_ids() -> None:
    new_request_id()  # the parent holds a partly used buffer
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    assert child and child != new_request_id()


def test_request_ids_are_safe_across_threads() -> None:
    got: list[str] = []
    lock = threading.Lock()

    def draw() -> None:
        mine = [request_ids.new_request_id() for _ in range(500)]
        with lock:
            got.extend(mine)

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 2000


class SlowCaller:
    """Answers after ``delay_s`` without a quality (the online correction stays put, so decisions do not
    depend on when answers arrive)."""

    def __init__(self, delay_s: float = 0.02) -> None:
        self.delay_s = delay_s

    async def __call__(self, model: str, body: dict[str, Any], category: str) -> ModelReply:
        await asyncio.sleep(self.delay_s)
        return ModelReply(BackendResult(f"answer from {model}", 5, 1.0, 2.0, quality=None), "fake#1", {})


def _core(bundle: Bundle, tmp_path: Path, name: str, **kw: Any) -> GatewayCore:
    log = DecisionLogWriter(tmp_path / name, prefix="d", flush_rows=1000, flush_s=3600.0)
    return GatewayCore(Router(bundle), log, kw.pop("caller", SlowCaller()), seed=3, **kw)


def _decisions(core: GatewayCore) -> dict[str, tuple[Any, ...]]:
    async def run() -> list[Any]:
        return await asyncio.gather(*(core.chat(json.dumps({"messages": [{"role": "user", "content": p}]}).encode())
                                      for p in PROMPTS))

    replies = asyncio.run(run())
    assert all(r.status == 200 for r in replies)
    return {
        rec.prompt: (rec.model, rec.propensity, rec.category, rec.cache_tier, rec.policy, tuple(rec.action_probs))
        for rec in core.log._buffer}


def _threads_deciding(core: Any) -> set[str]:
    """Names of the threads that run ``Router.decide`` from now on (filled as requests are decided)."""
    used: set[str] = set()
    original = core.routers["default"].decide

    def spy(*args: Any, **kw: Any) -> Any:
        used.add(threading.current_thread().name)
        return original(*args, **kw)

    core.routers["default"].decide = spy
    return used


def test_decide_thread_gives_the_inline_decisions(bundle: Bundle, tmp_path: Path) -> None:
    """Concurrent requests: with the decide thread, every request gets the decision it gets inline (one
    thread, arrival order, the same rng draws)."""
    inline = _core(bundle, tmp_path, "inline")
    threaded = _core(bundle, tmp_path, "threaded", decide_in_thread=True)
    used = _threads_deciding(threaded)
    assert _decisions(threaded) == _decisions(inline)
    assert any(n.startswith("decide") for n in used)  # the busy gateway decided on the decide thread
    assert threading.main_thread().name in used  # the first request found it idle: decided inline


def test_an_idle_gateway_decides_inline(bundle: Bundle, tmp_path: Path) -> None:
    core = _core(bundle, tmp_path, "idle", decide_in_thread=True)
    used = _threads_deciding(core)
    for p in PROMPTS[:3]:  # one at a time: nothing else to serve while deciding
        assert asyncio.run(core.chat(json.dumps({"messages": [{"role": "user", "content": p}]}).encode())).status == 200
    assert used == {threading.current_thread().name}


def test_a_client_gone_during_a_threaded_decision_is_logged_as_cancelled(bundle: Bundle, tmp_path: Path) -> None:
    core = _core(bundle, tmp_path, "cancel", decide_in_thread=True)
    core._busy = lambda: True  # type: ignore[method-assign]  # as if other requests were in flight
    started = threading.Event()
    release = threading.Event()
    original = core.routers["default"].decide

    def slow(*args: Any, **kw: Any) -> Any:
        started.set()
        release.wait(30)
        return original(*args, **kw)

    core.routers["default"].decide = slow  # type: ignore[method-assign]

    async def run() -> None:
        task = asyncio.ensure_future(core.chat(json.dumps({"messages": [{"role": "user", "content": PROMPTS[0]}]})
                                               .encode()))
        while not started.is_set():
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        for _ in range(2000):  # the decision finishes on the thread; its record is appended on the loop
            if len(core.log):
                break
            await asyncio.sleep(0.005)

    asyncio.run(run())
    core.log.close()
    (row,) = read_logs(core.log.out_dir).to_pylist()
    assert row["error"] == "cancelled" and row["prompt"] == PROMPTS[0] and row["latency_ms"] is None
    assert core._decides_pending == 0


def test_decide_thread_results_do_not_depend_on_timing(bundle: Bundle, tmp_path: Path) -> None:
    """A slower model changes when decisions run relative to answers, not what they are."""
    a = _core(bundle, tmp_path, "fast", decide_in_thread=True, caller=SlowCaller(0.0))
    b = _core(bundle, tmp_path, "slow", decide_in_thread=True, caller=SlowCaller(0.05))
    assert _decisions(a) == _decisions(b)
