"""``turnout demo``: the whole loop on a fresh machine, no data or services needed.

simulate logs -> train + export a bundle -> start Ray Serve -> replay held-out requests over HTTP
-> summary table -> flush and read back the decision log -> shut down. Models are SIMULATED.
"""

from __future__ import annotations

import asyncio
import socket
import tempfile
import time
from pathlib import Path

import httpx
import yaml
from rich.console import Console

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_demo(*, requests: int = 300, train_requests: int = 4000, workdir: str | None = None, port: int | None = None,
             concurrency: int = 8, world: str | None = None) -> dict[str, object]:
    from router.log_schema import read_logs
    from serving import launcher
    from serving.config import load_serve_config
    from serving.replay import print_summary, replay
    from training.bundle_builder import build_bundle
    from training.simulator import replay_request, write_simulation
    from training.world import generate_requests, load_world

    console = Console()
    t0 = time.perf_counter()
    work = Path(workdir or tempfile.mkdtemp(prefix="turnout-demo-")).resolve()
    world_path = Path(world) if world else REPO_CONFIGS / "world.yaml"
    w = load_world(world_path)
    console.rule("[bold]turnout demo[/] (simulated models)")
    console.print(f"working directory: {work}")
    with console.status("simulating logged traffic under a uniform-random logging policy"):
        write_simulation(w, train_requests, work / "sim-logs")
    console.print(f"[green]✓[/] simulated {train_requests} logged requests")
    with console.status("training classifier + reward model, exporting ONNX bundle") as st:
        bundle = build_bundle(work / "sim-logs", w.router, work / "bundle", step=lambda m: st.update(m))
    m = bundle.manifest
    console.print(f"[green]✓[/] bundle {bundle.version}: classifier {m.classifier.kind} (OOD threshold "
                  f"{m.classifier.ood.threshold:.3f}), policy {m.policy.kind}-{m.policy.variant} "
                  f"(chosen by held-out DR among {sorted(m.metrics['policy']['variants_dr_value'])})")
    cfg_path = work / "serve.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "host": "127.0.0.1", "port": port or free_port(), "bundle": str(work / "bundle"),
        "log_dir": str(work / "decision-logs"), "build_if_missing": None,
        "backend": {"kind": "simulated", "world": str(world_path.resolve()), "time_scale": 0.02},
        "gateway": {"log_flush_s": 2.0},
    }))
    cfg = load_serve_config(cfg_path)
    held_out = [replay_request(r) for r in generate_requests(w, requests, seed=w.config.seed + 1000)]
    with console.status("starting Ray Serve (gateway + one deployment per model)"):
        url = launcher.start(cfg, temp_dir=tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    console.print(f"[green]✓[/] serving at {url}")
    try:
        result = asyncio.run(replay(url, held_out, concurrency=concurrency))
        summary = result.summary()
        print_summary(summary, console)
        httpx.post(f"{url}/admin/flush", timeout=10.0)
    finally:
        with console.status("shutting down"):
            launcher.stop()
    logged = read_logs(cfg.path(cfg.log_dir)).num_rows
    elapsed = time.perf_counter() - t0
    console.print(f"[green]✓[/] {logged} decisions in the Parquet log at {cfg.path(cfg.log_dir)}; "
                  f"demo took {elapsed:.0f}s")
    if result.errors:
        console.print(f"[yellow]{len(result.errors)} failed requests; first: {result.errors[0]}")
    return {"summary": summary, "logged": logged, "elapsed_s": elapsed, "workdir": str(work)}
