"""Response cache with an exact tier and a semantic tier, partitioned by (tenant, category).

* exact: key = sha256 of the normalised prompt (case, whitespace and edge punctuation folded);
* semantic: cosine similarity of hashed character-trigram vectors against the partition's entries,
  accepted above the category's threshold. This is the skeleton's stand-in for a sentence encoder
  + ANN index; it catches rephrasings that keep most characters, not paraphrases.

Entries expire ``ttl_s`` after insertion; a hit never extends the TTL (stale answers must age out).
Each partition holds at most ``max_entries``; the oldest entry is evicted first.
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import Field, ValidationError

from router.config import RouterConfig, _Frozen
from router.errors import ArtifactError
from router.types import CacheTier, FloatArray

EMBED_DIM = 1024
_WS = re.compile(r"\s+")


class CategoryCachePolicy(_Frozen):
    tier: CacheTier = "skip"
    threshold: float = Field(default=0.9, gt=0, le=1)
    ttl_s: float = Field(default=3600.0, gt=0)
    max_entries: int = Field(default=10_000, gt=0)


class CachePolicy(_Frozen):
    """Contents of ``cache_policy.json``: one policy per category (missing = skip)."""

    version: int = 1
    categories: dict[str, CategoryCachePolicy] = Field(default_factory=dict)

    def for_category(self, category: str) -> CategoryCachePolicy:
        return self.categories.get(category, CategoryCachePolicy())

    @classmethod
    def from_router_config(cls, cfg: RouterConfig) -> CachePolicy:
        s = cfg.cache
        return cls(categories={c: CategoryCachePolicy(tier=cfg.cache_tier(c), threshold=s.similarity_threshold,
                                                      ttl_s=s.ttl_s, max_entries=s.max_entries_per_partition)
                               for c in cfg.taxonomy})

    @classmethod
    def load(cls, path: Path) -> CachePolicy:
        try:
            return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, ValidationError) as e:
            raise ArtifactError(f"{path}: invalid cache policy: {e}") from e


def normalise(text: str) -> str:
    return _WS.sub(" ", text.strip().lower()).strip(" .!?,;:")


def exact_key(text: str) -> str:
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()


def embed(text: str) -> FloatArray:
    """Hashed character-trigram vector, L2-normalised (deterministic across processes: crc32)."""
    t = f"  {normalise(text)}  "
    vec = np.zeros(EMBED_DIM, dtype=np.float32)
    for i in range(len(t) - 2):
        vec[zlib.crc32(t[i:i + 3].encode("utf-8")) % EMBED_DIM] += 1.0
    norm = float(np.linalg.norm(vec))
    return vec / norm if norm else vec


@dataclass(frozen=True, slots=True)
class CacheHit:
    answer: str
    model: str
    similarity: float
    tier: CacheTier


@dataclass(slots=True)
class _Entry:
    key: str
    vector: FloatArray | None
    answer: str
    model: str
    expires_s: float


class ResponseCache:
    """In-process cache; one ``OrderedDict`` per (tenant, category) partition, insertion-ordered."""

    def __init__(self, policy: CachePolicy) -> None:
        self.policy = policy
        self._parts: dict[tuple[str, str], OrderedDict[str, _Entry]] = {}

    def lookup(self, tenant: str, category: str, tier: CacheTier, text: str, now_s: float) -> CacheHit | None:
        if tier == "skip":
            return None
        part = self._parts.get((tenant, category))
        if not part:
            return None
        self._expire(part, now_s)
        entry = part.get(exact_key(text))
        if entry is not None:
            return CacheHit(entry.answer, entry.model, 1.0, "exact")
        if tier != "semantic" or not part:
            return None
        return self._nearest(part, text, self.policy.for_category(category).threshold)

    def insert(self, tenant: str, category: str, tier: CacheTier, text: str, answer: str, model: str, now_s: float) -> None:
        if tier == "skip":
            return
        pol = self.policy.for_category(category)
        part = self._parts.setdefault((tenant, category), OrderedDict())
        key = exact_key(text)
        part.pop(key, None)
        vector = embed(text) if tier == "semantic" else None
        part[key] = _Entry(key, vector, answer, model, now_s + pol.ttl_s)
        while len(part) > pol.max_entries:
            part.popitem(last=False)

    def __len__(self) -> int:
        return sum(len(p) for p in self._parts.values())

    @staticmethod
    def _expire(part: OrderedDict[str, _Entry], now_s: float) -> None:
        # One TTL per partition and re-inserts move to the end, so insertion order is expiry order.
        while part and next(iter(part.values())).expires_s <= now_s:
            part.popitem(last=False)

    @staticmethod
    def _nearest(part: OrderedDict[str, _Entry], text: str, threshold: float) -> CacheHit | None:
        entries = [e for e in part.values() if e.vector is not None]
        if not entries:
            return None
        sims = np.stack([e.vector for e in entries]) @ embed(text)  # type: ignore[misc]
        best = int(np.argmax(sims))
        if float(sims[best]) < threshold:
            return None
        return CacheHit(entries[best].answer, entries[best].model, float(sims[best]), "semantic")
