"""Turn an HTTP body into vLLM's request model, or an `APIError` that names what is wrong.

Why vLLM's models, at the ingress: the engine applies exactly these rules, and every step before it
-- the tenant's caps, the cache's keys and framing, the token budget, the router -- must see the
values the engine will use. A cache answer is given only to a request the engine would have accepted
(`stream_options` without `stream` is a 400 whether or not the answer is cached), and a cap reads
`n: "17"` as the 17 the engine would run.

Why strict about unknown fields: vLLM's models accept and silently drop unknown keys, so a client's
typo (`max_token`) or a parameter this server does not support would be ignored without a word.
OpenAI answers 400 "Unrecognized request argument supplied"; so does raygate.

Where vLLM coerces a type that OpenAI refuses, raygate chooses per field:
- the framing switches `stream` (both kinds), `logprobs` (chat) and `echo` (completions) must be
  JSON booleans: pydantic reads the string "false" as False, and a client that sent a string meant
  something the server cannot know; OpenAI answers 400, so does raygate;
- numbers (`n`, `max_tokens`, `temperature`, ...) keep vLLM's coercion (`17.0` and `"17"` are 17):
  the same request is then served the same way by raygate and by `vllm serve`, and every cap and key
  reads the coerced value.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Union

from pydantic import ValidationError
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.exceptions import VLLMValidationError

from common.errors import APIError
from common.request_kind import RequestKind

OpenAIRequest = Union[ChatCompletionRequest, CompletionRequest]

_MODELS = {RequestKind.CHAT: ChatCompletionRequest, RequestKind.COMPLETION: CompletionRequest}
# raygate's own request fields, read and removed by the ingress before the body reaches vLLM:
# `cache` (cache/config.py: RequestCacheOptions).
EXTENSION_FIELDS: frozenset[str] = frozenset({"cache"})
# Fields that must be JSON booleans (or null) although vLLM would coerce a string (see above).
STRICT_BOOLEANS: dict[RequestKind, tuple[str, ...]] = {
    RequestKind.CHAT: ("stream", "logprobs"),
    RequestKind.COMPLETION: ("stream", "echo"),
}
_STRICT_STREAM_OPTIONS = ("include_usage", "continuous_usage_stats")
# Fields that must be JSON objects (or null): vLLM's "before" validators call `.get` on them ahead of
# type validation (`structured_outputs: true` raised AttributeError there: a 500, found by the API fuzz test).
OBJECT_FIELDS = ("structured_outputs", "response_format", "stream_options")
# Deepest nesting of arrays and objects a body may have. Python's parser raises RecursionError near
# 1,000 levels (a body of 1,000 nested arrays was a 500; a new user's report), and every later step
# that walks the body -- pydantic, the cache's keys, vLLM's structured-output grammar compiler on a
# JSON schema -- recurses too. 128 is far beyond any real request (a tool's JSON schema with 20
# nested objects is ~45 levels) and far below those limits. The walk costs 5.6 us on a 4-message
# chat and 0.76 ms on 1,000 messages (timeit, this host).
MAX_JSON_DEPTH = 128


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether `value` nests arrays/objects more than `limit` levels (iterative; stops at the first)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def allowed_fields(kind: RequestKind) -> set[str]:
    return set(_MODELS[kind].model_fields) | EXTENSION_FIELDS


def _loc(loc: Iterable[Any]) -> str:
    parts = [str(p) for p in loc if not str(p).startswith("function-") and p not in ("body",)]
    return ".".join(parts)


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise APIError(400, "The request body is empty; expected a JSON object.")
    too_deep = f"The request body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep."
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(400, f"The request body is not valid JSON: {e}") from None
    except RecursionError:
        raise APIError(400, too_deep) from None
    if not isinstance(payload, dict):
        raise APIError(400, f"The request body must be a JSON object, not {type(payload).__name__}.")
    if _deeper_than(payload, MAX_JSON_DEPTH):
        raise APIError(400, too_deep)
    return payload


def _of_type(payload: dict, name: str, where: str, kind: type = bool, expected: str = "a boolean") -> None:
    """400 naming `where` unless `payload[name]` is absent, null or a `kind`."""
    value = payload.get(name)
    if value is not None and not isinstance(value, kind):
        raise APIError(400, f"Invalid type for '{where}': expected {expected}, but got "
                            f"{type(value).__name__} {json.dumps(value)[:40]}.", param=where)


def check_request(kind: RequestKind, payload: dict[str, Any]) -> None:
    """The checks vLLM's model does not make: known fields, required inputs present, strict booleans."""
    unknown = sorted(set(payload) - allowed_fields(kind))
    if unknown:
        raise APIError(400, f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0])
    if kind == RequestKind.CHAT:
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
    for name in STRICT_BOOLEANS[kind]:
        _of_type(payload, name, name)
    for name in OBJECT_FIELDS:
        _of_type(payload, name, name, dict, "an object")
    options = payload.get("stream_options")
    if isinstance(options, dict):
        for name in _STRICT_STREAM_OPTIONS:
            _of_type(options, name, f"stream_options.{name}")


def _materialized(value: Any) -> Any:
    """`value` with every lazily validated iterator inside it turned into a list."""
    if isinstance(value, dict):
        return {k: _materialized(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_materialized(v) for v in value]
    if isinstance(value, (str, bytes, int, float, bool)) or value is None or hasattr(value, "model_dump"):
        return value
    if hasattr(value, "__iter__"):
        return [_materialized(v) for v in value]
    return value


def validate_request(kind: RequestKind, payload: dict[str, Any]) -> OpenAIRequest:
    """Validate a decoded body (less raygate's extension fields) into vLLM's request model for `kind`;
    raises APIError(400) naming the field."""
    check_request(kind, payload)
    try:
        request = _MODELS[kind].model_validate(payload)
        if kind == RequestKind.CHAT:
            # The message types are OpenAI's TypedDicts, whose `Iterable[...]` fields (an assistant
            # turn's `tool_calls`, content parts) pydantic validates lazily into iterators: validate
            # them now (a bad item is a 400 here, not a failure later) and keep lists, which the
            # handle call to the replica can pickle (an iterator cannot: a tool conversation got 503).
            request.messages = [_materialized(m) for m in request.messages]
        return request
    except ValidationError as e:
        first = e.errors()[0]
        where = _loc(first.get("loc", ()))
        more = f" (and {e.error_count() - 1} more errors)" if e.error_count() > 1 else ""
        raise APIError(400, f"Invalid value for '{where}': {first.get('msg')}{more}", param=where or None) from None
    except VLLMValidationError as e:
        raise APIError(400, str(e), param=getattr(e, "parameter", None)) from None
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as e:
        # Some of vLLM's "before" validators read fields they have not type-checked yet
        # (`messages: 1.5` raises TypeError): still the client's mistake.
        raise APIError(400, f"Invalid request: {e}") from None
