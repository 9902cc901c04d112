"""``services.gateway.server.run`` as the CLI will use it: a separate process that serves,
answers, and exits 0 on SIGTERM after draining; metrics on their own port like the others."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from services.gateway.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import logging, sys
from services.gateway.server import run
from services.gateway.settings import Settings
logging.basicConfig(level="INFO", stream=sys.stderr, format="%(message)s")
run(Settings(port=0, metrics_port=0, matchgraph_target=sys.argv[1], log_level="INFO"))
print("run returned", flush=True)
"""


def _wait_for(proc: subprocess.Popen, pattern: str, timeout: float = 60) -> re.Match:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if m := re.search(pattern, line):
            return m
    raise AssertionError(f"no {pattern!r} in output: {''.join(seen)}")


def test_run_serves_and_exits_zero_on_sigterm(matchgraph):
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, matchgraph.address], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        metrics_port = int(_wait_for(proc, r"gateway metrics on http://[\d.]+:(\d+)/metrics").group(1))
        url = _wait_for(proc, r"gateway on (http://[\d.]+:\d+)").group(1)
        _wait_for(proc, r"Application startup complete")
        r = httpx.get(url + "/api/v1/rank", timeout=30)
        assert r.status_code == 200 and r.json()["total"] >= 2
        assert "unfragile_http_requests_total" in httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        proc.send_signal(signal.SIGTERM)
        out, _err = proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert "run returned" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("UNFRAGILE_GATEWAY_MATCHGRAPH_TARGET", "graph.internal:50053")
    monkeypatch.setenv("UNFRAGILE_GATEWAY_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("UNFRAGILE_GATEWAY_PORT", "8181")
    s = Settings()
    assert (s.matchgraph_target, s.port) == ("graph.internal:50053", 8181)
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert Settings(cors_origins='["*"]').cors_origins == ["*"]
    assert Settings().base_url(9000) == "http://127.0.0.1:9000"
    assert Settings(host="0.0.0.0").base_url(9000) == "http://127.0.0.1:9000"


def test_seed_compare_url_and_readiness_wait(gateway):
    from graph.seed_data import KOSMOS2_ID, SD_ID
    from services.core.http_server import wait_until_ready
    from services.gateway.server import compare_url

    url = compare_url(gateway.url, KOSMOS2_ID, SD_ID)
    assert url == f"{gateway.url}/compare/kosmos-2-patch14-224-vs-stable-diffusion"
    wait_until_ready(gateway.url, timeout=10)
    assert httpx.get(url).status_code == 200


def test_listening_socket_disables_nagle():
    """Keep-alive clients would otherwise wait for a delayed ACK on every answer."""
    import socket

    from services.core.http_server import bind_socket

    sock = bind_socket(Settings(port=0))
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        sock.close()
