"""gRPC status -> HTTP status for every code, Retry-After, and a MatchGraph that is down.

The statuses a healthy seeded MatchGraph never returns (RESOURCE_EXHAUSTED, INTERNAL,
DEADLINE_EXCEEDED ...) come from a stand-in upstream that raises exactly what the
real gRPC client raises; UNAVAILABLE is also checked for real against a closed port.
"""

from __future__ import annotations

import socket

import grpc
import httpx
import pytest
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from services.gateway.errors import GRPC_TO_HTTP
from services.gateway.server import start
from services.gateway.settings import Settings
from services.gateway.upstream import UpstreamError


class FailingUpstream:
    """Every call fails with the configured status (what GrpcMatchGraph raises)."""

    def __init__(self, code: grpc.StatusCode, retry_after_s: float | None = None) -> None:
        self.code, self.retry_after_s = code, retry_after_s

    async def _fail(self, *args: object) -> None:
        raise UpstreamError(self.code, f"upstream said {self.code.name}", self.retry_after_s)

    search = rank = compare = get_model = _fail

    async def ready(self) -> bool:
        return False

    async def close(self) -> None:
        return None


def _client(code: grpc.StatusCode, retry_after_s: float | None = None) -> TestClient:
    app = create_app(Settings(port=0, metrics_port=-1), lambda _s: FailingUpstream(code, retry_after_s))
    return TestClient(app)


@pytest.mark.parametrize("code", [c for c in grpc.StatusCode if c != grpc.StatusCode.OK])
def test_every_grpc_code_maps_to_its_http_status(code):
    with _client(code) as c:
        r = c.get("/api/v1/search", params={"q": "cats"})
        assert r.status_code == GRPC_TO_HTTP[code]
        assert r.status_code != 500, "a gateway 500 would mean a gateway bug; upstream faults are 502"
        body = r.json()
        assert body["grpc_code"] == code.name and body["detail"] == f"upstream said {code.name}"
        page = c.get("/search", params={"q": "cats"})
        assert page.status_code == GRPC_TO_HTTP[code] and "upstream said" in page.text


def test_core_mapping_matches_the_brief():
    assert GRPC_TO_HTTP[grpc.StatusCode.INVALID_ARGUMENT] == 400
    assert GRPC_TO_HTTP[grpc.StatusCode.NOT_FOUND] == 404
    assert GRPC_TO_HTTP[grpc.StatusCode.UNAVAILABLE] == 503
    assert GRPC_TO_HTTP[grpc.StatusCode.RESOURCE_EXHAUSTED] == 429
    assert GRPC_TO_HTTP[grpc.StatusCode.DEADLINE_EXCEEDED] == 504


def test_resource_exhausted_carries_retry_after_from_the_trailer():
    with _client(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after_s=2.5) as c:
        r = c.get("/api/v1/rank")
        assert r.status_code == 429 and r.headers["retry-after"] == "3"


def test_readiness_is_503_when_upstream_is_not_serving():
    with _client(grpc.StatusCode.UNAVAILABLE) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "not ready"


def test_matchgraph_down_is_503_with_retry_after_for_real():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    gw = start(Settings(port=0, metrics_port=-1, matchgraph_target=dead, rpc_timeout_s=5, log_level="WARNING"))
    try:
        r = httpx.get(gw.url + "/api/v1/compare", params={"a": "x", "b": "y"}, timeout=30)
        assert r.status_code == 503, r.text
        assert r.json()["grpc_code"] == "UNAVAILABLE" and r.headers["retry-after"] == "1"
        page = httpx.get(gw.url + "/compare/x-vs-y", timeout=30)
        assert page.status_code == 503 and "Service unavailable" in page.text
        assert httpx.get(gw.url + "/healthz").status_code == 200
        assert httpx.get(gw.url + "/readyz").status_code == 503
    finally:
        gw.stop()
