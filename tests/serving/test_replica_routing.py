"""LearnedReplicaRouter on a real Serve deployment: replicas run the engine model in real time and report
its stats; the router sends a deliberately slow replica less work and keeps serving when a replica dies.

Runs on the session's cluster (``serve_app`` starts it) as its own application, deleted afterwards.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from training.replica_eval import train_quick_scorer

pytestmark = pytest.mark.serve

APP = "replica-routing-test"
SLOWDOWN = 6.0


@pytest.fixture(scope="module")
def scorer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("replica-scorer")
    train_quick_scorer(out, n_requests=600)
    return out


@pytest.fixture
def replica_app(serve_app: dict[str, Any], scorer_dir: Path, configs_dir: Path) -> Iterator[Any]:
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    from serving.app import QUIET_LOGS, ModelServer

    backend = {"kind": "simulated", "world": str(configs_dir / "world.yaml"), "time_scale": 0.0}
    engine = {"config": {"step_base_s": 0.01}, "time_scale": 0.05, "slowdown_by_rank": [SLOWDOWN, 1.0, 1.0]}
    deployment = ModelServer.options(
        name="LLM_replicas", num_replicas=3, max_ongoing_requests=32, ray_actor_options={"num_cpus": 0.05},
        graceful_shutdown_wait_loop_s=0.2, graceful_shutdown_timeout_s=1.0, logging_config=QUIET_LOGS,
        request_router_config=RequestRouterConfig(
            request_router_class="serving.replica_router:LearnedReplicaRouter",
            request_router_kwargs={"scorer_path": str(scorer_dir), "seed": 0},
            request_routing_stats_period_s=0.2, initial_backoff_s=0.005, max_backoff_s=0.05))
    handle = serve.run(deployment.bind("small", backend, str(configs_dir), engine), name=APP,
                       route_prefix=f"/{APP}", blocking=False)
    try:
        yield handle.options(method_name="chat")
    finally:
        serve.delete(APP)


def body(i: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"request {i}"}],
            "metadata": {"input_tokens": 2000, "sim_category": "chat"}}


async def drive(handle: Any, n_clients: int, duration_s: float, on_tick: Any = None) -> list[dict[str, Any]]:
    """``n_clients`` closed-loop clients for ``duration_s``; one record per request."""
    records: list[dict[str, Any]] = []
    stop = time.monotonic() + duration_s

    async def client(c: int) -> None:
        i = 0
        while time.monotonic() < stop:
            t0 = time.monotonic()
            try:
                reply = await asyncio.wait_for(handle.remote(body(c * 10_000 + i), "chat"), timeout=20.0)
                records.append({"t0": t0, "t1": time.monotonic(), "replica": reply.replica,
                                "ttft_ms": reply.result.ttft_ms, "step_ms": reply.replica_stats.get("step_ms")})
            except asyncio.TimeoutError:
                records.append({"t0": t0, "t1": time.monotonic(), "error": "timeout"})
            except Exception as e:  # the replica died under this request
                records.append({"t0": t0, "t1": time.monotonic(), "error": type(e).__name__})
            i += 1

    tasks = [asyncio.create_task(client(c)) for c in range(n_clients)]
    if on_tick is not None:
        await on_tick()
    await asyncio.gather(*tasks)
    return records


def test_slow_replica_gets_less_work_and_a_dead_replica_is_routed_around(replica_app: Any) -> None:
    import ray

    # warm up: every replica answers and publishes engine stats (period 0.2 s)
    warm = asyncio.run(drive(replica_app, 6, 2.0))
    assert warm and all("error" not in r for r in warm)

    records = asyncio.run(drive(replica_app, 10, 4.0))
    ok = [r for r in records if "error" not in r]
    assert len(ok) == len(records) >= 60, Counter(r.get("error") for r in records)  # name a failure if one happens
    counts = Counter(r["replica"] for r in ok)
    assert len(counts) == 3, counts
    # the slow replica is the one reporting the longest engine steps
    step = {rep: max(r["step_ms"] or 0.0 for r in ok if r["replica"] == rep) for rep in counts}
    slow = max(step, key=step.__getitem__)
    fast = [rep for rep in counts if rep != slow]
    assert counts[slow] < min(counts[f] for f in fast), (counts, step)
    assert counts[slow] / len(ok) < 0.25, counts

    # kill the busiest fast replica while 10 clients keep sending
    victim = max(fast, key=counts.__getitem__)
    deployment, unique_id = victim.split("#")
    killed_at: list[float] = []

    async def kill_midway() -> None:
        await asyncio.sleep(1.5)
        actor = ray.get_actor(f"SERVE_REPLICA::{APP}#{deployment}#{unique_id}", namespace="serve")
        ray.kill(actor, no_restart=True)
        killed_at.append(time.monotonic())

    after = asyncio.run(drive(replica_app, 10, 5.0, on_tick=kill_midway))
    t_kill = killed_at[0]
    assert not [r for r in after if r.get("error") == "timeout"]  # nothing hangs
    failed = [r for r in after if "error" in r]
    assert len(failed) <= 32, failed[:3]  # at most what was in flight on the dead replica
    late = [r for r in after if r["t0"] > t_kill + 1.0]
    assert len(late) >= 20 and all("error" not in r for r in late), Counter(r.get("error") for r in late)
    assert victim not in {r["replica"] for r in late}
