"""Latency series at the ingress: what counts as a completed stream, and what is timed."""

import asyncio
import time

from starlette.responses import JSONResponse, StreamingResponse

from deployments import serving_metrics


class _Recorder:
    def __init__(self):
        self.calls = []

    def observe(self, value, tags=None):
        self.calls.append((value, tags))


def _patch(monkeypatch):
    done, first = _Recorder(), _Recorder()
    monkeypatch.setattr(serving_metrics, "REQUEST_SECONDS", done)
    monkeypatch.setattr(serving_metrics, "FIRST_CHUNK_SECONDS", first)
    return done, first


async def _gen(chunks):
    for c in chunks:
        yield c


def _consume(response, stop_after=None):
    async def go():
        n = 0
        async for _ in response.body_iterator:
            n += 1
            if stop_after is not None and n >= stop_after:
                break  # the client hangs up
    asyncio.run(go())


def test_a_stream_counts_once_its_done_chunk_is_sent_even_if_the_client_hangs_up_there(monkeypatch):
    done, first = _patch(monkeypatch)
    r = StreamingResponse(_gen(["data: {\"a\": 1}\n\n", "data: {\"b\": 2}\n\ndata: [DONE]\n\n", "trailing"]))
    serving_metrics.observe_latency(r, "m", "model", started=0.0)
    _consume(r, stop_after=2)
    assert len(first.calls) == 1 and first.calls[0][1] == {"model": "m", "source": "model"}
    assert [c[1] for c in done.calls] == [{"model": "m", "source": "model", "stream": "yes"}]


def test_streams_cut_short_or_ending_in_an_error_event_are_not_completions(monkeypatch):
    done, first = _patch(monkeypatch)
    cut = StreamingResponse(_gen(["data: {\"a\": 1}\n\n", "data: {\"b\": 2}\n\n", "data: [DONE]\n\n"]))
    serving_metrics.observe_latency(cut, "m", "model", started=0.0)
    _consume(cut, stop_after=1)
    failed = StreamingResponse(_gen(["data: {\"a\": 1}\n\n", "data: {\"error\": {}}\n\ndata: [DONE]\n\n"]))
    serving_metrics.observe_latency(failed, "m", "model", started=0.0)
    _consume(failed)
    assert len(first.calls) == 2 and done.calls == []


def test_plain_answers_are_timed_at_once_and_errors_not_at_all(monkeypatch):
    done, _ = _patch(monkeypatch)
    started = time.perf_counter() - 0.25  # the request arrived 250 ms ago
    serving_metrics.observe_latency(JSONResponse({"ok": 1}), "m", "cache", started=started)
    serving_metrics.observe_latency(JSONResponse({"error": 1}, status_code=400), "m", "model", started=started)
    assert [c[1] for c in done.calls] == [{"model": "m", "source": "cache", "stream": "no"}]
    assert 0.25 <= done.calls[0][0] < 0.35  # seconds since arrival


def test_a_stream_body_ends_with_its_done_chunk_and_the_relay_still_finishes(monkeypatch):
    """The SDK hangs up at [DONE]: nothing may keep the body open after it (else HAProxy counts 499),
    but the relay's own end (slot release, cache write-back) must still run."""
    _patch(monkeypatch)
    finished = []

    async def relay():
        try:
            yield "data: {\"a\": 1}\n\n"
            yield "data: {\"b\": 2}\n\ndata: [DONE]\n\n"
            await asyncio.sleep(0.5)  # the replica's end of stream, one round trip later (long: a loaded host)
        finally:
            finished.append(True)

    async def go():
        r = StreamingResponse(relay())
        serving_metrics.observe_latency(r, "m", "model", started=0.0)
        t0 = asyncio.get_running_loop().time()
        sent = [c async for c in r.body_iterator]
        elapsed = asyncio.get_running_loop().time() - t0
        assert sent[-1].endswith("data: [DONE]\n\n") and len(sent) == 2
        assert elapsed < 0.4, "the body waited for the relay's end"
        assert not finished
        await asyncio.sleep(0.7)
        assert finished == [True]
    asyncio.run(go())


def test_a_stream_is_timed_from_arrival_to_its_first_and_last_chunk(monkeypatch):
    done, first = _patch(monkeypatch)

    async def slow():
        yield "data: {\"a\": 1}\n\n"
        await asyncio.sleep(0.2)
        yield "data: [DONE]\n\n"

    r = StreamingResponse(slow())
    serving_metrics.observe_latency(r, "m", "model", started=time.perf_counter() - 0.25)
    _consume(r)
    assert 0.25 <= first.calls[0][0] < 0.45
    assert 0.45 <= done.calls[0][0] < 1.0
