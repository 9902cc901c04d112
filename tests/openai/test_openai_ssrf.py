"""The SSRF guard of remote ``image_url``s.

End to end, traffic goes to loopback only: small HTTP servers here count every request they
get, so "refused before any byte is fetched" is checked on the forbidden server itself. The
non-loopback cases (metadata address, private ranges, fc00::/7, IPv4-mapped, ...) are checked
on the address check alone, never by sending traffic.
"""

from __future__ import annotations

import asyncio
import http.server
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from services.openai.remote import address_refusal, check_url
from services.openai.server import start
from services.openai.settings import Settings
from tests.openai.conftest import OpenAIStack, image_message
from tests.vl.vlhelpers import png

IMAGE = png((40, 40), (10, 200, 30))


class _V6Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


class Counting:
    """A loopback HTTP server: /img.png (an image), /r (redirect to its own image), /to?url= (redirect
    anywhere), /huge (a chunked body with no length), /slow (answers late). Counts every request."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests.append(self.path)
                if self.path == "/img.png":
                    self._send(200, IMAGE, {"Content-Type": "image/png"})
                elif self.path == "/r":
                    self._send(302, b"", {"Location": "/img.png"})
                elif self.path.startswith("/to?url="):
                    self._send(302, b"", {"Location": self.path.removeprefix("/to?url=")})
                elif self.path == "/huge":
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    try:
                        for _ in range(64):
                            self.wfile.write(b"4000\r\n" + bytes(0x4000) + b"\r\n")
                        self.wfile.write(b"0\r\n\r\n")
                    except OSError:
                        pass  # the frontend stopped reading at its cap
                elif self.path == "/slow":
                    time.sleep(3)
                    self._send(200, IMAGE, {"Content-Type": "image/png"})
                else:
                    self._send(404, b"", {})

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for k, v in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass  # the frontend gave up first (the timeout test)

        cls = _V6Server if ":" in host else http.server.ThreadingHTTPServer
        self.server = cls((host, 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, Counting]]:
    made = {"allowed": Counting(), "forbidden": Counting(), "v6": Counting("::1")}
    yield made
    for s in made.values():
        s.close()


def _frontend(stack: OpenAIStack, **kw: object):
    return start(stack.frontend_settings(allow_remote_images=True, **kw))


def _chat(url: str, base: str, model: str) -> openai.types.chat.ChatCompletion:
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
    return client.chat.completions.create(model=model, messages=image_message(url), max_tokens=2)


def test_remote_images_are_off_by_default(stack: OpenAIStack, servers) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        stack.client().chat.completions.create(
            model=stack.vl_model, messages=image_message(f"http://127.0.0.1:{servers['forbidden'].port}/img.png"))
    assert "allow_remote_images" in err.value.message
    assert servers["forbidden"].requests == []


def test_loopback_targets_are_refused_before_any_byte_is_fetched(stack: OpenAIStack, servers) -> None:
    fe = _frontend(stack)
    try:
        for url in (f"http://127.0.0.1:{servers['forbidden'].port}/img.png",
                    f"http://localhost:{servers['forbidden'].port}/img.png",
                    f"http://[::1]:{servers['v6'].port}/img.png",
                    f"http://[::ffff:127.0.0.1]:{servers['forbidden'].port}/img.png",
                    f"http://0.0.0.0:{servers['forbidden'].port}/img.png"):
            with pytest.raises(openai.BadRequestError) as err:
                _chat(url, fe.url, stack.vl_model)
            assert "refused" in err.value.message and err.value.code == "image_url_forbidden", url
        with pytest.raises(openai.BadRequestError) as err:
            _chat(f"ftp://127.0.0.1:{servers['forbidden'].port}/img.png", fe.url, stack.vl_model)
        assert "must be a data: URL" in err.value.message
    finally:
        fe.stop()
    https_only = _frontend(stack, remote_image_schemes=["https"], remote_image_hosts=["127.0.0.1"])
    try:
        with pytest.raises(openai.BadRequestError) as err:
            _chat(f"http://127.0.0.1:{servers['forbidden'].port}/img.png", https_only.url, stack.vl_model)
        assert "scheme 'http' is not allowed" in err.value.message
    finally:
        https_only.stop()
    assert servers["forbidden"].requests == [] and servers["v6"].requests == []


def test_every_redirect_hop_is_checked_against_the_allowlist(stack: OpenAIStack, servers) -> None:
    allowed, forbidden = servers["allowed"], servers["forbidden"]
    fe = _frontend(stack, remote_image_hosts=[f"127.0.0.1:{allowed.port}"], max_image_bytes=64 * 1024,
                   remote_image_timeout_s=1.0)
    try:
        ok = _chat(f"http://127.0.0.1:{allowed.port}/r", fe.url, stack.vl_model)  # redirect within the allowlist
        assert ok.usage.prompt_tokens > 0 and allowed.requests[-2:] == ["/r", "/img.png"]
        before = list(allowed.requests)
        bad = f"http://127.0.0.1:{forbidden.port}/img.png"
        with pytest.raises(openai.BadRequestError) as err:
            _chat(f"http://127.0.0.1:{allowed.port}/to?url={bad}", fe.url, stack.vl_model)
        assert f"127.0.0.1:{forbidden.port}" in err.value.message and "allowlist" in err.value.message
        assert allowed.requests == [*before, f"/to?url={bad}"] and forbidden.requests == []
        with pytest.raises(openai.BadRequestError):  # not listed: refused without a request
            _chat(f"http://localhost:{allowed.port}/img.png", fe.url, stack.vl_model)
        with pytest.raises(openai.APIStatusError) as big:  # the cap holds while the body streams
            _chat(f"http://127.0.0.1:{allowed.port}/huge", fe.url, stack.vl_model)
        assert big.value.status_code == 413
        with pytest.raises(openai.BadRequestError) as slow:
            _chat(f"http://127.0.0.1:{allowed.port}/slow", fe.url, stack.vl_model)
        assert "longer than 1 s" in slow.value.message
    finally:
        fe.stop()
    assert forbidden.requests == []


@pytest.mark.parametrize("address", [
    "169.254.169.254", "169.254.0.1", "10.0.0.1", "10.255.255.255", "172.16.0.1", "172.31.255.254", "192.168.1.1",
    "127.0.0.1", "127.8.8.8", "0.0.0.0", "100.64.0.1", "224.0.0.1", "255.255.255.255", "240.0.0.1",
    "::1", "::", "fc00::1", "fd12:3456::1", "fe80::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1", "::ffff:8.8.8.8",
    "2002:7f00:1::1", "2002:a9fe:a9fe::1", "64:ff9b::a00:1", "64:ff9b::a9fe:a9fe", "64:ff9b::808:808",
])
def test_address_check_refuses_non_public_addresses(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "151.101.1.69", "2606:4700:4700::1111",
                                     "2a00:1450:4001:80b::200e"])
def test_address_check_lets_public_addresses_through(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "https://10.1.2.3/x.png",
                                 "http://[fd00::1]/a.png", "http://[::ffff:a9fe:a9fe]/", "http://192.168.0.10:8080/"])
def test_literal_private_urls_are_refused_by_the_url_check(url: str) -> None:
    """check_url resolves (a literal needs no DNS) and checks; it never connects."""
    from services.openai.errors import APIError

    settings = Settings(allow_remote_images=True)
    with pytest.raises(APIError) as err:
        asyncio.run(check_url(httpx.URL(url), settings))
    assert err.value.status == 400 and "refused" in err.value.message
