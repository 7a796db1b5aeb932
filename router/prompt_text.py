"""The text the router matches on: a request body flattened in the order the model will see it.

It need not equal the rendered chat template, only preserve prefix order: two requests whose
flattened texts share a prefix share the rendered prompt's prefix as well (same template, same
tools, same leading messages), which is what decides a vLLM prefix-cache hit.
"""

from __future__ import annotations

import json
from typing import Any

_MESSAGE_END = "\x1e"  # record separator: a message boundary never merges with text


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                parts.append(text if isinstance(text, str) else json.dumps(part, sort_keys=True, default=str))
            else:
                parts.append(str(part))
        return "".join(parts)
    return json.dumps(content, sort_keys=True, default=str)


def _field(request: Any, name: str) -> Any:
    if isinstance(request, dict):
        return request.get(name)
    return getattr(request, name, None)


def _tools_json(tools: Any) -> str:
    plain = [t.model_dump(mode="json") if hasattr(t, "model_dump") else t for t in tools]
    return json.dumps(plain, sort_keys=True, default=str)


def routing_text(request: Any) -> str:
    """Flatten a chat (`messages`) or completion (`prompt`) request -- the validated request object the
    ingress sends (vLLM's ChatCompletionRequest or CompletionRequest) or a plain body dict; "" when it
    has neither."""
    messages = _field(request, "messages")
    if isinstance(messages, list):
        pieces = []
        tools = _field(request, "tools")
        if tools:  # chat templates put tool definitions before the conversation
            pieces.append(_tools_json(tools) + _MESSAGE_END)
        for m in messages:
            if isinstance(m, dict):
                pieces.append(f"{m.get('role', '')}:{_content_text(m.get('content'))}{_MESSAGE_END}")
        return "".join(pieces)
    prompt = _field(request, "prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt:
        first = prompt[0]
        if isinstance(first, str):  # a batch of prompts: route on the first
            return first
        if isinstance(first, int):  # token ids
            return ",".join(map(str, prompt))
        if isinstance(first, list):
            return ",".join(map(str, first))
    return ""
