"""Fast, exact-semantics replay of a labelled stream through the cache (lookup; on a miss, insert).

``prepare`` embeds the stream once and finds, per item, the ``k_neighbours`` most similar *earlier*
items of the same category (= partition). A replay then walks the stream: an exact (normalised) match
among the inserted items hits first; otherwise the ``top_k`` most similar inserted neighbours are the
candidates, exactly what ``router.cache.ResponseCache`` sees from its index, and an acceptance rule
(cosine threshold, or verifier probability) decides. A hit is false when the answer ids differ.
Sweeping a threshold costs one pass of pure Python instead of a re-embedding, which is what makes
hit-rate / false-hit-rate curves cheap. ``tests/unit/test_cache_train.py`` checks that this replay and
the real ``ResponseCache`` give the same hits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from router.cache_features import feature_matrix, normalise
from router.cache_online import Candidate, OnlineEvidence, OnlineSettings


@dataclass(slots=True)
class PreparedStream:
    texts: list[str]
    categories: list[str]
    answer_ids: list[str]
    embeddings: np.ndarray
    neighbours: np.ndarray  # (N, K) int, -1 = none; earlier items of the same category, best first
    sims: np.ndarray  # (N, K) float32
    norm: list[str]
    cacheable: list[bool]  # False: the real cache neither looks the item up nor stores it (empty prompt)
    _probs: dict[tuple[int, int], float] = field(default_factory=dict)


def prepare(rows: Sequence[dict[str, object]], encode: Callable[[list[str]], np.ndarray], *,
            k_neighbours: int = 32) -> PreparedStream:
    texts = [str(r["text"]) for r in rows]
    cats = [str(r["category"]) for r in rows]
    aids = [str(r["answer_id"]) for r in rows]
    emb = np.asarray(encode(texts), dtype=np.float32)
    n = len(texts)
    neigh = np.full((n, k_neighbours), -1, dtype=np.int64)
    sims = np.full((n, k_neighbours), -2.0, dtype=np.float32)
    for cat in sorted(set(cats)):
        idx = np.array([i for i, c in enumerate(cats) if c == cat])
        s = emb[idx] @ emb[idx].T
        s[np.triu_indices(len(idx))] = -2.0  # only earlier items
        k = min(k_neighbours, len(idx))
        top = np.argsort(-s, axis=1)[:, :k]
        neigh[idx, :k] = np.where(np.take_along_axis(s, top, 1) > -2.0, idx[top], -1)
        sims[idx, :k] = np.take_along_axis(s, top, 1)
    return PreparedStream(texts, cats, aids, emb, neigh, sims, [normalise(t) for t in texts],
                          [bool(t.strip()) for t in texts])  # router.cache.ResponseCache.cacheable


# acceptance rule: (item, [(candidate, cosine)] best first) -> chosen candidate or None
Accept = Callable[[int, list[tuple[int, float]]], int | None]


@dataclass(frozen=True, slots=True)
class ReplayResult:
    n: dict[str, int]
    hits: dict[str, int]
    false_hits: dict[str, int]

    def summary(self, category: str | None = None) -> dict[str, float | int]:
        keys = [category] if category is not None else list(self.n)
        n = sum(self.n.get(k, 0) for k in keys)
        h = sum(self.hits.get(k, 0) for k in keys)
        f = sum(self.false_hits.get(k, 0) for k in keys)
        return {"requests": n, "hits": h, "false_hits": f, "hit_rate": h / n if n else 0.0,
                "false_hit_rate": f / h if h else 0.0, "correct_hit_rate": (h - f) / n if n else 0.0}


def replay(ps: PreparedStream, accept: Accept, *, top_k: int = 4, categories: set[str] | None = None) -> ReplayResult:
    inserted = np.zeros(len(ps.texts), dtype=bool)
    exact: dict[tuple[str, str], int] = {}
    n: dict[str, int] = {}
    hits: dict[str, int] = {}
    false: dict[str, int] = {}
    for i, cat in enumerate(ps.categories):
        if categories is not None and cat not in categories:
            continue
        n[cat] = n.get(cat, 0) + 1
        if not ps.cacheable[i]:
            continue
        j = exact.get((cat, ps.norm[i]))
        if j is None:
            cands = []
            for jj, s in zip(ps.neighbours[i], ps.sims[i]):
                if jj < 0:
                    break
                if inserted[jj]:
                    cands.append((int(jj), float(s)))
                    if len(cands) == top_k:
                        break
            j = accept(i, cands) if cands else None
        if j is None:
            inserted[i] = True
            exact.setdefault((cat, ps.norm[i]), i)
            continue
        hits[cat] = hits.get(cat, 0) + 1
        if ps.answer_ids[j] != ps.answer_ids[i]:
            false[cat] = false.get(cat, 0) + 1
    return ReplayResult(n, hits, false)


def threshold_rule(thresholds: dict[str, float] | float, ps: PreparedStream) -> Accept:
    def accept(i: int, cands: list[tuple[int, float]]) -> int | None:
        t = thresholds if isinstance(thresholds, float) else thresholds[ps.categories[i]]
        return cands[0][0] if cands[0][1] >= t else None

    return accept


def verifier_probs(ps: PreparedStream, score: Callable[[np.ndarray], np.ndarray], taxonomy: Sequence[str],
                   floor: float) -> None:
    """Fill ``ps._probs`` for every (item, neighbour) pair above ``floor`` (one batched model call)."""
    pairs = [(i, int(j), float(s)) for i in range(len(ps.texts)) for j, s in zip(ps.neighbours[i], ps.sims[i])
             if j >= 0 and s >= floor and (i, int(j)) not in ps._probs]
    if not pairs:
        return
    tax = list(taxonomy)
    x = np.concatenate([feature_matrix(ps.texts[i], [ps.texts[j]], [s], tax.index(ps.categories[i])
                                       if ps.categories[i] in tax else -1, len(tax)) for i, j, s in pairs])
    p = score(x)
    for (i, j, _), v in zip(pairs, p):
        ps._probs[(i, j)] = float(v)


def verifier_rule(cutoffs: dict[str, float] | float, ps: PreparedStream, floor: float) -> Accept:
    def accept(i: int, cands: list[tuple[int, float]]) -> int | None:
        scored = [(ps._probs.get((i, j), 0.0), j) for j, s in cands if s >= floor]
        if not scored:
            return None
        p, j = max(scored, key=lambda t: t[0])
        c = cutoffs if isinstance(cutoffs, float) else cutoffs[ps.categories[i]]
        return j if p >= c else None

    return accept


@dataclass(slots=True)
class OnlineRun:
    """What ``online_replay`` did: the result, each item's decision (-1 = miss, else the served
    item), and the feedback it used."""

    result: ReplayResult
    decisions: list[int]
    explorations: int
    feedback_pairs: int


def online_replay(ps: PreparedStream, settings: OnlineSettings, mu0: dict[str, float], floor: float, *,
                  use_verifier: bool, max_error: float | None = None) -> OnlineRun:
    """The stream through ``router.cache_online`` (the rule ``ResponseCache`` runs with ``online``):
    candidates = the ``top_k`` nearest inserted items above ``floor``, prior score = the verifier's
    probability (``ps._probs``, see ``verifier_probs``) or the cosine; on a miss (or an exploration)
    the item is inserted and its answer id labels its candidates -- the only feedback used, so every
    decision depends on earlier items only. ``mu0``: the static cutoff (or threshold) per category."""
    rng = np.random.default_rng(settings.seed)
    inserted = np.zeros(len(ps.texts), dtype=bool)
    exact: dict[tuple[str, str], int] = {}
    evidence: dict[str, OnlineEvidence] = {}
    n: dict[str, int] = {}
    hits: dict[str, int] = {}
    false: dict[str, int] = {}
    decisions: list[int] = []
    explored = pairs = 0
    for i, cat in enumerate(ps.categories):
        n[cat] = n.get(cat, 0) + 1
        if not ps.cacheable[i]:
            decisions.append(-1)
            continue
        ev = evidence.setdefault(cat, OnlineEvidence(settings))
        j = exact.get((cat, ps.norm[i]))
        cands: list[Candidate] = []
        idx: list[int] = []
        if j is None:
            for jj, s in zip(ps.neighbours[i], ps.sims[i]):
                if jj < 0 or len(idx) == settings.top_k:
                    break
                if inserted[jj] and s >= floor:
                    idx.append(int(jj))
                    cands.append(Candidate(ps.answer_ids[jj], float(s),
                                           ps._probs.get((i, int(jj)), 0.0) if use_verifier else float(s)))
            if cands:
                best, _ = ev.decide(cands, mu0[cat], floor, max_error)
                j = idx[best] if best is not None else None
                if j is not None and settings.explore_rate > 0 and rng.random() < settings.explore_rate:
                    explored += 1
                    j = None
        if j is None:
            decisions.append(-1)
            inserted[i] = True
            exact.setdefault((cat, ps.norm[i]), i)
            if cands:
                ev.observe(ps.answer_ids[i], cands, floor)
                pairs += len(cands)
            continue
        decisions.append(int(j))
        hits[cat] = hits.get(cat, 0) + 1
        if ps.answer_ids[j] != ps.answer_ids[i]:
            false[cat] = false.get(cat, 0) + 1
    return OnlineRun(ReplayResult(n, hits, false), decisions, explored, pairs)


def pair_examples(ps: PreparedStream, taxonomy: Sequence[str], *, floor: float = 0.3,
                  per_item: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Verifier training pairs: each item with its ``per_item`` nearest earlier items above ``floor``;
    label 1 when the answer ids match."""
    tax = list(taxonomy)
    xs, ys = [], []
    for i in range(len(ps.texts)):
        cand = [(int(j), float(s)) for j, s in zip(ps.neighbours[i][:per_item], ps.sims[i][:per_item])
                if j >= 0 and s >= floor]
        if not cand:
            continue
        ci = tax.index(ps.categories[i]) if ps.categories[i] in tax else -1
        xs.append(feature_matrix(ps.texts[i], [ps.texts[j] for j, _ in cand], [s for _, s in cand], ci, len(tax)))
        ys += [int(ps.answer_ids[j] == ps.answer_ids[i]) for j, _ in cand]
    return np.concatenate(xs).astype(np.float32), np.array(ys, dtype=np.int64)


def sweep(ps: PreparedStream, make_rule: Callable[[float], Accept], grid: Sequence[float], *, top_k: int = 4,
          categories: set[str] | None = None) -> list[tuple[float, ReplayResult]]:
    return [(float(g), replay(ps, make_rule(float(g)), top_k=top_k, categories=categories)) for g in grid]


def best_at(curve: list[tuple[float, ReplayResult]], target_fhr: float,
            category: str | None = None) -> tuple[float, dict[str, float | int]] | None:
    """The grid point with the highest hit rate whose false-hit rate is <= ``target_fhr``."""
    ok = [(g, r.summary(category)) for g, r in curve if r.summary(category)["false_hit_rate"] <= target_fhr]
    if not ok:
        return None
    return max(ok, key=lambda t: (t[1]["hit_rate"], -t[0]))
