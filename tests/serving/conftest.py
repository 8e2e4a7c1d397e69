"""One Ray cluster + Serve app per test session (each extra Ray start costs 10-15 s).

The app is configured so one deployment covers every gateway feature: two A/B arms (``a`` = the
session bundle, ``b`` = a copy with another bundle_version), API keys for three tenants (``acme`` is
an admin; ``tiny`` has a low rate limit), a fast bundle watcher, and Ray metrics on a free port.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.serving.helpers import KEYS, copy_bundle
from turnout.demo import free_port

@pytest.fixture(scope="session")
def serve_app(bundle, configs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:  # type: ignore[no-untyped-def]
    from serving import launcher
    from serving.config import load_serve_config

    work = tmp_path_factory.mktemp("serve")
    arm_b = copy_bundle(bundle.path, work / "bundle-b", "test-b")
    cfg_path = work / "serve.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "port": free_port(), "metrics_port": free_port(), "bundle": str(bundle.path), "log_dir": str(work / "logs"),
        "build_if_missing": None,
        "backend": {"kind": "simulated", "world": str(configs_dir / "world.yaml"), "time_scale": 0.01},
        "model_overrides": {"large": {"num_replicas": 2, "num_cpus": 0.1}},
        "gateway": {"log_flush_s": 1.0, "log_flush_rows": 10_000, "reload_poll_s": 0.5},
        "experiment": {"arms": [{"name": "a", "bundle": str(bundle.path), "weight": 1.0},
                                {"name": "b", "bundle": str(arm_b), "weight": 1.0}], "assign_by": "user"},
        "tenants": {"acme": {"api_keys": [KEYS["acme"]], "admin": True},
                    "tiny": {"api_keys": [KEYS["tiny"]], "rate_limit": {"requests_per_s": 0.2, "burst": 3}},
                    "other": {"api_keys": [KEYS["other"]]}},
        "failover": {"deadline_s": 20.0},
    }))
    cfg = load_serve_config(cfg_path)
    url = launcher.start(cfg, temp_dir=tempfile.mkdtemp(prefix="rt-", dir="/tmp"), metrics_report_interval_ms=1000)
    try:
        yield {"url": url, "log_dir": cfg.path(cfg.log_dir), "config": cfg, "work": work, "arm_b": arm_b,
               "bundle": bundle.path}
    finally:
        launcher.stop()
