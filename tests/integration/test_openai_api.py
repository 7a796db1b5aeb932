"""The OpenAI API through the official `openai` client: real HTTP, Serve, vLLM on CPU."""

import asyncio

import httpx
import openai
import pytest

pytestmark = pytest.mark.integration


def test_models_lists_the_served_models(client, model_name, routed_model, real_model):
    models = client.models.list().data
    from tests.integration.shared_app import AUTOSCALED_MODEL

    # The test app's four, in config order.
    assert [m.id for m in models] == [model_name, routed_model, AUTOSCALED_MODEL, real_model]
    card = models[0].model_dump()
    assert card["owned_by"] == "raygate" and card["root"] and card["max_model_len"] == 2048


def test_health(base_url):
    r = httpx.get(base_url + "/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_chat_sync(client, model_name):
    r = client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "hello"}], max_tokens=8)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("length", "stop")
    assert 1 <= r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


async def test_chat_async_concurrent(aclient, model_name):
    async def one(i):
        return await aclient.chat.completions.create(
            model=model_name, messages=[{"role": "user", "content": f"question {i}"}], max_tokens=6)

    results = await asyncio.gather(*(one(i) for i in range(8)))
    assert len({r.id for r in results}) == 8
    assert all(1 <= r.usage.completion_tokens <= 6 for r in results)


def test_chat_stream_usage_matches_streamed_tokens(client, model_name):
    stream = client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": "count"}], max_tokens=40, stream=True,
        stream_options={"include_usage": True}, logprobs=True, extra_body={"ignore_eos": True})
    tokens, text, usage, roles = 0, "", None, []
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.role:
                roles.append(choice.delta.role)
            text += choice.delta.content or ""
            if choice.logprobs and choice.logprobs.content:
                tokens += len(choice.logprobs.content)
    assert roles == ["assistant"]
    assert usage is not None and usage.completion_tokens == tokens == 40
    assert text


def test_completions_sync_and_stream(client, model_name):
    r = client.completions.create(model=model_name, prompt="The sky is", max_tokens=5)
    assert r.object == "text_completion" and 1 <= r.usage.completion_tokens <= 5
    chunks = list(client.completions.create(model=model_name, prompt="The sky is", max_tokens=12, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True}))
    assert chunks[-1].usage.completion_tokens == 12
    assert "".join(c.text for ch in chunks for c in ch.choices)


async def test_completions_async(aclient, model_name):
    r = await aclient.completions.create(model=model_name, prompt=["a", "b"], max_tokens=3)
    assert sorted(c.index for c in r.choices) == [0, 1]


def test_n_choices(client, model_name):
    r = client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "x"}], max_tokens=4, n=3)
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    seen = set()
    for chunk in client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "x"}],
                                                max_tokens=4, n=2, stream=True):
        seen.update(c.index for c in chunk.choices)
    assert seen == {0, 1}


def test_seed_makes_sampling_repeatable(client, model_name):
    """With the cache off, so that the repeat is vLLM sampling the same tokens, not a cache hit."""
    kw = dict(model=model_name, messages=[{"role": "user", "content": "seeded"}], max_tokens=12, temperature=1.0,
              top_p=0.9, seed=1234, extra_body={"cache": {"mode": "off"}})

    def sample(**override):
        raw = client.chat.completions.with_raw_response.create(**{**kw, **override})
        assert raw.headers["x-raygate-cache"] == "off"
        return raw.parse().choices[0].message.content

    a, b, c = sample(), sample(), sample(seed=4321)
    assert a == b and a != c


def test_max_completion_tokens_and_stop(client, model_name):
    r = client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "x"}],
                                       max_completion_tokens=3, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"
    full = client.completions.create(model=model_name, prompt="stop test", max_tokens=10, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    word = full.split()[1] if len(full.split()) > 1 else full.split()[0]
    cut = client.completions.create(model=model_name, prompt="stop test", max_tokens=10, temperature=0, stop=[word],
                                    extra_body={"ignore_eos": True}).choices[0]
    assert cut.finish_reason == "stop" and word not in cut.text and full.startswith(cut.text)


def test_logprobs(client, model_name):
    r = client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "x"}], max_tokens=4,
                                       logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == 4 and all(len(t.top_logprobs) == 3 for t in content)


def test_request_id_header_is_echoed_but_the_engine_id_is_raygates(base_url, model_name):
    """The client's x-request-id is echoed; the engine's id is raygate's own (two clients may send one
    id: tests/integration/test_correctness.py shows what sharing it did)."""
    r = httpx.post(base_url + "/v1/chat/completions", headers={"x-request-id": "my-req-42"},
                   json={"model": model_name, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2})
    assert r.status_code == 200 and r.headers["x-request-id"] == "my-req-42"
    own = r.headers["x-raygate-request-id"]
    assert own != "my-req-42" and r.json()["id"] == f"chatcmpl-{own}" and "my-req-42" not in r.json()["id"]


def test_request_id_is_generated_when_absent(base_url, model_name):
    r = httpx.post(base_url + "/v1/chat/completions",
                   json={"model": model_name, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2})
    rid = r.headers["x-request-id"]
    assert rid and "," not in rid and r.json()["id"].endswith(r.headers["x-raygate-request-id"])
