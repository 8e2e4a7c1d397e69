"""``turnout eval cache``: replay a labelled stream through the cache and compare matching rules.

Every stream item is looked up; on a miss it is inserted (its ``answer_id`` is the "answer"). A hit
is false when the cached item's ``answer_id`` differs. Three rules:

* ``global_threshold`` -- one cosine threshold for every category, the best one *chosen on the
  evaluated stream itself* (the highest hit rate with false-hit rate <= the target): an oracle
  baseline, so the comparison favours it;
* ``per_category_thresholds`` -- the thresholds fitted by ``turnout train cache`` (or, without
  ``--policy``, fitted now on generated data, ``training.cache_data.fit_stream``); a category the
  policy does not know uses its pooled threshold;
* ``verifier`` -- candidates above the floor, accepted by the learned hit verifier at the fitted
  per-category cutoffs;
* ``verifier_online`` -- ``router.cache_online``: per-answer-cluster thresholds over the verifier's
  probability (+ a contrast margin), learned *online* from the feedback a cache really sees: on a
  miss the inserted answer labels the candidates the lookup weighed. Every decision uses only
  earlier feedback; its prior is the fitted cutoff; its bound is the target false-hit rate.
  ``verifier_online_explore`` adds exploration (an accepted hit is served as a miss with probability
  ``explore_rate`` -- a model call each -- so accepted pairs get labels too). Each says in
  ``feedback`` what it learned from.

Curves sweep each rule (the global threshold; a shift added to every fitted threshold; a shift added
to every fitted cutoff) so rules can be compared at the same false-hit rate (``at_target``: each
rule's best point with a false-hit rate <= the target, i.e. both operating points picked on the
stream). ``matched`` compares the verifier *as fitted* with (i) the oracle global threshold at the
false-hit rate the verifier realised and (ii) ``global_threshold_fitted``, the global threshold fitted
on the same held-out fitting data as the verifier (the honest baseline). Lookup
latency is measured on the real ``ResponseCache`` (in-process store, verifier rule), excluding the
encoder, whose single-prompt latency is reported separately.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from router.cache import CachePolicy, CategoryCachePolicy, ResponseCache
from router.cache_verifier import HitVerifier
from training.cache_data import read_stream
from router.cache_online import OnlineSettings
from training.cache_replay import (
    PreparedStream,
    ReplayResult,
    best_at,
    online_replay,
    prepare,
    replay,
    sweep,
    threshold_rule,
    verifier_probs,
    verifier_rule,
)
from training.cache_train import CANDIDATE_FLOOR, THRESHOLD_GRID, Matchers, fit_matchers, onnx_scorer

SHIFTS = tuple(np.round(np.arange(-0.25, 0.2501, 0.01), 2))
CUTOFF_SHIFTS = tuple(np.round(np.arange(-0.95, 0.9501, 0.01), 2))  # cutoffs are probabilities: sweep [0, 1]
MAX_ERRORS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3)  # the online rule's curve: its error bound swept
EXPLORE_RATE = 0.05
Step = Callable[[str], None]


def matchers_from_policy(policy_dir: Path) -> Matchers:
    policy = CachePolicy.load(policy_dir / "cache_policy.json")
    if policy.verifier is None:
        raise ValueError(f"{policy_dir}/cache_policy.json has no verifier; train it with `turnout train cache`")
    onnx_bytes = (policy_dir / policy.verifier.file).read_bytes()
    return Matchers({c: p.threshold for c, p in policy.categories.items()}, policy.default.threshold,
                    {c: p.verifier_cutoff or policy.default.verifier_cutoff or 0.5 for c, p in policy.categories.items()},
                    policy.default.verifier_cutoff or 0.5, onnx_bytes, policy.verifier, {"policy": str(policy_dir)})


def _result(r: ReplayResult) -> dict[str, Any]:
    return {"overall": r.summary(), "per_category": {c: r.summary(c) for c in sorted(r.n)}}


def _point(x: float, r: ReplayResult, key: str) -> dict[str, float]:
    s = r.summary()
    return {key: x, "hit_rate": s["hit_rate"], "false_hit_rate": s["false_hit_rate"],
            "correct_hit_rate": s["correct_hit_rate"]}


def online_methods(ps: PreparedStream, cut: dict[str, float], target_fhr: float, *, explore_rate: float = EXPLORE_RATE,
                   curve: bool = True) -> tuple[dict[str, Any], list[tuple[float, ReplayResult]]]:
    """``verifier_online`` (misses only) and ``verifier_online_explore`` rows, and the former's curve."""
    out: dict[str, Any] = {}
    for name, rate in (("verifier_online", 0.0), ("verifier_online_explore", explore_rate)):
        settings = OnlineSettings(max_error=target_fhr, explore_rate=rate)
        run = online_replay(ps, settings, cut, CANDIDATE_FLOOR, use_verifier=True)
        out[name] = {
            "settings": settings.model_dump(mode="json"), "prior_cutoffs": cut, "candidate_floor": CANDIDATE_FLOOR,
            "feedback": {"used": "misses only" if rate == 0 else "misses + exploration",
                         "explore_rate": rate, "explorations": run.explorations,
                         "labelled_pairs": run.feedback_pairs,
                         "note": "labels revealed by earlier inserts only (causal); no hindsight, nothing "
                                 "fitted on this stream"},
            **_result(run.result)}
    pts = [(e, online_replay(ps, OnlineSettings(max_error=e), cut, CANDIDATE_FLOOR, use_verifier=True).result)
           for e in MAX_ERRORS] if curve else []
    return out, pts


