"""Off-policy comparison of two bundles on the same held-out logs, vectorised for millions of rows.

``training.evaluation.ope_batch`` loops in Python per row; here the target probabilities of a bundle
are computed for a whole batch at once (candidate sets as a mask over the catalogue), so 3M held-out
rows take seconds. ``test_retrain_ope`` checks it equals ``ope_batch`` row by row.

The bootstrap is split into fixed chunks with their own seeds (``bootstrap_chunk``), so the local
job (chunks in a loop) and the Ray job (one task per chunk) draw exactly the same resamples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from router.bundle import Bundle
from router.config import Exploration, Preference
from router.decision import Router
from router.features import featurize
from router.policy import utilities
from training.ope import OPEBatch, dr_terms, ipw_terms

BOOTSTRAP_CHUNK = 25  # resamples per chunk (one Ray task each)


def context_features(table: pa.Table, classifier: Any, batch: int = 4096) -> np.ndarray:
    """``router.features.featurize`` of every row, computed once per distinct (prompt, n_turns).

    Serving traffic repeats prompts (retries, popular questions, cache hits); the features are a pure
    function of the prompt, turns and the classifier, so deduplication changes nothing but the time.
    """
    import pyarrow.compute as pc

    keys = pc.binary_join_element_wise(table.column("prompt"), pc.cast(table.column("n_turns"), pa.string()), "\x00")
    uniq = pc.unique(keys)
    pos = pc.index_in(keys, value_set=uniq).to_numpy()
    first = np.full(len(uniq), -1, dtype=np.int64)
    order = np.arange(len(pos))[::-1]
    first[pos[order]] = order  # first occurrence of each key (last write wins, reversed)
    prompts = table.column("prompt").take(pa.array(first)).to_pylist()
    turns = table.column("n_turns").take(pa.array(first)).to_pylist()
    probs = np.concatenate([classifier.predict_proba(prompts[i:i + batch]) for i in range(0, len(prompts), batch)])
    feats = np.stack([featurize(p, pr, t) for p, pr, t in zip(prompts, probs, turns)])
    return feats[pos]


def candidate_mask(table: pa.Table, models: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(n, K) bool mask of each row's candidates and (n,) index of the logged model in ``models``."""
    import pyarrow.compute as pc

    vs = pa.array(list(models))
    cands = table.column("candidates").combine_chunks()
    flat = pc.index_in(cands.flatten(), value_set=vs)
    action = pc.index_in(table.column("model"), value_set=vs)
    if flat.null_count or action.null_count:
        raise ValueError(f"logs name candidate model(s) outside the catalogue {list(models)}")
    row = pc.list_parent_indices(cands).to_numpy()
    mask = np.zeros((table.num_rows, len(models)), dtype=bool)
    mask[row, flat.to_numpy().astype(np.int64)] = True
    return mask, action.to_numpy().astype(np.int64)


def masked_action_probs(util: np.ndarray, mask: np.ndarray, exploration: Exploration) -> np.ndarray:
    """``router.policy.action_probs`` over each row's candidates, zero elsewhere; rows (n, K)."""
    u = np.where(mask, util.astype(np.float64), -np.inf)
    k = mask.sum(axis=1, keepdims=True).astype(np.float64)
    if exploration.kind == "softmax":
        z = np.exp((u - u.max(axis=1, keepdims=True)) / exploration.temperature)
        z = np.where(mask, z, 0.0)
        return z / z.sum(axis=1, keepdims=True)
    probs = np.where(mask, exploration.epsilon / k, 0.0)
    probs[np.arange(u.shape[0]), np.argmax(u, axis=1)] += 1.0 - exploration.epsilon
    return probs


METRICS = ("utility", "quality", "cost_usd", "latency_ms")  # "utility" (the router's objective) gates


