"""Which replica probably holds a prompt's prefix in its KV cache: an approximate prefix tree per replica.

The tree is stored as chained block hashes, the way vLLM's own prefix cache names its KV blocks:
the prompt text is cut into `block_chars`-character blocks and block i is named by a hash of
(name of block i-1, text of block i). Two prompts share block i's name only if they share all of
their first i blocks, so a dict of names per replica *is* a prefix tree (each name a node, the
chain its path) without node objects to walk or split. Matching a prompt costs one hash per block
and one dict lookup per block and replica; inserting costs the same.

Why approximate and local: the router cannot see vLLM's KV cache (asking the replicas would put a
remote call on every request's path), so it remembers what it sent where. Each entry ages out after
`ttl_s` without use, and each replica keeps at most `max_blocks` names (least recently used first
out) -- the same two ways vLLM loses a cached prefix (idle eviction under pressure, bounded memory).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable, Hashable, Iterable, Optional


def block_names(text: str, block_chars: int) -> list[int]:
    """The chained names of the whole blocks of `text` (a trailing partial block is not cached by
    vLLM either, so it is not named)."""
    names, prev = [], 0
    for start in range(0, len(text) - block_chars + 1, block_chars):
        prev = hash((prev, text[start:start + block_chars]))
        names.append(prev)
    return names


class PrefixIndex:
    """Per-replica sets of block names with LRU order and idle expiry."""

    def __init__(self, block_chars: int = 128, max_blocks: int = 200_000, ttl_s: float = 600.0,
                 clock: Callable[[], float] = time.monotonic):
        if block_chars < 1 or max_blocks < 1 or ttl_s <= 0:
            raise ValueError("block_chars and max_blocks must be >= 1 and ttl_s > 0")
        self.block_chars = block_chars
        self.max_blocks = max_blocks
        self.ttl_s = ttl_s
        self._clock = clock
        # replica -> OrderedDict[name, last use]; the oldest use first.
        self._blocks: dict[Hashable, OrderedDict[int, float]] = {}

    def names(self, text: str) -> list[int]:
        return block_names(text, self.block_chars)

    def match(self, names: list[int], replicas: Iterable[Hashable]) -> dict[Hashable, int]:
        """For each replica, how many leading blocks of `names` it holds (expired blocks do not count)."""
        now = self._clock()
        out = {}
        for replica in replicas:
            held = self._blocks.get(replica)
            n = 0
            if held:
                for name in names:
                    used = held.get(name)
                    if used is None or now - used > self.ttl_s:
                        break
                    n += 1
            out[replica] = n
        return out

    def insert(self, names: list[int], replica: Hashable) -> None:
        """Remember that `replica` now holds these blocks (it was just sent the prompt)."""
        held = self._blocks.setdefault(replica, OrderedDict())
        now = self._clock()
        for name in names:
            held[name] = now
            held.move_to_end(name)
        self._evict(held, now)

    def _evict(self, held: OrderedDict[int, float], now: float) -> None:
        while held:
            name, used = next(iter(held.items()))
            if len(held) > self.max_blocks or now - used > self.ttl_s:
                held.popitem(last=False)
            else:
                break

    def size(self, replica: Hashable) -> int:
        """Blocks remembered for `replica`: a proxy for how much of its KV cache the router has filled."""
        held = self._blocks.get(replica)
        if not held:
            return 0
        self._evict(held, self._clock())
        return len(held)

    def retain(self, replicas: Iterable[Hashable]) -> None:
        """Forget replicas that are gone (a new replica starts with an empty KV cache)."""
        keep = set(replicas)
        for replica in list(self._blocks):
            if replica not in keep:
                del self._blocks[replica]

    def forget(self, replica: Optional[Hashable]) -> None:
        self._blocks.pop(replica, None)
