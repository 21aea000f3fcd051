"""The Celery app: ``celery -A kontext_batch.workers.app ...`` and ``kontext-batch worker`` load it.

It is configured at import from the environment (:meth:`Settings.from_env`: ``KONTEXT_REDIS_URL``
and the rest), so Celery's own tools (``inspect``, ``events``, Flower) reach the project's broker
with the project's settings alone; ``kontext-batch worker`` configures it again from its options.
The settings and why each is chosen are in :mod:`kontext_batch.workers.config`.

The tasks are named by string (``include``) and do not import this module, so the import graph stays
acyclic: the tasks reach their runtime through :mod:`kontext_batch.workers.process`, which this
module binds to the app.
"""

from __future__ import annotations

from celery import Celery

from kontext_batch.runtime import Runtime
from kontext_batch.settings import Settings
from kontext_batch.workers import config, process, reconnect, schedule

__all__ = ["app", "celery_runtime", "configure"]

# amqp: its connections reconnect on the schedule in the transport options (workers/reconnect.py).
app = Celery("kontext_batch", amqp=reconnect.AMQP, include=["kontext_batch.tasks.submit", "kontext_batch.tasks.poll"])
config.configure(app, Settings.from_env())
process.bind_app(app)


def configure(settings: Settings) -> Celery:
    """Point the app at the settings' Redis and apply the worker defaults."""
    return config.configure(app, settings)


def celery_runtime(settings: Settings) -> Runtime:
    """A runtime whose steps go to this app's queues (delayed ones through the Redis delay queue)."""
    return schedule.celery_runtime(app, settings)
