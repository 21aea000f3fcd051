"""The one guarded fetch: a GET of a URL that came from data, and of every redirect it leads to.

Two callers: :func:`read_http` (manifest input URLs, through
:func:`~kontext_batch.io.read.read_url`) and the API clients' sample download
(:meth:`kontext_batch.api._http.HttpCore.download`). Both go through :func:`fetch`, which holds
every rule; each caller supplies where a hop may go (``route``) and how transport failures read in
its own errors (``translate``).

==============  ===============================================================================
rule            how
==============  ===============================================================================
addresses       each hop's client is guarded (:mod:`kontext_batch.io.netguard`): the socket only
                connects to public addresses, unless the caller's policy allows private ones;
                a refusal is UrlRefused naming the URL
redirects       followed here, one hop at a time, each through ``route`` (which may refuse its
                scheme or host); more than ``max_redirects`` is UrlRefused
bytes           a declared or streamed body over ``max_bytes`` is ObjectTooLarge, read no further
deadline        ``deadline_s`` bounds the whole fetch, redirects and a dripping body included
                (StorageError); ``timeout_s`` bounds each read
errors          URLs are named by :func:`shown_url`: ``scheme://host/path``, never the query,
                fragment or credentials (a presigned URL's signature is a credential)
==============  ===============================================================================
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import httpx

from kontext_batch.errors import ObjectNotFound, ObjectTooLarge, StorageError, StorageUnavailable, UrlRefused
from kontext_batch.io.cookieless import CookielessClient
from kontext_batch.io.guarded import guarded_transport
from kontext_batch.io.netguard import AddressGuard, FetchPolicy

__all__ = ["Fetched", "Route", "Translate", "fetch", "read_http", "shown_url"]

#: ``(url, hop)`` -> the client to GET ``url`` with and the URL as parsed for the checks (sent as is);
#: hop 0 is the URL asked for. Raises to refuse the hop.
Route = Callable[[str, int], tuple[httpx.Client, httpx.URL]]
#: ``url`` -> a context in which httpx's errors for a GET of ``url`` become the caller's.
Translate = Callable[[str], AbstractContextManager[object]]

_http: dict[bool, tuple[int, httpx.Client]] = {}
_http_lock = threading.Lock()
_REDIRECTABLE: Final = ("http", "https")


def shown_url(url: str | httpx.URL) -> str:
    """``url`` as messages and logs name it: ``scheme://host/path``, with no query, fragment or
    credentials (a presigned URL's signature would otherwise reach validate output, results.csv and logs)."""
    parts = urlsplit(str(url))
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}" if parts.netloc else parts.path


@dataclass(frozen=True)
class Fetched:
    """The final answer of a :func:`fetch`: ``url`` answered it (the URL asked for, or a redirect's
    target). ``content`` is the whole body of a 2xx answer, the first ``error_body_bytes`` of another."""

    url: str
    status_code: int
    headers: httpx.Headers
    content: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300


def _untranslated(url: str) -> AbstractContextManager[object]:
    return contextlib.nullcontext()


@dataclass(frozen=True)
class _Limits:
    """What bounds one :func:`fetch`, for each of its hops. ``deadline`` is a ``time.monotonic()``."""

    shown: str
    max_bytes: int | None
    error_body_bytes: int
    deadline: float | None
    late: str

    def check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise StorageError(self.late)


def fetch(
    url: str,
    route: Route,
    *,
    max_redirects: int,
    max_bytes: int | None = None,
    deadline_s: float | None = None,
    timeout_s: float | None = None,
    error_body_bytes: int = 0,
    translate: Translate = _untranslated,
    log: logging.Logger | None = None,
) -> Fetched:
    """GET ``url`` under the rules of the module table; return the first answer that is not a redirect.

    Raises UrlRefused (an address or hop refused, too many redirects), ObjectTooLarge (over
    ``max_bytes``), StorageError (past ``deadline_s``), whatever ``route`` raises, and httpx's errors
    as ``translate`` turns them (as they are without it). Without ``timeout_s`` each read has the
    client's own timeout.
    """
    shown = shown_url(url)
    limits = _Limits(
        shown,
        max_bytes,
        error_body_bytes,
        None if deadline_s is None else time.monotonic() + deadline_s,
        f"{shown}: did not finish within the {deadline_s:g} s deadline" if deadline_s is not None else "",
    )
    current = url
    for hop in range(max_redirects + 1):
        with translate(current):
            client, target = route(current, hop)
            timeout = timeout_s
            if limits.deadline is not None:
                remaining = limits.deadline - time.monotonic()
                if remaining <= 0:
                    raise StorageError(limits.late)
                timeout = remaining if timeout is None else min(timeout, remaining)
            try:
                answer = _get(client, target, timeout, limits, log)
            except httpx.TimeoutException as exc:
                if limits.deadline is not None and time.monotonic() >= limits.deadline:
                    raise StorageError(limits.late) from exc
                raise
            except UrlRefused as exc:  # from the guarded transport: name the URL it refused
                raise UrlRefused(f"{shown}: {exc}", host=exc.host) from None
        if isinstance(answer, Fetched):
            return answer
        current = answer
    raise UrlRefused(f"{shown}: more than {max_redirects} redirects", host=urlsplit(url).hostname or "")


