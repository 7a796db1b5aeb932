"""Queue-length autoscaling inside the live Serve controller (deployments/autoscaling.py).

The test app's third model runs the stand-in engine with a 2-request batch, 1 to 2 replicas and a
target of 20 running requests per replica. A load step of 8 long streams puts 2 in the "engine"
batch and 6 waiting in it: Serve's own policy sees 8 ongoing requests, under the target, and would
keep 1 replica; the queue-length policy weighs the engine's waiting requests (reported by the replica
through `record_autoscaling_stats`) 4x and asks for 2. So the deployment grows only if the policy
runs in the controller and reads the engine's waiting count; when the load ends it shrinks back.
"""

import asyncio
import time

import httpx
import pytest

from tests.integration.shared_app import AUTOSCALED_MODEL

pytestmark = pytest.mark.integration

DEPLOYMENT = "LLM:" + AUTOSCALED_MODEL


def _running_replicas() -> int:
    from ray import serve

    status = serve.status().applications["raygate"].deployments[DEPLOYMENT]
    return int(status.replica_states.get("RUNNING", 0))


def _wait_for(replicas: int, timeout_s: float) -> float:
    t0 = time.monotonic()
    while _running_replicas() != replicas:
        assert time.monotonic() - t0 < timeout_s, f"{DEPLOYMENT}: not {replicas} replicas after {timeout_s} s"
        time.sleep(0.5)
    return time.monotonic() - t0


async def _stream(client: httpx.AsyncClient, base_url: str, i: int) -> None:
    body = {"model": AUTOSCALED_MODEL, "stream": True, "max_tokens": 400,
            "messages": [{"role": "user", "content": f"autoscale {i} {time.time_ns()}"}]}
    async with client.stream("POST", base_url + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        async for _ in r.aiter_lines():
            pass


def test_a_load_step_grows_the_deployment_through_the_engines_waiting_count_and_its_end_shrinks_it(
        base_url, ray_context):
    from ray import serve

    _wait_for(1, timeout_s=120)
    handle = serve.get_deployment_handle(DEPLOYMENT, app_name="raygate")

    async def step() -> tuple[float, dict]:
        async with httpx.AsyncClient(timeout=300) as client:
            load = [asyncio.ensure_future(_stream(client, base_url, i)) for i in range(8)]
            try:
                await asyncio.sleep(1.0)
                stats = await handle.record_autoscaling_stats.remote()
                grew = await asyncio.to_thread(_wait_for, 2, 60)
                return grew, stats
            finally:
                for t in load:
                    t.cancel()
                await asyncio.gather(*load, return_exceptions=True)

    grew_after_s, stats = asyncio.run(step())
    # The replica reported the engine's queue: 2 running in the batch, the rest waiting in it.
    assert stats["engine_running"] <= 2 and stats["engine_waiting"] >= 1, stats
    print(f"2 replicas {grew_after_s:.1f} s after the load step (stats then: {stats})")
    shrank_after_s = _wait_for(1, timeout_s=90)
    print(f"back to 1 replica {shrank_after_s:.1f} s after the load ended")
