"""``turnout train cache``: the per-category cache policy, learned from labelled streams and logs.

Two inputs, two jobs:

* **Matching** (thresholds, hit verifier) needs to know which answers are interchangeable, which
  logs cannot say. It is fitted on labelled streams from ``training.cache_data.fit_stream``
  (simulator prompts + public sets, never CLINC150, never the evaluated stream): stream A trains the
  verifier (XGBoost on ``router.cache_features`` pair features, exported to ONNX); stream B --
  disjoint answers -- picks, per category, the lowest cosine threshold and the lowest verifier cutoff
  whose replayed false-hit rate stays <= ``target_false_hit_rate`` (the pooled value where a category
  has too few hits, or no hard negatives, to say). The verifier's probability is constrained to rise
  with the cosine and fall on a negation / opposite / number disagreement. A category no policy knows
  (CLINC's, at evaluation) gets the cutoff fitted on the held-out pairs of ShareGPT prompts, which
  train the verifier's "unknown category" column, when those pin it down, else the pooled one.
* **Economics** come from the logs. The logged prompts of each category are replayed through the
  real cache with those thresholds: the measured hit rate is the *expected hit rate*; the measured
  lookup time over the median logged model latency of that category is the *break-even hit rate*.
  Tier = semantic when its hit rate beats its break-even, else exact when that one does, else skip
  (a category routed ``cache_tier: skip`` in the router config stays skipped: an operator's opt-out).
  TTL = the 90th percentile of the gaps between repeats of a prompt (longer entries are never reused),
  capped by the observed staleness -- the shortest-lived 10% of answers when a stream with timestamps
  shows the answer to a prompt changing -- and clipped to ``[min_ttl_s, max_ttl_s]``. Quota = the
  distinct entries one TTL of traffic inserts (+25%). Eviction = LRU when repeats concentrate on few
  prompts (top 10% of repeated prompts get over half the repeats), else FIFO.
"""

from __future__ import annotations

import json
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router.cache import CachePolicy, CategoryCachePolicy, EncoderFiles, LoadAdaptation, ResponseCache
from router.cache_features import PAIR_FEATURES, normalise
from router.cache_online import OnlineSettings
from router.cache_verifier import HitVerifier, VerifierInfo
from router.config import RouterConfig
from router.onnx_session import make_session
from training.cache_data import fit_stream
from training.cache_replay import (
    best_at,
    pair_examples,
    prepare,
    sweep,
    threshold_rule,
    verifier_probs,
    verifier_rule,
)

THRESHOLD_GRID = tuple(np.round(np.arange(0.50, 1.0001, 0.01), 2))
CUTOFF_GRID = tuple(np.round(np.arange(0.05, 0.9901, 0.01), 2))
CANDIDATE_FLOOR = 0.5
MIN_CATEGORY_HITS = 25
VERIFIER_FILE = "cache_verifier.onnx"
Step = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Matchers:
    """What matching learned: thresholds and cutoffs per category, the pooled ones, the verifier."""

    thresholds: dict[str, float]
    global_threshold: float
    cutoffs: dict[str, float]
    global_cutoff: float
    verifier_onnx: bytes
    verifier_info: VerifierInfo
    metrics: dict[str, Any]

    def verifier(self) -> HitVerifier:
        return HitVerifier(self.verifier_onnx, self.verifier_info)


# the verifier's probability may only rise with the cosine and only fall on a disagreement (negation,
# opposite, number): a shape that holds in any domain, so what is learnt from generated pairs transfers
MONOTONE = {"cosine": 1, "negation_mismatch": -1, "opposite_flip": -1, "number_mismatch": -1}


def monotone_constraints(n_features: int) -> tuple[int, ...]:
    return tuple(MONOTONE.get(PAIR_FEATURES[i], 0) if i < len(PAIR_FEATURES) else 0 for i in range(n_features))


