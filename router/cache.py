"""Category-aware response cache: exact tier, semantic tier (ANN + optional hit verifier), skip.

Layout (../shared/notes/literature.md §3, "Category-Aware Semantic Caching"): an in-process index
per (tenant, category) partition (``router.cache_index``) holds only vectors; the answers live in a
document store (``router.cache_store``: in-process dict, or Redis shared by every gateway replica).

* exact: key = sha256 of the normalised last user turn, bound to the exact earlier conversation
  (system prompt, previous turns), so a cached answer is never reused under a different context;
* semantic: the nearest cached prompts of the partition (same context only) are candidates; a
  candidate is served when its cosine clears the category's threshold, or -- with a hit verifier
  in the policy -- when the verifier accepts it (``router.cache_verifier``);
* skip: nothing is read or written. Empty prompts and prompts over ``max_prompt_chars`` skip too.

With ``online`` in the policy the semantic tier decides with ``router.cache_online`` instead: per
answer-cluster thresholds learned from the feedback of earlier inserts (a new entry's answer labels
the neighbours a lookup of its prompt weighed), so ``insert`` -- i.e. ``Router.remember`` after a
miss -- is the serving feedback hook and needs no extra call.

Guarantees: a partition never sees another tenant's entries and every served document is checked
again for tenant, category, context and expiry; entries expire ``ttl_s`` after insertion and a hit
never extends that; a store failure or a corrupted document is a miss, never an exception.

Load adaptation: ``lookup(..., load=L)`` with ``L`` = in-flight / capacity of the model that would
answer. From ``load.start`` up to full load the category's threshold (and the verifier's cutoff)
relax linearly, by at most ``max_threshold_relax`` (``max_cutoff_relax``). The trade-off is
deliberate and bounded: an overloaded model sheds the requests whose cached answers are *nearly*
good enough -- more hits and less queueing, bought with a higher false-hit rate for exactly those
requests (``benchmarks/cache.py`` measures both). Below ``start`` nothing changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import zlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError

from router.cache_features import exact_key, normalise
from router.cache_index import PartitionIndex
from router.cache_online import Candidate, OnlineEvidence, OnlineSettings, answer_cluster
from router.cache_store import CachedDoc, CacheStoreSettings, MemoryDocumentStore, RedisDocumentStore, doc_key
from router.cache_verifier import HitVerifier, VerifierInfo
from router.config import RouterConfig, _Frozen
from router.errors import ArtifactError
from router.types import LEGACY_EMBEDDING, CacheTier, EmbeddingKind, FloatArray

log = logging.getLogger("turnout.cache")
EMBED_DIM = 1024
POLICY_VERSION = 2


class CategoryCachePolicy(_Frozen):
    """One category's cache policy. ``threshold``: minimum cosine for a semantic hit without a
    verifier; ``verifier_cutoff``: minimum verifier probability (None = thresholds only)."""

    tier: CacheTier = "skip"
    threshold: float = Field(default=0.9, gt=0, le=1)
    ttl_s: float = Field(default=3600.0, gt=0)
    max_entries: int = Field(default=10_000, gt=0)
    eviction: Literal["fifo", "lru"] = "fifo"
    verifier_cutoff: float | None = Field(default=None, ge=0, le=1)
    expected_hit_rate: float | None = Field(default=None, ge=0, le=1)  # measured on logs by `train cache`
    break_even_hit_rate: float | None = Field(default=None, ge=0)  # lookup cost / saved model cost


class LoadAdaptation(_Frozen):
    """Relax thresholds for an overloaded answering model (see the module docstring)."""

    start: float = Field(default=0.8, ge=0)
    max_threshold_relax: float = Field(default=0.04, ge=0, le=0.5)
    max_cutoff_relax: float = Field(default=0.15, ge=0, le=0.5)

    def fraction(self, load: float | None) -> float:
        """0 below ``start``, 1 at full load (1.0) and above."""
        if load is None or not np.isfinite(load) or load <= self.start:
            return 0.0
        return 1.0 if self.start >= 1.0 else float(min(1.0, (load - self.start) / (1.0 - self.start)))


class EncoderFiles(_Frozen):
    """Bundle files of the sentence encoder the semantic tier embeds with."""

    model_file: str = "encoder.onnx"
    tokenizer_file: str = "tokenizer.json"
    max_length: int = Field(default=128, gt=0)
    embedding: EmbeddingKind = LEGACY_EMBEDDING  # what thresholds/verifier were fitted on (absent: older bundles)


class CachePolicy(_Frozen):
    """Contents of ``cache_policy.json``: one policy per category; ``default`` for the rest."""

    version: int = POLICY_VERSION
    categories: dict[str, CategoryCachePolicy] = Field(default_factory=dict)
    default: CategoryCachePolicy = CategoryCachePolicy()
    verifier: VerifierInfo | None = None
    encoder: EncoderFiles | None = None
    load_adaptation: LoadAdaptation = LoadAdaptation()
    max_prompt_chars: int = Field(default=4000, gt=0)
    top_k: int = Field(default=4, gt=0, le=64)
    online: OnlineSettings | None = None  # learn per-answer-cluster thresholds from feedback (router.cache_online)
    metrics: dict[str, Any] = Field(default_factory=dict)

    def for_category(self, category: str) -> CategoryCachePolicy:
        return self.categories.get(category, self.default)

    @classmethod
    def from_router_config(cls, cfg: RouterConfig) -> CachePolicy:
        s = cfg.cache
        return cls(
            categories={c: CategoryCachePolicy(tier=cfg.cache_tier(c), threshold=s.similarity_threshold, ttl_s=s.ttl_s,
                                               max_entries=s.max_entries_per_partition, eviction=s.eviction)
                        for c in cfg.taxonomy},
            load_adaptation=LoadAdaptation(start=s.load_relax_start, max_threshold_relax=s.max_threshold_relax,
                                max_cutoff_relax=s.max_cutoff_relax),
            max_prompt_chars=s.max_prompt_chars)

    @classmethod
    def load(cls, path: Path) -> CachePolicy:
        try:
            return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, ValidationError, UnicodeDecodeError) as e:
            raise ArtifactError(f"{path}: invalid cache policy: {e}") from e


class TrigramEmbedder:
    """Hashed character-trigram vectors, L2-normalised (crc32: the same in every process). The
    fallback embedder when no sentence encoder is configured: catches rephrasings that keep most
    characters, not paraphrases."""

    name = "trigram-1024"
    dim = EMBED_DIM

    def encode(self, texts: Sequence[str]) -> FloatArray:
        return np.stack([embed(t) for t in texts]) if texts else np.zeros((0, EMBED_DIM), dtype=np.float32)


def embed(text: str) -> FloatArray:
    """Hashed character-trigram vector, L2-normalised (deterministic across processes: crc32)."""
    t = f"  {normalise(text)}  "
    vec = np.zeros(EMBED_DIM, dtype=np.float32)
    for i in range(len(t) - 2):
        vec[zlib.crc32(t[i:i + 3].encode("utf-8", "replace")) % EMBED_DIM] += 1.0
    norm = float(np.linalg.norm(vec))
    return vec / norm if norm else vec


def context_key(context: str) -> str:
    return hashlib.sha256(context.encode("utf-8", "replace")).hexdigest()[:32] if context else ""


@dataclass(frozen=True, slots=True)
class CacheHit:
    answer: str
    model: str
    similarity: float
    tier: CacheTier
    verifier_probability: float | None = None


@dataclass(slots=True)
class _Partition:
    index: PartitionIndex | None
    entries: OrderedDict[str, float] = field(default_factory=OrderedDict)  # key -> expires_s, insertion order
    # online rule only: key -> (answer cluster, context key), entries per cluster, the partition's evidence
    meta: dict[str, tuple[str, str]] = field(default_factory=dict)
    cluster_size: dict[str, int] = field(default_factory=dict)
    evidence: OnlineEvidence | None = None

    def unlink(self, key: str) -> None:
        """Forget ``key``'s cluster membership; a cluster's evidence goes with its last entry."""
        m = self.meta.pop(key, None)
        if m is None:
            return
        left = self.cluster_size.get(m[0], 1) - 1
        if left > 0:
            self.cluster_size[m[0]] = left
            return
        self.cluster_size.pop(m[0], None)
        if self.evidence is not None:
            self.evidence.drop(m[0])


@dataclass(slots=True)
class CacheStats:
    lookups: int = 0
    exact_hits: int = 0
    semantic_hits: int = 0
    verifier_rejections: int = 0
    online_rejections: int = 0
    explorations: int = 0  # accepted hits served as misses to label them (online explore_rate)
    feedback_pairs: int = 0  # labelled pairs learned from inserts (online)
    skipped_prompts: int = 0
    expired_dropped: int = 0
    evicted: int = 0


class ResponseCache:
    """The cache of one gateway replica; see the module docstring. Thread-safe (one lock around the
    in-process partitions; the store is called outside it)."""

    def __init__(self, policy: CachePolicy, store: MemoryDocumentStore | RedisDocumentStore | None = None, *,
                 embedder: Any | None = None, verifier: HitVerifier | None = None, follow: bool = False,
                 follow_block_ms: int = 500, background_index_builds: bool = False) -> None:
        self.policy = policy
        self.background_index_builds = background_index_builds  # see router.cache_index
        self.store = store if store is not None else MemoryDocumentStore()
        self.embedder = embedder if embedder is not None else TrigramEmbedder()
        self.dim = int(getattr(self.embedder, "dim", 0) or self.embedder.encode(["x"]).shape[1])
        self.verifier = verifier
        self.stats = CacheStats()
        self._parts: dict[tuple[str, str], _Partition] = {}
        self._lock = threading.RLock()
        self._pos: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._follow_block_ms = follow_block_ms
        self._explore = np.random.default_rng(policy.online.seed) if policy.online is not None else None
        if self.store.kind == "redis":
            self.rebuild()
            if follow:
                self._thread = threading.Thread(target=self._follow, name="turnout-cache-follow", daemon=True)
                self._thread.start()

    # -- public API ------------------------------------------------------------------------------
    def cacheable(self, text: str) -> bool:
        return bool(text.strip()) and len(text) <= self.policy.max_prompt_chars

    def embed(self, text: str) -> FloatArray:
        return np.asarray(self.embedder.encode([text])[0], dtype=np.float32)

    def lookup(self, tenant: str, category: str, tier: CacheTier, text: str, now_s: float, *, context: str = "",
               embedding: np.ndarray | None = None, load: float | None = None) -> CacheHit | None:
        """A valid cached answer for ``text`` in (tenant, category), or None. Never raises for a
        store or verifier failure (those are misses)."""
        if tier == "skip":
            return None
        if not self.cacheable(text):
            self.stats.skipped_prompts += 1
            return None
        self.stats.lookups += 1
        key = doc_key(tenant, category, exact_key(text, context))
        doc = self._fetch([key], tenant, category, now_s)[0]
        if doc is not None:
            self.stats.exact_hits += 1
            self._touch(tenant, category, key)
            return CacheHit(doc.answer, doc.model, 1.0, "exact")
        if tier != "semantic":
            return None
        return self._semantic(tenant, category, text, now_s, context_key(context), embedding, load)

    def insert(self, tenant: str, category: str, tier: CacheTier, text: str, answer: str, model: str, now_s: float,
               *, context: str = "", embedding: np.ndarray | None = None) -> None:
        if tier == "skip" or not self.cacheable(text):
            return
        pol = self.policy.for_category(category)
        vector = None
        if tier == "semantic":
            vector = np.asarray(embedding if embedding is not None else self.embed(text), dtype=np.float32)
        doc = CachedDoc(doc_key(tenant, category, exact_key(text, context)), tenant, category, context_key(context),
                        text, answer, model, now_s, now_s + pol.ttl_s, vector)
        self.store.put(doc, pol.ttl_s)
        self._learn(doc)
        self._adopt(doc)

    def rebuild(self) -> int:
        """Re-index every document in the store (start-up, or after the store was unreachable).
        Returns the number of documents adopted."""
        pos = self.store.stream_position()
        n = 0
        docs = self.store.scan()
        if self.policy.online is not None:  # replay the feedback in insertion order: evidence = f(entries)
            docs = iter(sorted(docs, key=lambda d: d.created_s))
        for doc in docs:
            self._learn(doc)
            self._adopt(doc)
            n += 1
        self._pos = pos
        return n

    def sync(self, block_ms: int | None = None) -> int:
        """Adopt the entries other replicas inserted since the last sync; returns how many."""
        if self._pos is None:
            return self.rebuild() if self.store.stream_position() is not None else 0
        res = self.store.read_stream(self._pos, block_ms)
        if res is None:
            self._pos = None  # lost the stream: rebuild once the store is back
            return 0
        self._pos, keys = res
        docs = [d for d in self.store.get_many(list(dict.fromkeys(keys))) if d is not None]
        for d in docs:
            self._learn(d)
            self._adopt(d)
        return len(docs)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.store.close()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(p.entries) for p in self._parts.values())

    # -- internals -------------------------------------------------------------------------------
    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                if self._pos is None and self.store.stream_position() is None:
                    self._stop.wait(0.5)
                    continue
                self.sync(block_ms=self._follow_block_ms)
            except Exception as e:  # the follower must survive anything; a miss is the worst outcome
                log.warning("cache follower: %s: %s", type(e).__name__, e)
                self._stop.wait(0.5)

    def _semantic(self, tenant: str, category: str, text: str, now_s: float, ctx: str, embedding: np.ndarray | None,
                  load: float | None) -> CacheHit | None:
        with self._lock:
            part = self._parts.get((tenant, category))
            if part is None or part.index is None or not len(part.index):
                return None
        vec = np.asarray(embedding if embedding is not None else self.embed(text), dtype=np.float32)
        if vec.shape != (self.dim,):
            return None
        pol = self.policy.for_category(category)
        relax = self.policy.load_adaptation.fraction(load)
        if self.policy.online is not None:
            return self._semantic_online(part, tenant, category, text, now_s, ctx, vec, pol, relax)
        use_verifier = self.verifier is not None and pol.verifier_cutoff is not None
        threshold = pol.threshold - relax * self.policy.load_adaptation.max_threshold_relax
        floor = self.verifier.info.candidate_floor if use_verifier else threshold  # type: ignore[union-attr]
        valid = self._valid(part, vec, self.policy.top_k, floor, tenant, category, now_s, ctx)
        if not valid:
            return None
        if not use_verifier:
            doc, sim = valid[0]
            self.stats.semantic_hits += 1
            self._touch(tenant, category, doc.key)
            return CacheHit(doc.answer, doc.model, sim, "semantic")
        probs = self.verifier.score(text, [d.text for d, _ in valid], [s for _, s in valid], category)  # type: ignore[union-attr]
        best = int(np.argmax(probs))
        cutoff = pol.verifier_cutoff - relax * self.policy.load_adaptation.max_cutoff_relax  # type: ignore[operator]
        if float(probs[best]) < cutoff:
            self.stats.verifier_rejections += 1
            return None
        doc, sim = valid[best]
        self.stats.semantic_hits += 1
        self._touch(tenant, category, doc.key)
        return CacheHit(doc.answer, doc.model, sim, "semantic", float(probs[best]))

    # -- online per-cluster thresholds (router.cache_online) ----------------------------------------
    def _online_params(self, pol: CategoryCachePolicy, relax: float) -> tuple[bool, float, float]:
        """(use the verifier, prior mean mu0, candidate floor) of the online rule for a category."""
        la = self.policy.load_adaptation
        if self.verifier is not None and pol.verifier_cutoff is not None:
            return True, pol.verifier_cutoff - relax * la.max_cutoff_relax, self.verifier.info.candidate_floor
        return False, pol.threshold - relax * la.max_threshold_relax, self.policy.online.candidate_floor  # type: ignore[union-attr]

    def _candidates(self, query: str, docs: list[tuple[CachedDoc, float]], category: str,
                    use_verifier: bool) -> list[Candidate]:
        probs = (self.verifier.score(query, [d.text for d, _ in docs], [s for _, s in docs], category)  # type: ignore[union-attr]
                 if use_verifier else [s for _, s in docs])
        return [Candidate(answer_cluster(d.answer), float(s), float(p)) for (d, s), p in zip(docs, probs)]

    def _semantic_online(self, part: _Partition, tenant: str, category: str, text: str, now_s: float, ctx: str,
                         vec: np.ndarray, pol: CategoryCachePolicy, relax: float) -> CacheHit | None:
        online = self.policy.online
        assert online is not None
        use_verifier, mu0, floor = self._online_params(pol, relax)
        valid = self._valid(part, vec, max(online.top_k, self.policy.top_k), floor, tenant, category, now_s, ctx)
        if not valid:
            return None
        cand = self._candidates(text, valid, category, use_verifier)
        with self._lock:
            ev = part.evidence if part.evidence is not None else OnlineEvidence(online)
            best, probs = ev.decide(cand, mu0, floor)
        if best is None:
            self.stats.online_rejections += 1
            return None
        if online.explore_rate > 0 and self._explore is not None:
            with self._lock:
                explore = self._explore.random() < online.explore_rate
            if explore:
                self.stats.explorations += 1  # served as a miss: the model's answer labels this candidate
                return None
        doc, sim = valid[best]
        self.stats.semantic_hits += 1
        self._touch(tenant, category, doc.key)
        return CacheHit(doc.answer, doc.model, sim, "semantic", probs[best])

    def _learn(self, doc: CachedDoc) -> None:
        """Online feedback of one new entry: its answer vs the answers of the entries a lookup of its
        prompt would have weighed (its live nearest neighbours, same context) -- labelled pairs."""
        online = self.policy.online
        if online is None or doc.vector is None or doc.vector.shape != (self.dim,):
            return
        use_verifier, _, floor = self._online_params(self.policy.for_category(doc.category), 0.0)
        with self._lock:
            part = self._parts.get((doc.tenant, doc.category))
            if part is None or part.index is None or not len(part.index) or doc.key in part.meta:
                return  # nothing to compare with, or already learned (e.g. our own insert echoed by the stream)
            keys, sims = part.index.search(doc.vector, max(online.top_k, self.policy.top_k))
            near = [(k, float(s), part.meta[k][0]) for k, s in zip(keys, sims)
                    if s >= floor and k != doc.key and k in part.meta and part.meta[k][1] == doc.context_key
                    and part.entries.get(k, 0.0) > doc.created_s]
        if not near:
            return
        if use_verifier:  # the verifier reads the neighbours' prompts: fetch them (outside the lock)
            found = self.store.get_many([k for k, _, _ in near])
            live = [(d, s) for d, (_, s, _) in zip(found, near) if d is not None]
            cand = self._candidates(doc.text, live, doc.category, True) if live else []
        else:
            cand = [Candidate(c, s, s) for _, s, c in near]
        if not cand:
            return
        with self._lock:
            if part.evidence is None:
                part.evidence = OnlineEvidence(online)
            part.evidence.observe(answer_cluster(doc.answer), cand, floor)
            self.stats.feedback_pairs += len(cand)

    def _valid(self, part: _Partition, vec: np.ndarray, k: int, floor: float, tenant: str, category: str,
               now_s: float, ctx: str) -> list[tuple[CachedDoc, float]]:
        """The nearest ``k`` entries at or above ``floor`` whose documents exist, are live and share ``ctx``."""
        with self._lock:
            keys, sims = part.index.search(vec, k)
        cands = [(key, s) for key, s in zip(keys, sims) if s >= floor]
        if not cands:
            return []
        docs = self._fetch([key for key, _ in cands], tenant, category, now_s)
        return [(d, s) for d, (_, s) in zip(docs, cands) if d is not None and d.context_key == ctx]

    def _fetch(self, keys: list[str], tenant: str, category: str, now_s: float) -> list[CachedDoc | None]:
        """Documents that may be served: right tenant/category and not expired; the rest are None
        (expired or foreign ones are dropped from the index)."""
        docs = self.store.get_many(keys)
        out: list[CachedDoc | None] = []
        for key, doc in zip(keys, docs):
            if doc is not None and doc.tenant == tenant and doc.category == category and doc.expires_s > now_s:
                out.append(doc)
                continue
            if doc is not None and doc.expires_s <= now_s:
                self.stats.expired_dropped += 1
                self._forget(tenant, category, [key], delete=True)
            elif doc is None:
                self._forget(tenant, category, [key], delete=False)
            out.append(None)
        return out

    def _touch(self, tenant: str, category: str, key: str) -> None:
        if self.policy.for_category(category).eviction != "lru":
            return
        with self._lock:
            part = self._parts.get((tenant, category))
            if part is not None and key in part.entries:
                part.entries.move_to_end(key)

    def _adopt(self, doc: CachedDoc) -> None:
        """Index a document (ours or another replica's) and enforce the partition's quota."""
        pol = self.policy.for_category(doc.category)
        evicted: list[str] = []
        with self._lock:
            part = self._parts.get((doc.tenant, doc.category))
            if part is None:
                part = self._parts[(doc.tenant, doc.category)] = _Partition(None)
            part.entries.pop(doc.key, None)
            part.entries[doc.key] = doc.expires_s
            if self.policy.online is not None:
                part.unlink(doc.key)
                cl = answer_cluster(doc.answer)
                part.meta[doc.key] = (cl, doc.context_key)
                part.cluster_size[cl] = part.cluster_size.get(cl, 0) + 1
            if doc.vector is not None and doc.vector.shape == (self.dim,):
                if part.index is None:
                    part.index = PartitionIndex(self.dim, background=self.background_index_builds)
                part.index.add(doc.key, doc.vector)
            elif part.index is not None:
                part.index.remove(doc.key)
            while part.entries:
                first_key, first_exp = next(iter(part.entries.items()))
                if len(part.entries) > pol.max_entries:
                    self.stats.evicted += 1
                elif first_exp <= doc.created_s:
                    self.stats.expired_dropped += 1
                else:
                    break
                part.entries.popitem(last=False)
                part.unlink(first_key)
                if part.index is not None:
                    part.index.remove(first_key)
                evicted.append(first_key)
        if evicted:
            self.store.delete(evicted)

    def _forget(self, tenant: str, category: str, keys: Sequence[str], *, delete: bool) -> None:
        with self._lock:
            part = self._parts.get((tenant, category))
            if part is not None:
                for k in keys:
                    part.entries.pop(k, None)
                    part.unlink(k)
                    if part.index is not None:
                        part.index.remove(k)
        if delete:
            self.store.delete(list(keys))


def make_store(settings: CacheStoreSettings | None) -> MemoryDocumentStore | RedisDocumentStore:
    if settings is None or settings.kind == "memory":
        return MemoryDocumentStore()
    return RedisDocumentStore(settings)


def build_response_cache(policy: CachePolicy, settings: CacheStoreSettings | None = None, *,
                         embedder: Any | None = None, verifier: HitVerifier | None = None,
                         follow: bool = True) -> ResponseCache:
    """The cache for ``policy`` on the configured document store (contract 3). With Redis the index
    is rebuilt from the store now and, with ``follow``, kept current by a background thread. ANN graphs
    are built on a builder thread (serving must not wait for one; ``router.cache_index``)."""
    return ResponseCache(policy, make_store(settings), embedder=embedder, verifier=verifier, follow=follow,
                         background_index_builds=True)


def load_cache_parts(policy: CachePolicy, files: Mapping[str, bytes | Path], *,
                     shared_encoder: Any | None = None) -> tuple[Any | None, HitVerifier | None]:
    """The encoder (``shared_encoder`` when given: the classifier's) and verifier a policy names."""
    encoder = shared_encoder
    if policy.encoder is not None and getattr(encoder, "embedding", None) != policy.encoder.embedding:
        from router.encoder import encoder_for

        enc = policy.encoder  # not shareable (none, or the classifier's heads saw another embedding)
        missing = [f for f in (enc.model_file, enc.tokenizer_file) if f not in files]
        if missing:
            raise ArtifactError(f"cache policy names encoder file(s) {missing} that the bundle lacks")
        encoder = encoder_for(files[enc.model_file], files[enc.tokenizer_file], max_length=enc.max_length,
                              embedding=enc.embedding)
    verifier = None
    if policy.verifier is not None:
        if policy.verifier.file not in files:
            raise ArtifactError(f"cache policy names verifier file {policy.verifier.file!r} that the bundle lacks")
        verifier = HitVerifier(files[policy.verifier.file], policy.verifier)
    return encoder, verifier
