"""What a webhook says: BFL's delivery of a task's outcome, in either reported form, as a PollResult.

======  ============================================================================================
form    body
======  ============================================================================================
bfl     ``{"id", "status": "Ready"|"Error"|..., "result": {"sample","prompt","seed"}|null, "details"}``
alt     ``{"task_id", "status": "SUCCESS"|"FAILED", "result": {...}|null, "error", "progress"}``
======  ============================================================================================

Both are unconfirmed (see ``bfl-api-facts.md``), so anything else is refused, never guessed at.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from kontext_batch.api.client import parse_bfl_poll
from kontext_batch.api.models import PollResult, Status
from kontext_batch.errors import ServerError

__all__ = ["parse_webhook"]

_ALT_STATUS = {"SUCCESS": Status.READY, "FAILED": Status.ERROR}


def _task_id(body: dict[str, Any]) -> str | None:
    """The task a webhook body is about (``id`` or ``task_id``), or None."""
    value = body.get("id", body.get("task_id"))
    return str(value) if isinstance(value, str | int) and value != "" else None


def parse_webhook(body: dict[str, Any]) -> PollResult:
    """The outcome a webhook announces. Raises ServerError for a body of neither form."""
    task_id = _task_id(body)
    if task_id is None:
        raise ServerError("webhook without a task id", status_code=200)
    if "task_id" in body and isinstance(body.get("status"), str) and body["status"].upper() in _ALT_STATUS:
        status = _ALT_STATUS[body["status"].upper()]
        result = body.get("result") if isinstance(body.get("result"), dict) else {}
        error = body.get("error")
        if status is Status.ERROR and isinstance(error, str):
            # "Content Moderated: ..." says more than FAILED: keep the moderation as such.
            status = next((s for s in Status if s.moderated and error.startswith(s.value)), status)
        converted: dict[str, Any] = {
            "id": task_id,
            "status": status.value,
            "result": result or None,
            "details": {"error": error} if error else None,
        }
        return replace(parse_bfl_poll(converted, f"webhook?id={task_id}"), raw_status=body["status"])
    return parse_bfl_poll(body, f"webhook?id={task_id}")
