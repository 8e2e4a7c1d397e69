"""Start and stop a local Ray cluster + the turnout Serve app (``turnout serve`` and ``turnout demo``).

Settings follow ../shared/notes/ray-serve.md §6 for small machines: no dashboard, a capped object
store, fractional CPUs per replica (set in ``serving.config``), usage stats off.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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


_LOCAL_REDIS = None  # serving.redis_server.LocalRedis spawned for cache_store.spawn_local


def start(cfg: ServeConfig, *, temp_dir: str | None = None, quiet: bool = True,
          metrics_report_interval_ms: int | None = None) -> str:
    """Start Ray + Serve and deploy the app; returns the base URL once /healthz answers.

    Ray's Prometheus metrics (incl. the gateway's ``ray_turnout_*``) are served on
    ``cfg.metrics_port`` of this node (and relayed by the gateway's ``GET /metrics``)."""
    import ray
    from ray import serve

    from serving.app import AppArgs, build_app

    global _LOCAL_REDIS
    if cfg.cache_store.kind == "redis" and cfg.cache_store.spawn_local and _LOCAL_REDIS is None:
        from serving.redis_server import ensure_local_redis

        _LOCAL_REDIS = ensure_local_redis(cfg.cache_store.url)  # None when one already answers there
    system = {"metrics_report_interval_ms": metrics_report_interval_ms} if metrics_report_interval_ms else None
    ray.init(num_cpus=max(os.cpu_count() or 2, 2), include_dashboard=False, object_store_memory=200 * 1024**2,
             log_to_driver=not quiet, _temp_dir=temp_dir, configure_logging=not quiet,
             _metrics_export_port=cfg.metrics_port, _system_config=system)
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

    global _LOCAL_REDIS
    try:
        serve.delete(APP_NAME)  # graceful: replicas drain and run __del__ (the gateway flushes its log)
        serve.shutdown()
    finally:
        ray.shutdown()
        if _LOCAL_REDIS is not None:  # the redis-server `start` spawned for cache_store.spawn_local
            _LOCAL_REDIS.stop()
            _LOCAL_REDIS = None


def ray_serve_config(cfg: ServeConfig, config_path: Path) -> dict:
    """A Ray Serve config (``serve run`` / ``serve deploy``) that builds this app from ``config_path``.

    Paths are absolute: Serve builds the app in a cluster process whose working directory is not
    this one. Every node needs this checkout installed (``pip install -e .``) and the bundle/log paths."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": cfg.host, "port": cfg.port},
        "applications": [{
            "name": APP_NAME, "route_prefix": "/", "import_path": "serving.app:build_app",
            "args": {"config_file": str(Path(config_path).resolve())},
        }],
    }


def write_ray_serve_config(cfg: ServeConfig, config_path: Path, out: Path) -> Path:
    import yaml
    from ray.serve.schema import ServeDeploySchema

    data = ray_serve_config(cfg, config_path)
    ServeDeploySchema.model_validate(data)  # what `serve deploy` checks
    out.parent.mkdir(parents=True, exist_ok=True)
    header = "# generated by `turnout serve --emit-serve-config`; edit the turnout config instead\n"
    out.write_text(header + yaml.safe_dump(data, sort_keys=False))
    return out


def serve_and_replay(cfg: ServeConfig, bodies: Sequence[dict[str, Any]], *, concurrency: int = 8,
                     progress: bool = True, on_start: Callable[[str], None] = lambda url: None) -> Any:
    """Start the app, replay ``bodies`` over HTTP, flush the decision log, stop (always): the run
    ``turnout demo`` and ``turnout loop`` make. Returns the ``serving.replay.ReplayResult``."""
    import asyncio
    import tempfile

    from serving.replay import replay

    url = start(cfg, temp_dir=tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    try:
        on_start(url)
        result = asyncio.run(replay(url, bodies, concurrency=concurrency, progress=progress))
        httpx.post(f"{url}/admin/flush", timeout=30.0)
    finally:
        stop()
    return result
