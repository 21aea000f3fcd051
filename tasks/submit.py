"""Submit one row to the Kontext API (it already holds a slot)."""

from kontext_batch.pipeline import submit_job
from workers.app import app
from workers.process import get_runtime
from workers.queues import SUBMIT_TASK


@app.task(name=SUBMIT_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def submit(ref: str, token: int) -> None:
    submit_job(get_runtime(), ref, token)
