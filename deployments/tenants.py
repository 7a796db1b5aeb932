"""Tenants: who a request belongs to, what it may ask for, and whose cached answers it may see.

A tenant is named by its API key (deployments/auth.py). Its settings bound what one request may
cost (`max_tokens`, `n`, messages) and how fast it may come (deployments/rate_limits.py), and
`cache_scope` decides cache visibility: entries are keyed by it, so by default no tenant ever reads
another's cached answers; tenants that name the same `cache_scope` share theirs, an explicit opt-in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

from common.errors import APIError

TENANT_NAME = r"^[A-Za-z0-9_.-]{1,64}$"
# Everyone's tenant when auth is off (the embedded demo).
ANONYMOUS = "anonymous"


class TenantSettings(BaseModel):
    """Per-tenant limits; null means unlimited (the engine's own limits still apply)."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: Optional[int] = Field(default=None, ge=1)
    # Charged when a request goes to a model: its prompt (estimated, 4 characters a token) plus its
    # max_tokens, so a request that could exceed the budget is refused before it runs.
    tokens_per_minute: Optional[int] = Field(default=None, ge=1)
    # Cap on max_tokens / max_completion_tokens; a request that omits it gets the cap.
    max_tokens: Optional[int] = Field(default=None, ge=1)
    max_n: Optional[int] = Field(default=None, ge=1)
    max_messages: Optional[int] = Field(default=None, ge=1)
    # Tenants with the same cache_scope share cached answers; default: the tenant's own name.
    cache_scope: Optional[str] = Field(default=None, pattern=TENANT_NAME)


@dataclass(frozen=True)
class Tenant:
    name: str
    settings: TenantSettings

    @property
    def cache_scope(self) -> str:
        return self.settings.cache_scope or self.name


def _int_field(payload: dict, name: str) -> Optional[int]:
    value = payload.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def apply_caps(kind: str, payload: dict[str, Any], tenant: Tenant) -> None:
    """Refuse (400, naming the field) a request beyond its tenant's caps; give a request that omits
    max_tokens the tenant's cap, so that it cannot run to the end of the context."""
    s = tenant.settings
    if s.max_messages is not None and kind == "chat":
        messages = payload.get("messages")
        if isinstance(messages, list) and len(messages) > s.max_messages:
            raise APIError(400, f"'messages' has {len(messages)} messages; this API key allows at most "
                                f"{s.max_messages}.", param="messages")
    if s.max_n is not None:
        n = _int_field(payload, "n")
        if n is not None and n > s.max_n:
            raise APIError(400, f"'n' is {n}; this API key allows at most {s.max_n}.", param="n")
    if s.max_tokens is not None:
        for field in ("max_tokens", "max_completion_tokens"):
            value = _int_field(payload, field)
            if value is not None and value > s.max_tokens:
                raise APIError(400, f"'{field}' is {value}; this API key allows at most {s.max_tokens}.",
                               param=field)
        if payload.get("max_tokens") is None and payload.get("max_completion_tokens") is None:
            payload["max_completion_tokens" if kind == "chat" else "max_tokens"] = s.max_tokens


# Output tokens assumed for the budget when a request does not say (OpenAI's completion default is
# 16; a chat may run to the context, so a tenant with a token budget should also have `max_tokens`).
_ASSUMED_OUTPUT = {"chat": 256, "completion": 16}


def estimated_tokens(kind: str, payload: dict[str, Any]) -> int:
    """What a request may cost in tokens, for the tokens-per-minute budget: its prompt at four
    characters a token (the ingress does not tokenize) plus the most it may generate, times `n`."""
    text = payload.get("messages") if kind == "chat" else payload.get("prompt")
    chars = len(str(text)) if text is not None else 0
    out = (_int_field(payload, "max_completion_tokens") or _int_field(payload, "max_tokens")
           or _ASSUMED_OUTPUT.get(kind, 16))
    n = _int_field(payload, "n") or 1
    return chars // 4 + 1 + out * max(1, n)
