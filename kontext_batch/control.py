"""Operator actions on a run: cancel it, or run some of its rows again."""

from __future__ import annotations

from collections.abc import Sequence

from kontext_batch.completion import finish
from kontext_batch.dispatch import dispatch
from kontext_batch.jobspec import JobSpec
from kontext_batch.keys import job_ref
from kontext_batch.runtime import Runtime

__all__ = ["cancel_run", "retry_run"]


def cancel_run(rt: Runtime, run_id: str) -> int:
    """Mark the run cancelled and record every row still waiting for a slot as ``cancelled``.

    Rows already granted a slot see the flag in their submit step; submitted rows finish normally.
    """
    if not rt.runs.exists(run_id):
        raise KeyError(run_id)
    rt.runs.update(run_id, status="cancelled")
    fp = rt.runs.meta(run_id).get("fp", "")
    n = 0
    for gfp, endpoint in rt.gate.known_gates():
        if gfp != fp:
            continue
        for ref in rt.gate.remove_run_from_wait(gfp, endpoint, run_id):
            finish(rt, ref, "cancelled", error="run cancelled before this row was submitted")
            n += 1
    return n


def retry_run(rt: Runtime, run_id: str, statuses: Sequence[str]) -> int:
    """Forget the results of rows in ``statuses`` and queue them again. Returns how many."""
    if not rt.runs.exists(run_id):
        raise KeyError(run_id)
    rows = rt.runs.rows_with_status(run_id, statuses)
    reopened = rt.runs.reopen(run_id, rows, statuses)
    if not reopened:
        return 0
    rt.runs.clear(run_id, "stopped", "stopped_reason", "finished_at", "results_uri")
    rt.runs.update(run_id, status="running")
    rt.runs.reopen_run(run_id)
    by_endpoint: dict[str, list[str]] = {}
    for row in reopened:
        spec = JobSpec.from_json(rt.runs.row(run_id, row))
        by_endpoint.setdefault(spec.endpoint, []).append(job_ref(run_id, row))
    for endpoint, refs in by_endpoint.items():
        gate = rt.gate_for(endpoint)
        rt.gate.enqueue(gate, refs)
        dispatch(rt, gate)
    return len(reopened)
