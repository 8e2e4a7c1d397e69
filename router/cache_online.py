"""Online per-answer-cluster acceptance thresholds learned from the feedback a cache really sees
(vCache-style; ../shared/notes/literature.md §3). The one decision rule of ``verifier+online``,
used by ``router.cache.ResponseCache`` and by the replay (``training.cache_replay.online_replay``).

Feedback. On a miss the model answers and the answer is inserted. The entries the lookup rejected
are the new entry's nearest neighbours, and their answers are known, so each (new query, neighbour)
is a labelled pair: *same answer or not* (equal normalised answer text, ``answer_cluster``). With
``explore_rate`` > 0 an accepted hit is occasionally served as a miss instead, so accepted pairs
get labels too (a model call each). Nothing else is ever used: every decision sees only pairs
revealed by earlier inserts (strictly causal).

Score. For a candidate entry of answer cluster C at cosine ``s``: ``x = prior + w * (s - s_other)``,
``prior`` = the static matcher's score (the hit verifier's probability, or the cosine without a
verifier), ``s_other`` = the best cosine among the candidates with *another* answer (the candidate
floor when there is none) -- a query close to C and far from everything else is safer.

Rule. Per cluster C: P(correct | x) = sigmoid(g * (x - t_C)), with t_C unknown. The belief over t_C
lives on a fixed grid (``GRID`` x ``slopes``): prior N(mu0, prior_sd) with mu0 = the static cutoff
fitted on other data (verifier cutoff, or cosine threshold), plus ``pooled_weight`` x the evidence of
the whole (tenant, category) partition, plus C's own evidence. A candidate is accepted when the
posterior predictive P(correct | x) >= 1 - ``max_error`` (the target false-hit rate). Memory per
cluster is one fixed-size array, whatever the number of observations (bounded); a cluster's
evidence is dropped with its last entry.

Persistence: the evidence is not stored; it is a function of the stored entries. Every replica
derives it when it adopts an entry (its own insert, another replica's via the Redis stream) and a
restarted replica re-derives it while rebuilding its index from Redis (entries in insertion order),
so it survives with the entries. Labels from exploration are the explored request's own entry, so
they survive the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import Field

from router.cache_features import normalise
from router.config import _Frozen

GRID = np.linspace(-0.5, 1.5, 101)  # threshold values over x (a probability plus a cosine margin)
_EPS = 1e-6


class OnlineSettings(_Frozen):
    """``cache_policy.json`` ``online``: enable the online rule and set its constants (fixed a
    priori, none of them fitted on an evaluated stream)."""

    max_error: float = Field(default=0.05, gt=0, lt=1)  # accept when P(wrong) <= this (target FHR)
    contrast_weight: float = Field(default=1.0, ge=0)
    prior_sd: float = Field(default=0.2, gt=0)
    pooled_weight: float = Field(default=0.3, ge=0, le=1)
    slopes: tuple[float, ...] = (20.0, 40.0)
    explore_rate: float = Field(default=0.0, ge=0, le=0.5)
    top_k: int = Field(default=8, gt=0, le=64)
    candidate_floor: float = Field(default=0.5, ge=-1, le=1)  # without a verifier (else the verifier's floor)
    seed: int = 0


def answer_cluster(answer: str) -> str:
    """Entries whose normalised answers are equal share a cluster (the serving-side 'same answer')."""
    return hashlib.sha256(normalise(answer).encode("utf-8", "replace")).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Candidate:
    """One candidate entry: its answer cluster, cosine to the query and static matcher score."""

    cluster: str
    similarity: float
    prior_score: float


def contrast_scores(cands: Sequence[Candidate], weight: float, floor: float) -> list[float]:
    """``x`` of every candidate (see the module docstring)."""
    out = []
    for c in cands:
        other = max((d.similarity for d in cands if d.cluster != c.cluster), default=floor)
        out.append(c.prior_score + weight * (c.similarity - max(other, floor)))
    return out


class OnlineEvidence:
    """Evidence of one (tenant, category) partition: per answer cluster and pooled. Not thread-safe
    on its own (the cache calls it under its lock)."""

    def __init__(self, settings: OnlineSettings) -> None:
        self.settings = settings
        self._slopes = np.asarray(settings.slopes, dtype=np.float64)[:, None]
        self.clusters: dict[str, np.ndarray] = {}
        self.pooled = np.zeros((len(settings.slopes), len(GRID)))
        self.n_pairs = 0

    def _loglik(self, x: float, same: bool) -> np.ndarray:
        p = np.clip(1.0 / (1.0 + np.exp(-self._slopes * (x - GRID[None, :]))), _EPS, 1 - _EPS)
        return np.log(p) if same else np.log1p(-p)

    def observe(self, query_cluster: str, cands: Sequence[Candidate], floor: float) -> None:
        """Labelled pairs of one miss: the new entry (answer ``query_cluster``) vs the candidates.
        A different answer is evidence for both clusters (each came that close to the other)."""
        for c, x in zip(cands, contrast_scores(cands, self.settings.contrast_weight, floor)):
            same = c.cluster == query_cluster
            ll = self._loglik(x, same)
            self.pooled += ll
            self.n_pairs += 1
            for cl in (c.cluster,) if same else (c.cluster, query_cluster):
                if cl in self.clusters:
                    self.clusters[cl] += ll
                else:
                    self.clusters[cl] = ll.copy()

    def p_correct_many(self, clusters: Sequence[str], xs: Sequence[float], mu0: float) -> np.ndarray:
        """Posterior predictive P(correct | x) of each (cluster, x), in one numpy pass."""
        s = self.settings
        base = -0.5 * ((GRID[None, :] - mu0) / s.prior_sd) ** 2 + s.pooled_weight * self.pooled  # (slopes, grid)
        zero = np.zeros_like(base)
        logp = base[None] + np.stack([self.clusters.get(c, zero) for c in clusters])  # (K, slopes, grid)
        w = np.exp(logp - logp.max(axis=(1, 2), keepdims=True))
        x = np.asarray(xs, dtype=np.float64)[:, None, None]
        p = 1.0 / (1.0 + np.exp(-self._slopes[None] * (x - GRID[None, None, :])))
        return (w * p).sum(axis=(1, 2)) / w.sum(axis=(1, 2))

    def p_correct(self, cluster: str, x: float, mu0: float) -> float:
        return float(self.p_correct_many([cluster], [x], mu0)[0])

    def decide(self, cands: Sequence[Candidate], mu0: float, floor: float,
               max_error: float | None = None) -> tuple[int | None, list[float]]:
        """Index of the accepted candidate (highest P(correct) among those clearing the bound) or
        None, and every candidate's P(correct)."""
        if not cands:
            return None, []
        bound = 1.0 - (self.settings.max_error if max_error is None else max_error)
        xs = contrast_scores(cands, self.settings.contrast_weight, floor)
        probs = self.p_correct_many([c.cluster for c in cands], xs, mu0).tolist()
        best = max(range(len(probs)), key=probs.__getitem__)
        return (best if probs[best] >= bound else None), probs

    def drop(self, cluster: str) -> None:
        self.clusters.pop(cluster, None)

    def nbytes(self) -> int:
        return int(self.pooled.nbytes + sum(a.nbytes for a in self.clusters.values()))


__all__ = ["GRID", "Candidate", "OnlineEvidence", "OnlineSettings", "answer_cluster", "contrast_scores"]
