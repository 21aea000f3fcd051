"""The steps of one job, as plain functions over a :class:`Runtime`. Celery tasks only call these.

    waiting (Redis list) --dispatch--> submit_job --> poll_job (repeats) --> stored / recorded

Per-row failures become results (``failed``, ``moderated``, ``budget``...); only bugs escape as
exceptions. Every step starts by claiming the job for this process with its fencing token, so a
duplicate or stale message is a no-op, and every write of the step is fenced by the token it holds.
Each step has one retry layer: the API client makes one attempt per call, and a retryable failure
reschedules the step with backoff (no thread sleeps in a retry).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from urllib.parse import urlencode

from kontext_batch import logs, metrics
from kontext_batch.api.models import KontextRequest, PollResult, Status
from kontext_batch.api.retry import RetryPolicy
from kontext_batch.api.webhook import parse_webhook
from kontext_batch.coord.gate import Grant, StaleJob, split_gate_id
from kontext_batch.coord.keys import split_job_ref
from kontext_batch.coord.runs import RowStatus
from kontext_batch.errors import (
    AuthError,
    KeyNotHeld,
    KontextBatchError,
    OutOfCredits,
    PermanentError,
    RetryableError,
    SampleExpired,
    ServerError,
    TransportError,
)
from kontext_batch.io.formats import conform_sample, request_format
from kontext_batch.jobspec import JobSpec
from kontext_batch.manifest.staging import load_image_payload
from kontext_batch.manifest.validate import cost_credits_for
from kontext_batch.runtime import Runtime
from kontext_batch.steps.complete import drain_waiting, finalize, finish
from kontext_batch.steps.dispatch import dispatch

__all__ = ["poll_job", "redrive", "submit_job", "sweep"]

log = logging.getLogger("kontext_batch.pipeline")


def backoff_s(rt: Runtime, attempt: int, error: BaseException | None = None) -> float:
    """The retry policy's wait, applied as a countdown: the step gives its thread back meanwhile."""
    return RetryPolicy.from_settings(rt.settings).wait_s(attempt, error)


def build_request(rt: Runtime, spec: JobSpec, *, webhook: tuple[str, str] | None = None) -> KontextRequest:
    """The API request for a row: http(s) inputs as URLs the API fetches, anything else as base64;
    with ``webhook`` (URL, secret), the API announces the task's end there."""
    fields: dict[str, Any] = dict(spec.params)
    if webhook is not None:
        fields["webhook_url"], fields["webhook_secret"] = webhook
    # Always explicit: providers differ in their default, and the output name's extension must match.
    fields["output_format"] = request_format(spec.output_format, rt.output_formats)
    names = ("input_image", "input_image_2", "input_image_3", "input_image_4")
    for name, uri in zip(names, spec.images, strict=False):
        fields[name] = load_image_payload(uri, cache=rt.payloads)
    return KontextRequest.build(prompt=spec.prompt, **fields)


def _end_active(rt: Runtime, ref: str, job: dict[str, str], *, keep_one: bool = False) -> Grant | None:
    """The API task is terminal (or never existed): free its slot and hand it on at once."""
    gid, pool_id = job.get("gate", ""), job.get("pool", "")
    if not gid:
        return None
    if not pool_id:
        rt.gate.release(gid, ref)
        return None
    return dispatch(rt, pool_id, split_gate_id(gid)[1], keep_one=keep_one, release=(gid, ref))


def _claim(rt: Runtime, ref: str, token: int, *, delivered: bool) -> tuple[dict[str, str], JobSpec] | None:
    """Take the job for this step (see :meth:`SlotGate.claim`), with its row's spec, and count the
    delivery: one round trip, as every step of every job starts here. None: a stale message."""
    run_id, row = split_job_ref(ref)
    pipe = rt.redis.pipeline(transaction=False)
    if delivered:  # every delivered message counts, stale no-ops too: the benchmark's figure
        rt.runs.count_in(pipe, run_id, "task_executions")
    rt.gate.claim_in(pipe, ref, token, rt.proc_id)
    rt.runs.row_in(pipe, run_id, row)
    *_, raw_job, raw_row = pipe.execute()
    job = rt.gate.claimed(raw_job)
    if job is None:
        return None
    return job, JobSpec.from_json(rt.runs.parse_row(raw_row, run_id, row))


