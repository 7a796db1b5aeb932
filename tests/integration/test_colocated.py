"""`ingress.colocate`: the first model's engine inside each ingress replica, called without a handle.

`serve run` on the repo's serve_config.yaml with its `ingress.colocate: auto` (everything else as shipped,
the first model on the demo weights with two replicas), and beside it an app at /scaled whose
colocated model is the stand-in engine under the queue-length autoscaling policy (1 to 2 replicas,
a 2-request batch). Through HTTP and the official `openai` client:

- answers whole and streamed come from the ingress replica's own engine (`x-raygate-replica` equals
  `x-raygate-ingress`; through an LLM deployment they differ), with the exact cache in front and the
  model card from the engine;
- HAProxy asks IngressRouter which ingress replica serves a request (deployments/ingress_router.py):
  a conversation's turns (one long system prompt) and a session's requests stay on one replica,
  where HAProxy's least-connections balancing alone alternates between idle replicas;
- a client that leaves a stream aborts the engine's request;
- the ingress deployment is sized as the model's (deployments/app.py `ingress_options`): a load step
  of 8 streams (2 in the batch, 6 waiting inside the "engine", under the target of 20 running
  requests per replica) grows it to 2 replicas only through the engine's waiting count, which the
  ingress reports (`Ingress.record_autoscaling_stats`), and its end shrinks it back.

A `serve run` of its own (`own_cluster`: runs after the shared test app has stopped; a third app in
the shared one did not fit this 2-core host's start-up bound).
"""

from __future__ import annotations

import asyncio
import copy
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from bench.servers import Raygate, free_port
from tests.integration.shared_app import (AUTOSCALED_MODEL, REPO, TEST_MODEL, autoscaled_model_config,
                                          stop_shared_app, tiny_model_config)

pytestmark = [pytest.mark.integration, pytest.mark.own_cluster]

SCALED_PREFIX = "/scaled"


def _scaled_app(main_app: dict, first: dict) -> dict:
    app = copy.deepcopy(main_app)
    app.update(name="raygate-scaled", route_prefix=SCALED_PREFIX)
    model = autoscaled_model_config(first)
    model["deployment"]["autoscaling_config"]["downscale_delay_s"] = 3
    args = app["args"]
    args["models"] = [model]
    args["cache"] = {"enabled": False}
    return app


@pytest.fixture(scope="module")
def url():
    stop_shared_app()
    main_app = yaml.safe_load((REPO / "serve_config.yaml").read_text())["applications"][0]
    first = dict(tiny_model_config(main_app["args"]["models"][0]), num_cpus=0.5)
    two = copy.deepcopy(first)
    two["deployment"].pop("autoscaling_config", None)
    two["deployment"]["num_replicas"] = 2
    srv = Raygate(REPO / "serve_config.yaml", free_port(), Path(tempfile.mkdtemp(prefix="raygate-colocated-")),
                  overrides={"cache.embedded.port": free_port(), "models": [two]},
                  extra_apps=[_scaled_app(main_app, first)])
    srv.start(timeout_s=600)
    try:
        yield srv.base_url
    finally:
        left = srv.stop()
        assert not left, f"processes outlived a graceful `serve run` shutdown: {left}"


def _deployments() -> dict:
    """{app: {deployment: RUNNING replicas}}, read from Serve's controller by a driver of its own."""
    code = ("import json, ray\nfrom ray import serve\nray.init(address='auto', log_to_driver=False)\n"
            "apps = serve.status().applications\n"
            "print(json.dumps({a: {d: s.replica_states.get('RUNNING', 0) for d, s in st.deployments.items()}"
            " for a, st in apps.items()}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _engine(url: str, ingress: str) -> dict:
    """The engine counters of one colocated ingress replica (each lists only its own engine; HAProxy
    balances GET requests, so ask until that replica answers)."""
    for _ in range(50):
        (replica,) = httpx.get(url + "/admin/models", timeout=30).json()["models"][TEST_MODEL]["replicas"]
        if replica["replica"] == ingress:  # a colocated engine's replica id is its ingress replica's
            return replica
    raise AssertionError(f"ingress replica {ingress} never answered /admin/models")


def test_no_llm_deployment_and_answers_come_from_the_ingress_replicas_own_engine(url):
    apps = _deployments()
    assert apps["raygate"] == {"Ingress": 2, "IngressRouter": 1, "SemanticCache": 1, "CacheRedis": 1}, apps
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
    messages = [{"role": "user", "content": f"colocated {uuid.uuid4().hex}"}]
    raw = client.chat.completions.with_raw_response.create(model=TEST_MODEL, messages=messages, max_tokens=8,
                                                           extra_body={"ignore_eos": True})
    whole = raw.parse()
    assert whole.usage.completion_tokens == 8 and whole.choices[0].finish_reason == "length"
    assert raw.headers["x-raygate-replica"] == raw.headers["x-raygate-ingress"]

    stream = client.chat.completions.create(model=TEST_MODEL, messages=messages, max_tokens=8, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True, "cache": {"mode": "off"}})
    chunks = list(stream)
    assert chunks[-1].usage.completion_tokens == 8
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_the_exact_cache_answers_in_front_of_a_colocated_engine(url):
    body = {"model": TEST_MODEL, "temperature": 0, "max_tokens": 6,
            "messages": [{"role": "user", "content": f"cache me {uuid.uuid4().hex}"}]}
    first = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
    assert first.status_code == 200 and first.headers["x-raygate-cache"] in ("miss", "bypass")
    deadline = time.monotonic() + 10
    while True:  # the write-back lands after the answer
        again = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
        if again.headers["x-raygate-cache"] == "hit-exact" or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert again.headers["x-raygate-cache"] == "hit-exact"
    assert again.json()["choices"][0]["message"] == first.json()["choices"][0]["message"]


