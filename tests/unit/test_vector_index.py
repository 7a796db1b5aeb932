"""The per-replica vector index: scoped, exact cosine search, expiry, removal."""

import numpy as np

from cache.store import IndexRecord
from cache.vector_index import AnnSettings, VectorIndex


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


# ---- large scopes: the inverted-file index --------------------------------------------------------

SMALL_ANN = AnnSettings(min_rows=1_000, nlist=16, nprobe=4, train_per_list=40)


def _random_rows(n, dim, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _near(v, seed, noise=0.02):
    return unit(v + np.random.default_rng(seed).standard_normal(v.shape).astype(np.float32) * noise)


def test_a_large_scope_finds_near_duplicates_with_exact_similarities():
    dim, rows = 32, _random_rows(3_000, 32)
    idx = VectorIndex(dim, ann=SMALL_ANN)
    for i, v in enumerate(rows):
        idx.add(rec(f"k{i}", "big", v))
    idx.add(rec("small-1", "small", rows[0]))
    assert idx._scopes["big"].ann is not None and idx._scopes["small"].ann is None
    found = 0
    for i in range(0, 3_000, 30):
        q = _near(rows[i], seed=i)
        hit = idx.search("big", q, threshold=0.9, k=1)
        if hit and hit[0].key == f"k{i}":
            found += 1
            assert abs(hit[0].similarity - float(rows[i] @ q)) < 1e-5  # the similarity is exact
    assert found >= 95  # of 100; an approximate search may only miss


def test_a_large_scope_stays_correct_through_removals_updates_and_shrinking():
    dim, rows = 32, _random_rows(2_400, 32, seed=1)
    idx = VectorIndex(dim, ann=SMALL_ANN)
    for i, v in enumerate(rows):
        idx.add(rec(f"k{i}", "big", v))
    for i in range(0, 2_400, 2):  # half removed: rows are swapped around under the index
        idx.remove("big", f"k{i}")
    idx.add(rec("k1", "big", rows[2]))  # an update moves k1 to another vector
    assert idx._scopes["big"].ann is not None
    assert idx.search("big", rows[2], threshold=0.999, k=1)[0].key == "k1"
    assert all(n.key != "k1" for n in idx.search("big", rows[1], threshold=0.999, k=4))
    assert idx.search("big", rows[4], threshold=0.999) == []  # removed
    missed = sum(not idx.search("big", rows[i], threshold=0.999, k=1) for i in range(3, 2_400, 2))
    assert missed <= 12  # of 1,199 exact matches, found through the index
    for i in range(3, 2_400, 2)[:800]:
        idx.remove("big", f"k{i}")
    assert len(idx) < SMALL_ANN.min_rows // 2 and idx._scopes["big"].ann is None  # exact again
    for i in range(3, 2_400, 2)[800:]:
        assert idx.search("big", rows[i], threshold=0.999, k=1)[0].key == f"k{i}"