def _charge_reserved(rt: Runtime, run_id: str, job: dict[str, str]) -> None:
    """The job's API task was created and is being left behind (a revoked key, an expired sample):
    its reservation becomes spend, at the cost the API reported where it did (the reseller's, on
    its completed poll). The job then holds no reservation."""
    reserved = float(job.get("reserved") or 0)
    if reserved:
        rt.budget.settle(run_id, reserved, float(job.get("cost_credits") or reserved))
    job["reserved"] = "0"


def _not_ours(rt: Runtime, ref: str, held: str, fp: str, *, poll: bool) -> bool:
    """A message for a key this process does not hold (a worker started by hand on every queue):
    hand the step to a worker that holds it; it never runs with another key."""
    if rt.provider is not None or fp in rt.held:
        return False
    if rt.gate.handoff(ref, held, 0):
        (rt.scheduler.poll if poll else rt.scheduler.submit)(ref, int(held), fp)
    return True


def submit_job(rt: Runtime, ref: str, token: int, *, delivered: bool = True) -> None:
    claimed = _claim(rt, ref, token, delivered=delivered)
    if claimed is None:
        return
    job, spec = claimed
    held = job["step"]
    run_id, _ = split_job_ref(ref)
    fp, endpoint = split_gate_id(job["gate"])
    if _not_ours(rt, ref, held, fp, poll=False):
        return
    meta = rt.runs.recent_meta(run_id)
    stop = _run_stop(meta)
    if stop is not None:
        # Ending the row is for good: not on the 1 s cached meta, which `retry` may have just cleared.
        meta = rt.runs.recent_meta(run_id, max_age_s=0)
        stop = _run_stop(meta)
    if stop is not None:
        _end_active(rt, ref, job)
        finish(rt, ref, stop[0], job, error=stop[1])
        return
    price = float(cost_credits_for(spec.endpoint))
    if not rt.budget.reserve(run_id, price):
        _budget_reached(rt, ref, job)
        return
    attempts = int(job.get("attempts", 0)) + 1
    # The reservation is on the job before the POST: a re-drive of a dead submit can account for it.
    rt.gate.update(ref, held, state="submitting", attempts=attempts, key=fp, reserved=price)
    job.update(attempts=str(attempts), key=fp, reserved=str(price))
    try:
        request = build_request(rt, spec, webhook=_webhook_for(meta, ref))
        rt.submit_rate.acquire()
        # The API's clock for the task starts when the POST arrives, moments after this: everything
        # timed from the submit (first poll, progress, learnt latency) counts from here, not from
        # after our own handling of the answer, which waits on a busy process's GIL and Redis.
        sent_at = time.time()
        task = rt.provider_for(fp).submit(spec.endpoint, request)
    except (OutOfCredits, AuthError) as exc:
        rt.budget.settle(run_id, price, 0)
        _key_refused(rt, ref, job, fp, endpoint, exc)
        return
    except RetryableError as exc:
        rt.budget.settle(run_id, price, 0)
        # A timeout or a 5xx may come after the API created the task: a retry may then be a duplicate.
        maybe_created = isinstance(exc, TransportError | ServerError)
        if attempts >= rt.settings.max_attempts:
            _end_active(rt, ref, job)
            finish(rt, ref, "failed", {**job, "reserved": "0"}, error=f"submit failed after {attempts} attempts: {exc}")
            return
        delay = backoff_s(rt, attempts, exc)
        extra = {"possible_duplicate": 1} if maybe_created else {}
        if maybe_created:
            rt.runs.count(run_id, "possible_duplicates")
        if rt.gate.handoff(ref, held, delay, state="granted", last_error=str(exc), reserved=0, **extra):
            rt.scheduler.submit(ref, int(held), fp, countdown_s=delay)
        return
    except (PermanentError, OSError) as exc:
        rt.budget.settle(run_id, price, 0)
        _end_active(rt, ref, job)
        finish(rt, ref, "failed", {**job, "reserved": "0"}, error=f"{type(exc).__name__}: {exc}")
        return
    # One transaction: the reservation settled (BFL reports the cost at once; the reseller only when
    # the task ends) and the job handed on to its first poll.
    pipe = rt.redis.pipeline(transaction=True)
    reserved = price
    if task.cost is not None:
        rt.budget.settle_in(pipe, run_id, price, task.cost)
        reserved = 0.0
    # With a webhook, the first poll is only the fallback for a delivery that never comes.
    webhook = bool(meta.get("webhook_url"))
    planned = rt.planner.webhook_fallback_s(spec.endpoint) if webhook else rt.planner.first_delay(spec.endpoint)
    delay = max(0.0, sent_at + planned - time.time())
    rt.gate.handoff_in(
        pipe,
        ref,
        held,
        delay,
        state="polling",
        bfl_task_id=task.id,
        polling_url=task.polling_url,
        cost_credits=task.cost if task.cost is not None else "",
        reserved=reserved,
        submitted_at=sent_at,
        polls=0,
        poll_errors=0,
    )
    if pipe.execute()[-1]:
        logs.row_event(ref, "submitted", f"task {task.id} at {spec.endpoint}", task=task.id, endpoint=spec.endpoint)
        rt.scheduler.poll(ref, int(held), fp, countdown_s=delay)


