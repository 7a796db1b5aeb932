"""The two kinds of generation request raygate serves, named once for every layer.

A `str` enum: the value ("chat", "completion") is what metrics tags and logs carry, and what the
layers below deployments/ (the cache keys, the cache's response shapes) compare against.
"""

from __future__ import annotations

from enum import Enum


class RequestKind(str, Enum):
    CHAT = "chat"  # /v1/chat/completions
    COMPLETION = "completion"  # /v1/completions

    def __str__(self) -> str:
        return self.value
