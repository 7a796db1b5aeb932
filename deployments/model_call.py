"""The model-call path: from a request that must go to a model to its HTTP response.

Why its own module: ingress.py is the HTTP surface (endpoints, body and header checks, the cache's
lookup steps); what happens once a request must be generated is one path with one shape -- charge the
tenant's token budget, take an admission slot, call the model through a streaming handle, retry a
replica that died before answering, relay the stream, and store the finished answer in the cache --
and it lives here, named: `RequestContext` is the request on its way, `WriteBack` is where its answer
goes once finished.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import AsyncGenerator, Callable, Optional

from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RequestCancelledError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.responses import Response
from vllm.entrypoints.generate.base.protocol import StreamOptions

from cache.client import CacheMiss, IngressCache
from cache.keys import CachePlan
from cache.responses import StreamCollector, storable
from common.errors import APIError, error_body
from deployments import serving_metrics
from deployments.admission import AdmissionGate, Slot
from deployments.config import ModelConfig, llm_deployment_name
from deployments.llm_server import EngineUnavailable, LLMServer, Reply
from deployments.rate_limits import TenantRateLimiter
from deployments.request_controls import RequestControls
from deployments.request_view import RequestView
from deployments.sse import SSEResponse
from deployments.tenants import Tenant
from router import registry

logger = logging.getLogger("ray.serve")

# Retry hint for 503s caused by missing capacity (no replica yet, or all queues full).
RETRY_AFTER_S = 1.0
# Pause before calling the model again after a replica failed before answering.
_RETRY_BACKOFF_S = 0.2
REPLICA_HEADER = "x-raygate-replica"
RETRIES_HEADER = "x-raygate-retries"  # set when a failed replica's request was sent again


@dataclass
class RequestContext:
    """One request on its way to a model.

    `request_id` is raygate's own, unique per request: the engine's request ids (and so its aborts)
    derive from it. `client_request_id` is the client's x-request-id, if it sent one: echoed in the
    response (by Serve) and written to the logs, never used to find or abort anything -- two clients
    may send the same one. `headers` are response headers decided before the call (the cache's verdict)."""

    view: RequestView
    request_id: str
    controls: RequestControls
    tenant: Tenant
    client_request_id: Optional[str] = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class WriteBack:
    """Where a model's finished answer goes: the cache entry of `plan`, written with the lookup's
    embedding (`miss`), and the coalesced followers waiting on the same key. `finish` must be called
    exactly once, with the answer's body (stored if complete) or None (generation failed)."""

    cache: IngressCache
    plan: CachePlan
    miss: CacheMiss

    def finish(self, body: Optional[dict], raw: Optional[str] = None) -> None:
        if body is not None:
            self.cache.write_back(self.plan, body, self.miss, raw)
        self.cache.finish(self.plan, body)


@dataclass
class _StreamTap:
    """A streamed answer being folded into the body to store. `strip_usage`: the usage chunk was asked
    for the entry only (the client did not ask for it) and is not relayed."""

    collector: StreamCollector
    strip_usage: bool
    write_back: WriteBack


def _relay_cleanup(stream: DeploymentResponseGenerator, slot: Slot, tap: Optional[_StreamTap]) -> Callable[[], None]:
    """What a relayed stream holds, let go once (the first call; later ones do nothing): the replica's
    stream cancelled (a no-op when it finished; aborts the engine request when the client left), the
    admission slot released, the write-back finished (stored only if the stream ended cleanly)."""
    done = False

    def cleanup() -> None:
        nonlocal done
        if done:
            return
        done = True
        stream.cancel()
        slot.release()
        if tap is not None:
            tap.write_back.finish(tap.collector.result())
    return cleanup


class _RelayBody:
    """A relay generator as a response body whose `aclose()` always lets go of what the relay holds.

    Why: Starlette cancels a streaming response whose client left before its body started (it listens
    for the disconnect beside the send loop), and an async generator that never started runs no
    `finally` when closed: the admission slot would leak, one per such client, until the gate refused
    everything. SSEResponse closes its body iterator when the response ends, however it ends."""

    def __init__(self, relay: AsyncGenerator[str, None], cleanup: Callable[[], None]):
        self._relay = relay
        self._cleanup = cleanup

    def __aiter__(self) -> "_RelayBody":
        return self

    def __anext__(self):
        return self._relay.__anext__()

    async def aclose(self) -> None:
        try:
            await self._relay.aclose()
        finally:
            self._cleanup()


class LocalStream:
    """An in-process LLMServer.generate() with the two calls the model-call path makes on a handle's
    stream: `__anext__` and `cancel()` (closes the generator, which aborts the engine request when it
    has not finished; a no-op once it has)."""

    def __init__(self, agen: AsyncGenerator):
        self._agen = agen
        self._closing: Optional[asyncio.Task] = None

    def __anext__(self):
        return self._agen.__anext__()

    def cancel(self) -> None:
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._close())

    async def _close(self) -> None:
        try:
            await self._agen.aclose()
        except Exception as e:  # noqa: BLE001 - closing must not raise into a finished response
            logger.warning("closing a local generation: %r", e)


