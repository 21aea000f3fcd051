"""One object-storage layer for every place outputs and inputs live, built on obstore.

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

Object names are ``/``-separated paths relative to the store's root; :func:`check_object_name`
says which are allowed, and every method checks its name. Local writes are atomic: obstore writes
a ``name#N`` staging file and renames it over the target (``link`` for create-only writes), so a
reader never sees half an object. They are not fsynced.

Errors: a missing object is :class:`FileNotFoundError` (subclass :class:`ObjectNotFound`, which
carries the URI); throttling, 5xx, timeouts and dropped connections are
:class:`~kontext_batch.errors.StorageUnavailable`; everything else (permissions, a missing bucket,
a malformed URL) is :class:`~kontext_batch.errors.StorageError`.

Handles are cheap to reuse and safe to share between threads (obstore stores are).
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import re
import socket
import stat
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast
from urllib.parse import parse_qsl, unquote, urlsplit

import httpx
import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    NotSupportedError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from obstore.store import LocalStore, MemoryStore, S3Store, from_url

from kontext_batch.errors import StorageError, StorageUnavailable, UrlRefused
from kontext_batch.io.netguard import AddressGuard, FetchPolicy, guarded_transport

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig, S3Config
    from obstore.store import ObjectStore as _Backend

__all__ = [
    "CLOUD_SCHEMES",
    "ObjectNotFound",
    "ObjectStore",
    "ObjectTooLarge",
    "check_object_name",
    "open_store",
    "read_url",
]

#: Schemes that name an object store (as opposed to a local path or an http(s) URL).
CLOUD_SCHEMES: Final = ("s3", "s3a", "gs", "az", "abfs", "abfss", "azure", "adl")
MAX_NAME_BYTES: Final = 1024  # S3's key limit; the strictest of the backends
MAX_SEGMENT_BYTES: Final = 255  # a file or folder name on ext4, APFS, NTFS (in UTF-16 units there)
# A local write stages the file as ``NAME#N`` beside it (N counts up from 1); leave room for "#NN".
MAX_FILE_NAME_BYTES: Final = MAX_SEGMENT_BYTES - 3
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
_BAD_CHARS_RE: Final = re.compile(r"[\x00-\x1f\x7f\\#?]")
# Invisible characters that make one name look like another (U+202E shows "gnp.exe" as "exe.png").
_BAD_CATEGORIES: Final = frozenset({"Cc", "Cf", "Zl", "Zp"})
_CLOUD_ENV_PREFIXES: Final = ("AWS_", "GOOGLE_", "AZURE_")
_MEMORY = MemoryStore()  # the one process-local memory store; namespaces are key prefixes

T = TypeVar("T")


class ObjectNotFound(FileNotFoundError):
    """Raised when the object (or local file) named does not exist. ``uri`` says which."""

    def __init__(self, uri: str) -> None:
        super().__init__(f"no such object: {uri}")
        self.uri = uri


class ObjectTooLarge(StorageError):
    """Raised by :func:`read_url` when the object is larger than the ``max_bytes`` asked for."""

    def __init__(self, uri: str, size: int, max_bytes: int) -> None:
        super().__init__(f"{uri} is {size:,} bytes, more than the {max_bytes:,} allowed")
        self.uri = uri
        self.size = size
        self.max_bytes = max_bytes


def check_object_name(name: str) -> str:
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


def _translate(exc: Exception, uri: str) -> Exception:
    """Map an obstore/OS error to our tree (see the module docstring)."""
    text = str(exc).split("\n\nDebug source:", 1)[0].strip()
    # Checked before the type: obstore raises a missing bucket on a list as a GenericError.
    if "NoSuchBucket" in text:
        return StorageError(f"bucket does not exist for {uri}")
    if "ContainerNotFound" in text:  # Azure's word for it
        return StorageError(f"container does not exist for {uri}")
    if isinstance(exc, FileNotFoundError):
        return ObjectNotFound(uri)
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError | PermissionError):
        return StorageError(f"permission denied for {uri}: {text}")
    if isinstance(exc, TimeoutError | ConnectionError):
        return StorageUnavailable(f"{uri}: {text}")
    m = _STATUS_RE.search(text)
    if m:
        code = int(m.group(1))
        if code == 429 or code >= 500:
            return StorageUnavailable(f"{uri}: HTTP {code} from the object store")
        return StorageError(f"{uri}: HTTP {code} from the object store: {text[:300]}")
    if isinstance(exc, BaseError) and any(k in text.lower() for k in _TRANSIENT_MARKERS):
        return StorageUnavailable(f"{uri}: {text[:300]}")
    return StorageError(f"{uri}: {text[:300]}")


def _call(fn: Callable[[], T], uri: str) -> T:
    try:
        return fn()
    except (BaseError, OSError) as exc:
        raise _translate(exc, uri) from exc


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
        _call(lambda: obstore.put(self._backend, key, data, attributes=attrs, use_multipart=False), uri)
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
                if "status code: 501" not in str(exc):
                    raise _translate(exc, uri) from exc
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
        return _call(lambda: bytes(obstore.get(self._backend, key).bytes()), uri)

    def size(self, name: str) -> int:
        """Size of ``name`` in bytes, without reading it. Raises :class:`ObjectNotFound`."""
        key, uri = self._key(name), self.uri(name)
        return int(_call(lambda: obstore.head(self._backend, key), uri)["size"])

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
            _call(lambda: obstore.delete(self._backend, key), uri)


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


def _split_scheme(url: str) -> str:
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", url)
    return m.group(1).lower() if m else ""


def open_store(url: str, *, base_dir: Path | None = None) -> ObjectStore:
    """Open the store ``url`` names (see the module table). Raises StorageError for a bad URL."""
    raw = url.strip()
    if not raw:
        raise StorageError("the output location is empty")
    scheme = _split_scheme(raw)
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


# --- reading one object by full URL ------------------------------------------------------------

_stores: dict[str, ObjectStore] = {}
_stores_lock = threading.Lock()
_http: dict[bool, tuple[int, httpx.Client]] = {}
_http_lock = threading.Lock()
_LOCAL_CHUNK: Final = 1 << 20


def _root_store(root_url: str) -> ObjectStore:
    """A cached handle on a bucket root, so reading 100,000 objects opens one client.

    The key includes the cloud environment variables, so a changed endpoint or key opens a new one.
    """
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_CLOUD_ENV_PREFIXES)))
    key = f"{root_url}|{hash(env)}"
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            if len(_stores) > 64:  # bounded: environments do not change often
                _stores.clear()
            store = _stores[key] = open_store(root_url)
        return store


def _http_client(allow_private: bool) -> httpx.Client:
    """One pooled client per process and address policy; a client inherited across fork() is not reused.

    Redirects are followed by :func:`_read_http` itself, one checked hop at a time.
    """
    with _http_lock:
        held = _http.get(allow_private)
        if held is None or held[0] != os.getpid():
            transport = None if allow_private else guarded_transport(AddressGuard())
            held = _http[allow_private] = (os.getpid(), httpx.Client(follow_redirects=False, transport=transport))
        return held[1]


def _shown(url: str) -> str:
    """``url`` as error messages name it: no query, fragment or credentials (a presigned URL's
    signature would otherwise reach validate output, results.csv and logs)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}" if parts.netloc else parts.path


