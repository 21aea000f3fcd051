"""Presigned links: an https URL that lets whoever holds it GET one object of a private store, until
it expires, with no credentials of their own.

obstore signs with the store's own credentials (the AWS_* or AZURE_* the process has), offline for
static keys. A link carries what the backend's scheme needs and no secret: an S3 link names the
access key id (``X-Amz-Credential``) and, with temporary credentials, their session token; an Azure
link is a SAS (``sv``, ``se``, ``sig``...). Anyone who has the link can read the object until then,
so the duration is the exposure.

=========  ========  ==========================================================================
store      longest   why
=========  ========  ==========================================================================
``s3://``  7 days    SigV4's ceiling: S3 refuses ``X-Amz-Expires`` over 604,800 s
``az://``  7 days    a user-delegation SAS's ceiling (an account-key SAS has none; one ceiling
                     for every backend keeps a forgotten link from outliving a week)
=========  ========  ==========================================================================

Refused (:class:`~kontext_batch.errors.PresignRefused`): a local folder, ``file://`` and
``memory://`` (nothing to sign: no server checks a signature), and ``gs://``: object_store signs GCS
links with a service account's private key or through IAM's signBlob API, and neither can be checked
against the GCS emulator the tests run, so gs:// links are not offered untested. On Azure, a name
that needs percent-encoding in the link (a space, ``%``, a non-ASCII character, in the name or the
store's prefix) is refused: Azurite answers obstore's SAS for it 403, a bad signature.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Final
from urllib.parse import unquote, urlsplit

import obstore
from obstore.exceptions import BaseError
from obstore.store import AzureStore, GCSStore, S3Store

from kontext_batch.errors import PresignRefused
from kontext_batch.io.names import check_object_name
from kontext_batch.io.stores import ObjectStore, split_scheme, translate_error

__all__ = ["MAX_PRESIGN_S", "SIGNING_SCHEMES", "Presigner"]

#: The longest a link may last, on every backend that signs (see the module table).
MAX_PRESIGN_S: Final = 7 * 86_400
#: What the refusal names as the stores that sign.
SIGNING_SCHEMES: Final = "s3:// or az://"


def _spoken(seconds: float) -> str:
    for unit, size in (("days", 86_400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:g} seconds"


class Presigner:
    """Signs GET links to objects of ``store``, each valid ``expires_s`` seconds from its signing.

    Raises :class:`PresignRefused` at construction, before anything is signed, when the store cannot
    sign or ``expires_s`` is under a second or over :data:`MAX_PRESIGN_S`.
    """

    def __init__(self, store: ObjectStore, expires_s: float) -> None:
        backend = store.backend
        if isinstance(backend, GCSStore):
            raise PresignRefused(
                f"cannot presign links into {store.url}: presigning signs {SIGNING_SCHEMES} stores, not gs:// yet",
                url=store.url,
            )
        if not isinstance(backend, S3Store | AzureStore):
            scheme = split_scheme(store.url)
            what = "a memory:// store" if scheme == "memory" else "a local folder"
            raise PresignRefused(
                f"cannot presign links into {store.url}: it is {what}; presigning needs an object store "
                f"({SIGNING_SCHEMES})",
                url=store.url,
            )
        if not 1 <= expires_s <= MAX_PRESIGN_S:
            raise PresignRefused(
                f"a presigned link lasts from 1 second to {MAX_PRESIGN_S // 86_400} days "
                f"(the longest {split_scheme(store.url)}:// allows), not {_spoken(expires_s)}",
                url=store.url,
            )
        self._store = store
        self._backend: S3Store | AzureStore = backend
        # Whole seconds: S3 and Azure put the expiry in the link as an integer.
        self.expires_in = timedelta(seconds=int(expires_s))

    def __repr__(self) -> str:
        return f"Presigner({self._store.url!r}, expires_in={self.expires_in})"

    def url(self, name: str) -> str:
        """The presigned GET URL of the object ``name`` (relative to the store's root)."""
        check_object_name(name)
        try:
            url = obstore.sign(self._backend, "GET", name, self.expires_in)
        except (BaseError, OSError) as exc:
            raise translate_error(exc, self._store.uri(name)) from exc
        path = urlsplit(url).path
        if isinstance(self._backend, AzureStore) and unquote(path) != path:
            # Measured: Azurite 3.35 refuses obstore 0.12's SAS for such a path as a bad signature, so
            # the link would be one more broken image. Refused whole, before the page is written.
            raise PresignRefused(
                f"cannot presign {self._store.uri(name)}: an Azure link to a name with a space, '%' or a "
                "non-ASCII character (in the store's prefix too) does not verify; rename it, or use s3://",
                url=self._store.url,
            )
        return url

    def link(self, href: str) -> str:
        """A page's link with the store's root as its base made absolute and signed: a relative
        (percent-encoded) link becomes the object's presigned URL; an absolute http(s) one is kept."""
        if href.startswith(("http://", "https://")):
            return href
        return self.url(unquote(href))
