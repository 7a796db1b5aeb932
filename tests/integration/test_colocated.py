"""`ingress.colocate`: the first model's engine inside the ingress replica, called without a handle.

The shared test app serves a third application at /colocated (tests/integration/shared_app.py
`colocated_app_config`): the demo model on real vLLM, its engine started by the ingress replica
itself (no cache in that app: see shared_app.py). Through HTTP and the official `openai` client:
answers whole and streamed, the replica that generated is the ingress replica that answered
(`x-raygate-replica` equals `x-raygate-ingress`; through an LLM deployment they differ), the model card
from the engine, and a client that leaves a stream aborting the engine's request.
"""

from __future__ import annotations

import json
import time
import uuid

import httpx
import openai
import pytest

from tests.integration.shared_app import COLOCATED_PREFIX, TEST_MODEL

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def url(base_url) -> str:
    return base_url + COLOCATED_PREFIX


def _engine(url: str) -> dict:
    models = httpx.get(url + "/admin/models", timeout=30).json()["models"]
    (replica,) = models[TEST_MODEL]["replicas"]
    return replica


def test_whole_and_streamed_answers_come_from_the_ingress_replicas_own_engine(url):
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
    messages = [{"role": "user", "content": f"colocated {uuid.uuid4().hex}"}]
    raw = client.chat.completions.with_raw_response.create(model=TEST_MODEL, messages=messages, max_tokens=8,
                                                           extra_body={"ignore_eos": True})
    whole = raw.parse()
    assert whole.usage.completion_tokens == 8 and whole.choices[0].finish_reason == "length"
    assert raw.headers["x-raygate-replica"] == raw.headers["x-raygate-ingress"]

    stream = client.chat.completions.create(model=TEST_MODEL, messages=messages, max_tokens=8, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[-1].usage.completion_tokens == 8
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_the_model_card_and_health_come_from_the_engine(url):
    (card,) = httpx.get(url + "/v1/models", timeout=30).json()["data"]
    assert card["id"] == TEST_MODEL and card["max_model_len"] == 2048
    # vLLM's own card (the ingress's fallback, from config, has no permission and root "builtin:...").
    assert card["permission"] and card["permission"][0]["id"].startswith("modelperm-")
    health = httpx.get(url + "/health", timeout=30)
    assert health.status_code == 200 and health.json()["models"] == {TEST_MODEL: "ok"}


def test_a_client_leaving_a_stream_aborts_the_colocated_engines_request(url):
    body = {"model": TEST_MODEL, "max_tokens": 1500, "stream": True, "ignore_eos": True,
            "messages": [{"role": "user", "content": f"long {uuid.uuid4().hex}"}]}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        events = []
        for line in r.iter_lines():
            if line.startswith("data: {"):
                events.append(json.loads(line[6:]))
                assert "error" not in events[-1], events[-1]
            if len(events) >= 3:
                break
        seen = [_engine(url)]
        while not seen[-1]["unfinished"] and len(seen) < 10:
            time.sleep(0.1)
            seen.append(_engine(url))
        assert seen[-1]["unfinished"] >= 1, seen  # generating (1,500 tokens take seconds here)
    # The connection is closed mid-stream: the engine must drop the request, not finish 1,500 tokens.
    deadline = time.monotonic() + 10
    while (now := _engine(url))["unfinished"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert now["unfinished"] == 0 and now["running"] == 0, now
