"""Replica choice and admission control on the test app's second model (2 replicas, prefix router,
small admission bounds; see conftest.routed_model_config), through real HTTP.

Which replica served a request is read from the `x-raygate-replica` response header; what the
engines did, from their own counters (`/admin/models`, per replica).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from bench.servers import REPO

pytestmark = pytest.mark.integration


def _body(model: str, user: str, system: str | None = None, max_tokens: int = 2, stream: bool = False) -> dict:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": stream,
            "cache": {"mode": "off"}}


def _chat(base_url, model, user, system=None, headers=None, timeout=60) -> httpx.Response:
    return httpx.post(base_url + "/v1/chat/completions", json=_body(model, user, system), headers=headers or {},
                      timeout=timeout)


def _engines(base_url, model) -> dict[str, dict]:
    listing = httpx.get(base_url + "/admin/models", timeout=30).json()["models"][model]
    return {r["replica"]: r for r in listing["replicas"]}


def _started(base_url, model) -> int:
    return sum(r["requests_started"] for r in _engines(base_url, model).values())


def _inflight(base_url, model) -> int:
    listing = httpx.get(base_url + "/admin/models", params={"engines": "false"}, timeout=30).json()
    return listing["models"][model]["admission"]["inflight"]


def _queued(base_url, model) -> dict[str, int]:
    listing = httpx.get(base_url + "/admin/models", params={"engines": "false"}, timeout=30).json()
    return listing["models"][model]["admission"]["queued"]


def _long_system(topic: str) -> str:
    return f"[{uuid.uuid4().hex}] You are an expert on {topic}. Explain every step and cite your sources. " * 20


@contextlib.contextmanager
def _held_slots(base_url, model, n):
    """`n` long streaming generations (4,000 tokens each: tens of seconds on this host) that occupy
    admission slots until the block ends; closing one frees its slot at once."""
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(httpx.Client(timeout=60))
        streams = []
        for i in range(n):
            body = _body(model, f"count to a thousand, attempt {i}", max_tokens=4000, stream=True)
            body["ignore_eos"] = True
            r = stack.enter_context(client.stream("POST", base_url + "/v1/chat/completions", json=body))
            assert r.status_code == 200
            lines = r.iter_lines()  # kept: a dropped line iterator closes the response
            assert next(lines).startswith("data: {")
            streams.append((r, lines))
        t0 = time.monotonic()
        while _inflight(base_url, model) < n:
            if time.monotonic() - t0 > 30:  # the gate never held all n at once: a generation ended first
                yield None
                return
            time.sleep(0.05)
        yield [r for r, _ in streams]


_ENDED = object()  # what a test step returns when a held generation ended before it was released


def _with_full_gate(base_url, model, step, tries=3):
    """`step(streams)` while 2 held generations fill the model's 2 admission slots. On a loaded
    2-core host a held generation can finish before the step is done with it; such a run shows
    nothing (the step returns `_ENDED`, or the slots were never all held at once) and is repeated
    with fresh generations."""
    for _ in range(tries):
        with _held_slots(base_url, model, 2) as streams:
            result = _ENDED if streams is None else step(streams)
        _wait_idle(base_url, model, timeout=60)
        if result is not _ENDED:
            return result
    pytest.fail(f"the held generations ended on their own in {tries} runs")


def _wait_idle(base_url, model, timeout=30.0) -> None:
    t0 = time.monotonic()
    while any(r["unfinished"] for r in _engines(base_url, model).values()):
        assert time.monotonic() - t0 < timeout, "the engines still have unfinished requests"
        time.sleep(0.1)


# ---- several models -------------------------------------------------------------------------------

def test_two_models_are_served_side_by_side(base_url, model_name, routed_model):
    listed = {m["id"] for m in httpx.get(base_url + "/v1/models", timeout=30).json()["data"]}
    assert {model_name, routed_model} <= listed
    a = _chat(base_url, model_name, "hello")
    b = _chat(base_url, routed_model, "hello")
    assert a.status_code == b.status_code == 200
    assert a.json()["model"] == model_name and b.json()["model"] == routed_model
    assert a.headers["x-raygate-replica"] not in _engines(base_url, routed_model)
    assert b.headers["x-raygate-replica"] in _engines(base_url, routed_model)
    assert len(_engines(base_url, routed_model)) == 2
    missing = _chat(base_url, "no-such-model", "hello")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"


# ---- routing --------------------------------------------------------------------------------------

def test_requests_sharing_a_system_prompt_go_to_the_replica_that_holds_it(base_url, routed_model):
    _wait_idle(base_url, routed_model)
    system_a, system_b = _long_system("railway signalling"), _long_system("tidal power")
    served_a = {_chat(base_url, routed_model, f"question {i}", system_a).headers["x-raygate-replica"] for i in range(5)}
    assert len(served_a) == 1
    (replica_a,) = served_a
    hits_before = _engines(base_url, routed_model)[replica_a]["prefix_cache_hits"]
    assert _chat(base_url, routed_model, "one more", system_a).headers["x-raygate-replica"] == replica_a
    # The engine confirms: the shared system prompt (~400 tokens) came from its prefix cache.
    assert _engines(base_url, routed_model)[replica_a]["prefix_cache_hits"] - hits_before >= 256
    # A new system prompt goes to the replica holding fewer prefixes, and then stays there.
    served_b = {_chat(base_url, routed_model, f"question {i}", system_b).headers["x-raygate-replica"] for i in range(5)}
    assert len(served_b) == 1 and served_b != served_a


def test_a_configured_system_prompt_is_prefilled_on_every_replica(base_url, routed_model):
    from tests.integration.shared_app import WARM_SYSTEM_PROMPT

    _wait_idle(base_url, routed_model)
    before = _engines(base_url, routed_model)
    r = _chat(base_url, routed_model, f"when is the next train? {uuid.uuid4().hex}", WARM_SYSTEM_PROMPT)
    assert r.status_code == 200
    after = _engines(base_url, routed_model)
    replica = r.headers["x-raygate-replica"]
    hits = after[replica]["prefix_cache_hits"] - before[replica]["prefix_cache_hits"]
    queried = after[replica]["prefix_cache_queries"] - before[replica]["prefix_cache_queries"]
    # vLLM on CPU caches whole 128-token blocks: every block but the one holding the question hits.
    assert hits >= 128 and hits >= 128 * (queried // 128 - 1), (hits, queried)
    # Contrast: a system prompt nobody prefilled finds nothing on its first request.
    fresh = f"[{uuid.uuid4().hex}] " + WARM_SYSTEM_PROMPT
    before = _engines(base_url, routed_model)
    r = _chat(base_url, routed_model, f"when is the next train? {uuid.uuid4().hex}", fresh)
    after = _engines(base_url, routed_model)
    replica = r.headers["x-raygate-replica"]
    assert after[replica]["prefix_cache_hits"] - before[replica]["prefix_cache_hits"] == 0


def _two_prefixes_on_two_replicas(base_url, model) -> tuple[str, str, str, str]:
    """Two fresh system prompts, each routed to (and held by) a different replica:
    (system_p, replica_p, system_q, replica_q)."""
    held: dict[str, str] = {}
    for _ in range(6):
        system = _long_system("session routing")
        replica = _chat(base_url, model, "warm", system).headers["x-raygate-replica"]
        held.setdefault(replica, system)
        if len(held) == 2:
            (replica_p, system_p), (replica_q, system_q) = held.items()
            return system_p, replica_p, system_q, replica_q
    pytest.fail(f"six new system prompts all went to one replica: {held}")


def test_a_session_stays_on_its_replica(base_url, routed_model):
    """Session affinity outranks prefix affinity: a session that began on replica Q stays there even
    for prompts whose prefix only replica P holds, which every request without the session goes to."""
    _wait_idle(base_url, routed_model)
    system_p, replica_p, system_q, replica_q = _two_prefixes_on_two_replicas(base_url, routed_model)
    # Without a session, P's prefix goes to P (the control: what a lost session id would look like).
    assert _chat(base_url, routed_model, "no session", system_p).headers["x-raygate-replica"] == replica_p
    session = {"x-session-id": f"session-{uuid.uuid4().hex}"}
    first = _chat(base_url, routed_model, "my first question", system_q, headers=session)
    assert first.headers["x-raygate-replica"] == replica_q
    served = [_chat(base_url, routed_model, f"follow-up {i}", system_p, headers=session).headers["x-raygate-replica"]
              for i in range(4)]
    assert served == [replica_q] * 4, (served, replica_p, replica_q)


def test_an_overloaded_prefix_holder_sheds_to_the_other_replica(base_url, routed_model):
    """imbalance_abs=0 in the test app: a holder with one request more than the other replica is
    overloaded, so a second concurrent request with its prefix goes to the shorter queue."""
    _wait_idle(base_url, routed_model)
    system = _long_system("glacier hydrology")
    holder = _chat(base_url, routed_model, "warm", system).headers["x-raygate-replica"]

    async def main():
        async with httpx.AsyncClient(timeout=60) as client:
            async def one(i):
                # 3,000 tokens: the holder's generation must still run when the second request is
                # routed (600 tokens took under 0.5 s on a quiet host, and a finished one is not load).
                body = _body(routed_model, f"long answer {i}", system, max_tokens=3000, stream=True)
                body["ignore_eos"] = True
                async with client.stream("POST", base_url + "/v1/chat/completions", json=body) as r:
                    assert r.status_code == 200
                    replica = r.headers["x-raygate-replica"]
                    routed.set()
                    await gate.wait()  # keep every stream open until all have been routed
                    return replica

            gate, routed = asyncio.Event(), asyncio.Event()
            tasks = [asyncio.create_task(one(0))]
            await asyncio.wait_for(routed.wait(), timeout=30)
            counted = (await client.get(base_url + "/admin/models", params={"engines": "false"})).json()
            tasks.append(asyncio.create_task(one(1)))
            await asyncio.sleep(0.5)
            gate.set()
            return await asyncio.gather(*tasks), counted["models"][routed_model]["router_queue_lens"]

    served, counted = asyncio.run(main())
    assert counted[holder] >= 1, counted  # the router counts the first stream against the holder
    assert served[0] == holder
    assert set(served) == set(_engines(base_url, routed_model)), served


# ---- admission ------------------------------------------------------------------------------------

def test_a_request_past_its_deadline_never_reaches_the_engine(base_url, routed_model):
    _wait_idle(base_url, routed_model)
    before = _started(base_url, routed_model)
    r = _chat(base_url, routed_model, "too late", headers={"x-raygate-timeout-ms": "0"})
    assert r.status_code == 503 and "deadline" in r.json()["error"]["message"] and r.headers["retry-after"]
    r = _chat(base_url, routed_model, "too late", headers={"x-raygate-deadline": f"{time.time() - 5:.3f}"})
    assert r.status_code == 503
    assert _started(base_url, routed_model) == before

    def waits_then_expires(streams):
        held = _started(base_url, routed_model)
        t0 = time.monotonic()
        r = _chat(base_url, routed_model, "waits, then expires", headers={"x-raygate-timeout-ms": "700"})
        waited = time.monotonic() - t0
        if r.status_code == 200:  # a held generation ended during the wait and freed its slot: no evidence
            return _ENDED
        # (A held generation that ends after the request expired changes nothing here: the answer is
        # the evidence, not the gate's state afterwards, which took seconds to read on a loaded host.)
        assert r.status_code == 503 and "deadline" in r.json()["error"]["message"], (r.status_code, r.text)
        assert waited >= 0.6  # it waited for a slot until its deadline, then was dropped
        assert _started(base_url, routed_model) == held
        return True

    _with_full_gate(base_url, routed_model, waits_then_expires)


def test_the_replica_drops_a_request_whose_deadline_passed_on_the_way(ray_context, base_url, routed_model):
    """The ingress checked the deadline, but the request then waited in Serve's queues: the replica
    checks again before the engine."""
    from ray import serve

    from deployments.config import llm_deployment_name
    from deployments.request_parsing import validate_request
    from deployments.request_view import RequestKind

    _wait_idle(base_url, routed_model)
    before = _started(base_url, routed_model)
    handle = serve.get_deployment_handle(llm_deployment_name(routed_model), app_name="raygate")
    request = validate_request(RequestKind.CHAT, _body(routed_model, "late"))
    stream = handle.options(stream=True).generate.remote(RequestKind.CHAT, request, uuid.uuid4().hex,
                                                         deadline=time.time() - 0.5)
    head = next(iter(stream))
    assert head.status == 503 and "deadline" in head.body
    assert _started(base_url, routed_model) == before


def test_waiting_requests_are_dequeued_by_priority(base_url, routed_model):
    """Both slots held; low, normal and high arrive in that order; one slot is freed. It serves the
    waiters one after another (each frees it for the next), so they finish in the order dispatched."""
    _wait_idle(base_url, routed_model)

    def free_one_slot(streams):
        finished: list[str] = []

        async def main():
            async with httpx.AsyncClient(timeout=120) as client:
                async def one(priority):
                    r = await client.post(base_url + "/v1/chat/completions", json=_body(routed_model, priority),
                                          headers={"x-raygate-priority": priority})
                    assert r.status_code == 200, r.text
                    finished.append(priority)

                tasks = []
                for priority in ("low", "normal", "high"):
                    tasks.append(asyncio.create_task(one(priority)))
                    await asyncio.sleep(0.3)
                # All three waiting at the gate before a slot is freed: on a loaded host a request can
                # reach the ingress later than 0.3 s after it was sent, and one not yet queued when
                # the slot frees is not in the contest.
                deadline = time.monotonic() + 20
                while sum((await asyncio.to_thread(_queued, base_url, routed_model)).values()) < 3:
                    if finished or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.1)
                if finished:  # a held generation ended by itself: no evidence
                    await asyncio.gather(*tasks, return_exceptions=True)
                    return _ENDED
                await asyncio.to_thread(streams[0].close)
                await asyncio.gather(*tasks)
            if _inflight(base_url, routed_model) < 1:  # the other held generation ended meanwhile
                return _ENDED
            return finished

        return asyncio.run(main())

    assert _with_full_gate(base_url, routed_model, free_one_slot) == ["high", "normal", "low"]


def test_a_full_queue_refuses_lower_priorities_on_arrival(base_url, routed_model):
    """max_queued 4 with shares low 0.5, normal 0.75: two lows may wait, a third is refused on arrival
    (while the held generations still hold both slots: it did not wait for one), and a high-priority
    request still gets in line."""
    _wait_idle(base_url, routed_model)

    def fill_the_queue(streams):
        async def main():
            async with httpx.AsyncClient(timeout=120) as client:
                def post(priority):
                    return client.post(base_url + "/v1/chat/completions", json=_body(routed_model, priority),
                                       headers={"x-raygate-priority": priority})

                waiting = [asyncio.create_task(post("low")) for _ in range(2)]
                await asyncio.sleep(0.5)
                # Both lows waiting at the gate before the third is sent (a loaded host can take
                # longer than 0.5 s to bring a request to the ingress); bounded.
                deadline = time.monotonic() + 20
                while (await asyncio.to_thread(_queued, base_url, routed_model)).get("low", 0) < 2:
                    if any(t.done() for t in waiting) or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.1)
                t0 = time.monotonic()
                refused = await post("low")
                elapsed = time.monotonic() - t0
                high = asyncio.create_task(post("high"))  # still room for a higher priority
                await asyncio.sleep(0.3)
                if high.done() or any(t.done() for t in waiting):  # a held generation ended by itself
                    await asyncio.gather(high, *waiting, return_exceptions=True)
                    return _ENDED
                for stream in streams:
                    await asyncio.to_thread(stream.close)
                results = await asyncio.gather(high, *waiting)
                return refused, elapsed, results

        return asyncio.run(main())

    refused, elapsed, results = _with_full_gate(base_url, routed_model, fill_the_queue)
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert "x-raygate-refused-by" not in refused.headers  # the ingress's gate, not the front door
    # Decided on arrival (microseconds: tests/unit/test_admission.py), not after a wait: the waiters
    # beside it wait up to max_queue_wait_s (150 s) and the held generations run for tens of seconds,
    # and neither had ended when it came back (checked in fill_the_queue). The bound is the HTTP
    # round trip through an ingress that shares 2 cores with 4 busy engine processes.
    assert elapsed < 3.0
    assert [r.status_code for r in results] == [200, 200, 200]


def test_the_front_door_is_in_force_at_the_apps_haproxy(base_url, app_config):
    """serve_config.yaml's RAYGATE_FRONT_DOOR_* reach the Serve controller, whose HAProxy starts
    through raygate's launcher with the front door added (its behaviour: tests/unit/test_front_door.py)."""
    import re

    from bench.servers import haproxy_processes

    configs = [Path(a) for p in haproxy_processes() for a in p.cmdline() if a.endswith(".raygate.cfg")]
    assert configs, "the app's HAProxy runs Serve's config without the front door"
    text = configs[-1].read_text()
    env = yaml.safe_load((REPO / "serve_config.yaml").read_text())["controller_options"]["runtime_env"]["env_vars"]
    servers = re.findall(r"^\s*server SERVE_REPLICA_\S+ .*$", text, re.M)
    assert servers and all(s.endswith(f"maxconn {env['RAYGATE_FRONT_DOOR_MAXCONN']}") for s in servers)
    assert f"ge {env['RAYGATE_FRONT_DOOR_MAX_QUEUED']} }}" in text  # high priority's queue limit
    # And the app still answers through it.
    assert httpx.get(base_url + "/v1/models", timeout=30).status_code == 200


