"""The Celery app. Configured explicitly from :class:`Settings` (never from the environment at import).

Why these settings:
- threads pool: every task waits on HTTP; one process holds dozens of jobs in flight.
- acks_late + reject_on_worker_lost: a job whose worker dies is delivered again; tasks are idempotent
  (fencing tokens, results written once), so a second delivery does no harm.
- visibility_timeout an hour: a redelivered message is stale by then (fencing tokens). Delayed steps
  wait in our Redis delay queue, not as countdown messages; a killed worker's jobs are re-driven
  within seconds by the sweeper (its heartbeat stops).
- no result backend, no chords: completion is counted in Redis by the pipeline.
- our Redis transport (workers/broker.py) keeps a worker alive through a Redis restart, and
  broker_connection_max_retries=None keeps it retrying through an outage of any length.
"""

from __future__ import annotations

import threading
import time

from celery import Celery
from kombu import Queue

from kontext_batch.delays import DelayQueue, DueMessage
from kontext_batch.keys import Keys
from kontext_batch.redisconn import tls_options
from kontext_batch.runtime import Runtime, connect_redis
from kontext_batch.settings import Settings
from workers.queues import ALL_QUEUES, POLL_QUEUE, POLL_TASK, SUBMIT_QUEUE, SUBMIT_TASK, key_queues

__all__ = ["CelerySchedule", "app", "celery_runtime", "configure"]

app = Celery("kontext_batch", include=["tasks.submit", "tasks.poll"])


def configure(settings: Settings) -> Celery:
    """Point the app at the settings' Redis and apply the worker defaults above."""
    held_queues = [q for k in settings.held_keys for q in key_queues(k.fingerprint)]
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
        # Task events for Flower (and `celery events`): started/succeeded from workers, sent from
        # senders. Off unless asked for (KONTEXT_TASK_EVENTS): they cost about 2 ms of CPU per job.
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
        task_queues=[Queue(q) for q in (*ALL_QUEUES, *held_queues)],
        task_default_queue=SUBMIT_QUEUE,
        task_routes={SUBMIT_TASK: {"queue": SUBMIT_QUEUE}, POLL_TASK: {"queue": POLL_QUEUE}},
        enable_utc=True,
    )
    return app


class CelerySchedule:
    """The pipeline's :class:`~kontext_batch.runtime.Scheduler`: task messages carry only a job ref
    and its fencing token, never a key or a row's data; they go to the queues of the job's key.

    A message with a countdown waits in the :class:`~kontext_batch.delays.DelayQueue` (in Redis,
    not in a worker's memory) until a worker's pump sends it; see :meth:`pump`.
    """

    def __init__(self, celery: Celery, delays: DelayQueue | None = None) -> None:
        self.celery = celery
        self.delays = delays

    def send(self, msg: DueMessage) -> None:
        submit_q, poll_q = key_queues(msg.fp)
        name, queue = (SUBMIT_TASK, submit_q) if msg.kind == "submit" else (POLL_TASK, poll_q)
        self.celery.send_task(name, args=[msg.ref, msg.token], queue=queue)

    def _schedule(self, msg: DueMessage, countdown_s: float) -> None:
        if countdown_s > 0 and self.delays is not None:
            self.delays.push(msg, countdown_s)
        elif countdown_s > 0:
            submit_q, poll_q = key_queues(msg.fp)
            name, queue = (SUBMIT_TASK, submit_q) if msg.kind == "submit" else (POLL_TASK, poll_q)
            self.celery.send_task(name, args=[msg.ref, msg.token], queue=queue, countdown=round(countdown_s, 3))
        else:
            self.send(msg)

    def submit(self, ref: str, token: int, fp: str, *, countdown_s: float = 0.0) -> None:
        self._schedule(DueMessage("submit", ref, token, fp), countdown_s)

    def poll(self, ref: str, token: int, fp: str, *, countdown_s: float = 0.0) -> None:
        self._schedule(DueMessage("poll", ref, token, fp), countdown_s)

    def pump(self, stop: threading.Event, longest_s: float = 0.5, batch: int = 16) -> None:
        """Send delayed messages as they fall due, until ``stop`` is set (a worker's pump thread).

        It takes at most ``batch`` due messages at a time: every pump wakes when the queue's next
        message falls due, and a wave of 72 polls due together is then sent by all of them, a few
        each, instead of by whichever took first, one publish (~1 ms) after another (the last poll
        of such a wave went out ~140 ms late).
        """
        if self.delays is None:
            return
        delays = self.delays
        while not stop.is_set():
            delays.wake_at = 0.0  # looking now: any push may be due before the next look
            delays.pushed.clear()
            due, next_in = delays.take_due(batch)
            for msg in due:
                self.send(msg)
            if not due:
                wait = longest_s if next_in is None else min(longest_s, next_in)
                delays.wake_at = time.time() + wait
                delays.pushed.wait(wait)


def celery_runtime(settings: Settings) -> Runtime:
    """A runtime whose steps go to Celery (delayed ones through the Redis delay queue)."""
    r = connect_redis(settings.effective_redis_url, tls=tls_options(settings))
    schedule = CelerySchedule(configure(settings), DelayQueue(r, Keys()))
    return Runtime.create(settings, schedule, redis_client=r)
