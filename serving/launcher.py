"""Start and stop a local Ray cluster + the turnout Serve app (``turnout serve`` and ``turnout demo``).

Settings follow ../shared/notes/ray-serve.md §6 for small machines: no dashboard, a capped object
store, fractional CPUs per replica (set in ``serving.config``), usage stats off.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from serving.config import ServeConfig

APP_NAME = "turnout"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S", "1")


def ensure_bundle(cfg: ServeConfig, step: Callable[[str], None] = print) -> Path:
    """With no bundle at ``cfg.bundle``, simulate traffic and train one (the fresh-checkout path)."""
    from router.bundle import load_bundle

    bundle = cfg.path(cfg.bundle)
    if (bundle / "manifest.json").exists():
        load_bundle(bundle)
        return bundle
    if cfg.build_if_missing is None:
        from router.errors import ArtifactError

        raise ArtifactError(f"no bundle at {bundle} and build_if_missing is off; run `turnout train bundle` first")
    from training.bundle_builder import build_bundle
    from training.simulator import write_simulation
    from training.world import load_world

    world = load_world(cfg.path(cfg.build_if_missing.world))
    sim_dir = bundle.parent / f"{bundle.name}-simulated-logs"
    step(f"no bundle at {bundle}: simulating {cfg.build_if_missing.requests} requests into {sim_dir}")
    write_simulation(world, cfg.build_if_missing.requests, sim_dir)
    build_bundle(sim_dir, world.router, bundle, step=step)
    return bundle


def start(cfg: ServeConfig, *, temp_dir: str | None = None, quiet: bool = True) -> str:
    """Start Ray + Serve and deploy the app; returns the base URL once /healthz answers."""
    import ray
    from ray import serve

    from serving.app import AppArgs, build_app

    ray.init(num_cpus=max(os.cpu_count() or 2, 2), include_dashboard=False, object_store_memory=200 * 1024**2,
             log_to_driver=not quiet, _temp_dir=temp_dir, configure_logging=not quiet)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(build_app(AppArgs(config=cfg)), name=APP_NAME, route_prefix="/", blocking=False)
    url = f"http://{cfg.host}:{cfg.port}"
    wait_healthy(url)
    return url


def wait_healthy(url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | str = "no answer"
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/healthz", timeout=2.0)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.5)
    raise TimeoutError(f"the turnout app at {url} was not healthy after {timeout_s:.0f}s (last: {last})")


def stop() -> None:
    """Graceful: Serve drains and each gateway flushes its decision log before Ray goes down."""
    import ray
    from ray import serve

    try:
        serve.delete(APP_NAME)  # graceful: replicas drain and run __del__ (the gateway flushes its log)
        serve.shutdown()
    finally:
        ray.shutdown()