def _webhook_for(meta: dict[str, str], ref: str) -> tuple[str, str] | None:
    """The run's webhook (its receiver's URL naming this job, and the run's secret), if it has one."""
    if not meta.get("webhook_url"):
        return None
    return f"{meta['webhook_url']}?{urlencode({'job': ref})}", meta["webhook_secret"]


def _run_stop(meta: dict[str, str]) -> tuple[RowStatus, str] | None:
    """Why this run submits nothing more, as (row status, reason), or None."""
    if meta.get("status") == "cancelled":
        return "cancelled", "run cancelled before this row was submitted"
    if meta.get("stopped"):
        reason = meta.get("stopped_reason") or meta["stopped"]
        return ("budget" if meta["stopped"] == "budget" else "failed"), reason
    return None


def _budget_reached(rt: Runtime, ref: str, job: dict[str, str]) -> None:
    run_id, _ = split_job_ref(ref)
    sp = rt.budget.spend(run_id)
    reason = f"budget of {sp.budget:g} credits reached: {sp.spent:g} spent, {sp.reserved:g} in flight"
    rt.runs.update(run_id, stopped="budget", stopped_reason=reason)
    logs.run_stopped(run_id, "budget", reason)
    _end_active(rt, ref, job)
    finish(rt, ref, "budget", job, error=reason)
    drain_waiting(rt, run_id, "budget", reason)


def _key_refused(rt: Runtime, ref: str, job: dict[str, str], fp: str, endpoint: str, exc: KontextBatchError) -> None:
    """The API refused the key (401/403, or 402 out of credits): the key leaves every pool, and the
    row goes back to wait for another key of its pool. The run stops when its pool has none left."""
    run_id, _ = split_job_ref(ref)
    what = "out of credits (402)" if isinstance(exc, OutOfCredits) else "API key refused"
    reason = f"{what} on key {fp}: {exc}"
    rt.gate.mark_key_out(fp, reason)
    log.warning("run %s: key %s leaves the pool: %s", run_id, fp, reason)
    pool = rt.gate.pool(job["pool"])
    out = rt.gate.keys_out()
    if any(f not in out for f in pool.fps):
        rt.gate.requeue(ref, pool.id, endpoint, job["gate"], reserved=0)
        dispatch(rt, pool.id, endpoint)
        return
    stopped = "out_of_credits" if isinstance(exc, OutOfCredits) else "auth"
    rt.runs.update(run_id, stopped=stopped, stopped_reason=reason)
    logs.run_stopped(run_id, stopped, f"no key of its pool is left ({reason})")
    _end_active(rt, ref, job)
    finish(rt, ref, "failed", {**job, "reserved": "0"}, error=reason)
    drain_waiting(rt, run_id, "failed", reason)


