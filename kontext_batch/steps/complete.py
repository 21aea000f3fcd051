"""A row's final result, and a run's end: recorded once, counted, and written out as results.csv
(with the run's gallery page beside it).

Below both sides. The worker's steps finish rows as their tasks end, and drain the rows still
waiting for a slot when a run stops (its budget spent, no key of its pool left); the sweep
finalizes runs that are complete but still open. On the CLI's side, ``cancel`` drains, finishes and
finalizes too, and the enqueue pass finalizes a run that is complete at once (it records its invalid
and skipped rows itself, in batches with their specs).

A run whose state Redis lost (:attr:`~kontext_batch.coord.runs.RunInfo.lost`) is never finalized:
:func:`finalize` and the sweep (:func:`fail_lost_runs`) end it ``failed`` with the reason instead,
and no results.csv is written from what is left.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kontext_batch import logs, metrics
from kontext_batch.coord.ends import announce_end
from kontext_batch.coord.keys import split_job_ref
from kontext_batch.coord.runs import RowStatus
from kontext_batch.errors import KontextBatchError, OutputBusy, RunStateLost, StorageUnavailable
from kontext_batch.runtime import Runtime
from kontext_batch.steps import outcome
from kontext_batch.steps.ledger import write_results

__all__ = ["JOB_RESULT_FIELDS", "drain_waiting", "fail_lost", "fail_lost_runs", "finalize", "finish"]

#: Job fields copied into the result when set (and not "0").
_CARRIED = ("bfl_task_id", "cost_credits", "submitted_at", "key", "possible_duplicate")
#: The job fields :func:`finish` reads: its result's columns, and the reservation it settles.
#: A row's figures are all it cost: ``charged`` is the credits of tasks it left behind (an expired
#: sample, a refused key), ``attempts_before`` and ``cost_before`` its earlier passes' (``retry``).
JOB_RESULT_FIELDS = ("attempts", "polls", "reserved", "charged", "attempts_before", "cost_before", *_CARRIED)

log = logging.getLogger("kontext_batch.completion")


def finish(rt: Runtime, ref: str, status: RowStatus, job: dict[str, str] | None = None, **fields: Any) -> None:
    """Record a job's final result (once), forget the job, settle its budget reservation, and
    finalize the run if it was the run's last row."""
    run_id, row = split_job_ref(ref)
    job = job or {}
    result: dict[str, Any] = {
        "status": status,
        "attempts": int(job.get("attempts", 0)) + int(job.get("attempts_before", 0)),
        "polls": int(job.get("polls", 0)),
        "finished_at": time.time(),
    }
    for k in _CARRIED:
        if job.get(k) and job[k] != "0":
            result[k] = job[k]
    result.update({k: v for k, v in fields.items() if v is not None})
    if "submitted_at" in result and "duration_s" not in result:
        result["duration_s"] = round(result["finished_at"] - float(result["submitted_at"]), 3)
    reserved = float(job.get("reserved") or 0)
    if reserved and "cost_credits" not in result and "bfl_task_id" in result:
        result["cost_credits"] = reserved  # the API reported no cost: the price table's
    task_cost = float(result.get("cost_credits") or 0)
    earlier = float(job.get("charged") or 0) + float(job.get("cost_before") or 0)
    if earlier:
        result["cost_credits"] = round(task_cost + earlier, 4)
    # Recorded once (by whichever step gets there first), and the job forgotten: one round trip.
    pipe = rt.redis.pipeline(transaction=False)
    rt.runs.record_in(pipe, run_id, row, result)
    rt.jobs.retire_in(pipe, ref)
    # When the run last made progress: what a stall alert reads (kontext_run_last_progress_timestamp_seconds).
    rt.runs.update_in(pipe, run_id, last_final_at=result["finished_at"])
    done = rt.runs.recorded(pipe.execute()[0])
    metrics.row_finished(result, job, recorded=done is not None)
    # The manifest's id (the SKU an operator searches for), read only for the rows worth a warning;
    # a lost rows hash leaves none, and the run's end is for finalize() to decide.
    spec = rt.runs.spec_or_none(run_id, row) if done is not None and status != "succeeded" else None
    row_id = spec.get("id") if spec else None
    shown_id = str(row_id) if row_id else None
    logs.row_finished(ref, result, recorded=done is not None, row_id=shown_id)
    outcome.note(outcome.final_line(ref, result, recorded=done is not None, row_id=shown_id))
    if done is None:
        return
    if reserved:  # once, by the step that recorded the row
        rt.budget.settle(run_id, reserved, task_cost)
    if done >= int(rt.runs.recent_meta(run_id).get("total") or 0) and done >= rt.runs.total(run_id):
        finalize(rt, run_id)


def drain_waiting(rt: Runtime, run_id: str, status: RowStatus, reason: str) -> int:
    """Finish every row of the run still waiting for a slot (cancel, stop): they will never be sent."""
    pool_id = rt.runs.meta(run_id).get("pool", "")
    n = 0
    for pid, endpoint in rt.slots.known_waits():
        if pid != pool_id:
            continue
        for ref in rt.slots.remove_run_from_wait(pid, endpoint, run_id):
            # A waiting row may have cost already (a retried row, a task left behind): keep it.
            finish(rt, ref, status, rt.jobs.fields(ref, *JOB_RESULT_FIELDS), error=reason)
            n += 1
    return n


