"""The HTTP layer both providers share: one pooled httpx client, logging, and error mapping.

Everything here keeps the API key out of sight: it is only ever put into a request header, never
into a message, a log line or a repr; text that came back from a server is scrubbed of it anyway,
and URLs are shown as ``scheme://host/path`` (:func:`kontext_batch.io.fetch.shown_url`: sample URLs
carry signatures in their query string).

Status mapping for API calls (submit, poll, credits):

=========  ==================================================
400        BadRequest
401, 403   AuthError
402        OutOfCredits
422        ApiValidationError (``detail[].loc/msg/type``)
429        RateLimited (``Retry-After`` seconds or HTTP-date)
408, 5xx   ServerError (``Retry-After`` when present)
other 4xx  BadRequest with its status code
other      ServerError (an unexpected 1xx/3xx)
=========  ==================================================

Sample downloads: 403/404/410 -> SampleExpired; 429 -> RateLimited; 5xx -> ServerError; over
``max_sample_bytes`` -> InvalidImage (the body is read no further).

Where requests may go:

================  ===========================================================================
request           allowed
================  ===========================================================================
API call          the configured base (``localhost`` and ``127.0.0.1`` count as one host); polls
                  also on the API's own hosts (``api_hosts``, https on port 443 only); any other
                  polling URL is UrlRefused before a byte is sent, key included
sample (1st hop)  the configured base's origin, else https (http for a loopback host) to a
                  host whose addresses are all public (:mod:`kontext_batch.io.netguard`)
each redirect     https (http for a loopback host) to public addresses only, at most
                  ``max_redirects``; ``allow_private`` lifts the address check
================  ===========================================================================

An injected ``transport`` or ``http`` client carries every request, samples included (tests).
``wrap`` (the workers' metrics) wraps both pools' transports and leaves every check above in place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar
from urllib.parse import urlsplit

import httpx

from kontext_batch.api.models import Sample
from kontext_batch.errors import (
    ApiConnectionError,
    ApiTimeout,
    ApiValidationError,
    AuthError,
    BadRequest,
    ConfigError,
    FieldError,
    InvalidImage,
    KontextBatchError,
    ObjectTooLarge,
    OutOfCredits,
    RateLimited,
    SampleExpired,
    ServerError,
    UrlRefused,
)
from kontext_batch.io.fetch import Fetched, fetch, shown_url
from kontext_batch.io.netguard import DEFAULT_MAX_REDIRECTS, AddressGuard, guarded_transport, is_loopback_host
from kontext_batch.secret import Secret

if TYPE_CHECKING:
    from kontext_batch.api.retry import RetryPolicy

T = TypeVar("T")

__all__ = [
    "DEFAULT_MAX_SAMPLE_BYTES",
    "ClientBase",
    "HttpCore",
    "opt_float",
    "opt_int",
    "opt_str",
    "parse_retry_after",
]

log = logging.getLogger("kontext_batch.api")

#: Sized for ~64 worker threads sharing one client: one keep-alive connection each to the API,
#: plus head-room for sample downloads from the delivery hosts.
POOL_LIMITS: Final = httpx.Limits(max_connections=128, max_keepalive_connections=64, keepalive_expiry=30.0)
_SNIPPET_CHARS: Final = 160
_MASK: Final = "**********"
#: Largest sample downloaded unless ``KONTEXT_MAX_SAMPLE_BYTES`` says otherwise (outputs are ~1 MP).
DEFAULT_MAX_SAMPLE_BYTES: Final = 64_000_000
_ERROR_BODY_BYTES: Final = 4096  # of an error answer, read for its message; the rest is dropped

Origin = tuple[str, str, int]
#: Wraps a transport without changing where it connects (the workers' metrics).
TransportWrapper = Callable[[httpx.BaseTransport], httpx.BaseTransport]


def origin(url: str | httpx.URL) -> Origin:
    """(scheme, host, port) of ``url``, the port filled in from the scheme."""
    parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    port = parsed.port or {"https": 443, "http": 80}.get(parsed.scheme, 0)
    return parsed.scheme, parsed.host.lower(), port


def same_server(a: Origin, b: Origin) -> bool:
    """Same host and port; ``localhost`` and ``127.0.0.1`` count as one host (the emulator swaps
    them in its polling URLs, as BFL hands out another cluster's host)."""
    if a[2] != b[2]:
        return False
    return a[1] == b[1] or (is_loopback_host(a[1]) and is_loopback_host(b[1]))


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or HTTP-date); None when absent/garbled."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive one is read as UTC.
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def opt_float(value: object) -> float | None:
    """A number from a JSON field, or None when absent or not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def opt_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


class HttpCore:
    """One ``httpx.Client`` (created here, or injected), the key, and the response-to-error mapping.

    Thread-safe: httpx's connection pool is, and nothing here mutates shared state after init.
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
        self.base = origin(base_url)
        self.api_hosts = api_hosts
        self.max_sample_bytes = max_sample_bytes
        self.max_redirects = max_redirects
        self._owns_http = http is None
        # No default headers: the key goes on each API request only, so it can never ride along to
        # a delivery host (downloads) or to another host through a redirect we did not ask for.
        if http is None and transport is None and wrap is not None:
            # httpx ignores a client's ``limits`` when it is given a transport: the pool is sized here.
            transport = wrap(httpx.HTTPTransport(limits=POOL_LIMITS))
            injected = False
        else:
            injected = transport is not None
        self.http = http or httpx.Client(timeout=httpx.Timeout(timeout_s), limits=POOL_LIMITS, transport=transport)
        self._owns_delivery = not (http is not None or injected or allow_private)
        if self._owns_delivery:
            guarded: httpx.BaseTransport = guarded_transport(AddressGuard(), limits=POOL_LIMITS)
            self.delivery = httpx.Client(timeout=httpx.Timeout(timeout_s), transport=wrap(guarded) if wrap else guarded)
        else:
            self.delivery = self.http

    def close(self) -> None:
        if self._owns_http:
            self.http.close()
        if self._owns_delivery:
            self.delivery.close()

    def check_api_url(self, url: str) -> httpx.URL:
        """Raise UrlRefused unless ``url`` (a polling URL) may receive the key (see the module table).

        Returns the URL as parsed for the check: send that, so the request goes exactly where the
        check looked, and httpx does not parse it again (its parser costs ~0.1 ms per long URL).
        """
        try:
            parsed = httpx.URL(url)
            scheme, host, port = origin(parsed)
        except httpx.InvalidURL:
            raise UrlRefused(f"not a usable polling URL: {shown_url(url)!r}") from None
        base_scheme, base_host, _ = self.base
        if same_server((scheme, host, port), self.base) and scheme in ("https", base_scheme):
            return parsed
        if scheme == "https" and port == 443 and self.api_hosts is not None and self.api_hosts.fullmatch(host):
            return parsed
        where = f"{scheme}://{host}:{port}"
        raise UrlRefused(
            f"polling URL {where} is not the API's ({base_host} or its own hosts over https): "
            "nothing was sent there, the API key included",
            host=host,
        )

    def scrub(self, text: str) -> str:
        """``text`` with every occurrence of the key masked (defence in depth for echoed bodies)."""
        key = self.key.reveal()
        return text.replace(key, _MASK) if key else text

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
            raise ApiTimeout(f"{method} {where}: {type(exc).__name__}") from exc
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise ConfigError(f"{method} {shown_url(url)}: not a usable http(s) URL") from exc
        except httpx.HTTPError as exc:
            where = shown_url(url)
            log.debug("%s %s failed after %.3fs: %s", method, where, time.perf_counter() - started, exc_name(exc))
            raise ApiConnectionError(f"{method} {where}: {exc_name(exc)}: {self.redact(str(exc), url)}") from exc

    def redact(self, text: str, url: str | httpx.URL) -> str:
        """``text`` without the key and without ``url``'s query string (a sample URL's signature)."""
        query = urlsplit(str(url)).query
        if query:
            text = text.replace(query, "…")
        return self.scrub(text)[:_SNIPPET_CHARS]

    # -- bodies ---------------------------------------------------------------------------------

    def json_object(self, response: httpx.Response, method: str) -> dict[str, Any]:
        """The response body as a JSON object; anything else is a ServerError (a retry may fix it)."""
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ServerError(
                f"{method} {shown_url(response.request.url)} -> {response.status_code}: "
                f"body is not JSON: {self.snippet(response)!r}",
                status_code=response.status_code,
            ) from None
        if not isinstance(body, dict):
            raise ServerError(
                f"{method} {shown_url(response.request.url)} -> {response.status_code}: "
                f"expected a JSON object, got {type(body).__name__}",
                status_code=response.status_code,
            )
        return body

    def snippet(self, response: httpx.Response) -> str:
        """A short, single-line, key-free excerpt of a body (HTML error pages included)."""
        try:
            text = response.text
        except (UnicodeDecodeError, LookupError):
            return f"<{len(response.content)} bytes>"
        return self.scrub(" ".join(text.split()))[:_SNIPPET_CHARS]

    def detail(self, response: httpx.Response) -> object:
        """The ``detail`` (BFL) or ``error`` (reseller) of an error body, else a text snippet."""
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self.snippet(response) or None
        if isinstance(body, dict):
            for name in ("detail", "error", "message"):
                if body.get(name) is not None:
                    return body[name]
        return body

    # -- errors ---------------------------------------------------------------------------------

    def api_error(self, response: httpx.Response, method: str) -> KontextBatchError:
        """The exception an unsuccessful API response stands for (see the module table)."""
        code = response.status_code
        detail = self.detail(response)
        what = f"{method} {shown_url(response.request.url)} -> {code}"
        text = _detail_text(detail)
        message = self.scrub(f"{what}: {text}" if text else what)
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if code == 422:
            return ApiValidationError(_field_errors(detail, self.scrub), detail=detail)
        if code == 429:
            return RateLimited(message, retry_after_s=retry_after, detail=detail)
        if code in (401, 403):
            return AuthError(message, status_code=code, detail=detail)
        if code == 402:
            return OutOfCredits(message, detail=detail)
        if code == 408 or code >= 500:
            return ServerError(message, status_code=code, retry_after_s=retry_after, detail=detail)
        if 400 <= code < 500:
            return BadRequest(message, status_code=code, detail=detail)
        return ServerError(f"{message} (unexpected status)", status_code=code, detail=detail)

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
        return self._sample(got, sample_url)

    def _sample_route(self, url: str, hop: int) -> tuple[httpx.Client, httpx.URL]:
        """The client to fetch ``url`` with, and the URL as parsed for the checks (sent as is)."""
        try:
            parsed = httpx.URL(url)
            scheme, host, _ = where = origin(parsed)
        except httpx.InvalidURL:
            raise UrlRefused(f"not a usable sample URL: {shown_url(url)!r}") from None
        if hop == 0 and same_server(where, self.base) and scheme == self.base[0]:
            return self.http, parsed
        if scheme != "https" and not (scheme == "http" and is_loopback_host(host)):
            raise UrlRefused(f"sample URL {shown_url(url)} is not https; it was not fetched", host=host)
        return self.delivery, parsed

    def _sample(self, got: Fetched, sample_url: str) -> Sample:
        """The sample in ``got``, which ``got.url`` (``sample_url`` or a hop it redirected to) sent."""
        code = got.status_code
        what = f"GET {shown_url(sample_url)} -> {code}"
        if not got.ok:
            if code in (403, 404, 410):
                raise SampleExpired(f"{what}: sample URL expired or unknown", status_code=code)
            if httpx.codes.is_redirect(code) and "location" in got.headers:  # an empty Location
                raise ServerError(f"{what} without a Location")
            # An error page may echo the URL that answered: neither signature goes into the message.
            text = " ".join(got.content.decode("utf-8", "replace").split())
            text = self.redact(self.redact(text, sample_url), got.url)
            retry_after = parse_retry_after(got.headers.get("retry-after"))
            if code == 429:
                raise RateLimited(what, retry_after_s=retry_after)
            if code >= 500 or code == 408:
                raise ServerError(f"{what}: {text}", status_code=code, retry_after_s=retry_after)
            raise BadRequest(f"{what}: {text}", status_code=code)
        if not got.content:
            # A 200 with nothing in it is a cut-off transfer, not an image: worth another try.
            raise ServerError(f"{what}: empty body", status_code=code)
        return Sample(content=got.content, content_type=got.headers.get("content-type", "application/octet-stream"))


