"""Cached answers in both shapes: a finished OpenAI response, and the SSE stream a live one would send.

An entry is stored as the non-streaming response body (`chat.completion` or `text_completion`), as
vLLM's serving layer renders it. A streamed generation is folded into that same body as its chunks
pass (`StreamCollector`, which builds it with vLLM's response models, so it has exactly the fields
of a non-streamed answer). A request that hits is answered as *it* asks, whatever the request that
stored the entry asked: JSON, or SSE chunks built with vLLM's chunk models and dumped as vLLM dumps
them -- per choice a role chunk, the content, the tool calls (each whole, with its id and name), a
finish chunk with `finish_reason` and `stop_reason` -- then the usage chunk when
`stream_options.include_usage` asks, then `[DONE]`.

Every hit gets fresh ids: the response's and each tool call's. A client keys its tool results by
the call id (`tool_call_id`), so two answers that share one (a new user's report: the stored
`chatcmpl-tool-...` id came back on every hit) would let one conversation's tool result be matched
to another call. Ids vLLM writes in the random form are drawn again with vLLM's own
`make_tool_call_id`; a model's deterministic form (Kimi K2's `functions.<name>:<index>`) is kept,
since vLLM would write the same one again.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Iterator, Optional

from vllm.entrypoints.generate.base.protocol import DeltaFunctionCall, DeltaToolCall, FunctionCall, ToolCall
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatCompletionResponseStreamChoice,
    ChatCompletionStreamResponse,
    ChatMessage,
    DeltaMessage,
)
from vllm.entrypoints.openai.completion.protocol import (
    CompletionResponse,
    CompletionResponseChoice,
    CompletionResponseStreamChoice,
    CompletionStreamResponse,
)
from vllm.entrypoints.serve.engine.protocol import UsageInfo
from vllm.renderers.chat_utils import make_tool_call_id

from common.request_kind import RequestKind

CHAT = RequestKind.CHAT
# Finish reasons of complete answers; "abort" or an error is never stored.
_COMPLETE = ("stop", "length", "tool_calls")


def _new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == CHAT else "cmpl-") + uuid.uuid4().hex


def storable(body: dict, tools: bool = False) -> bool:
    """Only complete answers are cached: text or tool calls, never a failed generation, nor per-token
    data an entry would replay without (logprobs). `tools`: the request offered tools; then an answer
    cut at max_tokens is not stored either, since vLLM itself answers it two ways -- streamed, the
    parser has already turned the partial call into tool-call deltas; whole, the same tokens come back
    as raw `<tool_call>` text -- so an entry stored one way would answer the other way wrong."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    for choice in choices:
        if choice.get("finish_reason") not in _COMPLETE or choice.get("logprobs") is not None:
            return False
        if tools and choice.get("finish_reason") == "length":
            return False
        message = choice.get("message")
        if message is not None and message.get("content") is None and not message.get("tool_calls"):
            return False
    return True


# vLLM's random tool-call id form (`make_tool_call_id`'s default): drawn again on every hit.
_RANDOM_TOOL_CALL_ID = "chatcmpl-tool-"


def _fresh_tool_calls(message: dict) -> dict:
    """The message with each randomly-drawn tool-call id drawn again (a copy; the entry is kept)."""
    calls = message.get("tool_calls")
    if not calls:
        return message
    fresh = [dict(call, id=make_tool_call_id()) if str(call.get("id") or "").startswith(_RANDOM_TOOL_CALL_ID)
             else call for call in calls]
    return dict(message, tool_calls=fresh)


def _fresh_choices(entry: dict) -> list:
    return [dict(c, message=_fresh_tool_calls(c["message"])) if isinstance(c.get("message"), dict) else c
            for c in entry.get("choices") or []]


def as_response(kind: str, entry: dict) -> dict:
    """A stored body as a fresh response: its own id, tool-call ids and creation time, the same
    choices and usage."""
    body = dict(entry)
    body["id"] = _new_id(kind)
    body["created"] = int(time.time())
    body["choices"] = _fresh_choices(entry)
    return body


def _sse(model: Any) -> str:
    return f"data: {model.model_dump_json(exclude_unset=True)}\n\n"


def _chat_chunks(base: dict, choice: dict, fingerprint: Optional[str]) -> Iterator[str]:
    # The fields vLLM 0.32 sets explicitly (so dumped though null), chunk by chunk: the role chunk
    # carries prompt_token_ids and prompt_text, the others token_ids, the finish chunk stop_reason.
    i = choice.get("index", 0)
    message = choice.get("message") or {}

    def chunk(delta: DeltaMessage, head: Optional[dict] = None, **extra) -> str:
        stamp = {"system_fingerprint": fingerprint} if fingerprint and extra.get("finish_reason") else {}
        return _sse(ChatCompletionStreamResponse(
            **base, object="chat.completion.chunk", **(head or {}), **stamp,
            choices=[ChatCompletionResponseStreamChoice(index=i, delta=delta, logprobs=None, **extra)]))

    yield chunk(DeltaMessage(role=message.get("role") or "assistant", content=""),
                head={"prompt_token_ids": None, "prompt_text": None}, finish_reason=None)
    if message.get("reasoning"):
        yield chunk(DeltaMessage(reasoning=message["reasoning"]), finish_reason=None, token_ids=None)
    if message.get("content"):
        yield chunk(DeltaMessage(content=message["content"]), finish_reason=None, token_ids=None)
    for k, call in enumerate(message.get("tool_calls") or []):
        fn = call.get("function") or {}
        yield chunk(DeltaMessage(tool_calls=[DeltaToolCall(
            id=call.get("id"), type="function", index=k,
            function=DeltaFunctionCall(name=fn.get("name"), arguments=fn.get("arguments") or ""))]),
            finish_reason=None, token_ids=None)
    yield chunk(DeltaMessage(), finish_reason=choice.get("finish_reason"), stop_reason=choice.get("stop_reason"),
                token_ids=None)


