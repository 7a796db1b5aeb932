"""The one decoded view of a request: validated by vLLM's models, caps applied, framing read from it."""

import pytest

from common.errors import APIError
from deployments.request_view import RequestKind, build_view
from deployments.tenants import Tenant, TenantSettings

MSG = [{"role": "user", "content": "hi"}]
T = Tenant("t", TenantSettings(max_n=16, max_tokens=100))


def view(payload, kind=RequestKind.CHAT):
    return build_view(kind, dict(payload), T, "m", {"m"})


def test_the_default_model_the_cache_options_and_the_framing():
    v = view({"messages": MSG, "stream": True, "stream_options": {"include_usage": True}, "cache": {"mode": "off"}})
    assert v.model == "m" and v.request.model == "m" and v.cache.mode == "off"
    assert v.stream and v.include_usage and v.n == 1
    assert v.request.max_completion_tokens == 100  # the tenant's cap fills an omitted max_tokens
    plain = view({"messages": MSG})
    assert not plain.stream and not plain.include_usage


@pytest.mark.parametrize("payload, status, param", [
    ({"messages": MSG, "model": "nope"}, 404, "model"),
    ({"messages": MSG, "model": 7}, 400, "model"),
    ({"messages": MSG, "n": 17}, 400, "n"),
    ({"messages": MSG, "n": 17.0}, 400, "n"),
    ({"messages": MSG, "n": "17"}, 400, "n"),
    ({"messages": MSG, "max_tokens": "101"}, 400, "max_tokens"),
    ({"messages": MSG, "stream": "false"}, 400, "stream"),
    ({"messages": MSG, "stream_options": {"include_usage": True}}, 400, "stream_options"),
    ({"messages": MSG, "cache": {"mode": "sometimes"}}, 400, "cache.mode"),
])
def test_mistakes_are_refused_before_anything_else_sees_the_request(payload, status, param):
    with pytest.raises(APIError) as e:
        view(payload)
    assert (e.value.status, e.value.param) == (status, param), e.value.message


def test_a_text_only_model_refuses_a_non_text_part_naming_it():
    from deployments.engine import text_only_refusal
    from deployments.request_parsing import validate_request

    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    request = validate_request(RequestKind.CHAT, {"model": "m", "messages": [
        {"role": "user", "content": "hi"}, {"role": "user", "content": [{"type": "text", "text": "a"}, image]}]})
    refused = text_only_refusal("m", request)
    assert refused.error.code == 400 and refused.error.param == "messages.1.content.1"
    assert "image_url" in refused.error.message
    text = validate_request(RequestKind.CHAT, {"model": "m", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "a"}]}]})
    assert text_only_refusal("m", text) is None


@pytest.mark.parametrize("payload", [{"messages": [{"role": "user", "content": "hi"}]},
                                     {"model": None, "messages": [{"role": "user", "content": "hi"}]}])
def test_the_ingress_names_the_default_model_for_a_request_without_one(payload):
    """The latency series is labelled with the model that serves the request: a `model: null` request
    was counted under model="" (a new user's report)."""
    from types import SimpleNamespace

    from deployments.ingress import Ingress

    ingress = SimpleNamespace(_default_model="m", _models={"m", "other"})
    request = SimpleNamespace(state=SimpleNamespace())
    view = Ingress.func_or_class._view(ingress, RequestKind.CHAT, request, dict(payload), T)
    assert view.model == "m" and request.state.model == "m"
