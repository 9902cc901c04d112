"""Images as clients send them: ``data:`` URLs (base64), http(s) URLs when allowed, and plain base64
strings where a JSON field holds an image (control and reference images).

The bytes are passed to the services untouched: they sniff the real format and check the
pixel limit themselves (their message comes back as the 400). Here only the size in bytes
is bounded (413), before anything is decoded or fetched further.
"""

from __future__ import annotations

import base64
import binascii

from services.openai.errors import APIError, invalid
from services.openai.remote import fetch_image
from services.openai.settings import Settings


def _too_large(size: int, limit: int, param: str) -> APIError:
    return APIError(413, f"{param} is {size} bytes, over this server's limit of {limit} bytes per image",
                    param=param, code="image_too_large")


def decode_data_url(url: str, limit: int, param: str) -> bytes:
    """The bytes of ``data:[<mime>][;base64],<data>`` (base64 only: images are binary)."""
    header, sep, payload = url.partition(",")
    if not sep or not header.lower().startswith("data:"):
        raise invalid(f"{param} is not a data: URL (expected data:image/png;base64,...)", param)
    if not header.lower().endswith(";base64"):
        raise invalid(f"{param} must be base64-encoded (data:image/png;base64,...)", param)
    if len(payload) * 3 // 4 > limit + 3:  # checked before decoding anything
        raise _too_large(len(payload) * 3 // 4, limit, param)
    try:
        data = base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"{param} holds invalid base64", param) from None
    if len(data) > limit:
        raise _too_large(len(data), limit, param)
    if not data:
        raise invalid(f"{param} is empty", param)
    return data


async def image_bytes(url: str, settings: Settings, param: str) -> bytes:
    """The image an ``image_url`` names: a data: URL, or an http(s) URL fetched under the SSRF guard."""
    text = url.strip()
    scheme = text.split(":", 1)[0].lower() if ":" in text else ""
    if scheme == "data":
        return decode_data_url(text, settings.max_image_bytes, param)
    if scheme in ("http", "https"):
        if not settings.allow_remote_images:
            raise invalid(f"{param}: this server does not fetch remote images (allow_remote_images is off); "
                          "send the image inline as a data: URL (data:image/png;base64,...)", param,
                          code="image_url_forbidden")
        return await fetch_image(text, settings)
    raise invalid(f"{param} must be a data: URL (data:image/png;base64,...)"
                  f"{' or an http(s) URL' if settings.allow_remote_images else ''}", param)


async def inline_image(text: str, settings: Settings, param: str) -> bytes:
    """An image given as a JSON string: a data: URL, an http(s) URL (as ``image_bytes``), or plain base64."""
    stripped = text.strip()
    if stripped.split(":", 1)[0].lower() in ("data", "http", "https"):
        return await image_bytes(stripped, settings, param)
    if len(stripped) * 3 // 4 > settings.max_image_bytes + 3:
        raise _too_large(len(stripped) * 3 // 4, settings.max_image_bytes, param)
    try:
        data = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"{param} must be a data: URL (data:image/png;base64,...), plain base64"
                      f"{' or an http(s) URL' if settings.allow_remote_images else ''}", param) from None
    return upload_bytes(data, settings.max_image_bytes, param)


def upload_bytes(data: bytes, limit: int, param: str) -> bytes:
    """An uploaded file (multipart), size-checked."""
    if len(data) > limit:
        raise _too_large(len(data), limit, param)
    if not data:
        raise invalid(f"{param} is empty", param)
    return data
