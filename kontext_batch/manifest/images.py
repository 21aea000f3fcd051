"""Input images: where a row's image is, whether the API can take it, and bytes it will accept.

Limits (BFL: "up to 20 MB or 20 megapixels"; read here in decimal units, the safe side):
``MAX_IMAGE_BYTES`` = 20,000,000 bytes and ``MAX_IMAGE_PIXELS`` = 20,000,000 pixels.

An image is *valid* when it decodes completely within those limits. CMYK, 16-bit, palette,
grey+alpha and EXIF-rotated images are valid: :func:`normalise_image` turns them into plain
8-bit RGB(A)/L PNG or JPEG, and returns every other image's bytes untouched (so digests stay stable).
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar, cast
from urllib.parse import unquote, urlsplit

from PIL import Image, ImageOps, UnidentifiedImageError

from kontext_batch.errors import InvalidImage, ObjectNotFound, ObjectTooLarge, RetryableError, StorageError, UrlRefused
from kontext_batch.io.netguard import FetchPolicy
from kontext_batch.io.read import read_url
from kontext_batch.io.stores import CLOUD_SCHEMES
from kontext_batch.manifest.model import ImageRef

__all__ = [
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "REMOTE_SCHEMES",
    "ImageCache",
    "ImageInfo",
    "check_image",
    "describe_image_error",
    "inspect_image",
    "normalise_image",
    "read_image",
    "resolve_image_ref",
    "source_key",
]

MAX_IMAGE_BYTES: Final = 20_000_000
MAX_IMAGE_PIXELS: Final = 20_000_000
#: URL schemes an image cell may use besides a local path.
REMOTE_SCHEMES: Final = ("http", "https", "memory", *CLOUD_SCHEMES)
_EXIF_ORIENTATION: Final = 0x0112
_KEEP_MODES: Final[dict[str, frozenset[str]]] = {
    "JPEG": frozenset({"L", "RGB"}),
    "PNG": frozenset({"L", "RGB", "RGBA"}),
    "WEBP": frozenset({"RGB", "RGBA"}),
}
_EXT: Final = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
_SCHEME_RE: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")

T = TypeVar("T")


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


# A 100,000-row manifest names a few images many times; Path.resolve() per cell was 40 % of enqueue.
@functools.lru_cache(maxsize=4096)
def resolve_image_ref(value: str, field: str, base_dir: Path, inputs_root: Path | None = None) -> ImageRef:
    """Turn an image cell into an :class:`ImageRef`; raise ValueError saying why it cannot be one.

    Local paths are taken relative to ``base_dir`` (the manifest's folder); ``file://`` URLs become
    local paths; http(s)://, s3://, gs://, az:// and memory:// URLs are kept as written. With
    ``inputs_root``, a local path must lie inside that folder once symlinks are resolved. An
    object-store URL may not carry a query string: a cell must not choose the endpoint (and so
    where the operator's credentials are sent); that is the operator's, through the environment.
    """
    v = value.strip()
    m = _SCHEME_RE.match(v)
    scheme = m.group(1).lower() if m else ""
    if len(scheme) == 1:  # a Windows drive letter, C:\..., is a path
        scheme = ""
    if scheme == "data":
        raise ValueError("inline data: URIs are not supported; save the image as a file and give its path")
    if scheme == "file":
        return ImageRef(field, _confined(Path(unquote(urlsplit(v).path)).resolve(), inputs_root), True)
    if scheme in REMOTE_SCHEMES:
        if not v.lower().startswith(f"{scheme}://") or len(v) <= len(scheme) + 3:
            raise ValueError(f"malformed URL {v!r}")
        if scheme not in ("http", "https") and "?" in v:
            raise ValueError(
                f"an object-store URL in a manifest may not carry a query string ({v.partition('?')[0]}?...): "
                "the endpoint and credentials come from the environment (AWS_ENDPOINT_URL...), not from a cell"
            )
        return ImageRef(field, v, False)
    if scheme and "://" in v:
        raise ValueError(f"unsupported URL scheme {scheme!r} in {v!r}: use a file path or an http(s), s3, gs, az URL")
    path = Path(v).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    return ImageRef(field, _confined(path.resolve(), inputs_root), True)


def _confined(path: Path, inputs_root: Path | None) -> str:
    """``path`` (already resolved) as a string; ValueError when it lies outside ``inputs_root``."""
    if inputs_root is not None:
        root = inputs_root.resolve()
        if not path.is_relative_to(root):
            raise ValueError(f"{path} is outside the inputs folder {root}; only images under it may be read")
    return str(path)


def _open(data: bytes) -> Image.Image:
    """Open without decoding pixels; Pillow's own bomb guard is replaced by our 20 MP check."""
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


def _to_8bit(im: Image.Image) -> Image.Image:
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


# --- the cache -----------------------------------------------------------------------------------


class ImageCache:
    """A thread-safe memo keyed by image source, so one file used by 100,000 rows is read once.

    Results *and* permanent failures are kept (a missing file stays missing for the run);
    retryable failures are not. Concurrent callers for one key wait for the first one.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self._max = max_entries
        self._done: OrderedDict[Hashable, tuple[bool, object]] = OrderedDict()
        self._inflight: dict[Hashable, threading.Event] = {}
        self._lock = threading.Lock()

    def peek(self, key: Hashable) -> object | None:
        """The cached value for ``key`` (not a cached failure), or None."""
        with self._lock:
            hit = self._done.get(key)
        return hit[1] if hit and hit[0] else None

    def memo(self, key: Hashable, compute: Callable[[], T]) -> T:
        while True:
            with self._lock:
                hit = self._done.get(key)
                if hit is not None:
                    self._done.move_to_end(key)
                    ok, value = hit
                    if ok:
                        return cast(T, value)
                    raise cast(BaseException, value)
                waiter = self._inflight.get(key)
                if waiter is None:
                    self._inflight[key] = threading.Event()
                    break
            waiter.wait()
        try:
            result = compute()
        except (InvalidImage, StorageError, UrlRefused, FileNotFoundError) as exc:
            self._store(key, (False, exc))
            raise
        except BaseException:
            self._finish(key)
            raise
        self._store(key, (True, result))
        return result

    def _store(self, key: Hashable, entry: tuple[bool, object]) -> None:
        with self._lock:
            self._done[key] = entry
            while len(self._done) > self._max:
                self._done.popitem(last=False)
        self._finish(key)

    def _finish(self, key: Hashable) -> None:
        with self._lock:
            event = self._inflight.pop(key, None)
        if event is not None:
            event.set()


def source_key(ref: ImageRef) -> tuple[str, ...]:
    """Cache key: a local file by path, size and mtime (an edited file is a new key); a URL as is.

    Raises ObjectNotFound when a local file does not exist.
    """
    if not ref.is_local:
        return ("url", ref.ref)
    try:
        st = Path(ref.ref).stat()
    except (FileNotFoundError, NotADirectoryError):
        raise ObjectNotFound(ref.ref) from None
    return ("file", ref.ref, str(st.st_size), str(st.st_mtime_ns))


def read_image(url: str, *, timeout_s: float = 30.0, fetch: FetchPolicy | None = None) -> bytes:
    """:func:`~kontext_batch.io.read.read_url` capped at ``MAX_IMAGE_BYTES``; too large is InvalidImage."""
    try:
        return read_url(url, timeout_s=timeout_s, max_bytes=MAX_IMAGE_BYTES, fetch=fetch)
    except ObjectTooLarge as exc:
        raise InvalidImage(f"{exc.size / 1e6:.1f} MB is over the {MAX_IMAGE_BYTES / 1e6:g} MB limit") from None


def check_image(
    ref: ImageRef, cache: ImageCache, *, timeout_s: float = 30.0, fetch: FetchPolicy | None = None
) -> ImageInfo:
    """Read and inspect the image ``ref`` names, once per source. Raises InvalidImage,
    ObjectNotFound, StorageError, UrlRefused or StorageUnavailable; :func:`describe_image_error`
    words them. ``fetch`` governs http(s) URLs (default: private addresses refused)."""
    return cache.memo(
        ("info", *source_key(ref)), lambda: inspect_image(read_image(ref.ref, timeout_s=timeout_s, fetch=fetch))
    )


def describe_image_error(ref: ImageRef, exc: BaseException) -> str:
    """A one-line message for a row error about ``ref`` (storage errors already name their URL)."""
    if isinstance(exc, FileNotFoundError):
        return f"file not found: {ref.ref}" if ref.is_local else f"not found: {ref.ref}"
    if isinstance(exc, InvalidImage):
        return f"{ref.ref}: {exc}"
    if isinstance(exc, UrlRefused):
        return f"refused: {exc}"
    if isinstance(exc, RetryableError):
        return f"unreachable: {exc}"
    return f"cannot read: {exc}"
