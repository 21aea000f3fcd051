"""The guarded fetch of URLs that come from data (manifest inputs, and every redirect they lead to).

Every hop's address is checked when its socket connects (:mod:`kontext_batch.io.netguard`),
redirects are followed one checked hop at a time, and error messages name a URL without its query,
fragment or credentials (a presigned URL's signature would otherwise reach results.csv and logs).
"""

from __future__ import annotations

import os
import threading
import time
from urllib.parse import urlsplit

import httpx

from kontext_batch.errors import ObjectNotFound, ObjectTooLarge, StorageError, StorageUnavailable, UrlRefused
from kontext_batch.io.netguard import AddressGuard, FetchPolicy, guarded_transport

__all__ = ["read_http"]

_http: dict[bool, tuple[int, httpx.Client]] = {}
_http_lock = threading.Lock()


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


def read_http(url: str, timeout_s: float, max_bytes: int | None, fetch: FetchPolicy) -> bytes:
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
