"""Submit one row to the Kontext API (it already holds a slot)."""

from celery import shared_task
from celery.exceptions import Reject

from kontext_batch.steps import outcome
from kontext_batch.steps.submit import submit_job
from kontext_batch.workers.process import get_runtime, taking_steps
from kontext_batch.workers.queues import SUBMIT_TASK


@shared_task(name=SUBMIT_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def submit(ref: str, token: int) -> str:
    if not taking_steps():  # shutting down: back to the queue untouched, for another worker
        raise Reject("worker shutting down", requeue=True)
    outcome.begin()
    submit_job(get_runtime(), ref, token)
    return outcome.taken("submit", ref)  # what Flower shows as the task's result
