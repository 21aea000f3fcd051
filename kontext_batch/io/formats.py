"""Output formats: ask a provider for one it offers, and hand the user the one the row asked for.

The reseller offers jpeg and png only. A row that wants webp from it is asked for as png and
transcoded here after download, so the manifest means the same with either provider.
"""

from __future__ import annotations

import io
from collections.abc import Collection
from typing import Final

from PIL import Image

from kontext_batch.errors import InvalidImage

__all__ = ["CONTENT_TYPES", "conform_sample", "request_format"]

CONTENT_TYPES: Final = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
_PIL_FORMATS: Final = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}


def request_format(wanted: str, offered: Collection[str]) -> str:
    """The format to ask the provider for: ``wanted`` when it offers it, else lossless png."""
    return wanted if wanted in offered else "png"


def _check_whole(im: Image.Image, data: bytes) -> None:
    """Cheap checks that the image is all there: a PNG's chunk CRCs, a JPEG's end-of-image marker."""
    if im.format == "PNG":
        im.verify()
    elif im.format == "JPEG" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise ValueError("JPEG without its end-of-image marker (truncated)")
    elif im.format not in ("PNG", "JPEG"):
        im.load()


def conform_sample(data: bytes, wanted: str) -> tuple[bytes, str, str | None]:
    """Check that ``data`` decodes; transcode it to ``wanted`` when it is another format.

    Returns ``(bytes, content type, format transcoded from or None)``. Raises InvalidImage.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            got = (im.format or "").upper()
            if got == _PIL_FORMATS[wanted]:
                # Already what was asked: the header is enough (decoding a 1 MP sample is ~5 ms of
                # CPU a job); a truncated body still fails here.
                _check_whole(im, data)
                return data, CONTENT_TYPES[wanted], None
            im.load()
            out = io.BytesIO()
            im.save(out, format=_PIL_FORMATS[wanted], **({"lossless": True} if wanted == "webp" else {}))
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad data; all mean the same here
        raise InvalidImage(f"sample is not a decodable image ({len(data)} bytes): {exc}") from None
    return out.getvalue(), CONTENT_TYPES[wanted], got.lower()
