"""The runtime of a process that only sends steps (the CLI), with Celery loaded on its first send.

``run`` hands a new run's first wave to the workers with a nudge (:mod:`kontext_batch.coord.nudges`)
and sends nothing itself while a worker listens; loading Celery and opening a broker connection
first cost ~100 ms of its start on a 2-core machine. Commands that do send (``run`` with no worker
listening, ``retry``, ``cancel``'s re-drive) load it then: the schedule is made on first use.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import redis

from kontext_batch.coord.connection import tls_options
from kontext_batch.runtime import Runtime, Scheduler, connect_redis
from kontext_batch.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["sender_runtime"]

_app: Celery | None = None
_app_lock = threading.Lock()


class _OnFirstSend:
    """A :class:`~kontext_batch.runtime.Scheduler` that makes the Celery one when a step is first sent."""

    def __init__(self, settings: Settings, r: redis.Redis) -> None:
        self._settings, self._redis = settings, r
        self._inner: Scheduler | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._inner is not None

    def _schedule(self) -> Scheduler:
        with self._lock:
            if self._inner is None:
                self._inner = _celery_schedule(self._settings, self._redis)
            return self._inner

    def submit(self, ref: str, token: int, fp: str, *, countdown_s: float = 0.0) -> None:
        self._schedule().submit(ref, token, fp, countdown_s=countdown_s)

    def poll(self, ref: str, token: int, fp: str, *, countdown_s: float = 0.0) -> None:
        self._schedule().poll(ref, token, fp, countdown_s=countdown_s)


def _celery_schedule(settings: Settings, r: redis.Redis) -> Scheduler:
    """A Celery app of the process's own, configured as the workers' is, and its schedule. Tasks go
    by name, so it needs neither the tasks nor :mod:`kontext_batch.workers.app`, whose import loads
    the worker's modules (the sweeper, the metrics, the API clients)."""
    from celery import Celery  # noqa: PLC0415 - the point of this module

    from kontext_batch.coord.delays import DelayQueue  # noqa: PLC0415
    from kontext_batch.coord.keys import Keys  # noqa: PLC0415
    from kontext_batch.workers.config import configure  # noqa: PLC0415
    from kontext_batch.workers.schedule import CelerySchedule  # noqa: PLC0415

    global _app  # noqa: PLW0603 - one app per process, as the workers have
    with _app_lock:
        if _app is None:
            _app = Celery("kontext_batch")
        app = configure(_app, settings)
    return CelerySchedule(app, DelayQueue(r, Keys()))


def sender_runtime(settings: Settings) -> Runtime:
    """The CLI's runtime: its Redis client now, its Celery schedule at its first send."""
    r = connect_redis(settings.effective_redis_url, tls=tls_options(settings))
    return Runtime.create(settings, _OnFirstSend(settings, r), redis_client=r)
