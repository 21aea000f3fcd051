"""The reseller dialect under ``/reseller/v1``: Bearer auth, ``model`` in the body, task objects.

``POST /reseller/v1/tasks`` -> ``{"id", "status": "pending", "model"}``;
``GET /reseller/v1/tasks/{id}`` -> ``{"id", "model", "status", "output"?, "usage"?, "error"?, "metadata"}``
with status ``pending`` | ``processing`` | ``completed`` | ``failed``. Errors other than 422 carry
``{"error": {"code", "message"}}``. State, caps, credits and images are the BFL routes' own: the
same key counts for both dialects.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, field_validator

from kontext_batch.emulator.aspect import parse_aspect_ratio
from kontext_batch.emulator.faults import accepted_lost, fault_gate
from kontext_batch.emulator.images import InputImageError
from kontext_batch.emulator.routes_bfl import request_host, runtime_of
from kontext_batch.emulator.runtime import SubmitParams
from kontext_batch.emulator.state import Rejected
from kontext_batch.emulator.task import CONTENT_MODERATED, PENDING, READY, REQUEST_MODERATED

__all__ = ["ResellerError", "ResellerTaskInputs", "router"]

PREFIX: Final = "/reseller/v1"
MODEL_ENDPOINTS: Final = {"flux_kontext_pro": "flux-kontext-pro", "flux_kontext_max": "flux-kontext-max"}
_FAILURE_CODES: Final = {
    REQUEST_MODERATED: "request_moderated",
    CONTENT_MODERATED: "content_moderated",
}
_REJECT_CODES: Final = {429: "rate_limited", 402: "insufficient_credits"}
#: Share of a task's latency reported as "pending" before it turns "processing".
_QUEUED_SHARE: Final = 0.15

router = APIRouter(prefix=PREFIX)
_bearer = HTTPBearer(auto_error=False)


class ResellerError(Exception):
    """Raised in reseller routes to answer ``{"error": {"code", "message"}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"code": self.code, "message": self.message}}, status_code=self.status)


class ResellerTaskInputs(BaseModel):
    """The reseller's create-task body."""

    model: Literal["flux_kontext_pro", "flux_kontext_max"]
    prompt: str = Field(max_length=10_000)
    input_image: str | None = None
    input_image_2: str | None = None
    input_image_3: str | None = None
    input_image_4: str | None = None
    seed: int | None = None
    aspect_ratio: str | None = None
    steps: int | None = Field(default=None, ge=1, le=50)
    guidance_scale: float | None = Field(default=None, ge=1, le=10)
    negative_prompt: str | None = None
    output_format: Literal["jpeg", "png"] = "jpeg"
    prompt_upsampling: bool = False
    safety_tolerance: int = Field(default=2, ge=0, le=6)

    @field_validator("aspect_ratio")
    @classmethod
    def _aspect(cls, v: str | None) -> str | None:
        if v is not None:
            parse_aspect_ratio(v)
        return v


async def bearer_key(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    fp = runtime_of(request).state.authenticate(creds.credentials if creds else None)
    if fp is None:
        raise ResellerError(401, "unauthorized", "Missing or invalid API key (Authorization: Bearer <key>)")
    return fp


@router.post("/tasks", dependencies=[Depends(fault_gate(("500", "503", "429", "timeout", "disconnect"), "reseller"))])
async def create_task(
    body: ResellerTaskInputs, request: Request, key_fp: Annotated[str, Depends(bearer_key)]
) -> dict[str, Any]:
    params = SubmitParams(
        prompt=body.prompt,
        images=(body.input_image, body.input_image_2, body.input_image_3, body.input_image_4),
        seed=body.seed,
        aspect_ratio=body.aspect_ratio,
        output_format=body.output_format,
        prompt_upsampling=body.prompt_upsampling,
    )
    try:
        task = await runtime_of(request).submit(
            key_fp=key_fp,
            endpoint=MODEL_ENDPOINTS[body.model],
            params=params,
            host=request_host(request),
            scheme=request.url.scheme,
            dialect="reseller",
            model=body.model,
        )
    except InputImageError as exc:
        raise ResellerError(400, "invalid_image", str(exc)) from None
    except Rejected as exc:
        raise ResellerError(exc.status, _REJECT_CODES.get(exc.status, "rejected"), exc.message) from None
    accepted_lost(runtime_of(request))
    return {"id": task.id, "status": "pending", "model": body.model}


@router.get("/tasks/{task_id}", dependencies=[Depends(fault_gate(("500", "503", "timeout", "disconnect"), "reseller"))])
async def get_task(task_id: str, request: Request, key_fp: Annotated[str, Depends(bearer_key)]) -> dict[str, Any]:
    state = runtime_of(request).state
    state.polls += 1
    state.sweep()
    task = state.tasks.get(task_id)
    if task is None or task.dialect != "reseller":
        raise ResellerError(404, "not_found", f"Task {task_id} not found")
    now = state.now()
    status = task.polled(now)
    out: dict[str, Any] = {"id": task.id, "model": task.model}
    if status == PENDING:
        out["status"] = "pending" if task.progress_at(now) < _QUEUED_SHARE else "processing"
    elif status == READY:
        out["status"] = "completed"
        out["output"] = [{"content": [{"type": "image", "url": state.sample_url(task)}]}]
        out["usage"] = {"cost": f"{task.cost / 100:.2f}", "discount": 0}
    else:
        details = task.details() or {}
        message = ", ".join(details.get("Moderation Reasons", [])) or str(details.get("message", status))
        out["status"] = "failed"
        out["error"] = {"code": _FAILURE_CODES.get(status, "generation_failed"), "message": message}
    out["metadata"] = {}
    return out
