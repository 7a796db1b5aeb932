"""The per-replica vector index: scoped, exact cosine search, expiry, removal."""

import numpy as np

from cache.store import IndexRecord
from cache.vector_index import VectorIndex


def unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def rec(key, scope, v, exp=1e12):
    return IndexRecord(key, scope, key, unit(v), exp)


def test_search_stays_in_scope_and_orders_by_similarity():
    idx = VectorIndex(3)
    idx.add(rec("a", "s1", [1, 0, 0]))
    idx.add(rec("b", "s1", [1, 1, 0]))
    idx.add(rec("c", "s2", [1, 0, 0]))
    found = idx.search("s1", unit([1, 0.1, 0]), threshold=0.5)
    assert [n.key for n in found] == ["a", "b"]
    assert found[0].similarity > found[1].similarity
    assert idx.search("s1", unit([0, 0, 1]), threshold=0.5) == []
    assert idx.search("nope", unit([1, 0, 0]), threshold=0.0) == []


def test_remove_swaps_rows_and_keeps_the_rest_findable():
    idx = VectorIndex(2)
    for i in range(10):
        idx.add(rec(f"k{i}", "s", [1, i]))
    idx.remove("s", "k0")
    idx.add(rec("k3", "s", [1, 3]))  # upsert does not duplicate
    assert len(idx) == 9
    for i in range(1, 10):
        assert idx.search("s", unit([1, i]), threshold=0.9999)[0].key == f"k{i}"


def test_expired_rows_are_skipped_and_swept():
    idx = VectorIndex(2)
    idx.add(rec("old", "s", [1, 0], exp=100.0))
    idx.add(rec("new", "s", [1, 0.01], exp=1e12))
    assert [n.key for n in idx.search("s", unit([1, 0]), 0.5, now=200.0)] == ["new"]
    assert idx.sweep(now=200.0) == 1 and len(idx) == 1


def test_size_bound_drops_the_soonest_to_expire():
    idx = VectorIndex(2, max_entries=3)
    for i in range(4):
        idx.add(rec(f"k{i}", "s", [1, i], exp=1e12 + i))
    assert len(idx) == 3 and idx.search("s", unit([1, 0]), 0.99999) == []
