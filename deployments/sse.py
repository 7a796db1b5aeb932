"""SSE responses whose body ends in the same write as their `data: [DONE]` event.

Why: the `openai` SDK closes its connection as soon as it reads `[DONE]`. Serve's HAProxy runs with
`option abortonclose` and logs a client that closes before the response has ended with a termination
state starting with `C`, which Serve's collector counts as status 499 in
`ray_serve_num_http_requests_total`. Starlette's `StreamingResponse` ends every body with a separate
empty message after the iterator is exhausted, and the ingress's iterator learned that a relayed stream
had ended only one round trip to the LLM replica after `[DONE]`: 4 of 40 complete SDK streams counted
as 499 (4 concurrent SDK clients, serve_config.yaml as shipped). Ending the iterator at `[DONE]`
(deployments/serving_metrics.py) left 1 of 40: the ingress runs at nice 15 beside the engine and can
be preempted between the two writes. `SSEResponse` sends the `[DONE]` chunk with `more_body=False`,
which uvicorn writes together with the chunked encoding's terminator, so no client can see `[DONE]`
before the end of the body.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterable, AsyncIterator

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

DONE = "data: [DONE]\n\n"
_finishing: set[asyncio.Task] = set()


def ends_stream(chunk: Any) -> bool:
    """The chunk carries the stream's last event, `data: [DONE]`."""
    if isinstance(chunk, (bytes, memoryview)):
        return bytes(chunk).endswith(DONE.encode())
    return isinstance(chunk, str) and chunk.endswith(DONE)


def run_out(chunks: AsyncIterable) -> None:
    """Let a body iterator finish in the background after its `[DONE]` was sent: its own end (a relay's
    slot release, a cache write-back) still runs; nothing it yields now can be sent."""
    async def drain() -> None:
        try:
            async for _ in chunks:
                pass
        except Exception:  # noqa: BLE001 - the response is complete; the relay logs its own errors
            pass

    task = asyncio.get_running_loop().create_task(drain())
    _finishing.add(task)
    task.add_done_callback(_finishing.discard)


class SSEResponse(StreamingResponse):
    """A `text/event-stream` StreamingResponse whose body ends with its `data: [DONE]` chunk.

    Chunks are sent as they come (no look-ahead); the one that ends with `data: [DONE]\\n\\n` is sent as
    the body's last message, and the iterator is then run to its end in the background. A stream
    without `[DONE]` (an interrupted relay) ends as StreamingResponse's does."""

    media_type = "text/event-stream"
    _running_out = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """As StreamingResponse's, then the body iterator is closed, however the response ended (a
        client that left before the body started too: a relay lets go of its admission slot in its
        `aclose`, deployments/model_call.py), unless it is running out after `[DONE]`."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None and not self._running_out:
                await close()

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        chunks: AsyncIterator = aiter(self.body_iterator)
        async for chunk in chunks:
            last = ends_stream(chunk)
            if not isinstance(chunk, (bytes, memoryview)):
                chunk = chunk.encode(self.charset)
            await send({"type": "http.response.body", "body": chunk, "more_body": not last})
            if last:
                self._running_out = True
                run_out(chunks)
                return
        await send({"type": "http.response.body", "body": b"", "more_body": False})
