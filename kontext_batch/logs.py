"""Worker logs an operator can follow: one line per row event, as text or one JSON object per line.

=========================  =======  ==============================================================
event                      level    when
=========================  =======  ==============================================================
``submitted``              INFO     the API accepted the row's task
``ready``                  INFO     a poll found the task Ready (the download comes next)
``stored``                 INFO     the output image and its sidecar are written
``moderated``              WARNING  the API refused the input or the output (reason given)
``failed``                 WARNING  the row ended without an output (reason given)
``budget``                 WARNING  the run's budget stopped the row before its submit
``cancelled``              INFO     the run was cancelled before the row was submitted
``re-driven``              WARNING  the row's worker went quiet and the sweeper sent it again
``held back``              WARNING  the submit waits: its record is on no replica yet (a failover)
``run stopped``            WARNING  the run stops submitting (out of credits, key refused)
``run finished``           INFO     the run ended: outcome, counts, credits, results.csv; ERROR when
                                    it ended failed or stopped
=========================  =======  ==============================================================

A row's final line names the manifest's ``id`` (the SKU) beside the row number, and carries it as
the ``id`` field, with the API's task id as ``task``; its reason is the one results.csv records, a
plain sentence (:mod:`kontext_batch.api.reasons`).

Each record carries ``run``, ``row`` and ``event`` as attributes; with ``KONTEXT_LOG_FORMAT=json``
they become fields next to ``ts``, ``level``, ``logger`` and ``msg``. Reasons come from results,
which the API client already scrubs of the key and of sample URLs' signatures.

Celery's own per-task lines ("Task ... received", "... succeeded in") say nothing the row events do
not, at two lines per poll: they show at DEBUG only.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Final

from kontext_batch.coord.keys import split_job_ref

__all__ = ["JsonFormatter", "configure_logging", "row_event", "row_finished", "run_stopped"]

log = logging.getLogger("kontext_batch.rows")
run_log = logging.getLogger("kontext_batch.runs")

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Celery loggers that write a line per task message; shown only when the level is DEBUG.
CHATTY_LOGGERS: Final = ("celery.app.trace", "celery.worker.strategy", "celery.worker.request")
# Attributes every LogRecord has; anything else on a record was passed in ``extra`` and is a field.
_STANDARD: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
_FINAL_EVENTS: Final = {"succeeded": "stored", "moderated": "moderated", "failed": "failed", "cancelled": "cancelled"}
#: Final statuses an alert on WARNING or worse must catch.
_WARN_STATUSES: Final = frozenset({"failed", "moderated", "budget"})


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``msg``, extras, ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(level: str | int, fmt: str = "text") -> None:
    """Send every log record to stderr as ``fmt`` (``text`` or ``json``), replacing root's handlers.

    Python warnings become records too (so a JSON log stays JSON), and Celery's per-task lines drop
    below the level unless it is DEBUG.
    """
    lvl = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    lvl = lvl if isinstance(lvl, int) else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(lvl)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if lvl <= logging.DEBUG else logging.WARNING)
    # httpx logs every URL at INFO; sample URLs carry signatures.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.captureWarnings(True)


def row_event(ref: str, event: str, detail: str = "", *, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event of the row ``ref`` (``run:row``): ``row RUN:ROW EVENT[: detail]``."""
    if not log.isEnabledFor(level):
        return
    run_id, row = split_job_ref(ref)
    extra = {"run": run_id, "row": row, "event": event, **{k: v for k, v in fields.items() if v not in (None, "")}}
    if detail:
        log.log(level, "row %s %s: %s", ref, event, detail, extra=extra)
    else:
        log.log(level, "row %s %s", ref, event, extra=extra)


def row_finished(ref: str, result: dict[str, Any], *, recorded: bool = True, row_id: str | None = None) -> None:
    """Log a row's final result (once: ``recorded`` is False for a duplicate that changed nothing),
    at WARNING when it failed, was moderated or stopped by the budget; ``row_id``: the manifest's id."""
    if not recorded:
        return
    status = str(result.get("status", ""))
    event = _FINAL_EVENTS.get(status, status)
    detail = "" if status == "succeeded" else str(result.get("error") or "")
    if row_id:
        detail = f"(id {row_id}) {detail}".rstrip()
    row_event(
        ref,
        event,
        detail,
        level=logging.WARNING if status in _WARN_STATUSES else logging.INFO,
        id=row_id,
        status=status,
        task=result.get("bfl_task_id"),  # the id the API's support asks for
        output=result.get("output_uri"),
        polls=result.get("polls"),
        attempts=result.get("attempts"),
        duration_s=result.get("duration_s"),
    )


def run_stopped(run_id: str, stop: str, reason: str) -> None:
    """A run stops submitting rows: say why, at WARNING."""
    run_log.warning("run %s stopped (%s): %s", run_id, stop, reason, extra={"run": run_id, "event": "run stopped"})


def run_finished(run_id: str, outcome: str, counts: dict[str, int], total: int, credits: float, uri: str) -> None:
    """A run ended: its outcome, counts, credits and results.csv; at ERROR when failed or stopped."""
    shown = ", ".join(f"{n:,} {status}" for status, n in sorted(counts.items()) if n) or "no rows"
    level = logging.ERROR if outcome in ("failed", "stopped") else logging.INFO
    run_log.log(
        level,
        "run %s finished %s: %s rows (%s); %s credits; results: %s",
        run_id,
        outcome,
        f"{total:,}",
        shown,
        f"{credits:g}",
        uri or "not written",
        extra={"run": run_id, "event": "run finished", "outcome": outcome, "counts": counts, "credits": credits},
    )
