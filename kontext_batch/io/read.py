"""Read one whole object by URL, wherever it is: a local file, an object store, or http(s).

Manifest inputs and staged images are read here (:func:`read_url`); http(s) URLs go through the
guarded fetch (:mod:`kontext_batch.io.fetch`). Local paths must be regular files, and every read can
be capped (``max_bytes``) without reading past the cap.
"""

from __future__ import annotations

import os
import re
import stat
import threading
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlsplit

from kontext_batch.errors import ObjectNotFound, ObjectTooLarge, StorageError
from kontext_batch.io.netguard import FetchPolicy
from kontext_batch.io.stores import CLOUD_SCHEMES, ObjectStore, open_store, split_scheme, translate_error

__all__ = ["read_url"]

_CLOUD_ENV_PREFIXES: Final = ("AWS_", "GOOGLE_", "AZURE_")
_stores: dict[str, ObjectStore] = {}
_stores_lock = threading.Lock()
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
        raise translate_error(exc, str(path)) from exc
    try:
        return _read_fd(fd, path, max_bytes)
    except OSError as exc:  # EIO and the like, after the open: the same errors as the open's
        raise translate_error(exc, str(path)) from exc


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
    scheme = split_scheme(base)
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
    scheme = split_scheme(url)
    if scheme in ("http", "https"):
        from kontext_batch.io.fetch import read_http  # noqa: PLC0415 - httpx loads for the first URL read, not at start

        return read_http(url, timeout_s, max_bytes, fetch or FetchPolicy())
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
