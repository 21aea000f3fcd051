"""Put a run's input images where workers can read them (at enqueue time).

================  ================================================================================
source            staged as
================  ================================================================================
local file        normalised (:func:`~kontext_batch.io.images.normalise_image`), uploaded once, content-addressed,
                  to ``_inputs/<sha256>.<ext>`` in the run's output store (``put_if_absent``: a
                  re-run or a second row with the same image uploads nothing)
http(s) URL       passed through: the API fetches it; ``sha256`` known if the validator fetched it
s3/gs/az/memory   passed through: a worker reads it with :func:`~kontext_batch.io.read.read_url`
================  ================================================================================

Workers turn a staged URI into an API payload with :func:`kontext_batch.io.payload.load_image_payload`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from kontext_batch.io.images import ImageInfo, normalise_image, read_image
from kontext_batch.io.names import INPUTS_FOLDER
from kontext_batch.io.stores import ObjectStore
from kontext_batch.manifest.images import ImageCache, check_image, source_key
from kontext_batch.manifest.model import ImageRef

__all__ = [
    "CONTENT_TYPES",
    "StageCache",
    "StagedImage",
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


def stage_image(
    ref: ImageRef, store: ObjectStore, cache: ImageCache, *, timeout_s: float = 30.0, upload: bool = True
) -> StagedImage:
    """Stage one input image (see the module table). Each local source is staged once per store.

    ``upload=False`` only says where it would be staged, uploading nothing (``validate`` deciding
    which rows a run would skip). Raises InvalidImage or ObjectNotFound for a bad local file,
    StorageError/StorageUnavailable when the upload fails.
    """
    if not ref.is_local:
        info = cache.peek(("info", *source_key(ref)))
        return StagedImage(ref.ref, info.sha256 if isinstance(info, ImageInfo) else "")

    def compute() -> StagedImage:
        check_image(ref, cache, timeout_s=timeout_s)  # cached when the validator saw it
        data, ext = normalise_image(read_image(ref.ref, timeout_s=timeout_s))
        digest = hashlib.sha256(data).hexdigest()
        name = f"{INPUTS_FOLDER}/{digest}.{ext}"
        if upload:
            store.put_if_absent(name, data, content_type=CONTENT_TYPES.get(ext))
        return StagedImage(store.uri(name), digest)

    return cache.memo(("staged" if upload else "planned", store.url, *source_key(ref)), compute)
