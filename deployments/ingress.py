"""The HTTP ingress: OpenAI-compatible endpoints in front of the LLM deployments.

The ingress owns everything about HTTP -- body limits, JSON, unknown fields, model lookup, status
codes, SSE framing -- and answers those mistakes itself. It forwards the decoded body through a
streaming DeploymentHandle; the LLM replica validates it into vLLM's request model (once) and
answers with a head first (status and body, or the first SSE chunk), then SSE chunks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import AsyncGenerator, Iterable, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RequestCancelledError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response, StreamingResponse

from cache.client import CacheHit, CacheMiss, IngressCache
from cache.config import parse_request_options
from cache.keys import CachePlan, plan as cache_plan
from cache.responses import StreamCollector, as_response, as_sse, storable
from cache.store import resolve_redis_url
from deployments import openapi_spec, serving_metrics
from deployments.admission import PRIORITIES, AdmissionGate, Slot
from deployments.auth import Authenticator
from deployments.config import AppConfig, ModelConfig, llm_deployment_name
from common.errors import APIError, api_error_response, error_body, error_response
from deployments.llm_server import Reply
from deployments.rate_limits import TenantRateLimiter
from deployments.request_controls import RequestControls, parse_controls
from deployments.request_parsing import CHAT, COMPLETION, check_request, parse_json_object
from deployments.tenants import Tenant, apply_caps, estimated_tokens
from router import registry

logger = logging.getLogger("ray.serve")

app = FastAPI(
    title="raygate",
    description="OpenAI-compatible LLM serving on Ray Serve and vLLM.",
    version="0.1.0",
)
openapi_spec.install(app)

# Retry hint for 503s caused by missing capacity (no replica yet, or all queues full).
_RETRY_AFTER_S = 1.0
# Pause before calling the model again after a replica failed before answering.
_RETRY_BACKOFF_S = 0.2
CACHE_HEADER = "x-raygate-cache"
SIMILARITY_HEADER = "x-raygate-cache-similarity"
REPLICA_HEADER = "x-raygate-replica"
INGRESS_HEADER = "x-raygate-ingress"
RETRIES_HEADER = "x-raygate-retries"  # set when a failed replica's request was sent again
_ingress_id: Optional[str] = None


def _ingress_headers() -> dict[str, str]:
    """Which ingress replica answered: every response says so (operators tracing a request)."""
    global _ingress_id
    if _ingress_id is None:
        try:
            _ingress_id = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 - outside a replica (unit tests)
            _ingress_id = "local"
    return {INGRESS_HEADER: _ingress_id}


@app.exception_handler(APIError)
async def _api_error(_: Request, e: APIError) -> JSONResponse:
    headers = _ingress_headers()
    if e.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if e.status in (401, 403):
        serving_metrics.AUTH_FAILURES.inc(tags={"status": str(e.status)})
    return api_error_response(e, headers)


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
    return error_response(400, f"Invalid request: {e.errors()[0].get('msg')}")


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
    return error_response(e.status_code, str(e.detail), headers=getattr(e, "headers", None))


@app.exception_handler(Exception)
async def _unexpected(_: Request, e: Exception) -> JSONResponse:
    logger.exception("unhandled error in the ingress")
    return error_response(500, "The server had an internal error; the request was not completed.")


def _count_rejection(model: str, reason: str) -> None:
    serving_metrics.REJECTIONS.inc(tags={"model": model, "reason": reason})
    if reason == "deadline":
        serving_metrics.DEADLINE_DROPS.inc(tags={"model": model, "stage": "ingress"})


def _sse_error(status: int, message: str) -> str:
    return f"data: {error_body(status, message).model_dump_json()}\n\ndata: [DONE]\n\n"


def _describe(e: BaseException) -> str:
    """Why a model is unavailable, never empty: a timed-out health check has no message of its own,
    and a replica's exception arrives wrapped (RayTaskError) around the replica's own reason."""
    if isinstance(e, (asyncio.TimeoutError, TimeoutError)):
        return "no replica answered the health check within 5 s (starting, overloaded or frozen)"
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        e = cause
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1]}" if text else type(e).__name__


def _label(miss: CacheMiss) -> str:
    return "bypass" if miss.bypass else "miss"


async def _iterate(items: Iterable[str]) -> AsyncGenerator[str, None]:
    for item in items:
        yield item


async def _read_body(request: Request, limit: int) -> bytes:
    """Read the body, refusing with 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"Request body of {declared} bytes exceeds the limit of {limit} bytes.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"Request body exceeds the limit of {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=1024)
