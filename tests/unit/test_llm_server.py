"""LLMServer's request paths, driven through the engine protocol with the stand-in engine.

Each test would fail if the path it names broke: the head's status and kind, the deadline check
before submission, the abort when the caller leaves (streaming and not, batched and not), and an
engine failure after the head reaching the caller as an exception (which the ingress turns into an
SSE error event). Requests arrive validated, as the ingress sends them (tests/unit/test_request_view.py
covers validation).
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from deployments.config import ModelConfig
from deployments.llm_server import LLMServer, Reply
from common.request_kind import RequestKind
from deployments.request_parsing import validate_request
from deployments.stand_in_engine import StandInEngine, StandInFailure

# One event loop for the module: `@serve.batch` keeps its queue (and the task that drains it) on the
# method, bound to the loop it first ran in, as in a replica, which has one loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(autouse=True)
def replica_context(monkeypatch):
    """What Serve gives a replica and `@serve.batch` reads: an id and the deployment's config."""
    from types import SimpleNamespace

    from ray import serve

    ctx = SimpleNamespace(replica_id=SimpleNamespace(unique_id="local"),
                          _deployment_config=SimpleNamespace(max_ongoing_requests=10**6))
    monkeypatch.setattr(serve, "get_replica_context", lambda: ctx)


async def make_server(engine: StandInEngine, batching: bool = True) -> LLMServer:
    cfg = ModelConfig(model="stand-in", served_model_name="m", engine="stand_in", warmup_requests=0,
                      submit_batching={"enabled": batching})
    server = LLMServer.__new__(LLMServer)
    await server.__init__(cfg, engine=engine)
    return server


CHAT, COMPLETION = RequestKind.CHAT, RequestKind.COMPLETION


def chat(**extra):
    """A chat request as the ingress sends it: validated (the replica does not validate again)."""
    return validate_request(CHAT, {"model": "m", "messages": [{"role": "user", "content": "hello there"}],
                                   "max_tokens": 5, **extra})


async def collect(gen) -> list:
    return [item async for item in gen]


@pytest.mark.parametrize("batching", [True, False])
async def test_a_whole_answer_is_one_head_with_status_200(batching):
    server = await make_server(StandInEngine("m", ttft_s=0.001, itl_s=0.0), batching)
    items = await collect(server.generate(CHAT, chat(), "r1"))
    assert len(items) == 1 and isinstance(items[0], Reply)
    head = items[0]
    assert head.status == 200 and not head.streaming and head.replica == "local"
    body = json.loads(head.body)
    assert body["id"] == "chatcmpl-r1" and body["usage"]["completion_tokens"] == 5
    assert body["choices"][0]["message"]["content"] == " tok" * 5


async def test_a_stream_starts_with_a_streaming_head_then_sse_strings_then_done():
    server = await make_server(StandInEngine("m", ttft_s=0.001, itl_s=0.001, interval_s=0.0))
    request = validate_request(COMPLETION, {"model": "m", "prompt": "a b", "max_tokens": 3, "stream": True,
                                            "stream_options": {"include_usage": True}})
    items = await collect(server.generate(COMPLETION, request, "r2"))
    head, rest = items[0], items[1:]
    assert isinstance(head, Reply) and head.status == 200 and head.streaming
    assert head.body.startswith("data: ") and all(isinstance(c, str) for c in rest)
    assert rest[-1] == "data: [DONE]\n\n"
    events = [json.loads(c[6:]) for c in [head.body, *rest[:-1]]]
    assert "".join(e["choices"][0]["text"] for e in events if e["choices"]) == " tok" * 3
    assert events[-1]["usage"]["completion_tokens"] == 3


async def test_a_request_past_its_deadline_is_a_503_and_never_reaches_the_engine():
    engine = StandInEngine("m")
    server = await make_server(engine)
    items = await collect(server.generate(CHAT, chat(), "r4", deadline=time.time() - 0.01))
    assert len(items) == 1 and items[0].status == 503
    assert "deadline" in json.loads(items[0].body)["error"]["message"]
    assert engine.load().requests_finished == 0
    # The same request with time left is served.
    items = await collect(server.generate(CHAT, chat(), "r4b", deadline=time.time() + 30))
    assert items[0].status == 200


@pytest.mark.parametrize("batching", [True, False])
async def test_a_caller_that_leaves_a_whole_answer_aborts_it_at_the_engine(batching):
    engine = StandInEngine("m", ttft_s=5.0)
    server = await make_server(engine, batching)
    task = asyncio.ensure_future(collect(server.generate(CHAT, chat(), "r5")))
    while engine.num_unfinished_requests() == 0:
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "chatcmpl-r5" in engine.aborts


