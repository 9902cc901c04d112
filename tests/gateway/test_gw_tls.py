"""HTTPS on the gateway, and the gateway reaching a MatchGraph that requires mutual TLS and
a bearer token (the MatchGraph's own security settings, real certificates from openssl)."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from services.core.server import start_server
from services.gateway.server import start
from services.gateway.settings import Settings
from services.matchgraph.app import Settings as GraphSettings
from services.matchgraph.app import build_service

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


@pytest.fixture(scope="module")
def pki(pki: Path) -> Path:
    """The shared test PKI plus a reader token for the gateway."""
    (pki / "tokens.txt").write_text("gateway-secret reader gateway\n")
    return pki


def test_https_gateway_to_mtls_matchgraph_with_token(pki: Path, tmp_path: Path):
    gs = GraphSettings(host="localhost", port=0, metrics_port=-1, db_url=f"sqlite:///{tmp_path / 'g.db'}",
                       tls_cert_file=pki / "server.pem", tls_key_file=pki / "server.key",
                       tls_client_ca_file=pki / "ca.pem", auth_tokens_file=pki / "tokens.txt",
                       allow_anonymous_reads=False)
    graph = start_server(gs, build_service(gs))
    common = dict(port=0, metrics_port=-1, matchgraph_target=graph.address, matchgraph_root_ca=pki / "ca.pem",
                  matchgraph_client_cert=pki / "client.pem", matchgraph_client_key=pki / "client.key",
                  tls_cert_file=pki / "server.pem", tls_key_file=pki / "server.key", log_level="WARNING")
    good = start(Settings(**common, matchgraph_token="gateway-secret"))
    no_token = start(Settings(**common))
    try:
        assert good.url.startswith("https://")
        ok = httpx.get(good.url + "/api/v1/rank", verify=str(pki / "ca.pem"), timeout=30)
        assert ok.status_code == 200 and ok.json()["total"] == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(good.url + "/api/v1/rank", timeout=30)  # not trusted without the CA
        denied = httpx.get(no_token.url + "/api/v1/rank", verify=str(pki / "ca.pem"), timeout=30)
        assert denied.status_code == 401 and denied.json()["grpc_code"] == "UNAUTHENTICATED"
    finally:
        good.stop()
        no_token.stop()
        graph.stop(0)
