"""A worker's HTTP clients keep one connection pool per thread (httpcore's shared pool walks every
connection on each request), and every pool is closed with the client."""

from __future__ import annotations

import ssl
import threading
from typing import Any

import httpx
import pytest

from kontext_batch.api import KontextClient
from kontext_batch.api._per_thread import PerThreadTransport
from kontext_batch.metrics import MeteredTransport


class _Recording(httpx.MockTransport):
    def __init__(self, made: list[_Recording]) -> None:
        super().__init__(lambda request: httpx.Response(200, json={"thread": threading.get_ident()}))
        self.sent = 0
        self.closed = False
        made.append(self)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        return super().handle_request(request)

    def close(self) -> None:
        self.closed = True


def test_each_thread_sends_through_a_transport_of_its_own_and_close_closes_them_all() -> None:
    made: list[_Recording] = []
    transport = PerThreadTransport(lambda: _Recording(made))
    client = httpx.Client(transport=transport)

    def two_requests() -> None:
        client.get("http://api.test/a")
        client.get("http://api.test/b")

    threads = [threading.Thread(target=two_requests) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    two_requests()  # and this thread

    assert [t.sent for t in made] == [2, 2, 2, 2]  # one transport a thread, reused by its requests
    assert [t.closed for t in made] == [True, True, True, False]  # the ended threads' went with them
    assert transport.pools == 1
    client.close()
    assert all(t.closed for t in made)
    with pytest.raises(RuntimeError):
        transport.handle_request(httpx.Request("GET", "http://api.test/c"))


def test_a_workers_client_pools_per_thread_and_keeps_its_metrics() -> None:
    wrapped: list[httpx.BaseTransport] = []

    def wrap(inner: httpx.BaseTransport) -> httpx.BaseTransport:
        wrapped.append(inner)
        return MeteredTransport(inner)

    with KontextClient("k-1", "https://api.test", wrap_transport=wrap):
        pass
    # Both pools (the API's and the delivery hosts') are per thread, inside the metrics' timer.
    assert len(wrapped) == 2
    assert all(isinstance(t, PerThreadTransport) for t in wrapped)


def test_the_threads_pools_share_one_tls_context(monkeypatch: pytest.MonkeyPatch) -> None:
    real = ssl.create_default_context
    loads: list[object] = []

    def counted(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        loads.append(args)
        return real(*args, **kwargs)

    pools: list[PerThreadTransport] = []

    def wrap(inner: httpx.BaseTransport) -> httpx.BaseTransport:
        assert isinstance(inner, PerThreadTransport)
        pools.append(inner)
        return inner

    monkeypatch.setattr(ssl, "create_default_context", counted)
    with KontextClient("k-1", "https://api.test", wrap_transport=wrap):
        all_made = threading.Barrier(3)

        def make_both() -> None:
            for p in pools:
                p._mine()
            all_made.wait()  # alive until every thread has made its own

        threads = [threading.Thread(target=make_both) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [p.pools for p in pools] == [3, 3]
    assert len(loads) == 1  # the CA bundle is loaded once, not once a thread and pool


def test_the_pool_of_a_thread_that_ended_is_closed_when_another_thread_makes_its_own() -> None:
    made: list[_Recording] = []
    transport = PerThreadTransport(lambda: _Recording(made))
    client = httpx.Client(transport=transport)
    gone = threading.Thread(target=lambda: client.get("http://api.test/a"))
    gone.start()
    gone.join()
    assert transport.pools == 1
    assert not made[0].closed
    client.get("http://api.test/b")  # this thread's first request
    assert made[0].closed
    assert transport.pools == 1
    client.close()
    assert made[1].closed
