"""Each cache replica's in-memory nearest-neighbour index, partitioned by scope.

Why partitioned: an entry may only serve requests of its own scope (model, sampling, system prompt,
conversation, tenant; see cache/keys.py), so a search never has to look past its scope, and a scope
is usually small. A small scope is searched exactly: one matrix-vector product over unit vectors
(cosine similarity). Not every scope is small, though: single-turn chats of one model without a
system prompt all share one. Past `ann_min_rows` rows a scope also gets an inverted-file index
(faiss `IndexIVFFlat`, inner product): the search scans `nprobe` of `nlist` clusters instead of
every row. Measured on the 2-core dev machine, one thread, 100,000 rows of 384 floats: the exact
product 4.4-5.8 ms p50 (memory-bound: 154 MB per query; an 8-bit scan still took 2.7-3.3 ms), IVF
256/32 0.72 ms p50 with 99.0% of nearest neighbours found on structure-less random vectors, the
hardest case for clustering. The similarity it returns is still exact (IVFFlat keeps the vectors),
so an approximate search can only miss an entry, never serve a worse one; training takes 0.2 s on
10,240 sampled rows, adding or removing a row 0.02 ms (a hash-table direct map makes removal O(1)).

Rows live in a per-scope float32 matrix that grows by doubling; removal swaps the last row in.
Expired rows are skipped at search and swept by `sweep()`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from cache.store import IndexRecord


@dataclass(frozen=True)
class AnnSettings:
    """When and how a scope gets an inverted-file index (see the module's docstring)."""

    min_rows: int = 20_000  # below this the exact product takes ~1 ms here
    nlist: int = 256
    nprobe: int = 32
    train_per_list: int = 40  # sampled training rows per cluster (faiss asks for >= 39)


@dataclass
class _Scope:
    dim: int
    ann_settings: AnnSettings = field(default_factory=AnnSettings)
    matrix: np.ndarray = field(init=False)
    keys: list[str] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    expires: list[float] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    ann: Optional[object] = None  # faiss.IndexIVFFlat over the rows, ids = row numbers

    def __post_init__(self) -> None:
        self.matrix = np.empty((4, self.dim), dtype=np.float32)

    def upsert(self, rec: IndexRecord) -> None:
        row = self.rows.get(rec.key)
        if row is None:
            row = len(self.keys)
            if row == self.matrix.shape[0]:
                grown = np.empty((row * 2, self.dim), dtype=np.float32)
                grown[:row] = self.matrix[:row]
                self.matrix = grown
            self.keys.append(rec.key)
            self.queries.append(rec.query)
            self.expires.append(rec.expires_at)
            self.rows[rec.key] = row
        else:
            self.queries[row] = rec.query
            self.expires[row] = rec.expires_at
            self._ann_remove(row)
        self.matrix[row] = rec.embedding
        if self.ann is not None:
            self._ann_add(row)
        elif len(self.keys) >= self.ann_settings.min_rows:
            self._build_ann()

    def remove(self, key: str) -> None:
        row = self.rows.pop(key, None)
        if row is None:
            return
        last = len(self.keys) - 1
        self._ann_remove(row, last)
        if row != last:
            self.matrix[row] = self.matrix[last]
            for seq in (self.keys, self.queries, self.expires):
                seq[row] = seq[last]
            self.rows[self.keys[row]] = row
            if self.ann is not None:
                self._ann_add(row)
        for seq in (self.keys, self.queries, self.expires):
            seq.pop()
        if self.ann is not None and len(self.keys) < self.ann_settings.min_rows // 2:
            self.ann = None  # small again: the exact product is as fast (half the bound: no flapping)

    def nearest(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and similarities of (up to) the k most similar rows, best first."""
        n = len(self.keys)
        if self.ann is not None:
            sims, rows = self.ann.search(vector.reshape(1, -1), k)
            found = rows[0] >= 0
            return rows[0][found], sims[0][found]
        sims = self.matrix[:n] @ vector
        if n > k:
            top = np.argpartition(-sims, k)[:k]
            top = top[np.argsort(-sims[top])]
        else:
            top = np.argsort(-sims)
        return top, sims[top]

    def _build_ann(self) -> None:
        import faiss

        s, n = self.ann_settings, len(self.keys)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, s.nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 10
        sample = np.random.default_rng(0).choice(n, min(n, s.nlist * s.train_per_list), replace=False)
        index.train(self.matrix[np.sort(sample)])
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        index.nprobe = s.nprobe
        index.add_with_ids(self.matrix[:n], np.arange(n, dtype=np.int64))
        self.ann = index

    def _ann_add(self, row: int) -> None:
        self.ann.add_with_ids(self.matrix[row:row + 1], np.array([row], dtype=np.int64))

    def _ann_remove(self, *rows: int) -> None:
        if self.ann is not None:
            self.ann.remove_ids(np.array(sorted(set(rows)), dtype=np.int64))


@dataclass(frozen=True)
class Neighbour:
    key: str
    query: str
    similarity: float


class VectorIndex:
    def __init__(self, dim: int, max_entries: int = 200_000, ann: Optional[AnnSettings] = None):
        self.dim = dim
        self.max_entries = max_entries
        self.ann_settings = ann or AnnSettings()
        self._scopes: dict[str, _Scope] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, rec: IndexRecord) -> None:
        if rec.embedding.shape != (self.dim,):
            raise ValueError(f"embedding has shape {rec.embedding.shape}, expected ({self.dim},)")
        scope = self._scopes.get(rec.scope)
        if scope is None:
            scope = self._scopes[rec.scope] = _Scope(self.dim, self.ann_settings)
        before = len(scope.keys)
        scope.upsert(rec)
        self._size += len(scope.keys) - before
        if self._size > self.max_entries:
            self.sweep()

    def remove(self, scope_id: str, key: str) -> None:
        scope = self._scopes.get(scope_id)
        if scope is not None:
            before = len(scope.keys)
            scope.remove(key)
            self._size -= before - len(scope.keys)
            if not scope.keys:
                del self._scopes[scope_id]

    def clear(self) -> None:
        self._scopes.clear()
        self._size = 0

    def search(self, scope_id: str, vector: np.ndarray, threshold: float, k: int = 4,
               now: Optional[float] = None) -> list[Neighbour]:
        """Up to `k` live entries of the scope with cosine similarity >= threshold, best first."""
        scope = self._scopes.get(scope_id)
        if scope is None or not scope.keys:
            return []
        rows, sims = scope.nearest(np.ascontiguousarray(vector, dtype=np.float32), k)
        now = time.time() if now is None else now
        out = []
        for row, sim in zip(rows.tolist(), sims.tolist()):
            if sim < threshold:
                break
            if scope.expires[row] > now:
                out.append(Neighbour(scope.keys[row], scope.queries[row], sim))
        return out

    def sweep(self, now: Optional[float] = None) -> int:
        """Drop expired rows; when still over `max_entries`, drop those expiring soonest."""
        now = time.time() if now is None else now
        dropped = 0
        for scope_id in list(self._scopes):
            scope = self._scopes[scope_id]
            for key, exp in list(zip(scope.keys, scope.expires)):
                if exp <= now:
                    self.remove(scope_id, key)
                    dropped += 1
        if self._size > self.max_entries:
            rows = sorted((exp, sid, key) for sid, s in self._scopes.items() for key, exp in zip(s.keys, s.expires))
            for _, sid, key in rows[: self._size - self.max_entries]:
                self.remove(sid, key)
                dropped += 1
        return dropped
