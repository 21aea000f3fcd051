"""BFL's own dialect: ``POST /v1/{endpoint}``, ``GET /v1/get_result``, ``GET /v1/credits``.

The body model mirrors ``FluxKontextProInputs`` from BFL's OpenAPI field for field (types, defaults,
``webhook_url`` as a 1..2083-character URI, ``safety_tolerance`` 0..6, ``output_format``
jpeg|png|webp) plus the documented rules the API enforces (aspect ratio within 21:9..9:21, prompt at
most 10,000 characters), so FastAPI answers a bad body with the same 422 shape BFL's FastAPI does.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, Field, HttpUrl, field_validator

from kontext_batch.emulator.aspect import parse_aspect_ratio
from kontext_batch.emulator.faults import accepted_lost, fault_gate
from kontext_batch.emulator.images import InputImageError
from kontext_batch.emulator.runtime import Runtime, SubmitParams
from kontext_batch.emulator.state import UNLIMITED_CREDITS, Rejected
from kontext_batch.emulator.task import READY, TASK_NOT_FOUND, TaskRecord

__all__ = ["FluxKontextInputs", "request_host", "router"]

_ENDPOINT_RE: Final = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_RESERVED: Final = {"get_result", "credits"}
_AUTH_FAILED: Final = "Not authenticated - Invalid Authentication"

router = APIRouter()
_api_key = APIKeyHeader(name="x-key", auto_error=False)


class FluxKontextInputs(BaseModel):
    """The submit body of ``/v1/flux-kontext-pro`` and ``-max`` (and any endpoint name)."""

    prompt: str = Field(max_length=10_000, description="Text prompt for image generation.")
    input_image: str | None = None
    input_image_2: str | None = None
    input_image_3: str | None = None
    input_image_4: str | None = None
    seed: int | None = None
    aspect_ratio: str | None = None
    output_format: Literal["jpeg", "png", "webp"] | None = "png"
    webhook_url: HttpUrl | None = None
    webhook_secret: str | None = None
    prompt_upsampling: bool = False
    safety_tolerance: int = Field(default=2, ge=0, le=6)

    @field_validator("aspect_ratio")
    @classmethod
    def _aspect(cls, v: str | None) -> str | None:
        if v is not None:
            parse_aspect_ratio(v)
        return v

    def params(self) -> SubmitParams:
        return SubmitParams(
            prompt=self.prompt,
            images=(self.input_image, self.input_image_2, self.input_image_3, self.input_image_4),
            seed=self.seed,
            aspect_ratio=self.aspect_ratio,
            output_format=self.output_format or "png",
            prompt_upsampling=self.prompt_upsampling,
            webhook_url=str(self.webhook_url) if self.webhook_url is not None else None,
            webhook_secret=self.webhook_secret,
        )


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def request_host(request: Request) -> str:
    """The Host the client used (``127.0.0.1:8765``), falling back to the socket's address."""
    host = request.headers.get("host")
    if host:
        return host
    server = request.scope.get("server") or ("127.0.0.1", 80)
    return f"{server[0]}:{server[1]}"


async def authenticated(request: Request, key: Annotated[str | None, Depends(_api_key)]) -> str:
    """The x-key's fingerprint; 403 when missing or not one of the configured keys."""
    fp = runtime_of(request).state.authenticate(key)
    if fp is None:
        raise HTTPException(status_code=403, detail=_AUTH_FAILED)
    return fp


def _poll_url(task: TaskRecord) -> str:
    return f"{task.scheme}://{task.poll_host}/v1/get_result?id={task.id}"


@router.post(
    "/v1/{endpoint}",
    dependencies=[Depends(fault_gate(("500", "503", "429", "timeout", "disconnect")))],
)
async def submit(
    endpoint: str,
    body: FluxKontextInputs,
    request: Request,
    key_fp: Annotated[str, Depends(authenticated)],
) -> dict[str, Any]:
    """Submit a task; answers AsyncResponse, or AsyncWebhookResponse (plus polling_url) with a webhook."""
    if endpoint in _RESERVED or not _ENDPOINT_RE.match(endpoint):
        raise HTTPException(status_code=404, detail="Not Found")
    runtime = runtime_of(request)
    try:
        task = await runtime.submit(
            key_fp=key_fp,
            endpoint=endpoint,
            params=body.params(),
            host=request_host(request),
            scheme=request.url.scheme,
            dialect="bfl",
        )
    except InputImageError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None
    except Rejected as exc:
        raise HTTPException(status_code=exc.status, detail=exc.message) from None
    accepted_lost(runtime)
    out: dict[str, Any] = {"id": task.id}
    if task.webhook_url is not None:
        out.update(status="Pending", webhook_url=task.webhook_url)
    w, h = task.size
    out.update(polling_url=_poll_url(task), cost=task.cost, input_mp=task.input_mp, output_mp=round(w * h / 1e6, 2))
    return out


def _not_found(task_id: str) -> dict[str, Any]:
    return {"id": task_id, "status": TASK_NOT_FOUND, "result": None, "progress": None, "details": None, "preview": None}


@router.get("/v1/get_result", dependencies=[Depends(fault_gate(("500", "503", "timeout", "disconnect")))])
async def get_result(request: Request, task_id: Annotated[str, Query(alias="id")]) -> dict[str, Any]:
    """A task's status. On the submit host (when it differs from the poll host) it is "not found"."""
    runtime = runtime_of(request)
    state = runtime.state
    state.polls += 1
    state.sweep()
    task = state.tasks.get(task_id)
    if task is None or task.dialect != "bfl":
        return _not_found(task_id)
    host = request_host(request)
    if runtime.config.not_found_on_submit_host and host == task.submit_host != task.poll_host:
        return _not_found(task_id)
    now = state.now()
    status = task.polled(now)
    result = None
    if status == READY:
        result = {
            "sample": state.sample_url(task),
            "prompt": task.result_prompt,
            "seed": task.seed,
            "start_time": task.submitted_at,
            "end_time": task.ready_at,
            "duration": round(task.ready_at - task.submitted_at, 3),
        }
    return {
        "id": task.id,
        "status": status,
        "result": result,
        "progress": task.progress_at(now) if status in ("Pending", READY) else None,
        "details": task.details() if status not in ("Pending", READY) else None,
        "preview": None,
    }


@router.get("/v1/credits")
async def credits(request: Request, key_fp: Annotated[str, Depends(authenticated)]) -> dict[str, float]:
    """The key's credit balance (a fixed 1,000,000 when the emulator runs without a credit limit)."""
    balance = runtime_of(request).state.credits_of(key_fp)
    return {"credits": UNLIMITED_CREDITS if balance is None else balance}
