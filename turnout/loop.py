"""``turnout loop``: the product's promise end to end, on the simulated world (models are SIMULATED).

1. v1: a classifier trained on simulated labelled prompts and a policy fitted on only a few logged
   rounds (``v1_requests``) -- deliberately weak, the way a router is on day one -- with
   epsilon-greedy exploration ``epsilon`` (0.3: enough randomised rounds in 4000 requests for OPE's
   effective-sample-size guard; at the config's 0.1 the guard holds the retrain, as it should);
2. serve v1 through the Ray Serve app with its exploration (epsilon-greedy from the router config) and
   replay ``explore_requests`` simulated requests; the gateway logs every decision with its propensity;
3. ``turnout retrain`` on those logs -> v2 and the OPE gate's verdict;
4. A/B v1 (control) vs v2 at 50/50 by user through the same Serve app (``experiment.arms``), replay
   ``ab_requests`` fresh requests, ``turnout ab report`` on the experiment's logs;
5. agreement: the OPE (DR) estimate of v2 - v1 per policy-decided round, times the A/B's share of
   such rounds (cache hits, forced fallbacks and errors cannot differ between the arms), must be
   consistent with the A/B difference (|z| < 1.96 for the gap between the two estimates), for quality
   and for cost; ``agrees`` also needs ``promote``; ``agrees_strict`` = OPE point inside the A/B CI.

The OPE yardstick and the A/B arms both run the policies with their exploration and without the
online correction (switched off in v1, inherited by v2), so they measure the same policies; the A/B
also includes cache hits, which OPE leaves out (both arms share the cache rules).
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

Z95 = 1.959963984540054


def _serve_and_replay(cfg_path: Path, bodies: list[dict[str, Any]], console: Console, label: str) -> dict[str, Any]:
    from serving import launcher
    from serving.config import load_serve_config

    cfg = load_serve_config(cfg_path)
    console.print(f"{label}: starting Ray Serve")
    result = launcher.serve_and_replay(cfg, bodies, concurrency=8, on_start=lambda url: console.print(
        f"[green]✓[/] {label}: serving at {url}; replaying {len(bodies)} requests"))
    summary = result.summary()
    return {"requests": summary["requests"], "ok": summary["ok"], "log_dir": str(cfg.path(cfg.log_dir))}


def _serve_config(path: Path, work: Path, log_dir: str, world: Path, bundle: Path,
                  arms: list[dict[str, Any]] | None = None) -> Path:
    from turnout.demo import write_simulated_serve_config

    return write_simulated_serve_config(path, bundle=bundle, log_dir=work / log_dir, world=world, time_scale=0.01,
                                        arms=arms)


def without_online_correction(bundle: Any, out: Path) -> Any:
    """A copy of ``bundle`` whose serving-time online correction is off (``max_adjust = 0``); v2
    inherits it. Otherwise the arms would adapt during the A/B (``router.online``) and the experiment
    would measure adapted policies while OPE evaluated the bundles' own."""
    from router.bundle import write_bundle
    from router.policy import OnlineBounds

    m = bundle.manifest
    files = {n: bundle.file(n).read_bytes() for n in m.files}
    info = m.policy.model_copy(update={"online": OnlineBounds(max_adjust=0.0)})
    return write_bundle(out, files, router=m.router, classifier=m.classifier, policy=info, metrics=m.metrics,
                        bundle_version=m.bundle_version)


def decided_share(log_dir: str | Path) -> dict[str, float]:
    """Share of the A/B's rows where the arms' policies chose the model (not a cache hit, forced
    fallback or error): only there can the arms differ, so the A/B difference is this share times the
    per-round difference OPE estimates. Per metric, over the rows the A/B report averages."""
    import numpy as np

    from router.log_schema import read_logs

    t = read_logs(log_dir)
    ok = np.array([e is None for e in t.column("error").to_pylist()])
    decided = ok & ~np.array(t.column("cache_hit").to_pylist()) & ~np.array(t.column("fallback").to_pylist())
    has_q = ok & np.array([q is not None for q in t.column("quality").to_pylist()])
    return {"quality": float(decided[has_q].mean()) if has_q.any() else 0.0,
            "cost_usd": float(decided[ok].mean()) if ok.any() else 0.0}


