"""What a step did to its row, in one line: the return value of the Celery task that ran the step.

Flower and ``celery events`` show a task's result. Without one, a failed row's last task reads
SUCCESS like every other, and an operator cannot tell from Flower what happened to the row. The
step that ends a row notes the line (:func:`note`); the task adapter hands it back (:func:`taken`).

A context variable, not a return value threaded through every branch of the steps: each worker
thread runs one task at a time, and :func:`begin` clears what an earlier task left.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

__all__ = ["begin", "final_line", "note", "taken"]

_line: ContextVar[str | None] = ContextVar("kontext_step_outcome", default=None)


def begin() -> None:
    _line.set(None)


def note(line: str) -> None:
    _line.set(line)


def taken(kind: str, ref: str) -> str:
    """The line noted since :func:`begin`, or what a step that ended no row did."""
    line = _line.get()
    _line.set(None)
    return line or f"{ref}: {kind} step done; the row is not final yet"


def final_line(ref: str, result: dict[str, Any], *, recorded: bool, row_id: str | None) -> str:
    """``run:row (id SKU): status[: reason]; N credits`` for the step that recorded the row."""
    if not recorded:
        return f"{ref}: already final (a repeated step; nothing changed)"
    status = str(result.get("status", ""))
    who = f"{ref} (id {row_id})" if row_id else ref
    reason = "" if status == "succeeded" else str(result.get("error") or "")
    line = f"{who}: {status}" + (f": {reason}" if reason else "")
    credits = float(result.get("cost_credits") or 0)
    return f"{line}; {credits:g} credits" if credits else line
