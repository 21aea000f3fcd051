"""Manifests: read records (:mod:`.reader`) and build rows from them (:mod:`.rows`), check images
(:mod:`.images`), validate and price (:mod:`.validate`), and stage input images into the output
store (:mod:`.staging`).

The format is documented in manifests/README.md.
"""

from kontext_batch.manifest.images import ImageCache, ImageInfo, inspect_image, normalise_image
from kontext_batch.manifest.model import ImageRef, ManifestRow
from kontext_batch.manifest.reader import iter_manifest
from kontext_batch.manifest.rows import RowOutcome
from kontext_batch.manifest.staging import StagedImage, load_image_payload, stage_image
from kontext_batch.manifest.validate import ValidationReport, render_report, validate_manifest

__all__ = [
    "ImageCache",
    "ImageInfo",
    "ImageRef",
    "ManifestRow",
    "RowOutcome",
    "StagedImage",
    "ValidationReport",
    "inspect_image",
    "iter_manifest",
    "load_image_payload",
    "normalise_image",
    "render_report",
    "stage_image",
    "validate_manifest",
]
