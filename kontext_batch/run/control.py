"""Operator actions on a run: cancel it, run some of its rows again, or prune finished runs."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from typing import Any

from kontext_batch.coord.demand import sync_demand
from kontext_batch.coord.keys import job_ref, split_slot_id
from kontext_batch.coord.runs import FINAL_STATUSES
from kontext_batch.errors import ConfigError
from kontext_batch.jobspec import JobSpec
from kontext_batch.run.view import passes
from kontext_batch.runtime import Runtime
from kontext_batch.steps.dispatch import hand_over

__all__ = ["cancel_run", "gone_line", "prune_runs", "refuse_gone", "retry_run"]


def cancel_run(rt: Runtime, run_id: str) -> int:
    """Stop the run: no row of it is sent to the API any more, and it ends whatever its state.

    Rows waiting for a slot, or granted one but not sent yet, become ``cancelled``. Rows whose API
    task is running finish normally while a live worker holds their key (they are paid for); with
    none, they become ``cancelled`` now. A run whose enqueue never finished (its CLI died) ends with
    the rows it had written. Returns how many rows were cancelled.
    """
    # The end of a run (results.csv, the metrics, httpx under them) loads only for a cancel: every
    # command imports this module (``gone_line``), ``run`` among them, ~25 ms of its start.
    from kontext_batch.steps.complete import JOB_RESULT_FIELDS, drain_waiting, finalize, finish  # noqa: PLC0415

    if not rt.runs.exists(run_id):
        raise ConfigError(f"no run {run_id} in this Redis")
    was_enqueuing = rt.runs.meta(run_id).get("status") == "enqueuing"
    rt.runs.update(run_id, status="cancelled")
    n = drain_waiting(rt, run_id, "cancelled", "run cancelled before this row was submitted")
    for row in rt.runs.rows_without_result(run_id):
        ref = job_ref(run_id, row)
        # Whatever the job knows goes into its result (task id, key, attempts), and finish()
        # settles its budget reservation.
        job = rt.jobs.fields(ref, "gate", "state", *JOB_RESULT_FIELDS)
        sid = job.get("gate", "")
        if job.get("state") in ("polling", "storing", "submitting") and rt.holders.live_keys([split_slot_id(sid)[0]]):
            continue  # a live worker will finish it
        if sid and job.get("state") in ("granted", "queued"):
            rt.slots.release(sid, ref)  # no API task yet
        # A submitted row keeps its slot: its API task may still run, so the lease lapses on its own
        # (KONTEXT_LEASE_S) rather than letting another row past the account's cap meanwhile.
        finish(rt, ref, "cancelled", job, error="run cancelled before this row finished")
        n += 1
    if was_enqueuing:
        rt.runs.update(run_id, total=rt.runs.rows_written(run_id))
    if rt.runs.info(run_id).ndone >= rt.runs.total(run_id):
        finalize(rt, run_id)
    return n


def retry_run(
    rt: Runtime,
    run_id: str,
    statuses: Sequence[str],
    *,
    ids: Collection[str] | None = None,
    ignore_unknown: bool = False,
    budget: float | None = None,
) -> int:
    """Forget the results of rows in ``statuses`` (or, with ``ids``, of the rows with those ids,
    whatever their status) and queue them again. ``budget`` replaces the run's budget; the keys of
    the run's pool are given another chance. Returns how many rows were queued.

    Raises ConfigError, and queues nothing, when the run does not exist, or when ``ids`` names ids
    that are no row of the run (a file from another run's gallery, a typo) unless ``ignore_unknown``.
    """
    refuse_gone(rt, run_id)
    if not rt.runs.exists(run_id):
        raise ConfigError(f"no run {run_id} in this Redis")
    if ids is not None:
        wanted = set(ids)
        statuses = list(FINAL_STATUSES)
        # One batched pass over specs and results (a row at a time was a round trip per row).
        known: set[str] = set()
        rows = []
        for row, spec, result in rt.runs.iter_results(run_id, rt.runs.rows_written(run_id)):
            row_id = str((spec or {}).get("id"))
            known.add(row_id)
            if result is not None and row_id in wanted:
                rows.append(row)
        unknown = sorted(wanted - known)
        if unknown and not ignore_unknown:
            shown = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
            raise ConfigError(
                f"{len(unknown)} id(s) given are no row of run {run_id}: {shown}; nothing was queued "
                "(--ignore-unknown queues the others)"
            )
    else:
        rows = rt.runs.rows_with_status(run_id, statuses)
    if budget is not None:
        rt.budget.set(run_id, budget)
    before = rt.runs.results_of(run_id, rows)  # read before reopen forgets them
    reopened = rt.runs.reopen(run_id, rows, statuses)
    if not reopened:
        return 0
    rt.runs.persist(run_id)  # running again: its retention starts at its new end
    meta = rt.runs.meta(run_id)
    pool_id = meta["pool"]
    if meta.get("finished_at"):
        # The run had ended: this is a pass of its own, timed from now (status shows each pass).
        ended = [[p.started_at, p.ended_at] for p in passes(meta)]
        rt.runs.update(run_id, passes=ended, pass_started_at=time.time())
    rt.pools.clear_keys_out(rt.pools.pool(pool_id).fps)
    rt.runs.clear(run_id, "stopped", "stopped_reason", "finished_at", "results_uri", "run_results_uri")
    rt.runs.update(run_id, status="running")
    rt.runs.reopen_run(run_id)
    by_endpoint: dict[str, list[str]] = {}
    carried: dict[str, dict[str, Any]] = {}
    for row in reopened:
        spec = JobSpec.from_json(rt.runs.row(run_id, row))
        ref = job_ref(run_id, row)
        by_endpoint.setdefault(spec.endpoint, []).append(ref)
        if fields := _carried(before.get(row, {})):
            carried[ref] = fields
    sync_demand(rt.redis, rt.keys, rt.runs)
    for endpoint, refs in by_endpoint.items():
        rt.slots.enqueue(pool_id, endpoint, refs, jobs={r: carried[r] for r in refs if r in carried})
        hand_over(rt, pool_id, endpoint)
    return len(reopened)


def _carried(result: dict[str, Any]) -> dict[str, Any]:
    """What a row's earlier passes cost, for its retried job to add to: its result then holds
    every submit and every credit of the row, as the run's spend does."""
    fields: dict[str, Any] = {}
    if int(result.get("attempts") or 0):
        fields["attempts_before"] = int(result["attempts"])
    if float(result.get("cost_credits") or 0):
        fields["cost_before"] = float(result["cost_credits"])
    return fields


def gone_line(rt: Runtime, run_id: str) -> str:
    """What to say of a run whose state left Redis (pruned, or expired after its retention) and
    where its results.csv is; "" for a run Redis still holds or never had."""
    tomb = rt.runs.gone(run_id)
    if not tomb:
        return ""
    ended = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(float(tomb.get("finished_at") or 0)))
    how = "pruned" if tomb.get("pruned_at") else "expired after its retention"
    where = tomb.get("results_uri") or (f"none was written (output {tomb['output']})" if tomb.get("output") else "none")
    status = tomb.get("status") or "finished"
    return f"run {run_id} (ended {ended}, {status}) is gone from Redis ({how}); results.csv: {where}"


def refuse_gone(rt: Runtime, run_id: str) -> None:
    """ConfigError (exit 2) for a run whose state left Redis: nothing of it is left to run again."""
    if line := gone_line(rt, run_id):
        raise ConfigError(f"{line}; a run gone from Redis cannot be retried")


def prune_runs(rt: Runtime, older_than_s: float) -> tuple[int, int]:
    """Delete the state of every run that finished ``older_than_s`` ago or more, leaving each a
    tombstone; unfinished runs are never touched. Returns (runs, keys) removed."""
    before = time.time() - older_than_s
    n_runs = n_keys = 0
    for run_id in rt.runs.all_runs():
        removed = rt.runs.prune(run_id, finished_before=before)
        if removed is not None:
            n_runs += 1
            n_keys += removed
    return n_runs, n_keys
