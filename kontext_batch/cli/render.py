"""What ``status``, ``validate`` and a queued run print: text lines and their JSON documents.

The progress of a followed run and its end-of-run account are :mod:`kontext_batch.cli.progress`,
but for a run whose state Redis lost (:func:`lost_lines`, :func:`lost_doc`): it shows the reason and
no counts, since rows it no longer holds would read as pending and counters as done.
"""

from __future__ import annotations

import time

from kontext_batch.cli.progress import hms
from kontext_batch.coord.budget import Spend
from kontext_batch.coord.runs import RunInfo
from kontext_batch.manifest.validate import ValidationReport, render_report
from kontext_batch.run.enqueue import QueuedRun
from kontext_batch.run.view import Pass, RunView, passes

__all__ = [
    "cost_block",
    "credits",
    "lost_doc",
    "lost_lines",
    "queued_doc",
    "report_doc",
    "started",
    "status_lines",
    "took",
    "view_doc",
]


def status_lines(v: RunView) -> list[str]:
    """One run in ``status``: its counts, when it started, what it spent, its keys while it runs."""
    i = v.info
    if i.lost:
        return lost_lines(i, v.spend)
    counts = " ".join(f"{k}={n}" for k, n in sorted(i.counts.items()))
    lines = [
        f"{i.id}  {i.status:<10} {i.ndone}/{i.total}  {counts}",
        f"    started {started(i.meta)}, {took(i.meta)}; manifest {i.meta.get('manifest', '?')}",
        f"    credits: {credits(v)}",
    ]
    if v.possible_duplicates:
        lines.append(f"    possible duplicate API tasks: {v.possible_duplicates}")
    if not i.finished:
        lines.extend(f"    key {k.fp}: {k.note}" for k in v.keys)
    if i.meta.get("stopped_reason"):
        lines.append(f"    stopped: {i.meta['stopped_reason']}")
    if i.meta.get("results_uri"):
        lines.append(f"    results: {i.meta['results_uri']}")
    if i.meta.get("run_results_uri"):  # what this run alone did and spent
        lines.append(f"    this run's own: {i.meta['run_results_uri']}")
    return lines


def lost_lines(i: RunInfo, spend: Spend) -> list[str]:
    """A run whose state Redis lost, in ``status`` and at the end of ``--wait``: the reason, no counts."""
    lines = [f"{i.id}  failed     {i.lost_reason}"]
    if i.meta.get("created_at"):
        lines.append(f"    started {started(i.meta)}; manifest {i.meta.get('manifest', '?')}")
    lines.append(f"    credits: {spend.spent:g} spent (as far as Redis still knows)")
    if i.meta.get("output"):
        lines.append(f"    outputs: {i.meta['output']}")
    lines.append("    results: not written (the run's rows and results are no longer all in Redis)")
    return lines


def lost_doc(i: RunInfo, spend: Spend, *, event: str | None = None) -> dict[str, object]:
    """The JSON of a lost run: ``status --json``, or ``run --json``'s outcome event (``event``)."""
    doc: dict[str, object] = {} if event is None else {"event": event}
    doc.update(
        run_id=i.id,
        status="failed",
        outcome="lost",
        lost=i.lost_reason,
        stopped=i.lost_reason,
        total=i.total or None,
        done=None,
        counts={},
        results=None,
        output=i.meta.get("output"),
        credits_spent=spend.spent,
    )
    return doc


def started(meta: dict[str, str]) -> str:
    at = meta.get("created_at")
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(float(at))) if at else "?"


def took(meta: dict[str, str]) -> str:
    """How long the run's rows were in work: its first pass, then each retry's on its own
    (``took 0:00:13; retry took 0:00:02``, ``...; retries 0:00:02, 0:00:05 so far``)."""
    spans = passes(meta)
    if not spans:
        return "duration unknown"
    first, retries = _span(spans[0]), spans[1:]
    if not retries:
        return first
    if len(retries) == 1:
        return f"{first}; retry {_span(retries[0])}"
    each = (hms(p.duration_s()) + ("" if p.ended_at is not None else " so far") for p in retries)
    return f"{first}; retries " + ", ".join(each)


def _span(p: Pass) -> str:
    return f"took {hms(p.duration_s())}" if p.ended_at is not None else f"running for {hms(p.duration_s())}"


def credits(v: RunView) -> str:
    sp = v.spend
    text = f"{sp.spent:g} spent"
    if sp.reserved:
        text += f", {sp.reserved:g} in flight"
    if sp.budget is not None:
        text += f" of a {sp.budget:g} budget"
    return text


def view_doc(v: RunView) -> dict[str, object]:
    i = v.info
    if i.lost:
        return lost_doc(i, v.spend)
    return {
        "run_id": i.id,
        "status": i.status,
        "total": i.total,
        "done": i.ndone,
        "counts": i.counts,
        "output": i.meta.get("output"),
        "results": i.meta.get("results_uri"),
        "run_results": i.meta.get("run_results_uri"),
        "stopped": i.meta.get("stopped_reason"),
        "credits_spent": v.spend.spent,
        "credits_in_flight": v.spend.reserved,
        "budget": v.spend.budget,
        "possible_duplicates": v.possible_duplicates,
        "manifest": i.meta.get("manifest"),
        "created_at": float(i.meta["created_at"]) if i.meta.get("created_at") else None,
        "finished_at": float(i.meta["finished_at"]) if i.meta.get("finished_at") else None,
        # The first pass, then each retry's: the idle hours between them are in none.
        "took_s": round(spans[0].duration_s(), 1) if (spans := passes(i.meta)) else None,
        "retries_s": [round(p.duration_s(), 1) for p in spans[1:]],
        "keys": [{"fingerprint": k.fp, "live": k.live, "active": k.active, "refused": k.refused} for k in v.keys],
    }


def report_doc(report: ValidationReport) -> dict[str, object]:
    """``validate --json``."""
    return {
        "ok": report.ok,
        "rows_total": report.rows_total,
        "rows_valid": report.rows_valid,
        "errors_total": report.errors_total,
        "errors": [{"row": e.row, "field": e.field, "message": e.msg} for e in report.errors],
        "per_endpoint": report.per_endpoint,
        "cost_credits": report.cost_credits,
        "cost_usd": report.cost_usd,
    }


def queued_doc(queued: QueuedRun) -> dict[str, object]:
    """``run --json``'s first event: the run is registered and its rows are queued."""
    return {
        "event": "queued",
        "run_id": queued.run_id,
        "total": queued.total,
        "queued": queued.queued,
        "skipped": queued.skipped,
        "invalid": queued.invalid,
        "cost_credits": queued.report.cost_credits,
        "per_endpoint": queued.report.per_endpoint,
    }


def cost_block(report: ValidationReport) -> str:
    """The cost block of the report: the total, then one line per model when the manifest mixes them."""
    return render_report(report).rpartition("\n\n")[2]
