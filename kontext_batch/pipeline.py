"""The steps of one job, as plain functions over a :class:`Runtime`. Celery tasks only call these.

    waiting (Redis list) --dispatch--> submit_job --> poll_job (repeats) --> stored / recorded

Per-row failures become results (``failed``, ``moderated``...); only bugs escape as exceptions.
Every step starts by claiming the job's fencing token, so a duplicate or stale message is a no-op.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from kontext_batch.api.models import KontextRequest, PollResult, Status
from kontext_batch.api.retry import RetryPolicy
from kontext_batch.completion import finalize, finish
from kontext_batch.dispatch import dispatch
from kontext_batch.errors import (
    AuthError,
    KontextBatchError,
    OutOfCredits,
    PermanentError,
    RetryableError,
    SampleExpired,
)
from kontext_batch.formats import conform_sample, request_format
from kontext_batch.gate import Grant, StaleJob
from kontext_batch.jobspec import JobSpec
from kontext_batch.keys import split_job_ref
from kontext_batch.manifest.staging import load_image_payload
from kontext_batch.runtime import Runtime

__all__ = ["poll_job", "redrive", "submit_job", "sweep"]

log = logging.getLogger("kontext_batch.pipeline")


def backoff_s(rt: Runtime, attempt: int, error: BaseException | None = None) -> float:
    """The retry policy's wait, applied as a countdown: the step gives its thread back meanwhile."""
    return RetryPolicy.from_settings(rt.settings).wait_s(attempt, error)


def build_request(rt: Runtime, spec: JobSpec) -> KontextRequest:
    """The API request for a row: http(s) inputs as URLs the API fetches, anything else as base64."""
    fields: dict[str, Any] = dict(spec.params)
    # Always explicit: providers differ in their default, and the output name's extension must match.
    fields["output_format"] = request_format(spec.output_format, rt.provider.output_formats)
    names = ("input_image", "input_image_2", "input_image_3", "input_image_4")
    for name, uri in zip(names, spec.images, strict=False):
        fields[name] = load_image_payload(uri, cache=rt.payloads)
    return KontextRequest.build(prompt=spec.prompt, **fields)


def _end_active(rt: Runtime, ref: str, job: dict[str, str], *, keep_one: bool = False) -> Grant | None:
    """The API task is terminal (or never existed): free its slot and hand it on at once."""
    gate_id = job.get("gate", "")
    if not gate_id:
        return None
    rt.gate.release(gate_id, ref)
    return dispatch(rt, rt.gate_by_id(gate_id), keep_one=keep_one)


def _count_execution(rt: Runtime, ref: str) -> None:
    rt.runs.count_execution(split_job_ref(ref)[0])


def submit_job(rt: Runtime, ref: str, token: int, *, delivered: bool = True) -> None:
    if delivered:
        _count_execution(rt, ref)
    job = rt.gate.claim(ref, token)
    if job is None:
        return
    run_id, row = split_job_ref(ref)
    meta = rt.runs.meta(run_id)
    spec = JobSpec.from_json(rt.runs.row(run_id, row))
    stop = _run_stop_reason(meta)
    if stop is not None:
        _end_active(rt, ref, job)
        finish(rt, ref, "cancelled" if meta.get("status") == "cancelled" else "failed", job, error=stop)
        return
    attempts = int(job.get("attempts", 0)) + 1
    rt.gate.update(ref, state="submitting", attempts=attempts)
    job["attempts"] = str(attempts)
    try:
        request = build_request(rt, spec)
        rt.submit_rate.acquire()
        task = rt.provider.submit(spec.endpoint, request)
    except OutOfCredits as exc:
        rt.runs.update(run_id, stopped="out_of_credits", stopped_reason=f"out of credits (402): {exc}")
        _end_active(rt, ref, job)
        finish(rt, ref, "failed", job, error=f"out_of_credits: {exc}")
        return
    except AuthError as exc:
        rt.runs.update(run_id, stopped="auth", stopped_reason=f"API key refused: {exc}")
        _end_active(rt, ref, job)
        finish(rt, ref, "failed", job, error=f"auth: {exc}")
        return
    except RetryableError as exc:
        if attempts >= rt.settings.max_attempts:
            _end_active(rt, ref, job)
            finish(rt, ref, "failed", job, error=f"submit failed after {attempts} attempts: {exc}")
            return
        delay = backoff_s(rt, attempts, exc)
        rt.gate.update(ref, state="granted", last_error=str(exc))
        rt.scheduler.submit(ref, token + 1, countdown_s=delay)
        return
    except (PermanentError, FileNotFoundError, OSError) as exc:
        _end_active(rt, ref, job)
        finish(rt, ref, "failed", job, error=f"{type(exc).__name__}: {exc}")
        return
    now = time.time()
    rt.gate.update(
        ref,
        state="polling",
        bfl_task_id=task.id,
        polling_url=task.polling_url,
        cost_credits=task.cost if task.cost is not None else "",
        submitted_at=now,
        polls=0,
        poll_errors=0,
    )
    rt.scheduler.poll(ref, token + 1, countdown_s=rt.planner.first_delay(spec.endpoint))