def poll_job(rt: Runtime, ref: str, token: int) -> None:
    claimed = _claim(rt, ref, token, delivered=True)
    if claimed is None:
        return
    job, spec = claimed
    held = job["step"]
    fp, _ = split_gate_id(job.get("gate", ""))
    if _not_ours(rt, ref, held, fp, poll=True):
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
            _end_active(rt, ref, job)
            finish(rt, ref, "failed", job, error=f"polling failed {errors} times: {exc}")
            return
        delay = backoff_s(rt, errors, exc)
        if rt.gate.handoff(ref, held, delay, poll_errors=errors, last_error=str(exc)):
            rt.scheduler.poll(ref, int(held), fp, countdown_s=delay)
        return
    except AuthError as exc:
        # The key was revoked mid-run: its task's result is out of reach; another key of the pool
        # takes the row (a new task), or the run stops when none is left.
        _charge_reserved(rt, run_id, job)
        _key_refused(rt, ref, job, fp, spec.endpoint, exc)
        return
    except (PermanentError, KeyNotHeld) as exc:
        _end_active(rt, ref, job)
        finish(rt, ref, "failed", job, error=f"polling refused: {exc}")
        return
    polls = int(job.get("polls", 0)) + (0 if job.get("webhook_result") else 1)
    job["polls"] = str(polls)
    metrics.poll_answered(spec.endpoint)
    elapsed = answered_at - float(job.get("submitted_at") or answered_at)
    if not res.status.terminal:
        if res.status is Status.UNKNOWN and rt.runs.first_time(run_id, f"status:{res.raw_status}"):
            log.warning(
                "run %s: the API answered status %r, which is not a known one; polling on until the task's deadline",
                run_id,
                res.raw_status,
            )
        deadline = rt.planner.deadline_s(spec.endpoint, rt.settings.task_deadline_s)
        if elapsed > deadline:
            _end_active(rt, ref, job)
            finish(
                rt,
                ref,
                "failed",
                job,
                error=f"no final status after {elapsed:.0f} s (deadline {deadline:.0f} s); "
                f"last status seen: {res.raw_status}",
            )
            return
        planned = rt.planner.next_delay(spec.endpoint, elapsed, res.progress, polls=polls)
        delay = max(0.0, planned - (time.time() - answered_at))
        if rt.gate.handoff(ref, held, delay, polls=polls, poll_errors=0):
            rt.scheduler.poll(ref, int(held), fp, countdown_s=delay)
        return
    # The slot is free the moment the task is terminal. Submitting the next row from this thread,
    # before our own download, saves it a trip through the broker: the cap stays fuller.
    successor = _end_active(rt, ref, job, keep_one=True)
    if successor is not None:
        submit_job(rt, successor.ref, successor.token, delivered=False)
    rt.planner.observe(spec.endpoint, _latency_seen(res, job, elapsed, polls))
    if res.cost is not None:
        job["cost_credits"] = str(res.cost)  # the reseller's usage.cost, on the completed poll
    ready = res.status is Status.READY
    pipe = rt.redis.pipeline(transaction=False)
    rt.runs.is_final_in(pipe, run_id, row)
    if ready:  # written in the same round trip; harmless when the row turns out final
        rt.gate.update_in(pipe, ref, held, polls=polls, state="storing", ready_seen_at=time.time())
    if pipe.execute()[0]:
        rt.gate.retire(ref)  # recorded meanwhile (the run was cancelled): nothing to store
        return
    if ready:
        logs.row_event(ref, "ready", f"after {polls} poll(s)", task=job.get("bfl_task_id"), polls=polls)
        _store(rt, ref, held, spec, job, res)
    elif res.status.moderated:
        finish(rt, ref, "moderated", job, error=res.reason, moderation_reasons=list(res.moderation_reasons))
    else:
        finish(rt, ref, "failed", job, error=res.reason)


