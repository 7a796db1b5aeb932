"""Steady load through the HTTP API while a test breaks something, and the checks that nothing was lost:
every non-streaming request answered 200 (some after being sent again: `x-raygate-retries`), every
stream ended with [DONE], normally or after an SSE error event, never cut off silently."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import httpx

HIGH = {"x-raygate-priority": "high"}  # small test queues: high priority may fill all of them


def body(model: str, i: int, stream: bool, plain_max_tokens: int = 48) -> dict:
    return {"model": model, "stream": stream, "max_tokens": 2000 if stream else plain_max_tokens, "ignore_eos": True,
            "cache": {"mode": "off"}, "messages": [{"role": "user", "content": f"steady load {i}"}]}


@dataclass
class StreamProgress:
    """What a stream in flight has delivered so far: characters of generated text (SSE chunks group a
    varying number of tokens), updated as its events arrive."""
    chars: int = 0


@dataclass
class LoadResult:
    plain: list[tuple[int, int, str]] = field(default_factory=list)  # status, retries, body head
    streams: list[tuple[int, list[str], int]] = field(default_factory=list)  # status, data lines, retries
    # The stream in flight now: (its replica from x-raygate-replica, its progress), set and cleared as
    # one value so that a reader never pairs one stream's replica with another's progress; None
    # between streams.
    stream_in_flight: tuple[str | None, StreamProgress] | None = None

    def check(self) -> tuple[int, int]:
        """Assert nothing was lost; returns (non-streaming requests sent again, streams ended by an
        error event). Streams sent again before their first byte are in `stream_retries`."""
        assert self.plain and all(s == 200 for s, _, _ in self.plain), [p for p in self.plain if p[0] != 200]
        retried = sum(1 for _, n, _ in self.plain if n)
        interrupted = 0
        for status, events, _ in self.streams:
            assert status == 200 and events and events[-1] == "[DONE]", events[-3:]
            chunks = [json.loads(e) for e in events[:-1]]
            if any("error" in c for c in chunks):
                interrupted += 1
            else:
                last = chunks[-1]
                assert last.get("usage") or last["choices"][-1]["finish_reason"], last
        return retried, interrupted

    @property
    def stream_retries(self) -> int:
        return sum(1 for _, _, n in self.streams if n)


def _delta_chars(event: str) -> int:
    try:
        choices = json.loads(event).get("choices") or [{}]
    except ValueError:  # [DONE]
        return 0
    return len((choices[0].get("delta") or {}).get("content") or "")


async def _plain(http, url, model, until, out: LoadResult, worker: int, max_tokens: int):
    i = 0
    while time.monotonic() < until:
        r = await http.post(url, json=body(model, worker * 100_000 + i, False, max_tokens), headers=HIGH)
        out.plain.append((r.status_code, int(r.headers.get("x-raygate-retries", 0)), r.text[:200]))
        i += 1


async def _streams(http, url, model, until, out: LoadResult):
    i = 0
    while time.monotonic() < until:
        async with http.stream("POST", url, json=body(model, 10_000_000 + i, True), headers=HIGH) as r:
            progress, events = StreamProgress(), []
            out.stream_in_flight = (r.headers.get("x-raygate-replica"), progress)
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    progress.chars += _delta_chars(line[6:])
            out.stream_in_flight = None
        out.streams.append((r.status_code, events, int(r.headers.get("x-raygate-retries", 0))))
        i += 1


async def under_load(base_url: str, model: str, seconds: float, break_at_s: float, breaker,
                     plain_workers: int = 3, stream_workers: int = 1, plain_max_tokens: int = 48) -> LoadResult:
    """Run the load for `seconds`; call `breaker(result_so_far)` (in a thread) `break_at_s` into it."""
    out = LoadResult()
    url = base_url + "/v1/chat/completions"
    # Reads wait up to 300 s: a request may queue up to the routed model's max_queue_wait_s (150 s in
    # tests/integration/shared_app.py) and then generate.
    async with httpx.AsyncClient(timeout=300) as http:
        until = time.monotonic() + seconds
        tasks = [asyncio.create_task(_plain(http, url, model, until, out, w, plain_max_tokens))
                 for w in range(plain_workers)]
        tasks += [asyncio.create_task(_streams(http, url, model, until, out)) for _ in range(stream_workers)]
        await asyncio.sleep(break_at_s)
        await asyncio.to_thread(breaker, out)
        await asyncio.gather(*tasks)
    return out