@dataclass(frozen=True, slots=True)
class Scales:
    """One yardstick for both bundles: the current bundle's preference and reference scales, so
    utility = quality - w_cost * cost / ref_cost - w_latency * latency / ref_latency means the same."""

    preference: Preference
    ref_cost_usd: float
    ref_latency_ms: float

    @classmethod
    def of(cls, bundle: Bundle) -> Scales:
        info = bundle.manifest.policy
        return cls(bundle.manifest.router.preference, info.ref_cost_usd, info.ref_latency_ms)

    def utility(self, quality: np.ndarray, cost: np.ndarray, latency: np.ndarray) -> np.ndarray:
        p = self.preference
        return p.quality * quality - p.cost * cost / self.ref_cost_usd - p.latency * latency / self.ref_latency_ms


@dataclass(frozen=True, slots=True)
class BundleTarget:
    """A bundle's policy on held-out rows: pi(a|x) over the catalogue (n, K) and its reward model
    per metric (n, K) -- quality clipped to [0, 1]."""

    probs: np.ndarray
    values: dict[str, np.ndarray]


def bundle_target(bundle: Bundle, features: np.ndarray, mask: np.ndarray, scales: Scales,
                  batch: int = 65_536) -> BundleTarget:
    """The bundle decides with its own preference and exploration (as it would serve); its heads are
    the DM part of DR for each metric, valued on the common ``scales``."""
    router = Router(bundle)
    cfg, info = bundle.manifest.router, bundle.manifest.policy
    probs: list[np.ndarray] = []
    vals: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
    for i in range(0, features.shape[0], batch):
        h = router.scorer.predict_batch(features[i:i + batch])
        u = utilities(h, cfg.preference, info.ref_cost_usd, info.ref_latency_ms)
        probs.append(masked_action_probs(u, mask[i:i + batch], cfg.exploration))
        q = np.clip(h.quality.astype(np.float64), 0.0, 1.0)
        c, lat = h.cost_usd.astype(np.float64), h.latency_ms.astype(np.float64)
        for m, v in (("utility", scales.utility(q, c, lat)), ("quality", q), ("cost_usd", c), ("latency_ms", lat)):
            vals[m].append(v)
    return BundleTarget(np.concatenate(probs), {m: np.concatenate(v) for m, v in vals.items()})


def logged_rewards(table: pa.Table, scales: Scales) -> dict[str, np.ndarray]:
    def col(name: str) -> np.ndarray:
        return np.nan_to_num(table.column(name).to_numpy(zero_copy_only=False).astype(np.float64), nan=0.0)

    q, c, lat = col("quality"), col("cost_usd"), col("latency_ms")
    return {"utility": scales.utility(q, c, lat), "quality": q, "cost_usd": c, "latency_ms": lat}


def ope_batch_from_target(target: BundleTarget, action: np.ndarray, reward: np.ndarray,
                          propensity: np.ndarray, metric: str = "quality") -> OPEBatch:
    rows = np.arange(action.shape[0])
    v = target.values[metric]
    return OPEBatch(reward=reward.astype(np.float64), propensity=propensity.astype(np.float64),
                    target_prob=target.probs[rows, action], q_logged=v[rows, action],
                    q_target=np.sum(target.probs * v, axis=1))


def effective_sample_size(b: OPEBatch) -> float:
    w = b.weight
    return float(w.sum() ** 2 / max(float((w ** 2).sum()), 1e-12))


def bootstrap_chunk(terms: np.ndarray, seed: int, chunk: int, n_rep: int) -> np.ndarray:
    """``n_rep`` bootstrap resamples of the column means of ``terms`` (n, m); seeded by (seed, chunk)
    so every executor draws the same resamples."""
    rng = np.random.default_rng([seed, chunk])
    n = terms.shape[0]
    out = np.empty((n_rep, terms.shape[1]))
    for r in range(n_rep):
        counts = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)  # = terms[idx], no copy
        out[r] = counts @ terms / n
    return out


def chunk_plan(n_bootstrap: int) -> list[tuple[int, int]]:
    """[(chunk index, resamples)] covering ``n_bootstrap`` resamples."""
    plan, done, c = [], 0, 0
    while done < n_bootstrap:
        k = min(BOOTSTRAP_CHUNK, n_bootstrap - done)
        plan.append((c, k))
        done, c = done + k, c + 1
    return plan


