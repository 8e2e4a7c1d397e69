"""Background ANN graph builds of a cache partition (``router.cache_index``, ``background=True``)."""

from __future__ import annotations

import numpy as np

from router.cache_index import PartitionIndex


def _unit_rows(n: int, dim: int, *, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_background_hnsw_build_serves_exact_meanwhile_and_keeps_rows_added_during_it() -> None:
    x = _unit_rows(400, 32, seed=1)
    index = PartitionIndex(32, hnsw_min=100, background=True)
    for i in range(300):
        index.add(f"k{i}", x[i])
        if i >= 100:  # crossing hnsw_min started a build; until it is adopted, search is exact
            keys = index.search(x[i], 1)[0]
            if index._hnsw is None:
                assert index.building and keys == [f"k{i}"]
    index.wait_for_build()
    assert index._hnsw is not None and not index.building
    assert index._hnsw.ntotal == 300  # type: ignore[attr-defined]  # the snapshot + the rows added during the build
    hits = sum(index.search(x[i], 1)[0] == [f"k{i}"] for i in range(0, 300, 7))
    assert hits >= 40


def test_compaction_discards_a_build_of_the_old_slots() -> None:
    x = _unit_rows(300, 16, seed=2)
    index = PartitionIndex(16, hnsw_min=100, background=True)
    for i in range(150):
        index.add(f"k{i}", x[i])
    for i in range(120):  # more than half dead: compacts to 30 rows, below hnsw_min -> exact
        index.remove(f"k{i}")
    index.wait_for_build()
    assert index._hnsw is None and not index.building and len(index) == 30
    assert index.search(x[140], 1)[0] == ["k140"]


def test_a_failed_build_is_logged_and_the_partition_stays_exact(monkeypatch, caplog) -> None:  # noqa: ANN001
    import router.cache_index as ci

    def boom(vectors: np.ndarray, dim: int) -> object:
        raise MemoryError("no room for the graph")

    monkeypatch.setattr(ci, "_new_hnsw", boom)
    x = _unit_rows(200, 16, seed=3)
    index = PartitionIndex(16, hnsw_min=50, background=True)
    for i in range(120):
        index.add(f"k{i}", x[i])
    index.wait_for_build()
    for i in range(120, 200):  # no retry storm: the partition stays exact
        index.add(f"k{i}", x[i])
    assert index._hnsw is None and not index.building
    assert all(index.search(x[i], 1)[0] == [f"k{i}"] for i in range(0, 200, 9))
    assert "HNSW build failed" in caplog.text


def test_the_builder_catches_up_with_rows_added_during_the_build() -> None:
    x = _unit_rows(3000, 16, seed=4)
    index = PartitionIndex(16, hnsw_min=100, background=True)
    for i in range(3000):
        index.add(f"k{i}", x[i])
    index.wait_for_build()
    assert index._hnsw is not None and index._hnsw.ntotal == 3000  # type: ignore[attr-defined]
    assert sum(index.search(x[i], 1)[0] == [f"k{i}"] for i in range(0, 3000, 30)) >= 95
