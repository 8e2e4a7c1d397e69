"""True value of the learned model policy on the simulated world, against single models, random and
oracles; and the error of the off-policy estimates (IPS, SNIPS, DM, DR, switch-DR) of that value.

Ground truth is known in the simulator (``training.world``), so nothing here is estimated except
what is being benchmarked:

1. Train a bundle (``build_bundle``) on N simulated logs (uniform-random logging, seed S): the policy
   (quality, cost and latency heads; gbdt-dm / gbdt-ips / linucb, the one with the best held-out DR
   value kept) and its fixed reference scale ``ref_cost_usd`` (the costliest model's mean logged cost).
2. Generate a held-out set of requests with another seed (S + 1000) and, for every request and model,
   compute from the hidden category and difficulty:

   * true quality  ``q = training.world.quality_mean(world, m, category, difficulty)``;
   * true expected cost ``c = spec.cost_usd(input_tokens, E[output_tokens])`` where
     ``E[output_tokens] = median * exp(0.5**2 / 2)`` is the mean of the world's lognormal answer
     length (``median = output_tokens_median[category] * verbosity[m] * (0.6 + 0.8 d)``, as in
     ``training.world.outcome``). The world's truth, not the policy's cost head (which is what the
     router itself believes); cost is linear in tokens, so this is the exact expected cost up to
     ``outcome``'s integer truncation (< 1 token).

3. Policies, all scored with the same q and c:

   * ``learned w``: ``Router.decide`` on the held-out prompt text, greedy (epsilon 0), cost weight w
     (quality weight 1, latency 0), cache off; includes the router's own fallback rule;
   * ``always-<model>``: one model for everything (ignores the routes, as a one-model deployment would);
   * ``uniform``: uniform over the route's allowed models for the true category (= the logging policy);
   * ``oracle-category w``: the best allowed model per *true* category for utility w;
   * ``oracle-request w``: the best allowed model per request for utility w (the ceiling).

   Utility is the router's own objective (``router.policy.utilities``) with true values::

       U_w = q - w * c / ref_cost_usd

   with the bundle's FIXED ``ref_cost_usd`` (one number for every request, set at training), so a
   weight means the same on every request: w = 1 gives up one quality point to avoid the costliest
   model's average bill. Because the scale is fixed, the per-request oracle at weight w is exactly the
   point ``lambda = w / ref_cost_usd`` of the absolute-cost frontier (per request argmax q - lambda c).

4. Off-policy evaluation: simulate logs for the held-out requests (uniform logging; R replicates of
   the logging randomness, same requests) and estimate the learned greedy policy's value with
   ``training.evaluation.ope_batch`` + ``training.ope.evaluate`` (the path ``run_ope`` uses, with the
   preference overridden; ``ope_batch`` takes the exploration from the bundle's manifest, so greedy is
   an in-memory copy of the manifest with epsilon 0 -- no file changes). Truth for OPE is the expected
   *logged* reward, i.e. quality with the world's noise clipped to [0, 1]: ``E[clip(q + N(0, s), 0, 1)]``
   (closed form), averaged over the held-out requests under the policy's choices. ``run_ope`` itself
   (bundle as configured, epsilon-greedy) is checked the same way. Switch-DR (``tau`` = 20) equals DR
   here: uniform logging over <= 3 candidates gives importance weights <= 3.

    python benchmarks/policy_value.py [--quick]
    ->  benchmarks/results/policy_value.json, benchmarks/results/policy_value.png
        (--quick: policy_value_quick.json / .png, git-ignored)
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import ndtr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CONFIGS, console, environment, result_path, table, write_json  # noqa: E402

from router.bundle import Bundle  # noqa: E402
from router.cache import CachePolicy, ResponseCache  # noqa: E402
from router.config import Exploration, Preference  # noqa: E402
from router.decision import Router  # noqa: E402
from router.log_schema import read_logs, records_to_table  # noqa: E402
from router.request import Message, Request  # noqa: E402
from training.bundle_builder import bandit_rows, build_bundle  # noqa: E402
from training.evaluation import ope_batch, run_ope  # noqa: E402
from training.ope import evaluate  # noqa: E402
from training.simulator import simulate_records, write_simulation  # noqa: E402
from training.world import SimRequest, World, generate_requests, input_tokens_of, load_world, quality_mean  # noqa: E402

WEIGHTS = (0.0, 0.1, 0.3, 1.0, 3.0)
WK = tuple(f"{w:g}" for w in WEIGHTS)
ESTIMATORS = ("ips", "snips", "dm", "dr", "switch_dr")
LOGNORMAL_SIGMA = 0.5  # training.world.outcome: rng.lognormal(log(median), 0.5)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sets, one OPE replicate (< 30 s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-train", type=int, default=None, help="simulated training logs (default 4000; quick 1200)")
    ap.add_argument("--n-test", type=int, default=None, help="held-out requests (default 3000; quick 600)")
    ap.add_argument("--replicates", type=int, default=None, help="OPE log replicates (default 5; quick 1)")
    ap.add_argument("--world", default=str(CONFIGS / "world.yaml"))
    args = ap.parse_args(argv)
    n_train = args.n_train or (1200 if args.quick else 4000)
    n_test = args.n_test or (600 if args.quick else 3000)
    n_rep = args.replicates or (1 if args.quick else 5)
    n_boot = 50 if args.quick else 200
    train_seed, test_seed = args.seed, args.seed + 1000
    t_start = time.perf_counter()

    world = load_world(args.world)
    models = world.router.model_names
    with tempfile.TemporaryDirectory(prefix="turnout-bench-") as tmp:
        with console.status(f"simulating {n_train} training logs and building a bundle"):
            write_simulation(world, n_train, Path(tmp) / "train", seed=train_seed)
            bundle = build_bundle(Path(tmp) / "train", world.router, Path(tmp) / "bundle", seed=args.seed,
                                  bundle_version="bench-policy-value")
            train_prompts = set(read_logs(Path(tmp) / "train").column("prompt").to_pylist())
        requests = generate_requests(world, n_test, seed=test_seed)
        ref_cost = bundle.manifest.policy.ref_cost_usd
        truth = _truth(world, requests, ref_cost)
        overlap = float(np.mean([r.prompt.text in train_prompts for r in requests]))

        # ---- policies scored with the true quality and cost
        policies: dict[str, dict[str, Any]] = {}
        for k, m in enumerate(models):
            policies[f"always-{m}"] = _score(truth, _onehot(np.full(n_test, k), len(models)))
        uniform = truth["allowed"] / truth["allowed"].sum(1, keepdims=True)
        policies["uniform"] = _score(truth, uniform)
        learned_choice: dict[float, np.ndarray] = {}
        learned_extra: dict[float, dict[str, Any]] = {}
        with console.status(f"Router.decide on {n_test} held-out prompts x {len(WEIGHTS)} cost weights"):
            for w in WEIGHTS:
                choice, extra = _decide(bundle, world, requests, Preference(quality=1.0, cost=w, latency=0.0),
                                        Exploration(kind="epsilon_greedy", epsilon=0.0), seed=args.seed)
                fallback_mask = extra.pop("fallback_mask")
                learned_choice[w], learned_extra[w] = choice.argmax(1), {"choice": choice, "fallback": fallback_mask}
                policies[f"learned w={w:g}"] = {**_score(truth, choice), **extra, "w": w}
            configured = world.router
            cfg_choice, cfg_extra = _decide(bundle, world, requests, configured.preference, configured.exploration,
                                            seed=args.seed)
        frontier = _frontier(truth)
        per_category = {}
        for w in WEIGHTS:
            oracle_cat = _oracle_category(truth, requests, w)
            policies[f"oracle-category w={w:g}"] = {**_score(truth, oracle_cat), "w": w}
            policies[f"oracle-request w={w:g}"] = {**_score(truth, _oracle_request(truth, w)), "w": w}
            per_category[f"{w:g}"] = _per_category(truth, world, learned_extra[w]["choice"], oracle_cat,
                                                   learned_extra[w]["fallback"], w)

        # ---- off-policy evaluation on held-out logs
        with console.status(f"simulating held-out logs and running OPE ({n_rep} replicate(s) x {len(WEIGHTS)} weights)"):
            write_simulation(world, n_test, Path(tmp) / "test", seed=test_seed)
            ope = _ope(bundle, world, requests, truth, learned_choice, Path(tmp) / "test", test_seed, n_rep, n_boot, args.seed)
            configured_ope = run_ope(bundle, Path(tmp) / "test", n_bootstrap=n_boot, seed=args.seed)

    cfg_truth = float(np.mean(np.sum(cfg_choice * truth["reward"], 1)))
    configured_block = {
        "preference_cost": configured.preference.cost, "epsilon": configured.exploration.epsilon,
        "true_value_reward": cfg_truth, "true_quality": float(np.mean(np.sum(cfg_choice * truth["q"], 1))),
        "run_ope": configured_ope,
        "errors": {k: v["estimate"] - cfg_truth for k, v in configured_ope["estimates"].items()},
        "truth_in_ci95": {k: v["ci_low"] <= cfg_truth <= v["ci_high"] for k, v in configured_ope["estimates"].items()},
        "fallback_rate": cfg_extra["fallback_rate"],
    }
    # what ref_cost_usd estimates (the costliest model's mean cost where the routes allow it), in truth
    true_ref = float(max(np.mean(truth["cost"][truth["allowed"][:, k] > 0, k]) for k in range(len(models))))
    result: dict[str, Any] = {
        "benchmark": "policy_value", "quick": args.quick, "seed": args.seed,
        "settings": {"n_train_logs": n_train, "n_test": n_test, "train_seed": train_seed, "test_seed": test_seed,
                     "weights": list(WEIGHTS), "ope_replicates": n_rep, "bootstrap": n_boot,
                     "quality_noise": world.config.quality_noise, "models": list(models),
                     "heldout_prompts_seen_in_training": overlap,
                     "cost_definition": "spec.cost_usd(input_tokens, median_tokens * exp(0.125)); "
                                        "world truth per request (lognormal mean), not the policy's cost head",
                     "quality_definition": "training.world.quality_mean (noise-free); OPE truth = E[clip(q + N(0, s), 0, 1)]",
                     "utility_definition": "q - w * cost_usd / ref_cost_usd, ref_cost_usd = the bundle's fixed "
                                           "manifest.policy.ref_cost_usd (same scale for every request)",
                     "ref_cost_usd": ref_cost,
                     "true_ref_cost_usd_heldout": true_ref},
        "bundle_metrics": bundle.manifest.metrics,
        "bundle_policy": bundle.manifest.policy.model_dump(),
        "policies": policies,
        "learned_vs_oracle_category_by_category": per_category,
        "ope": ope,
        "configured_policy_ope": configured_block,
    }
    result["absolute_cost_frontier"] = frontier
    result["comparison"] = _compare(policies, models, frontier)
    _print(result, models)
    png = _plot(policies, models, frontier, result_path("policy_value", "png", args.quick))
    result["plot"] = png.name
    result["environment"] = environment()
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    path = write_json("policy_value", result, quick=args.quick)
    console.print(f"wrote {path} and {png} ({png.stat().st_size // 1024} KB) in {result['wall_s']} s")
    return 0


# ------------------------------------------------------------------------------------------------
# ground truth


def _expected_clipped(mu: np.ndarray, s: float) -> np.ndarray:
    """E[clip(mu + N(0, s^2), 0, 1)]: what the logged quality averages to."""
    if s <= 0:
        return np.clip(mu, 0.0, 1.0)
    a, b = (0.0 - mu) / s, (1.0 - mu) / s
    pdf = lambda z: np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)  # noqa: E731
    return mu * (ndtr(b) - ndtr(a)) + s * (pdf(a) - pdf(b)) + (1.0 - ndtr(b))


def _truth(world: World, requests: list[SimRequest], ref_cost_usd: float) -> dict[str, Any]:
    models, cfg = world.router.model_names, world.config
    n, k = len(requests), len(models)
    q, cost, allowed = np.zeros((n, k)), np.zeros((n, k)), np.zeros((n, k))
    for i, r in enumerate(requests):
        p = r.prompt
        tokens = input_tokens_of(p.text)
        ok = world.router.allowed_models(p.category)
        for j, m in enumerate(models):
            q[i, j] = quality_mean(world, m, p.category, p.difficulty)
            median = cfg.categories[p.category].output_tokens_median * cfg.models[m].verbosity * (0.6 + 0.8 * p.difficulty)
            cost[i, j] = world.router.model(m).cost_usd(tokens, median * math.exp(LOGNORMAL_SIGMA ** 2 / 2))
            allowed[i, j] = m in ok
    return {"q": q, "cost": cost, "allowed": allowed, "ref_cost_usd": float(ref_cost_usd),
            "reward": _expected_clipped(q, world.config.quality_noise),
            "category": np.array([r.prompt.category for r in requests])}


def _utility(truth: dict[str, Any], w: float) -> np.ndarray:
    """The router's objective with true values and the bundle's fixed cost scale (latency weight 0)."""
    return truth["q"] - w * truth["cost"] / truth["ref_cost_usd"]


def _onehot(idx: np.ndarray, k: int) -> np.ndarray:
    return np.eye(k)[idx]


def _score(truth: dict[str, np.ndarray], probs: np.ndarray) -> dict[str, Any]:
    """Mean true quality, cost and utility at every weight of a policy given as (n, K) choice probs."""
    return {
        "quality": float(np.mean(np.sum(probs * truth["q"], 1))),
        "reward": float(np.mean(np.sum(probs * truth["reward"], 1))),
        "cost_usd_per_1k_requests": 1000.0 * float(np.mean(np.sum(probs * truth["cost"], 1))),
        "utility": {f"{w:g}": float(np.mean(np.sum(probs * _utility(truth, w), 1))) for w in WEIGHTS},
        "share": probs.mean(0).tolist(),
    }


def _oracle_request(truth: dict[str, np.ndarray], w: float) -> np.ndarray:
    u = np.where(truth["allowed"] > 0, _utility(truth, w), -np.inf)
    return _onehot(u.argmax(1), u.shape[1])


def _frontier(truth: dict[str, np.ndarray]) -> list[dict[str, float]]:
    """The (cost, quality) efficient frontier in absolute dollars: per request, the allowed model
    maximising ``q - lam * cost_usd``, for a sweep of ``lam`` (quality points per USD)."""
    pts = []
    for lam in [0.0, *np.geomspace(1.0, 1e5, 41)]:
        u = np.where(truth["allowed"] > 0, truth["q"] - lam * truth["cost"], -np.inf)
        p = _onehot(u.argmax(1), u.shape[1])
        pts.append({"lambda_per_usd": float(lam), "quality": float(np.mean(np.sum(p * truth["q"], 1))),
                    "cost_usd_per_1k_requests": 1000.0 * float(np.mean(np.sum(p * truth["cost"], 1)))})
    return pts


def _oracle_category(truth: dict[str, np.ndarray], requests: list[SimRequest], w: float) -> np.ndarray:
    u = np.where(truth["allowed"] > 0, _utility(truth, w), -np.inf)
    out = np.zeros_like(u)
    for c in np.unique(truth["category"]):
        rows = truth["category"] == c
        out[rows, int(np.argmax(u[rows].mean(0)))] = 1.0
    return out


def _per_category(truth: dict[str, np.ndarray], world: World, learned: np.ndarray, oracle_cat: np.ndarray,
                  fallback: np.ndarray, w: float) -> dict[str, Any]:
    """Where the learned policy loses utility against the per-category oracle (and how much the
    fallback rule's forced ``large`` costs on low-confidence requests)."""
    u = _utility(truth, w)
    lu, ou = np.sum(learned * u, 1), np.sum(oracle_cat * u, 1)
    out: dict[str, Any] = {}
    for c in world.router.taxonomy:
        rows = truth["category"] == c
        out[c] = {"n": int(rows.sum()), "learned_utility": float(lu[rows].mean()), "oracle_utility": float(ou[rows].mean()),
                  "gap": float(lu[rows].mean() - ou[rows].mean()),
                  "oracle_model": world.router.model_names[int(oracle_cat[rows][0].argmax())],
                  "learned_share": learned[rows].mean(0).tolist(), "fallbacks": int(fallback[rows].sum())}
    out["_fallback_rows"] = {"n": int(fallback.sum()),
                             "contribution_to_overall_gap": float(np.sum((lu - ou)[fallback]) / len(lu))}
    out["_overall_gap"] = float(np.mean(lu - ou))
    return out


# ------------------------------------------------------------------------------------------------
# the learned policy


def _decide(bundle: Bundle, world: World, requests: list[SimRequest], pref: Preference, exploration: Exploration,
            *, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Choice probabilities (n, K) of ``Router.decide`` under ``pref`` (its own action_probs, so the
    exploration is exact); cache off, no online feedback (the correction stays at zero)."""
    models = world.router.model_names
    cfg = bundle.manifest.router.model_copy(update={"exploration": exploration})
    router = Router(bundle, cache=ResponseCache(CachePolicy()), config=cfg)
    rng = np.random.default_rng(seed)
    probs = np.zeros((len(requests), len(models)))
    fallback = np.zeros(len(requests), dtype=bool)
    correct = 0
    for i, r in enumerate(requests):
        d = router.decide(Request(messages=(Message("user", r.prompt.text),)), now_s=r.timestamp_s, rng=rng,
                          preference=pref)
        for m, p in zip(d.candidates, d.action_probs):
            probs[i, models.index(m)] += p
        fallback[i] = d.fallback
        correct += d.category == r.prompt.category
    return probs, {"fallback_rate": float(fallback.mean()), "category_accuracy": correct / len(requests),
                   "scoring_failures": router.n_fallbacks, "fallback_mask": fallback}


# ------------------------------------------------------------------------------------------------
# off-policy evaluation


def _ope(bundle, world: World, requests: list[SimRequest], truth: dict[str, np.ndarray],  # type: ignore[no-untyped-def]
         learned: dict[float, np.ndarray], logs_dir: Path, test_seed: int, n_rep: int, n_boot: int,
         seed: int) -> dict[str, Any]:
    models = world.router.model_names
    greedy = _with_exploration(bundle, Exploration(kind="epsilon_greedy", epsilon=0.0))
    tables = [bandit_rows(read_logs(logs_dir))]  # replicate 0: exactly what `turnout simulate` writes
    for rep in range(1, n_rep):  # same requests, fresh logging actions and reward noise
        tables.append(bandit_rows(records_to_table(simulate_records(world, requests, test_seed + 7919 * rep))))
    out: dict[str, Any] = {"n_rows": tables[0].num_rows, "by_weight": {}}
    for w in WEIGHTS:
        true_value = float(np.mean(truth["reward"][np.arange(len(requests)), learned[w]]))
        true_quality_mean = float(np.mean(truth["q"][np.arange(len(requests)), learned[w]]))
        reps, agreement = [], []
        for t in tables:
            b = ope_batch(greedy, t, preference=Preference(quality=1.0, cost=w, latency=0.0))
            idx = np.array([int(x.rsplit("-", 1)[1]) for x in t.column("request_id").to_pylist()])  # sim-<seed>-<index>
            logged = np.array([models.index(m) for m in t.column("model").to_pylist()])
            # the OPE target must be the served policy: pi(logged) = 1 exactly when decide chose it
            agreement.append(float(np.mean((b.target_prob > 0.5) == (logged == learned[w][idx]))))
            est = evaluate(b, n_bootstrap=n_boot, seed=seed)
            ess = float(b.weight.sum() ** 2 / max(float((b.weight ** 2).sum()), 1e-12))
            reps.append({"ess": ess, "logged_value": float(b.reward.mean()),
                         "estimates": {k: {"value": v.value, "ci95": [v.low, v.high], "error": v.value - true_value}
                                       for k, v in est.items()}})
        summary = {}
        for k in ESTIMATORS:
            err = np.array([r["estimates"][k]["error"] for r in reps])
            cover = [r["estimates"][k]["ci95"][0] <= true_value <= r["estimates"][k]["ci95"][1] for r in reps]
            width = [r["estimates"][k]["ci95"][1] - r["estimates"][k]["ci95"][0] for r in reps]
            summary[k] = {"mean_error": float(err.mean()), "rmse": float(np.sqrt(np.mean(err ** 2))),
                          "mean_abs_error": float(np.mean(np.abs(err))), "ci_coverage": float(np.mean(cover)),
                          "mean_ci_width": float(np.mean(width))}
        out["by_weight"][f"{w:g}"] = {"true_value": true_value, "true_quality_mean": true_quality_mean,
                                      "target_matches_decide": float(np.min(agreement)),
                                      "replicates": reps, "summary": summary}
    return out


def _with_exploration(bundle: Bundle, exploration: Exploration) -> Bundle:
    """The same bundle directory with an in-memory manifest whose router exploration is replaced
    (``ope_batch`` reads the target policy's exploration from ``manifest.router``)."""
    m = bundle.manifest
    router = m.router.model_copy(update={"exploration": exploration})
    return Bundle(path=bundle.path, manifest=m.model_copy(update={"router": router}))


# ------------------------------------------------------------------------------------------------
# comparison, tables, plot


def _hull_quality(points: list[tuple[float, float]], cost: float) -> float | None:
    """Best quality a random mix of ``points`` reaches spending at most ``cost`` (upper concave
    envelope with free disposal: spending more never lowers quality). None below the cheapest point."""
    pts = sorted(points)
    hull: list[tuple[float, float]] = []
    for p in pts:
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) >= 0:
            hull.pop()
        hull.append(p)
    if cost < hull[0][0]:
        return None
    best = max(q for c, q in hull if c <= cost)
    for (c0, q0), (c1, q1) in zip(hull, hull[1:]):
        if c0 <= cost <= c1 and c1 > c0:
            best = max(best, q0 + (q1 - q0) * (cost - c0) / (c1 - c0))
    return best


def _cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _compare(policies: dict[str, dict[str, Any]], models: Sequence[str], frontier: list[dict[str, float]]) -> dict[str, Any]:
    singles = {m: policies[f"always-{m}"] for m in models}
    pts = [(s["cost_usd_per_1k_requests"], s["quality"]) for s in singles.values()]
    fpts = [(f["cost_usd_per_1k_requests"], f["quality"]) for f in frontier]
    out = {}
    for w in WEIGHTS:
        key = f"{w:g}"
        lp = policies[f"learned w={key}"]
        best_single = max(singles, key=lambda m: singles[m]["utility"][key])
        hull_q = _hull_quality(pts, lp["cost_usd_per_1k_requests"])
        u_or = policies[f"oracle-request w={key}"]["utility"][key]
        u_uni = policies["uniform"]["utility"][key]
        out[key] = {
            "learned_utility": lp["utility"][key],
            "best_single_model": best_single, "best_single_utility": singles[best_single]["utility"][key],
            "learned_minus_best_single": lp["utility"][key] - singles[best_single]["utility"][key],
            "oracle_category_utility": policies[f"oracle-category w={key}"]["utility"][key],
            "oracle_request_utility": u_or,
            "uniform_utility": u_uni,
            "learned_regret_vs_oracle_request": u_or - lp["utility"][key],
            "learned_gap_closed_uniform_to_oracle": (lp["utility"][key] - u_uni) / (u_or - u_uni) if u_or != u_uni else None,
            "single_model_hull_quality_at_learned_cost": hull_q,
            "learned_quality_minus_hull": None if hull_q is None else lp["quality"] - hull_q,
            "frontier_quality_at_learned_cost": (fq := _hull_quality(fpts, lp["cost_usd_per_1k_requests"])),
            "learned_quality_minus_frontier": None if fq is None else lp["quality"] - fq,
        }
    return out


def _print(r: dict[str, Any], models: Sequence[str]) -> None:
    s, pol = r["settings"], r["policies"]
    pm = r["bundle_metrics"]["policy"]
    console.print(f"[bold]policy_value[/]: bundle trained on {s['n_train_logs']} uniform logs (seed {s['train_seed']}); "
                  f"{s['n_test']} held-out requests (seed {s['test_seed']}); classifier holdout accuracy "
                  f"{r['bundle_metrics']['classifier']['test_accuracy']:.3f}; policy variant chosen "
                  f"{pm['chosen']} (held-out DR utility at the configured preference: "
                  f"{', '.join(f'{k} {v:.4f}' for k, v in pm['variants_dr_value'].items())}); "
                  f"ref_cost_usd {s['ref_cost_usd']:.3e} (true costliest-model mean where allowed, held-out set "
                  f"{s['true_ref_cost_usd_heldout']:.3e}); "
                  f"{100 * s['heldout_prompts_seen_in_training']:.1f}% of held-out prompts appear verbatim in training")
    rows = []
    for name, p in pol.items():
        rows.append([name, p["quality"], p["cost_usd_per_1k_requests"], *[p["utility"][f"{w:g}"] for w in WEIGHTS],
                     " / ".join(f"{100 * x:.0f}" for x in p["share"]), p.get("fallback_rate")])
    table("True expected quality, cost and utility on the held-out set (U_w = q - w * cost_usd / ref_cost_usd, "
          f"ref_cost_usd = {s['ref_cost_usd']:.3e} fixed by the bundle)",
          ["policy", "quality", "USD / 1k req", *[f"U w={w:g}" for w in WEIGHTS], f"% {'/'.join(models)}", "fallback"],
          rows)
    rows = []
    for w, c in r["comparison"].items():
        rows.append([w, c["learned_utility"], f"{c['best_single_model']} {c['best_single_utility']:.4f}",
                     c["learned_minus_best_single"], c["oracle_category_utility"], c["oracle_request_utility"],
                     c["learned_regret_vs_oracle_request"], c["learned_gap_closed_uniform_to_oracle"],
                     c["learned_quality_minus_hull"], c["learned_quality_minus_frontier"]])
    table("Learned policy vs baselines at its own cost weight. Utility columns: the router's objective. Quality columns, "
          "at the learned policy's own $ cost: hull = best random mix of single models; frontier = per-request "
          "argmax of q - lambda * USD (the absolute-cost optimum)",
          ["w", "U learned", "U best single", "Δ vs single", "U oracle-cat", "U oracle-req", "regret", "gap closed",
           "q - hull", "q - frontier"], rows,
          caption="regret = U oracle-req - U learned; gap closed = (U learned - U uniform) / (U oracle-req - U uniform)")
    pc = r["learned_vs_oracle_category_by_category"]
    cats = [c for c in next(iter(pc.values())) if not c.startswith("_")]
    rows = [[c, pc[WK[0]][c]["n"], *[f"{pc[w][c]['gap']:+.4f} ({pc[w][c]['oracle_model']})" for w in WK]] for c in cats]
    rows.append(["fallback rows: contribution", None,
                 *[f"{pc[w]['_fallback_rows']['contribution_to_overall_gap']:+.4f} (n={pc[w]['_fallback_rows']['n']})"
                   for w in WK]])
    rows.append(["overall", None, *[f"{pc[w]['_overall_gap']:+.4f}" for w in WK]])
    table("Learned minus per-category oracle, mean utility by true category (oracle's model in brackets)",
          ["category", "n", *[f"w={w}" for w in WK]], rows)
    rows = []
    for w, o in r["ope"]["by_weight"].items():
        rep0 = o["replicates"][0]
        rows.append([w, o["true_value"], *[rep0["estimates"][k]["value"] for k in ESTIMATORS],
                     *[rep0["estimates"][k]["error"] for k in ESTIMATORS], rep0["ess"], o["target_matches_decide"]])
    table(f"OPE of the learned greedy policy on held-out logs (replicate 0, n={r['ope']['n_rows']}); truth = E\\[logged "
          "reward] under the policy",
          ["w", "truth", *[k.upper() for k in ESTIMATORS], *[f"err {k.upper()}" for k in ESTIMATORS], "ESS",
           "target = decide"], rows)
    rows = []
    for w, o in r["ope"]["by_weight"].items():
        for k in ESTIMATORS:
            sm = o["summary"][k]
            rows.append([w, k.upper(), sm["mean_error"], sm["rmse"], sm["mean_ci_width"],
                         f"{sm['ci_coverage'] * len(o['replicates']):.0f}/{len(o['replicates'])}"])
    table(f"OPE error over {s['ope_replicates']} logging replicate(s) (same held-out requests, fresh logging actions and "
          "noise)", ["w", "estimator", "mean error (bias)", "RMSE", "mean CI95 width", "truth in CI95"], rows)
    c = r["configured_policy_ope"]
    table(f"run_ope on held-out logs, bundle as configured (epsilon-greedy eps={c['epsilon']:g}, w={c['preference_cost']:g});"
          f" truth {c['true_value_reward']:.4f}",
          ["estimator", "value", "CI95", "error", "truth in CI95"],
          [[k.upper(), v["estimate"], f"{v['ci_low']:.4f}..{v['ci_high']:.4f}", c["errors"][k],
            "yes" if c["truth_in_ci95"][k] else "no"]
           for k, v in c["run_ope"]["estimates"].items()])


def _plot(policies: dict[str, dict[str, Any]], models: Sequence[str], frontier: list[dict[str, float]],
          path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=100)
    singles = [(policies[f"always-{m}"]["cost_usd_per_1k_requests"], policies[f"always-{m}"]["quality"]) for m in models]
    xs = np.geomspace(min(x for x, _ in singles), max(x for x, _ in singles), 200)
    ax.plot(xs, [_hull_quality(singles, x) for x in xs], "-", color="lightgrey", lw=3, label="random mix of single models",
            zorder=0)
    fpts = [(f["cost_usd_per_1k_requests"], f["quality"]) for f in frontier]
    xs = np.geomspace(min(x for x, _ in fpts), max(x for x, _ in fpts), 200)
    ax.plot(xs, [_hull_quality(fpts, x) for x in xs], "-", color="tab:red", lw=1, alpha=0.6,
            label="frontier: per-request max q - λ·USD (oracle)", zorder=0)
    for prefix, style, label in (("learned", "o-", "learned (Router.decide, greedy)"),
                                 ("oracle-category", "s--", "oracle per true category (router objective)"),
                                 ("oracle-request", "^:", "oracle per request (router objective)")):
        xs = [policies[f"{prefix} w={w:g}"]["cost_usd_per_1k_requests"] for w in WEIGHTS]
        ys = [policies[f"{prefix} w={w:g}"]["quality"] for w in WEIGHTS]
        # segments are random mixes of adjacent points: linear in cost, so drawn densely on the log axis
        order = np.argsort(xs)
        px, py = np.asarray(xs)[order], np.asarray(ys)[order]
        dense = np.unique(np.concatenate([np.geomspace(px[0], px[-1], 200), px]))
        (line,) = ax.plot(dense, np.interp(dense, px, py), style[1:], lw=1.2)
        ax.plot(xs, ys, style[0], color=line.get_color(), markersize=5, label=label)
        if prefix == "learned":
            for w, x, y in zip(WEIGHTS, xs, ys):
                ax.annotate(f"w={w:g}", (x, y), textcoords="offset points", xytext=(5, -11), fontsize=8)
    for m in models:
        p = policies[f"always-{m}"]
        ax.plot(p["cost_usd_per_1k_requests"], p["quality"], "D", color="black", markersize=7)
        ax.annotate(f"always-{m}", (p["cost_usd_per_1k_requests"], p["quality"]), textcoords="offset points",
                    xytext=(6, 4), fontsize=9)
    u = policies["uniform"]
    ax.plot(u["cost_usd_per_1k_requests"], u["quality"], "x", color="grey", markersize=8, label="uniform random")
    ax.set_xscale("log")
    ax.set_xlabel("true expected cost, USD per 1k requests (log scale)")
    ax.set_ylabel("true expected quality (quality_mean)")
    ax.set_title("policy_value: held-out simulated requests")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
