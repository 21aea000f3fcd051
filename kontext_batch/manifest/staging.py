"""Put a run's input images where workers can read them, and turn them into API payloads.

================  ================================================================================
source            staged as
================  ================================================================================
local file        normalised (:func:`~.images.normalise_image`), uploaded once, content-addressed,
                  to ``_inputs/<sha256>.<ext>`` in the run's output store (``put_if_absent``: a
                  re-run or a second row with the same image uploads nothing)
http(s) URL       passed through: the API fetches it; ``sha256`` known if the validator fetched it
s3/gs/az/memory   passed through: a worker reads it with :func:`~kontext_batch.io.read.read_url`
================  ================================================================================

Workers call :func:`load_image_payload` on a staged URI: http(s) URLs go to the API as they are,
anything else is read, normalised (a no-op for staged images) and sent as bare base64.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from kontext_batch.io.names import INPUTS_FOLDER
from kontext_batch.io.stores import ObjectStore
from kontext_batch.manifest.images import (
    ImageCache,
    ImageInfo,
    check_image,
    normalise_image,
    read_image,
    source_key,
)
from kontext_batch.manifest.model import ImageRef

__all__ = [
    "CONTENT_TYPES",
    "PayloadCache",
    "StageCache",
    "StagedImage",
    "load_image_payload",
    "stage_image",
]

CONTENT_TYPES: Final = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}
#: The cache :func:`stage_image` takes: the validator's :class:`~.images.ImageCache` (pass the same one
#: to both, and staging reuses what validation read).
StageCache = ImageCache


@dataclass(frozen=True)
class StagedImage:
    """Where a worker finds one input image; ``sha256`` (hex) when its bytes were seen, else ``""``."""

    uri: str
    sha256: str


def stage_image(ref: ImageRef, store: ObjectStore, cache: ImageCache, *, timeout_s: float = 30.0) -> StagedImage:
    """Stage one input image (see the module table). Each local source is staged once per store.

    Raises InvalidImage or ObjectNotFound for a bad local file, StorageError/StorageUnavailable
    when the upload fails.
    """
    if not ref.is_local:
        info = cache.peek(("info", *source_key(ref)))
        return StagedImage(ref.ref, info.sha256 if isinstance(info, ImageInfo) else "")

    def compute() -> StagedImage:
        check_image(ref, cache, timeout_s=timeout_s)  # cached when the validator saw it
        data, ext = normalise_image(read_image(ref.ref, timeout_s=timeout_s))
        digest = hashlib.sha256(data).hexdigest()
        name = f"{INPUTS_FOLDER}/{digest}.{ext}"
        store.put_if_absent(name, data, content_type=CONTENT_TYPES.get(ext))
        return StagedImage(store.uri(name), digest)

    return cache.memo(("staged", store.url, *source_key(ref)), compute)


class PayloadCache:
    """A byte-bounded LRU of base64 payloads, for URIs whose content cannot change.

    Only content-addressed staged images (``.../_inputs/<sha256>.<ext>``) are cached, so one
    image shared by many rows is read from the store once per worker process.
    """

    def __init__(self, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, str] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    @staticmethod
    def cacheable(uri: str) -> bool:
        return f"/{INPUTS_FOLDER}/" in uri.partition("?")[0]

    def get(self, uri: str) -> str | None:
        with self._lock:
            value = self._items.get(uri)
            if value is not None:
                self._items.move_to_end(uri)
            return value

    def put(self, uri: str, payload: str) -> None:
        if len(payload) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(uri, None)
            self._size -= len(old) if old is not None else 0
            self._items[uri] = payload
            self._size += len(payload)
            while self._size > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._size -= len(dropped)


def load_image_payload(uri: str, *, timeout_s: float = 30.0, cache: PayloadCache | None = None) -> str:
    """What to put in an ``input_image`` field for a staged ``uri``: an http(s) URL as is,
    otherwise the image's bytes (normalised) as bare base64 with no ``data:`` prefix.

    Raises ObjectNotFound, InvalidImage, StorageError or StorageUnavailable (retryable).
    """
    if uri.lower().startswith(("http://", "https://")):
        return uri
    use_cache = cache is not None and PayloadCache.cacheable(uri)
    if use_cache and cache is not None:
        hit = cache.get(uri)
        if hit is not None:
            return hit
    data = read_image(uri, timeout_s=timeout_s)
    payload = base64.b64encode(normalise_image(data)[0]).decode("ascii")
    if use_cache and cache is not None:
        cache.put(uri, payload)
    return payload
