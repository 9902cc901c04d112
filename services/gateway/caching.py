"""ETag / If-None-Match for every GET answer built from a MatchGraph snapshot.

The tag is ``"<snapshot>-<digest>"``: the rank snapshot version the MatchGraph
reports with every answer, plus a digest of the exact bytes sent. The digest alone already makes the tag change exactly
when the representation does; the version makes tags readable ("which snapshot am I
looking at?") and lets caches tell snapshots apart. A matching If-None-Match gets
304 with no body, so a search frontend polling a comparison page pays only for the
gRPC call, not for re-downloading the page.
"""

from __future__ import annotations

import hashlib

from starlette.requests import Request
from starlette.responses import Response

CACHE_CONTROL = "no-cache"  # always revalidate: ranks change as search data arrives


def make_etag(body: bytes, snapshot: int | None) -> str:
    digest = hashlib.blake2b(body, digest_size=10).hexdigest()
    return f'"{snapshot}-{digest}"' if snapshot is not None else f'"{digest}"'


def _matches(header: str, etag: str) -> bool:
    """Weak comparison (RFC 9110 13.1.2): W/ prefixes are ignored; * matches anything."""
    bare = etag.removeprefix("W/")
    for candidate in header.split(","):
        c = candidate.strip()
        if c == "*" or c.removeprefix("W/") == bare:
            return True
    return False


def conditional(request: Request, body: bytes, media_type: str, snapshot: int | None,
                headers: dict[str, str] | None = None) -> Response:
    """200 with ETag, or 304 when the client already has these bytes."""
    etag = make_etag(body, snapshot)
    out = {"ETag": etag, "Cache-Control": CACHE_CONTROL, "Vary": "Accept-Encoding, Origin"}
    if snapshot is not None:
        out["X-Snapshot-Version"] = str(snapshot)
    if headers:
        out.update(headers)
    inm = request.headers.get("if-none-match")
    if inm and request.method in ("GET", "HEAD") and _matches(inm, etag):
        return Response(status_code=304, headers=out)
    return Response(content=body, media_type=media_type, headers=out)
