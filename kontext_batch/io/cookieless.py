"""An httpx client that keeps no cookies.

Nothing kontext-batch talks to (the API, delivery hosts, input image hosts) needs a cookie, and a
client that keeps none can carry no state from one host's answer into the next request. httpx's
client files every response's ``Set-Cookie`` into a cookie jar, and does so even when there is
none: it wraps the response and its request in urllib's types for ``http.cookiejar``, which parses
the URL again. That was 4.4 % of a worker's CPU in the benchmark's profile (three responses a job).
"""

from __future__ import annotations

from http.cookiejar import Cookie, CookieJar

import httpx

__all__ = ["CookielessClient"]


class _DropJar(CookieJar):
    """A cookie jar that stores nothing, whatever puts a cookie in it."""

    def set_cookie(self, cookie: Cookie) -> None:
        return None


class _NoCookies(httpx.Cookies):
    """An empty jar that files nothing. A response's cookies are not even read: that is the cost."""

    def __init__(self) -> None:
        super().__init__(_DropJar())

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class CookielessClient(httpx.Client):
    """:class:`httpx.Client` with no cookie jar: no request carries a cookie, none is kept."""

    _no_cookies = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        raise TypeError("a CookielessClient keeps no cookies")
