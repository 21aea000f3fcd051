"""What a worker puts in a request's ``input_image`` fields: the payload of a staged image URI.

http(s) URLs go to the API as they are (it fetches them); anything else (a staged
``_inputs/<sha256>.<ext>`` object, an s3/gs/az/memory URL) is read, normalised (a no-op for staged
images) and sent as bare base64. Staging itself happens at enqueue time
(:mod:`kontext_batch.manifest.staging`).
"""

from __future__ import annotations

import base64
import threading
from collections import OrderedDict

from kontext_batch.io.images import normalise_image, read_image
from kontext_batch.io.names import INPUTS_FOLDER

__all__ = ["PayloadCache", "load_image_payload"]


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
