"""ETag / If-None-Match for every GET answer built from a MatchGraph snapshot.

The tag is ``"<snapshot>-<render>-<digest>"``: the rank snapshot version the MatchGraph
reports with every answer, a token of this gateway's code and templates, and a digest of
the exact bytes sent. The digest alone already makes the tag change exactly when the
representation does; the version makes tags readable ("which snapshot am I looking at?")
and lets caches tell snapshots apart. A matching If-None-Match gets 304 with no body.

Revalidation without recomputing: when If-None-Match carries a tag of this gateway build,
``revalidate`` asks the MatchGraph for its current snapshot (``GetSnapshot``: no score is
computed) and answers 304 at once if the tag's snapshot is current and not stale, so a
search frontend polling a comparison page costs one cheap call, not a Compare. The
snapshot id names every number of an answer, and the rendering is this build's, so the
bytes would be the same. Routes whose answer depends on more than the snapshot (search:
the embedding service may come and go; pages that record the visit) skip it.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from services.gateway.upstream import MatchGraphAPI, UpstreamError

CACHE_CONTROL = "no-cache"  # always revalidate: ranks change as search data arrives
STALE_HEADER = "X-Snapshot-Stale-Seconds"


def _render_token() -> str:
    """A digest of the gateway's code, templates and stylesheet: another build renders other bytes."""
    here = Path(__file__).parent
    h = hashlib.blake2b(digest_size=4)
    for path in sorted([*here.glob("*.py"), *here.glob("templates/*"), *here.glob("static/*")]):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


RENDER = _render_token()
_TAG = re.compile(rf'^(?:W/)?"(\d+)-{RENDER}-[0-9a-f]+"$')


def make_etag(body: bytes, snapshot: int | None) -> str:
    digest = hashlib.blake2b(body, digest_size=10).hexdigest()
    return f'"{snapshot}-{RENDER}-{digest}"' if snapshot is not None else f'"{digest}"'


def snapshot_headers(snapshot: int | None, stale_seconds: float = 0.0) -> dict[str, str]:
    """Headers every snapshot answer carries; a stale one (from a lagging MatchGraph reader) says so."""
    out = {"Cache-Control": CACHE_CONTROL, "Vary": "Accept-Encoding, Origin"}
    if snapshot is not None:
        out["X-Snapshot-Version"] = str(snapshot)
    if stale_seconds > 0:
        out[STALE_HEADER] = f"{stale_seconds:.1f}"
    return out


async def revalidate(request: Request, api: MatchGraphAPI) -> Response | None:
    """304 when If-None-Match names the current snapshot in a tag of this build (see the module docstring);
    None when the full answer must be computed (no such tag, another snapshot, a stale one, an error)."""
    header = request.headers.get("if-none-match")
    if not header or request.method not in ("GET", "HEAD"):
        return None
    tags = [(tag, int(m.group(1))) for tag in (t.strip() for t in header.split(",")) if (m := _TAG.match(tag))]
    if not tags:
        return None
    try:
        snap = await api.snapshot()
    except (UpstreamError, AttributeError):  # the full call will report a real failure
        return None
    if snap.stale:
        return None
    for tag, version in tags:
        if version == snap.snapshot_version:
            return Response(status_code=304, headers={"ETag": tag.removeprefix("W/"),
                                                      **snapshot_headers(version)})
    return None


def _matches(header: str, etag: str) -> bool:
    """Weak comparison (RFC 9110 13.1.2): W/ prefixes are ignored; * matches anything."""
    bare = etag.removeprefix("W/")
    for candidate in header.split(","):
        c = candidate.strip()
        if c == "*" or c.removeprefix("W/") == bare:
            return True
    return False


def conditional(request: Request, body: bytes, media_type: str, snapshot: int | None,
                headers: dict[str, str] | None = None, stale_seconds: float = 0.0) -> Response:
    """200 with ETag, or 304 when the client already has these bytes."""
    etag = make_etag(body, snapshot)
    out = {"ETag": etag, **snapshot_headers(snapshot, stale_seconds)}
    if headers:
        out.update(headers)
    inm = request.headers.get("if-none-match")
    if inm and request.method in ("GET", "HEAD") and _matches(inm, etag):
        return Response(status_code=304, headers=out)
    return Response(content=body, media_type=media_type, headers=out)