def evaluate_stream(rows: list[dict[str, object]], encoder: Any, matchers: Matchers, *, target_fhr: float = 0.05,
                    latency: bool = True, step: Step = lambda _: None) -> dict[str, Any]:
    step(f"embedding {len(rows)} stream items")
    ps = prepare(rows, encoder.encode)
    cats = sorted(set(ps.categories))
    thr = {c: matchers.thresholds.get(c, matchers.global_threshold) for c in cats}
    cut = {c: matchers.cutoffs.get(c, matchers.global_cutoff) for c in cats}
    verifier_probs(ps, onnx_scorer(matchers.verifier_onnx), matchers.verifier_info.taxonomy, CANDIDATE_FLOOR)
    step("replaying: global threshold sweep, fitted thresholds, verifier")
    g_curve = sweep(ps, lambda t: threshold_rule(t, ps), THRESHOLD_GRID)
    pc_curve = sweep(ps, lambda d: threshold_rule({c: min(1.0, t + d) for c, t in thr.items()}, ps), SHIFTS)
    v_curve = sweep(ps, lambda d: verifier_rule({c: float(np.clip(v + d, 0, 1)) for c, v in cut.items()}, ps,
                                                CANDIDATE_FLOOR), CUTOFF_SHIFTS)
    step("replaying: verifier + online per-cluster thresholds (feedback from misses; + exploration)")
    online, o_curve = online_methods(ps, cut, target_fhr)
    g_best = best_at(g_curve, target_fhr)
    g_t = g_best[0] if g_best else 1.0
    at_target = {name: (best_at(curve, target_fhr) or (None, None))[1] for name, curve in
                 (("global_threshold", g_curve), ("per_category_thresholds", pc_curve), ("verifier", v_curve),
                  ("verifier_online", o_curve))}
    base = (at_target["global_threshold"] or {}).get("hit_rate") or 0.0

    def ratio(name: str) -> float | None:
        v = (at_target[name] or {}).get("hit_rate")
        return None if v is None or base == 0 else float(v) / float(base)

    verifier_fitted = replay(ps, verifier_rule(cut, ps, CANDIDATE_FLOOR))
    global_fitted = replay(ps, threshold_rule(float(matchers.global_threshold), ps))
    matched = matched_comparison(verifier_fitted.summary(), global_fitted.summary(), g_curve, target_fhr)
    matched.update(online_matched(online, g_curve, target_fhr))

    report: dict[str, Any] = {
        "stream": {"requests": len(rows), "categories": len(cats), "answers": len(set(ps.answer_ids))},
        "target_false_hit_rate": target_fhr,
        "fitting": matchers.metrics,
        "methods": {
            "global_threshold": {"threshold": g_t, "chosen_on": "the evaluated stream (oracle baseline)",
                                 **_result(replay(ps, threshold_rule(g_t, ps)))},
            "per_category_thresholds": {"thresholds": thr, **_result(replay(ps, threshold_rule(thr, ps)))},
            "verifier": {"cutoffs": cut, "candidate_floor": CANDIDATE_FLOOR, **_result(verifier_fitted)},
            "global_threshold_fitted": {"threshold": float(matchers.global_threshold),
                                        "chosen_on": "held-out fitting data (honest baseline)",
                                        **_result(global_fitted)},
            **online,
        },
        "curves": {"global_threshold": [_point(t, r, "threshold") for t, r in g_curve],
                   "per_category_thresholds": [_point(d, r, "shift") for d, r in pc_curve],
                   "verifier": [_point(d, r, "cutoff_shift") for d, r in v_curve],
                   "verifier_online": [_point(e, r, "max_error") for e, r in o_curve]},
        "at_target": {**at_target, "hit_rate_ratio_per_category_vs_global": ratio("per_category_thresholds"),
                      "hit_rate_ratio_verifier_vs_global": ratio("verifier"),
                      "hit_rate_ratio_verifier_online_vs_global": ratio("verifier_online")},
        "matched": matched,
    }
    if latency:
        step("measuring lookup latency on the real cache")
        report["latency_ms"] = measure_latency(ps, matchers, thr, cut, encoder)
    return report