def fit_verifier(x: np.ndarray, y: np.ndarray, seed: int = 0, *, monotone: bool = True) -> tuple[Any, bytes]:
    """Gradient-boosted trees (XGBoost, trained on float32 so ONNX's float32 split thresholds match
    exactly) on pair features + the ONNX export (``input`` -> ``probabilities``); ``monotone``:
    the ``MONOTONE`` constraints."""
    import xgboost as xgb
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    extra = {"monotone_constraints": monotone_constraints(x.shape[1])} if monotone else {}
    model = xgb.XGBClassifier(n_estimators=150, max_depth=4, learning_rate=0.1, subsample=0.9, colsample_bytree=0.9,
                              min_child_weight=2, random_state=seed, n_jobs=1, tree_method="hist", **extra)
    model.fit(x.astype(np.float32), y)
    onx = convert_xgboost(model, initial_types=[("input", FloatTensorType([None, x.shape[1]]))], target_opset=15)
    return model, onx.SerializeToString()


def onnx_scorer(onnx_bytes: bytes) -> Callable[[np.ndarray], np.ndarray]:
    session = make_session(onnx_bytes)

    def score(x: np.ndarray) -> np.ndarray:
        (p,) = session.run(["probabilities"], {"input": x.astype(np.float32)})
        return np.asarray(p)[:, 1]

    return score


def fit_matchers(encode: Callable[[list[str]], np.ndarray], taxonomy: Sequence[str], *, target_fhr: float = 0.05,
                 seed: int = 0, shared_dir: Path | None = None, fit_rows: Sequence[dict[str, object]] | None = None,
                 step: Step = lambda _: None) -> Matchers:
    if fit_rows is None:
        rows_a = fit_stream(seed=seed, shared_dir=shared_dir)
        rows_b = fit_stream(seed=seed + 1, shared_dir=shared_dir)
    else:  # split a user stream by answer id: the verifier and the thresholds never see the same answers
        rows_a = [r for r in fit_rows if zlib.crc32(str(r["answer_id"]).encode()) % 2 == 0]
        rows_b = [r for r in fit_rows if zlib.crc32(str(r["answer_id"]).encode()) % 2 == 1]
    step(f"embedding {len(rows_a)} + {len(rows_b)} labelled stream items")
    ps_a, ps_b = prepare(rows_a, encode), prepare(rows_b, encode)
    x, y = pair_examples(ps_a, taxonomy)
    step(f"fitting the hit verifier (XGBoost -> ONNX) on {len(y)} pairs ({int(y.sum())} interchangeable)")
    _, onnx_bytes = fit_verifier(x, y, seed)
    info = VerifierInfo(file=VERIFIER_FILE, taxonomy=tuple(taxonomy), candidate_floor=CANDIDATE_FLOOR)
    score = onnx_scorer(onnx_bytes)
    verifier_probs(ps_b, score, taxonomy, CANDIDATE_FLOOR)
    step("fitting thresholds and verifier cutoffs on the held-out stream")
    t_curve = sweep(ps_b, lambda t: threshold_rule(t, ps_b), THRESHOLD_GRID)
    v_curve = sweep(ps_b, lambda c: verifier_rule(c, ps_b, CANDIDATE_FLOOR), CUTOFF_GRID)
    g_t = best_at(t_curve, target_fhr)
    g_v = best_at(v_curve, target_fhr)
    global_t = g_t[0] if g_t else 0.99
    global_c = g_v[0] if g_v else 0.99
    thresholds, cutoffs = {}, {}
    for cat in sorted(set(ps_b.categories)):
        bt, bv = best_at(t_curve, target_fhr, cat), best_at(v_curve, target_fhr, cat)
        thresholds[cat] = bt[0] if bt and int(bt[1]["hits"]) >= MIN_CATEGORY_HITS else global_t
        cutoffs[cat] = (bv[0] if bv and int(bv[1]["hits"]) >= MIN_CATEGORY_HITS and binds(v_curve, target_fhr, cat)
                        else global_c)
    # a category the policy does not know is scored through the verifier's "unknown category" column:
    # the cutoff fitted on held-out pairs of that column (e.g. ShareGPT prompts) when the data pins it
    # down, else the pooled one
    # (``global_cutoff`` is the cutoff of every category without its own, i.e. of categories unknown at
    # fitting time; ``pooled_cutoff`` keeps the best cutoff over all pairs for the record.)
    pooled_c = global_c
    unknown = [c for c in cutoffs if c not in taxonomy]
    if len(unknown) == 1:
        global_c = cutoffs[unknown[0]]
    elif unknown:  # several: no single one speaks for "unknown"; keep the pooled cutoff
        import logging

        logging.getLogger("turnout.cache").warning(
            "verifier fitting data has %d categories outside the taxonomy (%s); unknown categories use the "
            "pooled cutoff %.3f", len(unknown), ", ".join(unknown), pooled_c)
    for c in unknown:
        thresholds.pop(c)
        cutoffs.pop(c)
    metrics = {"fit_pairs": int(len(y)), "fit_positive_pairs": int(y.sum()), "stream_a": len(rows_a),
               "stream_b": len(rows_b), "global_threshold": global_t, "global_cutoff": global_c,
               "pooled_cutoff": pooled_c,
               "held_out_global_threshold": g_t[1] if g_t else None, "held_out_verifier": g_v[1] if g_v else None}
    return Matchers(thresholds, global_t, cutoffs, global_c, onnx_bytes, info, metrics)


