"""Each cache replica's in-memory nearest-neighbour index, partitioned by scope.

Why partitioned: an entry may only serve requests of its own scope (model, sampling, system prompt,
conversation, tenant; see cache/keys.py), so a search never has to look past its scope, and a scope
is usually small. Inside a scope the search is exact: one matrix-vector product over unit vectors
(cosine similarity), so the similarity threshold means the same at any size.

Rows live in a per-scope float32 matrix that grows by doubling; removal swaps the last row in.
Expired rows are skipped at search and swept by `sweep()`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from cache.store import IndexRecord


@dataclass
class _Scope:
    dim: int
    matrix: np.ndarray = field(init=False)
    keys: list[str] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    expires: list[float] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)

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
        self.matrix[row] = rec.embedding

    def remove(self, key: str) -> None:
        row = self.rows.pop(key, None)
        if row is None:
            return
        last = len(self.keys) - 1
        if row != last:
            self.matrix[row] = self.matrix[last]
            for seq in (self.keys, self.queries, self.expires):
                seq[row] = seq[last]
            self.rows[self.keys[row]] = row
        for seq in (self.keys, self.queries, self.expires):
            seq.pop()


@dataclass(frozen=True)
class Neighbour:
    key: str
    query: str
    similarity: float


class VectorIndex:
    def __init__(self, dim: int, max_entries: int = 200_000):
        self.dim = dim
        self.max_entries = max_entries
        self._scopes: dict[str, _Scope] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, rec: IndexRecord) -> None:
        if rec.embedding.shape != (self.dim,):
            raise ValueError(f"embedding has shape {rec.embedding.shape}, expected ({self.dim},)")
        scope = self._scopes.get(rec.scope)
        if scope is None:
            scope = self._scopes[rec.scope] = _Scope(self.dim)
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
        n = len(scope.keys)
        sims = scope.matrix[:n] @ vector.astype(np.float32, copy=False)
        if n > k:
            top = np.argpartition(-sims, k)[:k]
            top = top[np.argsort(-sims[top])]
        else:
            top = np.argsort(-sims)
        now = time.time() if now is None else now
        out = []
        for row in top:
            sim = float(sims[row])
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
