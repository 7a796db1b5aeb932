"""SSEResponse: the `[DONE]` chunk is the body's last message (no separate empty one after it)."""

import asyncio

from deployments.sse import SSEResponse


async def _send_all(response) -> list[dict]:
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        await asyncio.sleep(3600)

    await response({"type": "http", "asgi": {"spec_version": "2.4"}}, receive, send)
    return sent


def test_done_is_sent_with_the_end_of_the_body_and_the_iterator_still_finishes():
    finished = []

    async def relay():
        try:
            yield 'data: {"a": 1}\n\n'
            yield 'data: {"b": 2}\n\ndata: [DONE]\n\n'
            await asyncio.sleep(0.05)  # the replica's end of stream, a round trip later
        finally:
            finished.append(True)

    async def go():
        sent = await _send_all(SSEResponse(relay()))
        bodies = [(m["body"], m["more_body"]) for m in sent if m["type"] == "http.response.body"]
        assert bodies == [(b'data: {"a": 1}\n\n', True), (b'data: {"b": 2}\n\ndata: [DONE]\n\n', False)]
        assert dict(sent[0]["headers"])[b"content-type"].startswith(b"text/event-stream")
        assert not finished
        await asyncio.sleep(0.1)
        assert finished == [True]
    asyncio.run(go())


def test_a_stream_without_done_ends_like_any_streaming_response():
    async def cut():
        yield 'data: {"a": 1}\n\n'
        yield 'data: {"error": {"message": "interrupted"}}\n\n'

    sent = asyncio.run(_send_all(SSEResponse(cut())))
    bodies = [(m["body"], m["more_body"]) for m in sent if m["type"] == "http.response.body"]
    assert bodies[-1] == (b"", False) and len(bodies) == 3


def test_a_relay_whose_client_left_before_the_body_started_still_lets_go_of_its_slot():
    """ASGI 2.3 (uvicorn here): Starlette listens for the disconnect beside the send loop and cancels
    the response when the client has already gone. An async generator that never started runs no
    `finally`; the relay's body (deployments/model_call.py `_RelayBody`) is closed by SSEResponse and
    lets go of what it holds (slot, replica stream, write-back) all the same, once."""
    from deployments.model_call import _RelayBody

    let_go: list[str] = []
    started: list[bool] = []

    async def relay():
        started.append(True)
        try:
            yield 'data: {"a": 1}\n\n'
            await asyncio.sleep(3600)
        finally:
            let_go.append("finally")

    async def go():
        async def send(message):
            await asyncio.sleep(0.05)  # the client is gone before the headers are out

        async def receive():
            return {"type": "http.disconnect"}

        body = _RelayBody(relay(), lambda: let_go.append("cleanup"))
        await SSEResponse(body)({"type": "http", "asgi": {"spec_version": "2.3"}}, receive, send)

    asyncio.run(go())
    assert not started  # the case: the body never started
    assert let_go == ["cleanup"]
