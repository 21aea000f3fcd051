"""Operator actions on a run: cancel it, or run some of its rows again."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from kontext_batch.completion import drain_waiting, finalize
from kontext_batch.dispatch import dispatch
from kontext_batch.jobspec import JobSpec
from kontext_batch.keys import job_ref
from kontext_batch.runs import FINAL_STATUSES
from kontext_batch.runtime import Runtime

__all__ = ["cancel_run", "retry_run"]


def cancel_run(rt: Runtime, run_id: str) -> int:
    """Mark the run cancelled and record every row still waiting for a slot as ``cancelled``.

    Rows already granted a slot see the flag in their submit step; submitted rows finish normally.
    A run whose rows are all final already is finalized at once.
    """
    if not rt.runs.exists(run_id):
        raise KeyError(run_id)
    rt.runs.update(run_id, status="cancelled")
    n = drain_waiting(rt, run_id, "cancelled", "run cancelled before this row was submitted")
    if rt.runs.info(run_id).ndone >= rt.runs.total(run_id):
        finalize(rt, run_id)
    return n


def retry_run(
    rt: Runtime,
    run_id: str,
    statuses: Sequence[str],
    *,
    ids: Collection[str] | None = None,
    budget: float | None = None,
) -> int:
    """Forget the results of rows in ``statuses`` (or, with ``ids``, of the rows with those ids,
    whatever their status) and queue them again. ``budget`` replaces the run's budget; the keys of
    the run's pool are given another chance. Returns how many rows were queued.
    """
    if not rt.runs.exists(run_id):
        raise KeyError(run_id)
    if ids is not None:
        wanted = set(ids)
        statuses = list(FINAL_STATUSES)
        rows = [r for r in rt.runs.rows_with_status(run_id, statuses) if rt.runs.row(run_id, r).get("id") in wanted]
    else:
        rows = rt.runs.rows_with_status(run_id, statuses)
    if budget is not None:
        rt.budget.set(run_id, budget)
    reopened = rt.runs.reopen(run_id, rows, statuses)
    if not reopened:
        return 0
    meta = rt.runs.meta(run_id)
    pool_id = meta["pool"]
    rt.gate.clear_keys_out(rt.gate.pool(pool_id).fps)
    rt.runs.clear(run_id, "stopped", "stopped_reason", "finished_at", "results_uri")
    rt.runs.update(run_id, status="running")
    rt.runs.reopen_run(run_id)
    by_endpoint: dict[str, list[str]] = {}
    for row in reopened:
        spec = JobSpec.from_json(rt.runs.row(run_id, row))
        by_endpoint.setdefault(spec.endpoint, []).append(job_ref(run_id, row))
    for endpoint, refs in by_endpoint.items():
        rt.gate.enqueue(pool_id, endpoint, refs)
        dispatch(rt, pool_id, endpoint)
    return len(reopened)
