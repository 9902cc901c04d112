"""Client disconnects become cancellations, so no work is done for nobody.

Starlette notices a disconnected streaming client only when its next write fails, which
for a queued request or a slow step may be long after the client left. Both helpers here
listen for ``http.disconnect`` themselves and cancel the task that awaits the service;
the gRPC call (unary or stream) is cancelled with it (see ``Upstreams``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from services.openai.errors import APIError

T = TypeVar("T")


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it and answer 499 (to no one)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise APIError(499, "the client closed the connection; the request was cancelled")
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


class DisconnectAwareStream(StreamingResponse):
    """A StreamingResponse that stops (cancelling its body iterator) as soon as the client leaves,
    whatever the ASGI spec version the server reports."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming = asyncio.ensure_future(self.stream_response(send))
        watcher = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({streaming, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if streaming.done():
                streaming.result()  # a bug in the stream surfaces as one
                return
            streaming.cancel()
            await asyncio.gather(streaming, return_exceptions=True)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:  # a generator left suspended at a yield: close it now, not at GC
                await close()


def sse(data: Any, event: str | None = None) -> bytes:
    """One server-sent event (``data: <json>``; ``event:`` first when named)."""
    body = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {body}\n\n".encode()


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def peek(stream: AsyncIterator[T]) -> tuple[T | None, AsyncIterator[T]]:
    """The first item of ``stream`` (errors raised now, before any byte of the answer is sent)
    and an iterator over all of it, the first item included."""
    try:
        first = await stream.__anext__()
    except StopAsyncIteration:
        return None, stream

    async def chain() -> AsyncIterator[T]:
        try:
            yield first
            async for item in stream:
                yield item
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()

    return first, chain()
