"""Object names: which names a store accepts, and the layout a run writes into its output store.

name                        what it is
==========================  ==========================================================================
``<output_name>``           one row's output image, named by the manifest's template
``<output_name>.json``      its sidecar (:data:`SIDECAR_SUFFIX`): what was asked, what came back
``results.csv``             the run's results file (:data:`RESULTS_NAME`)
``gallery.html``            the run's review page (:data:`GALLERY_NAME`)
``gallery-presigned.html``  the same page for a private bucket, every link presigned
                            (:data:`PRESIGNED_GALLERY_NAME`; only ``gallery --presign`` writes it)
``_inputs/<sha256>.<ext>``  a staged input image, content-addressed (:data:`INPUTS_FOLDER`)
==========================  ==========================================================================
=======
===============================  =====================================================================
name                             what it is
===============================  =====================================================================
``<output_name>``                one row's output image, named by the manifest's template
``<output_name>.json``           its sidecar (:data:`SIDECAR_SUFFIX`): what was asked, what came back
``results.csv``                  the newest line of every row at this output, whichever run wrote it
                                 (:data:`RESULTS_NAME`; merged by :mod:`kontext_batch.steps.ledger`)
``gallery.html``                 the review page of those lines (:data:`GALLERY_NAME`)
``gallery-presigned.html``       the run's review page for a private bucket, every link presigned
                                 (:data:`PRESIGNED_GALLERY_NAME`; only ``gallery --presign`` writes it)
``runs/<run_id>/results.csv``    exactly what one run did and spent (:func:`run_file`)
``runs/<run_id>/gallery.html``   that run's review page
``runs/<run_id>/<output_name>``  a retried row's output when a later run has made ``<output_name>``
                                 since (kontext_batch.steps.store), with its sidecar
``_inputs/<sha256>.<ext>``       a staged input image, content-addressed (:data:`INPUTS_FOLDER`)
===============================  =====================================================================

No output may be one of :data:`RESERVED_NAMES` or lie inside one.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

__all__ = [
    "GALLERY_NAME",
    "INPUTS_FOLDER",
    "MAX_FILE_NAME_BYTES",
    "MAX_NAME_BYTES",
    "MAX_SEGMENT_BYTES",
    "PRESIGNED_GALLERY_NAME",
    "RESERVED_NAMES",
    "RESULTS_NAME",
    "RUNS_FOLDER",
    "SIDECAR_SUFFIX",
    "check_object_name",
    "run_file",
]

MAX_NAME_BYTES: Final = 1024  # S3's key limit; the strictest of the backends
MAX_SEGMENT_BYTES: Final = 255  # a file or folder name on ext4, APFS, NTFS (in UTF-16 units there)
# A local write stages the file as ``NAME#N`` beside it (N counts up from 1); leave room for "#NN".
MAX_FILE_NAME_BYTES: Final = MAX_SEGMENT_BYTES - 3
#: Top-level folder of the output store that holds staged input images; no output may be named in it.
INPUTS_FOLDER: Final = "_inputs"
#: The run's results file, at the store's root (kontext_batch.steps.results writes it).
RESULTS_NAME: Final = "results.csv"
#: The run's review page, beside the results file.
GALLERY_NAME: Final = "gallery.html"
#: The review page whose links are presigned, beside the plain one (kontext_batch.steps.presigned).
PRESIGNED_GALLERY_NAME: Final = "gallery-presigned.html"
#: Top-level folder of each run's own results file and review page (``runs/<run_id>/``).
RUNS_FOLDER: Final = "runs"
#: Top-level names the run writes itself; no output may be one of them or inside one.
RESERVED_NAMES: Final = (RESULTS_NAME, GALLERY_NAME, PRESIGNED_GALLERY_NAME, INPUTS_FOLDER, RUNS_FOLDER)
#: Every output ``NAME`` has a sidecar ``NAME + SIDECAR_SUFFIX`` beside it (kontext_batch.jobspec).
SIDECAR_SUFFIX: Final = ".json"
_BAD_CHARS_RE: Final = re.compile(r"[\x00-\x1f\x7f\\#?]")
# Invisible characters that make one name look like another (U+202E shows "gnp.exe" as "exe.png").
_BAD_CATEGORIES: Final = frozenset({"Cc", "Cf", "Zl", "Zp"})


def run_file(run_id: str, name: str) -> str:
    """Where one run keeps its own copy of ``name`` (:data:`RESULTS_NAME`, :data:`GALLERY_NAME`)."""
    return f"{RUNS_FOLDER}/{run_id}/{name}"


def check_object_name(name: str) -> str:  # noqa: C901 - one check per way a name can be unsafe, in the order users read them
    """Return ``name`` if it is a safe relative object name; raise ValueError saying why not.

    Refused: empty names, absolute paths, ``..`` or ``.`` segments, empty segments (``a//b``, a
    trailing ``/``), backslashes, ``#`` and ``?`` (they break URIs and obstore's local staging
    files), control and format characters (Unicode Cc and Cf: bidi overrides and isolates,
    zero-width characters; and the line and paragraph separators), names over 1024 UTF-8 bytes,
    folder names over 255 bytes and file names (the last segment) over 252 bytes.
    """
    if not name:
        raise ValueError("object name is empty")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise ValueError(f"object name must be relative, got {name!r}")
    bad = _BAD_CHARS_RE.search(name)
    if bad:
        raise ValueError(f"object name must not contain {bad.group()!r}: {name!r}")
    if not name.isprintable():  # C-speed pre-check: every refused category is non-printable
        for ch in name:
            if unicodedata.category(ch) in _BAD_CATEGORIES:
                raise ValueError(
                    f"object name must not contain the invisible character U+{ord(ch):04X} "
                    f"({unicodedata.name(ch, 'control')}): {name!r}"
                )
    size = len(name.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        raise ValueError(f"object name is longer than {MAX_NAME_BYTES} bytes")
    segments = name.split("/")
    for i, seg in enumerate(segments, start=1):
        if seg == "":
            raise ValueError(f"object name has an empty path segment: {name!r}")
        if seg in (".", ".."):
            raise ValueError(f"object name must not contain {seg!r} segments: {name!r}")
        if size <= MAX_FILE_NAME_BYTES:
            continue  # no segment can be too long (the common case: no encoding per segment)
        limit = MAX_FILE_NAME_BYTES if i == len(segments) else MAX_SEGMENT_BYTES
        seg_size = len(seg.encode("utf-8"))
        if seg_size > limit:
            what = "file name" if i == len(segments) else "folder name"
            raise ValueError(f"{what} {seg[:20]!r}... is {seg_size} bytes, more than the {limit} allowed")
    return name
