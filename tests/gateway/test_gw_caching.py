"""ETag rules in isolation: tag format (with and without a snapshot version) and
If-None-Match matching (weak comparison, lists, ``*``), on a bare Starlette request."""

from __future__ import annotations

from starlette.requests import Request

from services.gateway.caching import conditional, make_etag


def _request(inm: str | None, method: str = "GET") -> Request:
    headers = [(b"if-none-match", inm.encode())] if inm is not None else []
    return Request({"type": "http", "method": method, "path": "/x", "headers": headers, "query_string": b""})


def test_tag_is_a_digest_of_the_bytes_and_carries_the_snapshot_when_known():
    assert make_etag(b"a", None) == make_etag(b"a", None) != make_etag(b"b", None)
    tagged = make_etag(b"a", 42)
    assert tagged.startswith('"42-') and tagged.endswith('"')
    r = conditional(_request(None), b"a", "application/json", 42)
    assert r.status_code == 200 and r.headers["x-snapshot-version"] == "42" and r.headers["etag"] == tagged


def test_if_none_match_rules():
    tag = make_etag(b"body", None)
    for header in (tag, f"W/{tag}", f'"other", {tag}', "*"):
        r = conditional(_request(header), b"body", "text/plain", None)
        assert r.status_code == 304 and r.body == b"" and r.headers["etag"] == tag
    for header in ('"other"', tag.strip('"'), ""):
        assert conditional(_request(header), b"body", "text/plain", None).status_code == 200
    assert conditional(_request(tag, method="POST"), b"body", "text/plain", None).status_code == 200
