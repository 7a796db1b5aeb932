"""Per-tenant rate limits that hold across every ingress replica, kept in Redis by the `limits` library.

Why Redis: a limit per ingress replica would let a tenant through N times over with N replicas;
the counters must be shared, and the app already runs a Redis (the cache's). Requests per minute
use a moving window (exact: a tenant gets its limit in any 60 s, never a burst of twice it at a
window edge); tokens per minute use a sliding-window counter, which takes a cost per hit in O(1).
The limit is checked before the request does any work and answers 429 with Retry-After.

If Redis is down or slow (past `timeout_s`), each replica enforces the limits alone from memory
until it is back (a tenant may then get up to N times its limit across N replicas), and a metric
counts it; a limiter never fails or stalls a request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Awaitable, Callable, Optional

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter, RateLimiter, SlidingWindowCounterRateLimiter

from deployments import serving_metrics
from common.errors import APIError
from deployments.tenants import Tenant

logger = logging.getLogger("ray.serve")

# After Redis fails, stay on memory this long before trying it again (one slow call, not one per request).
_RETRY_REDIS_AFTER_S = 2.0


class _Limiters:
    """One storage and the two strategies over it."""

    def __init__(self, storage):
        self.storage = storage
        self.requests: RateLimiter = MovingWindowRateLimiter(storage)
        self.tokens: RateLimiter = SlidingWindowCounterRateLimiter(storage)


class TenantRateLimiter:
    def __init__(self, redis_url: Optional[Callable[[], Awaitable[Optional[str]]]], key_prefix: str,
                 timeout_s: float = 0.1):
        """`redis_url` returns the Redis to share counters in (None: this replica's memory only)."""
        self._redis_url = redis_url
        self._key_prefix = key_prefix
        self._timeout_s = timeout_s
        self._shared: Optional[_Limiters] = None
        self._local = _Limiters(MemoryStorage())
        self._redis_down_until = 0.0
        self._items: dict[tuple[str, int], RateLimitItem] = {}

    def _item(self, kind: str, per_minute: int) -> RateLimitItem:
        key = (kind, per_minute)
        item = self._items.get(key)
        if item is None:
            item = self._items[key] = RateLimitItemPerMinute(per_minute, namespace=kind)
        return item

    async def _limiters(self) -> _Limiters:
        if self._shared is None and self._redis_url is not None and time.monotonic() >= self._redis_down_until:
            url = await asyncio.wait_for(self._redis_url(), timeout=5)
            if url is None:
                self._redis_url = None
                return self._local
            self._shared = _Limiters(RedisStorage(
                "async+" + url, implementation="redispy", key_prefix=self._key_prefix,
                socket_timeout=self._timeout_s, socket_connect_timeout=self._timeout_s))
        return self._shared if self._shared is not None else self._local

    async def _hit(self, kind: str, tenant: Tenant, per_minute: int, cost: int) -> None:
        item = self._item(kind, per_minute)
        if cost > per_minute:
            serving_metrics.RATE_LIMITED.inc(tags={"tenant": tenant.name, "limit": kind})
            raise APIError(429, f"This request needs an estimated {cost} tokens, more than this API key's "
                                f"limit of {per_minute} {kind} per minute; lower max_tokens.", retry_after_s=60)
        limiters = self._local
        if time.monotonic() >= self._redis_down_until:
            try:
                limiters = await self._limiters()
                strategy = limiters.requests if kind == "requests" else limiters.tokens
                allowed = await asyncio.wait_for(strategy.hit(item, tenant.name, cost=cost), self._timeout_s * 2)
                if not allowed:
                    await self._refuse(strategy, item, tenant, kind, per_minute)
                return
            except APIError:
                raise
            except Exception as e:  # noqa: BLE001 - Redis down, slow or misconfigured
                logger.warning("rate limits fall back to this replica's memory: %r", e)
                serving_metrics.RATE_LIMIT_FALLBACKS.inc()
                self._redis_down_until = time.monotonic() + _RETRY_REDIS_AFTER_S
                self._shared = None
                limiters = self._local
        strategy = limiters.requests if kind == "requests" else limiters.tokens
        if not await strategy.hit(item, tenant.name, cost=cost):
            await self._refuse(strategy, item, tenant, kind, per_minute)

    async def _refuse(self, strategy: RateLimiter, item: RateLimitItem, tenant: Tenant, kind: str,
                      per_minute: int) -> None:
        try:
            stats = await asyncio.wait_for(strategy.get_window_stats(item, tenant.name), self._timeout_s * 2)
            retry = max(1.0, math.ceil(stats.reset_time - time.time()))
        except Exception:  # noqa: BLE001 - the refusal stands; only the hint is rough
            retry = 1.0
        serving_metrics.RATE_LIMITED.inc(tags={"tenant": tenant.name, "limit": kind})
        raise APIError(429, f"Rate limit reached: this API key allows {per_minute} {kind} per minute. "
                            f"Retry after {int(retry)} s.", retry_after_s=retry)

    async def check_request(self, tenant: Tenant) -> None:
        """Count one request against the tenant's requests-per-minute limit; 429 beyond it."""
        rpm = tenant.settings.requests_per_minute
        if rpm is not None:
            await self._hit("requests", tenant, rpm, 1)

    async def charge_tokens(self, tenant: Tenant, tokens: int) -> None:
        """Charge a request's estimated tokens against the tenant's tokens-per-minute; 429 beyond it."""
        tpm = tenant.settings.tokens_per_minute
        if tpm is not None:
            await self._hit("tokens", tenant, tpm, tokens)
