"""Rows waiting, said the moment they are queued: one pub/sub message on ``{ns}:rows-waiting:{db}``.

A new run's first wave of submits used to be sent by the CLI itself, which then had to load Celery
and open a broker connection before its first publish: ~100 ms of ``run``'s start on a 2-core
machine, most of what stood between the command's start and the first submit (issue 22). Every
worker already fills free slots (:func:`~kontext_batch.steps.dispatch.dispatch`), from its sweeper
once a second; with a nudge it does so the moment the rows wait, with Celery loaded and connected.

The message is a hint only, as a run's end is (:mod:`kontext_batch.coord.ends`): dispatching is
idempotent (one Lua script grants each free slot once), so every worker that hears it may act, and
one that misses it (a Redis restart, not subscribed yet) changes nothing but the delay, because its
sweeper dispatches within a second anyway. The sender learns how many processes heard it; with
none (no worker running, or workers of a version that does not listen, in a rolling update) it
dispatches the rows itself, as before.
"""

from __future__ import annotations

import json
import logging

import redis
from redis.exceptions import RedisError

from kontext_batch.coord.keys import Keys
from kontext_batch.coord.subscription import Subscription

__all__ = ["NudgeWatch", "nudge"]

log = logging.getLogger("kontext_batch.nudges")


def nudge(r: redis.Redis, keys: Keys, pool_id: str, endpoint: str) -> int:
    """Tell the workers that rows of ``pool_id`` wait for ``endpoint``'s slots; how many heard it.

    0 when Redis refused the message (a user without pub/sub rights, a connection lost): the caller
    then dispatches itself, so a nudge never decides whether rows are sent, only how soon.
    """
    try:
        return int(r.publish(keys.rows_waiting(_db(r)), json.dumps([pool_id, endpoint])))
    except RedisError as exc:
        log.debug("rows of %s/%s: not announced (%s)", pool_id, endpoint, exc)
        return 0


class NudgeWatch:
    """A worker's subscription to the nudges. :meth:`wait` returns the (pool id, endpoint) pairs
    announced within a timeout. Without a subscription (refused, or the connection broke) it sleeps
    the timeout and subscribes again at the next wait: the sweeper covers what it missed."""

    def __init__(self, r: redis.Redis, keys: Keys) -> None:
        self._sub = Subscription(r, keys.rows_waiting(_db(r)))

    def wait(self, timeout_s: float) -> set[tuple[str, str]]:
        """The pairs announced until the first message arrives (and any queued behind it), or the timeout."""
        return {pair for data in self._sub.messages(timeout_s) if (pair := _pair(data)) is not None}

    def close(self) -> None:
        self._sub.close()


def _db(r: redis.Redis) -> int:
    return int(r.connection_pool.connection_kwargs.get("db") or 0)


def _pair(data: object) -> tuple[str, str] | None:
    """A message's (pool id, endpoint), or None for anything else on the channel (never trusted)."""
    try:
        pool_id, endpoint = json.loads(data) if isinstance(data, (bytes, str)) else (None, None)
    except (ValueError, TypeError):
        return None
    if isinstance(pool_id, str) and isinstance(endpoint, str) and pool_id and endpoint:
        return pool_id, endpoint
    return None
