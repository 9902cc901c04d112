"""Every error in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

The official SDKs pick their exception class from the HTTP status (400 BadRequestError,
401 AuthenticationError, 404 NotFoundError, 413 → APIStatusError, 429 RateLimitError,
5xx InternalServerError), so the status is what matters most; ``type`` and ``code`` follow
OpenAI's own values. gRPC statuses of the services map to HTTP as the gateway maps them,
except that the service's message is passed on verbatim (it says what to change).
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from services.core import http_status

log = logging.getLogger(__name__)

# As the gateway maps them, except UNAUTHENTICATED: our upstream credentials are wrong, not the client's fault.
GRPC_TO_HTTP: dict[grpc.StatusCode, int] = {**http_status.GRPC_TO_HTTP, grpc.StatusCode.UNAUTHENTICATED: 502}

# OpenAI's `type` per status (what its API and vLLM send).
TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error", 409: "conflict_error", 413: "invalid_request_error",
         429: "rate_limit_exceeded", 499: "cancelled", 501: "not_implemented", 502: "upstream_error",
         503: "service_unavailable", 504: "timeout"}


class APIError(Exception):
    """An answer other than 2xx, raised anywhere in a handler."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        if self.status in (429, 503):
            return http_status.retry_after_header(self.retry_after_s)
        if self.status == 401:
            return {"WWW-Authenticate": "Bearer"}
        return {}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers())


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """A 400 for something the client sent."""
    return APIError(400, message, param=param, code=code)


def from_grpc(err: grpc.aio.AioRpcError, service: str) -> APIError:
    """The service's status and message as an APIError (with its retry-after-ms hint)."""
    code = err.code()
    message = err.details() or code.name
    status = GRPC_TO_HTTP.get(code, 502)
    if code == grpc.StatusCode.UNAVAILABLE:
        message = f"the {service} service is unavailable: {message}"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        message = f"the {service} service did not answer in time: {message}"
    elif code == grpc.StatusCode.UNAUTHENTICATED:
        message = f"the frontend's credentials for the {service} service were refused"
    if status >= 500:
        log.warning("%s %s: %s", service, code.name, err.details())
    return APIError(status, message, code=code.name.lower(), retry_after_s=http_status.retry_after_s(err))


def _param(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def install_handlers(app: Any) -> None:
    """APIError as-is; FastAPI's validation errors and Starlette's HTTP errors in OpenAI's shape."""

    async def on_api(request: Request, exc: APIError) -> Response:
        return exc.response()

    async def on_validation(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        first = errors[0] if errors else {}
        param = _param(tuple(first.get("loc", ())))
        parts = []
        for e in errors[:5]:
            msg = f"{_param(tuple(e.get('loc', ())))}: {e.get('msg', 'invalid value')}"
            if "input" in e and e.get("type") != "missing":
                msg += f" (got {repr(e['input'])[:80]})"
            parts.append(msg)
        return invalid("; ".join(parts) or "the request body is invalid", param=param).response()

    async def on_http(request: Request, exc: StarletteHTTPException) -> Response:
        message = str(exc.detail) if exc.detail else "error"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no endpoint at {request.url.path}; see docs/openai.md for the supported ones"
        elif exc.status_code == 405:
            message = f"{request.method} is not supported on {request.url.path}"
        code = "request_too_large" if exc.status_code == 413 else None
        return APIError(exc.status_code, message, code=code).response()

    app.add_exception_handler(APIError, on_api)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
