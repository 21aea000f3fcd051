"""Serving the emulator: :class:`Emulator` (a background thread, for tests) and :func:`run` (the CLI).

::

    with Emulator(EmulatorConfig(time_scale=0.05, seed=1)) as emu:
        httpx.post(f"{emu.base_url}/v1/flux-kontext-pro", headers={"x-key": "k"}, json={...})
        emu.stats()["submits"]

Both bind the socket themselves before uvicorn starts, so ``port=0`` picks a free port and the
address is known before the first request.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import httpx
import uvicorn
from starlette.types import Scope

from kontext_batch.emulator.app import create_app
from kontext_batch.emulator.config import EmulatorConfig
from kontext_batch.emulator.faults import DISCONNECT_LOG_MESSAGE
from kontext_batch.emulator.runtime import Runtime
from kontext_batch.secret import Secret

__all__ = ["Emulator", "run"]

_START_TIMEOUT_S = 15.0
#: Event-loop turns to wait for uvicorn to notice an aborted connection (it takes one or two).
_ABORT_SETTLE_TURNS = 50


class _QuietDisconnects(logging.Filter):
    """Drops uvicorn's error line for responses the ``disconnect`` fault cuts short on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != DISCONNECT_LOG_MESSAGE


_FILTER = _QuietDisconnects()


class _Server(uvicorn.Server):
    """uvicorn with a ready callback, and a shutdown that first releases stalled requests."""

    def __init__(self, config: uvicorn.Config, runtime: Runtime, on_ready: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._runtime = runtime
        self._on_ready = on_ready
        runtime.drop_connection = self._drop_connection

    async def _drop_connection(self, scope: Scope) -> bool:
        """Abort the connection that carried ``scope``'s request, before any byte of an answer.

        uvicorn keeps one protocol object per connection in ``server_state.connections``; the one
        whose peer address is the request's ``client`` is ours. Once it has seen the connection go,
        it sends nothing for the request (no 500) and logs nothing.
        """
        client = scope.get("client")
        for conn in list(self.server_state.connections):
            transport = getattr(conn, "transport", None)
            if client is None or transport is None or getattr(conn, "client", None) != tuple(client):
                continue
            transport.abort()
            cycle = getattr(conn, "cycle", None)
            for _ in range(_ABORT_SETTLE_TURNS):
                if cycle is None or getattr(cycle, "disconnected", True):
                    break
                await asyncio.sleep(0)
            return True
        return False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_ready is not None:
            self._on_ready()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._runtime.stopping.set()
        await super().shutdown(sockets)


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _make_server(
    config: EmulatorConfig, sock: socket.socket, log_level: str, on_ready: Callable[[], None] | None
) -> _Server:
    logging.getLogger("uvicorn.error").addFilter(_FILTER)
    app = create_app(config)
    uv_config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=3,
        # Hundreds of pollers keep connections alive; give them room.
        backlog=2048,
        timeout_keep_alive=30,
    )
    return _Server(uv_config, app.state.runtime, on_ready)


class Emulator:
    """The emulator on a free port in a background thread; a context manager.

    ``base_url`` is ``http://127.0.0.1:PORT`` (the host given, or 127.0.0.1 for a wildcard bind).
    ``stats``, ``key_stats``, ``set_credits``, ``set_faults`` and ``reset`` go through the admin HTTP routes.
    """

    def __init__(self, config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or EmulatorConfig()
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._client: httpx.Client | None = None

    @property
    def base_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.port}"

    def start(self) -> Emulator:
        """Start serving and return once the server answers HTTP. Raises RuntimeError if it cannot."""
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._server = _make_server(self.config, sock, "warning", self._ready.set)
        server = self._server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"kontext-emulator-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._ready.wait(0.05):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise RuntimeError(f"emulator failed to start on {self.base_url}")
        self._client = httpx.Client(base_url=self.base_url, timeout=10.0)
        self._client.get("/_emulator/stats", params={"tasks": "false"}).raise_for_status()
        return self

    def stop(self) -> None:
        """Stop the server and wait for its thread (stalled requests are released first)."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=15)
        self._server = None
        self._thread = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _admin(self) -> httpx.Client:
        if self._client is None:
            raise RuntimeError("emulator is not running; use it as a context manager or call start()")
        return self._client

    def stats(self, *, tasks: bool = True) -> dict[str, Any]:
        resp = self._admin().get("/_emulator/stats", params={"tasks": str(tasks).lower()})
        resp.raise_for_status()
        result: dict[str, Any] = resp.json()
        return result

    def key_stats(self, key: str) -> dict[str, Any]:
        """``stats()["keys"]`` entry of ``key`` (stats name keys by fingerprint only). KeyError if unseen."""
        result: dict[str, Any] = self.stats(tasks=False)["keys"][Secret(key).fingerprint]
        return result

    def set_credits(self, key: str, credits: float | None) -> None:
        self._admin().post("/_emulator/credits", json={"key": key, "credits": credits}).raise_for_status()

    def set_faults(self, faults: dict[str, float]) -> None:
        self._admin().post("/_emulator/faults", json=faults).raise_for_status()

    def reset(self) -> None:
        self._admin().post("/_emulator/reset").raise_for_status()

    def __repr__(self) -> str:
        return f"Emulator(base_url={self.base_url!r}, running={self._client is not None})"


def run(
    config: EmulatorConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 8765,
    on_ready: Callable[[str], None] | None = None,
    log_level: str = "warning",
) -> None:
    """Serve in the foreground until interrupted; ``on_ready(base_url)`` once it accepts requests."""
    sock = _bind(host, port)
    base_url = f"http://{_url_host(host)}:{sock.getsockname()[1]}"
    server = _make_server(
        config or EmulatorConfig(), sock, log_level, (lambda: on_ready(base_url)) if on_ready else None
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
