"""A transport that gives each calling thread its own connection pool.

httpcore's pool walks every connection it holds, twice per request, under one lock: it asks each
whether it has expired (a ``poll()`` of its socket) and, for each idle one, counts the idle ones
again (quadratic). A worker's 32 threads sharing one pool keep ~15 connections in it, and that walk
cost more CPU than the HTTP/1.1 exchange itself (6.2 of 7.7 ms/job of the pool's time in the
benchmark's profile, 1,372 ``is_idle()`` calls a job). A thread sends one request at a time, so a
pool of its own holds one or two connections and the walk is short. The threads of a Celery
worker's pool live as long as the process, and so do their pools; a pool whose thread has ended is
closed when the next thread makes its own, so short-lived threads leave no sockets behind.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx

__all__ = ["PerThreadTransport"]


class PerThreadTransport(httpx.BaseTransport):
    """Sends each request through the calling thread's own transport, made by ``make`` on the
    thread's first request; :meth:`close` closes every one made."""

    def __init__(self, make: Callable[[], httpx.BaseTransport]) -> None:
        self._make = make
        self._local = threading.local()
        self._lock = threading.Lock()
        self._made: list[tuple[threading.Thread, httpx.BaseTransport]] = []
        self._closed = False

    def _mine(self) -> httpx.BaseTransport:
        if self._closed:
            raise RuntimeError("the transport was closed")
        mine: httpx.BaseTransport | None = getattr(self._local, "transport", None)
        if mine is None:
            with self._lock:
                if self._closed:
                    raise RuntimeError("the transport was closed")
                ended = [t for thread, t in self._made if not thread.is_alive()]
                self._made = [(thread, t) for thread, t in self._made if thread.is_alive()]
                mine = self._make()
                self._made.append((threading.current_thread(), mine))
            self._local.transport = mine
            for transport in ended:
                transport.close()
        return mine

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._mine().handle_request(request)

    def close(self) -> None:
        with self._lock:
            made, self._made, self._closed = self._made, [], True
        for _thread, transport in made:
            transport.close()

    @property
    def pools(self) -> int:
        """How many threads' transports are open (made, and not closed with their thread)."""
        return len(self._made)
