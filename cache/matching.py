"""A semantic match: the nearest entries of the request's scope, filtered by the detail guards.

Shared by the SemanticCache deployment and the evaluation command (bench/cache_eval.py), so the
figures the evaluation prints are those of the code that serves requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np

from cache.guards import mismatch
from cache.vector_index import Neighbour, VectorIndex

@dataclass(frozen=True)
class SemanticLookup:
    """What `SemanticCache.lookup` answers: a hit (the entry's key, similarity and stored response
    bytes) or a miss; either way the query's embedding (float32 bytes), which the ingress reuses
    for the write-back. `bypass`: Redis did not answer, the lookup could not be made."""

    hit: bool
    embedding: bytes
    replica: str  # the SemanticCache replica that answered
    bypass: bool = False
    key: Optional[str] = None
    similarity: float = 0.0
    response: Optional[bytes] = None


# Neighbours above the threshold examined per lookup: a rejected nearest one may hide a valid second.
CANDIDATES = 4


def guarded_neighbours(index: VectorIndex, scope: str, query: str, vector: np.ndarray, threshold: float,
                       on_reject: Optional[Callable[[str], None]] = None) -> Iterator[Neighbour]:
    """Entries that may answer `query`, best first: similar enough, and every detail agreeing."""
    for n in index.search(scope, vector, threshold, k=CANDIDATES):
        reason = mismatch(query, n.query)
        if reason is None:
            yield n
        elif on_reject is not None:
            on_reject(reason)
