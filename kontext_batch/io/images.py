"""Input image bytes: whether the API can take them, and the bytes it will accept.

Limits (BFL: "up to 20 MB or 20 megapixels"; read here in decimal units, the safe side):
``MAX_IMAGE_BYTES`` = 20,000,000 bytes and ``MAX_IMAGE_PIXELS`` = 20,000,000 pixels.

An image is *valid* when it decodes completely within those limits. CMYK, 16-bit, palette,
grey+alpha and EXIF-rotated images are valid: :func:`normalise_image` turns them into plain
8-bit RGB(A)/L PNG or JPEG, and returns every other image's bytes untouched (so digests stay stable).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from kontext_batch.errors import InvalidImage, ObjectTooLarge
from kontext_batch.io.netguard import FetchPolicy
from kontext_batch.io.read import read_url

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "ImageInfo",
    "inspect_image",
    "normalise_image",
    "read_image",
]

MAX_IMAGE_BYTES: Final = 20_000_000
MAX_IMAGE_PIXELS: Final = 20_000_000
_EXIF_ORIENTATION: Final = 0x0112
_KEEP_MODES: Final[dict[str, frozenset[str]]] = {
    "JPEG": frozenset({"L", "RGB"}),
    "PNG": frozenset({"L", "RGB", "RGBA"}),
    "WEBP": frozenset({"RGB", "RGBA"}),
}
_EXT: Final = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`inspect_image` found. ``sha256`` is of the bytes as given (hex)."""

    width: int
    height: int
    format: str
    mode: str
    megapixels: float
    sha256: str
    size_bytes: int = 0


def _open(data: bytes) -> Image.Image:
    """Open without decoding pixels; Pillow's own bomb guard is replaced by our 20 MP check."""
    # Pillow loads with the first image (~15 ms): not on the start of a CLI run of text-only rows.
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            raise InvalidImage(f"image is far over the {MAX_IMAGE_PIXELS / 1e6:g} MP limit") from None
        except UnidentifiedImageError:
            raise InvalidImage("not an image (no known image format)") from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise InvalidImage(f"not a readable image: {exc}") from None


def _load(im: Image.Image) -> None:
    from PIL import Image  # noqa: PLC0415 - loaded by _open already

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im.load()
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise InvalidImage(f"image is truncated or corrupt ({exc})") from None


def inspect_image(data: bytes) -> ImageInfo:
    """Check ``data`` is an image the API can take; raise InvalidImage saying why not.

    Refused: empty, over 20 MB, not an image, over 20 MP, or not fully decodable (truncated).
    """
    if not data:
        raise InvalidImage("file is empty (0 bytes)")
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidImage(f"{len(data) / 1e6:.1f} MB is over the {MAX_IMAGE_BYTES / 1e6:g} MB limit")
    im = _open(data)
    w, h = im.size
    if w * h > MAX_IMAGE_PIXELS:
        raise InvalidImage(f"{w}x{h} = {w * h / 1e6:.1f} MP is over the {MAX_IMAGE_PIXELS / 1e6:g} MP limit")
    if w == 0 or h == 0:
        raise InvalidImage(f"image has no pixels ({w}x{h})")
    fmt = "JPEG" if im.format == "MPO" else (im.format or "unknown")
    _load(im)  # decode every pixel: the only way to catch a truncated file
    return ImageInfo(w, h, fmt, im.mode, round(w * h / 1e6, 3), hashlib.sha256(data).hexdigest(), len(data))


def _is_16bit(im: Image.Image) -> bool:
    # Pillow reads 48/64-bit PNGs as 8-bit RGB(A); the tile's raw mode still says 16.
    return im.mode.startswith("I;16") or any(
        "16" in str(t.args[0] if isinstance(t.args, tuple) else t.args) for t in getattr(im, "tile", ())
    )


def _max_value(im: Image.Image) -> float:
    extrema = im.getextrema()
    return float(extrema[1]) if isinstance(extrema[1], int | float) else 255.0


def _to_8bit(im: Image.Image) -> Image.Image:  # noqa: PLR0911 - one refusal per way an image can be unusable
    if im.mode.startswith("I;16") or (im.mode == "I" and _max_value(im) > 255):
        return im.convert("I").point(lambda v: v * (1 / 257)).convert("L")
    if im.mode in ("I", "F"):
        return im.convert("L")
    if im.mode == "P":
        return im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("LA", "PA", "La", "RGBa"):
        return im.convert("RGBA")
    if im.mode == "1":
        return im.convert("L")
    if im.mode not in ("L", "RGB", "RGBA"):  # CMYK, YCbCr, LAB, HSV
        return im.convert("RGB")
    return im


def normalise_image(data: bytes) -> tuple[bytes, str]:
    """Bytes the API accepts, and their extension (``png``/``jpg``/``webp``).

    Returns ``data`` itself when it is already a plain 8-bit JPEG/PNG/WebP with no EXIF rotation.
    Otherwise applies the EXIF orientation, converts to 8-bit RGB(A)/L and re-encodes: photos
    (JPEG sources without alpha) as JPEG quality 95, the rest as PNG. Raises InvalidImage.
    """
    from PIL import ImageOps  # noqa: PLC0415 - loaded by _open already

    im = _open(data)
    fmt = "JPEG" if im.format == "MPO" else (im.format or "")
    sixteen = _is_16bit(im)  # before getexif(): reading a PNG's EXIF decodes it and drops the tile
    orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    animated = bool(getattr(im, "is_animated", False))
    if fmt in _KEEP_MODES and im.mode in _KEEP_MODES[fmt] and orientation in (0, 1) and not animated and not sixteen:
        return data, _EXT[fmt]
    _load(im)
    icc = im.info.get("icc_profile") if im.mode in ("RGB", "L", "RGBA") else None
    out = _to_8bit(ImageOps.exif_transpose(im) or im)
    buf = io.BytesIO()
    if fmt == "JPEG" and out.mode in ("RGB", "L"):
        out.save(buf, "JPEG", quality=95, icc_profile=icc)
        ext = "jpg"
    else:
        out.save(buf, "PNG", icc_profile=icc)
        ext = "png"
    result = buf.getvalue()
    if len(result) > MAX_IMAGE_BYTES:
        raise InvalidImage(f"converted image is {len(result) / 1e6:.1f} MB, over the 20 MB limit")
    return result, ext


def read_image(url: str, *, timeout_s: float = 30.0, fetch: FetchPolicy | None = None) -> bytes:
    """:func:`~kontext_batch.io.read.read_url` capped at ``MAX_IMAGE_BYTES``; too large is InvalidImage."""
    try:
        return read_url(url, timeout_s=timeout_s, max_bytes=MAX_IMAGE_BYTES, fetch=fetch)
    except ObjectTooLarge as exc:
        raise InvalidImage(f"{exc.size / 1e6:.1f} MB is over the {MAX_IMAGE_BYTES / 1e6:g} MB limit") from None
