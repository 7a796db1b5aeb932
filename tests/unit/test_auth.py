"""API keys: hashed in config or plain in the environment, 401 for a missing or wrong key, 403 for a
tenant key on an admin endpoint, and the open mode of the embedded demo."""

import pytest
from pydantic import ValidationError

from deployments.auth import AuthConfig, Authenticator, hash_key
from common.errors import APIError
from deployments.tenants import ANONYMOUS


def bearer(key):
    return {"authorization": f"Bearer {key}"}


@pytest.fixture
def auth():
    config = AuthConfig.model_validate({
        "enabled": True,
        "api_keys": [{"sha256": hash_key("sk-a"), "tenant": "team-a"}],
        "admin_keys": [hash_key("sk-admin")],
        "tenants": {"team-a": {"max_n": 2}},
        "default_tenant": {"max_n": 8},
    })
    return Authenticator(config, environ={"RAYGATE_API_KEYS": "team-b:sk-b, team-c:sk-c:with:colons"})


def test_keys_from_config_and_environment_map_to_tenants(auth):
    a = auth.tenant(bearer("sk-a"))
    assert (a.name, a.settings.max_n) == ("team-a", 2)
    b = auth.tenant(bearer("sk-b"))
    assert (b.name, b.settings.max_n) == ("team-b", 8)  # not listed: default limits
    assert auth.tenant(bearer("sk-c:with:colons")).name == "team-c"
    assert auth.tenant({"authorization": "bearer   sk-a  "}).name == "team-a"


@pytest.mark.parametrize("headers", [{}, bearer("sk-wrong"), bearer("SK-A"), {"authorization": "Basic c2stYQ=="},
                                     {"authorization": "Bearer "}])
def test_missing_or_wrong_key_is_401(auth, headers):
    with pytest.raises(APIError) as e:
        auth.tenant(headers)
    assert e.value.status == 401


def test_admin_needs_an_admin_key(auth):
    auth.require_admin(bearer("sk-admin"))
    with pytest.raises(APIError) as e:
        auth.require_admin(bearer("sk-a"))
    assert e.value.status == 403
    for headers in ({}, bearer("sk-nobody")):
        with pytest.raises(APIError) as e:
            auth.require_admin(headers)
        assert e.value.status == 401


def test_an_admin_key_is_not_a_tenant_key(auth):
    with pytest.raises(APIError) as e:
        auth.tenant(bearer("sk-admin"))
    assert e.value.status == 401


def test_disabled_auth_puts_everyone_in_the_anonymous_tenant():
    auth = Authenticator(AuthConfig(default_tenant={"max_tokens": 5}), environ={})
    t = auth.tenant({})
    assert (t.name, t.settings.max_tokens, t.cache_scope) == (ANONYMOUS, 5, ANONYMOUS)
    auth.require_admin({})


def test_enabled_auth_without_keys_fails_at_start():
    with pytest.raises(ValueError, match="no API keys"):
        Authenticator(AuthConfig(enabled=True), environ={})


@pytest.mark.parametrize("bad", [
    {"api_keys": [{"sha256": "sk-plaintext-key", "tenant": "a"}]},
    {"admin_keys": ["sk-admin"]},
    {"api_keys": [{"sha256": "0" * 64, "tenant": "has space"}]},
    {"tenants": {"a": {"max_tokenz": 3}}},
])
def test_config_refuses_plain_keys_and_typos(bad):
    with pytest.raises(ValidationError):
        AuthConfig.model_validate(bad)


def test_malformed_environment_keys_fail_at_start():
    with pytest.raises(ValueError, match="tenant:key"):
        Authenticator(AuthConfig(), environ={"RAYGATE_API_KEYS": "just-a-key"})
