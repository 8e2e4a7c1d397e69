"""Shared fixtures. ``shared_data`` finds ../shared/data: tests that need it fail in CI when it is
absent (CI always has it) and skip elsewhere."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TURNOUT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI=true but the shared datasets are missing at {SHARED_DATA}")
        pytest.skip(f"shared datasets not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def configs_dir() -> Path:
    return REPO / "configs"


@pytest.fixture(scope="session")
def world(configs_dir: Path):  # type: ignore[no-untyped-def]
    from training.world import load_world

    return load_world(configs_dir / "world.yaml")


@pytest.fixture(scope="session")
def sim_logs(world, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """2,000 simulated logged requests, written once per session."""
    from training.simulator import write_simulation

    out = tmp_path_factory.mktemp("sim-logs")
    write_simulation(world, 2000, out, seed=11)
    return out


@pytest.fixture(scope="session")
def bundle(world, sim_logs: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A bundle trained on ``sim_logs``; tests that corrupt bundles must copy it first."""
    from training.bundle_builder import build_bundle

    return build_bundle(sim_logs, world.router, tmp_path_factory.mktemp("bundles") / "b1", bundle_version="test-1")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: ``TURNOUT_REDIS_URL`` if set, else a ``redis-server`` spawned for the session
    (no persistence, temp dir, free port) and stopped afterwards. Missing binary: skip, fail in CI."""
    url = os.environ.get("TURNOUT_REDIS_URL")
    if url:
        yield url
        return
    from serving.redis_server import RedisUnavailable, spawn_redis

    try:
        server = spawn_redis()
    except RedisUnavailable as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI=true but no Redis: {e}")
        pytest.skip(str(e))
    try:
        yield server.url
    finally:
        server.stop()
