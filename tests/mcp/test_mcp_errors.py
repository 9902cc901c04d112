"""When the MatchGraph is down the tools answer tool errors saying so (over stdio and HTTP) and the session
goes on; `unfragile serve mcp` without --stdio says where the HTTP transport is."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from services.cli import app
from tests.mcp.sessions import Session, serve


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module", params=["stdio", "http"])
def down(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Session, str]]:
    target = f"127.0.0.1:{_closed_port()}"
    session, _, stop = serve(request.param, target, tmp_path_factory.mktemp(f"down-{request.param}"))
    yield session, target
    stop()


@pytest.mark.parametrize("tool,arguments", [
    ("trust_passport", {"model": "kosmos-2-patch14-224"}),
    ("search", {"query": "caption an image"}),
    ("feedback", {"matchRecordId": "match-1", "outcome": "failure"}),
])
def test_matchgraph_down_is_a_tool_error(down: tuple[Session, str], tool: str, arguments: dict[str, Any]) -> None:
    session, target = down
    result: Any = session.run(lambda s: s.call_tool(tool, arguments))
    assert result.is_error
    assert f"MatchGraph is unavailable at {target}" in result.content[0].text
    assert len(session.run(lambda s: s.list_tools()).tools) == 5  # the session goes on


def test_serve_mcp_without_stdio_points_to_the_gateway() -> None:
    out = CliRunner().invoke(app, ["serve", "mcp"])
    assert out.exit_code == 2 and "--stdio" in out.output and "/mcp" in out.output
