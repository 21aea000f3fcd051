"""The Celery app. Configured explicitly from :class:`Settings` (never from the environment at import).

Why these settings:
- threads pool: every task waits on HTTP; one process holds dozens of jobs in flight.
- acks_late + reject_on_worker_lost: a job whose worker dies is delivered again; tasks are idempotent
  (fencing tokens, results written once), so a second delivery does no harm.
- visibility_timeout an hour: longer than any countdown we use, so Redis does not hand out a delayed
  poll twice. A killed worker's jobs are re-driven much sooner by the sweeper (lease expiry).
- no result backend, no chords: completion is counted in Redis by the pipeline.
- our Redis transport (workers/broker.py) keeps a worker alive through a Redis restart, and
  broker_connection_max_retries=None keeps it retrying through an outage of any length.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Queue

from kontext_batch.redisconn import tls_options
from kontext_batch.settings import Settings
from workers.queues import ALL_QUEUES, POLL_QUEUE, POLL_TASK, SUBMIT_QUEUE, SUBMIT_TASK

__all__ = ["CelerySchedule", "app", "configure"]

app = Celery("kontext_batch", include=["tasks.submit", "tasks.poll"])


def configure(settings: Settings) -> Celery:
    """Point the app at the settings' Redis and apply the worker defaults above."""
    app.conf.update(
        broker_url=settings.effective_redis_url,
        broker_transport="workers.broker:Transport",
        broker_connection_retry_on_startup=True,
        # A worker outlives a Redis outage of any length (Celery's default gives up after 100 tries).
        broker_connection_max_retries=None,
        broker_transport_options={"visibility_timeout": 3600, "socket_keepalive": True, "socket_connect_timeout": 5},
        # Same TLS options as the state connection; without them our transport would speak plain
        # text to a rediss:// URL (kombu only adds TLS for the scheme when it picks the transport).
        broker_use_ssl=tls_options(settings) or False,
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
        worker_send_task_events=False,
        task_queues=[Queue(q) for q in ALL_QUEUES],
        task_default_queue=SUBMIT_QUEUE,
        task_routes={SUBMIT_TASK: {"queue": SUBMIT_QUEUE}, POLL_TASK: {"queue": POLL_QUEUE}},
        enable_utc=True,
    )
    return app


class CelerySchedule:
    """The pipeline's :class:`~kontext_batch.runtime.Scheduler`: task messages carry only a job ref
    and its fencing token, never a key or a row's data."""

    def __init__(self, celery: Celery) -> None:
        self.celery = celery

    def _send(self, name: str, queue: str, ref: str, token: int, countdown_s: float) -> None:
        opts: dict[str, Any] = {"queue": queue}
        if countdown_s > 0:
            opts["countdown"] = round(countdown_s, 3)
        self.celery.send_task(name, args=[ref, token], **opts)

    def submit(self, ref: str, token: int, *, countdown_s: float = 0.0) -> None:
        self._send(SUBMIT_TASK, SUBMIT_QUEUE, ref, token, countdown_s)

    def poll(self, ref: str, token: int, *, countdown_s: float = 0.0) -> None:
        self._send(POLL_TASK, POLL_QUEUE, ref, token, countdown_s)
