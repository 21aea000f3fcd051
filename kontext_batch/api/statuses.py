"""What an HTTP answer of the API (or of a sample's delivery host) means, as an exception.

API calls (submit, poll, credits), :func:`api_error`:

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

Sample downloads, :func:`sample_error`: 403/404/410 -> SampleExpired; 429 -> RateLimited; 408 and
5xx -> ServerError; a redirect with an empty Location -> ServerError; other -> BadRequest. (Over
``max_sample_bytes`` is InvalidImage, raised by the download itself.)

Every function takes ``scrub`` (or ``redact``), the client's masking of its key: text that came back
from a server goes into a message only through it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final

import httpx

from kontext_batch.api.reasons import api_message, cut
from kontext_batch.errors import (
    ApiValidationError,
    AuthError,
    BadRequest,
    FieldError,
    KontextBatchError,
    OutOfCredits,
    RateLimited,
    SampleExpired,
    ServerError,
)
from kontext_batch.io.fetch import Fetched, shown_url

__all__ = ["SNIPPET_CHARS", "api_error", "detail", "json_object", "parse_retry_after", "sample_error", "snippet"]

SNIPPET_CHARS: Final = 160
#: Masks a secret in a text: the key (HttpCore.scrub).
Scrub = Callable[[str], str]


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


def json_object(response: httpx.Response, method: str, scrub: Scrub) -> dict[str, Any]:
    """The response body as a JSON object, the key masked in it (a body that echoes it must not carry
    it into a reason); anything else is a ServerError (a retry may fix it)."""
    try:
        body = json.loads(scrub(response.text))
    except (json.JSONDecodeError, UnicodeDecodeError, LookupError):
        raise ServerError(
            f"{method} {shown_url(response.request.url)} answered {response.status_code}: "
            f"body is not JSON: {snippet(response, scrub)!r}",
            status_code=response.status_code,
        ) from None
    if not isinstance(body, dict):
        raise ServerError(
            f"{method} {shown_url(response.request.url)} answered {response.status_code}: "
            f"expected a JSON object, got {type(body).__name__}",
            status_code=response.status_code,
        )
    return body


def snippet(response: httpx.Response, scrub: Scrub) -> str:
    """A short, single-line, key-free excerpt of a body (HTML error pages included)."""
    return cut(_one_line(response, scrub), SNIPPET_CHARS)


def _one_line(response: httpx.Response, scrub: Scrub) -> str:
    try:
        text = response.text
    except (UnicodeDecodeError, LookupError):
        return f"<{len(response.content)} bytes>"
    return " ".join(scrub(text).split())


def detail(response: httpx.Response, scrub: Scrub) -> object:
    """The ``detail`` (BFL) or ``error`` (reseller) of an error body, else a text snippet."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        # Whole (one line, the key masked): the message built from it is cut once, saying how long it was.
        return _one_line(response, scrub) or None
    if isinstance(body, dict):
        for name in ("detail", "error", "message"):
            if body.get(name) is not None:
                return body[name]
    return body


def api_error(response: httpx.Response, method: str, scrub: Scrub) -> KontextBatchError:  # noqa: PLR0911 - one return per documented status class
    """The exception an unsuccessful API response stands for (see the module table)."""
    code = response.status_code
    found = detail(response, scrub)
    what = f"{method} {shown_url(response.request.url)} answered {code}"
    text = _detail_text(found)
    message = scrub(f"{what}: {text}" if text else what)
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    if code == 422:
        return ApiValidationError(_field_errors(found, scrub), detail=found)
    if code == 429:
        return RateLimited(message, retry_after_s=retry_after, detail=found)
    if code in (401, 403):
        return AuthError(message, status_code=code, detail=found)
    if code == 402:
        return OutOfCredits(message, detail=found)
    if code == 408 or code >= 500:
        return ServerError(message, status_code=code, retry_after_s=retry_after, detail=found)
    if 400 <= code < 500:
        return BadRequest(message, status_code=code, detail=found)
    return ServerError(f"{message} (unexpected status)", status_code=code, detail=found)


def sample_error(got: Fetched, sample_url: str, redact: Callable[[str, str], str]) -> KontextBatchError:
    """The exception an unsuccessful answer to a sample download stands for (see the module table).

    ``got.url`` answered (``sample_url`` or a hop it redirected to); ``redact(text, url)`` drops the
    key and ``url``'s query from ``text``.
    """
    code = got.status_code
    what = f"GET {shown_url(sample_url)} answered {code}"
    if code in (403, 404, 410):
        return SampleExpired(f"{what}: sample URL expired or unknown", status_code=code)
    if httpx.codes.is_redirect(code) and "location" in got.headers:  # an empty Location
        return ServerError(f"{what} without a Location")
    # An error page may echo the URL that answered: neither signature goes into the message.
    text = cut(redact(redact(got.content.decode("utf-8", "replace"), sample_url), got.url), SNIPPET_CHARS)
    retry_after = parse_retry_after(got.headers.get("retry-after"))
    if code == 429:
        return RateLimited(what, retry_after_s=retry_after)
    if code >= 500 or code == 408:
        return ServerError(f"{what}: {text}", status_code=code, retry_after_s=retry_after)
    return BadRequest(f"{what}: {text}", status_code=code)


def _detail_text(found: object) -> str:
    return api_message(found, SNIPPET_CHARS)


def _field_errors(found: object, scrub: Scrub) -> list[FieldError]:
    """FieldErrors from a FastAPI-style ``detail`` list; one whole-request error for anything else."""
    errors: list[FieldError] = []
    if isinstance(found, list):
        for item in found:
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
        errors.append(FieldError(("body",), scrub(_detail_text(found) or "rejected by the API")))
    return errors
