"""The object stores behind every output URL, built on obstore: one small interface over local
folders, memory, S3, GCS and Azure.

=====================================  =====================================================
URL                                    store
=====================================  =====================================================
``./output``, ``/abs/dir``             local folder (created); relative to ``base_dir``
``file:///abs/dir``                    local folder (created)
``s3://bucket[/prefix]``               S3 or S3-compatible (MinIO, moto); endpoint from
                                       ``?endpoint=http://host:port``, else AWS_ENDPOINT_URL_S3,
                                       AWS_ENDPOINT_URL; credentials/region from AWS_* vars
``gs://bucket[/prefix]``               Google Cloud Storage (GOOGLE_* vars)
``az://container[/prefix]``            Azure Blob (AZURE_STORAGE_ACCOUNT_NAME and friends);
                                       ``abfs[s]://container@account.dfs.core.windows.net/...``
``memory://[namespace[/prefix]]``      one process-local store (tests, dry runs)
=====================================  =====================================================

Object names are ``/``-separated paths relative to the store's root;
:func:`~kontext_batch.io.names.check_object_name` says which are allowed, and every method checks
its name. Local writes are atomic: obstore writes a ``name#N`` staging file and renames it over the
target (``link`` for create-only writes), so a reader never sees half an object. They are not fsynced.

Errors (:func:`translate_error`): a missing object is :class:`~kontext_batch.errors.ObjectNotFound`
(a StorageError, and a FileNotFoundError too), which carries the URI; throttling, 5xx, timeouts and
dropped connections are :class:`~kontext_batch.errors.StorageUnavailable`; everything else
(permissions, a missing bucket, a malformed URL) is :class:`~kontext_batch.errors.StorageError`.
Each is one line naming the store (:func:`shown_store`: no credentials) and what to check:

======================  ===========================================================================
kind                    message
======================  ===========================================================================
no bucket / container   ``s3://nosuch/out: the bucket does not exist (check the bucket name and
                        region, or create it)``
access denied           ``...: access denied (InvalidAccessKeyId: ...) (check the credentials and
                        their permissions on the bucket)``; a local folder: its owner and mode
no credentials          ``gs://...: no credentials found (set GOOGLE_SERVICE_ACCOUNT ...)``; Azure:
                        AZURE_STORAGE_ACCOUNT_NAME and a key or SAS
wrong region            ``...: the bucket is in another region (set AWS_REGION, or ?region= ...)``
unreachable             ``...: the object store cannot be reached (...; check the endpoint and the
                        network)``, retryable
======================  ===========================================================================

Handles are cheap to reuse and safe to share between threads (obstore stores are).
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import re
import socket
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast
from urllib.parse import parse_qsl, unquote, urlsplit

import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    GenericError,
    NotFoundError,
    NotSupportedError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from obstore.store import LocalStore, MemoryStore, S3Store, from_url

from kontext_batch.errors import ObjectNotFound, StorageError, StorageUnavailable
from kontext_batch.io.names import check_object_name

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig, S3Config
    from obstore.store import ObjectStore as _Backend

__all__ = ["CLOUD_SCHEMES", "ObjectStore", "open_store", "shown_store", "split_scheme", "translate_error"]

#: Schemes that name an object store (as opposed to a local path or an http(s) URL).
CLOUD_SCHEMES: Final = ("s3", "s3a", "gs", "az", "abfs", "abfss", "azure", "adl")
# obstore retries 5xx/timeouts itself; keep its budget short so our own retry policy (which
# counts attempts and records them) stays in charge of long outages.
_RETRY: Final[RetryConfig] = {"max_retries": 3, "retry_timeout": timedelta(seconds=30)}
_CLIENT_TIMEOUT: Final = timedelta(seconds=60)
_STATUS_RE: Final = re.compile(r"status code: (\d{3})")
_TRANSIENT_MARKERS: Final = (
    "error sending request",
    "timed out",
    "timeout",
    "connection",
    "dns error",
    "broken pipe",
    "reset by peer",
)
_MEMORY = MemoryStore()  # the one process-local memory store; namespaces are key prefixes

T = TypeVar("T")


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status an object store answered with, when ``exc`` is obstore's error for one.

    obstore gives HTTP failures one type (GenericError) and no status attribute: the status is read
    from its message (``... status code: 503 ...``), the only place it is.
    """
    if not isinstance(exc, GenericError):
        return None
    m = _STATUS_RE.search(str(exc))
    return int(m.group(1)) if m else None


