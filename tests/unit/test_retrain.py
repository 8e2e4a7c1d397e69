"""``turnout retrain``: the promote and hold paths, every guard, and the vectorised OPE against
``training.evaluation.ope_batch``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from router.log_schema import LogRecord, read_logs, write_feedback_shard, write_shard
from training.retrain import (
    EXIT_HOLD,
    EXIT_PROMOTE,
    RetrainSettings,
    decide,
    ess_guard,
    retrain,
)

FAST = RetrainSettings(refit_classifier=False, n_bootstrap=100)


@pytest.fixture(scope="module")
def weak_v1(world, bundle, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """v1: the session bundle's classifier with a policy fitted on only 30 logged rounds (weak)."""
    from training.bundle_builder import retrain_policy
    from training.simulator import write_simulation

    d = tmp_path_factory.mktemp("weak")
    write_simulation(world, 30, d / "logs", seed=1)
    return retrain_policy(d / "logs", bundle, d / "v1", bundle_version="weak-v1")


@pytest.fixture(scope="module")
def explore_logs(world, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    from training.simulator import write_simulation

    d = tmp_path_factory.mktemp("explore")
    write_simulation(world, 3000, d, seed=21)
    return d


@pytest.fixture(scope="module")
def promoted(weak_v1, explore_logs: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return retrain(explore_logs, weak_v1, tmp_path_factory.mktemp("out"), settings=FAST)


def test_promote_path_writes_bundle_report_and_json(promoted, weak_v1) -> None:  # type: ignore[no-untyped-def]
    from router.bundle import load_bundle

    o = promoted
    assert o.decision == "promote", o.reason
    assert o.exit_code == EXIT_PROMOTE
    assert all(g.ok for g in o.guards.values())
    assert o.difference["ci_low"] > 0
    assert o.candidate["dr"]["estimate"] > o.current["dr"]["estimate"]
    cand = load_bundle(o.bundle)
    assert cand.manifest.metrics["retrain"]["parent"] == weak_v1.version
    out = Path(o.report).parent
    for png in ("estimates.png", "categories.png", "calibration.png"):
        assert (out / png).stat().st_size > 1000
    assert "PROMOTE" in Path(o.report).read_text()
    js = json.loads((out / "retrain.json").read_text())
    assert js["decision"] == "promote" and set(js["difference"]) == {"estimate", "ci_low", "ci_high"}
    assert set(js["ope"]["metrics"]) == {"utility", "quality", "cost_usd", "latency_ms"}


def test_hold_path_when_gain_is_not_significant(promoted) -> None:  # type: ignore[no-untyped-def]
    cmp = promoted.details["ope"]
    o = decide(promoted.guards, cmp, replace(FAST, min_improvement=promoted.difference["ci_low"] + 1e-6))
    assert o.decision == "hold" and o.exit_code == EXIT_HOLD
    assert o.reason.startswith("no significant improvement")


def test_min_ess_guard_holds(promoted) -> None:  # type: ignore[no-untyped-def]
    cmp = promoted.details["ope"]
    s = replace(FAST, min_ess=cmp["ess"]["current"] + cmp["ess"]["candidate"])
    guards = {**promoted.guards, "min_ess": ess_guard(cmp, s)}
    o = decide(guards, cmp, s)
    assert o.decision == "hold" and "guard min_ess failed" in o.reason


def test_retraining_the_same_logs_twice_is_deterministic(promoted, weak_v1, explore_logs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    again = retrain(explore_logs, weak_v1, tmp_path, settings=FAST)
    assert again.difference == promoted.difference


def test_vectorised_targets_match_ope_batch(bundle, sim_logs: Path) -> None:  # type: ignore[no-untyped-def]
    from router.classifier import CategoryClassifier
    from training.bundle_builder import bandit_rows
    from training.evaluation import ope_batch
    from training.retrain_ope import Scales, bundle_target, candidate_mask, context_features, ope_batch_from_target

    table = bandit_rows(read_logs(sim_logs)).slice(0, 300)
    ref = ope_batch(bundle, table)
    clf = CategoryClassifier.from_files(bundle.path, bundle.manifest.classifier)
    mask, action = candidate_mask(table, bundle.manifest.policy.models)
    t = bundle_target(bundle, context_features(table, clf), mask, Scales.of(bundle))
    got = ope_batch_from_target(t, action, ref.reward, ref.propensity, "quality")
    np.testing.assert_allclose(got.target_prob, ref.target_prob, atol=1e-6)
    np.testing.assert_allclose(got.q_logged, ref.q_logged, atol=1e-6)
    np.testing.assert_allclose(got.q_target, ref.q_target, atol=1e-5)


# --- guards on hand-made logs (they stop before any fitting) -----------------------------------

def _rec(i: int, **kw: object) -> LogRecord:
    base = dict(request_id=f"g-{i}", timestamp_s=float(i), tenant="t", arm="default", bundle_version="x",
                feature_version="2", prompt=f"question {i % 7}", n_turns=1, input_tokens=3, features=[0.0],
                category="chat", category_probs=[1.0], confidence=1.0, fallback=False, cache_tier="skip",
                cache_hit=False, model="small", candidates=["small", "large"], action_probs=[0.5, 0.5],
                propensity=0.5, policy="epsilon_greedy", cost_usd=1e-4, latency_ms=100.0, quality=0.5)
    base.update(kw)
    return LogRecord(**base)  # type: ignore[arg-type]


def _hold_on(tmp: Path, records: list[LogRecord], current, guard: str) -> dict:  # type: ignore[no-untyped-def]
    write_shard(records, tmp / "logs")
    o = retrain(tmp / "logs", current, tmp / "out", settings=FAST)
    assert o.decision == "hold" and o.exit_code == EXIT_HOLD
    assert not o.guards[guard].ok, o.guards[guard]
    assert f"guard {guard} failed" in o.reason
    assert o.bundle is None and Path(o.report).exists()
    return o.as_dict()


def test_guard_schema(tmp_path: Path, bundle) -> None:  # type: ignore[no-untyped-def]
    from router.log_schema import records_to_table

    t = records_to_table([_rec(i) for i in range(10)]).drop_columns(["propensity"])
    (tmp_path / "logs").mkdir()
    import pyarrow.parquet as pq

    pq.write_table(t, tmp_path / "logs" / "part-bad.parquet")
    o = retrain(tmp_path / "logs", bundle, tmp_path / "out", settings=FAST)
    assert o.decision == "hold" and not o.guards["schema"].ok and "propensity" in o.reason


def test_guard_no_exploration(tmp_path: Path, bundle) -> None:  # type: ignore[no-untyped-def]
    recs = [_rec(i, candidates=["small"], action_probs=[1.0], propensity=1.0, policy="greedy") for i in range(400)]
    _hold_on(tmp_path, recs, bundle, "exploration")


def test_guard_propensity_range(tmp_path: Path, bundle) -> None:  # type: ignore[no-untyped-def]
    recs = [_rec(i, action_probs=[0.001, 0.999], propensity=0.001) if i % 10 == 0 else _rec(i) for i in range(400)]
    _hold_on(tmp_path, recs, bundle, "propensity_range")


def test_guard_missing_feedback_and_late_feedback_fills_it(tmp_path: Path, bundle) -> None:  # type: ignore[no-untyped-def]
    recs = [_rec(i, quality=None) if i % 3 else _rec(i) for i in range(400)]
    d = _hold_on(tmp_path, recs, bundle, "missing_feedback")
    assert d["guards"]["missing_feedback"]["value"] == pytest.approx(266 / 400)
    write_feedback_shard(tmp_path / "logs", [{"request_id": f"g-{i}", "quality": 0.75, "timestamp_s": 1e6}
                                             for i in range(400) if i % 3])
    o = retrain(tmp_path / "logs", bundle, tmp_path / "out2", settings=replace(FAST, min_explored_rows=10**9))
    assert o.guards["missing_feedback"].ok and o.guards["missing_feedback"].value == 0.0


def test_guard_category_drift(tmp_path: Path, bundle) -> None:  # type: ignore[no-untyped-def]
    recs = [_rec(i, category="code" if i < 280 else "chat") for i in range(400)]
    _hold_on(tmp_path, recs, bundle, "category_drift")


def test_cli_retrain_exit_code_and_json(tmp_path: Path, bundle, capsys) -> None:  # type: ignore[no-untyped-def]
    from turnout.cli import main

    write_shard([_rec(i, candidates=["small"], action_probs=[1.0], propensity=1.0) for i in range(60)], tmp_path / "logs")
    code = main(["retrain", "--logs", str(tmp_path / "logs"), "--current", str(bundle.path), "--out",
                 str(tmp_path / "out"), "--json", "--keep-classifier"])
    assert code == EXIT_HOLD
    js = json.loads(capsys.readouterr().out)
    assert js["decision"] == "hold" and not js["guards"]["exploration"]["ok"]
    assert main(["retrain", "--logs", str(tmp_path / "nope"), "--current", str(bundle.path), "--out", str(tmp_path / "o")]) == 2


@pytest.mark.parametrize("what", ["missing", "empty"])
def test_no_logs_is_a_user_error_not_a_hold(bundle, tmp_path: Path, what: str) -> None:  # type: ignore[no-untyped-def]
    from router.errors import ConfigError
    from training.retrain import retrain

    logs = tmp_path / "logs"
    if what == "empty":
        logs.mkdir()
    with pytest.raises(ConfigError, match="no Parquet shards"):
        retrain(logs, bundle, tmp_path / "out")
