"""The OpenAPI document: FastAPI's, plus what the gateway does outside the route functions.

Error bodies are declared as ``application/problem+json`` (what is sent), and every
/api GET documents If-None-Match, the ETag header and 304 (handled in caching.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

NOT_CACHED = ("/api/v1/search",)  # every search creates a match record: no ETag


def _document_caching(op: dict[str, Any]) -> None:
    """ETag on 200, If-None-Match, and 304: handled in caching.py for every /api GET."""
    op.setdefault("parameters", []).append({
        "name": "If-None-Match", "in": "header", "required": False,
        "description": "ETag(s) from an earlier answer; a match gives 304 Not Modified with no body.",
        "schema": {"type": "string"}})
    op["responses"]["200"]["headers"] = {
        "ETag": {"description": "Tag of this representation (changes whenever any number in it does).",
                 "schema": {"type": "string"}},
        "Cache-Control": {"description": "Always `no-cache`: revalidate with If-None-Match.",
                          "schema": {"type": "string"}}}
    op["responses"]["304"] = {"description": "Not Modified: the If-None-Match tag still matches; no body.",
                              "headers": {"ETag": {"schema": {"type": "string"}}}}


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with error bodies declared as application/problem+json (what is sent)."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, summary=app.summary, description=app.description,
                      routes=app.routes)
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            if path.startswith("/api/") and method == "get" and path not in NOT_CACHED:
                _document_caching(op)
            for status, resp in op.get("responses", {}).items():
                content = resp.get("content", {})
                if status[0] in "45" and "application/json" in content and "Problem" in str(content):
                    resp["content"] = {"application/problem+json": content["application/json"]}
    schemas = doc.get("components", {}).get("schemas", {})
    text = str(doc["paths"])
    for unused in ("HTTPValidationError", "ValidationError"):
        if unused in schemas and unused not in text:
            del schemas[unused]
    app.openapi_schema = doc
    return doc
