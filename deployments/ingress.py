"""The HTTP ingress: OpenAI-compatible endpoints in front of the LLM deployments.

The ingress owns everything about HTTP -- body limits, JSON, unknown fields, model lookup, status
codes, SSE framing -- and answers those mistakes itself. It forwards the decoded body through a
streaming DeploymentHandle; the LLM replica validates it into vLLM's request model (once) and
answers with a head first (status and body, or the first SSE chunk), then SSE chunks.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import AsyncGenerator, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RequestCancelledError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response, StreamingResponse

from deployments.config import AppConfig, ModelConfig
from deployments.errors import APIError, api_error_response, error_body, error_response
from deployments.llm_server import Reply
from deployments.request_parsing import CHAT, COMPLETION, check_request, parse_json_object

logger = logging.getLogger("ray.serve")

app = FastAPI(
    title="raygate",
    description="OpenAI-compatible LLM serving on Ray Serve and vLLM.",
    version="0.1.0",
)

# Retry hint for 503s caused by missing capacity (no replica yet, or all queues full).
_RETRY_AFTER_S = 1.0


@app.exception_handler(APIError)
async def _api_error(_: Request, e: APIError) -> JSONResponse:
    return api_error_response(e)


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


def _sse_error(status: int, message: str) -> str:
    return f"data: {error_body(status, message).model_dump_json()}\n\ndata: [DONE]\n\n"


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
    def __init__(self, config: AppConfig, llm_handles: dict[str, DeploymentHandle]):
        self._config = config
        self._models: dict[str, ModelConfig] = {m.name: m for m in config.models}
        self._default_model = config.models[0].name
        by_ref = not config.ingress.grpc_handles
        self._streams = {name: h.options(stream=True, _by_reference=by_ref) for name, h in llm_handles.items()}
        self._calls = {name: h.options(stream=False) for name, h in llm_handles.items()}
        self._cards: dict[str, dict] = {}

    # ---- OpenAI endpoints -------------------------------------------------------------------

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._serve(CHAT, request)

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._serve(COMPLETION, request)

    @app.get("/v1/models")
    async def list_models(self) -> JSONResponse:
        cards = await asyncio.gather(*(self._model_card(name) for name in self._models))
        return JSONResponse({"object": "list", "data": list(cards)})

    @app.get("/v1/models/{model_id:path}")
    async def get_model(self, model_id: str) -> JSONResponse:
        if model_id not in self._models:
            raise APIError(404, f"The model `{model_id}` does not exist.", param="model")
        return JSONResponse(await self._model_card(model_id))

    @app.get("/health")
    async def health(self) -> JSONResponse:
        """200 when every model has a healthy replica that answers within 5 s, else 503."""
        results = await asyncio.gather(
            *(self._model_health(name) for name in self._models), return_exceptions=True
        )
        status = {name: ("ok" if r is None else f"unavailable: {r}") for name, r in zip(self._models, results)}
        ok = all(r is None for r in results)
        return JSONResponse({"status": "ok" if ok else "unavailable", "models": status}, status_code=200 if ok else 503)

    # ---- request path -----------------------------------------------------------------------

    async def _serve(self, kind: str, request: Request) -> Response:
        payload = parse_json_object(await _read_body(request, self._config.ingress.max_body_bytes))
        model = payload.get("model")
        if model is None:
            payload["model"] = model = self._default_model
        if not isinstance(model, str):
            raise APIError(400, "Invalid value for 'model': expected a string.", param="model")
        if model not in self._streams:
            raise APIError(404, f"The model `{model}` does not exist.", param="model")
        check_request(kind, payload)
        # Serve's RequestIdMiddleware puts the client's x-request-id (or a fresh one) in the request
        # headers and echoes it on the response; the engine request uses the same id.
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex

        stream: DeploymentResponseGenerator = self._streams[model].generate.remote(kind, payload, request_id)
        try:
            head: Reply = await stream.__anext__()
        except BaseException as e:
            stream.cancel()
            if isinstance(e, asyncio.CancelledError):
                raise
            raise self._unavailable(model, e) from None
        if not head.streaming:
            return Response(head.body, status_code=head.status, media_type="application/json")
        return StreamingResponse(self._relay(head.body, stream), media_type="text/event-stream")

    async def _relay(self, first: str, stream: DeploymentResponseGenerator) -> AsyncGenerator[str, None]:
        """Relay SSE chunks; a replica lost mid-stream ends the stream with an SSE error event."""
        try:
            yield first
            async for chunk in stream:
                yield chunk
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as e:
            logger.warning("stream interrupted: %r", e)
            yield _sse_error(503, f"The stream was interrupted: {type(e).__name__}. Retry the request.")
        finally:
            stream.cancel()  # no-op when finished; aborts the engine request when the client left

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

    async def _model_health(self, name: str) -> Optional[str]:
        await asyncio.wait_for(self._calls[name].check_health.remote(), timeout=5)
        return None
