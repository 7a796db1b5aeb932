"""The model-call path's bounds on waiting for a model's first byte (deployments/model_call.py).

A fake handle stands in for Serve's: its calls never answer (a frozen replica, or one that is never
assigned), so the only thing that ends the wait is the bound under test. Each test fails if the bound
is removed: the call would hang past the test's own timeout.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from common.errors import APIError
from common.request_kind import RequestKind
from deployments.config import ModelConfig
from deployments.model_call import ModelCaller, RequestContext
from deployments.request_controls import RequestControls
from deployments.request_view import build_view
from deployments.tenants import Tenant, TenantSettings



class _NeverAnswers:
    """A DeploymentResponseGenerator whose head never comes; records its cancellation."""

    def __init__(self):
        self.cancelled = False

    def __anext__(self):
        return asyncio.get_running_loop().create_future()

    def cancel(self):
        self.cancelled = True


class _Handle:
    def __init__(self):
        self.calls: list[_NeverAnswers] = []
        self.generate = self

    def options(self, **_):
        return self

    def remote(self, *args, **kwargs):
        self.calls.append(_NeverAnswers())
        return self.calls[-1]


def _caller(cfg: ModelConfig, handle: _Handle) -> ModelCaller:
    return ModelCaller({cfg.name: cfg}, {cfg.name: handle}, gates={}, limits=None)


def _ctx(cfg: ModelConfig, stream: bool, timeout_s: float | None) -> RequestContext:
    body = {"model": cfg.name, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    view = build_view(RequestKind.CHAT, body, Tenant("t", TenantSettings()), cfg.name, {cfg.name})
    deadline = time.time() + timeout_s if timeout_s is not None else None
    return RequestContext(view=view, request_id="rid", controls=RequestControls(deadline=deadline), tenant=None)


@pytest.mark.parametrize("stream", [True, False])
async def test_a_deadline_bounds_the_wait_for_the_first_byte_and_aborts_the_call(stream):
    cfg = ModelConfig(served_model_name="m")
    handle = _Handle()
    t0 = time.monotonic()
    with pytest.raises(APIError) as e:
        await asyncio.wait_for(_caller(cfg, handle)._first_reply(_ctx(cfg, stream, 0.3), None), 10)
    assert 0.25 <= time.monotonic() - t0 < 2
    assert e.value.status == 504 and "deadline" in e.value.message
    assert len(handle.calls) == 1 and handle.calls[0].cancelled  # aborted, and not retried


async def test_a_stream_without_a_deadline_is_bounded_by_the_time_to_first_token_limit():
    cfg = ModelConfig(served_model_name="m", ttft_timeout_s=0.3)
    handle = _Handle()
    with pytest.raises(APIError) as e:
        await asyncio.wait_for(_caller(cfg, handle)._first_reply(_ctx(cfg, True, None), None), 10)
    assert e.value.status == 504 and "time-to-first-token" in e.value.message


async def test_no_running_replica_is_a_503_at_once(monkeypatch):
    from router import registry

    class Router:
        replicas_known, curr_replicas = True, []

    monkeypatch.setattr(registry, "find", lambda name: Router())
    cfg = ModelConfig(served_model_name="m")
    handle = _Handle()
    with pytest.raises(APIError) as e:
        await asyncio.wait_for(_caller(cfg, handle)._first_reply(_ctx(cfg, False, None), None), 1)
    assert e.value.status == 503 and e.value.retry_after_s and not handle.calls


async def test_a_replica_whose_engine_is_gone_is_marked_in_the_router_before_the_retry(monkeypatch):
    """EngineUnavailable names the replica; the ingress tells its router to skip it before retrying,
    so that the retry cannot be routed back to it (its routing stats come only every 2 s)."""
    from deployments.llm_server import EngineUnavailable
    from router import registry

    marked: list[str] = []

    class Router:
        replicas_known, curr_replicas = True, ["r1", "r2"]

        def mark_unavailable(self, replica):
            marked.append(replica)

    class _Refuses(_NeverAnswers):
        def __init__(self, replica):
            super().__init__()
            self.replica = replica

        def __anext__(self):
            f = asyncio.get_running_loop().create_future()
            f.set_exception(EngineUnavailable("engine stalled", self.replica))
            return f

    class _Handle2(_Handle):
        def remote(self, *args, **kwargs):
            self.calls.append(_Refuses(f"r{len(self.calls) + 1}"))
            return self.calls[-1]

    monkeypatch.setattr(registry, "find", lambda name: Router())
    monkeypatch.setattr("deployments.model_call._RETRY_BACKOFF_S", 0.0)
    cfg = ModelConfig(served_model_name="m", retries=1)
    handle = _Handle2()
    with pytest.raises(APIError) as e:
        await asyncio.wait_for(_caller(cfg, handle)._first_reply(_ctx(cfg, False, None), None), 5)
    assert e.value.status == 503 and "EngineUnavailable" in e.value.message
    assert marked == ["r1", "r2"] and len(handle.calls) == 2


# ---- a colocated model (ingress.colocate): the engine in this process, called without a handle ----

@pytest.fixture
def replica_context(monkeypatch):
    """What Serve gives a replica and `@serve.batch` reads: an id and the deployment's config."""
    from types import SimpleNamespace

    from ray import serve

    ctx = SimpleNamespace(replica_id=SimpleNamespace(unique_id="local"),
                          _deployment_config=SimpleNamespace(max_ongoing_requests=10**6))
    monkeypatch.setattr(serve, "get_replica_context", lambda: ctx)