def _sse_error(status: int, message: str) -> str:
    return f"data: {error_body(status, message).model_dump_json()}\n\ndata: [DONE]\n\n"


class ModelCaller:
    """Calls the LLM deployments for the ingress; one per ingress replica."""

    def __init__(self, models: dict[str, ModelConfig], streams: dict[str, DeploymentHandle],
                 gates: dict[str, AdmissionGate], limits: TenantRateLimiter, log_payloads: bool = False,
                 local: Optional[dict[str, LLMServer]] = None):
        """`local`: models whose engine runs in this process (ingress.colocate), called without a handle."""
        self._models = models
        self._streams = streams
        self._local = local or {}
        self._gates = gates
        self._limits = limits
        self._log_payloads = log_payloads

    async def call(self, ctx: RequestContext, write_back: Optional[WriteBack] = None) -> Response:
        """Send the request to its model once its tenant's token budget allows it and admission control
        gives it a slot (held until its response has ended); with `write_back`, store the finished
        answer. Cache hits never get here: they cost no tokens."""
        await self._limits.charge_tokens(ctx.tenant, ctx.view.estimated_tokens())
        slot = await self._gates[ctx.view.model].admit(ctx.controls.priority, ctx.controls.monotonic_deadline())
        try:
            return await self._call(ctx, slot, write_back)
        except BaseException:
            slot.release()
            raise

    async def _call(self, ctx: RequestContext, slot: Slot, write_back: Optional[WriteBack]) -> Response:
        request = ctx.view.request
        strip_usage = False
        if write_back is not None and ctx.view.stream and not ctx.view.include_usage:
            # Ask for usage so the stored entry has it; the client does not get it (it did not ask).
            options = request.stream_options or StreamOptions()
            request = request.model_copy(update={"stream_options": options.model_copy(update={"include_usage": True})})
            strip_usage = True
        stream, head, retries = await self._first_reply(ctx, request)
        headers = dict(ctx.headers)
        if retries:
            headers[RETRIES_HEADER] = str(retries)
        if head.replica:
            headers[REPLICA_HEADER] = head.replica
        if head.status == 503:  # the replica dropped it (deadline passed in Serve's queues): retryable
            headers["Retry-After"] = str(int(RETRY_AFTER_S))
        offered_tools = bool(getattr(request, "tools", None))  # see cache/responses.py storable
        if not head.streaming:
            slot.release()
            if self._log_payloads:
                logger.info("response %s status=%d body=%s", ctx.request_id, head.status, head.body)
            if write_back is not None:
                body = json.loads(head.body) if head.status == 200 else None
                write_back.finish(body if body is not None and storable(body, tools=offered_tools) else None,
                                  head.body)
            return Response(head.body, status_code=head.status, media_type="application/json", headers=headers)
        tap = None
        if write_back is not None:
            forced = getattr(request, "tool_choice", None) not in (None, "none", "auto")
            tap = _StreamTap(StreamCollector(ctx.view.kind, forced_tools=forced,
                                             tools=offered_tools), strip_usage, write_back)
        cleanup = _relay_cleanup(stream, slot, tap)
        return SSEResponse(_RelayBody(self._relay(head.body, stream, cleanup, tap), cleanup), headers=headers)

    async def _first_reply(self, ctx: RequestContext, request) -> tuple["DeploymentResponseGenerator | LocalStream", Reply, int]:
        """Call the model and wait for its head. Until the head arrives nothing has been sent to the
        client, so a replica that dies (or cannot be reached) before then is retried on another one:
        Serve's router drops a replica whose actor died. Capacity refusals are not retried."""
        model = ctx.view.model
        local = self._local.get(model)
        handle = self._streams.get(model)
        if handle is not None and ctx.controls.session_id:
            # Serve's request metadata, where the router reads it (router/request_router.py).
            handle = handle.options(session_id=ctx.controls.session_id)
        cfg = self._models[model]
        retries = cfg.retries
        deadline = ctx.controls.deadline
        # How long the head may take: until the request's deadline; a stream's first chunk at most
        # ttft_timeout_s in any case. A whole answer without a deadline is bounded by the engine
        # watchdog (a frozen engine is killed) and by the check for a deployment with no replica.
        limit = time.monotonic() + cfg.ttft_timeout_s if ctx.view.stream else None
        if deadline is not None:
            by_deadline = time.monotonic() + (deadline - time.time())
            limit = by_deadline if limit is None else min(limit, by_deadline)
        if local is not None:
            retries = 0  # one engine here: a retry would meet the same one
        for attempt in range(retries + 1):
            if local is not None:
                stream = LocalStream(local.generate(ctx.view.kind, request, ctx.request_id, deadline=deadline))
            else:
                self._check_replicas(model)
                stream = handle.generate.remote(ctx.view.kind, request, ctx.request_id, deadline=deadline)
            try:
                if limit is None:
                    return stream, await stream.__anext__(), attempt
                return stream, await asyncio.wait_for(stream.__anext__(), max(0.0, limit - time.monotonic())), attempt
            except BaseException as e:
                stream.cancel()  # aborts the request at the engine if it got there
                if isinstance(e, asyncio.CancelledError):
                    raise
                if isinstance(e, asyncio.TimeoutError):
                    serving_metrics.DEADLINE_DROPS.inc(tags={"model": model, "stage": "first_byte"})
                    raise APIError(504, f"Model `{model}` did not start answering within the request's "
                                        f"{'deadline' if deadline is not None else 'time-to-first-token limit'}; "
                                        "the request was aborted.", retry_after_s=RETRY_AFTER_S) from None
                if isinstance(e, EngineUnavailable) and getattr(e, "replica", None):
                    # Its retries (and the next requests) must not go back to it before its routing
                    # stats say the same (router/request_router.py mark_unavailable).
                    router = registry.find(llm_deployment_name(model))
                    if router is not None:
                        router.mark_unavailable(e.replica)
                retryable = not isinstance(e, (BackPressureError, DeploymentUnavailableError, RequestCancelledError))
                expired = deadline is not None and time.time() >= deadline
                if not retryable or attempt == retries or expired:
                    raise self._unavailable(model, e) from None
                logger.warning("request %s (client id %s): replica failed before answering (%r); retrying",
                               ctx.request_id, ctx.client_request_id, e)
                serving_metrics.RETRIES.inc(tags={"model": model, "error": type(e).__name__})
                await asyncio.sleep(_RETRY_BACKOFF_S * (attempt + 1))
        raise AssertionError("unreachable")

    async def _relay(self, first: str, stream: DeploymentResponseGenerator, cleanup: Callable[[], None],
                     tap: Optional[_StreamTap] = None) -> AsyncGenerator[str, None]:
        """Relay SSE chunks; a replica lost mid-stream ends the stream with an SSE error event.

        With a `tap`, the chunks are also folded into a response body that is cached once the
        stream has ended cleanly (never when it was cancelled or failed)."""
        try:
            chunk = first
            while True:
                if tap is not None:
                    chunk = tap.collector.feed(chunk, strip_usage=tap.strip_usage)
                if chunk:
                    yield chunk
                chunk = await stream.__anext__()
        except StopAsyncIteration:
            pass
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as e:
            logger.warning("stream interrupted: %r", e)
            yield _sse_error(503, f"The stream was interrupted: {type(e).__name__}. Retry the request.")
        finally:
            cleanup()

    def _check_replicas(self, model: str) -> None:
        """503 + Retry-After at once when this process's router knows the model has no running
        replica (its only one died; the replacement is starting): Serve would hold the request until
        one is ready (~31 s measured with the only replica SIGKILLed)."""
        router = registry.find(llm_deployment_name(model))
        if router is not None and router.replicas_known and not router.curr_replicas:
            raise APIError(503, f"Model `{model}` has no running replica; one is starting. Retry later.",
                           retry_after_s=RETRY_AFTER_S)

    def _unavailable(self, model: str, e: BaseException) -> APIError:
        if isinstance(e, BackPressureError):
            return APIError(503, f"Model `{model}` is at capacity; retry later.", retry_after_s=RETRY_AFTER_S)
        if isinstance(e, (DeploymentUnavailableError, RequestCancelledError)):
            return APIError(503, f"Model `{model}` is unavailable; retry later.", retry_after_s=RETRY_AFTER_S)
        logger.error("LLM deployment %s failed before responding: %r", model, e)
        return APIError(503, f"Model `{model}` failed to respond ({type(e).__name__}); retry later.",
                        retry_after_s=RETRY_AFTER_S)