def _from_webhook(job: dict[str, str]) -> PollResult | None:
    """The outcome a webhook delivered for this job (kept on it by the receiver), instead of a poll."""
    raw = job.get("webhook_result")
    return parse_webhook(json.loads(raw)) if raw else None


def _latency_seen(res: PollResult, job: dict[str, str], elapsed: float, polls: int) -> float:
    """How long the task really took, as best we can tell, for the poll planner.

    ``elapsed`` is when *we* saw it finish: an over-estimate when the first poll already found it
    done, and learning from it would make every first poll as late as the last. The API's end time
    is exact; without it, a first-poll finish is shaded down so the planner probes earlier until a
    poll lands before the end (and progress then tells the rest).
    """
    submitted = float(job.get("submitted_at") or 0)
    if res.end_time and submitted and 0 < res.end_time - submitted <= elapsed + 1.0:
        return float(res.end_time - submitted)
    return elapsed if polls > 1 else elapsed * 0.85


def _store(rt: Runtime, ref: str, held: str, spec: JobSpec, job: dict[str, str], res: PollResult) -> None:
    run_id, _ = split_job_ref(ref)
    fp, _ = split_gate_id(job.get("gate", ""))
    if not res.sample_url:
        finish(rt, ref, "failed", job, error="Ready without a sample URL")
        return
    try:
        sample = rt.provider_for(fp).download(res.sample_url)
        data, content_type, transcoded_from = conform_sample(sample.content, spec.output_format)
        store = rt.store(rt.runs.recent_meta(run_id)["output"])
        uri = store.put(spec.output_name, data, content_type=content_type)
        side = _sidecar(run_id, spec, job, res, content_type)
        if transcoded_from:
            side["transcoded_from"] = transcoded_from
        store.put(spec.sidecar_name, json.dumps(side, indent=1).encode(), content_type="application/json")
    except SampleExpired as exc:
        if rt.settings.resubmit_expired and int(job.get("attempts", 0)) < rt.settings.max_attempts:
            _resubmit_expired(rt, ref, held, spec, job, res)
            return
        finish(rt, ref, "failed", job, error=f"sample URL expired before download: {exc}", seed=res.seed)
        return
    except RetryableError as exc:
        # The task is Ready and its URL lives 10 minutes: poll again for it and retry the download.
        errors = int(job.get("poll_errors", 0)) + 1
        if errors > 2 * rt.settings.max_attempts:
            finish(rt, ref, "failed", job, error=f"storing failed {errors} times: {exc}")
            return
        delay = backoff_s(rt, errors)
        if rt.gate.handoff(ref, held, delay, state="polling", poll_errors=errors, last_error=str(exc)):
            rt.scheduler.poll(ref, int(held), fp, countdown_s=delay)
        return
    except (PermanentError, OSError) as exc:
        finish(rt, ref, "failed", job, error=f"{type(exc).__name__}: {exc}", seed=res.seed)
        return
    finish(rt, ref, "succeeded", job, output_uri=uri, seed=res.seed)


def _sidecar(run_id: str, spec: JobSpec, job: dict[str, str], res: PollResult, content_type: str) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "row": spec.row,
        "id": spec.id,
        "model": spec.endpoint,
        "prompt": spec.prompt,
        "result_prompt": res.prompt,
        "seed": res.seed,
        "params": spec.params,
        "bfl_task_id": job.get("bfl_task_id"),
        "key_fingerprint": job.get("key") or None,
        "input_digests": spec.digests,
        "job_key": spec.job_key,
        "content_type": content_type,
        "cost_credits": float(job["cost_credits"]) if job.get("cost_credits") else None,
        "timings": {
            "submitted_at": float(job["submitted_at"]) if job.get("submitted_at") else None,
            "api_start_time": res.start_time,
            "api_end_time": res.end_time,
            "api_duration_s": res.duration,
            "stored_at": time.time(),
        },
    }