def _run_stop_reason(meta: dict[str, str]) -> str | None:
    if meta.get("status") == "cancelled":
        return "run cancelled before this row was submitted"
    if meta.get("stopped"):
        return meta.get("stopped_reason") or meta["stopped"]
    return None


def poll_job(rt: Runtime, ref: str, token: int) -> None:
    _count_execution(rt, ref)
    job = rt.gate.claim(ref, token)
    if job is None:
        return
    run_id, row = split_job_ref(ref)
    spec = JobSpec.from_json(rt.runs.row(run_id, row))
    try:
        res = rt.provider.poll(job["polling_url"])
    except RetryableError as exc:
        errors = int(job.get("poll_errors", 0)) + 1
        if errors > 2 * rt.settings.max_attempts:
            _end_active(rt, ref, job)
            finish(rt, ref, "failed", job, error=f"polling failed {errors} times: {exc}")
            return
        rt.gate.update(ref, poll_errors=errors, last_error=str(exc))
        rt.scheduler.poll(ref, token + 1, countdown_s=backoff_s(rt, errors, exc))
        return
    except PermanentError as exc:
        _end_active(rt, ref, job)
        finish(rt, ref, "failed", job, error=f"polling refused: {exc}")
        return
    polls = int(job.get("polls", 0)) + 1
    job["polls"] = str(polls)
    elapsed = time.time() - float(job.get("submitted_at") or time.time())
    if not res.status.terminal:
        rt.gate.update(ref, polls=polls, poll_errors=0)
        delay = rt.planner.next_delay(spec.endpoint, elapsed, res.progress)
        rt.scheduler.poll(ref, token + 1, countdown_s=delay)
        return
    # The slot is free the moment the task is terminal. Submitting the next row from this thread,
    # before our own download, saves it a trip through the broker: the cap stays fuller.
    successor = _end_active(rt, ref, job, keep_one=True)
    if successor is not None:
        submit_job(rt, successor.ref, successor.token, delivered=False)
    rt.planner.observe(spec.endpoint, _latency_seen(res, job, elapsed, polls))
    if res.status is Status.READY:
        rt.gate.update(ref, polls=polls, state="storing", ready_seen_at=time.time())
        _store(rt, ref, token, spec, job, res)
    elif res.status.moderated:
        finish(rt, ref, "moderated", job, error=res.reason, moderation_reasons=list(res.moderation_reasons))
    else:
        finish(rt, ref, "failed", job, error=res.reason)


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


