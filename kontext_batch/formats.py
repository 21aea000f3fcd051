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


def conform_sample(data: bytes, wanted: str) -> tuple[bytes, str, str | None]:
    """Check that ``data`` decodes; transcode it to ``wanted`` when it is another format.

    Returns ``(bytes, content type, format transcoded from or None)``. Raises InvalidImage.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            got = (im.format or "").upper()
            if got == _PIL_FORMATS[wanted]:
                return data, CONTENT_TYPES[wanted], None
            out = io.BytesIO()
            im.save(out, format=_PIL_FORMATS[wanted], **({"lossless": True} if wanted == "webp" else {}))
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad data; all mean the same here
        raise InvalidImage(f"sample is not a decodable image ({len(data)} bytes): {exc}") from None
    return out.getvalue(), CONTENT_TYPES[wanted], got.lower()
