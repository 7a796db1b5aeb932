"""A client that goes away takes its engine request with it: checked from the engine's own counts.

The engine going idle is not enough (1,800 tokens take 2-6 s here, so a request left to run finishes
within the wait too): vLLM counts a request in `requests_finished` when it ends by itself (stop,
length) and not when it is aborted, so an aborted request leaves the engine idle with that count
unchanged."""

import json
import time

import httpx
import pytest

pytestmark = pytest.mark.integration


def _unfinished(llm_handle) -> int:
    return llm_handle.engine_stats.remote().result()["unfinished"]


def _finished(llm_handle) -> int:
    """The engine's count of requests that ran to their end."""
    return llm_handle.engine_stats.remote().result()["requests_finished"]


def _finished_settled(llm_handle, expect: int) -> int:
    """The count once settled: vLLM's stat logger records a step's finished requests after the step's
    outputs, so the count may move just after the engine reads idle. Returns as soon as it equals
    `expect`, else after 2 s."""
    deadline = time.monotonic() + 2
    while (count := _finished(llm_handle)) != expect and time.monotonic() < deadline:
        time.sleep(0.25)
    return count


def _wait_idle(llm_handle, timeout=30.0) -> float:
    t0 = time.monotonic()
    while _unfinished(llm_handle) != 0:
        assert time.monotonic() - t0 < timeout, "engine still has unfinished requests"
        time.sleep(0.1)
    return time.monotonic() - t0


def _long_request(model_name, stream):
    return {"model": model_name, "messages": [{"role": "user", "content": "go on"}], "max_tokens": 1800,
            "ignore_eos": True, "stream": stream}


def test_stream_disconnect_aborts_engine_request(base_url, model_name, llm_handle):
    _wait_idle(llm_handle)
    with httpx.Client(timeout=30) as c:
        with c.stream("POST", base_url + "/v1/chat/completions", json=_long_request(model_name, True)) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            got = 0
            for line in lines:
                if line.startswith("data: {"):
                    got += 1
                    assert "error" not in json.loads(line[6:])
                if got >= 3:
                    break
            # Generating (1,800 tokens take seconds). Read until seen, for up to 5 s: one read came back
            # 0 in a CI run right after the replica was replaced (a replica-failure test since removed), and the
            # headers and stats below say which replica answered if it happens again.
            seen, t0 = [], time.monotonic()
            deadline = t0 + 5
            while not seen or (seen[-1]["unfinished"] != 1 and time.monotonic() < deadline):
                if seen:
                    time.sleep(0.1)
                seen.append(llm_handle.engine_stats.remote().result())
            assert seen[-1]["unfinished"] == 1, (
                f"replica {r.headers.get('x-raygate-replica')} cache {r.headers.get('x-raygate-cache')}; "
                f"{len(seen)} reads in {time.monotonic() - t0:.1f} s, last {seen[-1]}")
        # leaving the block closes the connection mid-stream
    assert _wait_idle(llm_handle, timeout=5) < 5
    before = seen[-1]["requests_finished"]
    assert _finished_settled(llm_handle, before + 1) == before, "the request ran to its end: not aborted"


# Five attempts: through HAProxy with kernel splicing on, ~30% of these were missed (see
# deployments/haproxy_launcher.py); one attempt would let that regression pass too often.
@pytest.mark.parametrize("attempt", range(5))
def test_non_stream_disconnect_aborts_engine_request(base_url, model_name, llm_handle, attempt):
    _wait_idle(llm_handle)
    finished = _finished(llm_handle)
    with pytest.raises(httpx.ReadTimeout):
        # 1,800 tokens take 2-6 s here: leave after 1 s, mid-generation.
        httpx.post(base_url + "/v1/chat/completions", json=_long_request(model_name, False), timeout=1.0)
    assert _wait_idle(llm_handle, timeout=5) < 5
    assert _finished_settled(llm_handle, finished + 1) == finished, "the request ran to its end: not aborted"


def test_engine_is_idle_after_complete_streams(client, model_name, llm_handle):
    finished = _finished(llm_handle)
    for _ in client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": f"x {time.time_ns()}"}],
                                            max_tokens=5, stream=True):
        pass
    assert _wait_idle(llm_handle, timeout=5) < 5
    # ...and a request that ran to its end is counted: the count the abort tests above read moves.
    assert _finished_settled(llm_handle, finished + 1) == finished + 1
