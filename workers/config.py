"""The Celery app's configuration, applied from :class:`Settings`.

Why these settings:
- threads pool: every task waits on HTTP; one process holds dozens of jobs in flight.
- acks_late (and reject_on_worker_lost, which only a prefork pool would use): a message is
  acknowledged once its step ran; tasks are idempotent (fencing tokens, results written once), so a
  second delivery does no harm.
- no ack emulation in Redis: kombu would write every delivered message into an ``unacked`` hash
  and index (and delete it again on ack, two more round trips a step) so that, an hour after a
  worker died with it, the message could be delivered again, stale by then (fencing tokens). A
  killed worker's jobs are re-driven within seconds by the sweeper (its heartbeat stops); delayed
  steps wait in our Redis delay queue, not as countdown messages. A warm shutdown still hands back
  what it took and did not start: kombu restores a channel's unacked messages when it closes.
- no result backend, no chords: completion is counted in Redis by the pipeline.
- our Redis transport (workers/broker.py) keeps a worker alive through a Redis restart, and
  broker_connection_max_retries=None keeps it retrying through an outage of any length, on the
  schedule in the transport options (workers/reconnect.py: a 2 s restart costs ~2.5 s, not 6 s).
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from kontext_batch.coord.address import parse_sentinel
from kontext_batch.coord.connection import tls_options
from kontext_batch.settings import Settings
from kontext_batch.workers.queues import ALL_QUEUES, POLL_QUEUE, POLL_TASK, SUBMIT_QUEUE, SUBMIT_TASK, key_queues
from kontext_batch.workers.reconnect import RECONNECT_SCHEDULE

__all__ = ["configure"]


def configure(app: Celery, settings: Settings) -> Celery:
    """Point ``app`` at the settings' Redis and apply the worker defaults above; returns it."""
    held_queues = [q for k in settings.held_keys for q in key_queues(k.fingerprint)]
    url, transport = settings.effective_redis_url, "kontext_batch.workers.broker:Transport"
    options: dict[str, object] = {
        "ack_emulation": False,
        "socket_keepalive": True,
        "socket_connect_timeout": 5,
        **RECONNECT_SCHEDULE,
    }
    group = parse_sentinel(url)
    if group is not None:
        # kombu's Sentinel transport (with our repairs) asks the sentinels for the master, as the
        # state connection does (coord/address.py), and follows it through a failover.
        url, transport = group.broker_url(), "kontext_batch.workers.broker:SentinelTransport"
        options["master_name"] = group.master
        if group.tls:
            options["sentinel_kwargs"] = {"ssl": True, **tls_options(settings)}
    app.conf.update(
        broker_url=url,
        broker_transport=transport,
        broker_connection_retry_on_startup=True,
        # A worker outlives a Redis outage of any length (Celery's default gives up after 100 tries).
        broker_connection_max_retries=None,
        broker_transport_options=options,
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
