"""A run's end, said the moment it is recorded: one pub/sub message on ``{ns}:run:{run}:ended``.

``run --wait`` and ``follow`` look at a run every half second; waiting for that look after the run
ended was most of the time from the last row stored to the command's exit (issue 22). The process
that ends a run (:func:`~kontext_batch.steps.complete.finalize`, the lost-state path, ``cancel``)
announces it after the run is marked ended; a follower subscribed before its first look wakes at
once, looks, and sees the end. Pub/sub, not a list: every follower of the run wakes, and nothing is
left in Redis. The message is a hint only: a follower that misses it (not subscribed yet, a Redis
restart in between) still sees the end at its next periodic look, which is why it keeps looking.
"""

from __future__ import annotations

import logging
from types import TracebackType

import redis
from redis.exceptions import RedisError

from kontext_batch.coord.keys import Keys
from kontext_batch.coord.subscription import Subscription

__all__ = ["EndWatch", "announce_end"]

log = logging.getLogger("kontext_batch.ends")


def announce_end(r: redis.Redis, keys: Keys, run_id: str) -> None:
    """Wake the run's followers. Never raises: the run is already marked ended, and a follower that
    is not woken sees it at its next look."""
    try:
        r.publish(keys.run_ended(run_id), b"1")
    except RedisError as exc:
        log.debug("run %s: its end not announced (%s); followers see it at their next look", run_id, exc)


class EndWatch:
    """A follower's subscription to one run's end. :meth:`wait` stands in for the sleep between two
    looks: it returns early when the end is announced. Without a subscription (Redis refused it, or
    the connection broke: a restart) it sleeps the whole interval, as following did before, and
    subscribes again at the next wait (an end announced in between is seen by the next look)."""

    def __init__(self, r: redis.Redis, keys: Keys, run_id: str) -> None:
        self._sub = Subscription(r, keys.run_ended(run_id))

    def wait(self, timeout_s: float) -> bool:
        """Up to ``timeout_s``; True when the run's end was announced meanwhile."""
        return bool(self._sub.messages(timeout_s))

    def close(self) -> None:
        self._sub.close()

    def __enter__(self) -> EndWatch:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
