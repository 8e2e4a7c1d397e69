"""router.policy: epsilon-greedy probabilities, exact propensities, utilities and cost arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from router.config import Exploration, ModelSpec, Preference
from router.policy import HeadPredictions, action_probs, choose, epsilon_greedy_probs, softmax_probs, utilities


def eg(eps: float) -> Exploration:
    return Exploration(kind="epsilon_greedy", epsilon=eps)

U = np.array([0.2, 0.9, 0.5, 0.1], dtype=np.float32)


@pytest.mark.parametrize("eps", [0.0, 0.05, 0.1, 0.5, 1.0])
def test_probs_sum_to_one_and_best_gets_the_rest(eps: float) -> None:
    p = epsilon_greedy_probs(U, eps)
    k = len(U)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    assert p[1] == pytest.approx(1 - eps + eps / k)
    assert np.allclose(np.delete(p, 1), eps / k)


def test_epsilon_zero_is_deterministic() -> None:
    assert epsilon_greedy_probs(U, 0.0).tolist() == [0.0, 1.0, 0.0, 0.0]
    rng = np.random.default_rng(0)
    picks = {choose(["a", "b", "c", "d"], U, eg(0.0), rng).model for _ in range(200)}
    assert picks == {"b"}


def test_epsilon_one_is_uniform() -> None:
    assert np.allclose(epsilon_greedy_probs(U, 1.0), 0.25)


def test_ties_go_to_the_first_index() -> None:
    p = epsilon_greedy_probs(np.array([0.3, 0.7, 0.7], dtype=np.float32), 0.3)
    assert p.tolist() == pytest.approx([0.1, 0.8, 0.1])


def test_single_candidate() -> None:
    c = choose(["only"], np.array([0.4], dtype=np.float32), eg(0.1), np.random.default_rng(0))
    assert (c.model, c.propensity, c.action_probs) == ("only", pytest.approx(1.0), (pytest.approx(1.0),))


def test_choice_propensity_equals_probs_of_the_chosen() -> None:
    rng = np.random.default_rng(1)
    cands = ["a", "b", "c", "d"]
    for _ in range(200):
        c = choose(cands, U, eg(0.3), rng)
        assert c.candidates == tuple(cands)
        assert c.propensity == c.action_probs[cands.index(c.model)]
        assert c.utilities == pytest.approx(tuple(float(u) for u in U))


def test_empirical_frequencies_match_probs() -> None:
    rng = np.random.default_rng(2024)
    cands = ["a", "b", "c", "d"]
    eps = 0.4
    n = 20_000
    counts = dict.fromkeys(cands, 0)
    for _ in range(n):
        counts[choose(cands, U, eg(eps), rng).model] += 1
    expected = epsilon_greedy_probs(U, eps)
    for name, p in zip(cands, expected):
        assert counts[name] / n == pytest.approx(p, abs=0.02)


# --- utilities -------------------------------------------------------------------------------------

QUALITY = np.array([0.5, 0.7, 0.9], dtype=np.float32)  # small, medium, large
COST = np.array([0.0001, 0.001, 0.01])
LATENCY = np.array([300.0, 600.0, 1500.0])
REF_C, REF_L = 0.01, 1500.0  # the costliest / slowest model's mean, fixed at training


def test_a_weight_means_the_same_for_every_candidate_set() -> None:
    """Reference scales are fixed: dropping the costliest model does not change the others' utilities."""
    pref = Preference(quality=1.0, cost=0.5, latency=0.0)
    full = utilities(HeadPredictions(QUALITY, COST, LATENCY), pref, REF_C, REF_L)
    part = utilities(HeadPredictions(QUALITY, COST, LATENCY).take([0, 1]), pref, REF_C, REF_L)
    assert part.tolist() == pytest.approx(full[:2].tolist())


def test_softmax_probs_are_exact_and_temperature_sharpens() -> None:
    p = softmax_probs(QUALITY, 0.1)
    assert p.sum() == pytest.approx(1.0) and list(np.argsort(p)) == [0, 1, 2]
    assert softmax_probs(QUALITY, 0.01)[2] > p[2]
    rng = np.random.default_rng(3)
    soft = Exploration(kind="softmax", temperature=0.1)
    counts = np.zeros(3)
    for _ in range(20_000):
        c = choose(["s", "m", "l"], QUALITY, soft, rng)
        assert c.propensity == pytest.approx(p[["s", "m", "l"].index(c.model)])
        counts[["s", "m", "l"].index(c.model)] += 1
    assert (counts / counts.sum()) == pytest.approx(p, abs=0.02)
    assert action_probs(QUALITY, soft) == pytest.approx(p)


def test_zero_cost_weight_picks_max_quality() -> None:
    u = utilities(HeadPredictions(QUALITY, COST, LATENCY), Preference(quality=1.0, cost=0.0, latency=0.0), REF_C, REF_L)
    assert u.dtype == np.float32
    assert int(np.argmax(u)) == 2
    assert u.tolist() == pytest.approx(QUALITY.tolist())


def test_large_cost_weight_picks_the_cheapest() -> None:
    u = utilities(HeadPredictions(QUALITY, COST, LATENCY), Preference(quality=1.0, cost=100.0, latency=0.0), REF_C, REF_L)
    assert int(np.argmax(u)) == 0


def test_large_latency_weight_picks_the_fastest() -> None:
    u = utilities(HeadPredictions(QUALITY, np.array([0.01, 0.001, 0.0001]), LATENCY),
                  Preference(quality=1.0, cost=0.0, latency=50.0), REF_C, REF_L)
    assert int(np.argmax(u)) == 0


def test_utilities_normalise_by_the_reference_scales() -> None:
    u = utilities(HeadPredictions(QUALITY, COST, LATENCY), Preference(quality=2.0, cost=0.5, latency=0.25), REF_C, REF_L)
    expected = 2.0 * QUALITY - 0.5 * COST / REF_C - 0.25 * LATENCY / REF_L
    assert u.tolist() == pytest.approx(expected.tolist(), rel=1e-6)


def test_utilities_with_zero_costs_are_quality_alone() -> None:
    u = utilities(HeadPredictions(QUALITY, np.zeros(3), np.zeros(3)), Preference(), REF_C, REF_L)
    assert np.all(np.isfinite(u))
    assert u.tolist() == pytest.approx(QUALITY.tolist())


# --- cost --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("p_in", "p_out", "tin", "tout", "usd"), [
    (0.0025, 0.01, 1000, 500, 0.0025 + 0.005),
    (0.0001, 0.0002, 200, 300.5, (0.0001 * 200 + 0.0002 * 300.5) / 1000),
    (0.0, 0.0, 10_000, 10_000, 0.0),
    (1.0, 2.0, 0, 0, 0.0),
])
def test_model_cost_usd(p_in: float, p_out: float, tin: int, tout: float, usd: float) -> None:
    spec = ModelSpec(name="m", price_in_per_1k=p_in, price_out_per_1k=p_out)
    assert spec.cost_usd(tin, tout) == pytest.approx(usd, rel=1e-12, abs=1e-15)
