"""API keys: which tenant a request belongs to, and who may use the admin endpoints.

Keys never appear in serve_config.yaml: it holds their SHA-256 digests (`scripts/hash_api_key.py`
prints one), and plain keys may come from the environment (`RAYGATE_API_KEYS`, e.g. a Kubernetes
Secret), where they are hashed at start-up. A presented key is hashed and compared with every
known digest with `hmac.compare_digest`, all of them every time, so the time taken says nothing
about which digest came close.

With `enabled: false` (the embedded demo) every request belongs to the `anonymous` tenant and the
admin endpoints are open; production config (k8s/) turns auth on.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from typing import Annotated, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field

from common.errors import APIError
from deployments.tenants import ANONYMOUS, TENANT_NAME, Tenant, TenantSettings

_SHA256_HEX = r"^[0-9a-f]{64}$"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class APIKeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sha256: str = Field(pattern=_SHA256_HEX)
    tenant: str = Field(pattern=TENANT_NAME)


class AuthConfig(BaseModel):
    """The `auth` block of the app's args."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    api_keys: list[APIKeyEntry] = Field(default_factory=list)
    # Environment variable with more keys, in plain text: "tenant:key,tenant:key".
    api_keys_env: str = "RAYGATE_API_KEYS"
    # SHA-256 digests of admin keys (scripts/hash_api_key.py), never the keys themselves.
    admin_keys: list[Annotated[str, Field(pattern=_SHA256_HEX)]] = Field(default_factory=list)
    # Environment variable with admin keys in plain text, comma-separated.
    admin_keys_env: str = "RAYGATE_ADMIN_KEYS"
    # Limits per tenant; a tenant not listed (and `anonymous` when auth is off) gets `default_tenant`.
    tenants: dict[str, TenantSettings] = Field(default_factory=dict)
    default_tenant: TenantSettings = Field(default_factory=TenantSettings)

    def tenant(self, name: str) -> Tenant:
        return Tenant(name, self.tenants.get(name, self.default_tenant))


def _bearer(headers: Mapping[str, str]) -> Optional[str]:
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(401, "The Authorization header must be 'Bearer <API key>'.")
    return token.strip()


class Authenticator:
    """Maps a request's Bearer key to its tenant; built once per ingress replica."""

    def __init__(self, config: AuthConfig, environ: Optional[Mapping[str, str]] = None):
        env = os.environ if environ is None else environ
        self._config = config
        self._keys: list[tuple[bytes, str]] = [(bytes.fromhex(k.sha256), k.tenant) for k in config.api_keys]
        for item in filter(None, (s.strip() for s in env.get(config.api_keys_env, "").split(","))):
            tenant, sep, key = item.partition(":")
            if not sep or not key or not re.match(TENANT_NAME, tenant):
                raise ValueError(f"{config.api_keys_env}: expected comma-separated 'tenant:key' items")
            self._keys.append((hashlib.sha256(key.encode()).digest(), tenant))
        self._admin: list[bytes] = [bytes.fromhex(d) for d in config.admin_keys]
        self._admin += [hashlib.sha256(k.strip().encode()).digest()
                        for k in env.get(config.admin_keys_env, "").split(",") if k.strip()]
        if config.enabled and not self._keys:
            raise ValueError("auth is enabled but no API keys are configured "
                             f"(auth.api_keys or the {config.api_keys_env} environment variable)")

    @property
    def enabled(self) -> bool:
        return self._config.enabled

    def tenant(self, headers: Mapping[str, str]) -> Tenant:
        """The request's tenant; 401 for a missing or unknown key when auth is on."""
        if not self._config.enabled:
            return self._config.tenant(ANONYMOUS)
        key = _bearer(headers)
        if key is None:
            raise APIError(401, "Missing API key: send it as 'Authorization: Bearer <API key>'.")
        digest = hashlib.sha256(key.encode()).digest()
        found = None
        for known, tenant in self._keys:  # no early exit: every digest is compared
            if hmac.compare_digest(digest, known):
                found = tenant
        if found is None:
            raise APIError(401, "Incorrect API key provided.")
        return self._config.tenant(found)

    def require_admin(self, headers: Mapping[str, str]) -> None:
        """401 without a valid key, 403 for a tenant key that is not an admin key."""
        if not self._config.enabled:
            return
        key = _bearer(headers)
        if key is None:
            raise APIError(401, "Missing API key: the admin endpoints need an admin key.")
        digest = hashlib.sha256(key.encode()).digest()
        admin = False
        for known in self._admin:
            admin |= hmac.compare_digest(digest, known)
        if admin:
            return
        self.tenant(headers)  # 401 if the key is unknown altogether
        raise APIError(403, "This API key may not use the admin endpoints.")
