"""OPE estimators recover a known policy value on synthetic logs; the bundle's OPE report is sane."""

from __future__ import annotations

import numpy as np
import pytest

from training.ope import DEFAULT_ESTIMATORS, OPEBatch, estimate_interval


def _synthetic(n: int, seed: int) -> tuple[OPEBatch, float]:
    """3 actions, uniform logging; true mean reward per action depends on a binary context."""
    rng = np.random.default_rng(seed)
    ctx = rng.integers(0, 2, n)
    means = np.array([[0.2, 0.5, 0.8], [0.9, 0.4, 0.1]])
    target = np.array([[0.0, 0.1, 0.9], [0.8, 0.1, 0.1]])  # pi(a | ctx)
    a = rng.integers(0, 3, n)
    r = rng.binomial(1, means[ctx, a]).astype(float)
    q_hat = means + rng.normal(0, 0.05, means.shape)  # a slightly wrong reward model
    truth = float(np.mean([(target[c] * means[c]).sum() for c in (0, 1)]))
    batch = OPEBatch(reward=r, propensity=np.full(n, 1 / 3), target_prob=target[ctx, a],
                     q_logged=q_hat[ctx, a], q_target=(target[ctx] * q_hat[ctx]).sum(1))
    return batch, truth


@pytest.mark.parametrize("est", DEFAULT_ESTIMATORS, ids=lambda e: e.name)
def test_estimators_recover_true_value(est) -> None:  # type: ignore[no-untyped-def]
    batch, truth = _synthetic(20_000, 0)
    assert abs(est.estimate(batch) - truth) < 0.03


def test_interval_covers_truth_and_is_seeded() -> None:
    batch, truth = _synthetic(3000, 1)
    dr = next(e for e in DEFAULT_ESTIMATORS if e.name == "dr")
    a = estimate_interval(dr, batch, n_bootstrap=100, seed=4)
    assert a == estimate_interval(dr, batch, n_bootstrap=100, seed=4)
    assert a.low <= truth <= a.high and a.low < a.value < a.high


def test_batch_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="target_prob"):
        OPEBatch(np.zeros(3), np.ones(3), np.ones(2), np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="propensity must be > 0"):
        OPEBatch(np.zeros(2), np.array([0.5, 0.0]), np.ones(2), np.zeros(2), np.zeros(2))


def test_bundle_ope_report(bundle, sim_logs) -> None:  # type: ignore[no-untyped-def]
    from training.evaluation import run_ope

    report = run_ope(bundle, sim_logs, n_bootstrap=50)
    assert report["n"] == 2000
    for name in ("ips", "snips", "dm", "dr", "switch_dr"):
        e = report["estimates"][name]
        assert e["ci_low"] <= e["estimate"] <= e["ci_high"]
    # the learned greedy policy should beat the uniform logger on the simulated world
    assert report["estimates"]["dr"]["estimate"] > report["logged_policy_value"]