def matched_comparison(verifier: dict[str, Any], global_fitted: dict[str, Any],
                       g_curve: list[tuple[float, ReplayResult]], target_fhr: float) -> dict[str, Any]:
    """The verifier *as fitted* (no shift chosen on the stream) against global thresholds at the
    false-hit rate it actually realised: the oracle (the stream's best threshold with a false-hit
    rate <= the verifier's) and the honest one (fitted on held-out fitting data, as the verifier was).
    A ratio is None when its baseline has no hits."""
    fhr = float(verifier["false_hit_rate"])
    oracle = best_at(g_curve, fhr)
    o_hr = float(oracle[1]["hit_rate"]) if oracle else 0.0
    g_hr = float(global_fitted["hit_rate"])
    v_hr = float(verifier["hit_rate"])
    return {
        "verifier": verifier, "verifier_false_hit_rate_ok": fhr <= target_fhr,
        "oracle_global_at_verifier_fhr": ({"threshold": oracle[0], **oracle[1]} if oracle else None),
        "fitted_global": global_fitted,
        "hit_rate_ratio_verifier_vs_oracle_global": v_hr / o_hr if o_hr > 0 else None,
        "hit_rate_ratio_verifier_vs_fitted_global": v_hr / g_hr if g_hr > 0 else None,
        "hit_rate_gain_verifier_vs_fitted_global": v_hr - g_hr,
    }


def online_matched(online: dict[str, Any], g_curve: list[tuple[float, ReplayResult]],
                   target_fhr: float) -> dict[str, Any]:
    """Each online row (bound = the target false-hit rate, nothing chosen on the stream) against the
    oracle global threshold at the false-hit rate it realised."""
    out: dict[str, Any] = {}
    for name, row in online.items():
        s = row["overall"]
        oracle = best_at(g_curve, float(s["false_hit_rate"]))
        o_hr = float(oracle[1]["hit_rate"]) if oracle else 0.0
        out[name] = s
        out[f"{name}_false_hit_rate_ok"] = float(s["false_hit_rate"]) <= target_fhr
        out[f"oracle_global_at_{name}_fhr"] = {"threshold": oracle[0], **oracle[1]} if oracle else None
        out[f"hit_rate_ratio_{name}_vs_oracle_global"] = float(s["hit_rate"]) / o_hr if o_hr > 0 else None
    return out


