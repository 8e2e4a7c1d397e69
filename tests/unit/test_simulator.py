"""The simulator is deterministic by seed and logs exact uniform propensities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from router.log_schema import read_logs
from training.simulator import write_simulation
from training.world import generate_requests, outcome, quality_mean


def _table(world, tmp: Path, seed: int):  # type: ignore[no-untyped-def]
    write_simulation(world, 300, tmp, seed=seed)
    return read_logs(tmp).drop_columns(["request_id"])


def test_same_seed_same_logs(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a = _table(world, tmp_path / "a", 5)
    b = _table(world, tmp_path / "b", 5)
    assert a.equals(b)
    assert (tmp_path / "a" / "requests.jsonl").read_bytes() == (tmp_path / "b" / "requests.jsonl").read_bytes()


def test_different_seed_different_logs(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a = _table(world, tmp_path / "a", 5)
    b = _table(world, tmp_path / "b", 6)
    assert a.column("prompt").to_pylist() != b.column("prompt").to_pylist()


def test_logging_policy_is_uniform_with_exact_propensities(world, sim_logs: Path) -> None:  # type: ignore[no-untyped-def]
    t = read_logs(sim_logs)
    k = np.array([len(c) for c in t.column("candidates").to_pylist()])
    np.testing.assert_allclose(t.column("propensity").to_numpy(), 1.0 / k, rtol=1e-6)
    chat = t.filter(pc.equal(t.column("label_category"), "chat"))
    assert set(chat.column("model").to_pylist()) <= set(world.router.allowed_models("chat"))
    counts = np.unique(t.column("model").to_pylist(), return_counts=True)[1]
    assert counts.min() > 0.2 * len(t)  # every model explored


def test_arrivals_increase_and_categories_follow_weights(world) -> None:  # type: ignore[no-untyped-def]
    reqs = generate_requests(world, 3000, seed=1)
    ts = np.array([r.timestamp_s for r in reqs])
    assert (np.diff(ts) > 0).all()
    share = np.mean([r.prompt.category == "code" for r in reqs])
    assert abs(share - world.config.categories["code"].weight) < 0.04


def test_quality_depends_on_model_category_and_difficulty(world) -> None:  # type: ignore[no-untyped-def]
    assert quality_mean(world, "large", "code", 0.5) > quality_mean(world, "small", "code", 0.5)
    assert quality_mean(world, "small", "math", 0.9) < quality_mean(world, "small", "math", 0.1)
    rng = np.random.default_rng(0)
    o = outcome(world, "large", "code", 0.5, 100, rng)
    assert 0 <= o.quality <= 1 and o.latency_ms > o.ttft_ms > 0 and o.cost_usd > 0
