"""Per-tenant request caps (400 naming the field, max_tokens filled in) and cache scopes."""

import pytest

from common.errors import APIError
from deployments.tenants import Tenant, TenantSettings, apply_caps, estimated_tokens


def tenant(**settings):
    return Tenant("t", TenantSettings(**settings))


@pytest.mark.parametrize("kind,payload,field", [
    ("chat", {"messages": [{"role": "user", "content": "x"}] * 4}, "messages"),
    ("chat", {"messages": [], "n": 3}, "n"),
    ("chat", {"messages": [], "max_tokens": 65}, "max_tokens"),
    ("chat", {"messages": [], "max_completion_tokens": 65}, "max_completion_tokens"),
    ("completion", {"prompt": "x", "max_tokens": 1000}, "max_tokens"),
])
def test_requests_beyond_the_caps_are_400_naming_the_field(kind, payload, field):
    with pytest.raises(APIError) as e:
        apply_caps(kind, payload, tenant(max_messages=3, max_n=2, max_tokens=64))
    assert e.value.status == 400 and e.value.param == field and field in e.value.message


def test_within_the_caps_nothing_changes_and_a_missing_max_tokens_gets_the_cap():
    ok = {"messages": [{"role": "user", "content": "x"}], "n": 2, "max_tokens": 64}
    apply_caps("chat", dict(ok), tenant(max_messages=3, max_n=2, max_tokens=64))
    chat = {"messages": [{"role": "user", "content": "x"}]}
    apply_caps("chat", chat, tenant(max_tokens=64))
    assert chat["max_completion_tokens"] == 64
    completion = {"prompt": "x"}
    apply_caps("completion", completion, tenant(max_tokens=16))
    assert completion["max_tokens"] == 16
    free = {"prompt": "x"}
    apply_caps("completion", free, tenant())
    assert free == {"prompt": "x"}


def test_cache_scope_is_the_tenant_unless_shared_explicitly():
    assert Tenant("a", TenantSettings()).cache_scope == "a"
    assert Tenant("a", TenantSettings(cache_scope="shared")).cache_scope == "shared"


def test_estimated_tokens_grow_with_prompt_output_and_n():
    base = estimated_tokens("completion", {"prompt": "x" * 400, "max_tokens": 10})
    assert base == 100 + 1 + 10
    assert estimated_tokens("completion", {"prompt": "x" * 400, "max_tokens": 10, "n": 3}) == 101 + 30
    assert estimated_tokens("chat", {"messages": [{"role": "user", "content": "hi"}]}) > 256
