"""Queue-length autoscaling inside the live Serve controller (deployments/autoscaling.py).

The test app's third model runs the stand-in engine with a 2-request batch, 1 to 2 replicas and a
target of 20 running requests per replica. A load step of 8 long streams puts 2 in the "engine"
batch and 6 waiting in it: Serve's own policy sees 8 ongoing requests, under the target, and would
keep 1 replica; the queue-length policy weighs the engine's waiting requests (reported by the replica
through `record_autoscaling_stats`) 4x and asks for 2. So the deployment grows only if the policy
runs in the controller and reads the engine's waiting count; when the load ends it shrinks back.

The test waits for the decision (a second replica placed, in any state) and then, separately and
with more time, for that replica to run, while the load repeats its streams. In the CI of aa3cc4a
the controller upscaled 1 s into the step, the new replica was still starting 24 s later (a stand-in
replica starts in 15-22 s on a quiet host, 102 s during the app's start), and by then the first two
400-token streams (20 s at 50 ms ITL) had ended: 2 running + 4 x 4 waiting = 18 < 20, so the policy
rightly asked for 1 and Serve stopped the starting replica (controller log). With the streams
repeated the load stays at 8 until the second replica runs.
"""

import asyncio
import time

import httpx
import pytest

from tests.integration.shared_app import AUTOSCALED_MODEL

pytestmark = pytest.mark.integration

DEPLOYMENT = "LLM:" + AUTOSCALED_MODEL


def _replica_states() -> dict[str, int]:
    from ray import serve

    status = serve.status().applications["raygate"].deployments[DEPLOYMENT]
    return {getattr(state, "value", state): int(n) for state, n in status.replica_states.items()}


def _running_replicas() -> int:
    return _replica_states().get("RUNNING", 0)


def _placed_replicas() -> int:
    """Replicas the controller wants: every state but STOPPING (STARTING, RUNNING, ...)."""
    return sum(n for state, n in _replica_states().items() if state != "STOPPING")


def _wait_until(count, replicas: int, timeout_s: float) -> float:
    t0 = time.monotonic()
    while count() != replicas:
        assert time.monotonic() - t0 < timeout_s, (
            f"{DEPLOYMENT}: {count.__name__} not {replicas} after {timeout_s} s: {_replica_states()}")
        time.sleep(0.5)
    return time.monotonic() - t0


def _wait_for(replicas: int, timeout_s: float) -> float:
    return _wait_until(_running_replicas, replicas, timeout_s)


async def _streams(client: httpx.AsyncClient, base_url: str, i: int, stop: asyncio.Event) -> None:
    """Stream 400-token answers (20 s each at the stand-in's 50 ms ITL) one after another until `stop`."""
    while not stop.is_set():
        body = {"model": AUTOSCALED_MODEL, "stream": True, "max_tokens": 400,
                "messages": [{"role": "user", "content": f"autoscale {i} {time.time_ns()}"}]}
        async with client.stream("POST", base_url + "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            async for _ in r.aiter_lines():
                if stop.is_set():
                    return


def test_a_load_step_grows_the_deployment_through_the_engines_waiting_count_and_its_end_shrinks_it(
        base_url, ray_context):
    from ray import serve

    _wait_for(1, timeout_s=120)
    handle = serve.get_deployment_handle(DEPLOYMENT, app_name="raygate")

    async def step() -> tuple[float, float, dict]:
        stop = asyncio.Event()
        async with httpx.AsyncClient(timeout=300) as client:
            load = [asyncio.ensure_future(_streams(client, base_url, i, stop)) for i in range(8)]
            try:
                # The replica reports the engine's queue: 2 running in the batch, the rest waiting in
                # it (polled: on a loaded host the 8 requests take a while to reach the engine).
                deadline = time.monotonic() + 30
                while True:
                    await asyncio.sleep(1.0)
                    stats = await handle.record_autoscaling_stats.remote()
                    if stats["engine_waiting"] >= 1 or time.monotonic() > deadline:
                        break
                assert stats["engine_running"] <= 2 and stats["engine_waiting"] >= 1, stats
                decided = await asyncio.to_thread(_wait_until, _placed_replicas, 2, 60)
                running = await asyncio.to_thread(_wait_for, 2, 240)
                return decided, decided + running, stats
            finally:
                stop.set()
                for t in load:
                    t.cancel()
                await asyncio.gather(*load, return_exceptions=True)

    decided_after_s, grew_after_s, stats = asyncio.run(step())
    print(f"a second replica placed {decided_after_s:.1f} s and running {grew_after_s:.1f} s after the load "
          f"step (stats then: {stats})")
    shrank_after_s = _wait_for(1, timeout_s=90)
    print(f"back to 1 replica {shrank_after_s:.1f} s after the load ended")
