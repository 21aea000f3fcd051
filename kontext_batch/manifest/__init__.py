"""Manifests: read records (:mod:`.reader`; CSV, .xlsx and .parquet as tables, :mod:`.tables`) and
build rows from them (:mod:`.rows`), check images
(:mod:`.images`), validate and price (:mod:`.validate`), and stage input images into the output
store (:mod:`.staging`).

What a worker needs of an input image (its bytes, its payload) is :mod:`kontext_batch.io`: the steps a
job takes never import this package.

The format is documented in manifests/README.md.
"""

from kontext_batch.manifest.images import ImageCache
from kontext_batch.manifest.model import ImageRef, ManifestRow
from kontext_batch.manifest.reader import iter_manifest
from kontext_batch.manifest.rows import RowOutcome
from kontext_batch.manifest.staging import StagedImage, stage_image
from kontext_batch.manifest.validate import ValidationReport, render_report, validate_manifest

__all__ = [
    "ImageCache",
    "ImageRef",
    "ManifestRow",
    "RowOutcome",
    "StagedImage",
    "ValidationReport",
    "iter_manifest",
    "render_report",
    "stage_image",
    "validate_manifest",
]