def translate_error(exc: Exception, uri: str, *, store: str | None = None) -> Exception:  # noqa: PLR0911 - one mapping per kind of failure
    """Map an obstore/OS error to our tree (see the module docstring), as one line that names the store
    (``store``, the store's URL, for what concerns the bucket; else ``uri``) and what to check.

    obstore's types decide where they can; where obstore has none for a difference its message does:
    a missing bucket or container (``NoSuchBucket``, Azure's ``ContainerNotFound``, raised by a list as
    an HTTP 404, not a NotFound) against a missing object, credentials that could not be found, the
    HTTP status or transport failure a GenericError carries only in its text. The store's own error
    code and message are kept (an XML body is read down to them); the body and the debug dump are not.
    """
    text = str(exc).split("\n\nDebug source:", 1)[0].strip()
    where = shown_store(store or uri)
    code, said = _xml_error(text)
    lowered = text.lower()
    kind = "container" if split_scheme(where) in _AZURE_SCHEMES else "bucket"
    if code in ("NoSuchBucket", "ContainerNotFound") or "specified bucket does not exist" in lowered:
        return StorageError(f"{where}: the {kind} does not exist (check the {kind} name and region, or create it)")
    if isinstance(exc, FileNotFoundError | NotFoundError):  # obstore raises NotFound as FileNotFoundError
        return ObjectNotFound(uri)
    if isinstance(exc, PermissionError) and not isinstance(exc, BaseError):  # a local file or folder
        return StorageError(f"{shown_store(uri)}: access denied (check the folder's owner and mode for this user)")
    status = _http_status(exc)
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError) or status in (401, 403):
        if "token request" in lowered or _METADATA_HOST in text:
            return StorageError(f"{where}: {_NO_CREDENTIALS.get(split_scheme(where), 'no credentials found')}")
        why = f" ({code}: {said})" if code and said else f" ({code})" if code else ""
        return StorageError(f"{where}: access denied{why} (check the credentials and their permissions on the {kind})")
    if "account must be specified" in lowered or "token request" in lowered:
        return StorageError(f"{where}: {_NO_CREDENTIALS.get(split_scheme(where), 'no credentials found')}")
    if "incorrectly configured region" in lowered or code == "PermanentRedirect":
        return StorageError(
            f"{where}: the bucket is in another region (set AWS_REGION, or ?region= in the URL, to its own)"
        )
    if isinstance(exc, TimeoutError | ConnectionError) or (
        isinstance(exc, GenericError) and status is None and any(k in lowered for k in _TRANSIENT_MARKERS)
    ):
        return StorageUnavailable(
            f"{where}: the object store cannot be reached ({_short(text, code, said)}; "
            "check the endpoint and the network)"
        )
    if status is not None and (status == 429 or status >= 500):
        return StorageUnavailable(f"{where}: HTTP {status} from the object store ({_short(text, code, said)})")
    if status is not None:
        return StorageError(f"{shown_store(uri)}: HTTP {status} from the object store: {_short(text, code, said)}")
    return StorageError(f"{shown_store(uri)}: {_short(text, code, said)}")


_AZURE_SCHEMES: Final = ("az", "abfs", "abfss", "azure", "adl")
_METADATA_HOST: Final = "169.254.169.254"  # where the cloud SDKs look for credentials last
_NO_CREDENTIALS: Final = {
    "gs": "no credentials found (set GOOGLE_SERVICE_ACCOUNT or GOOGLE_APPLICATION_CREDENTIALS to a "
    "service-account key file where this process runs)",
    **dict.fromkeys(
        _AZURE_SCHEMES,
        "no storage account or credentials (set AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY, "
        "or a SAS token, where this process runs)",
    ),
}
_XML_CODE: Final = re.compile(r"<Code>([^<]{1,100})</Code>")
_XML_MESSAGE: Final = re.compile(r"<Message>([^<]{1,300})</Message>")
_TIMING: Final = re.compile(r" in [0-9.]+\s?[µm]?s\b")
_SHORT_CHARS: Final = 200


def _xml_error(text: str) -> tuple[str, str]:
    """The ``<Code>`` and ``<Message>`` of an S3/Azure XML error body in ``text``, or ("", "")."""
    code, message = _XML_CODE.search(text), _XML_MESSAGE.search(text)
    return (code.group(1).strip() if code else "", message.group(1).strip() if message else "")


def _short(text: str, code: str, said: str) -> str:
    """What the store said, on one line: its error code and message, else obstore's text without the
    body it quotes or timings, cut (saying so)."""
    if code:
        return f"{code}: {said}" if said else code
    line = " ".join(_TIMING.sub("", text.split("<?xml", 1)[0]).split()).rstrip(": ")
    return line if len(line) <= _SHORT_CHARS else f"{line[:_SHORT_CHARS].rstrip()}… (cut)"