def test_the_front_door_refuses_in_front_of_the_real_ingress(base_url, model_name):
    """The app's HAProxy forwards at most RAYGATE_FRONT_DOOR_MAXCONN (96) requests at once to the one
    ingress replica and queues the rest; a low-priority generation that finds a quarter of
    RAYGATE_FRONT_DOOR_MAX_QUEUED (16) queued is refused by HAProxy itself, with no ingress involved.

    What holds the 96 + 16: requests whose body arrives slowly (headers and one byte, then a pause):
    HAProxy forwards a request once its headers are in, and the ingress holds it while it reads the
    body. Their bodies are then completed as an empty `messages` list, which the ingress refuses with
    400 before any model work, so holding them costs nothing."""
    from urllib.parse import urlsplit

    env = yaml.safe_load((REPO / "serve_config.yaml").read_text())["controller_options"]["runtime_env"]["env_vars"]
    maxconn, low_limit = int(env["RAYGATE_FRONT_DOOR_MAXCONN"]), int(env["RAYGATE_FRONT_DOOR_MAX_QUEUED"]) // 4
    url = urlsplit(base_url)
    held_body = json.dumps({"model": model_name, "messages": []}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: {url.netloc}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(held_body)}\r\nx-raygate-priority: low\r\n\r\n").encode()

    async def hold():
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        writer.write(head + held_body[:1])
        await writer.drain()
        return reader, writer

    async def release(reader, writer) -> int:
        writer.write(held_body[1:])
        await writer.drain()
        status = int((await asyncio.wait_for(reader.readline(), 60)).split()[1])
        writer.close()
        return status

    async def main():
        held = [await hold() for _ in range(maxconn + low_limit)]
        try:
            await asyncio.sleep(2)  # every one forwarded to the ingress or queued in HAProxy
            async with httpx.AsyncClient(timeout=30) as client:
                body = {"model": model_name, "messages": [{"role": "user", "content": "refused?"}], "max_tokens": 2}
                t0 = time.monotonic()
                refused = await client.post(base_url + "/v1/chat/completions", json=body,
                                            headers={"x-raygate-priority": "low"})
                elapsed = time.monotonic() - t0
        finally:
            statuses = await asyncio.gather(*(release(r, w) for r, w in held), return_exceptions=True)
        return refused, elapsed, statuses

    refused, elapsed, statuses = asyncio.run(main())
    assert refused.status_code == 503, refused.text
    assert refused.headers["x-raygate-refused-by"] == "front-door"
    assert int(refused.headers["retry-after"]) >= 1 and refused.json()["error"]["code"] == 503
    assert "x-raygate-ingress" not in refused.headers  # no ingress replica saw it
    print(f"front door refusal in {elapsed * 1000:.1f} ms")
    assert elapsed < 0.5
    # The held requests were all forwarded (or queued, then forwarded), none refused or answered
    # early: the ingress answered each once its body was complete.
    assert statuses == [400] * len(statuses), statuses


@pytest.mark.parametrize("headers, field", [
    ({"x-raygate-priority": "urgent"}, "x-raygate-priority"),
    ({"x-raygate-timeout-ms": "-1"}, "x-raygate-timeout-ms"),
    ({"x-raygate-deadline": "next tuesday"}, "x-raygate-deadline"),
    ({"x-session-id": "two words"}, "x-session-id"),
])
def test_malformed_control_headers_are_400_naming_the_header(base_url, model_name, headers, field):
    r = _chat(base_url, model_name, "hi", headers=headers)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == field and field in r.json()["error"]["message"]