def _read_http(url: str, timeout_s: float, max_bytes: int | None, fetch: FetchPolicy) -> bytes:
    """GET ``url`` within ``fetch``'s deadline and redirect budget; every hop's address is checked."""
    fetched, url = url, _shown(url)  # ``url`` only names it in messages from here
    client = _http_client(fetch.allow_private)
    deadline = time.monotonic() + fetch.deadline_s
    late = f"{url}: did not finish within the {fetch.deadline_s:g} s deadline"
    current = fetched
    for _ in range(fetch.max_redirects + 1):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise StorageError(late)
        try:
            with client.stream("GET", current, timeout=min(timeout_s, remaining)) as resp:
                if resp.is_redirect:
                    current = _next_hop(url, resp)
                    continue
                _raise_for_status(url, resp.status_code)
                declared = resp.headers.get("content-length")
                if max_bytes is not None and declared and declared.isdigit() and int(declared) > max_bytes:
                    raise ObjectTooLarge(url, int(declared), max_bytes)
                chunks: list[bytes] = []
                total = 0
                for chunk in resp.iter_bytes():
                    total += len(chunk)
                    if max_bytes is not None and total > max_bytes:
                        raise ObjectTooLarge(url, total, max_bytes)
                    chunks.append(chunk)
                    # A server that drips a byte at a time never trips the per-read timeout.
                    if time.monotonic() > deadline:
                        raise StorageError(late)
                return b"".join(chunks)
        except httpx.TimeoutException as exc:
            if time.monotonic() >= deadline:
                raise StorageError(late) from exc
            raise StorageUnavailable(f"{url}: timed out after {timeout_s:g} s") from exc
        except httpx.TransportError as exc:
            raise StorageUnavailable(f"{url}: cannot connect ({type(exc).__name__})") from exc
        except httpx.InvalidURL as exc:
            raise StorageError(f"not a valid URL: {url!r}") from exc  # the query is not the problem
        except UrlRefused as exc:
            raise UrlRefused(f"{url}: {exc}", host=exc.host) from None
    raise UrlRefused(f"{url}: more than {fetch.max_redirects} redirects", host=urlsplit(url).hostname or "")


