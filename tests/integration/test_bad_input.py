"""Every client mistake gets an OpenAI-style JSON error with the right status, fast, and the
service keeps serving everyone else."""

import time

import httpx
import pytest

pytestmark = pytest.mark.integration

MSG = [{"role": "user", "content": "hi"}]


def _post(base_url, path, **kw):
    t0 = time.monotonic()
    r = httpx.post(base_url + path, timeout=30, **kw)
    return r, time.monotonic() - t0


def _assert_error(r, status, *words, param=None):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["code"] == status and err["type"] and err["message"]
    for w in words:
        assert w.lower() in err["message"].lower(), err["message"]
    if param is not None:
        assert err["param"] == param, err
    return err


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_invalid_json(base_url, path):
    r, _ = _post(base_url, path, content=b'{"model": ', headers={"content-type": "application/json"})
    _assert_error(r, 400, "not valid JSON")


def test_body_not_an_object(base_url):
    r, _ = _post(base_url, "/v1/chat/completions", json=[1, 2, 3])
    _assert_error(r, 400, "JSON object")


def test_missing_and_empty_messages(base_url, model_name):
    r, _ = _post(base_url, "/v1/chat/completions", json={"model": model_name})
    _assert_error(r, 400, "messages", param="messages")
    r, _ = _post(base_url, "/v1/chat/completions", json={"model": model_name, "messages": []})
    _assert_error(r, 400, "at least one", param="messages")


def test_missing_and_empty_prompt(base_url, model_name):
    r, _ = _post(base_url, "/v1/completions", json={"model": model_name})
    _assert_error(r, 400, "prompt", param="prompt")
    r, _ = _post(base_url, "/v1/completions", json={"model": model_name, "prompt": ""})
    _assert_error(r, 400, "prompt")


@pytest.mark.parametrize("field, value", [("messages", "hello"), ("max_tokens", "ten"), ("temperature", [1]),
                                          ("stream", {"yes": 1}), ("n", 1.5)])
def test_wrong_types_name_the_field(base_url, model_name, field, value):
    body = {"model": model_name, "messages": MSG, field: value}
    r, _ = _post(base_url, "/v1/chat/completions", json=body)
    err = _assert_error(r, 400)
    assert err["param"].startswith(field), err


@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_below_one(base_url, model_name, stream):
    r, _ = _post(base_url, "/v1/chat/completions", json={"model": model_name, "messages": MSG, "max_tokens": 0,
                                                           "stream": stream})
    _assert_error(r, 400, "max_tokens")


def test_max_tokens_beyond_context(base_url, model_name):
    r, _ = _post(base_url, "/v1/chat/completions", json={"model": model_name, "messages": MSG, "max_tokens": 100_000})
    _assert_error(r, 400, "max_tokens")


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_longer_than_context(base_url, model_name, stream):
    long = "word " * 5000  # far beyond max_model_len 2048
    r, _ = _post(base_url, "/v1/completions", json={"model": model_name, "prompt": long, "max_tokens": 4,
                                                      "stream": stream})
    _assert_error(r, 400, "context")


def test_unknown_model_is_404(base_url):
    r, _ = _post(base_url, "/v1/chat/completions", json={"model": "no-such-model", "messages": MSG})
    _assert_error(r, 404, "no-such-model", param="model")
    r = httpx.get(base_url + "/v1/models/no-such-model")
    _assert_error(r, 404, "no-such-model")


def test_unsupported_parameter(base_url, model_name):
    r, _ = _post(base_url, "/v1/chat/completions", json={"model": model_name, "messages": MSG, "frobnicate": 1})
    _assert_error(r, 400, "frobnicate", param="frobnicate")


def test_logprobs_beyond_engine_limit_is_400_not_a_200_stream(base_url, model_name):
    body = {"model": model_name, "messages": MSG, "max_tokens": 2, "logprobs": True, "top_logprobs": 50,
            "stream": True}
    r, _ = _post(base_url, "/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == 400


def test_body_too_large_is_413(base_url, model_name):
    huge = "x" * (5 * 1024 * 1024)
    r, _ = _post(base_url, "/v1/chat/completions", json={"model": model_name, "messages": [{"role": "user", "content": huge}]})
    _assert_error(r, 413, "exceeds")


def test_unknown_route_and_wrong_method(base_url):
    _assert_error(httpx.get(base_url + "/v1/nothing-here"), 404)
    _assert_error(httpx.get(base_url + "/v1/chat/completions"), 405)


def test_errors_are_fast_and_the_service_keeps_serving(base_url, model_name, client):
    slowest = 0.0
    for body in ({"model": model_name}, {"model": "nope", "messages": MSG},
                 {"model": model_name, "messages": MSG, "max_tokens": -5}):
        r, dt = _post(base_url, "/v1/chat/completions", json=body)
        assert 400 <= r.status_code < 500
        slowest = max(slowest, dt)
    assert slowest < 2.0
    ok = client.chat.completions.create(model=model_name, messages=MSG, max_tokens=3)
    assert ok.choices[0].message.content is not None
