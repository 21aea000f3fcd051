"""Poll one Kontext task once; store its sample when Ready, or schedule the next poll."""

from kontext_batch.pipeline import poll_job
from workers.app import app
from workers.process import get_runtime
from workers.queues import POLL_TASK


@app.task(name=POLL_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def poll(ref: str, token: int) -> None:
    poll_job(get_runtime(), ref, token)
