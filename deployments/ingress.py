"""The HTTP ingress: OpenAI-compatible endpoints in front of the LLM deployments.

The ingress owns everything about HTTP -- CORS, Content-Type, body limits, JSON, model lookup,
status codes, SSE framing -- and answers those mistakes itself. It decodes each request once
(deployments/request_view.py: vLLM's request model, the tenant's caps applied), answers it from the
cache when it can, framed as the request asks, and otherwise hands it to the model-call path
(deployments/model_call.py), which sends the validated request object to an LLM replica.
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
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response

from cache.client import CacheHit, CacheMiss, IngressCache
from cache.keys import plan as cache_plan
from cache.responses import as_response, as_sse
from cache.store import resolve_redis_url
from common.errors import APIError, api_error_response, error_response
from deployments import openapi_spec, serving_metrics
from deployments.admission import PRIORITIES, AdmissionGate
from deployments.auth import Authenticator
from deployments.config import AppConfig, CorsConfig, ModelConfig, llm_deployment_name
from deployments.llm_server import LLMServer
from deployments.model_call import ModelCaller, RequestContext, WriteBack
from deployments.rate_limits import TenantRateLimiter
from deployments.request_controls import parse_controls
from deployments.request_parsing import parse_json_object
from deployments.sse import SSEResponse
from deployments.request_view import RequestKind, RequestView, build_view
from router import registry

logger = logging.getLogger("ray.serve")

app = FastAPI(
    title="raygate",
    description="OpenAI-compatible LLM serving on Ray Serve and vLLM.",
    version="0.1.0",
)
openapi_spec.install(app)

CACHE_HEADER = "x-raygate-cache"
SIMILARITY_HEADER = "x-raygate-cache-similarity"
INGRESS_HEADER = "x-raygate-ingress"
# raygate's own id of a request that went to a model (the engine's ids derive from it: `chatcmpl-<id>`).
REQUEST_ID_HEADER = "x-raygate-request-id"
# Seconds a colocated engine is given to exit at shutdown before SIGKILL (Ingress.__del__).
COLOCATED_ENGINE_STOP_S = 0.1
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


async def _iterate(items: Iterable[str]) -> AsyncGenerator[str, None]:
    for item in items:
        yield item


def install_cors(asgi_app: FastAPI, cors: CorsConfig) -> None:
    """Answer browsers' preflights and add Access-Control-* headers for the configured origins
    (Starlette's CORSMiddleware); nothing when no origin is allowed (the default, see CorsConfig).
    Called before the app serves its first request (Starlette builds its middleware stack then)."""
    if not cors.allow_origins or getattr(asgi_app.state, "cors_installed", False):
        return
    asgi_app.add_middleware(CORSMiddleware, allow_origins=cors.allow_origins, allow_methods=cors.allow_methods,
                            allow_headers=cors.allow_headers, expose_headers=cors.expose_headers,
                            allow_credentials=cors.allow_credentials, max_age=cors.max_age_s)
    asgi_app.state.cors_installed = True


def _check_content_type(request: Request) -> None:
    """Generation bodies are JSON: `application/json` or a `+json` type (parameters such as charset
    allowed); a request without the header is read as JSON, as OpenAI's and FastAPI's servers do.
    Anything else -- `text/plain`, form encodings -- is refused with 415 before the body is read:
    those are the types a web page can make a browser send cross-site without a CORS preflight
    (GHSA-8h2j-cgx8-6xv7), so with auth off they would let any page spend this server's capacity."""
    raw = request.headers.get("content-type")
    if raw is None:
        return
    media = raw.split(";", 1)[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return
    raise APIError(415, f"Unsupported Content-Type {raw[:60]!r} in header 'Content-Type': the request body must be "
                        "JSON ('application/json').", param="Content-Type")


# Longest wait for the next part of a request body. A client that declares more bytes than it sends
# held its request open for as long as it kept the connection (HAProxy's client timeout is 3,600 s;
# a new user's report: no answer after 150 s). 30 s of silence mid-body is not a slow link.
BODY_IDLE_TIMEOUT_S = 30.0


async def _read_body(request: Request, limit: int, idle_timeout_s: float = BODY_IDLE_TIMEOUT_S) -> bytes:
    """Read the body, refusing with 413 as soon as it is known to exceed `limit` bytes, and with 408
    when no part of it arrives for `idle_timeout_s` seconds."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"Request body of {declared} bytes exceeds the limit of {limit} bytes.")
    chunks, size = [], 0
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout_at(loop.time() + idle_timeout_s) as deadline:
            async for chunk in request.stream():
                deadline.reschedule(loop.time() + idle_timeout_s)
                size += len(chunk)
                if size > limit:
                    raise APIError(413, f"Request body exceeds the limit of {limit} bytes.")
                chunks.append(chunk)
    except TimeoutError:
        raise APIError(408, f"The request body stopped arriving: no data for {idle_timeout_s:g} s after "
                            f"{size} bytes (Content-Length: {declared}).") from None
    return b"".join(chunks)


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=1024)
@serve.ingress(app)
class Ingress:
    async def __init__(self, config: AppConfig, llm_handles: dict[str, DeploymentHandle],
                       cache_handle: Optional[DeploymentHandle] = None, redis_handle: Optional[DeploymentHandle] = None):
        self._config = config
        # ingress.colocate: the first model's engine in this process (started here: blocks until loaded).
        self._local: dict[str, LLMServer] = {}
        colocated = config.colocated_model()
        if colocated is not None:
            self._local[colocated.name] = await LLMServer.in_process(colocated)
        self._models: dict[str, ModelConfig] = {m.name: m for m in config.models}
        self._default_model = config.models[0].name
        by_ref = not config.ingress.grpc_handles
        streams = {name: h.options(stream=True, _by_reference=by_ref) for name, h in llm_handles.items()}
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
        self._model_calls = ModelCaller(self._models, streams, self._gates, self._limits,
                                        log_payloads=config.ingress.log_payloads, local=self._local)
        install_cors(app, config.ingress.cors)

    async def _rate_limit_redis(self) -> Optional[str]:
        """The Redis that every ingress replica counts rate limits in: the cache's."""
        return await resolve_redis_url(self._config.cache, self._redis_handle)

    # ---- OpenAI endpoints -------------------------------------------------------------------

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._serve(RequestKind.CHAT, request)

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._serve(RequestKind.COMPLETION, request)

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

    async def _serve(self, kind: RequestKind, request: Request) -> Response:
        started = time.perf_counter()
        response = await self._serve_request(kind, request)
        response.headers.update(_ingress_headers())
        cache_result = response.headers.get(CACHE_HEADER, "")
        source = "cache" if cache_result.startswith("hit") or cache_result == "coalesced" else "model"
        serving_metrics.observe_latency(response, getattr(request.state, "model", ""), source, started)
        return response

    def _view(self, kind: RequestKind, request: Request, payload: dict, tenant) -> RequestView:
        try:
            return build_view(kind, payload, tenant, self._default_model, self._models)
        finally:
            # For the latency series, errors included: build_view fills in the default model for an
            # omitted or null one before any check, so the label is the model that serves it.
            model = payload.get("model")
            if isinstance(model, str) and model in self._models:
                request.state.model = model

    async def _serve_request(self, kind: RequestKind, request: Request) -> Response:
        tenant = self._auth.tenant(request.headers)
        await self._limits.check_request(tenant)
        controls = parse_controls(request.headers)
        _check_content_type(request)
        if self._gauges_task is None:
            self._gauges_task = asyncio.get_running_loop().create_task(self._publish_gauges())
        payload = parse_json_object(await _read_body(request, self._config.ingress.max_body_bytes))
        view = self._view(kind, request, payload, tenant)
        # The engine's request id is always raygate's own: a client's x-request-id need not be unique
        # (two clients sending one id would abort each other's generations). Serve echoes the client's
        # id on the response; the logs carry both.
        client_id = request.headers.get("x-request-id")
        ctx = RequestContext(view, uuid.uuid4().hex, controls, tenant, client_request_id=client_id)
        ctx.headers[REQUEST_ID_HEADER] = ctx.request_id
        if self._config.ingress.log_payloads:
            logger.info("request %s client-id=%s tenant=%s model=%s body=%s", ctx.request_id, client_id, tenant.name,
                        view.model, json.dumps(payload, ensure_ascii=False))
        if self._cache is None:
            return await self._model_calls.call(ctx)

        plan = cache_plan(view.kind, view.request, view.cache, self._config.cache, tenant.cache_scope)
        if not (plan.read or plan.write):
            ctx.headers[CACHE_HEADER] = "off"
            self._cache.skip()  # counted as the lookup result `off`
            return await self._model_calls.call(ctx)
        miss = CacheMiss()
        if plan.read:
            found = await self._cache.lookup(plan)
            if isinstance(found, CacheHit):
                return self._cached(view, found)
            miss = found
        ctx.headers[CACHE_HEADER] = "bypass" if miss.bypass else "miss"
        if not plan.write:
            return await self._model_calls.call(ctx)
        leader = self._cache.lead_or_follow(plan)
        if leader is not None:
            hit = await self._cache.follow(leader, timeout_s=300.0)
            if hit is not None:
                return self._cached(view, hit)
            return await self._model_calls.call(ctx)
        write_back = WriteBack(self._cache, plan, miss)
        try:
            return await self._model_calls.call(ctx, write_back)
        except BaseException:
            write_back.finish(None)
            raise

    def _cached(self, view: RequestView, hit: CacheHit) -> Response:
        """A cached answer, framed as this request asks (JSON or SSE, usage chunk or not), whatever the
        request that stored it asked."""
        headers = {CACHE_HEADER: "coalesced" if hit.kind == "coalesced" else f"hit-{hit.kind}"}
        if hit.kind == "semantic":
            headers[SIMILARITY_HEADER] = f"{hit.similarity:.4f}"
        if view.stream:
            return SSEResponse(_iterate(as_sse(view.kind, hit.body, view.include_usage)), headers=headers)
        return JSONResponse(as_response(view.kind, hit.body), headers=headers)

    async def _model_card(self, name: str) -> dict:
        card = self._cards.get(name)
        if card is not None:
            return card
        try:
            local = self._local.get(name)
            card = await (local.model_card() if local is not None
                          else asyncio.wait_for(self._calls[name].model_card.remote(), timeout=5))
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
        if cfg.name in self._local:
            return 1  # its engine is this replica's own
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
            if name in self._local:  # colocated: this replica's own engine is the model's replica here
                counted, ids = {}, ([self._local[name].engine_stats()["replica"]] if engines else [])
            # One call at a time: handle calls made while serving one HTTP request share Serve's
            # internal request id, and concurrent ones to one deployment would be matched to each
            # other's replicas.
            stats = []
            for rid in ids:
                try:
                    if name in self._local:
                        stats.append(self._local[name].engine_stats())
                        continue
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
        local = self._local.get(name)
        if local is not None:
            await asyncio.wait_for(local.check_health(), timeout=5)
            return None
        await asyncio.wait_for(self._calls[name].check_health.remote(), timeout=5)
        return None

    async def check_health(self) -> None:
        """Serve's health check of this replica: with a colocated engine, that engine's (a stalled one
        gets the replica replaced, as an LLM replica would be)."""
        for local in self._local.values():
            await local.check_health()

    def record_routing_stats(self) -> dict:
        """Serve pushes this to the ingress deployment's router (deployments/ingress_router.py): with a
        colocated engine that stalled, this replica is skipped until it is replaced."""
        for local in self._local.values():
            return local.record_routing_stats()
        return {}

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's autoscaler calls this on every replica: with a colocated engine, that engine's running
        and waiting counts, which deployments/autoscaling.py's queue-length policy reads (the ingress
        deployment is then sized by the model's autoscaling_config, deployments/app.py)."""
        for local in self._local.values():
            return local.record_autoscaling_stats()
        return {}

    def __del__(self):
        # Serve stops the ingress before the deployments it calls (the cache), and calls this only once
        # its requests in flight have drained: an idle engine has nothing to finish, and its stop is on
        # the app's shutdown path (Ctrl-C on an idle app: 0.77 s for this replica at the engine's 0.5 s
        # default against 0.23 s without an engine), so it is given 0.1 s before SIGKILL.
        for local in getattr(self, "_local", {}).values():
            local.shutdown(timeout_s=COLOCATED_ENGINE_STOP_S)
