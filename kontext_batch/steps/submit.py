"""The submit step: reserve the row's price, POST it to the API, hand the job to its first poll."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from redis.client import Pipeline
from redis.exceptions import RedisError

from kontext_batch import logs
from kontext_batch.api.models import KontextRequest
from kontext_batch.api.prices import cost_credits_for
from kontext_batch.coord.keys import split_job_ref, split_slot_id
from kontext_batch.coord.redisio import decode
from kontext_batch.coord.replicas import Node
from kontext_batch.errors import (
    ApiError,
    AuthError,
    OutOfCredits,
    PermanentError,
    RetryableError,
    ServerError,
    TransportError,
    describe,
)
from kontext_batch.io.formats import request_format
from kontext_batch.io.payload import load_image_payload
from kontext_batch.jobspec import JobSpec
from kontext_batch.runtime import Runtime
from kontext_batch.steps import outcome
from kontext_batch.steps.complete import drain_waiting, finish
from kontext_batch.steps.job import backoff_s, claim, end_active, key_refused, not_ours, run_stop

__all__ = ["build_request", "submit_job"]

log = logging.getLogger("kontext_batch.submit")
#: How long a submit held back for an unconfirmed record waits before it tries again.
_HELD_BACK_S = 0.5


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


def submit_job(rt: Runtime, ref: str, token: int, *, delivered: bool = True) -> None:  # noqa: C901, PLR0911, PLR0912, PLR0915 - the submit step's outcomes side by side: one place to read what a POST answer leads to
    claimed = claim(rt, ref, token, delivered=delivered)
    if claimed is None:
        return
    job, spec = claimed
    held = job["step"]
    run_id, _ = split_job_ref(ref)
    fp, endpoint = split_slot_id(job["gate"])
    if not_ours(rt, ref, held, fp, poll=False):
        return
    meta = rt.runs.recent_meta(run_id)
    stop = run_stop(meta)
    if stop is not None:
        # Ending the row is for good: not on the 1 s cached meta, which `retry` may have just cleared.
        meta = rt.runs.recent_meta(run_id, max_age_s=0)
        stop = run_stop(meta)
    if stop is not None:
        end_active(rt, ref, job)
        finish(rt, ref, stop[0], job, error=stop[1])
        return
    price = float(cost_credits_for(spec.endpoint))
    attempts = int(job.get("attempts", 0)) + 1
    # The reservation is on the job before the POST: a re-drive of a dead submit can account for it.
    wrote, node = rt.jobs.submitting(
        ref, held, run_id, price, state="submitting", attempts=attempts, key=fp, reserved=price
    )
    if wrote == "fenced":
        # Re-driven meanwhile (this step passed its deadline): the job is another step's now, and
        # a POST from here would be a second, unflagged task.
        return
    if wrote == "over budget":
        _budget_reached(rt, ref, job)
        return
    job.update(attempts=str(attempts), key=fp, reserved=str(price))
    assert node is not None  # written
    if rt.replicas.confirm(node) == "unconfirmed":
        # The record of this submit may be lost with a failover (the master lost its replica a
        # moment ago): a POST now could come back as a second, unflagged task. Try again shortly.
        _held_back(rt, ref, held, fp, price, attempts)
        return
    try:
        request = build_request(rt, spec, webhook=_webhook_for(meta, ref))
        rt.submit_rate.acquire()
        # The row's submitted_at (its results' duration, its deadline): from before the POST.
        sent_at = time.time()
        task = rt.provider_for(fp).submit(spec.endpoint, request)
        # The task has begun by the time the API answers, and a POST may wait long before the API
        # takes it (0.9 s p50 in the first wave of a 4-key run, 4 ms later on): the first poll and
        # the task's age, which progress is read against, count from here, taken before our own
        # handling of the answer (which waits on Redis and a busy process's GIL).
        accepted_at = time.time()
    except (OutOfCredits, AuthError) as exc:
        rt.budget.settle(run_id, price, 0)
        key_refused(rt, ref, job, fp, endpoint, exc)
        return
    except RetryableError as exc:
        rt.budget.settle(run_id, price, 0)
        # A timeout or a 5xx may come after the API created the task: a retry may then be a duplicate.
        maybe_created = isinstance(exc, TransportError | ServerError)
        if attempts >= rt.settings.max_attempts:
            end_active(rt, ref, job)
            finish(rt, ref, "failed", {**job, "reserved": "0"}, error=f"submit failed after {attempts} attempts: {exc}")
            return
        delay = backoff_s(rt, attempts, exc)
        extra = {"possible_duplicate": 1} if maybe_created else {}
        if maybe_created:
            rt.runs.count(run_id, "possible_duplicates")
        if rt.jobs.handoff(ref, held, delay, state="granted", last_error=str(exc), reserved=0, **extra):
            rt.scheduler.submit(ref, int(held), fp, countdown_s=delay)
        return
    except (PermanentError, OSError) as exc:
        rt.budget.settle(run_id, price, 0)
        end_active(rt, ref, job)
        lead = "the API refused the submit" if isinstance(exc, ApiError) else "not submitted"
        finish(rt, ref, "failed", {**job, "reserved": "0"}, error=f"{lead}: {describe(exc)}")
        return
    # With a webhook, the first poll is only the fallback for a delivery that never comes.
    webhook = bool(meta.get("webhook_url"))
    planned = rt.planner.webhook_fallback_s(spec.endpoint) if webhook else rt.planner.first_delay(spec.endpoint)
    delay = max(0.0, accepted_at + planned - time.time())

    def record() -> Pipeline:
        # One transaction: the reservation settled (BFL reports the cost at once; the reseller only
        # when the task ends) and the job handed on to its first poll.
        pipe = rt.redis.pipeline(transaction=True)
        if task.cost is not None:
            rt.budget.settle_in(pipe, run_id, price, task.cost)
        rt.jobs.handoff_in(
            pipe,
            ref,
            held,
            delay,
            state="polling",
            bfl_task_id=task.id,
            polling_url=task.polling_url,
            cost_credits=task.cost if task.cost is not None else "",
            reserved=price if task.cost is None else 0.0,
            submitted_at=sent_at,
            accepted_at=accepted_at,
            polls=0,
            poll_errors=0,
        )
        rt.replicas.where_in(pipe)  # the node that took the transaction, for the check
        return pipe

    *_, wrote_it, where = record().execute()
    handed_off = bool(wrote_it)
    if handed_off and rt.replicas.confirm(Node.from_reply(where)) == "unconfirmed":
        # The task exists; its id may be lost with a failover, and the row sent again. Write it
        # again until a replica has it, to whichever node is master by then.
        handed_off = _record_task_durably(rt, ref, held, task.id, record)
    if handed_off:
        logs.row_event(ref, "submitted", f"task {task.id} at {spec.endpoint}", task=task.id, endpoint=spec.endpoint)
        outcome.note(f"{ref}: submitted as task {task.id} at {spec.endpoint}; first poll in {delay:.1f} s")
        rt.scheduler.poll(ref, int(held), fp, countdown_s=delay)


def _held_back(rt: Runtime, ref: str, held: str, fp: str, price: float, attempts: int) -> None:
    """Not submitted after all: the reservation and the attempt given back, the submit due again soon."""
    run_id, _ = split_job_ref(ref)
    rt.budget.settle(run_id, price, 0)
    reason = "waiting for a Redis replica to confirm the submit's record (a failover under way?)"
    logs.row_event(ref, "held back", reason, level=logging.WARNING)
    delay = _HELD_BACK_S
    if rt.jobs.handoff(ref, held, delay, state="granted", attempts=attempts - 1, reserved=0, last_error=reason):
        rt.scheduler.submit(ref, int(held), fp, countdown_s=delay)


def _record_task_durably(rt: Runtime, ref: str, held: str, task_id: str, record: Callable[[], Pipeline]) -> bool:
    """Repeat the hand-off's writes until a replica confirms them (or the master is left without one).

    Written again only while the job still shows its submit unrecorded (``submitting``, our token):
    if the first write survived, a second would settle the reservation twice. False: the job is
    another step's by now, or no node confirmed it within the step's deadline; its re-drive then
    flags the row ``possible_duplicate``."""
    give_up = time.monotonic() + min(rt.settings.step_deadline_s / 2, 60.0)
    while time.monotonic() < give_up:
        time.sleep(_HELD_BACK_S)
        try:
            # Read and checked on one node: the one the read reached.
            pipe = rt.redis.pipeline(transaction=False)
            pipe.hmget(rt.keys.job(ref), ["step", "state", "bfl_task_id"])
            rt.replicas.where_in(pipe)
            (step, state, task_now), where = pipe.execute()
            if decode(step or b"") != str(held):
                return False
            if decode(state or b"") == "submitting":
                *_, wrote_it, where = record().execute()
                if not wrote_it:
                    return False
            elif decode(task_now or b"") != task_id:
                return False
            if rt.replicas.confirm(Node.from_reply(where)) != "unconfirmed":
                return True
        except RedisError as exc:  # the clients are moving to the new master
            log.info("job %s: task %s not confirmed yet: %s", ref, task_id, exc)
    return False


def _webhook_for(meta: dict[str, str], ref: str) -> tuple[str, str] | None:
    """The run's webhook (its receiver's URL naming this job, and the run's secret), if it has one."""
    if not meta.get("webhook_url"):
        return None
    return f"{meta['webhook_url']}?{urlencode({'job': ref})}", meta["webhook_secret"]


def _budget_reached(rt: Runtime, ref: str, job: dict[str, str]) -> None:
    run_id, _ = split_job_ref(ref)
    sp = rt.budget.spend(run_id)
    reason = f"budget of {sp.budget:g} credits reached: {sp.spent:g} spent, {sp.reserved:g} in flight"
    rt.runs.update(run_id, stopped="budget", stopped_reason=reason)
    logs.run_stopped(run_id, "budget", reason)
    end_active(rt, ref, job)
    finish(rt, ref, "budget", job, error=reason)
    drain_waiting(rt, run_id, "budget", reason)
