"""Turn an HTTP body into vLLM's request model, or an `APIError` that names what is wrong.

Why strict about unknown fields: vLLM's models accept and silently drop unknown keys, so a client's
typo (`max_token`) or a parameter this server does not support would be ignored without a word.
OpenAI answers 400 "Unrecognized request argument supplied"; so does raygate.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Union

from pydantic import ValidationError
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.exceptions import VLLMValidationError

from common.errors import APIError

CHAT = "chat"
COMPLETION = "completion"

OpenAIRequest = Union[ChatCompletionRequest, CompletionRequest]

_MODELS = {CHAT: ChatCompletionRequest, COMPLETION: CompletionRequest}
# raygate's own request fields, read and removed by the ingress before the body reaches vLLM:
# `cache` (cache/config.py: RequestCacheOptions).
EXTENSION_FIELDS: frozenset[str] = frozenset({"cache"})


def allowed_fields(kind: str) -> set[str]:
    return set(_MODELS[kind].model_fields) | EXTENSION_FIELDS


def _loc(loc: Iterable[Any]) -> str:
    parts = [str(p) for p in loc if not str(p).startswith("function-") and p not in ("body",)]
    return ".".join(parts)


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise APIError(400, "The request body is empty; expected a JSON object.")
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(400, f"The request body is not valid JSON: {e}") from None
    if not isinstance(payload, dict):
        raise APIError(400, f"The request body must be a JSON object, not {type(payload).__name__}.")
    return payload


def check_request(kind: str, payload: dict[str, Any]) -> None:
    """The ingress's cheap checks on a decoded body: known fields, required inputs present.

    Full validation into vLLM's model happens once, in the LLM replica (`validate_request`): doing it
    here too cost ~14% of the ingress's CPU (vLLM's validators, then pickling the model object)."""
    unknown = sorted(set(payload) - allowed_fields(kind))
    if unknown:
        raise APIError(400, f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0])
    if kind == CHAT:
        messages = payload.get("messages")
        if messages is None:
            raise APIError(400, "Missing required parameter: 'messages'.", param="messages")
        if not isinstance(messages, list):
            raise APIError(400, f"Invalid value for 'messages': expected an array of messages, not "
                                f"{type(messages).__name__}.", param="messages")
        if not messages:
            raise APIError(400, "'messages' must contain at least one message.", param="messages")
    elif "prompt" not in payload and "prompt_embeds" not in payload:
        raise APIError(400, "Missing required parameter: 'prompt'.", param="prompt")


def validate_request(kind: str, payload: dict[str, Any]) -> OpenAIRequest:
    """Validate a decoded body into vLLM's request model for `kind`; raises APIError(400)."""
    check_request(kind, payload)
    try:
        return _MODELS[kind].model_validate(payload)
    except ValidationError as e:
        first = e.errors()[0]
        where = _loc(first.get("loc", ()))
        more = f" (and {e.error_count() - 1} more errors)" if e.error_count() > 1 else ""
        raise APIError(400, f"Invalid value for '{where}': {first.get('msg')}{more}", param=where or None) from None
    except VLLMValidationError as e:
        raise APIError(400, str(e), param=getattr(e, "parameter", None)) from None
    except (ValueError, TypeError) as e:
        # Some of vLLM's "before" validators iterate fields they have not type-checked yet
        # (`messages: 1.5` raises TypeError): still the client's mistake.
        raise APIError(400, f"Invalid request: {e}") from None
