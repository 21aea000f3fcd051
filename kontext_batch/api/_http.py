"""The HTTP layer both providers share: the key, two pooled httpx clients, logging, error mapping.

Two clients, because the key must never reach a delivery host: ``http`` carries the API's calls
(and samples served from the API's own origin); ``delivery`` fetches every other sample through a
transport that refuses private addresses (:mod:`kontext_batch.io.netguard`). An injected
``transport`` or ``http`` client carries every request, samples included (tests), and so does
``http`` when ``allow_private`` lifts the address check. ``wrap`` (the workers' metrics) wraps both
pools' transports and leaves every check in place.

Everything here keeps the API key out of sight: it is only ever put into a request header, never
into a message, a log line or a repr; text that came back from a server is scrubbed of it anyway,
and URLs are shown as ``scheme://host/path`` (:func:`kontext_batch.io.fetch.shown_url`: sample URLs
carry signatures in their query string).

What a status means is :mod:`kontext_batch.api.statuses`; where a request may go is
:mod:`kontext_batch.api.trust`; a sample is fetched by :func:`kontext_batch.io.fetch.fetch`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import ssl
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar
from urllib.parse import urlsplit

import httpx

from kontext_batch.api import statuses
from kontext_batch.api._per_thread import PerThreadTransport
from kontext_batch.api.models import Sample
from kontext_batch.api.reasons import cut
from kontext_batch.api.trust import UrlTrust, origin
from kontext_batch.errors import (
    ApiConnectionError,
    ApiTimeout,
    ConfigError,
    InvalidImage,
    KontextBatchError,
    ObjectTooLarge,
    ServerError,
)
from kontext_batch.io.cookieless import CookielessClient
from kontext_batch.io.fetch import fetch, shown_url
from kontext_batch.io.guarded import guarded_transport
from kontext_batch.io.netguard import DEFAULT_MAX_REDIRECTS, AddressGuard
from kontext_batch.secret import Secret

if TYPE_CHECKING:
    from kontext_batch.api.retry import RetryPolicy

T = TypeVar("T")

__all__ = ["DEFAULT_MAX_SAMPLE_BYTES", "ClientBase", "HttpCore", "TransportWrapper"]

log = logging.getLogger("kontext_batch.api")

#: Sized for ~64 worker threads sharing one client: one keep-alive connection each to the API,
#: plus head-room for sample downloads from the delivery hosts.
POOL_LIMITS: Final = httpx.Limits(max_connections=128, max_keepalive_connections=64, keepalive_expiry=30.0)
#: One thread's pool (:class:`~kontext_batch.api._per_thread.PerThreadTransport`): it sends one
#: request at a time; a few connections leave room for hosts a redirect leads to.
THREAD_POOL_LIMITS: Final = httpx.Limits(max_connections=8, max_keepalive_connections=4, keepalive_expiry=30.0)
_MASK: Final = "**********"
#: Largest sample downloaded unless ``KONTEXT_MAX_SAMPLE_BYTES`` says otherwise (outputs are ~1 MP).
DEFAULT_MAX_SAMPLE_BYTES: Final = 64_000_000
_ERROR_BODY_BYTES: Final = 4096  # of an error answer, read for its message; the rest is dropped

#: Wraps a transport without changing where it connects (the workers' metrics).
TransportWrapper = Callable[[httpx.BaseTransport], httpx.BaseTransport]


class HttpCore:
    """The key, the API's client and the delivery client (created here, or one injected for both),
    the trust policy, and the response-to-error mapping with the key scrubbed.

    Thread-safe: httpx's connection pools are, and nothing here mutates shared state after init.
    """

    def __init__(
        self,
        api_key: Secret,
        *,
        base_url: str,
        timeout_s: float,
        transport: httpx.BaseTransport | None,
        http: httpx.Client | None,
        wrap: TransportWrapper | None = None,
        api_hosts: re.Pattern[str] | None = None,
        allow_private: bool = False,
        max_sample_bytes: int = DEFAULT_MAX_SAMPLE_BYTES,
        max_redirects: int = DEFAULT_MAX_REDIRECTS,
    ) -> None:
        if not api_key:
            raise ConfigError("no API key: set KONTEXT_API_KEY")
        self.key = api_key
        self.trust = UrlTrust(origin(base_url), api_hosts)
        self.max_sample_bytes = max_sample_bytes
        self.max_redirects = max_redirects
        self._owns_http = http is None
        self._ssl: ssl.SSLContext | None = None
        # No default headers: the key goes on each API request only, so it can never ride along to
        # a delivery host (downloads) or to another host through a redirect we did not ask for.
        if http is None and transport is None and wrap is not None:
            # httpx ignores a client's ``limits`` when it is given a transport: the pool is sized here.
            # A worker's (``wrap``: its metrics): one pool per thread, see PerThreadTransport.
            ctx = self._ssl_context()
            transport = wrap(PerThreadTransport(lambda: httpx.HTTPTransport(limits=THREAD_POOL_LIMITS, verify=ctx)))
            injected = False
        else:
            injected = transport is not None
        self.http: httpx.Client = http or CookielessClient(
            timeout=httpx.Timeout(timeout_s), limits=POOL_LIMITS, transport=transport
        )
        self._owns_delivery = not (http is not None or injected or allow_private)
        if self._owns_delivery:
            guard, ctx = AddressGuard(), self._ssl_context()
            guarded: httpx.BaseTransport = PerThreadTransport(
                lambda: guarded_transport(guard, limits=THREAD_POOL_LIMITS, ssl_context=ctx)
            )
            delivery = wrap(guarded) if wrap else guarded
            self.delivery: httpx.Client = CookielessClient(timeout=httpx.Timeout(timeout_s), transport=delivery)
        else:
            self.delivery = self.http

    def _ssl_context(self) -> ssl.SSLContext:
        """One TLS context for every pool made here: each would load the CA bundle again (~5 ms of
        CPU), once per thread with :class:`PerThreadTransport`."""
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        return self._ssl

    def close(self) -> None:
        if self._owns_http:
            self.http.close()
        if self._owns_delivery:
            self.delivery.close()

    def scrub(self, text: str) -> str:
        """``text`` with every occurrence of the key masked (defence in depth for echoed bodies)."""
        key = self.key.reveal()
        return text.replace(key, _MASK) if key else text

    def redact(self, text: str, url: str | httpx.URL) -> str:
        """``text`` without the key and without ``url``'s query string (a sample URL's signature); not
        cut, so that it can be applied again for another URL (the caller cuts)."""
        query = urlsplit(str(url)).query
        if query:
            text = text.replace(query, "…")
        return self.scrub(text)

    def send(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        headers: dict[str, str] | None = None,
        json_body: dict[str, Any] | None = None,
    ) -> httpx.Response:
        """Send one request; transport failures become ApiTimeout/ApiConnectionError."""
        started = time.perf_counter()
        with self._mapped(method, url):
            response = self.http.request(
                # Never followed: httpx drops Authorization on a cross-origin redirect, not x-key.
                method,
                url,
                headers=headers,
                json=json_body,
                follow_redirects=False,
            )
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s %s -> %d in %.3fs", method, shown_url(url), response.status_code, time.perf_counter() - started
            )
        return response

    @contextlib.contextmanager
    def _mapped(self, method: str, url: str | httpx.URL) -> Iterator[None]:
        """Transport failures inside the block become ApiTimeout/ApiConnectionError/ConfigError."""
        started = time.perf_counter()
        try:
            yield
        except httpx.TimeoutException as exc:
            where = shown_url(url)
            log.debug("%s %s timed out after %.3fs", method, where, time.perf_counter() - started)
            raise ApiTimeout(f"{method} {where}: {_TIMEOUTS.get(type(exc), 'timed out')}") from exc
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise ConfigError(f"{method} {shown_url(url)}: not a usable http(s) URL") from exc
        except httpx.HTTPError as exc:
            where = shown_url(url)
            log.debug("%s %s failed after %.3fs: %s", method, where, time.perf_counter() - started, _exc_name(exc))
            what = _BROKEN.get(type(exc), "the connection failed")
            said = cut(self.redact(str(exc), url), statuses.SNIPPET_CHARS)
            raise ApiConnectionError(f"{method} {where}: {what}: {said}") from exc

    # -- answers, read with the key scrubbed (kontext_batch.api.statuses) -----------------------

    def json_object(self, response: httpx.Response, method: str) -> dict[str, Any]:
        """The response body as a JSON object; anything else is a ServerError (a retry may fix it)."""
        return statuses.json_object(response, method, self.scrub)

    def detail(self, response: httpx.Response) -> object:
        """The ``detail`` (BFL) or ``error`` (reseller) of an error body, else a text snippet."""
        return statuses.detail(response, self.scrub)

    def api_error(self, response: httpx.Response, method: str) -> KontextBatchError:
        """The exception an unsuccessful API response stands for."""
        return statuses.api_error(response, method, self.scrub)

    # -- samples --------------------------------------------------------------------------------

    def download(self, sample_url: str) -> Sample:
        """GET a signed sample URL, without the key: it is a delivery host, not the API.

        Fetched by the one guarded fetch (:func:`kontext_batch.io.fetch.fetch`): redirects followed
        one checked hop at a time, the body streamed and dropped once it passes ``max_sample_bytes``.
        """
        cap = self.max_sample_bytes
        try:
            got = fetch(
                sample_url,
                self._sample_route,
                max_redirects=self.max_redirects,
                max_bytes=cap,
                error_body_bytes=_ERROR_BODY_BYTES,
                translate=lambda url: self._mapped("GET", url),
                log=log,
            )
        except ObjectTooLarge:
            raise InvalidImage(
                f"GET {shown_url(sample_url)}: the sample is over the {cap:,}-byte limit "
                "(KONTEXT_MAX_SAMPLE_BYTES); not stored"
            ) from None
        if not got.ok:
            raise statuses.sample_error(got, sample_url, self.redact)
        if not got.content:
            # A 200 with nothing in it is a cut-off transfer, not an image: worth another try.
            raise ServerError(
                f"GET {shown_url(sample_url)} answered {got.status_code}: empty body", status_code=got.status_code
            )
        return Sample(content=got.content, content_type=got.headers.get("content-type", "application/octet-stream"))

    def _sample_route(self, url: str, hop: int) -> tuple[httpx.Client, httpx.URL]:
        """The client to fetch ``url`` with (the API's own origin: the API's pool; elsewhere: the
        guarded delivery pool), and the URL as parsed for the checks (sent as is)."""
        parsed, on_api = self.trust.check_sample_url(url, first=hop == 0)
        return (self.http if on_api else self.delivery), parsed


def _exc_name(exc: BaseException) -> str:
    return type(exc).__name__


# What each of httpx's transport failures means, for a reason a person reads (not the class name).
_TIMEOUTS: Final[dict[type[Exception], str]] = {
    httpx.ConnectTimeout: "connecting timed out",
    httpx.ReadTimeout: "timed out waiting for the answer",
    httpx.WriteTimeout: "timed out sending the request",
    httpx.PoolTimeout: "timed out waiting for a free connection",
}
_BROKEN: Final[dict[type[Exception], str]] = {
    httpx.ConnectError: "cannot connect",
    httpx.ReadError: "the connection broke while reading the answer",
    httpx.WriteError: "the connection broke while sending the request",
    httpx.RemoteProtocolError: "the server closed the connection mid-answer",
}


class ClientBase:
    """What both providers share: the HTTP core (:class:`HttpCore`), the retry policy, lifecycle, a safe repr."""

    name: str = ""
    #: Hosts besides the configured base that may hand out polling URLs (the key goes there).
    api_hosts: re.Pattern[str] | None = None

    def __init__(
        self,
        api_key: Secret | str,
        base_url: str,
        *,
        timeout_s: float,
        retry: RetryPolicy | None,
        transport: httpx.BaseTransport | None,
        http: httpx.Client | None,
        wrap_transport: TransportWrapper | None = None,
        allow_private_urls: bool = False,
        max_sample_bytes: int = DEFAULT_MAX_SAMPLE_BYTES,
    ) -> None:
        self.base_url = base_url
        self.retry = retry
        self._core = HttpCore(
            api_key if isinstance(api_key, Secret) else Secret(api_key),
            base_url=base_url,
            timeout_s=timeout_s,
            transport=transport,
            http=http,
            wrap=wrap_transport,
            api_hosts=self.api_hosts,
            allow_private=allow_private_urls,
            max_sample_bytes=max_sample_bytes,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, key={self._core.key.fingerprint})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close both pools (an injected ``http`` client is left to its owner)."""
        self._core.close()

    def _run(self, fn: Callable[[], T]) -> T:
        return self.retry.call(fn) if self.retry is not None else fn()
