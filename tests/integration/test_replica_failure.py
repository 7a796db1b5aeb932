"""A killed LLM replica takes its engine processes with it, and Serve replaces the replica. While the
model has no replica: /health says 503, and a request gets 503 with Retry-After (not a hang)."""

import os
import signal
import time

import httpx
import psutil
import pytest

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sigkilled_replica_leaves_no_engine_and_is_replaced(base_url, llm_handle, client, model_name):
    info = llm_handle.process_info.remote().result()
    engine = [p for p in info["engine_pids"] if _alive(p) and "VLLM::" in " ".join(psutil.Process(p).cmdline())]
    assert engine, "expected VLLM::EngineCore/Worker processes under the replica"
    os.kill(info["pid"], signal.SIGKILL)  # no clean-up code of the replica can run
    deadline = time.monotonic() + 15
    while any(_alive(p) for p in engine) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in engine), "engine processes outlived their replica"

    # The model's only replica is gone (its replacement takes tens of seconds to load the engine).
    health = httpx.get(base_url + "/health", timeout=30)
    assert health.status_code == 503, health.text
    assert health.json()["models"][model_name].startswith("unavailable")
    t0 = time.monotonic()
    try:
        r = httpx.post(base_url + "/v1/chat/completions", timeout=30,
                       json={"model": model_name, "messages": [{"role": "user", "content": "anyone?"}],
                             "max_tokens": 2, "cache": {"mode": "off"}})
    except httpx.TimeoutException:
        pytest.fail("a request to a model without a replica was not answered within 30 s")
    waited = time.monotonic() - t0
    replaced = httpx.get(base_url + "/health", timeout=30).status_code == 200
    assert not replaced, "the replica was back before the request was answered: no evidence"
    assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1, (r.status_code, r.text, waited)
    assert r.json()["error"]["code"] == 503

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(base_url + "/health", timeout=10).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(2)
    new = llm_handle.process_info.remote().result()
    assert new["pid"] != info["pid"]
    r = client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "back?"}], max_tokens=3)
    assert r.usage.completion_tokens >= 1
