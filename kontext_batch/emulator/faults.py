"""Request faults: answers a flaky real API gives, injected before a request is processed.

A route opts in with ``dependencies=[Depends(fault_gate(...))]``. The gate runs before auth and body
validation, draws at most one fault from the configured rates, and raises :class:`FaultInjected`
carrying the response to send, so a faulted submit never creates a task:

==============  ===============================================================================
``500``         500 with a JSON detail
``503``         503, alternately a JSON detail and a proxy's HTML page
``429``         a spurious 429 (submit only)
``timeout``     holds the request ``stall_s`` real seconds (past any sane client timeout), then 504
``disconnect``  starts a 200 with a Content-Length and closes the connection mid-body
==============  ===============================================================================

``accepted-lost`` is drawn later, by the submit routes once the task exists (created, charged,
counted against the cap): :func:`accepted_lost` then raises :class:`FaultInjected` with a
:class:`DroppedConnection`, which aborts the connection before a byte of the answer is sent, as a
proxy that crashes after forwarding the request would. The client sees a transport error for a
task that runs and bills.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Literal

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.types import Receive, Scope, Send

from kontext_batch.emulator.config import ACCEPTED_FAULTS
from kontext_batch.emulator.runtime import Runtime

__all__ = ["DISCONNECT_LOG_MESSAGE", "DroppedConnection", "FaultInjected", "accepted_lost", "fault_gate"]

#: What uvicorn logs when a response is cut short on purpose; the server filters it out.
DISCONNECT_LOG_MESSAGE = "ASGI callable returned without completing response."

_HTML_503 = (
    b"<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
    b"<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n</body>\r\n</html>\r\n"
)


class FaultInjected(Exception):
    """Raised by :func:`fault_gate` when a fault fires; ``response`` is what the client gets."""

    def __init__(self, response: Response) -> None:
        super().__init__("fault injected")
        self.response = response


class _CutShort(Response):
    """Promises a body of 4096 bytes, sends a few and ends: the client sees a dropped connection."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"id": "', "more_body": True})


class DroppedConnection(Response):
    """Aborts the request's connection without sending anything (via ``Runtime.drop_connection``).

    Where the server offers no way to abort (no uvicorn underneath), it falls back to cutting a
    response short, which a client also sees as a dropped connection.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime: Runtime = scope["app"].state.runtime
        if runtime.drop_connection is not None and await runtime.drop_connection(scope):
            return
        await _CutShort()(scope, receive, send)


def accepted_lost(runtime: Runtime) -> None:
    """Called by a submit route after its task exists: raise FaultInjected when the answer is to be lost."""
    if runtime.state.draw_fault(ACCEPTED_FAULTS) is not None:
        raise FaultInjected(DroppedConnection())


def _key_of(request: Request) -> str | None:
    """The API key a request carries, in either dialect's header."""
    if key := request.headers.get("x-key"):
        return key
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _error(dialect: str, status: int, code: str, message: str) -> JSONResponse:
    if dialect == "reseller":
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)
    return JSONResponse({"detail": message}, status_code=status)


def fault_gate(
    kinds: tuple[str, ...], dialect: Literal["bfl", "reseller"] = "bfl"
) -> Callable[[Request], Awaitable[None]]:
    """A dependency that may replace the request's answer by one of ``kinds``."""

    async def gate(request: Request) -> None:
        runtime: Runtime = request.app.state.runtime
        kind = runtime.state.draw_fault(kinds)
        if kind is None:
            return
        if kind == "500":
            raise FaultInjected(_error(dialect, 500, "internal_error", "Internal Server Error"))
        if kind == "503":
            if runtime.state.faults_injected["503"] % 2 == 0:
                raise FaultInjected(HTMLResponse(_HTML_503, status_code=503))
            raise FaultInjected(_error(dialect, 503, "service_unavailable", "Service temporarily unavailable"))
        if kind == "429":
            if (fp := runtime.state.authenticate(_key_of(request))) is not None:
                runtime.state.key(fp).answers_429 += 1
            response = _error(dialect, 429, "rate_limited", "Too many requests, slow down")
            response.headers["Retry-After"] = "1"
            raise FaultInjected(response)
        if kind == "timeout":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(runtime.stopping.wait(), runtime.config.stall_s)
            raise FaultInjected(_error(dialect, 504, "gateway_timeout", "Gateway Timeout"))
        raise FaultInjected(_CutShort())

    return gate
