"""The cache's data in Redis/Valkey: entries with a TTL, and a stream that tells every replica about them.

Layout under `raygate:<namespace>:` (plain Redis 7 commands, no modules):
- `e:<exact key>`  a hash {resp, scope, query, emb}: the stored response body, the scope it may
  serve, the text it was asked with and its embedding (float32). It expires after its TTL; under
  memory pressure `volatile-lru` evicts the least recently used entries first.
- `log`            a stream of "entry added" / "namespace flushed" events, trimmed to `max_entries`.
  Cache replicas tail it to keep their in-memory vector index in step (a write through any
  replica is searchable through every other within one poll), and rebuild from `e:*` on start.

Every call has a deadline (`timeout_s`): a slow or dead Redis makes the cache miss, never the request
fail. The caller counts those bypasses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator, Optional

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle

    from cache.config import CacheConfig

STREAM_FLUSH = b"flush"


async def resolve_redis_url(config: "CacheConfig", embedded: Optional["DeploymentHandle"]) -> str:
    """The Redis URL every cache user shares: `cache.redis_url`, else the embedded Valkey deployment's.

    Raises ValueError when neither is configured."""
    if config.redis_url:
        return config.redis_url
    if embedded is None:
        raise ValueError("cache.redis_url is not set and no embedded Redis deployment was given")
    return await embedded.url.remote()


class StoreUnavailable(Exception):
    """Redis did not answer in time or refused; the cache is bypassed for this call."""


@dataclass(frozen=True)
class IndexRecord:
    """What a replica's vector index holds for an entry (the response stays in Redis)."""

    key: str
    scope: str
    query: str
    embedding: np.ndarray
    expires_at: float


def _prefix(namespace: str) -> str:
    return f"raygate:{namespace}:"


class CacheStore:
    def __init__(self, url: str, namespace: str, timeout_s: float, max_entries: int = 200_000):
        self.url = url
        self.namespace = namespace
        self._prefix = _prefix(namespace)
        self._log = self._prefix + "log"
        self._max_entries = max_entries
        self._timeout_s = timeout_s
        self._redis = aioredis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry_on_timeout=False,
            health_check_interval=0,
        )
        # A blocking stream read needs its own connection and a longer socket timeout.
        self._tail = aioredis.from_url(url, socket_timeout=5.0, socket_connect_timeout=timeout_s)

    def entry_key(self, exact_key: str) -> str:
        return self._prefix + "e:" + exact_key

    async def _call(self, coro):
        try:
            return await coro
        except (RedisError, OSError, TimeoutError) as e:
            raise StoreUnavailable(f"{type(e).__name__}: {e}") from None

    async def ping(self) -> bool:
        return bool(await self._call(self._redis.ping()))

    async def get_response(self, exact_key: str) -> Optional[bytes]:
        """The stored response body for an exact key, or None (absent or expired)."""
        return await self._call(self._redis.hget(self.entry_key(exact_key), "resp"))

    async def put(self, exact_key: str, scope: str, query: Optional[str], embedding: Optional[np.ndarray],
                  response: bytes, ttl_s: int) -> None:
        """Store an entry and announce it on the stream (one round trip, not a transaction)."""
        key = self.entry_key(exact_key)
        fields = {"resp": response, "scope": scope, "query": query or ""}
        if embedding is not None:
            fields["emb"] = np.asarray(embedding, dtype=np.float32).tobytes()
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(key, mapping=fields)
        pipe.expire(key, ttl_s)
        if embedding is not None and query:
            pipe.xadd(self._log, {"k": exact_key, "s": scope, "q": query, "v": fields["emb"],
                                  "x": repr(time.time() + ttl_s)},
                      maxlen=self._max_entries, approximate=True)
        await self._call(pipe.execute())

    async def read_log(self, last_id: str, block_ms: int) -> list[tuple[str, Optional[IndexRecord]]]:
        """Stream events after `last_id`: (event id, record), record None for a flush."""
        try:
            reply = await self._tail.xread({self._log: last_id}, block=block_ms, count=1000)
        except (RedisError, OSError, TimeoutError) as e:
            raise StoreUnavailable(f"{type(e).__name__}: {e}") from None
        events: list[tuple[str, Optional[IndexRecord]]] = []
        for _, items in reply or []:
            for event_id, f in items:
                eid = event_id.decode()
                if f.get(b"op") == STREAM_FLUSH:
                    events.append((eid, None))
                else:
                    events.append((eid, IndexRecord(
                        key=f[b"k"].decode(), scope=f[b"s"].decode(), query=f[b"q"].decode(),
                        embedding=np.frombuffer(f[b"v"], dtype=np.float32), expires_at=float(f[b"x"]))))
        return events

    async def last_log_id(self) -> str:
        """The id of the newest stream event ("0-0" when none): where a rebuilt index starts tailing."""
        info = await self._call(self._redis.xrevrange(self._log, count=1))
        return info[0][0].decode() if info else "0-0"

    async def scan_entries(self, batch: int = 500) -> AsyncIterator[IndexRecord]:
        """Every live entry with an embedding, for rebuilding a replica's index from Redis."""
        now = time.time()
        async for keys in self._scan_batches(self._prefix + "e:*", batch):
            pipe = self._redis.pipeline(transaction=False)
            for k in keys:
                pipe.hmget(k, "scope", "query", "emb")
                pipe.pttl(k)
            replies = await self._call(pipe.execute())
            for k, (scope, query, emb), pttl in zip(keys, replies[0::2], replies[1::2]):
                if emb is None or scope is None or pttl is None or pttl < 0:
                    continue
                yield IndexRecord(
                    key=k.decode()[len(self._prefix) + 2:], scope=scope.decode(), query=(query or b"").decode(),
                    embedding=np.frombuffer(emb, dtype=np.float32), expires_at=now + pttl / 1000.0)

    async def _scan_batches(self, pattern: str, batch: int) -> AsyncIterator[list[bytes]]:
        cursor = 0
        while True:
            cursor, keys = await self._call(self._redis.scan(cursor=cursor, match=pattern, count=batch))
            if keys:
                yield keys
            if cursor == 0:
                return

    async def flush(self) -> int:
        """Delete every entry of the namespace, then tell the replicas to drop their index.

        The stream itself is kept (trimmed to the flush event): a new stream could hand out an id that
        is not above what the replicas have already read, and they would miss the flush."""
        removed = 0
        async for keys in self._scan_batches(self._prefix + "e:*", 1000):
            removed += await self._call(self._redis.unlink(*keys))
        event_id = await self._call(self._redis.xadd(self._log, {"op": STREAM_FLUSH}))
        await self._call(self._redis.xtrim(self._log, minid=event_id))
        return removed

    async def count(self) -> int:
        n = 0
        async for keys in self._scan_batches(self._prefix + "e:*", 1000):
            n += len(keys)
        return n

    async def close(self) -> None:
        for client in (self._redis, self._tail):
            try:
                await client.aclose()
            except Exception:
                pass