async def test_a_caller_that_leaves_a_stream_aborts_it_at_the_engine():
    engine = StandInEngine("m", ttft_s=0.001, itl_s=0.05, interval_s=0.0)
    server = await make_server(engine)
    gen = server.generate(CHAT, chat(stream=True, max_tokens=100), "r6")
    head = await gen.__anext__()
    assert head.streaming
    await gen.__anext__()
    await gen.aclose()  # what Serve does when the ingress cancels the call
    assert "chatcmpl-r6" in engine.aborts
    assert engine.num_unfinished_requests() == 0


async def test_an_engine_that_fails_after_the_head_raises_to_the_caller_and_is_aborted():
    engine = StandInEngine("m", ttft_s=0.001, itl_s=0.001, interval_s=0.0, fail_after_chunks=1)
    server = await make_server(engine)
    gen = server.generate(CHAT, chat(stream=True), "r7")
    head = await gen.__anext__()
    assert head.status == 200 and head.streaming
    with pytest.raises(StandInFailure):
        async for _ in gen:
            pass
    assert "chatcmpl-r7" in engine.aborts


async def test_the_stand_in_streams_tokens_at_its_set_pace():
    """20 tokens at 10 ms each after a 50 ms TTFT take ~0.24 s whatever the chunking."""
    engine = StandInEngine("m", ttft_s=0.05, itl_s=0.01, interval_s=0.05)
    server = await make_server(engine, batching=False)
    t0 = time.monotonic()
    items = await collect(server.generate(CHAT, chat(stream=True, max_tokens=20), "r8"))
    took = time.monotonic() - t0
    assert 0.2 <= took < 0.6
    text = "".join(json.loads(c[6:])["choices"][0]["delta"].get("content") or ""
                   for c in [items[0].body, *items[1:-1]])
    assert text == " tok" * 20
    # Grouped: far fewer content chunks than tokens, but the first token alone.
    assert 3 <= len(items) - 3 <= 10


async def test_a_frozen_engine_is_killed_and_the_replica_reports_why():
    """Frozen with requests in flight (SIGSTOP on the engine core, in the real engine): after the
    stall timeout the engine is killed, the stream ends with an error, the health check fails naming
    the stall, and new requests are refused so that the ingress sends them elsewhere."""
    from deployments.engine_watchdog import EngineWatchdog
    from deployments.llm_server import EngineUnavailable

    engine = StandInEngine("m", ttft_s=0.001, itl_s=0.01, interval_s=0.0)
    server = await make_server(engine)
    server._watchdog = EngineWatchdog(engine, stall_timeout_s=0.3)
    server._watchdog_task.cancel()
    server._watchdog_task = asyncio.ensure_future(server._watch_engine(period_s=0.05))
    gen = server.generate(CHAT, chat(stream=True, max_tokens=1000), "r9")
    assert (await gen.__anext__()).streaming
    await server.check_health()  # progressing: healthy
    engine.frozen = True
    t0 = time.monotonic()
    with pytest.raises(StandInFailure):
        async for _ in gen:
            pass
    assert 0.3 <= time.monotonic() - t0 < 2.0
    with pytest.raises(EngineUnavailable, match="stalled"):
        await server.check_health()
    with pytest.raises(EngineUnavailable):
        await collect(server.generate(CHAT, chat(), "r10"))


def test_the_watchdog_counts_from_when_the_engine_became_busy():
    """An engine idle for long is not stalled by its first request; one busy without progress is."""
    from deployments.engine_watchdog import EngineWatchdog

    class Engine:
        unfinished, progress = 0, 0.0

        def num_unfinished_requests(self):
            return self.unfinished

        def last_progress(self):
            return self.progress

    now = [1000.0]
    engine = Engine()
    dog = EngineWatchdog(engine, stall_timeout_s=5, clock=lambda: now[0])
    assert dog.check() is None  # idle since t=0
    engine.unfinished = 3
    assert dog.check() is None  # busy from t=1000
    now[0] = 1004.0
    assert dog.check() is None
    engine.progress = 1003.0
    now[0] = 1007.0
    assert dog.check() is None  # progressed 4 s ago
    now[0] = 1008.5
    assert "no progress for 5.5 s with 3 requests" in dog.check()
    engine.unfinished = 0
    assert dog.check() is None


async def test_requests_beyond_the_stand_ins_batch_wait_and_count_as_waiting():
    """What the autoscaling policy reads (record_autoscaling_stats): running and waiting."""
    engine = StandInEngine("m", ttft_s=0.2, itl_s=0.0, max_num_seqs=2)
    server = await make_server(engine, batching=False)
    tasks = [asyncio.ensure_future(collect(server.generate(CHAT, chat(), f"w{i}"))) for i in range(5)]
    await asyncio.sleep(0.1)
    from deployments.autoscaling import ENGINE_RUNNING, ENGINE_WAITING

    assert server.record_autoscaling_stats() == {ENGINE_RUNNING: 2.0, ENGINE_WAITING: 3.0}
    await asyncio.gather(*tasks)
    assert server.record_autoscaling_stats() == {ENGINE_RUNNING: 0.0, ENGINE_WAITING: 0.0}
