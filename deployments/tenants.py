"""Tenants: who a request belongs to, what it may ask for, and whose cached answers it may see.

A tenant is named by its API key (deployments/auth.py). Its settings bound what one request may
cost (`max_tokens`, `n`, messages) and how fast it may come (deployments/rate_limits.py), and
`cache_scope` decides cache visibility: entries are keyed by it, so by default no tenant ever reads
another's cached answers; tenants that name the same `cache_scope` share theirs, an explicit opt-in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from pydantic import BaseModel, ConfigDict, Field

from common.errors import APIError
from common.request_kind import RequestKind

if TYPE_CHECKING:
    from deployments.request_parsing import OpenAIRequest

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


def apply_caps(kind: RequestKind, request: OpenAIRequest, tenant: Tenant, max_tokens_given: bool) -> None:
    """Refuse (400, naming the field) a validated request beyond its tenant's caps; give a request that
    omitted max_tokens (`max_tokens_given` False: the client sent neither max_tokens nor
    max_completion_tokens) the tenant's cap, so that it cannot run to the end of the context.

    Reads the values vLLM validated (`n: "17"` is 17 here, as in the engine), so no spelling of a
    number passes a cap that its value exceeds."""
    s = tenant.settings
    if s.max_messages is not None and kind == RequestKind.CHAT and len(request.messages) > s.max_messages:
        raise APIError(400, f"'messages' has {len(request.messages)} messages; this API key allows at most "
                            f"{s.max_messages}.", param="messages")
    n = request.n or 1
    if s.max_n is not None and n > s.max_n:
        raise APIError(400, f"'n' is {n}; this API key allows at most {s.max_n}.", param="n")
    if s.max_tokens is None:
        return
    fields = ("max_tokens", "max_completion_tokens") if kind == RequestKind.CHAT else ("max_tokens",)
    if max_tokens_given:
        for field in fields:
            value = getattr(request, field)
            if value is not None and value > s.max_tokens:
                raise APIError(400, f"'{field}' is {value}; this API key allows at most {s.max_tokens}.",
                               param=field)
    else:
        setattr(request, fields[-1], s.max_tokens)


# Output tokens assumed for the budget when a request does not say (OpenAI's completion default is
# 16; a chat may run to the context, so a tenant with a token budget should also have `max_tokens`).
_ASSUMED_OUTPUT = {RequestKind.CHAT: 256, RequestKind.COMPLETION: 16}


def _prompt_chars(kind: RequestKind, request: OpenAIRequest) -> int:
    if kind == RequestKind.CHAT:
        total = 0
        for message in request.messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                total += len(content)
            elif isinstance(content, list):
                total += sum(len(p.get("text") or "") if isinstance(p, dict) else 0 for p in content)
        return total
    prompt = request.prompt
    if isinstance(prompt, str):
        return len(prompt)
    if isinstance(prompt, list):  # token ids count four characters each; a batch counts every prompt
        return sum(len(p) if isinstance(p, str) else 4 * len(p) if isinstance(p, list) else 4 for p in prompt)
    return 0


def estimated_tokens(kind: RequestKind, request: OpenAIRequest) -> int:
    """What a validated request may cost in tokens, for the tokens-per-minute budget: its prompt at four
    characters a token (the ingress does not tokenize) plus the most it may generate, times `n`."""
    out = (getattr(request, "max_completion_tokens", None) or request.max_tokens or _ASSUMED_OUTPUT[kind])
    return _prompt_chars(kind, request) // 4 + 1 + out * max(1, request.n or 1)
