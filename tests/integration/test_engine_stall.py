"""A frozen engine is detected, killed and its replica replaced (deployments/engine_watchdog.py).

On the two-replica model (stall_timeout_s 5 in the test app): a long stream runs on one replica,
whose `VLLM::EngineCore` is then stopped with SIGSTOP (a hung step, as a stuck accelerator or a
deadlocked collective would leave it). Within the stall timeout plus the watchdog's period the
stream ends with an SSE error event, the replica says why it is unhealthy, the frozen process is
gone (killed, not left stopped), requests keep being answered by the other replica, and Serve
replaces the frozen one. While every engine is frozen, a request with `x-raygate-timeout-ms: 1500` is answered
with 504 at its deadline.
"""

import json
import os
import signal
import time

import httpx
import psutil
import pytest

from tests.integration.test_fault_tolerance import _alive, _two_replicas

pytestmark = pytest.mark.integration


@pytest.fixture
def routed_handle(ray_context, routed_model):
    from ray import serve

    from deployments.config import llm_deployment_name

    return serve.get_deployment_handle(llm_deployment_name(routed_model), app_name="raygate")


def _engine_core(pids: list[int]) -> int:
    for pid in pids:
        try:
            if "EngineCore" in " ".join(psutil.Process(pid).cmdline()) or "EngineCore" in psutil.Process(pid).name():
                return pid
        except psutil.NoSuchProcess:
            pass
    raise AssertionError(f"no VLLM::EngineCore among {pids}")


def test_a_frozen_engine_is_killed_its_stream_ends_with_an_error_and_its_replica_is_replaced(
        base_url, routed_model, routed_handle):
    before = _two_replicas(base_url, routed_model)
    infos = {r: routed_handle.process_info.remote(replica=r).result() for r in before}
    frozen_pid = None
    try:
        body = {"model": routed_model, "stream": True, "max_tokens": 3000, "ignore_eos": True,
                "messages": [{"role": "user", "content": f"stall test {time.time_ns()}"}]}
        with httpx.stream("POST", base_url + "/v1/chat/completions", json=body, timeout=120) as r:
            assert r.status_code == 200
            target = r.headers["x-raygate-replica"]
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert '"choices"' in first
            engine_pids = [p for p in infos[target]["engine_pids"] if _alive(p)]
            frozen_pid = _engine_core(engine_pids)
            os.kill(frozen_pid, signal.SIGSTOP)
            frozen_at = time.monotonic()
            # A request with a 1.5 s deadline while every engine is frozen (the other replica's for a
            # moment too, so that the router has no live engine to send it to) is answered at its
            # deadline, not held: 504 with the call cancelled (deployments/model_call.py), where it once
            # hung as long as the freeze. The other engine is thawed well within the 5 s stall timeout.
            other = next(r for r in before if r != target)
            paused_pid = _engine_core([p for p in infos[other]["engine_pids"] if _alive(p)])
            os.kill(paused_pid, signal.SIGSTOP)
            try:
                t0 = time.monotonic()
                late = httpx.post(base_url + "/v1/chat/completions", timeout=30,
                                  headers={"x-raygate-timeout-ms": "1500"},
                                  json={"model": routed_model, "max_tokens": 4, "cache": {"mode": "off"},
                                        "messages": [{"role": "user", "content": f"deadline {time.time_ns()}"}]})
                took = time.monotonic() - t0
            finally:
                os.kill(paused_pid, signal.SIGCONT)
            assert late.status_code == 504, (late.status_code, late.text[:200])
            assert "deadline" in late.json()["error"]["message"], late.text
            assert 1.4 < took < 3.0, f"answered {took:.2f} s after it was sent, with a 1.5 s deadline"
            events = [line[6:] for line in lines if line.startswith("data: ")]
            ended_after = time.monotonic() - frozen_at
        # The stream ended with an error event and [DONE], within the stall timeout (5 s) plus the
        # watchdog's period and the kill, not when the client gave up.
        assert events[-1] == "[DONE]"
        assert "error" in json.loads(events[-2]), events[-3:]
        assert ended_after < 20, f"the stream ended {ended_after:.1f} s after the freeze"
        # The replica says why; the frozen engine core was killed, not left stopped.
        stats = routed_handle.engine_stats.remote(replica=target).result()
        assert stats["unhealthy"] and "stalled" in stats["unhealthy"], stats
        deadline = time.monotonic() + 10
        while _alive(frozen_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(frozen_pid), "the frozen engine core is still there"
        frozen_pid = None
        # Requests are still answered (by the other replica, or retried there).
        for i in range(3):
            r = httpx.post(base_url + "/v1/chat/completions", timeout=60,
                           json={"model": routed_model, "max_tokens": 8,
                                 "messages": [{"role": "user", "content": f"after the stall {i} {time.time_ns()}"}]})
            assert r.status_code == 200, r.text
        # Serve replaced the frozen replica.
        _two_replicas(base_url, routed_model, without=target)
    finally:
        if frozen_pid is not None and _alive(frozen_pid):
            os.kill(frozen_pid, signal.SIGKILL)
