"""The httpx transport that connects only where :class:`~kontext_batch.io.netguard.AddressGuard` allows.

Apart from the guard itself so that the manifest check, which needs only the guard's policy for
local files, does not load httpx and httpcore (~45 ms of the CLI's start).
"""

from __future__ import annotations

import ssl
import typing

import httpcore
import httpx

from kontext_batch.io.netguard import AddressGuard

__all__ = ["GuardedBackend", "guarded_transport"]


class GuardedBackend(httpcore.SyncBackend):
    """httpcore's socket backend, connecting only to addresses the guard allowed for the host."""

    def __init__(self, guard: AddressGuard) -> None:
        self._guard = guard

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = self._guard.resolve(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        last: Exception = httpcore.ConnectError(f"{host} has no address")
        options = list(socket_options or ())
        for address in addresses:  # the checked addresses themselves: no second lookup to rebind
            try:
                return super().connect_tcp(address, port, timeout, local_address, options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        raise last


def guarded_transport(
    guard: AddressGuard, *, limits: httpx.Limits | None = None, ssl_context: ssl.SSLContext | None = None
) -> httpx.HTTPTransport:
    """An httpx transport whose every connection goes through :class:`GuardedBackend`; with
    ``ssl_context``, its TLS connections share that context (loading the CA bundle takes ~5 ms)."""
    limits = limits or httpx.Limits()
    ctx = ssl_context or httpx.create_ssl_context()
    transport = httpx.HTTPTransport(limits=limits, verify=ctx)
    # httpx offers no public hook for the network backend, so its pool is rebuilt around ours.
    transport._pool = httpcore.ConnectionPool(
        ssl_context=ctx,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=GuardedBackend(guard),
    )
    return transport