def agreement(ope: dict[str, Any], ab_diff: dict[str, Any], share: dict[str, float] | None = None) -> dict[str, Any]:
    """Per metric, OPE's DR difference (v2 - v1, per policy-decided round) scaled by the A/B's decided
    share against the A/B difference: inside its 95% CI (strict), CIs overlapping, and ``consistent``
    -- the two independent estimates differ by less than 1.96 standard errors of their difference
    (the strict check fails ~17% of the time for two unbiased estimates of equal precision)."""
    out = {}
    for key in ("quality", "cost_usd"):
        if key not in ope:
            continue
        o, a = ope[key]["difference"], ab_diff.get(key) or {}
        k = (share or {}).get(key, 1.0)
        scaled = {n: k * v for n, v in o.items()}
        lo, hi = a.get("ci_low"), a.get("ci_high")
        known = lo is not None and hi is not None and a.get("estimate") is not None
        inside = known and lo <= scaled["estimate"] <= hi
        overlap = known and scaled["ci_low"] <= hi and lo <= scaled["ci_high"]
        z = None
        if known:  # two independent estimates of one difference: (OPE - A/B) / its standard error
            se = math.hypot((scaled["ci_high"] - scaled["ci_low"]) / (2 * Z95), (hi - lo) / (2 * Z95))
            z = (scaled["estimate"] - a["estimate"]) / se if se > 0 else 0.0
        out[key] = {"ope_per_decided_round": o, "decided_share": k, "ope": scaled, "ab": a,
                    "ope_inside_ab_ci": bool(inside), "cis_overlap": bool(overlap), "z": z,
                    "consistent": bool(z is not None and abs(z) < Z95)}
    return out


