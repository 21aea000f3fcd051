"""The sweeper, run by every worker about once a second: re-drive jobs whose holder died or whose
message is overdue, fill free slots, stop runs no key can serve, finalize complete runs."""

from __future__ import annotations

import logging
from typing import Any

from kontext_batch import logs
from kontext_batch.coord.demand import sync_demand
from kontext_batch.coord.jobs import StaleJob
from kontext_batch.coord.keys import split_job_ref, split_slot_id
from kontext_batch.errors import (
    KontextBatchError,
)
from kontext_batch.runtime import Runtime
from kontext_batch.steps.complete import drain_waiting, fail_lost, fail_lost_runs, finalize
from kontext_batch.steps.dispatch import dispatch
from kontext_batch.steps.job import charge_reserved

__all__ = ["redrive", "sweep"]

log = logging.getLogger("kontext_batch.pipeline")


def redrive(rt: Runtime, stale: StaleJob) -> None:
    """Send again a job whose holder died, whose step passed its deadline, or whose next message is
    overdue (lost with a killed worker)."""
    run_id, row = split_job_ref(stale.ref)
    if stale.gone:
        _job_gone(rt, run_id, row)
        return
    if not stale.slot_id or not stale.pool_id:
        return
    if rt.runs.is_final(run_id, row):
        # Its worker recorded the result and died before forgetting the job: nothing to send.
        rt.jobs.retire(stale.ref)
        return
    fp, endpoint = split_slot_id(stale.slot_id)
    if stale.state in ("polling", "storing"):
        # The API task may still be active: count it against the cap while we poll it again.
        rt.slots.hold(stale.slot_id, stale.ref)
        if rt.jobs.handoff(stale.ref, stale.token, 0, state="polling"):
            rt.scheduler.poll(stale.ref, stale.token, fp)
    else:
        # Not submitted, or the submit's fate is unknown: queue it again at the front.
        extra: dict[str, Any] = {}
        if stale.state == "submitting":
            # The POST may have reached the API before the worker died: at-least-once, so mark it.
            extra["possible_duplicate"] = 1
            rt.runs.count(run_id, "possible_duplicates")
            # It may have been charged: count it spent.
            extra.update(charge_reserved(rt, run_id, rt.jobs.fields(stale.ref, "reserved", "cost_credits", "charged")))
        rt.jobs.requeue(stale.ref, stale.pool_id, endpoint, stale.slot_id, **extra)
        dispatch(rt, stale.pool_id, endpoint)
    why = f"was {stale.state or 'unknown'}"
    if stale.late:
        why += f"; its step held it past KONTEXT_STEP_DEADLINE_S ({rt.settings.step_deadline_s:g} s)"
    logs.row_event(stale.ref, "re-driven", why, level=logging.WARNING)


def _job_gone(rt: Runtime, run_id: str, row: int) -> None:
    """A job hash vanished while its row is in flight: its state is lost, and so is the run's."""
    if rt.runs.is_final(run_id, row):
        return  # finished: its hash was retired with it, and this entry outlived it
    meta = rt.runs.meta(run_id)
    if meta.get("status") == "running" and not meta.get("stopped"):
        fail_lost(rt, run_id, f"the job of row {row}, in flight")


def sweep(rt: Runtime) -> int:
    """Re-drive abandoned jobs, fill free slots, stop runs no key can serve, finalize complete runs.

    Cheap; every worker runs it about once a second.
    """
    n = 0
    for stale in rt.jobs.claim_expired():
        try:
            redrive(rt, stale)
            n += 1
        except KontextBatchError:
            log.exception("could not re-drive %s", stale.ref)
    for pool_id, endpoint in rt.slots.known_waits():
        if rt.slots.waiting(pool_id, endpoint):
            dispatch(rt, pool_id, endpoint)
    n += _stop_runs_without_keys(rt)
    n += fail_lost_runs(rt)  # before finalizing: a lost run is never written out as complete
    for run_id in rt.runs.complete_but_open():
        finalize(rt, run_id)
        n += 1
    sync_demand(rt.redis, rt.keys, rt.runs)  # what an autoscaler reads (KEDA's redis trigger)
    rt.runs.forget_expired()  # a sorted set's members cannot expire with the runs they list
    return n


def _stop_runs_without_keys(rt: Runtime) -> int:
    """A run whose every key the API refused can never finish its waiting rows: stop it now."""
    out = rt.pools.keys_out()
    if not out:
        return 0
    n = 0
    for run_id in rt.runs.open_runs():
        meta = rt.runs.meta(run_id)
        pool_id = meta.get("pool")
        if not pool_id or meta.get("stopped") or meta.get("status") != "running":
            continue
        fps = rt.pools.pool(pool_id).fps
        if all(fp in out for fp in fps):
            # Stopping is for good: not on the 1 s cached view, which `retry` may have just cleared.
            out = rt.pools.keys_out(max_age_s=0)
            if not all(fp in out for fp in fps):
                continue
            reason = "; ".join(out[fp] for fp in fps)
            rt.runs.update(run_id, stopped="keys", stopped_reason=f"no key of the run's pool is left: {reason}")
            logs.run_stopped(run_id, "keys", f"no key of the run's pool is left: {reason}")
            n += drain_waiting(rt, run_id, "failed", reason)
    return n