def run_bootstrap_local(terms: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray:
    return np.concatenate([bootstrap_chunk(terms, seed, c, k) for c, k in chunk_plan(n_bootstrap)])


_TERMS = ("ips", "dm", "dr", "wr", "w")


def term_matrix(batches: dict[str, tuple[OPEBatch, OPEBatch]]) -> tuple[np.ndarray, list[str]]:
    """(n, m) float64 of every per-row term the comparison needs (one bootstrap pass covers all):
    per metric and policy IPS, DM and DR terms, w*r and w (SNIPS = ratio of their means), and the
    paired DR difference."""
    cols, names = [], []
    for metric, (cur, cand) in batches.items():
        dr = {}
        for who, b in (("current", cur), ("candidate", cand)):
            dr[who] = dr_terms(b)
            for name, v in zip(_TERMS, (ipw_terms(b), b.q_target, dr[who], b.weight * b.reward, b.weight)):
                cols.append(v)
                names.append(f"{metric}.{who}.{name}")
        cols.append(dr["candidate"] - dr["current"])
        names.append(f"{metric}.difference")
    return np.column_stack(cols).astype(np.float64), names


def summarize(terms: np.ndarray, reps: np.ndarray, names: Sequence[str], alpha: float) -> dict[str, Any]:
    """{metric: {current: {ips, snips, dm, dr}, candidate: {...}, difference}} with percentile CIs."""
    col = {n: i for i, n in enumerate(names)}
    mean = terms.mean(axis=0)

    def ci(values: np.ndarray, point: float) -> dict[str, float]:
        lo, hi = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        return {"estimate": float(point), "ci_low": float(lo), "ci_high": float(hi)}

    out: dict[str, Any] = {}
    for metric in dict.fromkeys(n.split(".")[0] for n in names):
        m: dict[str, Any] = {}
        for who in ("current", "candidate"):
            k = f"{metric}.{who}."
            est = {e: ci(reps[:, col[k + e]], mean[col[k + e]]) for e in ("ips", "dm", "dr")}
            est["snips"] = ci(reps[:, col[k + "wr"]] / np.maximum(reps[:, col[k + "w"]], 1e-12),
                              mean[col[k + "wr"]] / max(mean[col[k + "w"]], 1e-12))
            m[who] = est
        m["difference"] = ci(reps[:, col[f"{metric}.difference"]], mean[col[f"{metric}.difference"]])
        out[metric] = m
    return out


def per_category(categories: Sequence[str], terms: np.ndarray, names: Sequence[str],
                 metric: str = "utility") -> dict[str, dict[str, float]]:
    """DR value of each policy per logged category (point estimates; rows are few per category)."""
    col = {n: i for i, n in enumerate(names)}
    cats = np.asarray(categories)
    out = {}
    for c in sorted(set(cats.tolist())):
        m = cats == c
        out[c] = {"n": int(m.sum()), "current": float(terms[m, col[f"{metric}.current.dr"]].mean()),
                  "candidate": float(terms[m, col[f"{metric}.candidate.dr"]].mean()),
                  "difference": float(terms[m, col[f"{metric}.difference"]].mean())}
    return out


def calibration(pred: np.ndarray, observed: np.ndarray, n_bins: int = 10) -> dict[str, Any]:
    """Reliability of a quality head on the logged action: mean predicted vs observed per quantile bin."""
    edges = np.unique(np.quantile(pred, np.linspace(0, 1, n_bins + 1)))
    which = np.clip(np.searchsorted(edges, pred, side="right") - 1, 0, max(len(edges) - 2, 0))
    bins = []
    for b in range(max(len(edges) - 1, 1)):
        m = which == b
        if m.any():
            bins.append({"predicted": float(pred[m].mean()), "observed": float(observed[m].mean()), "n": int(m.sum())})
    ece = sum(abs(x["predicted"] - x["observed"]) * x["n"] for x in bins) / max(len(pred), 1)
    return {"bins": bins, "ece": float(ece)}
