"""The emulator's FastAPI app: both API dialects, sample delivery, stats and admin routes.

==========================================  ===================================================
route                                       what
==========================================  ===================================================
``POST /v1/{endpoint}``                     submit (BFL dialect; any endpoint name)
``GET /v1/get_result?id=``                  poll (on the host ``polling_url`` names)
``GET /v1/credits``                         the key's balance
``POST /reseller/v1/tasks``                 submit (reseller dialect)
``GET /reseller/v1/tasks/{id}``             poll (reseller dialect)
``GET /delivery/results/{id}/sample.EXT``   signed, expiring sample download
``GET /_emulator/stats``                    counters, per-key block ``keys``, per-task records
``POST /_emulator/credits|faults|reset``    admin: set a key's credits, replace fault rates, reset
``POST /_emulator/revoke``                  admin: refuse a key (403) from now on
==========================================  ===================================================
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Body, FastAPI, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel

from kontext_batch.emulator import images, routes_bfl, routes_reseller
from kontext_batch.emulator.config import EmulatorConfig
from kontext_batch.emulator.faults import FaultInjected
from kontext_batch.emulator.routes_reseller import ResellerError
from kontext_batch.emulator.runtime import Runtime
from kontext_batch.emulator.task import READY

__all__ = ["create_app"]


def _azure_error(code: str, message: str, status: int = 403) -> Response:
    body = f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'
    return Response(body, status_code=status, media_type="application/xml")


class CreditsUpdate(BaseModel):
    key: str
    credits: float | None


class KeyRevoke(BaseModel):
    key: str


def create_app(config: EmulatorConfig | None = None) -> FastAPI:  # noqa: C901 - the route table: each route is a small closure
    """A fresh app with its own state; serve it with uvicorn (see :mod:`.server`)."""
    config = config or EmulatorConfig()
    runtime = Runtime(config)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(title="kontext-batch emulator of the FLUX.1 Kontext API", lifespan=lifespan)
    app.state.runtime = runtime
    app.include_router(routes_bfl.router)
    app.include_router(routes_reseller.router)

    @app.exception_handler(FaultInjected)
    async def _fault(_: Request, exc: FaultInjected) -> Response:
        return exc.response

    @app.exception_handler(ResellerError)
    async def _reseller(_: Request, exc: ResellerError) -> Response:
        return exc.response()

    @app.get("/delivery/results/{task_id}/{filename}")
    async def delivery(
        task_id: str,
        filename: str,
        request: Request,
        se: Annotated[str, Query()] = "",
        sig: Annotated[str, Query()] = "",
    ) -> Response:
        """The sample: signature over path and expiry checked first, then the expiry, then the task."""
        state = runtime.state
        expected = state.sign(request.url.path, se)
        if not hmac.compare_digest(expected, sig):
            return _azure_error("AuthenticationFailed", "Signature did not match.")
        try:
            expires = float(se)
        except ValueError:
            return _azure_error("AuthenticationFailed", "Signed expiry time is malformed.")
        if state.now() > expires:
            return _azure_error("AuthenticationFailed", "Signed expiry time has passed.")
        state.sweep()
        task = state.tasks.get(task_id)
        if task is None or task.sample is None or task.status_at(state.now()) != READY:
            return _azure_error("BlobNotFound", "The specified blob does not exist.", 404)
        if filename != f"sample.{task.extension}":
            return _azure_error("BlobNotFound", "The specified blob does not exist.", 404)
        # shield: a client hanging up must not cancel the render other downloads wait for.
        content = await asyncio.shield(task.sample)
        task.downloads += 1
        state.downloads += 1
        if task.first_download_at is None:
            task.first_download_at = state.now()
        return Response(content, media_type=images.content_type(task.output_format))

    @app.get("/_emulator/stats")
    async def stats(tasks: bool = True) -> dict[str, Any]:
        return runtime.state.stats(include_tasks=tasks)

    @app.post("/_emulator/credits")
    async def set_credits(update: CreditsUpdate) -> dict[str, Any]:
        runtime.state.set_credits(update.key, update.credits)
        return {"ok": True}

    @app.post("/_emulator/revoke")
    async def revoke(update: KeyRevoke) -> dict[str, Any]:
        runtime.state.revoke(update.key)
        return {"ok": True}

    @app.post("/_emulator/faults")
    async def set_faults(faults: Annotated[dict[str, float], Body()]) -> dict[str, Any]:
        try:
            runtime.state.set_faults(faults)
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        return {"ok": True, "faults": runtime.state.faults}

    @app.post("/_emulator/reset")
    async def reset() -> dict[str, Any]:
        await runtime.cancel_background()
        runtime.state.reset()
        return {"ok": True}

    return app
