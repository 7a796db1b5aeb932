"""`ingress.colocate`: the first model's engine inside the ingress replica, called without a handle.

The shared test app serves a third application at /colocated (tests/integration/shared_app.py
`colocated_app_config`): the demo model on real vLLM, its engine started by the ingress replica
itself (no cache in that app: see shared_app.py). Through HTTP and the official `openai` client:
answers whole and streamed, the replica that generated is the ingress replica that answered
(`x-raygate-replica` equals `x-raygate-ingress`; through an LLM deployment they differ), and the model
card and health from the engine. A client leaving a colocated stream aborts the engine's request: shown
with the stand-in engine in tests/unit/test_model_call.py, not yet here (inside the shared app the
engine's unfinished count read 0 mid-stream once, unexplained; a standalone colocated app showed 1 then 0).
"""

from __future__ import annotations

import uuid

import httpx
import openai
import pytest

from tests.integration.shared_app import COLOCATED_PREFIX, TEST_MODEL

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def url(base_url) -> str:
    return base_url + COLOCATED_PREFIX


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
