"""The SemanticCache deployment: embeddings, the vector index and the detail guards, on CPU replicas.

Why its own deployment: embedding is the expensive part of a lookup (a MiniLM forward pass), it
batches well across concurrent requests (`@serve.batch`), and it scales with cache traffic, not with
GPUs. The ingress does the cheap exact-match lookup in Redis itself, calls this deployment for
meaning-level matches, and writes entries to Redis itself with the lookup's embedding; `store` here
is for entries whose lookup was bypassed and still need an embedding.

Each replica keeps the whole index in memory, rebuilt from Redis at start and kept in step by
tailing the store's stream (cache/store.py); a Redis outage only makes lookups miss, and the next
successful read rebuilds the index from what Redis then holds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from dataclasses import replace
from typing import Optional

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from cache import lexicon, metrics
from cache.config import CacheConfig
from cache.embedder import Embedder
from cache.matching import SemanticLookup, guarded_neighbours
from cache.store import CacheStore, IndexRecord, StoreUnavailable, resolve_redis_url
from cache.vector_index import VectorIndex

logger = logging.getLogger("ray.serve")

_TAIL_BLOCK_MS = 500
_RETRY_S = 0.5
_SWEEP_EVERY_S = 30.0


def _count_rejection(reason: str) -> None:
    metrics.GUARD_REJECTIONS.inc(tags={"reason": reason})


class SemanticCache:
    async def __init__(self, config: CacheConfig, embedded_redis: Optional[DeploymentHandle] = None):
        self._config = config
        self._replica = serve.get_replica_context().replica_id.unique_id
        self._store = CacheStore(await resolve_redis_url(config, embedded_redis), config.namespace,
                                 config.redis_timeout_s, config.max_entries)
        e = config.embedder
        self._embedder = Embedder(e.model_path, threads=e.threads, int8=e.int8, backend=e.backend)
        self._index = VectorIndex(self._embedder.dim, config.max_entries)
        self._embed_batch.set_max_batch_size(config.embedder.max_batch_size)
        self._embed_batch.set_batch_wait_timeout_s(config.embedder.batch_wait_timeout_s)
        self._ready = asyncio.Event()
        self._follower = asyncio.create_task(self._follow())
        self._embedder.encode(["warm-up"])
        # Load WordNet now (about 2 s), not at the first lookup, and say which checks are active.
        await asyncio.to_thread(lexicon.load)
        logger.info(lexicon.status())

    # ---- embeddings --------------------------------------------------------------------------

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.003)
    async def _embed_batch(self, texts: list[str]) -> list[np.ndarray]:
        metrics.EMBED_BATCH_SIZE.observe(len(texts))
        # Off the event loop, so that the next batch gathers while this one computes.
        return list(await asyncio.to_thread(self._embedder.encode, texts))

    async def embed(self, text: str) -> np.ndarray:
        """One text's embedding, batched with concurrent callers."""
        return await self._embed_batch(text)

    async def embed_unbatched(self, text: str) -> np.ndarray:
        """The same without @serve.batch, one text per forward pass (the same one core): the
        baseline of bench/cache_lookup.py."""
        return self._embedder.encode([text])[0]

    async def embedding_throughput(self, texts: list[str], concurrency: int, batched: bool) -> float:
        """Texts/s of `concurrency` concurrent embedders inside this replica, through @serve.batch or
        one forward pass each: what batching does, without the callers' DeploymentHandle cost
        (about 4 ms of the caller's CPU per call on the dev machine). Used by bench/cache_lookup.py."""
        queue = list(texts)
        # One forward pass at a time on either path, as `embed_unbatched` runs them: asyncio.to_thread
        # alone would run up to 6 unbatched passes at once on both cores against one batched pass.
        one_at_a_time = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        loop = asyncio.get_running_loop()

        async def worker() -> None:
            while queue:
                text = queue.pop()
                if batched:
                    await self._embed_batch(text)
                else:
                    await loop.run_in_executor(one_at_a_time, self._embedder.encode, [text])

        start = time.perf_counter()
        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            one_at_a_time.shutdown(wait=False)
        return len(texts) / (time.perf_counter() - start)

    # ---- lookups and writes ------------------------------------------------------------------

    async def lookup(self, scope: str, query: str, threshold: float) -> SemanticLookup:
        """The best guarded neighbour's response, or a miss that carries the query's embedding."""
        start = time.perf_counter()
        vector = await self._embed_batch(query)
        result = SemanticLookup(hit=False, embedding=vector.tobytes(), replica=self._replica)
        try:
            for n in guarded_neighbours(self._index, scope, query, vector, threshold, _count_rejection):
                response = await self._store.get_response(n.key)
                if response is None:  # expired or evicted in Redis: forget it here too
                    self._index.remove(scope, n.key)
                    continue
                result = replace(result, hit=True, key=n.key, similarity=n.similarity, response=response)
                break
        except StoreUnavailable as e:
            logger.warning("semantic lookup bypassed: %s", e)
            result = replace(result, bypass=True)
        metrics.LOOKUP_SECONDS.observe(time.perf_counter() - start)
        return result

    async def store(self, exact_key: str, scope: str, query: Optional[str], embedding: Optional[bytes],
                    response: bytes, ttl_s: int) -> bool:
        """Write an entry (embedding the query if the caller has no embedding); False if Redis failed."""
        vector = None
        if query:
            vector = np.frombuffer(embedding, dtype=np.float32) if embedding else await self._embed_batch(query)
        try:
            await self._store.put(exact_key, scope, query, vector, response, ttl_s)
        except StoreUnavailable as e:
            logger.warning("cache write dropped: %s", e)
            return False
        if vector is not None:  # searchable here at once; other replicas learn it from the stream
            self._index.add(IndexRecord(exact_key, scope, query, vector, time.time() + ttl_s))
        return True

    async def flush(self) -> int:
        removed = await self._store.flush()
        self._index.clear()
        return removed

    async def stats(self) -> dict:
        try:
            stored = await self._store.count()
        except StoreUnavailable:
            stored = None
        return {"index_entries": len(self._index), "redis_entries": stored, "synced": self._ready.is_set(),
                "namespace": self._config.namespace}

    async def wait_synced(self, timeout_s: float = 30.0) -> bool:
        await asyncio.wait_for(self._ready.wait(), timeout_s)
        return True

    # ---- keeping the index in step with Redis ------------------------------------------------

    async def _rebuild(self) -> str:
        last_id = await self._store.last_log_id()
        self._index.clear()
        async for rec in self._store.scan_entries():
            self._index.add(rec)
        metrics.ENTRIES.set(len(self._index))
        logger.info("cache index rebuilt from Redis: %d entries", len(self._index))
        return last_id

    async def _follow(self) -> None:
        last_id: Optional[str] = None
        last_sweep = time.monotonic()
        while True:
            try:
                if last_id is None:
                    last_id = await self._rebuild()
                    self._ready.set()
                for event_id, rec in await self._store.read_log(last_id, _TAIL_BLOCK_MS):
                    last_id = event_id
                    if rec is None:
                        self._index.clear()
                    else:
                        self._index.add(rec)
                if time.monotonic() - last_sweep > _SWEEP_EVERY_S:
                    self._index.sweep()
                    last_sweep = time.monotonic()
                metrics.ENTRIES.set(len(self._index))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis gone: keep trying; rebuild from what it holds when back
                logger.warning("cache index follower: %r; retrying", e)
                last_id = None
                await asyncio.sleep(_RETRY_S)

    async def check_health(self) -> None:
        if self._follower.done():
            raise RuntimeError(f"index follower stopped: {self._follower.exception()!r}")

    async def __del__(self):
        self._follower.cancel()
        await self._store.close()