def finalize(rt: Runtime, run_id: str) -> str | None:
    """Write the run's results.csv and gallery page to its output store (its own, and its lines merged
    into the output's: :func:`~kontext_batch.steps.ledger.write_results`) and mark the run finished
    (``cancelled`` if it was cancelled). Safe to repeat. Returns the URI of the output's results.csv.

    One writer at a time (a short Redis claim); returns None when another is writing it now. The
    claim expires, so a writer killed mid-way leaves the run to the next sweep. Also returns None
    when the store fails, or another run's merge into the same output holds it too long: a failure
    that may pass leaves the run to the next sweep; any other ends
    the run ``failed``, with the reason in ``stopped_reason``.
    """
    if not rt.runs.claim_finalizing(run_id):
        return None
    try:
        info = rt.runs.info(run_id)
        if info.lost:
            fail_lost(rt, run_id, info.lost)
            return None
        meta = info.meta
        try:
            store = rt.store(meta["output"])
            written = write_results(rt, run_id, store)
        except RunStateLost as exc:  # went while the file was being read out
            fail_lost(rt, run_id, exc.what)
            return None
        except (StorageUnavailable, OutputBusy) as exc:
            # Another run's merge into the same output taking long is no failed write (no alert).
            if not isinstance(exc, OutputBusy):
                metrics.results_write_failed()
            log.warning("run %s: results.csv not written yet (%s); the next sweep tries again", run_id, exc)
            return None
        except (KontextBatchError, OSError) as exc:
            # It will not pass by waiting: end the run, failed, saying why, instead of retrying for ever.
            reason = f"results.csv could not be written to {meta.get('output')}: {exc}"
            rt.runs.update(run_id, status="failed", finished_at=time.time(), stopped="results", stopped_reason=reason)
            rt.runs.close_run(run_id)
            metrics.results_write_failed()
            log.warning("run %s failed: %s", run_id, reason)
            _ended(rt, run_id, "failed", "")
            return None
        uri = written.results_uri
        status = "cancelled" if meta.get("status") == "cancelled" else "finished"
        rt.runs.update(
            run_id, status=status, finished_at=time.time(), results_uri=uri, run_results_uri=written.run_results_uri
        )
        rt.runs.close_run(run_id)
    finally:
        rt.runs.release_finalizing(run_id)
    log.info("run %s %s: %s", run_id, status, uri)
    _ended(rt, run_id, status, uri)
    return uri


def fail_lost(rt: Runtime, run_id: str, what: str) -> None:
    """End a run whose state Redis lost: ``failed``, with the reason, its waiting rows drained (no
    more of its rows are sent). Logged and counted once, by the process that recorded it."""
    if not rt.runs.mark_lost(run_id, what):
        return
    reason = f"{RunStateLost.REASON}: {what}"
    log.error("run %s failed: %s", run_id, reason)
    drain_waiting(rt, run_id, "failed", reason)
    dropped = _drop_stuck_jobs(rt, run_id) + rt.jobs.forget_orphans(run_id)
    if dropped:
        log.warning("run %s: %d job(s) in flight dropped: their spec or output is gone with the run", run_id, dropped)
    _ended(rt, run_id, "failed", "")


def _drop_stuck_jobs(rt: Runtime, run_id: str) -> int:
    """Forget the run's jobs in flight when no step of theirs can run any more (the rows hash or the
    output went with the run): their steps fail for good, and a busy job of a live worker would hold
    its slot for ever. A job without an API task gives its slot back; one with a task keeps it until
    its lease lapses (as ``cancel`` does), so the account's cap is not passed meanwhile. Jobs that
    can still finish (only counters lost) are left to store the outputs that were paid for."""
    meta = rt.runs.meta(run_id)
    if meta.get("output") and rt.runs.rows_written(run_id) >= int(meta.get("total") or 0) > 0:
        return 0
    n = 0
    for key in rt.redis.scan_iter(match=f"{rt.keys.job_prefix}{run_id}:*", count=1000):
        ref = key.decode().removeprefix(rt.keys.job_prefix) if isinstance(key, bytes) else str(key)
        job = rt.jobs.fields(ref, "gate", "state")
        if job.get("gate") and job.get("state") in ("granted", "queued"):
            rt.slots.release(job["gate"], ref)
        rt.jobs.retire(ref)
        n += 1
    return n


def fail_lost_runs(rt: Runtime) -> int:
    """The sweep's check of every open run (one round trip): end those whose state is lost."""
    n = 0
    for info in rt.runs.infos(rt.runs.open_runs()):
        if info.lost:
            n += int(not info.meta.get("lost"))
            fail_lost(rt, info.id, info.lost)
    return n


def _ended(rt: Runtime, run_id: str, status: str, uri: str) -> None:
    """Count and log a run's end, once, by the process that recorded it; its state is kept
    KONTEXT_RUN_RETENTION_S from now. Its followers are woken first: the rest is bookkeeping."""
    announce_end(rt.redis, rt.keys, run_id)
    rt.runs.retain(run_id, rt.settings.run_retention_s)
    info = rt.runs.info(run_id)
    outcome = metrics.run_outcome(status, info.meta.get("stopped", ""), info.counts)
    metrics.run_finished(outcome)
    logs.run_finished(run_id, outcome, info.counts, info.total, rt.budget.spend(run_id).spent, uri)
