"""The review page for a private bucket: ``gallery-presigned.html``, every link in it presigned.

The plain ``gallery.html`` links its images relative to the store's root, which works from a folder
or a public bucket; from a private one each image is a 403, even when the page itself was opened
through a presigned link (its relative links carry no signature). This page is the same page with
every image (outputs and staged inputs) and its results.csv link replaced by a presigned URL
(:mod:`kontext_batch.io.sign`), so one link, the page's own, is all a reviewer needs. Every link in it
expires with the page's: sign a new page (``gallery RUN --presign``) to extend it.
"""

from __future__ import annotations

from kontext_batch.coord.runs import RunStore
from kontext_batch.io.names import PRESIGNED_GALLERY_NAME, RESULTS_NAME, run_file
from kontext_batch.io.sign import Presigner
from kontext_batch.io.stores import ObjectStore
from kontext_batch.steps.gallery import HTML, render_gallery

__all__ = ["PRESIGNED_GALLERY_NAME", "put_presigned_gallery"]


def put_presigned_gallery(runs: RunStore, run_id: str, store: ObjectStore, expires_s: float) -> str:
    """Write ``gallery-presigned.html`` (the run's own rows, as ``runs/RUN_ID/gallery.html`` shows
    them) to the root of ``store`` with every link signed for ``expires_s`` seconds, its results
    link to the run's own results.csv; return the page's own presigned URL.

    Raises PresignRefused before anything is written when the store cannot sign or the duration is
    out of the backend's range; StorageError / StorageUnavailable when the store refuses the write.
    """
    signer = Presigner(store, expires_s)
    results = signer.link(run_file(run_id, RESULTS_NAME))
    page = render_gallery(runs, run_id, store.url, link=signer.link, results_href=results)
    store.put(PRESIGNED_GALLERY_NAME, page.encode("utf-8"), content_type=HTML)
    return signer.url(PRESIGNED_GALLERY_NAME)