def _resubmit_expired(rt: Runtime, ref: str, held: str, spec: JobSpec, job: dict[str, str], res: PollResult) -> None:
    run_id, row = split_job_ref(ref)
    _charge_reserved(rt, run_id, job)  # the expired task was paid for; the next submit reserves anew
    if res.seed is not None and spec.params.get("seed") is None:
        spec = JobSpec.from_json({**spec.to_json(), "params": {**spec.params, "seed": res.seed}})
        rt.runs.set_row(run_id, row, spec.to_json())
    rt.gate.requeue(ref, job["pool"], spec.endpoint)
    dispatch(rt, job["pool"], spec.endpoint)


def redrive(rt: Runtime, stale: StaleJob) -> None:
    """Send again a job whose holder died, or whose next message is overdue (lost with a killed worker)."""
    if not stale.gate_id or not stale.pool_id:
        return
    run_id, row = split_job_ref(stale.ref)
    if rt.runs.is_final(run_id, row):
        # Its worker recorded the result and died before forgetting the job: nothing to send.
        rt.gate.retire(stale.ref)
        return
    fp, endpoint = split_gate_id(stale.gate_id)
    if stale.state in ("polling", "storing"):
        # The API task may still be active: count it against the cap while we poll it again.
        rt.gate.hold(stale.gate_id, stale.ref)
        if rt.gate.handoff(stale.ref, stale.token, 0, state="polling"):
            rt.scheduler.poll(stale.ref, stale.token, fp)
    else:
        # Not submitted, or the submit's fate is unknown: queue it again at the front.
        extra: dict[str, Any] = {}
        if stale.state == "submitting":
            # The POST may have reached the API before the worker died: at-least-once, so mark it.
            extra["possible_duplicate"] = 1
            rt.runs.count(run_id, "possible_duplicates")
            # It may have been charged: count it spent.
            _charge_reserved(rt, run_id, rt.gate.fields(stale.ref, "reserved"))
            extra["reserved"] = 0
        rt.gate.requeue(stale.ref, stale.pool_id, endpoint, stale.gate_id, **extra)
        dispatch(rt, stale.pool_id, endpoint)
    logs.row_event(stale.ref, "re-driven", f"was {stale.state or 'unknown'}", level=logging.WARNING)


def sweep(rt: Runtime) -> int:
    """Re-drive abandoned jobs, fill free slots, stop runs no key can serve, finalize complete runs.

    Cheap; every worker runs it about once a second.
    """
    n = 0
    for stale in rt.gate.claim_expired():
        try:
            redrive(rt, stale)
            n += 1
        except KontextBatchError:
            log.exception("could not re-drive %s", stale.ref)
    for pool_id, endpoint in rt.gate.known_waits():
        if rt.gate.waiting(pool_id, endpoint):
            dispatch(rt, pool_id, endpoint)
    n += _stop_runs_without_keys(rt)
    for run_id in rt.runs.complete_but_open():
        finalize(rt, run_id)
        n += 1
    return n


def _stop_runs_without_keys(rt: Runtime) -> int:
    """A run whose every key the API refused can never finish its waiting rows: stop it now."""
    out = rt.gate.keys_out()
    if not out:
        return 0
    n = 0
    for run_id in rt.runs.open_runs():
        meta = rt.runs.meta(run_id)
        pool_id = meta.get("pool")
        if not pool_id or meta.get("stopped") or meta.get("status") != "running":
            continue
        fps = rt.gate.pool(pool_id).fps
        if all(fp in out for fp in fps):
            # Stopping is for good: not on the 1 s cached view, which `retry` may have just cleared.
            out = rt.gate.keys_out(max_age_s=0)
            if not all(fp in out for fp in fps):
                continue
            reason = "; ".join(out[fp] for fp in fps)
            rt.runs.update(run_id, stopped="keys", stopped_reason=f"no key of the run's pool is left: {reason}")
            logs.run_stopped(run_id, "keys", f"no key of the run's pool is left: {reason}")
            n += drain_waiting(rt, run_id, "failed", reason)
    return n
