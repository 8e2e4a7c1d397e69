"""One Ray cluster + Serve app per test session (each extra Ray start costs 10-15 s)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from turnout.demo import free_port


@pytest.fixture(scope="session")
def serve_app(bundle, configs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:  # type: ignore[no-untyped-def]
    from serving import launcher
    from serving.config import load_serve_config

    work = tmp_path_factory.mktemp("serve")
    cfg_path = work / "serve.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "port": free_port(), "bundle": str(bundle.path), "log_dir": str(work / "logs"), "build_if_missing": None,
        "backend": {"kind": "simulated", "world": str(configs_dir / "world.yaml"), "time_scale": 0.01},
        "model_overrides": {"large": {"num_replicas": 2, "num_cpus": 0.1}},
        "gateway": {"log_flush_s": 1.0, "log_flush_rows": 10_000},
    }))
    cfg = load_serve_config(cfg_path)
    url = launcher.start(cfg, temp_dir=tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    try:
        yield {"url": url, "log_dir": cfg.path(cfg.log_dir), "config": cfg}
    finally:
        launcher.stop()
