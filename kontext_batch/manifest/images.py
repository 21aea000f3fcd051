"""Input images of a manifest: where a row's image is, and whether it can be read and sent.

:func:`resolve_image_ref` turns a cell into an :class:`~kontext_batch.manifest.model.ImageRef`;
:func:`check_image` reads and inspects it (:mod:`kontext_batch.io.images` holds the API's limits),
once per source through an :class:`ImageCache`.
"""

from __future__ import annotations

import functools
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Final, TypeVar, cast
from urllib.parse import unquote, urlsplit

from kontext_batch.errors import InvalidImage, ObjectNotFound, RetryableError, StorageError, UrlRefused
from kontext_batch.io.images import ImageInfo, inspect_image, read_image
from kontext_batch.io.netguard import FetchPolicy
from kontext_batch.io.stores import CLOUD_SCHEMES
from kontext_batch.manifest.model import ImageRef

__all__ = [
    "REMOTE_SCHEMES",
    "ImageCache",
    "check_image",
    "describe_image_error",
    "resolve_image_ref",
    "source_key",
]

#: URL schemes an image cell may use besides a local path.
REMOTE_SCHEMES: Final = ("http", "https", "memory", *CLOUD_SCHEMES)
_SCHEME_RE: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")

T = TypeVar("T")


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
