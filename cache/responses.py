"""Cached answers in both shapes: a finished OpenAI response, and the SSE stream a live one would send.

An entry is stored as the non-streaming response body (`chat.completion` or `text_completion`).
A streamed generation is folded into that body as its chunks pass (`StreamCollector`), and a
streaming request that hits is answered with chunks framed like vLLM's own: a role chunk, the
content, a finish chunk, the usage chunk when `stream_options.include_usage` asks, `[DONE]`.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Iterator, Optional

from common.request_kind import RequestKind

CHAT = RequestKind.CHAT


def _new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == CHAT else "cmpl-") + uuid.uuid4().hex


def storable(body: dict) -> bool:
    """Only complete text answers are cached: no tool calls, no cut-off or failed generation."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    for choice in choices:
        if choice.get("finish_reason") not in ("stop", "length"):
            return False
        message = choice.get("message")
        if message is not None and (message.get("tool_calls") or message.get("content") is None):
            return False
    return True


def as_response(kind: str, entry: dict) -> dict:
    """A stored body as a fresh response: its own id and creation time, the same choices and usage."""
    body = dict(entry)
    body["id"] = _new_id(kind)
    body["created"] = int(time.time())
    return body


def _sse(obj: dict) -> str:
    return "data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n\n"


def as_sse(kind: str, entry: dict, include_usage: bool) -> Iterator[str]:
    """A stored body as the SSE events of a live stream (one content chunk per choice)."""
    base = {"id": _new_id(kind), "created": int(time.time()), "model": entry.get("model")}
    obj = "chat.completion.chunk" if kind == CHAT else "text_completion"
    for choice in entry["choices"]:
        i = choice.get("index", 0)
        if kind == CHAT:
            yield _sse({**base, "object": obj, "choices": [
                {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]})
            content = (choice.get("message") or {}).get("content") or ""
            yield _sse({**base, "object": obj, "choices": [
                {"index": i, "delta": {"content": content}, "logprobs": None, "finish_reason": None}]})
            yield _sse({**base, "object": obj, "choices": [
                {"index": i, "delta": {}, "logprobs": None, "finish_reason": choice.get("finish_reason")}]})
        else:
            yield _sse({**base, "object": obj, "choices": [
                {"index": i, "text": choice.get("text") or "", "logprobs": None, "finish_reason": None}]})
            yield _sse({**base, "object": obj, "choices": [
                {"index": i, "text": "", "logprobs": None, "finish_reason": choice.get("finish_reason")}]})
    if include_usage and entry.get("usage") is not None:
        yield _sse({**base, "object": obj, "choices": [], "usage": entry["usage"]})
    yield "data: [DONE]\n\n"


class StreamCollector:
    """Folds a live stream's SSE events into the body a non-streaming request would have received."""

    def __init__(self, kind: str):
        self.kind = kind
        self.head: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: Optional[dict] = None
        self.failed = False
        self.done = False

    def feed(self, chunk: str, strip_usage: bool = False) -> str:
        """Fold one relayed SSE string; returns it, less the usage-only event if `strip_usage`
        (the ingress asks the engine for usage to store it even when the client did not)."""
        kept = []
        for event in chunk.split("\n\n"):
            if not event.strip():
                continue
            kept.append(event)
            body = event.strip()
            if not body.startswith("data:"):
                continue
            data = body[5:].strip()
            if data == "[DONE]":
                self.done = True
                continue
            try:
                obj = json.loads(data)
            except json.JSONDecodeError:
                self.failed = True
                continue
            self._fold(obj)
            if strip_usage and obj.get("usage") and not obj.get("choices"):
                kept.pop()
        return "".join(e + "\n\n" for e in kept)

    def _fold(self, obj: dict) -> None:
        if "error" in obj:
            self.failed = True
            return
        if not self.head:
            self.head = {k: obj.get(k) for k in ("id", "created", "model")}
        if obj.get("usage"):
            self.usage = obj["usage"]
        for c in obj.get("choices") or []:
            slot = self.choices.setdefault(c.get("index", 0), {"text": "", "finish_reason": None, "tool": False})
            if self.kind == CHAT:
                delta = c.get("delta") or {}
                slot["text"] += delta.get("content") or ""
                slot["tool"] = slot["tool"] or bool(delta.get("tool_calls"))
            else:
                slot["text"] += c.get("text") or ""
            if c.get("finish_reason"):
                slot["finish_reason"] = c["finish_reason"]

    def result(self) -> Optional[dict]:
        """The folded body, or None when the stream did not end cleanly or is not cacheable."""
        if self.failed or not self.done or not self.choices or any(s["tool"] for s in self.choices.values()):
            return None
        choices = []
        for i in sorted(self.choices):
            s = self.choices[i]
            if self.kind == CHAT:
                choices.append({"index": i, "message": {"role": "assistant", "content": s["text"]},
                                "logprobs": None, "finish_reason": s["finish_reason"]})
            else:
                choices.append({"index": i, "text": s["text"], "logprobs": None, "finish_reason": s["finish_reason"]})
        body = {**self.head, "object": "chat.completion" if self.kind == CHAT else "text_completion",
                "choices": choices, "usage": self.usage}
        return body if storable(body) else None