def _store(rt: Runtime, ref: str, token: int, spec: JobSpec, job: dict[str, str], res: PollResult) -> None:
    run_id, _ = split_job_ref(ref)
    if not res.sample_url:
        finish(rt, ref, "failed", job, error="Ready without a sample URL")
        return
    try:
        sample = rt.provider.download(res.sample_url)
        data, content_type, transcoded_from = conform_sample(sample.content, spec.output_format)
        store = rt.store(rt.runs.meta(run_id)["output"])
        uri = store.put(spec.output_name, data, content_type=content_type)
        side = _sidecar(run_id, spec, job, res, content_type)
        if transcoded_from:
            side["transcoded_from"] = transcoded_from
        store.put(spec.sidecar_name, json.dumps(side, indent=1).encode(), content_type="application/json")
    except SampleExpired as exc:
        if rt.settings.resubmit_expired and int(job.get("attempts", 0)) < rt.settings.max_attempts:
            _resubmit_expired(rt, ref, spec, res)
            return
        finish(rt, ref, "failed", job, error=f"sample URL expired before download: {exc}", seed=res.seed)
        return
    except RetryableError as exc:
        # The task is Ready and its URL lives 10 minutes: poll again for it and retry the download.
        errors = int(job.get("poll_errors", 0)) + 1
        if errors > 2 * rt.settings.max_attempts:
            finish(rt, ref, "failed", job, error=f"storing failed {errors} times: {exc}")
            return
        rt.gate.update(ref, state="polling", poll_errors=errors, last_error=str(exc))
        rt.scheduler.poll(ref, token + 1, countdown_s=backoff_s(rt, errors))
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
        "input_digests": spec.digests,
        "job_key": spec.job_key,
        "content_type": content_type,
        "cost_credits": job.get("cost_credits") or None,
        "timings": {
            "submitted_at": float(job["submitted_at"]) if job.get("submitted_at") else None,
            "api_start_time": res.start_time,
            "api_end_time": res.end_time,
            "api_duration_s": res.duration,
            "stored_at": time.time(),
        },
    }


def _resubmit_expired(rt: Runtime, ref: str, spec: JobSpec, res: PollResult) -> None:
    run_id, row = split_job_ref(ref)
    if res.seed is not None and spec.params.get("seed") is None:
        spec = JobSpec.from_json({**spec.to_json(), "params": {**spec.params, "seed": res.seed}})
        rt.runs.set_row(run_id, row, spec.to_json())
    gate = rt.gate_for(spec.endpoint)
    rt.gate.requeue(gate, ref)
    dispatch(rt, gate)


def redrive(rt: Runtime, stale: StaleJob) -> None:
    """Send again a job whose worker went quiet (killed, or Redis lost its message)."""
    if not stale.gate_id:
        return
    run_id, row = split_job_ref(stale.ref)
    if rt.runs.is_final(run_id, row):
        # Its worker recorded the result and died before forgetting the job: nothing to send.
        rt.gate.retire(stale.ref)
        return
    gate = rt.gate_by_id(stale.gate_id)
    if stale.state in ("polling", "storing"):
        # The API task may still be active: count it against the cap while we poll it again.
        rt.gate.hold(stale.gate_id, stale.ref)
        rt.gate.update(stale.ref, state="polling")
        rt.scheduler.poll(stale.ref, stale.token)
    else:
        # Not submitted, or the submit's fate is unknown: queue it again at the front.
        rt.gate.requeue(gate, stale.ref)
        dispatch(rt, gate)
    log.warning("re-drove %s (was %s)", stale.ref, stale.state or "unknown")


def sweep(rt: Runtime) -> int:
    """Re-drive quiet jobs and fill free slots of this key's gates. Cheap; run every second or so."""
    n = 0
    for stale in rt.gate.claim_expired():
        try:
            redrive(rt, stale)
            n += 1
        except KontextBatchError:
            log.exception("could not re-drive %s", stale.ref)
    fp = rt.settings.api_key.fingerprint
    for gfp, endpoint in rt.gate.known_gates():
        if gfp == fp:
            dispatch(rt, rt.gate_for(endpoint))
    for run_id in rt.runs.complete_but_open():
        finalize(rt, run_id)
        n += 1
    return n
