"""The only replica of a model is lost: /health says 503 naming the model, new requests are refused at
once (503 + Retry-After) within their deadline until the replacement is ready, then served
(deployments/model_call.py, deployments/ingress.py).

Before: with the only LLM replica SIGKILLed, new requests waited ~31 s in Serve's router and were
then served. Runs on the test app's stand-in model (one replica while idle, and a replacement that
starts in seconds), so the rest of the suite keeps its real-engine replicas. That a killed replica's
engine processes die with it is shown on real engines in tests/integration/test_fault_tolerance.py.
"""

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.integration.shared_app import AUTOSCALED_MODEL

pytestmark = pytest.mark.integration


def test_requests_to_a_model_whose_only_replica_died_are_refused_at_once_then_served(base_url, ray_context):
    from ray import serve

    handle = serve.get_deployment_handle("LLM:" + AUTOSCALED_MODEL, app_name="raygate")
    deadline = time.monotonic() + 120
    while True:  # one replica (the autoscaling test may have left a second one draining)
        listing = httpx.get(base_url + "/admin/models", timeout=30).json()["models"][AUTOSCALED_MODEL]
        replicas = [r["replica"] for r in listing["replicas"] if "error" not in r]
        if len(replicas) == 1:
            break
        assert time.monotonic() < deadline, listing
        time.sleep(1)
    info = handle.process_info.remote(replica=replicas[0]).result()
    os.kill(info["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    # /health asked at once, beside the first request (asked first it could use up the seconds the
    # replacement takes, leaving no refusal to see).
    pool = ThreadPoolExecutor(1)
    health = pool.submit(httpx.get, base_url + "/health", timeout=30)

    body = {"model": AUTOSCALED_MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "are you back?"}]}
    refused, served_after = [], None
    while served_after is None:
        assert time.monotonic() - killed_at < 180, f"not served 180 s after the kill; refusals: {refused[-3:]}"
        t0 = time.monotonic()
        r = httpx.post(base_url + "/v1/chat/completions", json=body, timeout=30,
                       headers={"x-raygate-timeout-ms": "3000"})
        took = time.monotonic() - t0
        if r.status_code == 200:
            served_after = time.monotonic() - killed_at
            break
        # Refused within the request's deadline (3 s, plus the retries' back-off), never held.
        assert r.status_code in (503, 504), r.text
        assert took < 5, f"a refusal took {took:.1f} s"
        assert r.headers.get("retry-after"), r.headers
        refused.append((round(took, 2), r.status_code, r.json()["error"]["message"][:80]))
        time.sleep(0.5)
    health = health.result()
    pool.shutdown()
    print(f"{len(refused)} refused (first: {refused[:2]}), served {served_after:.1f} s after the kill; "
          f"/health: {health.status_code} {health.text[:200]}")
    assert health.status_code == 503, health.text
    assert health.json()["models"][AUTOSCALED_MODEL].startswith("unavailable"), health.text
    assert refused, "the replica was replaced before any request noticed: the test proved nothing"
