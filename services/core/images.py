"""Image decoding with limits, shared by both model servers.

Every image a client sends passes through ``decode_image``: it sniffs the real format
(never trusting the mime type), refuses decompression bombs *before* decoding pixels,
and returns RGB. Bad bytes become ``InvalidArgument`` with a message saying what to fix.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from common.errors import InvalidArgument

SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
DEFAULT_MAX_PIXELS = 4096 * 4096


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, field: str = "image") -> Image.Image:
    """Decode ``data`` into an RGB PIL image, or raise InvalidArgument explaining why not."""
    if not data:
        raise InvalidArgument(f"{field} is empty: send the bytes of a PNG, JPEG, WebP, BMP or GIF file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
            width, height = img.size  # header only: nothing decoded yet
            if width <= 0 or height <= 0:
                raise InvalidArgument(f"{field} has zero size")
            if width * height > max_pixels:
                raise InvalidArgument(
                    f"{field} is {width}x{height} = {width * height} pixels, over the limit of "
                    f"{max_pixels}; resize it before sending"
                )
            img.load()
    except InvalidArgument:
        raise
    except UnidentifiedImageError:
        raise InvalidArgument(
            f"{field} is not a decodable image; supported formats: {', '.join(SUPPORTED_FORMATS)}"
        ) from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise InvalidArgument(f"{field} is too large to decode safely (decompression bomb)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidArgument(
            f"{field} could not be decoded ({exc.__class__.__name__}: truncated or corrupt)") from None
    return img.convert("RGB")


def encode_png(img: Image.Image) -> bytes:
    """PNG-encode deterministically (no timestamps/metadata), so same pixels -> same bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()