def shown_store(url: str) -> str:
    """``url`` as messages show it: no user or password, and of its query only ``endpoint`` and
    ``region`` (a SAS token or signature is a credential)."""
    parts = urlsplit(url)
    if not parts.scheme or parts.scheme == "file":
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k in ("endpoint", "region")]
    query = "&".join(f"{k}={v}" for k, v in kept)
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def _call(fn: Callable[[], T], uri: str, store: str | None = None) -> T:
    try:
        return fn()
    except (BaseError, OSError) as exc:
        raise translate_error(exc, uri, store=store) from exc


class ObjectStore:
    """A store rooted at ``url``. Names passed to methods are relative to that root."""

    def __init__(self, url: str, backend: _Backend, *, key_prefix: str = "", cloud: bool = False) -> None:
        self.url = url
        self._backend = backend
        self._key_prefix = key_prefix  # only memory:// namespaces; other backends carry their own
        self._cloud = cloud
        self._base, sep, self._query = url.partition("?")
        if sep:
            self._query = "?" + self._query
        self._create_supported = True

    def __repr__(self) -> str:
        return f"ObjectStore({self.url!r})"

    @property
    def backend(self) -> _Backend:
        """The obstore handle, for what this class does not wrap: signing (kontext_batch.io.sign)."""
        return self._backend

    def _key(self, name: str) -> str:
        check_object_name(name)
        return f"{self._key_prefix}/{name}" if self._key_prefix else name

    def uri(self, name: str) -> str:
        """The full URI of ``name``, readable with :func:`read_url` (endpoint query included)."""
        check_object_name(name)
        if self._base.startswith("file:"):
            return (Path(unquote(urlsplit(self._base).path)) / name).as_uri()
        sep = "" if self._base.endswith("/") else "/"
        return f"{self._base}{sep}{name}{self._query}"

    def _attrs(self, name: str, content_type: str | None) -> dict[str, Any] | None:
        # LocalStore refuses attributes; content types only matter where objects are served.
        if not self._cloud:
            return None
        ctype = content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
        return {"Content-Type": ctype}

    def put(self, name: str, data: bytes, *, content_type: str | None = None) -> str:
        """Write ``data`` as ``name`` (replacing any object there, atomically); return its URI."""
        key, uri = self._key(name), self.uri(name)
        attrs = self._attrs(name, content_type)
        _call(lambda: obstore.put(self._backend, key, data, attributes=attrs, use_multipart=False), uri, self.url)
        return uri

    def put_if_absent(self, name: str, data: bytes, *, content_type: str | None = None) -> bool:
        """Write ``name`` only if nothing is there; True if this call wrote it.

        Uses the backend's create-only put (If-None-Match on S3/GCS/Azure, link() locally), so two
        writers racing for one name cannot both win. Backends without it fall back to a check
        then a write, which is racy but harmless for content-addressed names.
        """
        key, uri = self._key(name), self.uri(name)
        attrs = self._attrs(name, content_type)
        if self._create_supported:
            try:
                obstore.put(self._backend, key, data, attributes=attrs, mode="create", use_multipart=False)
            except AlreadyExistsError:
                return False
            except NotSupportedError:
                self._create_supported = False
            except (BaseError, OSError) as exc:
                if _http_status(exc) != 501:  # 501 Not Implemented: a store without create-only puts
                    raise translate_error(exc, uri, store=self.url) from exc
                self._create_supported = False
            else:
                return True
        if self.exists(name):
            return False
        self.put(name, data, content_type=content_type)
        return True

    def get(self, name: str) -> bytes:
        """Read ``name``. Raises :class:`ObjectNotFound` (a FileNotFoundError) if it is absent."""
        key, uri = self._key(name), self.uri(name)
        return _call(lambda: bytes(obstore.get(self._backend, key).bytes()), uri, self.url)

    def size(self, name: str) -> int:
        """Size of ``name`` in bytes, without reading it. Raises :class:`ObjectNotFound`."""
        key, uri = self._key(name), self.uri(name)
        return int(_call(lambda: obstore.head(self._backend, key), uri, self.url)["size"])

    def exists(self, name: str) -> bool:
        try:
            self.size(name)
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str = "") -> Iterator[str]:
        """Names under the folder ``prefix`` (whole path segments: ``a`` matches ``a/x``, not ``ab``)."""
        prefix = prefix.strip("/")
        if prefix:
            check_object_name(prefix)
        full = "/".join(p for p in (self._key_prefix, prefix) if p) or None
        strip = len(self._key_prefix) + 1 if self._key_prefix else 0
        stream = _call(lambda: obstore.list(self._backend, full), self.url)
        it = iter(stream)
        while True:
            batch = _call(lambda: next(it, None), self.url)
            if batch is None:
                return
            for meta in batch:
                yield meta["path"][strip:]

    def delete(self, name: str) -> None:
        """Remove ``name``; removing an absent object is not an error."""
        key, uri = self._key(name), self.uri(name)
        with contextlib.suppress(ObjectNotFound):
            _call(lambda: obstore.delete(self._backend, key), uri, self.url)


