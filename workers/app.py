"""The Celery app. Configured explicitly from :class:`Settings` (never from the environment at import).

Why these settings:
- threads pool: every task waits on HTTP; one process holds dozens of jobs in flight.
- acks_late + reject_on_worker_lost: a job whose worker dies is delivered again; tasks are idempotent
  (fencing tokens, results written once), so a second delivery does no harm.
- visibility_timeout an hour: longer than any countdown we use, so Redis does not hand out a delayed
  poll twice. A killed worker's jobs are re-driven much sooner by the sweeper (lease expiry).
- no result backend, no chords: completion is counted in Redis by the pipeline.
- our Redis transport (workers/broker.py) keeps a worker alive through a Redis restart.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Queue

from kontext_batch.settings import Settings
from workers.queues import ALL_QUEUES, POLL_QUEUE, POLL_TASK, SUBMIT_QUEUE, SUBMIT_TASK, key_queues

__all__ = ["CelerySchedule", "app", "configure"]

app = Celery("kontext_batch", include=["tasks.submit", "tasks.poll"])


def configure(settings: Settings) -> Celery:
    """Point the app at the settings' Redis and apply the worker defaults above."""
    held_queues = [q for k in settings.held_keys for q in key_queues(k.fingerprint)]
    app.conf.update(
        broker_url=settings.effective_redis_url,
        broker_transport="workers.broker:Transport",
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": 3600, "socket_keepalive": True},
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_pool="threads",
        worker_concurrency=32,
        worker_hijack_root_logger=False,
        # Task events for Flower (and `celery events`): started/succeeded from workers, sent from senders.
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_queues=[Queue(q) for q in (*ALL_QUEUES, *held_queues)],
        task_default_queue=SUBMIT_QUEUE,
        task_routes={SUBMIT_TASK: {"queue": SUBMIT_QUEUE}, POLL_TASK: {"queue": POLL_QUEUE}},
        enable_utc=True,
    )
    return app


class CelerySchedule:
    """The pipeline's :class:`~kontext_batch.runtime.Scheduler`: task messages carry only a job ref
    and its fencing token, never a key or a row's data; they go to the queues of the job's key."""

    def __init__(self, celery: Celery) -> None:
        self.celery = celery

    def _send(self, name: str, queue: str, ref: str, token: int, countdown_s: float) -> None:
        opts: dict[str, Any] = {"queue": queue}
        if countdown_s > 0:
            opts["countdown"] = round(countdown_s, 3)
        self.celery.send_task(name, args=[ref, token], **opts)

    def submit(self, ref: str, token: int, fp: str, *, countdown_s: float = 0.0) -> None:
        self._send(SUBMIT_TASK, key_queues(fp)[0], ref, token, countdown_s)

    def poll(self, ref: str, token: int, fp: str, *, countdown_s: float = 0.0) -> None:
        self._send(POLL_TASK, key_queues(fp)[1], ref, token, countdown_s)
