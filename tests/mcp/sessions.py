"""The official MCP client (``ClientSession``) connected to the server over stdio (``python -m services.cli serve
mcp --stdio``, a child process) or over streamable HTTP (the gateway's ``/mcp``, a real server on port 0).

A session lives in a thread with its own event loop for the whole module; tests hand it coroutines."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from services.gateway.server import start
from services.gateway.settings import Settings as GatewaySettings
from services.mcp.http import gateway_app

ROOT = Path(__file__).resolve().parents[2]
STDIO_BASE_URL = "http://pages.example"  # public_base_url of the stdio server: its answers link there
T = TypeVar("T")
Streams = Callable[[], AbstractAsyncContextManager[Any]]


class Session:
    """An initialised ``ClientSession`` on a background event loop; ``run(lambda s: s.call_tool(...))``."""

    def __init__(self, streams: Streams) -> None:
        self._streams = streams
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True, name="mcp-client")
        self.init: Any = None

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            async with self._streams() as (read, write), ClientSession(read, write) as session:
                self.session = session
                self.init = await session.initialize()
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:  # reported to the test that waits for it
            self._error = exc
        finally:
            self._ready.set()

    def open(self) -> Session:
        self._thread.start()
        self._ready.wait(120)
        if self._error is not None or self.init is None:
            raise RuntimeError(f"MCP session did not start: {self._error!r}")
        return self

    def run(self, call: Callable[[ClientSession], Awaitable[T]], timeout: float = 60) -> T:
        async def go() -> T:
            return await call(self.session)

        return asyncio.run_coroutine_threadsafe(go(), self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


def stdio_streams(target: str, errlog: Path) -> Streams:
    params = StdioServerParameters(
        command=sys.executable, cwd=str(ROOT),
        args=["-m", "services.cli", "serve", "mcp", "--stdio", "--set", f"matchgraph_target={target}",
              "--set", f"public_base_url={STDIO_BASE_URL}", "--set", "rpc_timeout_s=5"])

    @asynccontextmanager
    async def streams() -> AsyncIterator[Any]:
        with errlog.open("w") as log:
            async with stdio_client(params, errlog=log) as pair:
                yield pair

    return streams


def http_streams(url: str) -> Streams:
    return lambda: streamable_http_client(url)


def serve(transport: str, target: str, tmp: Path) -> tuple[Session, str, Callable[[], None]]:
    """(an open session over ``transport`` to an MCP server calling the MatchGraph at ``target``, the base
    URL its links use, how to stop it all)."""
    if transport == "stdio":
        session = Session(stdio_streams(target, tmp / "mcp-stderr.log")).open()
        return session, STDIO_BASE_URL, session.close
    gateway = start(GatewaySettings(port=0, metrics_port=-1, matchgraph_target=target, log_level="WARNING",
                                    rpc_timeout_s=5), app_factory=gateway_app)
    session = Session(http_streams(f"{gateway.url}/mcp")).open()

    def stop() -> None:
        session.close()
        gateway.stop()

    return session, gateway.url, stop