def run_loop(world_path: str | Path, workdir: Path | None = None, *, v1_requests: int = 30, v1_seed: int = 1,
             explore_requests: int = 4000, ab_requests: int = 3000, epsilon: float = 0.3,
             seed: int = 0) -> dict[str, Any]:
    from router.bundle import load_bundle
    from router.config import Exploration
    from training.ab_report import ab_report
    from training.bundle_builder import build_bundle, retrain_policy
    from training.retrain import RetrainSettings, retrain
    from training.simulator import replay_request, write_simulation
    from training.world import generate_requests, load_world

    console = Console(stderr=True)
    t0 = time.perf_counter()
    world_path = Path(world_path).resolve()
    w = load_world(world_path)
    work = Path(workdir or tempfile.mkdtemp(prefix="turnout-loop-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]turnout loop[/] (simulated models)")
    console.print(f"working directory: {work}")
    timings: dict[str, float] = {}

    t = time.perf_counter()
    with console.status("v1: simulating labelled prompts and a few logged rounds; training") as st:
        write_simulation(w, 2000, work / "labelled", seed=seed + 3)
        # the exploration rate is the router config's; the loop raises it so a day of traffic carries
        # enough randomised rounds for OPE's effective-sample-size guard (v2 inherits it)
        cfg = w.router.model_copy(update={"exploration": Exploration(kind="epsilon_greedy", epsilon=epsilon)})
        base = build_bundle(work / "labelled", cfg, work / "v0", bundle_version="v0-classifier",
                            step=lambda m: st.update(f"v1: {m}"))
        write_simulation(w, v1_requests, work / "v1-logs", seed=v1_seed)
        weak = retrain_policy(work / "v1-logs", base, work / "v1-online", bundle_version="v1",
                              step=lambda m: st.update(f"v1: {m}"))
        v1 = without_online_correction(weak, work / "v1")
    timings["v1"] = time.perf_counter() - t
    console.print(f"[green]✓[/] v1: classifier on 2000 labelled prompts, policy {v1.manifest.metrics['policy']['chosen']} "
                  f"fitted on only {v1_requests} logged rounds; epsilon-greedy exploration {epsilon}")

    t = time.perf_counter()
    explore = [replay_request(r) for r in generate_requests(w, explore_requests, seed=seed + 100)]
    cfg1 = _serve_config(work / "serve-v1.yaml", work, "logs-v1", world_path, work / "v1")
    served = _serve_and_replay(cfg1, explore, console, "v1 with exploration")
    timings["serve_v1"] = time.perf_counter() - t

    t = time.perf_counter()
    with console.status("retraining v2 on v1's logs (OPE gate)") as st:
        outcome = retrain(served["log_dir"], v1, work / "retrain", step=lambda m: st.update(f"retrain: {m}"),
                          settings=RetrainSettings(refit_classifier=False, bundle_version="v2", seed=seed))
    timings["retrain"] = time.perf_counter() - t
    color = "green" if outcome.decision == "promote" else "yellow"
    console.print(f"[bold {color}]{outcome.decision.upper()}[/]: {outcome.reason}")
    result: dict[str, Any] = {"workdir": str(work), "v1": {"bundle": str(v1.path), "policy_rounds": v1_requests,
                                                           "epsilon": epsilon},
                              "explore": served, "retrain": outcome.as_dict(), "timings_s": timings}
    if outcome.bundle is None:
        result["agrees"] = False
        result["missing"] = "retrain wrote no candidate bundle (a guard failed before fitting)"
        return result

    t = time.perf_counter()
    arms = [{"name": "v1", "bundle": str(work / "v1"), "weight": 1.0},
            {"name": "v2", "bundle": outcome.bundle, "weight": 1.0}]
    ab_bodies = [replay_request(r) for r in generate_requests(w, ab_requests, seed=seed + 200)]
    cfg2 = _serve_config(work / "serve-ab.yaml", work, "logs-ab", world_path, work / "v1", arms)
    ab_served = _serve_and_replay(cfg2, ab_bodies, console, "A/B v1 vs v2")
    timings["ab"] = time.perf_counter() - t
    report = ab_report(ab_served["log_dir"], work / "ab-report", control="v1")
    diff = report["arms"]["v2"]["diff_vs_control"]
    ope = outcome.details["ope"]["metrics"]
    agree = agreement(ope, diff, decided_share(ab_served["log_dir"]))
    result.update(ab={"served": ab_served, "report": str(work / "ab-report"), "arms": {
        a: {k: report["arms"][a][k] for k in ("requests", "quality", "cost_usd")} for a in ("v1", "v2")},
        "diff_vs_control": diff, "srm": report["srm"]}, agreement=agree)
    result["agrees"] = bool(outcome.decision == "promote" and all(a["consistent"] for a in agree.values()))
    result["agrees_strict"] = bool(outcome.decision == "promote" and all(a["ope_inside_ab_ci"] for a in agree.values()))
    timings["total"] = time.perf_counter() - t0
    q = agree["quality"]
    console.print(f"decided share of A/B rows: quality {q['decided_share']:.3f}, cost {agree['cost_usd']['decided_share']:.3f}")
    console.print(f"OPE (DR, scaled) quality v2 - v1: {q['ope']['estimate']:+.4f} [{q['ope']['ci_low']:+.4f}, "
                  f"{q['ope']['ci_high']:+.4f}];  A/B: {q['ab'].get('estimate', float('nan')):+.4f} "
                  f"[{q['ab'].get('ci_low', float('nan')):+.4f}, {q['ab'].get('ci_high', float('nan')):+.4f}]  -> "
                  + f"z = {q['z']:+.2f} " + ("[green]consistent[/]" if q["consistent"] else "[red]inconsistent[/]")
                  + ("" if q["ope_inside_ab_ci"] else " (OPE point outside the A/B CI)"))
    c = agree["cost_usd"]
    console.print(f"OPE (DR, scaled) cost v2 - v1: {c['ope']['estimate']:+.6f};  A/B: {c['ab'].get('estimate', float('nan')):+.6f} "
                  f"[{c['ab'].get('ci_low', float('nan')):+.6f}, {c['ab'].get('ci_high', float('nan')):+.6f}]  -> "
                  + ("[green]consistent[/]" if c["consistent"] else "[red]inconsistent[/]"))
    load_bundle(outcome.bundle)
    return result
