"""Pieces of ``turnout loop`` that run without Ray: the A/B serve config it writes and the
OPE-vs-A/B agreement rule. (The full loop starts Ray Serve twice; it is run by hand, see README.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from turnout.loop import _serve_config, agreement, decided_share
from training.retrain_ope import bootstrap_chunk, chunk_plan, run_bootstrap_local


def test_ab_serve_config_has_control_first_and_both_bundles(tmp_path: Path, bundle, configs_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from serving.config import load_serve_config

    arms = [{"name": "v1", "bundle": str(bundle.path), "weight": 1.0},
            {"name": "v2", "bundle": str(bundle.path), "weight": 1.0}]
    cfg = load_serve_config(_serve_config(tmp_path / "s.yaml", tmp_path, "logs", configs_dir / "world.yaml",
                                          bundle.path, arms))
    assert [a.name for a in cfg.experiment.arms] == ["v1", "v2"] and cfg.experiment.assign_by == "user"
    assert cfg.backend.kind == "simulated"


def _ope(est: float, lo: float, hi: float) -> dict:
    return {"difference": {"estimate": est, "ci_low": lo, "ci_high": hi}}


def test_agreement_inside_outside_and_missing_ci() -> None:
    ope = {"quality": _ope(0.05, 0.03, 0.07), "cost_usd": _ope(-1e-3, -1.2e-3, -0.8e-3)}
    ab = {"quality": {"estimate": 0.04, "ci_low": 0.01, "ci_high": 0.06},
          "cost_usd": {"estimate": 1e-3, "ci_low": 5e-4, "ci_high": 2e-3}}
    a = agreement(ope, ab)
    assert a["quality"]["ope_inside_ab_ci"] and a["quality"]["cis_overlap"] and a["quality"]["consistent"]
    assert not a["cost_usd"]["ope_inside_ab_ci"] and not a["cost_usd"]["cis_overlap"] and not a["cost_usd"]["consistent"]
    # OPE point just outside the A/B CI, but the gap is well within the noise of both estimates
    near = agreement({"quality": _ope(0.021, 0.003, 0.039)}, {"quality": {"estimate": 0.004, "ci_low": -0.011, "ci_high": 0.019}})
    assert not near["quality"]["ope_inside_ab_ci"] and near["quality"]["consistent"]
    b = agreement(ope, {"quality": {"estimate": 0.0, "ci_low": None, "ci_high": None}})
    assert not b["quality"]["ope_inside_ab_ci"] and not b["cost_usd"]["ope_inside_ab_ci"]
    # cache hits/fallbacks cannot differ between arms: a diluted A/B effect agrees once OPE is scaled
    diluted = {"quality": {"estimate": 0.04, "ci_low": 0.035, "ci_high": 0.045}}
    assert not agreement(ope, diluted)["quality"]["ope_inside_ab_ci"]
    scaled = agreement(ope, diluted, {"quality": 0.8, "cost_usd": 0.8})["quality"]
    assert scaled["ope_inside_ab_ci"] and scaled["ope"]["estimate"] == 0.8 * 0.05


def test_decided_share_excludes_cache_hits_fallbacks_and_errors(tmp_path: Path) -> None:
    from router.log_schema import LogRecord, write_shard

    base = dict(timestamp_s=1.0, tenant="t", arm="v1", bundle_version="v1", feature_version="2", prompt="p",
                n_turns=1, input_tokens=1, features=[0.0], category="chat", category_probs=[1.0], confidence=1.0,
                cache_tier="skip", model="small", candidates=["small"], action_probs=[1.0], propensity=1.0,
                policy="epsilon_greedy", cost_usd=1e-4)
    kinds = [dict(fallback=False, cache_hit=False, quality=0.5)] * 6 + [dict(fallback=True, cache_hit=False, quality=0.5),
             dict(fallback=False, cache_hit=True, quality=None, cost_usd=0.0),
             dict(fallback=False, cache_hit=False, quality=None, error="BackendError")]
    write_shard([LogRecord(request_id=f"r{i}", **{**base, **k}) for i, k in enumerate(kinds)], tmp_path)  # type: ignore[arg-type]
    share = decided_share(tmp_path)
    assert share == {"quality": 6 / 7, "cost_usd": 6 / 8}


def test_bootstrap_chunks_are_executor_independent() -> None:
    terms = np.random.default_rng(0).normal(size=(500, 3))
    whole = run_bootstrap_local(terms, 60, seed=4)
    parts = [bootstrap_chunk(terms, 4, c, k) for c, k in reversed(chunk_plan(60))]  # any order, same draws
    assert whole.shape == (60, 3)
    np.testing.assert_array_equal(whole, np.concatenate(parts[::-1]))
    assert not np.array_equal(whole, run_bootstrap_local(terms, 60, seed=5))
    assert abs(whole[:, 0].std() - terms[:, 0].std() / np.sqrt(500)) < 0.02
