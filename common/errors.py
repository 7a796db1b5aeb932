"""OpenAI-format error responses.

One shape for every error the service returns, whether raygate or vLLM raised it:
`{"error": {"message", "type", "param", "code"}}` (vLLM's `ErrorResponse` model, which follows
OpenAI's). Clients such as the official `openai` SDK map the status to a typed exception and show
`message`, so the message must name the problem and, where there is one, the field (`param`).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Optional

from starlette.responses import JSONResponse
from vllm.entrypoints.serve.engine.protocol import ErrorInfo, ErrorResponse

_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    408: "RequestTimeoutError",
    413: "RequestTooLargeError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}


class APIError(Exception):
    """Raised anywhere in request handling; the ingress turns it into an OpenAI-format response."""

    def __init__(
        self,
        status: int,
        message: str,
        param: Optional[str] = None,
        retry_after_s: Optional[float] = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s


def error_body(status: int, message: str, param: Optional[str] = None) -> ErrorResponse:
    err_type = _TYPES.get(status) or HTTPStatus(status).phrase.replace(" ", "") + "Error"
    return ErrorResponse(error=ErrorInfo(message=message, type=err_type, param=param, code=status))


def error_response(
    status: int,
    message: str,
    param: Optional[str] = None,
    retry_after_s: Optional[float] = None,
    headers: Optional[dict[str, str]] = None,
) -> JSONResponse:
    hdrs = dict(headers or {})
    if retry_after_s is not None:
        hdrs["Retry-After"] = str(max(1, int(round(retry_after_s))))
    return JSONResponse(error_body(status, message, param).model_dump(), status_code=status, headers=hdrs)


def api_error_response(e: APIError, headers: Optional[dict[str, str]] = None) -> JSONResponse:
    return error_response(e.status, e.message, e.param, e.retry_after_s, headers)
