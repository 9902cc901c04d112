"""gRPC status -> HTTP status, and every error as an RFC 9457 problem document.

The mapping is Google's published one (the same grpc-gateway uses), so clients that
know either side can predict the other. Request validation by the gateway itself
(a missing or malformed query parameter) is 422, like every FastAPI service; a value
the MatchGraph rejects (INVALID_ARGUMENT) is 400. Either way the body says what was
wrong and how to fix it, and a malformed request is never answered 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from services.core.http_status import GRPC_TO_HTTP, retry_after_header
from services.gateway.upstream import UpstreamError

log = logging.getLogger(__name__)

TITLES = {
    400: "Bad request", 401: "Unauthenticated", 403: "Forbidden", 404: "Not found", 405: "Method not allowed",
    409: "Conflict", 413: "Content too large", 415: "Unsupported media type",
    422: "Invalid request parameters", 429: "Too many requests", 499: "Client closed request",
    501: "Not implemented", 502: "Upstream error", 503: "Service unavailable", 504: "Upstream timeout",
}


class FieldError(BaseModel):
    """One invalid request parameter."""

    location: str = Field(description='Where the parameter was, e.g. "query.limit" or "path.model".')
    message: str = Field(description="What is wrong and what is expected.")


class Problem(BaseModel):
    """An error (RFC 9457 problem details): what went wrong and what to do."""

    type: str = Field("about:blank", description="A URI identifying the problem type.")
    title: str = Field(description="Short summary of the problem class, e.g. 'Not found'.")
    status: int = Field(description="The HTTP status code of this answer.")
    detail: str = Field(description="What went wrong in this request, and how to fix it.")
    grpc_code: str | None = Field(None, description="The MatchGraph gRPC status behind it, e.g. NOT_FOUND.")
    errors: list[FieldError] = Field(default_factory=list, description="Invalid parameters (422 only).")


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "description": TITLES[code]} for code in (400, 404, 422, 429, 502, 503, 504)
}


def problem_response(status: int, detail: str, *, grpc_code: str | None = None,
                     errors: list[FieldError] | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = Problem(title=TITLES.get(status, "Error"), status=status, detail=detail, grpc_code=grpc_code,
                   errors=errors or [])
    return JSONResponse(body.model_dump(), status_code=status, headers=headers,
                        media_type="application/problem+json")


def http_status(err: UpstreamError) -> int:
    return GRPC_TO_HTTP.get(err.code, 502)


def retry_headers(err: UpstreamError) -> dict[str, str]:
    """Retry-After (whole seconds, at least 1) for 429 and 503."""
    if http_status(err) in (429, 503):
        return retry_after_header(err.retry_after_s)
    return {}


def describe_validation(exc: RequestValidationError) -> tuple[str, list[FieldError]]:
    """Turn pydantic's error list into one readable sentence plus per-field entries."""
    fields = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e.get("loc", ()))
        msg = str(e.get("msg", "invalid value"))
        if "input" in e and e.get("type") not in ("missing",):
            shown = repr(e["input"])
            msg = f"{msg} (got {shown[:80]})"
        fields.append(FieldError(location=loc or "request", message=msg))
    detail = "; ".join(f"{f.location}: {f.message}" for f in fields) or "the request parameters are invalid"
    return detail, fields


def wants_html(request: Request) -> bool:
    """Pages get HTML errors; /api and everything else get problem+json."""
    return not request.url.path.startswith("/api/") and request.url.path not in ("/openapi.json",)


def install_handlers(app: Any, render_error_page: Any) -> None:
    """Register the handlers: upstream gRPC errors, validation errors, HTTP errors."""

    async def on_upstream(request: Request, exc: UpstreamError) -> Response:
        status = http_status(exc)
        if status >= 500:
            log.warning("MatchGraph %s on %s: %s", exc.code.name, request.url.path, exc.message)
        headers = retry_headers(exc)
        if wants_html(request):
            return render_error_page(request, status, exc.message, headers)
        return problem_response(status, exc.message, grpc_code=exc.code.name, headers=headers)

    async def on_validation(request: Request, exc: RequestValidationError) -> Response:
        detail, fields = describe_validation(exc)
        if wants_html(request):
            return render_error_page(request, 422, detail, None)
        return problem_response(422, detail, errors=fields)

    async def on_http(request: Request, exc: StarletteHTTPException) -> Response:
        detail = str(exc.detail) if exc.detail else TITLES.get(exc.status_code, "Error")
        if exc.status_code == 405:
            allow = (getattr(exc, "headers", None) or {}).get("Allow", "GET")
            detail = f"{request.method} is not supported on {request.url.path}; use {allow}"
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no page or endpoint at {request.url.path}; see /api/v1 endpoints in /openapi.json"
        if wants_html(request):
            return render_error_page(request, exc.status_code, detail, getattr(exc, "headers", None))
        return problem_response(exc.status_code, detail, headers=getattr(exc, "headers", None))

    app.add_exception_handler(UpstreamError, on_upstream)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
