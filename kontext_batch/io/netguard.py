"""Which network addresses a fetch may reach, checked when the socket connects.

URLs that come from data (a manifest's input image URLs, the sample URLs an API returns, and every
redirect either leads to) must not walk a process into its own network: Redis on 127.0.0.1, an
intranet service on 10.x, a cloud metadata service on 169.254.169.254.

================================  ==============================================================
refused address                   examples
================================  ==============================================================
loopback                          127.0.0.0/8, ::1, ``localhost``
private                           10/8, 172.16/12, 192.168/16, fc00::/7, 100.64/10 (shared)
link-local                        169.254/16, fe80::/10
unspecified                       0.0.0.0, ::
anything else not global          multicast, reserved, documentation ranges
IPv4 inside IPv6                  ::ffff:127.0.0.1 and 6to4 (2002::/16) are judged by their IPv4
================================  ==============================================================

A host name is resolved and *every* address it has is checked; one refused address refuses the
host. The check runs inside the connection (:class:`~kontext_batch.io.guarded.GuardedBackend`), on
the addresses the socket then connects to, so a DNS answer that changes between check and connect
(rebinding) changes nothing. ``KONTEXT_ALLOW_PRIVATE_URLS`` (:attr:`FetchPolicy.allow_private`) turns the check off,
for intranet image hosts and tests.

A guarded transport goes straight to the host: environment proxies are not used for it (a proxy
would be the address checked, not the host).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from kontext_batch.errors import UrlRefused

if TYPE_CHECKING:
    from kontext_batch.settings import Settings

__all__ = [
    "ALLOW_PRIVATE_HINT",
    "AddressGuard",
    "FetchPolicy",
    "Resolver",
    "address_problem",
    "is_loopback_host",
    "system_resolver",
]

#: Resolves ``(host, port)`` to IP address strings; a seam for tests.
Resolver = Callable[[str, int], Sequence[str]]
ALLOW_PRIVATE_HINT: Final = "set KONTEXT_ALLOW_PRIVATE_URLS=1 to allow private addresses"
DEFAULT_MAX_REDIRECTS: Final = 5


@dataclass(frozen=True)
class FetchPolicy:
    """How a URL from data may be fetched: ``deadline_s`` bounds the whole fetch, redirects included."""

    allow_private: bool = False
    deadline_s: float = 60.0
    max_redirects: int = DEFAULT_MAX_REDIRECTS

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchPolicy:
        return cls(allow_private=settings.allow_private_urls, deadline_s=settings.fetch_deadline_s)


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (IPv4 and IPv6), in the resolver's order, without repeats."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]").split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return None


def address_problem(address: str) -> str | None:
    """Why ``address`` may not be reached (``"loopback"``, ``"private"``...), or None when it is public."""
    ip = _ip(address)
    if ip is None:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None:
            ip = embedded
    for problem, hit in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("private", ip.is_private),
        ("multicast", ip.is_multicast),
    ):
        if hit:
            return problem
    return None if ip.is_global else "non-public"


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP literal (no lookup is made)."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    ip = _ip(name)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip is not None and ip.is_loopback


class AddressGuard:
    """Resolves a host and refuses it when any of its addresses is not public (see the module table)."""

    def __init__(self, *, allow_private: bool = False, resolver: Resolver = system_resolver) -> None:
        self.allow_private = allow_private
        self._resolver = resolver

    def resolve(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for ``host``; raises UrlRefused, or OSError when it does not resolve."""
        literal = _ip(host)
        addresses = [str(literal)] if literal is not None else list(self._resolver(host.rstrip("."), port))
        if not addresses:
            raise OSError(f"{host} has no address")
        if not self.allow_private:
            for address in addresses:
                problem = address_problem(address)
                if problem is not None:
                    shown = host if literal is not None else f"{host} ({address})"
                    raise UrlRefused(f"{shown} is a {problem} address; {ALLOW_PRIVATE_HINT}", host=host)
        return addresses

    def check_url(self, url: str) -> list[str]:
        """:meth:`resolve` for the host of ``url``; raises UrlRefused for a URL without a host."""
        import httpx  # noqa: PLC0415 - only a URL's check needs it; the manifest check of local files does not

        parsed = httpx.URL(url)
        if not parsed.host:
            raise UrlRefused(f"no host in {url!r}")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        return self.resolve(parsed.host, port)
