"""A worker's HTTP endpoints for Prometheus and for Kubernetes' probes, on one port.

=========  ===============================================================================
path       answers
=========  ===============================================================================
/metrics   the Prometheus page (:mod:`kontext_batch.metrics`)
/healthz   liveness: 200 while every worker thread goes round its loop; 503 when one has
           stopped (died, or stuck for longer than its stall limit). Redis being down is not a
           reason: the threads keep looping while they wait for it, and a restart would not help.
/readyz    readiness: 200 while the last heartbeat reached Redis within the heartbeat's TTL
           and the worker is not shutting down; 503 otherwise, with the reason as the body
=========  ===============================================================================

Any other path is 404. The server runs on a daemon thread of its own, so a scrape never waits on a
step; the gauges read Redis at scrape time and show nothing (not a 500) while it is down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, make_wsgi_app

from kontext_batch.coord.holders import TTL_S
from kontext_batch.metrics import RedisCollector
from kontext_batch.runtime import Runtime

__all__ = ["Health", "serve"]

log = logging.getLogger("kontext_batch.worker")

#: How long a loop may go without a round before liveness fails. The heartbeat loops every second
#: whatever Redis does; a sweep may write a large run's results.csv, which takes seconds, not minutes.
STALL_S: Final = {"heartbeat": 30.0, "sweeper": 300.0, "delays": 60.0}

_Start = Callable[[str, list[tuple[str, str]]], Any]


class Health:
    """What the probes read. Thread-safe: the worker's threads write it, the HTTP thread reads it."""

    def __init__(self, stall_s: dict[str, float] | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_s = dict(STALL_S if stall_s is None else stall_s)
        self._clock = clock
        self._rounds: dict[str, float] = {}
        self._beat_ok_at: float | None = None
        self._draining = False
        self._drain_reason = ""
        self._lock = threading.Lock()

    def round(self, loop: str) -> None:
        """``loop`` went round once (whether or not its work succeeded)."""
        with self._lock:
            self._rounds[loop] = self._clock()

    def beat_ok(self) -> None:
        """A heartbeat reached Redis."""
        with self._lock:
            self._beat_ok_at = self._clock()

    def drain(self, reason: str = "shutting down") -> None:
        """Shutting down, or stepping aside for newer workers: not ready any more, whatever Redis says."""
        with self._lock:
            self._draining = True
            self._drain_reason = reason

    @property
    def draining(self) -> bool:
        with self._lock:
            return self._draining

    def live(self) -> tuple[bool, str]:
        now = self._clock()
        with self._lock:
            rounds = dict(self._rounds)
        stuck = [
            f"{loop} has not gone round for {now - rounds[loop]:.0f} s"
            for loop in sorted(rounds)
            if now - rounds[loop] > self.stall_s.get(loop, 60.0)
        ]
        return (not stuck, "; ".join(stuck) or "ok")

    def ready(self) -> tuple[bool, str]:
        now = self._clock()
        with self._lock:
            draining, beat_at, why = self._draining, self._beat_ok_at, self._drain_reason
        if draining:
            return False, why
        if beat_at is None:
            return False, "no heartbeat has reached Redis yet"
        if now - beat_at > TTL_S:
            return False, f"no heartbeat has reached Redis for {now - beat_at:.0f} s"
        return True, "ok"

    def app(self, metrics: Callable[[dict[str, Any], _Start], Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
        """The WSGI app of the three paths."""

        def app(environ: dict[str, Any], start: _Start) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path == "/metrics":
                return metrics(environ, start)
            if path in ("/healthz", "/readyz"):
                ok, why = self.live() if path == "/healthz" else self.ready()
                start("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain; charset=utf-8")])
                return [why.encode() + b"\n"]
            start("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: /metrics, /healthz or /readyz\n"]

        return app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds are not worth a log line each."""


_serving: tuple[str, int] | None = None
_serving_lock = threading.Lock()


def serve(rt: Runtime, health: Health, port: int, host: str = "127.0.0.1") -> tuple[str, int]:
    """Serve the three paths on ``host:port`` from a daemon thread, once per process; the address."""
    global _serving  # noqa: PLW0603 - one server per process is the point
    with _serving_lock:
        if _serving is None:
            REGISTRY.register(RedisCollector(rt))
            server = make_server(host, port, health.app(make_wsgi_app(REGISTRY)), _Server, _QuietHandler)
            threading.Thread(target=server.serve_forever, name="kontext-http", daemon=True).start()
            _serving = (host, int(server.server_address[1]))
            log.info("metrics and probes on http://%s:%d (/metrics, /healthz, /readyz)", *_serving)
        return _serving
