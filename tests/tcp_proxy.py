"""A TCP proxy on loopback that a test can cut and restore: a worker cut off from Redis, for real.

``cut()`` closes every open connection and refuses new ones (a listener that accepts and closes at
once, as a partitioned host's firewall RST would); ``restore()`` lets connections through again.
``lose_next_reply()`` lets the next command reach the server and drops the connection instead of
its reply: a server that ran a command and went away before answering it (a restart).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from types import TracebackType


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._lose_reply = threading.Event()
        self.replies_lost = 0
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)
        self.connections = 0  # accepted and forwarded, over the proxy's life

    def url(self, scheme: str = "redis", db: int = 0) -> str:
        return f"{scheme}://127.0.0.1:{self.port}/{db}"

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        return self

    def __exit__(self, *_: object | TracebackType) -> None:
        self._stop.set()
        self._thread.join(5)
        self._close_all()
        self._listener.close()

    def cut(self) -> None:
        self._open.clear()
        self._close_all()

    def restore(self) -> None:
        self._open.set()

    def lose_next_reply(self) -> None:
        self._lose_reply.set()

    def _close_all(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, set()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._open.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, upstream))
            self.connections += 1
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        for s in (a, b):
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        peer = {a: b, b: a}
        try:
            while not self._stop.is_set() and self._open.is_set():
                for key, _ in sel.select(0.2):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = src.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        continue
                    if not data:
                        return
                    if src is b and self._lose_reply.is_set():
                        self._lose_reply.clear()
                        self.replies_lost += 1
                        return  # both sockets close in the finally: the command ran, its reply is gone
                    peer[src].setblocking(True)
                    peer[src].sendall(data)
                    peer[src].setblocking(False)
        except OSError:
            return
        finally:
            sel.close()
            with self._lock:
                self._conns.discard(a)
                self._conns.discard(b)
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()
