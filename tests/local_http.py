"""A scriptable HTTP server on 127.0.0.1 for fetch-safety tests: each route is a function, and
every request's path and headers are recorded.

``with LocalServer() as srv: srv.routes["/x"] = lambda h: h.reply(200, b"..."); srv.url("/x")``
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Handler", "LocalServer", "local_server"]

Route = Callable[["Handler"], None]


class Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.owner.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        route = self.server.owner.routes.get(self.path.split("?")[0])
        if route is None:
            self.reply(404, b"not found")
        else:
            route(self)

    def do_HEAD(self) -> None:  # an object-store client asks for the size first
        self.server.owner.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, location: str, status: int = 302) -> None:
        self.reply(status, b"", {"Location": location})

    def drip(self, total: int, every_s: float) -> None:
        """Declare ``total`` bytes and send them one at a time."""
        self.send_response(200)
        self.send_header("Content-Length", str(total))
        self.end_headers()
        try:
            for _ in range(total):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(every_s)
        except OSError:  # the client gave up: that is the point
            return

    def stream(self, total: int, chunk: int = 1 << 16, *, declare: bool = False) -> None:
        """Send ``total`` bytes in chunks, without a Content-Length unless ``declare``; counts what went out."""
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        if declare:
            self.send_header("Content-Length", str(total))
        else:
            self.send_header("Connection", "close")
        self.end_headers()
        sent = 0
        try:
            while sent < total:
                n = min(chunk, total - sent)
                self.wfile.write(b"\0" * n)
                sent += n
                self.server.owner.sent = sent
        except OSError:
            return
        finally:
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


class _Server(ThreadingHTTPServer):
    owner: LocalServer
    daemon_threads = True


class LocalServer:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.sent = 0
        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def start(self) -> LocalServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@contextmanager
def local_server() -> Iterator[LocalServer]:
    srv = LocalServer().start()
    try:
        yield srv
    finally:
        srv.stop()
