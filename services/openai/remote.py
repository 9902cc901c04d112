"""Fetching an ``image_url`` that is an http(s) URL, without becoming an SSRF proxy.

Off unless ``allow_remote_images``. Then, for the URL and again for every redirect hop:
the scheme must be allowed; with ``remote_image_hosts`` set, the host (or host:port) must
be listed; the host is resolved *first* and every address it resolves to must be public
(``address_refusal``: loopback, private, link-local (169.254.0.0/16, where cloud metadata
answers), shared, multicast, unspecified, reserved, IPv4-mapped/6to4/NAT64 forms of those
are refused); then the connection goes to the checked address itself (the Host header and
TLS server name keep the original host), so a second DNS answer cannot swap in another
address. The download is capped at ``max_image_bytes`` while it streams and the whole
fetch at ``remote_image_timeout_s``. No proxy from the environment is used: it would
connect on our behalf to whatever the URL names.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from ipaddress import IPv4Address, IPv6Address

import httpx

from services.openai import metrics
from services.openai.errors import APIError, invalid
from services.openai.settings import Settings

IP = IPv4Address | IPv6Address
CGNAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")


def address_refusal(ip: IP) -> str | None:
    """Why a connection to ``ip`` is refused, or None for a public unicast address."""
    if isinstance(ip, IPv6Address):
        if ip.ipv4_mapped is not None:
            return "an IPv4-mapped IPv6 address"
        if ip.sixtofour is not None:
            inner = address_refusal(ip.sixtofour)
            if inner:
                return f"a 6to4 address of {inner}"
        if ip in NAT64:
            inner = address_refusal(IPv4Address(int(ip) & 0xFFFFFFFF))
            if inner:
                return f"a NAT64 address of {inner}"
    checks = (("unspecified", ip.is_unspecified), ("loopback", ip.is_loopback),
              ("link-local (169.254.0.0/16 or fe80::/10, where cloud metadata services answer)", ip.is_link_local),
              ("multicast", ip.is_multicast),
              ("private", ip.is_private or (isinstance(ip, IPv4Address) and ip in CGNAT)),
              ("reserved", ip.is_reserved))
    for name, hit in checks:
        if hit:
            return f"a {name} address"
    if not ip.is_global:
        return "not a globally routable address"
    return None


def _host_port(url: httpx.URL) -> tuple[str, int]:
    port = url.port or (443 if url.scheme == "https" else 80)
    return url.host.lower(), port


def _listed(settings: Settings, host: str, port: int) -> bool:
    entries = {e.lower().strip() for e in settings.remote_image_hosts}
    bracketed = f"[{host}]" if ":" in host else host
    return host in entries or bracketed in entries or f"{bracketed}:{port}" in entries


async def _resolve(host: str, port: int) -> list[IP]:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise invalid(f"image_url host {host!r} does not resolve ({exc.strerror or exc})", "image_url") from None
    out: list[IP] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in out:
            out.append(ip)
    return out


async def check_url(url: httpx.URL, settings: Settings) -> IP:
    """The address to connect to for ``url``, or a 400 saying why it is refused (nothing is sent)."""
    if url.scheme not in settings.remote_image_schemes:
        raise invalid(f"image_url scheme {url.scheme!r} is not allowed; allowed: "
                      f"{', '.join(settings.remote_image_schemes)} (or send a data: URL)", "image_url",
                      code="image_url_forbidden")
    if not url.host:
        raise invalid("image_url has no host", "image_url")
    host, port = _host_port(url)
    listed = _listed(settings, host, port)
    if settings.remote_image_hosts and not listed:
        raise invalid(f"image_url host {host}:{port} is not in this server's remote_image_hosts allowlist",
                      "image_url", code="image_url_forbidden")
    addresses = await _resolve(host, port)
    if not addresses:
        raise invalid(f"image_url host {host!r} resolves to no address", "image_url")
    if not listed:
        for ip in addresses:
            why = address_refusal(ip)
            if why:
                raise invalid(f"image_url host {host!r} resolves to {ip}, {why}: refused", "image_url",
                              code="image_url_forbidden")
    return addresses[0]


async def _get(client: httpx.AsyncClient, url: httpx.URL, ip: IP, limit: int) -> tuple[httpx.Response, bytes]:
    """GET ``url`` on the checked address ``ip``; the body is read only for a 200, at most ``limit`` bytes."""
    host, port = _host_port(url)
    default_port = (url.scheme == "https" and port == 443) or (url.scheme == "http" and port == 80)
    host_header = (f"[{host}]" if ":" in host else host) + ("" if default_port else f":{port}")
    pinned = url.copy_with(host=str(ip), port=port)
    extensions = {"sni_hostname": host} if url.scheme == "https" else {}
    request = client.build_request("GET", pinned, headers={"Host": host_header, "Accept": "image/*"},
                                   extensions=extensions)
    response = await client.send(request, stream=True)
    try:
        if response.status_code != 200:
            return response, b""
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise APIError(413, f"image_url is {int(declared)} bytes, over this server's limit of {limit}",
                           param="image_url", code="image_too_large")
        data = bytearray()
        async for chunk in response.aiter_bytes():
            data += chunk
            if len(data) > limit:
                raise APIError(413, f"image_url sent more than this server's limit of {limit} bytes",
                               param="image_url", code="image_too_large")
        return response, bytes(data)
    finally:
        await response.aclose()


async def fetch_image(url_text: str, settings: Settings) -> bytes:
    """The bytes behind an http(s) ``image_url`` (every hop checked), or an APIError."""
    try:
        result = await asyncio.wait_for(_fetch(url_text, settings), settings.remote_image_timeout_s)
    except TimeoutError:
        metrics.REMOTE_IMAGES.labels("failed").inc()
        raise invalid(f"image_url took longer than {settings.remote_image_timeout_s:g} s to download",
                      "image_url") from None
    except APIError as err:
        metrics.REMOTE_IMAGES.labels("refused" if err.code == "image_url_forbidden" else "failed").inc()
        raise
    metrics.REMOTE_IMAGES.labels("ok").inc()
    return result


async def _fetch(url_text: str, settings: Settings) -> bytes:
    try:
        url = httpx.URL(url_text)
    except (httpx.InvalidURL, ValueError) as exc:
        raise invalid(f"image_url is not a valid URL ({exc})", "image_url") from None
    timeout = httpx.Timeout(settings.remote_image_timeout_s)
    async with httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=timeout) as client:
        for _hop in range(settings.remote_image_max_redirects + 1):
            ip = await check_url(url, settings)
            try:
                response, data = await _get(client, url, ip, settings.max_image_bytes)
            except httpx.HTTPError as exc:
                raise invalid(f"image_url could not be fetched ({type(exc).__name__}: {exc})", "image_url") from None
            if response.is_redirect:
                location = response.headers.get("location", "")
                if not location:
                    raise invalid(f"image_url answered HTTP {response.status_code} without a Location", "image_url")
                url = url.join(location)
                continue
            if response.status_code != 200:
                raise invalid(f"image_url answered HTTP {response.status_code}", "image_url")
            return data
    raise invalid(f"image_url redirected more than {settings.remote_image_max_redirects} times", "image_url")
