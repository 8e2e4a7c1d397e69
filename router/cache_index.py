"""In-process nearest-neighbour index of one cache partition (one per tenant and category).

Holds only unit vectors and integer slots; the answers live in the document store. Small
partitions are searched exactly (one matrix-vector product beats a graph walk below a few thousand
rows); from ``hnsw_min`` rows on, the partition switches to a faiss HNSW graph (inner product =
cosine on unit vectors). HNSW cannot delete, so removals are tombstones: searches over-fetch by the
number of dead rows (capped) and drop them, and the partition is rebuilt once more than half of it
is dead. A rebuild of a 100k-row partition takes tens of seconds on one core: quotas keep
partitions well below that in practice (``CategoryCachePolicy.max_entries``).

``background=True`` (serving): a graph build runs on one builder thread from a snapshot of the
vectors, so neither the cache lock nor the event loop waits for it; until it is done the partition is
searched exactly (slower, never wrong). The builder also catches up with the rows added meanwhile
until at most ``CATCH_UP_ROWS`` remain, and only those few are added when the graph is adopted (under
the cache lock). Every compaction bumps a generation: a build of older slots is dropped, and a queued
one never starts. A failed build is logged and the partition stays exact.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

_LOG = logging.getLogger("turnout.cache")

HNSW_M = 16
EF_CONSTRUCTION = 64
EF_SEARCH = 48
MAX_OVERFETCH = 64
CATCH_UP_ROWS = 256
_BUILDER: ThreadPoolExecutor | None = None


def _builder() -> ThreadPoolExecutor:
    global _BUILDER
    if _BUILDER is None:
        _BUILDER = ThreadPoolExecutor(1, thread_name_prefix="turnout-hnsw-build")
    return _BUILDER


def _new_hnsw(vectors: np.ndarray, dim: int) -> object:
    import faiss

    faiss.omp_set_num_threads(1)
    index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = EF_CONSTRUCTION
    index.hnsw.efSearch = EF_SEARCH
    index.add(vectors)
    return index


class PartitionIndex:
    """Exact below ``hnsw_min`` rows, HNSW above; ``search`` returns (keys, cosines) best first."""

    def __init__(self, dim: int, *, hnsw_min: int = 4096, background: bool = False) -> None:
        self.dim = dim
        self.hnsw_min = hnsw_min
        self.background = background
        self._pending: Future[tuple[object, int] | None] | None = None  # -> (graph, rows it holds)
        self._gen = 0  # bumped by every compaction: slots before and after differ
        self._build_failed = False
        self._vectors = np.zeros((64, dim), dtype=np.float32)
        self._dead = np.zeros(64, dtype=bool)
        self._keys: list[str | None] = []
        self._slot: dict[str, int] = {}
        self._hnsw: object | None = None
        self._n_dead = 0

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, key: str) -> bool:
        return key in self._slot

    def add(self, key: str, vector: np.ndarray) -> None:
        if key in self._slot:
            self.remove(key)
        self._adopt_finished_build()  # before this row exists: the graph gets it exactly once, below
        n = len(self._keys)
        if n == len(self._vectors):
            self._vectors = np.concatenate([self._vectors, np.zeros_like(self._vectors)])
            self._dead = np.concatenate([self._dead, np.zeros_like(self._dead)])
        self._vectors[n] = vector
        self._keys.append(key)
        self._slot[key] = n
        if self._hnsw is not None:
            self._hnsw.add(self._vectors[n:n + 1])  # type: ignore[attr-defined]
        elif self._pending is None and len(self._slot) >= self.hnsw_min:
            self._build_hnsw()

    def remove(self, key: str) -> None:
        slot = self._slot.pop(key, None)
        if slot is None:
            return
        self._keys[slot] = None
        self._dead[slot] = True
        self._n_dead += 1
        if self._n_dead > 32 and self._n_dead > len(self._keys) // 2:
            self._compact()

    def search(self, vector: np.ndarray, k: int) -> tuple[list[str], list[float]]:
        if not self._slot:
            return [], []
        self._adopt_finished_build()
        if self._hnsw is None:
            n = len(self._keys)
            sims = self._vectors[:n] @ vector
            if self._n_dead:
                sims[self._dead[:n]] = -2.0
            top = np.argpartition(-sims, min(k, n - 1))[:k] if n > k else np.arange(n)
            top = top[np.argsort(-sims[top])]
            pairs = [(self._keys[i], float(sims[i])) for i in top if self._keys[i] is not None]
        else:
            fetch = k + min(self._n_dead, MAX_OVERFETCH)
            dist, idx = self._hnsw.search(vector.reshape(1, -1), fetch)  # type: ignore[attr-defined]
            pairs = [(self._keys[i], float(d)) for d, i in zip(dist[0], idx[0]) if i >= 0 and self._keys[i] is not None]
        pairs = pairs[:k]
        return [p[0] for p in pairs], [p[1] for p in pairs]  # type: ignore[misc]

    @property
    def building(self) -> bool:
        return self._pending is not None

    def wait_for_build(self) -> None:
        """Block until a background build is adopted (tests, benchmarks, a warm-up)."""
        if self._pending is not None:
            self._pending.exception()
            self._adopt_finished_build()

    def _build_hnsw(self) -> None:
        n = len(self._keys)
        if not self.background:
            self._hnsw = _new_hnsw(self._vectors[:n], self.dim)
        elif not self._build_failed:
            self._pending = _builder().submit(self._build_in_background, self._gen, self._vectors[:n].copy())

    def _build_in_background(self, gen: int, snapshot: np.ndarray) -> tuple[object, int] | None:
        """On the builder thread, without the cache lock: rows below ``len(self._keys)`` are complete
        (``add`` writes the vector before the key), and a compaction bumps ``_gen`` before it touches
        the arrays, so a copy taken between two equal reads of ``_gen`` is consistent."""
        if gen != self._gen:
            return None  # compacted while queued
        index, n = _new_hnsw(snapshot, self.dim), len(snapshot)
        while True:
            m = len(self._keys)
            rows = self._vectors[n:m].copy()
            if gen != self._gen:
                return None
            if m - n <= CATCH_UP_ROWS:
                return index, n
            index.add(rows)  # type: ignore[attr-defined]
            n = m

    def _adopt_finished_build(self) -> None:
        if self._pending is None or not self._pending.done():
            return
        build, self._pending = self._pending, None
        try:
            done = build.result()
        except Exception as e:  # faiss failure (memory): stay exact, never fail a request
            self._build_failed = True
            _LOG.error("HNSW build failed (%s: %s); partition of %d rows stays on exact search",
                       type(e).__name__, e, len(self._slot))
            return
        if done is None:
            return
        index, n = done
        if len(self._keys) > n:  # the last few rows added since the builder caught up
            index.add(self._vectors[n:len(self._keys)])  # type: ignore[attr-defined]
        self._hnsw = index

    def _compact(self) -> None:
        self._gen += 1  # first: a background build must see it before any array changes
        live = [i for i, key in enumerate(self._keys) if key is not None]
        vectors = self._vectors[live]
        self._keys = [self._keys[i] for i in live]
        self._slot = {key: i for i, key in enumerate(self._keys)}  # type: ignore[misc]
        self._vectors = np.zeros((max(64, 2 * len(live)), self.dim), dtype=np.float32)
        self._vectors[:len(live)] = vectors
        self._dead = np.zeros(len(self._vectors), dtype=bool)
        self._n_dead = 0
        self._hnsw = None
        self._pending = None  # a build from before the compaction indexes the old slots: drop it
        if len(live) >= self.hnsw_min:
            self._build_hnsw()
