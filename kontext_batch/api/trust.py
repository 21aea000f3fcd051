"""Where an API client may send a request: the key only to the API, samples only over https.

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

The address check itself happens when a socket connects (the delivery client's guarded transport);
:class:`UrlTrust` decides on what a URL says: its scheme, host and port.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx

from kontext_batch.errors import UrlRefused
from kontext_batch.io.fetch import shown_url
from kontext_batch.io.netguard import is_loopback_host

__all__ = ["Origin", "UrlTrust", "origin", "same_server"]

Origin = tuple[str, str, int]


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


@dataclass(frozen=True)
class UrlTrust:
    """The module table for one client: ``base`` is its configured API's origin, ``api_hosts`` the
    hosts besides it that may hand out polling URLs (the key goes there)."""

    base: Origin
    api_hosts: re.Pattern[str] | None = None

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

    def check_sample_url(self, url: str, *, first: bool) -> tuple[httpx.URL, bool]:
        """Raise UrlRefused unless a sample download may GET ``url`` (``first``: the URL the API gave,
        not a redirect). Returns the URL as parsed for the check (send that), and whether it is on the
        API's own origin (so the API's pool fetches it; no key is sent either way)."""
        try:
            parsed = httpx.URL(url)
            scheme, host, _ = where = origin(parsed)
        except httpx.InvalidURL:
            raise UrlRefused(f"not a usable sample URL: {shown_url(url)!r}") from None
        if first and same_server(where, self.base) and scheme == self.base[0]:
            return parsed, True
        if scheme != "https" and not (scheme == "http" and is_loopback_host(host)):
            raise UrlRefused(f"sample URL {shown_url(url)} is not https; it was not fetched", host=host)
        return parsed, False
