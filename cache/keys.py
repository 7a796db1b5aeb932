"""What a request may be answered with: its cache scope, its exact key, and the text to match by meaning.

Why this shape: an entry may only serve a request that would get the same answer. So the keys are
computed from the request as vLLM validated it (deployments/request_view.py) -- the object the engine
will serve -- with no normalization of their own: a text fold that looks harmless can change the
tokens ("2²" and "22" are one string after NFKC, and two different questions to the model). Every
field that can change the answer -- model, every sampling parameter, tools, tool_choice, response
format, stop strings, max_tokens, n, logit_bias, seed, and for chats every message before the last
-- goes into the *scope* hash, together with the tenant; the exact key adds the last message (or a
completion's prompt) verbatim. Only a chat's last user message's text is left to match by meaning,
and only inside one scope: a follow-up like "and in TypeScript?" can never meet another
conversation's answer, and a system prompt or a temperature that differs is a different scope. A
completion's prompt is never matched by meaning: the model continues its literal text, so a change
of case, tense, punctuation or a trailing space changes the answer ("The capital of France is" -> " Paris.", "The capital of France
is:" -> "\n\nParis", "the capital of france is" -> " 2100000" on the default model, each served the
first one's answer at similarity 0.93-1.00 before; a new user's report). Content parts that
are not text (images, audio) enter the keys as their JSON, so by content digest, and a message that
holds one is never matched by meaning.

Fields that change only the framing of the response (`stream`, `stream_options`, `stream_interval`,
`user`, vLLM's per-request `request_id`) are left out, so a streamed request can be served from a
non-streamed entry and back (cache/responses.py frames the answer as the request asks). Except with
tools offered (tool_choice other than "none"): vLLM writes a tool call's arguments differently
streamed (the model's own text, `{\n    "city": "Paris"\n}`) and whole (re-serialized, `{"city":
"Paris"}`), so there `stream` is part of the scope and each framing gets its own entries. Requests
whose answers carry per-token data that entries do not keep (logprobs, including `logprobs: 0` on
completions, which returns the sampled tokens' logprobs; echo; token ids) are not cached at all.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Optional

from cache.config import CacheConfig, RequestCacheOptions
from common.request_kind import RequestKind

# Validated-request fields that do not change the generated answer, only how it is delivered.
FRAMING_FIELDS = frozenset({"stream", "stream_options", "stream_interval", "user", "request_id"})
# Fields whose answers carry per-token data that a cache entry does not keep: set (not None, not
# False) means the request is not cached. `logprobs: 0` on a completion is set.
UNCACHEABLE_FIELDS = ("logprobs", "echo", "prompt_logprobs", "prompt_embeds", "return_token_ids",
                      "return_token_offsets", "return_prompt_text", "return_mm_kwargs")


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


def digest(obj: Any) -> str:
    """A 128-bit hash of a JSON value: keys sorted, numbers as JSON writes them (exact at any size)."""
    data = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.blake2b(data.encode(), digest_size=16).hexdigest()


def _message_text(message: Any) -> Optional[str]:
    """A message's text, or None when it holds anything but text (images, audio, tool results)."""
    if not isinstance(message, dict):
        return None
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content and all(isinstance(p, dict) and p.get("type") == "text"
                                                     for p in content):
        return "\n".join(str(p.get("text", "")) for p in content)
    return None


def _uncacheable(fields: dict) -> Optional[str]:
    for name in UNCACHEABLE_FIELDS:
        value = fields.get(name)
        if value is not None and value is not False:  # not `in (None, False)`: 0 == False in Python
            return name
    return None


def plan(kind: RequestKind, request: Any, options: RequestCacheOptions, config: CacheConfig,
         tenant: str) -> CachePlan:
    """The cache plan for a validated request (vLLM's ChatCompletionRequest or CompletionRequest)."""
    mode = options.mode
    if not config.enabled or mode == "off":
        return CachePlan(False, False, "off")
    # Fields at their defaults are left out: the engine sees the same value whether the client sent
    # it or not (50 us a request against 160 us for a full JSON-mode dump).
    answer_fields = request.model_dump(exclude=FRAMING_FIELDS, exclude_defaults=True)
    reason = _uncacheable(answer_fields)
    if reason is not None:
        return CachePlan(False, False, f"uncacheable:{reason}")
    deterministic = answer_fields.get("temperature") == 0 or answer_fields.get("seed") is not None
    if not deterministic and mode is None:
        return CachePlan(False, False, "sampled")  # temperature > 0 needs an explicit opt-in

    query: Optional[str]
    if kind == RequestKind.CHAT:
        messages = answer_fields.pop("messages")
        last = messages[-1]
        text = _message_text(last)
        query = text if text is not None and last.get("role") == "user" else None
        context = messages[:-1]
    else:
        last = answer_fields.pop("prompt")
        query = None  # exact hits only: the model continues the literal text (module docstring)
        context = []
    if answer_fields.get("tools") and getattr(request, "tool_choice", None) != "none":
        answer_fields["stream"] = bool(getattr(request, "stream", False))  # see the module docstring
    scope = digest({"kind": RequestKind(kind).value, "tenant": tenant, "fields": answer_fields, "context": context})
    exact_key = digest({"scope": scope, "last": last})
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
