"""What a request may be answered with: its cache scope, its exact key, and the text to match by meaning.

Why this shape: an entry may only serve a request that would get the same answer. So every field of
the body that can change the answer -- model, sampling parameters, tools, response format, stop
strings, max_tokens, n, and for chats every message before the last -- goes into the *scope* hash,
together with the tenant. Only the last user message (or a completion's prompt) is left to match
by meaning, and only inside one scope: a follow-up like "and in TypeScript?" can never meet another
conversation's answer, and a system prompt or a temperature that differs is a different scope.
Fields that change only the framing of the response (`stream`, `stream_options`, `user`, `cache`)
are left out, so a streamed request can be served from a non-streamed entry and back.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Optional

from cache.config import CacheConfig, RequestCacheOptions

# Body fields that do not change the generated text.
_FRAMING_FIELDS = frozenset({"stream", "stream_options", "user", "cache", "request_id"})
# Answers that carry per-token data the cache does not keep.
_UNCACHEABLE_FIELDS = ("logprobs", "top_logprobs", "echo", "prompt_logprobs", "prompt_embeds")


@dataclass(frozen=True)
class CachePlan:
    """How the cache treats one request. `read`/`write` are False when it is bypassed (see `reason`)."""

    read: bool
    write: bool
    reason: str
    scope: str = ""
    exact_key: str = ""
    query: Optional[str] = None  # text matched by meaning; None: exact hits only
    ttl_s: int = 0
    threshold: float = 1.0


def _canonical(value: Any) -> Any:
    """JSON-stable form: ints as floats (0 == 0.0), dict keys sorted by json.dumps."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return str(value)


def _digest(obj: Any) -> str:
    data = json.dumps(_canonical(obj), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.blake2b(data.encode(), digest_size=16).hexdigest()


def normalize_text(text: str) -> str:
    """Whitespace and unicode variants that never change the answer are folded for the exact key."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip()


def _message_text(message: Any) -> Optional[str]:
    """A message's text, or None when it holds anything but text (images, audio, tool results)."""
    if not isinstance(message, dict):
        return None
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "\n".join(str(p.get("text", "")) for p in content)
    return None


def _is_deterministic(payload: dict) -> bool:
    temperature = payload.get("temperature")
    if isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature == 0:
        return True
    return payload.get("seed") is not None  # a seeded request samples the same tokens again


def plan(kind: str, payload: dict, options: RequestCacheOptions, config: CacheConfig, tenant: str) -> CachePlan:
    """The cache plan for a validated-enough request body (`check_request` has passed)."""
    mode = options.mode
    if not config.enabled or mode == "off":
        return CachePlan(False, False, "off")
    for name in _UNCACHEABLE_FIELDS:
        if payload.get(name) not in (None, False, 0):
            return CachePlan(False, False, f"uncacheable:{name}")
    if not _is_deterministic(payload) and mode is None:
        return CachePlan(False, False, "sampled")  # temperature > 0 needs an explicit opt-in

    answer_fields = {k: v for k, v in payload.items() if k not in _FRAMING_FIELDS}
    query: Optional[str]
    if kind == "chat":
        messages = answer_fields.pop("messages")
        last = messages[-1] if isinstance(messages, list) and messages else None
        text = _message_text(last)
        if text is None or last.get("role") != "user":
            query, last_key = None, last
        else:
            query, last_key = text, normalize_text(text)
        context = messages[:-1]
    else:
        prompt = answer_fields.pop("prompt")
        query = prompt if isinstance(prompt, str) else None
        last_key = normalize_text(prompt) if isinstance(prompt, str) else prompt
        context = []
    scope = _digest({"kind": kind, "tenant": tenant, "fields": answer_fields, "context": context})
    exact_key = _digest({"scope": scope, "last": last_key})
    ttl = min(options.ttl or config.ttl_s, config.max_ttl_s)
    threshold = options.similarity_threshold if options.similarity_threshold is not None else config.similarity_threshold
    if not config.semantic:
        query = None
    return CachePlan(
        read=mode in (None, "read", "on"),
        write=mode in (None, "write", "on"),
        reason="cacheable",
        scope=scope,
        exact_key=exact_key,
        query=query,
        ttl_s=ttl,
        threshold=threshold,
    )