async def _colocated(engine, **cfg_fields):
    from deployments.admission import AdmissionGate
    from deployments.llm_server import LLMServer
    from deployments.rate_limits import TenantRateLimiter

    # Submission batching off: `@serve.batch`'s queue belongs to the decorated function (one per process,
    # as in a replica) and is bound to the loop it first ran in, which other test modules' loops own.
    cfg = ModelConfig(model="stand-in", served_model_name="m", engine="stand_in", warmup_requests=0,
                      submit_batching={"enabled": False}, **cfg_fields)
    server = LLMServer.__new__(LLMServer)
    await server.__init__(cfg, engine=engine)
    gate = AdmissionGate("m", cfg.admission, replicas=lambda: 1)
    # No handle at all: a colocated model reached through one would fail with a KeyError.
    caller = ModelCaller({"m": cfg}, {}, {"m": gate}, TenantRateLimiter(None, key_prefix="t"), local={"m": server})
    return cfg, caller, gate


def _colocated_ctx(cfg: ModelConfig, stream: bool, timeout_s: float | None = None) -> RequestContext:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream, "max_tokens": 5}
    view = build_view(RequestKind.CHAT, body, Tenant("t", TenantSettings()), "m", {"m"})
    deadline = time.time() + timeout_s if timeout_s is not None else None
    return RequestContext(view=view, request_id="rid", controls=RequestControls(deadline=deadline),
                          tenant=Tenant("t", TenantSettings()))


async def test_a_colocated_model_answers_from_the_engine_in_this_process(replica_context):
    from deployments.stand_in_engine import StandInEngine

    cfg, caller, gate = await _colocated(StandInEngine("m", ttft_s=0.001, itl_s=0.001, interval_s=0.0))
    whole = await caller.call(_colocated_ctx(cfg, stream=False))
    assert whole.status_code == 200 and whole.body.count(b" tok") == 5
    streamed = await caller.call(_colocated_ctx(cfg, stream=True))
    text = "".join([c async for c in streamed.body_iterator])
    assert text.count(" tok") == 5 and text.endswith("data: [DONE]\n\n")
    assert gate.inflight == 0  # both slots given back


async def test_a_client_leaving_a_colocated_stream_aborts_its_generation(replica_context):
    from deployments.stand_in_engine import StandInEngine

    engine = StandInEngine("m", ttft_s=0.001, itl_s=0.2, interval_s=0.0)
    cfg, caller, gate = await _colocated(engine)
    streamed = await caller.call(_colocated_ctx(cfg, stream=True))
    it = streamed.body_iterator
    await it.__anext__()  # the head: the generation is running
    await it.aclose()  # what SSEResponse does when the client disconnects
    for _ in range(50):
        if engine.aborts:
            break
        await asyncio.sleep(0.01)
    assert engine.aborts == ["chatcmpl-rid"] and gate.inflight == 0


async def test_a_colocated_head_that_never_comes_is_bounded_and_its_generation_aborted(replica_context):
    from deployments.stand_in_engine import StandInEngine

    engine = StandInEngine("m", ttft_s=0.001, itl_s=0.001)
    engine.frozen = True  # no output at all, as an engine process stopped with SIGSTOP
    cfg, caller, gate = await _colocated(engine, retries=2)
    t0 = time.monotonic()
    with pytest.raises(APIError) as e:
        await asyncio.wait_for(caller.call(_colocated_ctx(cfg, stream=True, timeout_s=0.3)), 10)
    assert e.value.status == 504 and 0.25 <= time.monotonic() - t0 < 2
    for _ in range(50):
        if engine.aborts:
            break
        await asyncio.sleep(0.01)
    assert engine.aborts == ["chatcmpl-rid"] and gate.inflight == 0
