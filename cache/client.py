"""The ingress's side of the cache: the exact-match path, the semantic call, coalescing, write-back.

Why at the ingress: an exact repeat is answered with one Redis read, without a hop to any other
deployment; only misses go on to the SemanticCache replicas (embedding + index) and then the model.
Every step has a deadline (`lookup_timeout_s` in all), and any cache failure is a bypass: the
request goes to the model, a metric counts it, and the client never sees a cache error.

Coalescing: identical requests (same exact key) that arrive while one is generating wait for it
instead of generating again, per ingress replica. If the first one fails or is cancelled, each
waiter generates for itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
from ray.serve.handle import DeploymentHandle

from cache import metrics
from cache.config import CacheConfig
from cache.keys import CachePlan
from cache.matching import SemanticLookup
from cache.store import resolve_redis_url
from cache.store import CacheStore, StoreUnavailable

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class CacheHit:
    kind: str  # "exact", "semantic" or "coalesced"
    body: dict
    similarity: float = 1.0


@dataclass
class CacheMiss:
    bypass: bool = False
    embedding: Optional[bytes] = None  # the semantic lookup's embedding, reused by the write-back


class IngressCache:
    def __init__(self, config: CacheConfig, semantic: DeploymentHandle, embedded_redis: Optional[DeploymentHandle]):
        self._config = config
        self._semantic = semantic
        self._embedded = embedded_redis
        self._store: Optional[CacheStore] = None
        self._inflight: dict[str, asyncio.Future] = {}
        self._writes: set[asyncio.Task] = set()

    async def _get_store(self) -> CacheStore:
        if self._store is None:
            url = await resolve_redis_url(self._config, self._embedded)
            self._store = CacheStore(url, self._config.namespace, self._config.redis_timeout_s, self._config.max_entries)
        return self._store

    async def lookup(self, plan: CachePlan) -> CacheHit | CacheMiss:
        """Exact, then semantic; a miss (or a bypass) within `lookup_timeout_s`."""
        try:
            return await asyncio.wait_for(self._lookup(plan), self._config.lookup_timeout_s)
        except (asyncio.TimeoutError, StoreUnavailable) as e:
            logger.warning("cache bypassed: %r", e)
        except Exception as e:  # a cache replica failing must not fail the request
            logger.warning("cache bypassed after an error: %r", e)
        metrics.LOOKUPS.inc(tags={"result": "bypass"})
        return CacheMiss(bypass=True)

    def skip(self) -> None:
        """Count a request the cache does not take part in (its plan neither reads nor writes:
        sampled without opt-in, or `"cache": {"mode": "off"}`) as the lookup result `off`."""
        metrics.LOOKUPS.inc(tags={"result": "off"})

    async def _lookup(self, plan: CachePlan) -> CacheHit | CacheMiss:
        store = await self._get_store()
        raw = await store.get_response(plan.exact_key)
        if raw is not None:
            metrics.LOOKUPS.inc(tags={"result": "hit_exact"})
            return CacheHit("exact", json.loads(raw))
        if plan.query is None:
            metrics.LOOKUPS.inc(tags={"result": "miss"})
            return CacheMiss()
        found: SemanticLookup = await self._semantic.lookup.remote(plan.scope, plan.query, plan.threshold)
        if found.hit:
            metrics.LOOKUPS.inc(tags={"result": "hit_semantic"})
            return CacheHit("semantic", json.loads(found.response), found.similarity)
        metrics.LOOKUPS.inc(tags={"result": "bypass" if found.bypass else "miss"})
        return CacheMiss(bypass=found.bypass, embedding=found.embedding)

    # ---- coalescing --------------------------------------------------------------------------

    def lead_or_follow(self, plan: CachePlan) -> Optional[asyncio.Future]:
        """None if this request is to generate (and is now the leader); else the leader's future."""
        fut = self._inflight.get(plan.exact_key)
        if fut is not None:
            return fut
        self._inflight[plan.exact_key] = asyncio.get_running_loop().create_future()
        return None

    async def follow(self, fut: asyncio.Future, timeout_s: float) -> Optional[CacheHit]:
        """The leader's answer, or None when it failed (the follower then generates itself)."""
        try:
            body = await asyncio.wait_for(asyncio.shield(fut), timeout_s)
        except asyncio.TimeoutError:
            return None
        if body is None:
            return None
        metrics.LOOKUPS.inc(tags={"result": "coalesced"})
        return CacheHit("coalesced", body)

    def finish(self, plan: CachePlan, body: Optional[dict]) -> None:
        """The leader is done: wake the followers with its body (None: failed)."""
        fut = self._inflight.pop(plan.exact_key, None)
        if fut is not None and not fut.done():
            fut.set_result(body)

    # ---- write-back --------------------------------------------------------------------------

    def write_back(self, plan: CachePlan, body: dict, miss: CacheMiss, raw: Optional[str] = None) -> None:
        """Store a finished answer without delaying the response (a background task). `raw` is the
        body's JSON when the caller has it already."""
        data = (raw if raw is not None else json.dumps(body, ensure_ascii=False, separators=(",", ":"))).encode()
        task = asyncio.get_running_loop().create_task(self._write(plan, data, miss.embedding))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, plan: CachePlan, data: bytes, embedding: Optional[bytes]) -> None:
        """Write straight to Redis when nothing needs embedding (the lookup's embedding is reused, or
        the entry is exact-only); only an entry whose lookup was bypassed goes to a cache replica to
        be embedded. The replicas learn new entries from the store's stream either way."""
        start = time.perf_counter()
        try:
            if plan.query is None or embedding is not None:
                store = await self._get_store()
                vector = np.frombuffer(embedding, dtype=np.float32) if embedding is not None else None
                await store.put(plan.exact_key, plan.scope, plan.query, vector, data, plan.ttl_s)
            else:
                await asyncio.wait_for(
                    self._semantic.store.remote(plan.exact_key, plan.scope, plan.query, None, data, plan.ttl_s),
                    timeout=max(5.0, self._config.lookup_timeout_s),
                )
        except Exception as e:
            logger.warning("cache write-back failed after %.3fs: %r", time.perf_counter() - start, e)

    async def stats(self) -> dict:
        return await self._semantic.stats.remote()

    async def flush(self) -> int:
        return await self._semantic.flush.remote()