def _completion_chunks(base: dict, choice: dict, fingerprint: Optional[str]) -> Iterator[str]:
    i = choice.get("index", 0)
    for text, finish, stop in ((choice.get("text") or "", None, None),
                               ("", choice.get("finish_reason"), choice.get("stop_reason"))):
        stamp = {"system_fingerprint": fingerprint} if fingerprint and finish else {}
        yield _sse(CompletionStreamResponse(**base, object="text_completion", **stamp, choices=[
            CompletionResponseStreamChoice(index=i, text=text, logprobs=None, finish_reason=finish, stop_reason=stop,
                                           prompt_token_ids=None, token_ids=None)]))


def as_sse(kind: str, entry: dict, include_usage: bool) -> Iterator[str]:
    """A stored body as the SSE events of a live stream, framed as vLLM frames them. The
    `system_fingerprint` goes where vLLM puts it: on each choice's finish chunk, or (include_usage)
    on the usage chunk only, the stream's true last message."""
    base = {"id": _new_id(kind), "created": int(time.time()), "model": entry.get("model")}
    fingerprint = entry.get("system_fingerprint")
    usage_last = include_usage and entry.get("usage") is not None
    for choice in _fresh_choices(entry):
        yield from (_chat_chunks if kind == CHAT else _completion_chunks)(
            base, choice, None if usage_last else fingerprint)
    if usage_last:
        usage = UsageInfo(**{k: v for k, v in entry["usage"].items() if v is not None})
        cls = ChatCompletionStreamResponse if kind == CHAT else CompletionStreamResponse
        stamp = {"system_fingerprint": fingerprint} if fingerprint else {}
        obj = "chat.completion.chunk" if kind == CHAT else "text_completion"
        last = cls(**base, object=obj, **stamp, choices=[], usage=usage)
        yield f"data: {last.model_dump_json(exclude_unset=True, exclude_none=True)}\n\n"
    yield "data: [DONE]\n\n"


class StreamCollector:
    """Folds a live stream's SSE events into the body a non-streaming request would have received."""

    def __init__(self, kind: str, forced_tools: bool = False, tools: bool = False):
        """`forced_tools`: the request's tool_choice was "required" or a named function, for which vLLM
        answers `content: ""` beside the calls (None when "auto" produced them). `tools`: the request
        offered tools (see `storable`)."""
        self.kind = kind
        self.forced_tools = forced_tools
        self.tools = tools or forced_tools
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
        if obj.get("system_fingerprint"):  # on the finish or usage chunks only (vLLM 0.32)
            self.head["system_fingerprint"] = obj["system_fingerprint"]
        if obj.get("usage"):
            self.usage = obj["usage"]
        for c in obj.get("choices") or []:
            slot = self.choices.setdefault(c.get("index", 0), {"text": "", "reasoning": "", "finish_reason": None,
                                                               "stop_reason": None, "tools": {}, "logprobs": False})
            slot["logprobs"] = slot["logprobs"] or c.get("logprobs") is not None
            if self.kind == CHAT:
                delta = c.get("delta") or {}
                slot["text"] += delta.get("content") or ""
                slot["reasoning"] += delta.get("reasoning") or ""
                for call in delta.get("tool_calls") or []:
                    tool = slot["tools"].setdefault(call.get("index", 0), {"id": None, "name": "", "arguments": ""})
                    tool["id"] = call.get("id") or tool["id"]
                    fn = call.get("function") or {}
                    tool["name"] += fn.get("name") or ""
                    tool["arguments"] += fn.get("arguments") or ""
            else:
                slot["text"] += c.get("text") or ""
            if c.get("finish_reason"):
                slot["finish_reason"] = c["finish_reason"]
                slot["stop_reason"] = c.get("stop_reason")

    def result(self) -> Optional[dict]:
        """The folded body (vLLM's non-streaming response, all its fields), or None when the stream did
        not end cleanly or is not cacheable."""
        if self.failed or not self.done or not self.choices or self.usage is None:
            return None
        if any(s["logprobs"] for s in self.choices.values()):
            return None
        usage = UsageInfo(**{k: v for k, v in self.usage.items() if v is not None})
        head = {k: v for k, v in self.head.items() if v is not None}
        if self.kind == CHAT:
            choices = []
            for i in sorted(self.choices):
                s = self.choices[i]
                calls = [ToolCall(id=t["id"], function=FunctionCall(name=t["name"], arguments=t["arguments"]))
                         if t["id"] else ToolCall(function=FunctionCall(name=t["name"], arguments=t["arguments"]))
                         for _, t in sorted(s["tools"].items())]
                content = s["text"] if s["text"] or not calls or self.forced_tools else None
                message = ChatMessage(role="assistant", content=content, tool_calls=calls,
                                      reasoning=s["reasoning"] or None)
                choices.append(ChatCompletionResponseChoice(index=i, message=message, logprobs=None,
                                                            finish_reason=s["finish_reason"],
                                                            stop_reason=s["stop_reason"]))
            body = ChatCompletionResponse(**head, choices=choices, usage=usage)
        else:
            body = CompletionResponse(**head, usage=usage, choices=[
                CompletionResponseChoice(index=i, text=s["text"], logprobs=None, finish_reason=s["finish_reason"],
                                         stop_reason=s["stop_reason"]) for i, s in sorted(self.choices.items())])
        out = json.loads(body.model_dump_json())
        return out if storable(out, tools=self.tools) else None
