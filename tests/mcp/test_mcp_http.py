"""The gateway's /mcp endpoint on the wire: stateless JSON answers (any replica serves any request), Host
checks on a loopback gateway against DNS rebinding, and the setting that turns it off."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from services.gateway.server import RunningGateway, start
from services.gateway.settings import Settings as GatewaySettings
from services.mcp.http import gateway_app

INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                         "clientInfo": {"name": "curl", "version": "1"}}}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def gateway(matchgraph: Any) -> Iterator[RunningGateway]:
    gw = start(GatewaySettings(port=0, metrics_port=-1, matchgraph_target=matchgraph.address, log_level="WARNING",
                               public_base_url="https://search.example"), app_factory=gateway_app)
    yield gw
    gw.stop()


def test_answers_json_without_a_session(gateway: RunningGateway) -> None:
    url = f"http://127.0.0.1:{gateway.port}/mcp"
    r = httpx.post(url, json=INITIALIZE, headers=HEADERS)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert r.json()["result"]["serverInfo"]["name"] == "unfragile"
    assert "mcp-session-id" not in r.headers
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "trust_passport", "arguments": {"model": "captioner-a"}}}
    r = httpx.post(url, json=call, headers={**HEADERS, "MCP-Protocol-Version": "2025-06-18"})
    body = r.json()["result"]["structuredContent"]["passport"]["unfragile"]
    assert body["_links"]["self"]["href"] == "https://search.example/api/v1/passport/test-org--captioner-a"
    metrics = httpx.get(f"http://127.0.0.1:{gateway.port}/metrics").text
    assert 'unfragile_http_requests_total{method="POST",route="/mcp",status="200"}' in metrics


@pytest.mark.parametrize("headers,status", [
    ({"Host": "evil.example"}, 421), ({"Host": "search.example"}, 200), ({"Host": "localhost:8080"}, 200),
    ({"Origin": "http://evil.example"}, 403), ({"Origin": "https://search.example"}, 200),
    ({"Origin": "http://localhost:8080"}, 200),
])
def test_loopback_gateway_checks_host_and_origin(gateway: RunningGateway, headers: dict[str, str],
                                                 status: int) -> None:
    """Against DNS rebinding: a page on another site cannot drive a local gateway's tools."""
    r = httpx.post(f"http://127.0.0.1:{gateway.port}/mcp", json=INITIALIZE, headers={**HEADERS, **headers})
    assert r.status_code == status


def test_mcp_path_empty_turns_it_off() -> None:
    with TestClient(gateway_app(GatewaySettings(mcp_path="")), base_url="http://127.0.0.1") as c:
        assert c.post("/mcp", json=INITIALIZE, headers=HEADERS).status_code == 404
    with pytest.raises(ValueError, match="mcp_path must start with '/'"):
        GatewaySettings(mcp_path="mcp")