def measure_latency(ps: PreparedStream, matchers: Matchers, thr: dict[str, float], cut: dict[str, float],
                    encoder: Any) -> dict[str, Any]:
    """Replay through ``ResponseCache`` (memory store, verifier rule): lookup p50/p99 excluding the
    encoder; the encoder's single-prompt p50; and how often the real cache agrees with the replay."""
    policy = CachePolicy(categories={c: CategoryCachePolicy(tier="semantic", threshold=thr[c], verifier_cutoff=cut[c],
                                                            ttl_s=1e9, max_entries=10**7) for c in thr},
                         verifier=matchers.verifier_info, max_prompt_chars=10**9)
    cache = ResponseCache(policy, embedder=encoder, verifier=HitVerifier(matchers.verifier_onnx, matchers.verifier_info))
    times, hits = [], 0
    for i, (text, cat, aid) in enumerate(zip(ps.texts, ps.categories, ps.answer_ids)):
        t0 = time.perf_counter()
        hit = cache.lookup("eval", cat, "semantic", text, float(i), embedding=ps.embeddings[i])
        times.append(time.perf_counter() - t0)
        if hit is None:
            cache.insert("eval", cat, "semantic", text, aid, "stream", float(i), embedding=ps.embeddings[i])
        else:
            hits += 1
    fast = replay(ps, verifier_rule(cut, ps, CANDIDATE_FLOOR)).summary()
    online = measure_online(ps, matchers, thr, cut, encoder)
    enc_times = []
    for text in ps.texts[:200]:
        t0 = time.perf_counter()
        encoder._encode([text], 1) if hasattr(encoder, "_encode") else encoder.encode([text])
        enc_times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1000.0
    return {"lookup_p50": float(np.percentile(ms, 50)), "lookup_p99": float(np.percentile(ms, 99)),
            "encoder_p50": float(np.percentile(np.array(enc_times) * 1000.0, 50)), "entries": len(cache),
            "real_cache_hits": hits, "replay_hits": int(fast["hits"]), "online": online}


def measure_online(ps: PreparedStream, matchers: Matchers, thr: dict[str, float], cut: dict[str, float],
                   encoder: Any, *, target_fhr: float = 0.05) -> dict[str, Any]:
    """The online rule on the real ``ResponseCache`` (verifier, memory store): lookup p50/p99
    excluding the encoder, the insert (feedback) cost, and whether it serves what the replay serves."""
    settings = OnlineSettings(max_error=target_fhr)
    policy = CachePolicy(categories={c: CategoryCachePolicy(tier="semantic", threshold=thr[c], verifier_cutoff=cut[c],
                                                            ttl_s=1e9, max_entries=10**7) for c in thr},
                         verifier=matchers.verifier_info, max_prompt_chars=10**9, online=settings)
    cache = ResponseCache(policy, embedder=encoder, verifier=HitVerifier(matchers.verifier_onnx, matchers.verifier_info))
    look, ins, served = [], [], []
    for i, (text, cat) in enumerate(zip(ps.texts, ps.categories)):
        t0 = time.perf_counter()
        hit = cache.lookup("eval", cat, "semantic", text, float(i), embedding=ps.embeddings[i])
        look.append(time.perf_counter() - t0)
        if hit is None:
            t0 = time.perf_counter()
            cache.insert("eval", cat, "semantic", text, ps.answer_ids[i], str(i), float(i), embedding=ps.embeddings[i])
            ins.append(time.perf_counter() - t0)
        served.append(-1 if hit is None else int(hit.model))
    fast = online_replay(ps, settings, cut, CANDIDATE_FLOOR, use_verifier=True)
    lk, it = np.array(look) * 1000.0, np.array(ins) * 1000.0
    return {"lookup_p50": float(np.percentile(lk, 50)), "lookup_p99": float(np.percentile(lk, 99)),
            "insert_p50": float(np.percentile(it, 50)) if len(it) else None,
            "insert_p99": float(np.percentile(it, 99)) if len(it) else None,
            "real_cache_hits": sum(d >= 0 for d in served), "replay_hits": sum(d >= 0 for d in fast.decisions),
            "same_decisions_as_replay": float(np.mean(np.array(served) == np.array(fast.decisions)))}


def eval_cache(stream: str | Path, out: str | Path, *, policy_dir: str | Path | None = None, target_fhr: float = 0.05,
               shared_dir: Path | None = None, seed: int = 0, step: Step = lambda _: None) -> dict[str, Any]:
    from training.classifier import load_encoder
    from training.prompts import CATEGORIES

    rows = read_stream(stream)
    encoder = load_encoder(threads=1)
    if policy_dir is not None:
        matchers = matchers_from_policy(Path(policy_dir))
    else:
        step("no --policy: fitting thresholds and the verifier on generated data (not the stream)")
        matchers = fit_matchers(encoder.encode, CATEGORIES, target_fhr=target_fhr, seed=seed, shared_dir=shared_dir,
                                step=step)
    report = evaluate_stream(rows, encoder, matchers, target_fhr=target_fhr, step=step)
    report["stream"]["path"] = str(stream)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=float), encoding="utf-8")
    return report


__all__ = ["eval_cache", "evaluate_stream", "matchers_from_policy"]
