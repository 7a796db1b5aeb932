"""The ingress's OpenAPI document (`GET /openapi.json`): what each endpoint takes and every answer it gives.

Why by hand: the ingress reads request bodies as bytes (strict about unknown fields, and cheaper
than FastAPI's parsing), so FastAPI cannot see them. The document describes them with vLLM's own
protocol models, the ones the LLM replicas validate against, and lists every status an endpoint can
answer with the one OpenAI error shape. The test suite fuzzes the live API from this document
(schemathesis), so the document is held to what the server does.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest, ChatCompletionResponse
from vllm.entrypoints.openai.completion.protocol import CompletionRequest, CompletionResponse
from vllm.entrypoints.serve.engine.protocol import ErrorResponse

_REF = "#/components/schemas/{model}"
_ERRORS = {
    "400": "Malformed request: bad JSON, unknown or invalid field, bad header, beyond a tenant's caps.",
    "401": "Missing or wrong API key.",
    "403": "The API key may not use this endpoint.",
    "404": "Unknown model or route.",
    "408": "The request body stopped arriving (no data for 30 s).",
    "413": "Request body larger than the configured limit.",
    "415": "The body is not JSON: Content-Type must be application/json (or a +json type).",
    "429": "A tenant's rate limit or token budget is spent; see Retry-After.",
    "503": "No capacity (queue full, deadline passed, no replica); see Retry-After.",
}
_API_KEY = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
# One server-sent event of a streamed completion (before OpenAPI 3.2 the schema describes each event):
# `data` is a JSON chunk in OpenAI's stream format, an OpenAI error object, or `[DONE]`.
_SSE_EVENT = {"type": "object", "required": ["data"],
              "properties": {"data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"}}}


def _schema(name: str) -> dict:
    return {"$ref": _REF.format(model=name)}


def _errors(*statuses: str) -> dict:
    body = {"application/json": {"schema": _schema("ErrorResponse")}}
    return {s: {"description": _ERRORS[s], "content": body} for s in statuses}


def _generation(request: str, response: str) -> dict:
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": _schema(request)}}},
        "responses": {
            "200": {"description": "The completion, or with `stream: true` its SSE stream.",
                    "content": {"application/json": {"schema": _schema(response)},
                                "text/event-stream": {"schema": _SSE_EVENT}}},
            **_errors("400", "401", "404", "408", "413", "415", "429", "503"),
        },
        "security": [{"bearerAuth": []}],
    }


def _plain(*statuses: str, secured: bool = True) -> dict:
    op: dict[str, Any] = {"responses": {"200": {"description": "OK", "content": {"application/json": {
        "schema": {"type": "object"}}}}, **_errors(*statuses)}}
    if secured:
        op["security"] = [{"bearerAuth": []}]
    return op


# path -> method -> what the ingress documents for it.
_OPERATIONS = {
    "/v1/chat/completions": {"post": _generation("ChatCompletionRequest", "ChatCompletionResponse")},
    "/v1/completions": {"post": _generation("CompletionRequest", "CompletionResponse")},
    "/v1/models": {"get": _plain("401")},
    "/v1/models/{model_id}": {"get": _plain("400", "401", "404")},
    "/health": {"get": {"responses": {
        "200": {"description": "Every model has a healthy replica.",
                "content": {"application/json": {"schema": {"type": "object"}}}},
        "503": {"description": "A model has no healthy replica.",
                "content": {"application/json": {"schema": {"type": "object"}}}}}}},
    "/admin/cache/stats": {"get": _plain("401", "403", "404")},
    "/admin/cache/flush": {"post": _plain("401", "403", "404")},
    "/admin/models": {"get": _plain("400", "401", "403")},
}


def _components() -> dict:
    _, schema = models_json_schema(
        [(ChatCompletionRequest, "validation"), (CompletionRequest, "validation"),
         (ChatCompletionResponse, "serialization"), (CompletionResponse, "serialization"),
         (ErrorResponse, "serialization")],
        ref_template=_REF,
    )
    return schema["$defs"]


def install(app: FastAPI) -> None:
    """Make `app.openapi()` (served at /openapi.json) return the document described above."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes,
                              servers=app.servers)
            for path, methods in _OPERATIONS.items():
                for method, spec in methods.items():
                    op = doc["paths"].get(path, {}).get(method)
                    if op is None:
                        continue
                    op.pop("requestBody", None)
                    op["responses"] = {}
                    op.update(spec)
            components = doc.setdefault("components", {})
            components.setdefault("schemas", {}).update(_components())
            components["securitySchemes"] = _API_KEY
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi
