"""Coalesce a request's streamed engine outputs by time and token count.

Why at the engine output and not on SSE strings: merging `RequestOutput`s (with vLLM's own
`RequestOutput.add`, the merge its output collector uses when a consumer lags) means every later
stage -- vLLM's chat/completion JSON rendering, the Ray hop, the HTTP write and the client's parse --
runs once per chunk instead of once per token. The first output and the finishing output are never
held back, so TTFT and end-to-end latency are unchanged; only the chunks in between are grouped.
"""

from __future__ import annotations

import asyncio
from typing import AsyncGenerator, AsyncIterator, Callable, Union

from vllm.outputs import RequestOutput


def _num_tokens(output: RequestOutput) -> int:
    return sum(len(c.token_ids) for c in output.outputs)


class ChunkBudget:
    """A replica's streams share a budget of chunks per second: each stream's interval is the larger
    of `min_interval_s` and streams-in-flight / `max_chunks_per_s`.

    Why: every chunk costs the serving layer CPU on both sides of the Ray hop (measured with the
    stand-in engine, `bench.layer_alone`: ~0.5 ms of CPU per chunk across processes, against ~6 ms
    per request for everything else), so at a fixed interval that CPU grows with the number of
    streams and, on a host where the engine shares the CPU, takes its throughput. With a budget a
    lone stream still gets a chunk every `min_interval_s` while 64 streams get one every
    64 / max_chunks_per_s seconds, and the CPU spent on chunks stays bounded whatever the load.
    """

    def __init__(self, min_interval_s: float, max_chunks_per_s: float | None):
        self.min_interval_s = min_interval_s
        self.max_chunks_per_s = max_chunks_per_s
        self.streams = 0  # streams being coalesced now

    def interval_s(self) -> float:
        if not self.max_chunks_per_s:
            return self.min_interval_s
        return max(self.min_interval_s, self.streams / self.max_chunks_per_s)

    async def coalesce(self, source: AsyncIterator[RequestOutput], max_tokens: int) -> AsyncGenerator[RequestOutput, None]:
        """`coalesce_outputs` at this budget's interval; the stream counts while it runs."""
        self.streams += 1
        try:
            async for out in coalesce_outputs(source, self.interval_s, max_tokens):
                yield out
        finally:
            self.streams -= 1


async def coalesce_outputs(
    source: AsyncIterator[RequestOutput], interval_s: Union[float, Callable[[], float]], max_tokens: int
) -> AsyncGenerator[RequestOutput, None]:
    """Yield merged delta outputs of `source`: the first at once, the finished one at once, the rest
    at most every `interval_s` seconds or every `max_tokens` tokens. `interval_s` may be a function,
    asked before each wait (the replica's load-dependent interval, `ChunkBudget`).

    A pump task reads `source` eagerly (so the engine never waits on us) and merges into a pending
    output; this generator wakes only when a chunk is due. Closing or cancelling this generator
    cancels the pump, which cancels the engine's generator, which aborts the engine request.
    """
    pending: RequestOutput | None = None
    error: BaseException | None = None
    finished = False
    first_sent = False
    # Set by the pump when the consumer has something to look at: data after an empty spell, a
    # full chunk, or the end. The consumer then flushes at once (first chunk, full chunk, end) or
    # after the rest of the interval.
    wake = asyncio.Event()

    async def pump() -> None:
        nonlocal pending, error, finished
        try:
            async for out in source:
                if pending is None:
                    pending = out
                    wake.set()
                else:
                    pending.add(out, aggregate=True)
                    if _num_tokens(pending) >= max_tokens:
                        wake.set()
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # surfaced to the consumer below
            error = e
        finally:
            finished = True
            wake.set()

    def flush_now() -> bool:
        return not first_sent or finished or pending is None or pending.finished or _num_tokens(pending) >= max_tokens

    loop = asyncio.get_running_loop()
    task = loop.create_task(pump())
    last_sent = loop.time()
    try:
        while True:
            await wake.wait()
            wake.clear()
            if not flush_now():
                try:
                    interval = interval_s() if callable(interval_s) else interval_s
                    async with asyncio.timeout_at(last_sent + interval):
                        await wake.wait()
                except TimeoutError:
                    pass
                wake.clear()
            out, pending = pending, None
            if out is not None:
                first_sent = True
                last_sent = loop.time()
                yield out
            if finished and pending is None:
                if error is not None:
                    raise error
                return
    finally:
        if not task.done():
            task.cancel()
            try:
                await task
            except BaseException:
                pass
