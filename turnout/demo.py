"""``turnout demo``: the whole loop on a fresh machine, no data or services needed.

simulate logs -> train + export a bundle -> start Ray Serve -> replay held-out requests over HTTP
-> summary table -> flush and read back the decision log -> shut down. Models are SIMULATED.
"""

from __future__ import annotations

import socket
import tempfile
import time
from pathlib import Path

import yaml
from rich.console import Console

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_simulated_serve_config(path: Path, *, bundle: Path, log_dir: Path, world: Path, time_scale: float,
                                 port: int | None = None, arms: list[dict[str, object]] | None = None) -> Path:
    """A loopback serve config over SIMULATED models for ``turnout demo`` and ``turnout loop``."""
    cfg: dict[str, object] = {"host": "127.0.0.1", "port": port or free_port(), "bundle": str(bundle),
                              "log_dir": str(log_dir), "build_if_missing": None,
                              "backend": {"kind": "simulated", "world": str(Path(world).resolve()),
                                          "time_scale": time_scale},
                              "gateway": {"log_flush_s": 2.0}}
    if arms:
        cfg["experiment"] = {"arms": arms, "assign_by": "user"}
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_demo(*, requests: int = 300, train_requests: int = 4000, workdir: str | None = None, port: int | None = None,
             concurrency: int = 8, world: str | None = None) -> dict[str, object]:
    from router.log_schema import read_logs
    from serving import launcher
    from serving.config import load_serve_config
    from serving.replay import print_summary
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
    cfg = load_serve_config(write_simulated_serve_config(
        work / "serve.yaml", bundle=work / "bundle", log_dir=work / "decision-logs", world=world_path,
        time_scale=0.02, port=port))
    held_out = [replay_request(r) for r in generate_requests(w, requests, seed=w.config.seed + 1000)]
    console.print("starting Ray Serve (gateway + one deployment per model)")
    result = launcher.serve_and_replay(cfg, held_out, concurrency=concurrency,
                                       on_start=lambda url: console.print(f"[green]✓[/] serving at {url}"))
    summary = result.summary()
    print_summary(summary, console)
    logged = read_logs(cfg.path(cfg.log_dir)).num_rows
    elapsed = time.perf_counter() - t0
    console.print(f"[green]✓[/] {logged} decisions in the Parquet log at {cfg.path(cfg.log_dir)}; "
                  f"demo took {elapsed:.0f}s")
    if result.errors:
        console.print(f"[yellow]{len(result.errors)} failed requests; first: {result.errors[0]}")
    return {"summary": summary, "logged": logged, "elapsed_s": elapsed, "workdir": str(work)}
