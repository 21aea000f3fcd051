"""What every step of a job does first and last: claim it with its fencing token, free its slot,
settle its budget reservation, or hand it to a worker that holds its key.

Per-row failures become results (``failed``, ``moderated``, ``budget``...); only bugs escape as
exceptions. Every step starts by claiming the job for this process with its fencing token, so a
duplicate or stale message is a no-op, and every write of the step is fenced by the token it holds.
Each step has one retry layer: the API client makes one attempt per call, and a retryable failure
reschedules the step with backoff (no thread sleeps in a retry).

    waiting (Redis list) --dispatch--> submit --> poll (repeats) --> store --> complete
"""

from __future__ import annotations

import logging
from typing import Any

from kontext_batch import logs
from kontext_batch.api.retry import RetryPolicy
from kontext_batch.coord.jobs import Grant
from kontext_batch.coord.keys import split_job_ref, split_slot_id
from kontext_batch.coord.runs import RowStatus
from kontext_batch.errors import (
    KontextBatchError,
    OutOfCredits,
)
from kontext_batch.jobspec import JobSpec
from kontext_batch.runtime import Runtime
from kontext_batch.steps.complete import drain_waiting, fail_lost, finish
from kontext_batch.steps.dispatch import dispatch

__all__ = ["backoff_s", "charge_reserved", "claim", "end_active", "key_refused", "not_ours", "run_stop"]

log = logging.getLogger("kontext_batch.pipeline")


def backoff_s(rt: Runtime, attempt: int, error: BaseException | None = None) -> float:
    """The retry policy's wait, applied as a countdown: the step gives its thread back meanwhile."""
    return RetryPolicy.from_settings(rt.settings).wait_s(attempt, error)


def end_active(rt: Runtime, ref: str, job: dict[str, str], *, keep_one: bool = False) -> Grant | None:
    """The API task is terminal (or never existed): free its slot and hand it on at once."""
    sid, pool_id = job.get("gate", ""), job.get("pool", "")
    if not sid:
        return None
    if not pool_id:
        rt.slots.release(sid, ref)
        return None
    return dispatch(rt, pool_id, split_slot_id(sid)[1], keep_one=keep_one, release=(sid, ref))


def claim(rt: Runtime, ref: str, token: int, *, delivered: bool) -> tuple[dict[str, str], JobSpec] | None:
    """Take the job for this step (see :meth:`~kontext_batch.coord.jobs.Jobs.claim`), with its row's spec, and count the
    delivery: one round trip, as every step of every job starts here. None: a stale message."""
    run_id, row = split_job_ref(ref)
    pipe = rt.redis.pipeline(transaction=False)
    if delivered:  # every delivered message counts, stale no-ops too: the benchmark's figure
        rt.runs.count_in(pipe, run_id, "task_executions")
    rt.jobs.claim_in(pipe, ref, token, rt.proc_id)
    rt.runs.row_in(pipe, run_id, row)
    *_, raw_job, raw_row = pipe.execute()
    job = rt.jobs.claimed(raw_job)
    if job is None:
        return None
    if raw_row is None:
        # Every queued row's spec is written before it waits: Redis lost the run's rows hash. The
        # run ends failed (once, whichever step or sweep sees it first) and this step is dropped.
        log.warning("row %s: its spec is gone from Redis; the step is dropped and the run fails", ref)
        fail_lost(rt, run_id, f"row {row} has no spec in its rows hash")
        return None
    return job, JobSpec.from_json(rt.runs.parse_row(raw_row, run_id, row))


def charge_reserved(rt: Runtime, run_id: str, job: dict[str, str]) -> dict[str, Any]:
    """The job's API task was created and is being left behind (a revoked key, an expired sample):
    its reservation becomes spend, at the cost the API reported where it did (the reseller's, on
    its completed poll), and its cost moves to the row's ``charged``, which the next task's cost
    adds to. The job then holds no reservation. Returns these fields, for the hand-off that
    leaves the task behind to write."""
    reserved = float(job.get("reserved") or 0)
    cost = float(job.get("cost_credits") or reserved)
    if reserved:
        rt.budget.settle(run_id, reserved, cost)
    fields = {"reserved": "0", "cost_credits": "", "charged": str(float(job.get("charged") or 0) + cost)}
    job.update(fields)
    return fields


def not_ours(rt: Runtime, ref: str, held: str, fp: str, *, poll: bool) -> bool:
    """A message for a key this process does not hold (a worker started by hand on every queue):
    hand the step to a worker that holds it; it never runs with another key."""
    if rt.provider is not None or fp in rt.held:
        return False
    if rt.jobs.handoff(ref, held, 0):
        (rt.scheduler.poll if poll else rt.scheduler.submit)(ref, int(held), fp)
    return True


def run_stop(meta: dict[str, str]) -> tuple[RowStatus, str] | None:
    """Why this run submits nothing more, as (row status, reason), or None."""
    if meta.get("status") == "cancelled":
        return "cancelled", "run cancelled before this row was submitted"
    if meta.get("stopped"):
        reason = meta.get("stopped_reason") or meta["stopped"]
        return ("budget" if meta["stopped"] == "budget" else "failed"), reason
    return None


def key_refused(rt: Runtime, ref: str, job: dict[str, str], fp: str, endpoint: str, exc: KontextBatchError) -> None:
    """The API refused the key (401/403, or 402 out of credits): the key leaves every pool, and the
    row goes back to wait for another key of its pool. The run stops when its pool has none left."""
    run_id, _ = split_job_ref(ref)
    what = "out of credits (402)" if isinstance(exc, OutOfCredits) else "API key refused"
    reason = f"{what} on key {fp}: {exc}"
    rt.pools.mark_key_out(fp, reason)
    log.warning("run %s: key %s leaves the pool: %s", run_id, fp, reason)
    pool = rt.pools.pool(job["pool"])
    out = rt.pools.keys_out()
    if any(f not in out for f in pool.fps):
        # What the row cost so far goes with it (a left-behind task's cost is in charged by now).
        cost_so_far = {"cost_credits": "", "charged": job.get("charged") or 0}
        rt.jobs.requeue(ref, pool.id, endpoint, job["gate"], reserved=0, **cost_so_far)
        dispatch(rt, pool.id, endpoint)
        return
    stopped = "out_of_credits" if isinstance(exc, OutOfCredits) else "auth"
    rt.runs.update(run_id, stopped=stopped, stopped_reason=reason)
    logs.run_stopped(run_id, stopped, f"no key of its pool is left ({reason})")
    end_active(rt, ref, job)
    finish(rt, ref, "failed", {**job, "reserved": "0"}, error=reason)
    drain_waiting(rt, run_id, "failed", reason)
