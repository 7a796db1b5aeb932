"""Rate limits shared by ingress replicas through a real Valkey server, and the memory fallback
when it is unreachable."""

import asyncio
import time

import pytest

from common.errors import APIError
from deployments.rate_limits import TenantRateLimiter
from deployments.tenants import Tenant, TenantSettings


def url_of(value):
    async def get():
        return value
    return get


async def admitted(limiter, tenant, n):
    ok = 0
    for _ in range(n):
        try:
            await limiter.check_request(tenant)
            ok += 1
        except APIError as e:
            assert e.status == 429 and e.retry_after_s >= 1 and "per minute" in e.message
    return ok


async def test_two_replicas_share_one_requests_per_minute_limit(valkey):
    prefix = f"t{time.time_ns()}"
    replicas = [TenantRateLimiter(url_of(valkey), prefix) for _ in range(2)]
    tenant = Tenant("team-a", TenantSettings(requests_per_minute=10))
    counts = await asyncio.gather(*(admitted(r, tenant, 10) for r in replicas))
    assert sum(counts) == 10 and all(c > 0 for c in counts)
    # Another tenant has its own budget.
    assert await admitted(replicas[0], Tenant("team-b", TenantSettings(requests_per_minute=3)), 5) == 3
    # No limit configured: never refused.
    assert await admitted(replicas[1], Tenant("team-c", TenantSettings()), 50) == 50


async def test_token_budget_is_charged_by_cost(valkey):
    limiter = TenantRateLimiter(url_of(valkey), f"t{time.time_ns()}")
    tenant = Tenant("team-a", TenantSettings(tokens_per_minute=100))
    await limiter.charge_tokens(tenant, 60)
    await limiter.charge_tokens(tenant, 40)
    with pytest.raises(APIError) as e:
        await limiter.charge_tokens(tenant, 1)
    assert e.value.status == 429 and "tokens per minute" in e.value.message
    with pytest.raises(APIError) as e:  # can never fit: says so
        await limiter.charge_tokens(Tenant("team-b", TenantSettings(tokens_per_minute=100)), 101)
    assert "lower max_tokens" in e.value.message


async def test_unreachable_redis_falls_back_to_memory_quickly():
    limiter = TenantRateLimiter(url_of("redis://127.0.0.1:1/0"), "t", timeout_s=0.05)
    tenant = Tenant("team-a", TenantSettings(requests_per_minute=5))
    start = time.perf_counter()
    assert await admitted(limiter, tenant, 8) == 5
    assert time.perf_counter() - start < 1.0  # one failed try, then memory until the retry time


async def test_without_redis_limits_are_per_replica():
    limiter = TenantRateLimiter(None, "t")
    assert await admitted(limiter, Tenant("a", TenantSettings(requests_per_minute=2)), 4) == 2
