"""Webhook delivery: when a task with ``webhook_url`` turns terminal, POST its outcome there.

Two payload forms are reported for BFL's webhooks and the emulator speaks either
(``EmulatorConfig.webhook_form``):

========  ==========================================================================================
``bfl``   ``{"id", "status": "Ready"|..., "result": {"sample","prompt","seed"}|null, "details",
          "timestamp"}``
``alt``   ``{"task_id", "status": "SUCCESS"|"FAILED", "result": {...}|null, "error", "progress"}``
========  ==========================================================================================

``webhook_secret`` travels back in the ``X-Webhook-Secret`` header. Delivery is best effort: one
retry after a failure (no answer, or a 5xx), then the failure is only counted in the stats. The
``webhook-lost`` fault drops a delivery outright (counted as failed too).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

from kontext_batch.emulator.config import WEBHOOK_FAULTS
from kontext_batch.emulator.state import EmulatorState
from kontext_batch.emulator.task import READY, TaskRecord

__all__ = ["deliver_webhook", "webhook_payload"]

log = logging.getLogger(__name__)
_RETRY_DELAY_S = 0.5


def webhook_payload(state: EmulatorState, task: TaskRecord, form: str) -> dict[str, Any]:
    """The JSON body announcing ``task``'s terminal outcome in ``form`` (``bfl`` or ``alt``)."""
    ready = task.outcome == READY
    result = {"sample": state.sample_url(task), "prompt": task.result_prompt, "seed": task.seed} if ready else None
    if form == "alt":
        details = task.details() or {}
        reasons = details.get("Moderation Reasons")
        error = None if ready else (f"{task.outcome}: {', '.join(reasons)}" if reasons else task.outcome)
        return {
            "task_id": task.id,
            "status": "SUCCESS" if ready else "FAILED",
            "result": result,
            "error": error,
            "progress": 1.0,
        }
    return {
        "id": task.id,
        "status": task.outcome,
        "result": result,
        "details": task.details(),
        "timestamp": int(state.now()),
    }


async def deliver_webhook(state: EmulatorState, http: httpx.AsyncClient, task: TaskRecord, form: str) -> None:
    """Wait until ``task`` is terminal, then POST its outcome in ``form`` to its webhook_url (one retry)."""
    delay = task.ready_at - state.now()
    if delay > 0:
        await asyncio.sleep(delay)
    state.sweep()
    if task.webhook_url is None:
        return
    if state.draw_fault(WEBHOOK_FAULTS):
        state.webhooks_failed += 1  # dropped on the way: the client must notice by itself
        return
    payload = webhook_payload(state, task, form)
    headers = {"X-Webhook-Secret": task.webhook_secret} if task.webhook_secret else {}
    for attempt in (1, 2):
        try:
            resp = await http.post(task.webhook_url, json=payload, headers=headers)
            if resp.status_code < 500:
                state.webhooks_sent += 1
                return
        except httpx.HTTPError as exc:
            log.debug("emulator: webhook attempt %d for %s failed: %r", attempt, task.id, exc)
        if attempt == 1:
            await asyncio.sleep(_RETRY_DELAY_S)
    state.webhooks_failed += 1
