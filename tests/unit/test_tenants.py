"""Per-tenant request caps (400 naming the field, max_tokens filled in) on validated requests, and cache scopes."""

import pytest

from common.errors import APIError
from common.request_kind import RequestKind
from deployments.request_parsing import validate_request
from deployments.tenants import Tenant, TenantSettings, apply_caps, estimated_tokens

CHAT, COMPLETION = RequestKind.CHAT, RequestKind.COMPLETION
MSG = [{"role": "user", "content": "x"}]


def tenant(**settings):
    return Tenant("t", TenantSettings(**settings))


def caps(kind, payload, t):
    request = validate_request(kind, {"model": "m", **payload})
    given = payload.get("max_tokens") is not None or payload.get("max_completion_tokens") is not None
    apply_caps(kind, request, t, max_tokens_given=given)
    return request


@pytest.mark.parametrize("kind,payload,field", [
    (CHAT, {"messages": MSG * 4}, "messages"),
    (CHAT, {"messages": MSG, "n": 3}, "n"),
    (CHAT, {"messages": MSG, "n": 3.0}, "n"),
    (CHAT, {"messages": MSG, "n": "3"}, "n"),
    (CHAT, {"messages": MSG, "max_tokens": 65}, "max_tokens"),
    (CHAT, {"messages": MSG, "max_tokens": "65"}, "max_tokens"),
    (CHAT, {"messages": MSG, "max_completion_tokens": 65.0}, "max_completion_tokens"),
    (COMPLETION, {"prompt": "x", "max_tokens": 1000}, "max_tokens"),
    (COMPLETION, {"prompt": "x", "n": "3"}, "n"),
])
def test_requests_beyond_the_caps_are_400_naming_the_field(kind, payload, field):
    """Every spelling of a number the engine reads as N is capped as N (17.0 and "17" like 17)."""
    with pytest.raises(APIError) as e:
        caps(kind, payload, tenant(max_messages=3, max_n=2, max_tokens=64))
    assert e.value.status == 400 and e.value.param == field and field in e.value.message


def test_within_the_caps_nothing_changes_and_a_missing_max_tokens_gets_the_cap():
    ok = caps(CHAT, {"messages": MSG, "n": 2, "max_tokens": 64}, tenant(max_messages=3, max_n=2, max_tokens=64))
    assert ok.n == 2 and ok.max_tokens == 64 and ok.max_completion_tokens is None
    assert caps(CHAT, {"messages": MSG}, tenant(max_tokens=64)).max_completion_tokens == 64
    assert caps(COMPLETION, {"prompt": "x"}, tenant(max_tokens=1000)).max_tokens == 1000
    assert caps(COMPLETION, {"prompt": "x"}, tenant()).max_tokens == 16  # vLLM's default, uncapped


def test_cache_scope_is_the_tenant_unless_shared_explicitly():
    assert Tenant("a", TenantSettings()).cache_scope == "a"
    assert Tenant("a", TenantSettings(cache_scope="shared")).cache_scope == "shared"


def test_estimated_tokens_grow_with_prompt_output_and_n():
    def est(kind, payload):
        return estimated_tokens(kind, validate_request(kind, {"model": "m", **payload}))

    base = est(COMPLETION, {"prompt": "x" * 400, "max_tokens": 10})
    assert base == 100 + 1 + 10
    assert est(COMPLETION, {"prompt": "x" * 400, "max_tokens": 10, "n": 3}) == 101 + 30
    assert est(COMPLETION, {"prompt": "x" * 400, "max_tokens": "10", "n": "3"}) == 101 + 30
    assert est(CHAT, {"messages": [{"role": "user", "content": "hi"}]}) > 256
