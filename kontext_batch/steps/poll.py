"""The poll step: ask the API (or read the webhook's delivery) how the task is, then poll again later,
hand a Ready sample to the store step, or record the row's end."""

from __future__ import annotations

import json
import logging
import time

from kontext_batch import logs, metrics
from kontext_batch.api.models import PollResult, Status
from kontext_batch.api.webhook import parse_webhook
from kontext_batch.coord.keys import split_job_ref, split_slot_id
from kontext_batch.errors import (
    AuthError,
    KeyNotHeld,
    PermanentError,
    RetryableError,
)
from kontext_batch.runtime import Runtime
from kontext_batch.steps import outcome
from kontext_batch.steps.complete import finish
from kontext_batch.steps.job import backoff_s, charge_reserved, claim, end_active, key_refused, not_ours
from kontext_batch.steps.store import store_sample
from kontext_batch.steps.submit import submit_job

__all__ = ["poll_job"]

log = logging.getLogger("kontext_batch.pipeline")


def poll_job(rt: Runtime, ref: str, token: int) -> None:  # noqa: C901, PLR0911, PLR0912, PLR0915 - the poll step's outcomes side by side: one place to read what a poll answer leads to
    claimed = claim(rt, ref, token, delivered=True)
    if claimed is None:
        return
    job, spec = claimed
    held = job["step"]
    fp, _ = split_slot_id(job.get("gate", ""))
    if not_ours(rt, ref, held, fp, poll=True):
        return
    run_id, row = split_job_ref(ref)
    try:
        res = _from_webhook(job) or rt.provider_for(fp).poll(job["polling_url"])
        # The answer (its status and progress) describes this moment, not the later one when this
        # busy process gets round to reading it: time the job from here.
        answered_at = time.time()
    except RetryableError as exc:
        errors = int(job.get("poll_errors", 0)) + 1
        if errors > 2 * rt.settings.max_attempts:
            end_active(rt, ref, job)
            finish(rt, ref, "failed", job, error=f"polling failed {errors} times: {exc}")
            return
        delay = backoff_s(rt, errors, exc)
        if rt.jobs.handoff(ref, held, delay, poll_errors=errors, last_error=str(exc)):
            rt.scheduler.poll(ref, int(held), fp, countdown_s=delay)
        return
    except AuthError as exc:
        # The key was revoked mid-run: its task's result is out of reach; another key of the pool
        # takes the row (a new task), or the run stops when none is left.
        charge_reserved(rt, run_id, job)
        key_refused(rt, ref, job, fp, spec.endpoint, exc)
        return
    except (PermanentError, KeyNotHeld) as exc:
        end_active(rt, ref, job)
        finish(rt, ref, "failed", job, error=f"polling refused: {exc}")
        return
    polls = int(job.get("polls", 0)) + (0 if job.get("webhook_result") else 1)
    job["polls"] = str(polls)
    metrics.poll_answered(spec.endpoint)
    elapsed = answered_at - float(job.get("submitted_at") or answered_at)
    age = answered_at - float(job.get("accepted_at") or job.get("submitted_at") or answered_at)
    if not res.status.terminal:
        if res.status is Status.UNKNOWN and rt.runs.first_time(run_id, f"status:{res.raw_status}"):
            log.warning(
                "run %s: the API answered status %r, which is not a known one; polling on until the task's deadline",
                run_id,
                res.raw_status,
            )
        deadline = rt.planner.deadline_s(spec.endpoint, rt.settings.task_deadline_s)
        if elapsed > deadline:
            end_active(rt, ref, job)
            finish(
                rt,
                ref,
                "failed",
                job,
                error=f"no final status after {elapsed:.0f} s (deadline {deadline:.0f} s); "
                f"last status seen: {res.raw_status}",
            )
            return
        planned = rt.planner.next_delay(spec.endpoint, age, res.progress, polls=polls)
        delay = max(0.0, planned - (time.time() - answered_at))
        if rt.jobs.handoff(ref, held, delay, polls=polls, poll_errors=0):
            rt.scheduler.poll(ref, int(held), fp, countdown_s=delay)
            outcome.note(f"{ref}: {res.raw_status} after {polls} poll(s); next poll in {delay:.1f} s")
        return
    # The slot is free the moment the task is terminal. Submitting the next row from this thread,
    # before our own download, saves it a trip through the broker: the cap stays fuller.
    successor = end_active(rt, ref, job, keep_one=True)
    if successor is not None:
        submit_job(rt, successor.ref, successor.token, delivered=False)
    rt.planner.observe(spec.endpoint, _latency_seen(res, job, age, polls))
    if res.cost is not None:
        job["cost_credits"] = str(res.cost)  # the reseller's usage.cost, on the completed poll
    ready = res.status is Status.READY
    pipe = rt.redis.pipeline(transaction=False)
    rt.runs.is_final_in(pipe, run_id, row)
    if ready:  # written in the same round trip; harmless when the row turns out final
        rt.jobs.update_in(pipe, ref, held, polls=polls, state="storing", ready_seen_at=time.time())
    shared = rt.planner.share_in(pipe, rt.latencies, spec.endpoint)
    replies = pipe.execute()
    shared(replies)
    if replies[0]:
        rt.jobs.retire(ref)  # recorded meanwhile (the run was cancelled): nothing to store
        return
    if ready:
        logs.row_event(ref, "ready", f"after {polls} poll(s)", task=job.get("bfl_task_id"), polls=polls)
        store_sample(rt, ref, held, spec, job, res)
    elif res.status.moderated:
        finish(rt, ref, "moderated", job, error=res.reason, moderation_reasons=list(res.moderation_reasons))
    else:
        finish(rt, ref, "failed", job, error=res.reason)


def _from_webhook(job: dict[str, str]) -> PollResult | None:
    """The outcome a webhook delivered for this job (kept on it by the receiver), instead of a poll."""
    raw = job.get("webhook_result")
    return parse_webhook(json.loads(raw)) if raw else None


def _latency_seen(res: PollResult, job: dict[str, str], elapsed: float, polls: int) -> float:
    """How long the task really took, as best we can tell, for the poll planner: the first poll is
    planned that long after the POST's answer (``accepted_at``).

    ``elapsed`` is when *we* saw it finish, from that answer: an over-estimate when the first poll
    already found it done, and learning from it would make every first poll as late as the last.
    The API's own start and end times are exact; without them, a first-poll finish is shaded down so
    the planner probes earlier until a poll lands before the end (and progress then tells the rest).
    """
    if res.start_time and res.end_time and 0 < res.end_time - res.start_time <= elapsed + 1.0:
        return float(res.end_time - res.start_time)
    submitted = float(job.get("accepted_at") or job.get("submitted_at") or 0)
    if res.end_time and submitted and 0 < res.end_time - submitted <= elapsed + 1.0:
        return float(res.end_time - submitted)
    return elapsed if polls > 1 else elapsed * 0.85
