"""One emulated API task: the statuses the API reports, and the record of a submitted task.

A task's fate is fixed at submit (``outcome``, ``ready_at``); its status at any moment follows from
the clock (:meth:`TaskRecord.status_at`). :class:`~kontext_batch.emulator.state.EmulatorState`
keeps the records and retires them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = [
    "CONTENT_MODERATED",
    "ERROR",
    "PENDING",
    "READY",
    "REQUEST_MODERATED",
    "TASK_NOT_FOUND",
    "TaskRecord",
]

PENDING: Final = "Pending"
READY: Final = "Ready"
REQUEST_MODERATED: Final = "Request Moderated"
CONTENT_MODERATED: Final = "Content Moderated"
ERROR: Final = "Error"
TASK_NOT_FOUND: Final = "Task not found"


@dataclass(eq=False)
class TaskRecord:
    """One submitted task. ``outcome`` is the status it reaches at ``ready_at``."""

    id: str
    endpoint: str
    key_fp: str
    dialect: Literal["bfl", "reseller"]
    prompt: str
    seed: int
    output_format: str
    size: tuple[int, int]
    cost: float
    submitted_at: float
    ready_at: float
    outcome: str
    submit_host: str
    poll_host: str
    scheme: str
    model: str | None = None
    result_prompt: str = ""
    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)
    input_mp: float = 0.0
    terminal: bool = False
    polls: int = 0
    downloads: int = 0
    first_download_at: float | None = None
    #: When a poll first saw the task end: the client's notice lag is this minus ``ready_at``.
    seen_done_at: float | None = None
    sample: asyncio.Future[bytes] | None = field(default=None, repr=False)

    def polled(self, now: float) -> str:
        """Count a poll answered at ``now`` and return the status it tells."""
        self.polls += 1
        status = self.status_at(now)
        if status != PENDING and self.seen_done_at is None:
            self.seen_done_at = now
        return status

    def status_at(self, now: float) -> str:
        if self.outcome == REQUEST_MODERATED or now >= self.ready_at:
            return self.outcome
        return PENDING

    def progress_at(self, now: float) -> float:
        span = self.ready_at - self.submitted_at
        if span <= 0:
            return 1.0
        return round(min(max((now - self.submitted_at) / span, 0.0), 1.0), 3)

    @property
    def extension(self) -> str:
        # BFL's delivery URLs end in sample.jpeg / .png / .webp: the output_format verbatim.
        return self.output_format

    def details(self) -> dict[str, Any] | None:
        if self.outcome == REQUEST_MODERATED:
            return {"Moderation Reasons": ["Derivative Works Filter"]}
        if self.outcome == CONTENT_MODERATED:
            return {"Moderation Reasons": ["Content Filter"]}
        if self.outcome == ERROR:
            return {"message": "Internal error while generating the image (emulated)"}
        return None
