"""Pure-ASGI middlewares of the frontend: API keys, and the request body limit.

API keys guard everything under /v1 (as vLLM's --api-key does); /health, /readyz and
/metrics stay open for probes and scrapers. Keys are compared in constant time and never
logged or echoed. The body limit answers 413 from the Content-Length header when it is
declared, and otherwise stops reading as soon as the limit is passed.
"""

from __future__ import annotations

import hmac
from typing import Any

from starlette.exceptions import HTTPException

from services.openai.errors import APIError


class ApiKeys:
    """``Authorization: Bearer <key>`` on /v1/* when keys are configured."""

    def __init__(self, app: Any, keys: list[bytes]) -> None:
        self.app = app
        self.keys = keys

    def _known(self, token: bytes) -> bool:
        found = False
        for key in self.keys:  # check all: no early-exit timing signal
            found |= hmac.compare_digest(key, token)
        return found

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.keys or not scope["path"].startswith("/v1") \
                or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers", [])).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if not token.strip():
            err = APIError(401, "missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
        elif scheme.lower() != b"bearer" or not self._known(token.strip()):
            err = APIError(401, "invalid API key", code="invalid_api_key")
        else:
            await self.app(scope, receive, send)
            return
        await err.response()(scope, receive, send)


class BodyLimit:
    """413 for request bodies over ``limit`` bytes."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large(int(declared)).response()(scope, receive, send)
            return
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:  # an HTTPException: FastAPI's body reading lets those through
                    raise HTTPException(413, self._too_large(seen).message)
            return message

        await self.app(scope, limited, send)

    def _too_large(self, size: int) -> APIError:
        return APIError(413, f"request body exceeds this server's limit of {self.limit} bytes (at least {size} "
                             "bytes sent or declared)", code="request_too_large")