@serve.ingress(app)
class Ingress:
    def __init__(self, config: AppConfig, llm_handles: dict[str, DeploymentHandle],
                 cache_handle: Optional[DeploymentHandle] = None, redis_handle: Optional[DeploymentHandle] = None):
        self._config = config
        self._models: dict[str, ModelConfig] = {m.name: m for m in config.models}
        self._default_model = config.models[0].name
        by_ref = not config.ingress.grpc_handles
        self._streams = {name: h.options(stream=True, _by_reference=by_ref) for name, h in llm_handles.items()}
        self._calls = {name: h.options(stream=False) for name, h in llm_handles.items()}
        self._cards: dict[str, dict] = {}
        if cache_handle is not None:
            cache_handle = cache_handle.options(_by_reference=by_ref)  # gRPC: 1.6x the embed calls/s
        self._cache = IngressCache(config.cache, cache_handle, redis_handle) if cache_handle is not None else None
        self._gates = {m.name: AdmissionGate(m.name, m.admission, replicas=lambda m=m: self._replica_count(m),
                                             on_reject=_count_rejection)
                       for m in config.models}
        self._gauges_task: Optional[asyncio.Task] = None
        self._auth = Authenticator(config.auth)
        self._limits = TenantRateLimiter(self._rate_limit_redis if (config.cache.enabled or config.cache.redis_url)
                                         else None, key_prefix=f"raygate:{config.cache.namespace}:limits",
                                         timeout_s=config.cache.redis_timeout_s)
        self._redis_handle = redis_handle

    async def _rate_limit_redis(self) -> Optional[str]:
        """The Redis that every ingress replica counts rate limits in: the cache's."""
        return await resolve_redis_url(self._config.cache, self._redis_handle)

    # ---- OpenAI endpoints -------------------------------------------------------------------

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._serve(CHAT, request)

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._serve(COMPLETION, request)

    @app.get("/v1/models")
    async def list_models(self, request: Request) -> JSONResponse:
        self._auth.tenant(request.headers)
        cards = await asyncio.gather(*(self._model_card(name) for name in self._models))
        return JSONResponse({"object": "list", "data": list(cards)})

    @app.get("/v1/models/{model_id:path}")
    async def get_model(self, model_id: str, request: Request) -> JSONResponse:
        self._auth.tenant(request.headers)
        if model_id not in self._models:
            raise APIError(404, f"The model `{model_id}` does not exist.", param="model")
        return JSONResponse(await self._model_card(model_id))

    @app.get("/health")
    async def health(self) -> JSONResponse:
        """200 when every model has a healthy replica that answers within 5 s, else 503."""
        results = await asyncio.gather(
            *(self._model_health(name) for name in self._models), return_exceptions=True
        )
        status = {name: ("ok" if r is None else f"unavailable: {_describe(r)}") for name, r in zip(self._models, results)}
        ok = all(r is None for r in results)
        return JSONResponse({"status": "ok" if ok else "unavailable", "models": status}, status_code=200 if ok else 503)

    # ---- request path -----------------------------------------------------------------------

    async def _serve(self, kind: str, request: Request) -> Response:
        started = time.perf_counter()
        response = await self._serve_request(kind, request)
        response.headers.update(_ingress_headers())
        cache_result = response.headers.get(CACHE_HEADER, "")
        source = "cache" if cache_result.startswith("hit") or cache_result == "coalesced" else "model"
        serving_metrics.observe_latency(response, getattr(request.state, "model", ""), source, started)
        return response

    async def _serve_request(self, kind: str, request: Request) -> Response:
        tenant = self._auth.tenant(request.headers)
        await self._limits.check_request(tenant)
        controls = parse_controls(request.headers)
        if self._gauges_task is None:
            self._gauges_task = asyncio.get_running_loop().create_task(self._publish_gauges())
        payload = parse_json_object(await _read_body(request, self._config.ingress.max_body_bytes))
        model = payload.get("model")
        if model is None:
            payload["model"] = model = self._default_model
        if not isinstance(model, str):
            raise APIError(400, "Invalid value for 'model': expected a string.", param="model")
        if model not in self._streams:
            raise APIError(404, f"The model `{model}` does not exist.", param="model")
        request.state.model = model  # for the latency series
        check_request(kind, payload)
        apply_caps(kind, payload, tenant)
        options = parse_request_options(payload.pop("cache", None))
        if self._config.ingress.log_payloads:
            logger.info("request %s tenant=%s model=%s body=%s", request.headers.get("x-request-id"), tenant.name,
                        model, json.dumps(payload, ensure_ascii=False))
        # Serve's RequestIdMiddleware puts the client's x-request-id (or a fresh one) in the request
        # headers and echoes it on the response; the engine request uses the same id.
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        if self._cache is None:
            return await self._generate(kind, model, payload, request_id, controls, tenant)

        plan = cache_plan(kind, payload, options, self._config.cache, tenant.cache_scope)
        if not (plan.read or plan.write):
            return await self._generate(kind, model, payload, request_id, controls, tenant, headers={CACHE_HEADER: "off"})
        miss = CacheMiss()
        if plan.read:
            found = await self._cache.lookup(plan)
            if isinstance(found, CacheHit):
                return self._cached(kind, payload, found)
            miss = found
        if not plan.write:
            return await self._generate(kind, model, payload, request_id, controls, tenant,
                                        headers={CACHE_HEADER: _label(miss)})
        leader = self._cache.lead_or_follow(plan)
        if leader is not None:
            hit = await self._cache.follow(leader, timeout_s=300.0)
            if hit is not None:
                return self._cached(kind, payload, hit)
            return await self._generate(kind, model, payload, request_id, controls, tenant,
                                        headers={CACHE_HEADER: _label(miss)})
        try:
            return await self._generate(kind, model, payload, request_id, controls, tenant,
                                        headers={CACHE_HEADER: _label(miss)}, capture=(plan, miss))
        except BaseException:
            self._cache.finish(plan, None)
            raise

    def _cached(self, kind: str, payload: dict, hit: CacheHit) -> Response:
        headers = {CACHE_HEADER: "coalesced" if hit.kind == "coalesced" else f"hit-{hit.kind}"}
        if hit.kind == "semantic":
            headers[SIMILARITY_HEADER] = f"{hit.similarity:.4f}"
        if payload.get("stream"):
            usage = bool((payload.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(_iterate(as_sse(kind, hit.body, usage)), media_type="text/event-stream",
                                     headers=headers)
        return JSONResponse(as_response(kind, hit.body), headers=headers)

    async def _generate(self, kind: str, model: str, payload: dict, request_id: str, controls: RequestControls,
                        tenant: Tenant, headers: Optional[dict[str, str]] = None,
                        capture: Optional[tuple[CachePlan, CacheMiss]] = None) -> Response:
        """Send the request to the model once its tenant's token budget allows it and admission control
        gives it a slot (which it holds until its response has ended); with `capture`, store the
        finished answer in the cache. Cache hits never get here: they cost no tokens."""
        await self._limits.charge_tokens(tenant, estimated_tokens(kind, payload))
        slot = await self._gates[model].admit(controls.priority, controls.monotonic_deadline())
        try:
            return await self._call_model(kind, model, payload, request_id, controls, slot, headers, capture)
        except BaseException:
            slot.release()
            raise

    async def _call_model(self, kind: str, model: str, payload: dict, request_id: str, controls: RequestControls,
                          slot: Slot, headers: Optional[dict[str, str]],
                          capture: Optional[tuple[CachePlan, CacheMiss]]) -> Response:
        strip_usage = False
        if capture is not None and payload.get("stream"):
            # Ask for usage so the stored entry has it; the client gets it only if it asked.
            stream_options = dict(payload.get("stream_options") or {})
            strip_usage = not stream_options.get("include_usage")
            payload["stream_options"] = {**stream_options, "include_usage": True}
        stream, head, retries = await self._first_reply(kind, model, payload, request_id, controls)
        headers = dict(headers or {})
        if retries:
            headers[RETRIES_HEADER] = str(retries)
        if head.replica:
            headers[REPLICA_HEADER] = head.replica
        if head.status == 503:  # the replica dropped it (deadline passed in Serve's queues): retryable
            headers["Retry-After"] = str(int(_RETRY_AFTER_S))
        if not head.streaming:
            slot.release()
            if self._config.ingress.log_payloads:
                logger.info("response %s status=%d body=%s", request_id, head.status, head.body)
            if capture is not None:
                body = json.loads(head.body) if head.status == 200 else None
                self._store(capture, body if body is not None and storable(body) else None, head.body)
            return Response(head.body, status_code=head.status, media_type="application/json", headers=headers)
        tap = None
        if capture is not None:
            tap = (StreamCollector(kind), strip_usage, capture)
        return StreamingResponse(self._relay(head.body, stream, slot, tap), media_type="text/event-stream",
                                 headers=headers)

    async def _first_reply(self, kind: str, model: str, payload: dict, request_id: str,
                           controls: RequestControls) -> tuple[DeploymentResponseGenerator, Reply, int]:
        """Call the model and wait for its head. Until the head arrives nothing has been sent to the
        client, so a replica that dies (or cannot be reached) before then is retried on another one:
        Serve's router drops a replica whose actor died. Capacity refusals are not retried."""
        retries = self._models[model].retries
        for attempt in range(retries + 1):
            stream: DeploymentResponseGenerator = self._streams[model].generate.remote(
                kind, payload, request_id, session_id=controls.session_id, deadline=controls.deadline)
            try:
                return stream, await stream.__anext__(), attempt
            except BaseException as e:
                stream.cancel()
                if isinstance(e, asyncio.CancelledError):
                    raise
                retryable = not isinstance(e, (BackPressureError, DeploymentUnavailableError, RequestCancelledError))
                expired = controls.deadline is not None and time.time() >= controls.deadline
                if not retryable or attempt == retries or expired:
                    raise self._unavailable(model, e) from None
                logger.warning("request %s: replica failed before answering (%r); retrying", request_id, e)
                serving_metrics.RETRIES.inc(tags={"model": model, "error": type(e).__name__})
                await asyncio.sleep(_RETRY_BACKOFF_S * (attempt + 1))
        raise AssertionError("unreachable")

    def _store(self, capture: tuple[CachePlan, CacheMiss], body: Optional[dict], raw: Optional[str] = None) -> None:
        plan, miss = capture
        if body is not None:
            self._cache.write_back(plan, body, miss, raw)
        self._cache.finish(plan, body)

    async def _relay(self, first: str, stream: DeploymentResponseGenerator, slot: Slot,
                     tap: Optional[tuple[StreamCollector, bool, tuple[CachePlan, CacheMiss]]] = None,
                     ) -> AsyncGenerator[str, None]:
        """Relay SSE chunks; a replica lost mid-stream ends the stream with an SSE error event.

        With a `tap`, the chunks are also folded into a response body that is cached once the
        stream has ended cleanly (never when it was cancelled or failed)."""
        try:
            chunk = first
            while True:
                if tap is not None:
                    chunk = tap[0].feed(chunk, strip_usage=tap[1])
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
            stream.cancel()  # no-op when finished; aborts the engine request when the client left
            slot.release()
            if tap is not None:
                self._store(tap[2], tap[0].result())

    def _unavailable(self, model: str, e: BaseException) -> APIError:
        if isinstance(e, BackPressureError):
            return APIError(503, f"Model `{model}` is at capacity; retry later.", retry_after_s=_RETRY_AFTER_S)
        if isinstance(e, (DeploymentUnavailableError, RequestCancelledError)):
            return APIError(503, f"Model `{model}` is unavailable; retry later.", retry_after_s=_RETRY_AFTER_S)
        logger.error("LLM deployment %s failed before responding: %r", model, e)
        return APIError(503, f"Model `{model}` failed to respond ({type(e).__name__}); retry later.",
                        retry_after_s=_RETRY_AFTER_S)

    async def _model_card(self, name: str) -> dict:
        card = self._cards.get(name)
        if card is not None:
            return card
        try:
            card = await asyncio.wait_for(self._calls[name].model_card.remote(), timeout=5)
            self._cards[name] = card
            return card
        except Exception:  # no replica up yet: answer from config, ask again next time
            cfg = self._models[name]
            return {
                "id": name,
                "object": "model",
                "owned_by": "raygate",
                "root": cfg.model,
                "parent": None,
                "max_model_len": cfg.engine_args.max_model_len,
                "permission": [],
            }

    # ---- cache administration ----------------------------------------------------------------

    @app.get("/admin/cache/stats")
    async def cache_stats(self, request: Request) -> JSONResponse:
        self._auth.require_admin(request.headers)
        if self._cache is None:
            raise APIError(404, "The cache is disabled in this deployment.")
        return JSONResponse(await self._cache.stats())

    @app.post("/admin/cache/flush")
    async def cache_flush(self, request: Request) -> JSONResponse:
        """Delete every entry of this app's namespace, in Redis and in every replica's index."""
        self._auth.require_admin(request.headers)
        if self._cache is None:
            raise APIError(404, "The cache is disabled in this deployment.")
        return JSONResponse({"namespace": self._config.cache.namespace, "removed_keys": await self._cache.flush()})

    # ---- routing and admission --------------------------------------------------------------

    def _router(self, model: str):
        return registry.find(llm_deployment_name(model))

    def _replica_count(self, cfg: ModelConfig) -> int:
        """Live replicas as this process's router sees them (no remote call); before the router has
        heard from the controller, the configured count."""
        router = self._router(cfg.name)
        if router is not None and router.curr_replicas:
            return len(router.curr_replicas)
        n = cfg.deployment.num_replicas
        return n if isinstance(n, int) else 1

    async def _publish_gauges(self) -> None:
        while True:
            for name, gate in self._gates.items():
                for priority, n in gate.queued().items():
                    serving_metrics.QUEUED.set(n, tags={"model": name, "priority": priority})
                serving_metrics.INFLIGHT.set(gate.inflight, tags={"model": name})
            await asyncio.sleep(1.0)

    @app.get("/admin/models")
    async def admin_models(self, request: Request, engines: bool = True) -> JSONResponse:
        """Per model: admission state in this ingress replica, and (unless `engines=false`) each
        replica's engine counters."""
        self._auth.require_admin(request.headers)
        out = {}
        for name, gate in self._gates.items():
            router = self._router(name)
            counted = router.queue_lens() if router is not None else {}
            ids = router.replica_ids() if router is not None and engines else []
            # One call at a time: handle calls made while serving one HTTP request share Serve's
            # internal request id, and concurrent ones to one deployment would be matched to each
            # other's replicas.
            stats = []
            for rid in ids:
                try:
                    stats.append(await asyncio.wait_for(self._calls[name].engine_stats.remote(replica=rid), timeout=5))
                except Exception as e:  # noqa: BLE001 - reported per replica
                    stats.append(e)
            out[name] = {
                "admission": {"capacity": gate.capacity, "inflight": gate.inflight, "queued": gate.queued(),
                              "priorities": list(PRIORITIES)},
                # Read before the engine calls below are counted: requests in flight per replica as
                # this process's router counts them (None: not known or stale), the load it routes on.
                "router_queue_lens": counted,
                "replicas": [s if isinstance(s, dict) else {"replica": rid, "error": repr(s)}
                             for rid, s in zip(ids, stats)],
            }
        return JSONResponse({"models": out})

    async def _model_health(self, name: str) -> Optional[str]:
        await asyncio.wait_for(self._calls[name].check_health.remote(), timeout=5)
        return None
