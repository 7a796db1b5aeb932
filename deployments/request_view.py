"""One decoded view of a request, built once at the ingress and read by every step after it.

Why one: the caps, the cache's keys and framing, the token budget and the router each used to walk the
raw body with rules of their own (`n: 17` capped but `n: "17"` not; a cached answer framed by the
stored entry instead of the request). Here the body is validated once by vLLM's own request models
(deployments/request_parsing.py), the tenant's caps are applied to the validated values, and the
result -- the kind, the validated request, raygate's cache options -- is what the cache keys
(cache/keys.py), the framing of cached answers (cache/responses.py), the token estimate
(deployments/tenants.py), the router (router/prompt_text.py, which reads the same object off the
handle call) and the LLM replica see. The replica does not validate again: it receives this object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Container

from cache.config import RequestCacheOptions, parse_request_options
from common.errors import APIError
from common.request_kind import RequestKind
from deployments.request_parsing import OpenAIRequest, validate_request
from deployments.tenants import Tenant, apply_caps, estimated_tokens

__all__ = ["RequestKind", "RequestView", "build_view"]


@dataclass(frozen=True)
class RequestView:
    """A validated request: `request` is vLLM's model with the tenant's caps applied (the object the
    engine serves), `cache` raygate's per-request cache options (the body's `cache` field)."""

    kind: RequestKind
    model: str
    request: OpenAIRequest
    cache: RequestCacheOptions

    @property
    def stream(self) -> bool:
        return bool(self.request.stream)

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk (only a streaming request may ask)."""
        options = self.request.stream_options
        return self.stream and options is not None and bool(options.include_usage)

    @property
    def n(self) -> int:
        return self.request.n or 1

    def estimated_tokens(self) -> int:
        return estimated_tokens(self.kind, self.request)


def build_view(kind: RequestKind, payload: dict[str, Any], tenant: Tenant, default_model: str,
               models: Container[str]) -> RequestView:
    """The view of a decoded JSON body; raises APIError (400 naming the field, 404 for an unknown
    model). `payload` is consumed: its `cache` field is removed and the model filled in."""
    model = payload.get("model")
    if model is None:
        payload["model"] = model = default_model
    if not isinstance(model, str):
        raise APIError(400, "Invalid value for 'model': expected a string.", param="model")
    if model not in models:
        raise APIError(404, f"The model `{model}` does not exist.", param="model")
    options = parse_request_options(payload.pop("cache", None))
    request = validate_request(kind, payload)
    given = payload.get("max_tokens") is not None or payload.get("max_completion_tokens") is not None
    apply_caps(kind, request, tenant, max_tokens_given=given)
    return RequestView(kind, model, request, options)
