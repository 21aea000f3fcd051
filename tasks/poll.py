"""Poll one Kontext task once; store its sample when Ready, or schedule the next poll."""

from celery import shared_task
from celery.exceptions import Reject

from kontext_batch.steps import outcome
from kontext_batch.steps.poll import poll_job
from kontext_batch.workers.process import get_runtime, taking_steps
from kontext_batch.workers.queues import POLL_TASK


@shared_task(name=POLL_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def poll(ref: str, token: int) -> str:
    if not taking_steps():  # shutting down: back to the queue untouched, for another worker
        raise Reject("worker shutting down", requeue=True)
    outcome.begin()
    poll_job(get_runtime(), ref, token)
    return outcome.taken("poll", ref)  # what Flower shows as the task's result