def test_the_model_card_and_health_come_from_the_engine(url):
    (card,) = httpx.get(url + "/v1/models", timeout=30).json()["data"]
    assert card["id"] == TEST_MODEL and card["max_model_len"] == 2048
    # vLLM's own card (the ingress's fallback, from config, has no permission and root "builtin:...").
    assert card["permission"] and card["permission"][0]["id"].startswith("modelperm-")
    health = httpx.get(url + "/health", timeout=30)
    assert health.status_code == 200 and health.json()["models"] == {TEST_MODEL: "ok"}


def _served_by(url: str, body: dict, headers: dict | None = None) -> str:
    r = httpx.post(url + "/v1/chat/completions", json=body, headers=headers or {}, timeout=60)
    assert r.status_code == 200, r.text
    return r.headers["x-raygate-ingress"]


def test_haproxy_keeps_a_conversation_and_a_session_on_one_colocated_replica(url):
    system = f"You are the archivist of collection {uuid.uuid4().hex}. " * 30  # ~1,300 characters
    turns = [_served_by(url, {"model": TEST_MODEL, "max_tokens": 2, "cache": {"mode": "off"},
                              "messages": [{"role": "system", "content": system},
                                           {"role": "user", "content": f"question {i}"}]})
             for i in range(6)]
    assert len(set(turns)) == 1, f"a conversation's turns were spread over replicas: {turns}"
    session = {"x-session-id": f"s-{uuid.uuid4().hex[:12]}"}
    asked = [_served_by(url, {"model": TEST_MODEL, "max_tokens": 2, "cache": {"mode": "off"},
                              "messages": [{"role": "user", "content": f"unrelated {uuid.uuid4().hex}"}]}, session)
             for _ in range(6)]
    assert len(set(asked)) == 1, f"a session's requests were spread over replicas: {asked}"


def test_clients_leaving_their_streams_abort_the_colocated_engines_requests(url):
    """Six 2,000-token streams of one session (so, as a rule, one replica), each left after its first
    chunk: the engines must drop them (unfinished back to 0 within seconds, none counted finished),
    not generate 12,000 tokens. Several streams, so that an engine cannot finish them before the check
    (one stream of the demo model can end within a second or two). A new session's first requests
    sent at once may be split over both replicas on a loaded host (CI: HAProxy fell back to least
    connections for some): then every engine that got streams is checked."""
    session = {"x-session-id": f"abort-{uuid.uuid4().hex[:12]}"}

    async def main() -> tuple[str, dict]:
        async with httpx.AsyncClient(timeout=60) as client:
            async def one(i: int) -> tuple[str, list]:
                body = {"model": TEST_MODEL, "max_tokens": 2000, "stream": True, "ignore_eos": True,
                        "cache": {"mode": "off"}, "messages": [{"role": "user", "content": f"long {i} {uuid.uuid4().hex}"}]}
                stream = client.stream("POST", url + "/v1/chat/completions", json=body, headers=session)
                r = await stream.__aenter__()
                assert r.status_code == 200
                seen, lines = [], r.aiter_lines()  # kept: a line iterator collected mid-body closes the connection
                async for line in lines:
                    seen.append(line)
                    if line.startswith("data: {"):
                        break
                return r.headers["x-raygate-ingress"], seen, (stream, lines)

            opened = await asyncio.gather(*(one(i) for i in range(6)))
            for _, seen, _ in opened:
                assert "error" not in json.loads(seen[-1][6:]), seen
            generating = {}
            for ingress in sorted({ingress for ingress, _, _ in opened}):
                generating[ingress] = await asyncio.to_thread(_engine, url, ingress)
            for _, _, (stream, _) in opened:  # the clients leave mid-stream
                await stream.__aexit__(None, None, None)
            return generating

    generating = asyncio.run(main())
    assert sum(g["unfinished"] for g in generating.values()) >= 1, f"nothing generating while 6 streams were open: {generating}"
    for ingress, before in generating.items():
        deadline = time.monotonic() + 10
        while (now := _engine(url, ingress))["unfinished"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert now["unfinished"] == 0, (ingress, now)
        assert now["requests_finished"] == before["requests_finished"], (ingress, before, now)


async def _stream(client: httpx.AsyncClient, url: str, i: int) -> None:
    body = {"model": AUTOSCALED_MODEL, "stream": True, "max_tokens": 400,
            "messages": [{"role": "user", "content": f"autoscale {i} {time.time_ns()}"}]}
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        async for _ in r.aiter_lines():
            pass


def _wait_for(replicas: int, timeout_s: float) -> float:
    t0 = time.monotonic()
    while (now := _deployments()["raygate-scaled"]["Ingress"]) != replicas:
        assert time.monotonic() - t0 < timeout_s, f"the colocated ingress has {now} replicas, not {replicas}"
        time.sleep(1)
    return time.monotonic() - t0


def test_the_colocated_ingress_grows_through_its_engines_waiting_count_and_shrinks_when_idle(url):
    scaled = url + SCALED_PREFIX
    assert _wait_for(1, timeout_s=120) >= 0

    async def step() -> float:
        async with httpx.AsyncClient(timeout=300) as client:
            load = [asyncio.ensure_future(_stream(client, scaled, i)) for i in range(8)]
            try:
                grew = await asyncio.to_thread(_wait_for, 2, 90)
            finally:
                for task in load:
                    task.cancel()
                await asyncio.gather(*load, return_exceptions=True)
            return grew

    grew = asyncio.run(step())
    shrank = _wait_for(1, timeout_s=120)
    print(f"2 replicas {grew:.1f} s into the load step; back to 1 {shrank:.1f} s after it ended")