def _raise_for_status(url: str, code: int) -> None:
    if code in (404, 410):
        raise ObjectNotFound(url)
    if code == 429 or code >= 500:
        raise StorageUnavailable(f"{url}: HTTP {code}")
    if not 200 <= code < 300:
        raise StorageError(f"{url}: HTTP {code}")


def _next_hop(url: str, resp: httpx.Response) -> str:
    """The absolute URL a redirect points to; only http(s) targets are followed."""
    location = resp.headers.get("location", "")
    target = resp.url.join(location) if location else None
    if target is None or target.scheme not in ("http", "https"):
        shown = _shown(location) if "://" in location else location.partition("?")[0]
        raise StorageError(f"{url}: HTTP {resp.status_code} redirect to {shown!r}, not an http(s) URL")
    return str(target)


def _read_local(path: Path, max_bytes: int | None) -> bytes:
    """Read a regular file, at most ``max_bytes`` (+1 to tell it is over). A FIFO, a device or a
    socket is refused without reading: opening a FIFO blocks, ``/dev/zero`` never ends."""
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError):
        raise ObjectNotFound(str(path)) from None
    except IsADirectoryError:
        raise StorageError(f"{path} is a folder, not a file") from None
    except OSError as exc:
        raise _translate(exc, str(path)) from exc
    try:
        return _read_fd(fd, path, max_bytes)
    except OSError as exc:  # EIO and the like, after the open: the same errors as the open's
        raise _translate(exc, str(path)) from exc


def _read_fd(fd: int, path: Path, max_bytes: int | None) -> bytes:
    """:func:`_read_local` after the open; closes ``fd``."""
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        if stat.S_ISDIR(st.st_mode):
            raise StorageError(f"{path} is a folder, not a file")
        raise StorageError(f"{path} is not a regular file ({_file_kind(st.st_mode)}); give an image file")
    if max_bytes is not None and st.st_size > max_bytes:
        os.close(fd)
        raise ObjectTooLarge(str(path), st.st_size, max_bytes)
    with os.fdopen(fd, "rb", buffering=0) as f:
        limit = None if max_bytes is None else max_bytes + 1
        chunks: list[bytes] = []
        total = 0
        while limit is None or total < limit:
            chunk = f.read(_LOCAL_CHUNK if limit is None else min(_LOCAL_CHUNK, limit - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    if max_bytes is not None and total > max_bytes:  # it grew after fstat()
        raise ObjectTooLarge(str(path), total, max_bytes)
    return b"".join(chunks)


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a plain file"


def _split_object_url(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b.png?endpoint=X`` -> (``s3://bucket?endpoint=X``, ``a/b.png``)."""
    base, sep, query = url.partition("?")
    scheme = _split_scheme(base)
    rest = base[len(scheme) + 3 :]
    if scheme == "memory":
        return "memory://", rest.lstrip("/")
    bucket, _, key = rest.partition("/")
    if not bucket or not key:
        raise StorageError(f"an object URL needs a bucket and a key: {url!r}")
    return f"{scheme}://{bucket}{sep}{query}", key


def read_url(
    url: str, *, timeout_s: float = 30.0, max_bytes: int | None = None, fetch: FetchPolicy | None = None
) -> bytes:
    """Read one whole object by URL: a local path, file://, s3://, gs://, az://, memory:// or http(s)://.

    Local paths must be regular files. http(s) fetches follow ``fetch`` (default: private addresses
    refused, a 60 s deadline for the whole fetch, 5 redirects); ``timeout_s`` bounds each read.
    Raises :class:`ObjectNotFound` when it does not exist, :class:`ObjectTooLarge` when it is over
    ``max_bytes``, UrlRefused for an address the policy refuses, StorageUnavailable when the store
    or server may recover, StorageError otherwise (a deadline overrun included).
    """
    scheme = _split_scheme(url)
    if scheme in ("http", "https"):
        return _read_http(url, timeout_s, max_bytes, fetch or FetchPolicy())
    if scheme == "" and re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", url):
        raise StorageError(f"cannot read {url!r}: not a path or a URL this tool reads")
    if scheme in ("", "file"):
        path = Path(unquote(urlsplit(url).path)) if scheme == "file" else Path(url).expanduser()
        return _read_local(path, max_bytes)
    if scheme == "memory" or scheme in CLOUD_SCHEMES:
        root, key = _split_object_url(url)
        store = _root_store(root)
        if max_bytes is not None:
            size = store.size(key)
            if size > max_bytes:
                raise ObjectTooLarge(url, size, max_bytes)
        return store.get(key)
    raise StorageError(f"cannot read {url!r}: unsupported scheme {scheme!r}")