def _get(
    client: httpx.Client, target: httpx.URL, timeout: float | None, limits: _Limits, log: logging.Logger | None
) -> Fetched | str:
    """One hop: the answer, or the absolute URL its redirect points to (a Location that is empty
    or absent makes the 3xx the answer)."""
    started = time.perf_counter()
    stream = client.stream("GET", target) if timeout is None else client.stream("GET", target, timeout=timeout)
    with stream as resp:
        if log is not None and log.isEnabledFor(logging.DEBUG):
            log.debug("GET %s -> %d in %.3fs", shown_url(target), resp.status_code, time.perf_counter() - started)
        location = resp.headers.get("location", "") if resp.is_redirect else ""
        if location:
            return str(resp.url.join(location))
        answered = str(resp.url)
        if not resp.is_success:
            return Fetched(answered, resp.status_code, resp.headers, _read_upto(resp, limits.error_body_bytes))
        declared = resp.headers.get("content-length", "")
        cap = limits.max_bytes
        if cap is not None and declared.isdigit() and int(declared) > cap:
            raise ObjectTooLarge(limits.shown, int(declared), cap)
        chunks: list[bytes] = []
        total = 0
        for chunk in resp.iter_bytes():
            total += len(chunk)
            if cap is not None and total > cap:
                raise ObjectTooLarge(limits.shown, total, cap)
            chunks.append(chunk)
            limits.check_deadline()  # a server that drips a byte at a time never trips the read timeout
        return Fetched(answered, resp.status_code, resp.headers, b"".join(chunks))


def _read_upto(resp: httpx.Response, limit: int) -> bytes:
    """At most ``limit`` bytes of a streamed body; stops reading there (nothing for 0)."""
    if limit <= 0:
        return b""
    chunks: list[bytes] = []
    total = 0
    for chunk in resp.iter_bytes():
        chunks.append(chunk)
        total += len(chunk)
        if total >= limit:
            break
    return b"".join(chunks)[:limit]


# --- a URL from data, read as an object ----------------------------------------------------------


def _http_client(allow_private: bool) -> httpx.Client:
    """One pooled client per process and address policy; a client inherited across fork() is not reused.

    Redirects are followed by :func:`fetch` itself, one checked hop at a time.
    """
    with _http_lock:
        held = _http.get(allow_private)
        if held is None or held[0] != os.getpid():
            transport = None if allow_private else guarded_transport(AddressGuard())
            held = _http[allow_private] = (os.getpid(), CookielessClient(follow_redirects=False, transport=transport))
        return held[1]


def read_http(url: str, timeout_s: float, max_bytes: int | None, policy: FetchPolicy) -> bytes:
    """GET ``url`` within ``policy``'s deadline and redirect budget, as :func:`~kontext_batch.io.read.read_url`
    reads an object: 404/410 is ObjectNotFound, 429/5xx and dropped connections StorageUnavailable,
    any other failure StorageError; a redirect may lead to http(s) only."""
    shown = shown_url(url)
    client = _http_client(policy.allow_private)

    def route(hop_url: str, hop: int) -> tuple[httpx.Client, httpx.URL]:
        target = httpx.URL(hop_url)
        if hop and target.scheme not in _REDIRECTABLE:
            raise StorageError(f"{shown}: redirected to {shown_url(hop_url)!r}, not an http(s) URL")
        return client, target

    @contextlib.contextmanager
    def translate(hop_url: str) -> Iterator[None]:
        try:
            yield
        except httpx.TimeoutException as exc:
            raise StorageUnavailable(f"{shown}: timed out after {timeout_s:g} s") from exc
        except httpx.TransportError as exc:
            raise StorageUnavailable(f"{shown}: cannot connect ({type(exc).__name__})") from exc
        except httpx.InvalidURL as exc:
            raise StorageError(f"not a valid URL: {shown!r}") from exc  # the query is not the problem

    got = fetch(
        url,
        route,
        max_redirects=policy.max_redirects,
        max_bytes=max_bytes,
        deadline_s=policy.deadline_s,
        timeout_s=timeout_s,
        translate=translate,
    )
    code = got.status_code
    if code in (404, 410):
        raise ObjectNotFound(shown)
    if code == 429 or code >= 500:
        raise StorageUnavailable(f"{shown}: HTTP {code}")
    if not got.ok:
        raise StorageError(f"{shown}: HTTP {code}")
    return got.content
