"""The routing policy, free of Ray: session affinity, then prefix affinity, then load.

Order of preference for one request, given each candidate replica's queue length:
1. session affinity: the replica this `x-session-id` went to last, unless that replica is overloaded;
2. prefix affinity: the replicas holding the longest known prefix of the prompt (at least
   `min_match_fraction` of its blocks), unless the best of them is overloaded;
3. otherwise: power of two choices when a holder is overloaded (SGLang's and Ray Serve LLM's
   fallback), or -- for a prompt nobody holds -- the least-loaded replica, ties broken by the
   smallest prefix index, so new prefixes spread over the replicas instead of piling onto one.

"Overloaded" is SGLang's balance test: the replica's queue is longer than the shortest one by more
than `imbalance_abs` requests *and* by more than `imbalance_rel` times. Both thresholds matter: the
absolute one ignores noise at low load, the relative one keeps a hot prefix on its replica while
the others are also busy.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Hashable, Optional

from pydantic import BaseModel, ConfigDict, Field

from router.prefix_index import PrefixIndex

AFFINITY, PREFIX, BALANCE, FALLBACK = "affinity", "prefix", "balance", "fallback"


class RouterSettings(BaseModel):
    """`request_router_kwargs` of the LLM deployment (serve_config.yaml)."""

    model_config = ConfigDict(extra="forbid")

    block_chars: int = Field(default=128, ge=8)
    max_blocks_per_replica: int = Field(default=200_000, ge=1)
    prefix_ttl_s: float = Field(default=600.0, gt=0)
    min_match_fraction: float = Field(default=0.1, ge=0, le=1)
    imbalance_abs: int = Field(default=8, ge=0)
    imbalance_rel: float = Field(default=1.5, ge=1)
    session_ttl_s: float = Field(default=1800.0, gt=0)
    max_sessions: int = Field(default=100_000, ge=1)
    # Texts every replica prefills at start (the model's warm-up system prompts): held everywhere.
    warm_prefixes: list[str] = Field(default_factory=list)


@dataclass
class Decision:
    """What the policy chose: replica ranks (best first) and why, plus what to remember once routed."""

    ranks: list[list[Hashable]]
    reason: str
    names: list[int] = field(default_factory=list)
    session_id: Optional[str] = None


class PrefixRoutingPolicy:
    def __init__(self, settings: RouterSettings, clock: Callable[[], float] = time.monotonic,
                 rng: Optional[random.Random] = None):
        self.settings = settings
        self.index = PrefixIndex(settings.block_chars, settings.max_blocks_per_replica, settings.prefix_ttl_s, clock)
        self._clock = clock
        self._rng = rng or random.Random()
        self._sessions: OrderedDict[str, tuple[Hashable, float]] = OrderedDict()
        self._warm_names = [self.index.names(text) for text in settings.warm_prefixes]

    # ---- the choice -------------------------------------------------------------------------

    def choose(self, candidates: list[Hashable], loads: dict[Hashable, Optional[int]], text: str,
               session_id: Optional[str] = None) -> Decision:
        """`loads`: requests in flight per candidate (None: unknown -- a new replica with no routing
        stats yet -- counted as empty; Serve probes it if chosen)."""

        def load(r: Hashable) -> int:
            return loads.get(r) or 0

        shortest = min(load(r) for r in candidates)

        def overloaded(r: Hashable) -> bool:
            q = load(r)
            return q - shortest > self.settings.imbalance_abs and q > self.settings.imbalance_rel * shortest

        names = self.index.names(text)
        if session_id is not None:
            pinned = self._session_replica(session_id)
            if pinned is not None and pinned in candidates and not overloaded(pinned):
                return Decision([[pinned]], AFFINITY, names, session_id)

        matched = self.index.match(names, candidates) if names else {}
        best = max(matched.values(), default=0)
        if best and best >= self.settings.min_match_fraction * len(names):
            holders = [r for r in candidates if matched[r] == best]
            fresh = [r for r in holders if not overloaded(r)]
            if fresh:
                rest = sorted((r for r in candidates if r not in fresh), key=load)
                return Decision([fresh] + ([rest] if rest else []), PREFIX, names, session_id)
            # Two random choices, compared here: Serve, given both in one rank, would prefer a replica
            # whose cached queue length is known over one whose entry expired (idle, so shortest).
            pair = sorted(self._rng.sample(candidates, min(2, len(candidates))), key=load)
            return Decision([[r] for r in pair], FALLBACK, names, session_id)

        ordered = sorted(candidates, key=lambda r: (load(r), self.index.size(r), self._rng.random()))
        return Decision([ordered[:1]] + ([ordered[1:]] if len(ordered) > 1 else []), BALANCE, names, session_id)

    # ---- what happened ----------------------------------------------------------------------

    def routed(self, decision: Decision, replica: Hashable) -> None:
        """The request went to `replica`: it now holds the prompt's blocks (and the session)."""
        if decision.names:
            self.index.insert(decision.names, replica)
        if decision.session_id is not None:
            self._sessions[decision.session_id] = (replica, self._clock())
            self._sessions.move_to_end(decision.session_id)
            while len(self._sessions) > self.settings.max_sessions:
                self._sessions.popitem(last=False)

    def replicas_changed(self, replicas: list[Hashable], added: list[Hashable]) -> None:
        """Forget replicas that left; a new replica holds exactly the warm-up prefixes it prefilled."""
        self.index.retain(replicas)
        for replica in added:
            for names in self._warm_names:
                self.index.insert(names, replica)

    def forget(self, replica: Hashable) -> None:
        self.index.forget(replica)

    def _session_replica(self, session_id: str) -> Optional[Hashable]:
        entry = self._sessions.get(session_id)
        if entry is None:
            return None
        replica, at = entry
        if self._clock() - at > self.settings.session_ttl_s:
            del self._sessions[session_id]
            return None
        return replica