def exc_name(exc: BaseException) -> str:
    return type(exc).__name__


def _detail_text(detail: object) -> str:
    if detail is None:
        return ""
    if isinstance(detail, str):
        text = detail
    else:
        try:
            text = json.dumps(detail, default=str)
        except (TypeError, ValueError):
            text = repr(detail)
    return " ".join(text.split())[:_SNIPPET_CHARS]


def _field_errors(detail: object, scrub: Callable[[str], str]) -> list[FieldError]:
    """FieldErrors from a FastAPI-style ``detail`` list; one whole-request error for anything else."""
    errors: list[FieldError] = []
    if isinstance(detail, list):
        for item in detail:
            if not isinstance(item, dict):
                continue
            raw_loc = item.get("loc")
            loc = tuple(p for p in raw_loc if isinstance(p, str | int)) if isinstance(raw_loc, list) else ()
            errors.append(
                FieldError(
                    loc or ("body",),
                    scrub(str(item.get("msg", "invalid"))),
                    str(item.get("type", "value_error")),
                )
            )
    if not errors:
        errors.append(FieldError(("body",), scrub(_detail_text(detail) or "rejected by the API")))
    return errors


class ClientBase:
    """What both providers share: one pooled HTTP core, the retry policy, lifecycle, a safe repr."""

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
        """Close the pooled connections (an injected ``http`` client is left to its owner)."""
        self._core.close()

    def _run(self, fn: Callable[[], T]) -> T:
        return self.retry.call(fn) if self.retry is not None else fn()