def binds(curve: list[tuple[float, Any]], target_fhr: float, category: str) -> bool:
    """True when some point of ``curve`` breaks ``target_fhr`` for ``category``: only then do its
    pairs say where the limit lies. A category whose held-out pairs hold no hard negatives would
    otherwise get the loosest cutoff on the grid (seen with ShareGPT prompts: cutoff 0.05)."""
    return any(r.summary(category)["false_hit_rate"] > target_fhr for _, r in curve)


# ------------------------------------------------------------------------------------- economics


def _repeat_stats(prompts: list[str], tenants: list[str], ts: np.ndarray) -> tuple[list[float], float]:
    """Gaps between repeats of one (tenant, prompt), and the share of repeats on the top 10% of
    repeated prompts."""
    seen: dict[tuple[str, str], float] = {}
    counts: dict[tuple[str, str], int] = defaultdict(int)
    gaps = []
    for p, t, s in sorted(zip(prompts, tenants, ts), key=lambda r: r[2]):
        k = (t, normalise(p))
        if k in seen:
            gaps.append(float(s - seen[k]))
            counts[k] += 1
        seen[k] = float(s)
    c = sorted(counts.values(), reverse=True)
    top = sum(c[:max(1, len(c) // 10)]) / sum(c) if c else 0.0
    return gaps, top


def observed_staleness(rows: Sequence[dict[str, object]]) -> dict[str, list[float]]:
    """Per category, how long an answer to a prompt lasted before the stream shows a different one
    (rows need ``timestamp_s``)."""
    last: dict[tuple[str, str], tuple[str, float]] = {}
    out: dict[str, list[float]] = defaultdict(list)
    for r in sorted((r for r in rows if "timestamp_s" in r), key=lambda r: float(r["timestamp_s"])):  # type: ignore[arg-type]
        k = (str(r["category"]), normalise(str(r["text"])))
        t = float(r["timestamp_s"])  # type: ignore[arg-type]
        prev = last.get(k)
        if prev is None or prev[0] != r["answer_id"]:
            if prev is not None:
                out[k[0]].append(t - prev[1])
            last[k] = (str(r["answer_id"]), t)
    return out


def category_economics(table: Any, cfg: RouterConfig, matchers: Matchers, encoder: Any, *,
                       staleness: dict[str, list[float]], max_rows: int = 1500,
                       step: Step = lambda _: None) -> tuple[dict[str, CategoryCachePolicy], dict[str, Any]]:
    s = cfg.cache
    cols = {c: table.column(c).to_pylist() for c in ("prompt", "tenant", "category", "timestamp_s", "latency_ms",
                                                      "cache_hit", "error")}
    verifier = matchers.verifier()
    policies: dict[str, CategoryCachePolicy] = {}
    report: dict[str, Any] = {}
    for cat in cfg.taxonomy:
        idx = [i for i, c in enumerate(cols["category"]) if c == cat]
        if not idx:
            policies[cat] = CategoryCachePolicy(tier="skip", threshold=matchers.global_threshold, ttl_s=s.ttl_s)
            report[cat] = {"requests": 0}
            continue
        idx = sorted(idx, key=lambda i: cols["timestamp_s"][i])
        prompts = [cols["prompt"][i] for i in idx]
        tenants = [cols["tenant"][i] for i in idx]
        ts = np.array([cols["timestamp_s"][i] for i in idx], dtype=np.float64)
        lat = [cols["latency_ms"][i] for i in idx if not cols["cache_hit"][i] and cols["error"][i] is None
               and cols["latency_ms"][i] is not None]
        saved_ms = float(np.median(lat)) if lat else 0.0
        gaps, top_share = _repeat_stats(prompts, tenants, ts)
        span = max(float(ts[-1] - ts[0]), 1.0)
        ttl = float(np.quantile(gaps, 0.9)) if len(gaps) >= 5 else s.ttl_s
        stale = staleness.get(cat, [])
        if len(stale) >= 5:
            ttl = min(ttl, float(np.quantile(stale, 0.1)))
        ttl = float(np.clip(ttl, s.min_ttl_s, s.max_ttl_s))
        threshold, cutoff = matchers.thresholds.get(cat, matchers.global_threshold), matchers.cutoffs.get(cat, matchers.global_cutoff)
        probe = CachePolicy(categories={cat: CategoryCachePolicy(tier="semantic", threshold=threshold, ttl_s=ttl,
                                                                 max_entries=10**6, verifier_cutoff=cutoff)},
                            verifier=matchers.verifier_info)
        sem = _measure(ResponseCache(probe, embedder=encoder, verifier=verifier), cat, prompts[:max_rows],
                       tenants[:max_rows], ts[:max_rows], "semantic", encoder)
        ex = _measure(ResponseCache(probe), cat, prompts[:max_rows], tenants[:max_rows], ts[:max_rows], "exact", None)
        be_sem = sem["lookup_ms"] / saved_ms if saved_ms > 0 else float("inf")
        be_ex = ex["lookup_ms"] / saved_ms if saved_ms > 0 else float("inf")
        tier = "skip"
        if cfg.routes.get(cat) is not None and cfg.routes[cat].cache_tier == "skip":
            reason = "router config opts out (routes.%s.cache_tier: skip)" % cat
        elif sem["hit_rate"] > be_sem and sem["hit_rate"] > ex["hit_rate"]:
            tier, reason = "semantic", "semantic hit rate beats its break-even"
        elif ex["hit_rate"] > be_ex:
            tier, reason = "exact", "exact hit rate beats its break-even"
        else:
            reason = "no tier's hit rate beats its break-even"
        hit_rate = sem["hit_rate"] if tier == "semantic" else ex["hit_rate"]
        rate = len(idx) / span / max(1, len(set(tenants)))
        quota = int(np.clip(np.ceil(1.25 * rate * ttl * (1.0 - hit_rate)), 100, 100_000))
        policies[cat] = CategoryCachePolicy(
            tier=tier, threshold=threshold, ttl_s=ttl, max_entries=quota, eviction="lru" if top_share > 0.5 else "fifo",
            verifier_cutoff=cutoff, expected_hit_rate=round(hit_rate, 4),
            break_even_hit_rate=round(min(be_sem if tier == "semantic" else be_ex, 1e6), 6))
        report[cat] = {"requests": len(idx), "saved_model_ms": saved_ms, "semantic": sem, "exact": ex,
                       "break_even_semantic": be_sem, "break_even_exact": be_ex, "tier": tier, "reason": reason,
                       "repeat_gaps": len(gaps), "staleness_samples": len(stale), "ttl_s": ttl, "quota": quota,
                       "top10_repeat_share": top_share}
        step(f"{cat}: {tier} (hit rate semantic {sem['hit_rate']:.3f} vs break-even {be_sem:.4f}, "
             f"exact {ex['hit_rate']:.3f} vs {be_ex:.4f}), ttl {ttl:.0f}s, quota {quota}")
    return policies, report


def _measure(cache: ResponseCache, cat: str, prompts: list[str], tenants: list[str], ts: np.ndarray, tier: str,
             encoder: Any) -> dict[str, float]:
    """Replay logged prompts (lookup; on a miss insert a placeholder answer): hit rate and the mean
    lookup time, including the embedding when this tier needs one."""
    hits, spent = 0, 0.0
    for p, t, s in zip(prompts, tenants, ts):
        t0 = time.perf_counter()
        emb = encoder.encode([p])[0] if encoder is not None else None
        hit = cache.lookup(t, cat, tier, p, float(s), embedding=emb)  # type: ignore[arg-type]
        spent += time.perf_counter() - t0
        if hit is not None:
            hits += 1
        else:
            cache.insert(t, cat, tier, p, "", "logged", float(s), embedding=emb)  # type: ignore[arg-type]
    n = max(len(prompts), 1)
    return {"hit_rate": hits / n, "lookup_ms": spent * 1000.0 / n, "replayed": len(prompts)}


def train_cache(logs: str | Path, cfg: RouterConfig, out: str | Path, *, fit_rows: Sequence[dict[str, object]] | None = None,
                shared_dir: Path | None = None, seed: int = 0, online: bool = False,
                step: Step = lambda _: None) -> CachePolicy:
    """Fit and write ``cache_policy.json`` + ``cache_verifier.onnx`` + the encoder files + a report.
    ``online``: the policy enables ``router.cache_online`` (per-answer-cluster thresholds learned from
    miss feedback while serving; the fitted cutoffs are its prior, the target false-hit rate its bound)."""
    from router.log_schema import read_logs
    from training.classifier import ENCODER_FILE, ENCODER_MAX_LENGTH, TOKENIZER_FILE, encoder_source_files, load_encoder

    table = read_logs(logs)
    files = encoder_source_files()
    encoder = load_encoder(files, threads=2)
    matchers = fit_matchers(encoder.encode, cfg.taxonomy, target_fhr=cfg.cache.target_false_hit_rate, seed=seed,
                            shared_dir=shared_dir, fit_rows=fit_rows, step=step)
    step(f"replaying {table.num_rows} logged requests per category for hit rates and break-even")
    policies, report = category_economics(table, cfg, matchers, encoder,
                                          staleness=observed_staleness(fit_rows or []), step=step)
    unseen = [c for c in cfg.taxonomy if report[c].get("requests") == 0]
    if unseen:  # e.g. a custom taxonomy whose categories the logs' classifier never produced
        import logging

        logging.getLogger("turnout.cache").warning(
            "cache: no logged request has category %s (logs in %s; their categories: %s): %s skip the cache "
            "until logs with them are trained on", ", ".join(unseen), logs,
            ", ".join(sorted({str(c) for c in table.column("category").to_pylist()})) or "none",
            "it" if len(unseen) == 1 else "they")
    s = cfg.cache
    policy = CachePolicy(
        categories=policies,
        default=CategoryCachePolicy(tier="skip", threshold=matchers.global_threshold, verifier_cutoff=matchers.global_cutoff),
        verifier=matchers.verifier_info, encoder=EncoderFiles(max_length=ENCODER_MAX_LENGTH, embedding=encoder.embedding),
        load_adaptation=LoadAdaptation(start=s.load_relax_start, max_threshold_relax=s.max_threshold_relax,
                                       max_cutoff_relax=s.max_cutoff_relax),
        max_prompt_chars=s.max_prompt_chars, metrics={"matching": matchers.metrics},
        online=OnlineSettings(max_error=s.target_false_hit_rate) if online else None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cache_policy.json").write_text(policy.model_dump_json(indent=2), encoding="utf-8")
    (out / VERIFIER_FILE).write_bytes(matchers.verifier_onnx)
    (out / ENCODER_FILE).write_bytes(files[ENCODER_FILE])
    (out / TOKENIZER_FILE).write_bytes(files[TOKENIZER_FILE])
    (out / "cache_report.json").write_text(json.dumps({"matching": matchers.metrics, "categories": report,
                                                       "thresholds": matchers.thresholds, "cutoffs": matchers.cutoffs},
                                                      indent=2, default=float), encoding="utf-8")
    return policy