def _s3_options(url: str) -> tuple[str, str, S3Config, ClientConfig]:
    """Split ``s3://bucket/prefix?endpoint=..&region=..`` into base URL, query, S3 config, client options."""
    base, _, query = url.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=False))
    unknown = set(options) - {"endpoint", "region"}
    if unknown:
        raise StorageError(f"unknown option(s) {sorted(unknown)} in {url!r}; use endpoint= or region=")
    config: S3Config = {}
    endpoint = (
        options.get("endpoint")
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or os.environ.get("AWS_ENDPOINT")
    )
    client: ClientConfig = {"timeout": _CLIENT_TIMEOUT, "connect_timeout": timedelta(seconds=10)}
    if endpoint:
        config["endpoint"] = endpoint.rstrip("/")
        # MinIO, moto and other local S3s speak plain HTTP; obstore refuses it unless told.
        if endpoint.startswith("http://"):
            client["allow_http"] = True
    if "region" in options:
        config["region"] = options["region"]
    if endpoint and not _s3_credentials_configured():
        # Without credentials the S3 client asks the cloud's instance-metadata address for some, which
        # on a MinIO/Ceph/R2 host is either nothing (a hang, then a confusing 403) or someone else's.
        raise StorageError(
            f"no S3 credentials on worker {socket.gethostname()} for {base}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE / AWS_WEB_IDENTITY_TOKEN_FILE) where this process runs"
        )
    return base.rstrip("/"), query, config, client


_S3_CREDENTIAL_SOURCES: Final = (
    "AWS_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
)


def _s3_credentials_configured() -> bool:
    """Static keys, a profile, a web identity or a container role in this process's environment."""
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return True
    return any(env.get(name) for name in _S3_CREDENTIAL_SOURCES)


# The HTTP-client keys object_store reads from GOOGLE_<KEY> / AZURE_<KEY> (GOOGLE_ALLOW_HTTP, AZURE_PROXY_URL).
_CLIENT_ENV_KEYS: Final = (
    "allow_http",
    "allow_invalid_certificates",
    "connect_timeout",
    "proxy_url",
    "proxy_ca_certificate",
    "proxy_excludes",
    "timeout",
)


def _cloud_client_options(scheme: str) -> ClientConfig:
    """HTTP-client options for a gs:// or az:// store: a 60 s timeout, then the GOOGLE_*/AZURE_* client keys set.

    obstore reads those keys from the environment only when it is given no client options at all, so
    passing our timeout hid them, and with them GOOGLE_ALLOW_HTTP: the only way to an http:// GCS
    emulator, or to an Azurite named by AZURE_STORAGE_ENDPOINT.
    """
    prefix = "GOOGLE_" if scheme == "gs" else "AZURE_"
    client: dict[str, object] = {"timeout": _CLIENT_TIMEOUT}
    for key in _CLIENT_ENV_KEYS:
        value = os.environ.get(prefix + key.upper())
        if value:
            client[key] = value  # obstore parses the strings as it parses the environment's
    return cast("ClientConfig", client)


def split_scheme(url: str) -> str:
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", url)
    return m.group(1).lower() if m else ""


def open_store(url: str, *, base_dir: Path | None = None) -> ObjectStore:
    """Open the store ``url`` names (see the module table). Raises StorageError for a bad URL."""
    raw = url.strip()
    if not raw:
        raise StorageError("the output location is empty")
    scheme = split_scheme(raw)
    if scheme in {"", "file"}:
        path = Path(unquote(urlsplit(raw).path)) if scheme == "file" else Path(raw).expanduser()
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        path = path.resolve()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the output folder {path}: {exc}") from exc
        return ObjectStore(path.as_uri(), _call(lambda: LocalStore(path), str(path)))
    if scheme == "memory":
        ns = raw[len("memory://") :].strip("/")
        if ns:
            check_object_name(ns)
        return ObjectStore(f"memory://{ns}", _MEMORY, key_prefix=ns)
    if scheme in ("s3", "s3a"):
        base, query, config, client = _s3_options(raw)
        if not urlsplit(base).netloc:
            raise StorageError(f"an S3 URL needs a bucket: {url!r}")
        backend = _call(lambda: S3Store.from_url(base, config=config, client_options=client, retry_config=_RETRY), base)
        return ObjectStore(base + (f"?{query}" if query else ""), backend, cloud=True)
    if scheme in CLOUD_SCHEMES:
        base = raw.rstrip("/")
        client_gc = _cloud_client_options(scheme)
        other: _Backend = _call(lambda: from_url(base, client_options=client_gc, retry_config=_RETRY), base)
        return ObjectStore(base, other, cloud=True)
    raise StorageError(f"unsupported storage URL {url!r}: use a folder, file://, s3://, gs://, az:// or memory://")
