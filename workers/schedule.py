"""How the steps reach Celery: task messages to each key's queues, delayed ones through Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final

from celery import Celery

from kontext_batch.coord.connection import tls_options
from kontext_batch.coord.delays import DelayQueue, DueMessage
from kontext_batch.coord.keys import Keys
from kontext_batch.runtime import Runtime, connect_redis
from kontext_batch.settings import Settings
from kontext_batch.workers.config import configure
from kontext_batch.workers.queues import POLL_TASK, SUBMIT_TASK, key_queues

__all__ = ["CelerySchedule", "celery_runtime"]


class _Sent:
    """What a publish returns instead of Celery's AsyncResult, which nobody reads (steps report
    through Redis) and whose making loads the result backend: an entry-point scan of every installed
    package, ~10 ms of the CLI's first publish."""

    __slots__ = ("id", "ignored")

    def __init__(self, task_id: str) -> None:
        self.id = task_id
        self.ignored = True


_NO_RESULT: Final = {"ignore_result": True, "result_cls": _Sent, "add_to_parent": False}


class CelerySchedule:
    """The pipeline's :class:`~kontext_batch.runtime.Scheduler`: task messages carry only a job ref
    and its fencing token, never a key or a row's data; they go to the queues of the job's key.

    A message with a countdown waits in the :class:`~kontext_batch.coord.delays.DelayQueue` (in Redis,
    not in a worker's memory) until a worker's pump sends it; see :meth:`pump`.
    """

    def __init__(self, celery: Celery, delays: DelayQueue | None = None) -> None:
        self.celery = celery
        self.delays = delays

    def send(self, msg: DueMessage) -> None:
        submit_q, poll_q = key_queues(msg.fp)
        name, queue = (SUBMIT_TASK, submit_q) if msg.kind == "submit" else (POLL_TASK, poll_q)
        self.celery.send_task(name, args=[msg.ref, msg.token], queue=queue, **_NO_RESULT)

    def _schedule(self, msg: DueMessage, countdown_s: float) -> None:
        if countdown_s > 0 and self.delays is not None:
            self.delays.push(msg, countdown_s)
        elif countdown_s > 0:
            submit_q, poll_q = key_queues(msg.fp)
            name, queue = (SUBMIT_TASK, submit_q) if msg.kind == "submit" else (POLL_TASK, poll_q)
            self.celery.send_task(
                name, args=[msg.ref, msg.token], queue=queue, countdown=round(countdown_s, 3), **_NO_RESULT
            )
        else:
            self.send(msg)

    def submit(self, ref: str, token: int, fp: str, *, countdown_s: float = 0.0) -> None:
        self._schedule(DueMessage("submit", ref, token, fp), countdown_s)

    def poll(self, ref: str, token: int, fp: str, *, countdown_s: float = 0.0) -> None:
        self._schedule(DueMessage("poll", ref, token, fp), countdown_s)

    def pump(
        self,
        stop: threading.Event,
        longest_s: float = 0.5,
        batch: int = 16,
        on_round: Callable[[], None] | None = None,
    ) -> None:
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
            if on_round is not None:
                on_round()
            delays.wake_at = 0.0  # looking now: any push may be due before the next look
            delays.pushed.clear()
            due, next_in = delays.take_due(batch)
            for msg in due:
                self.send(msg)
            if not due:
                wait = longest_s if next_in is None else min(longest_s, next_in)
                delays.wake_at = time.time() + wait
                delays.pushed.wait(wait)


def celery_runtime(app: Celery, settings: Settings) -> Runtime:
    """A runtime whose steps go to Celery (delayed ones through the Redis delay queue)."""
    r = connect_redis(settings.effective_redis_url, tls=tls_options(settings))
    schedule = CelerySchedule(configure(app, settings), DelayQueue(r, Keys()))
    return Runtime.create(settings, schedule, redis_client=r)
