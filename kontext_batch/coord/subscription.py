"""One pub/sub channel listened to for hints (:mod:`~kontext_batch.coord.ends`,
:mod:`~kontext_batch.coord.nudges`): a subscription Redis may refuse (an ACL without channel
rights) or drop (a restart), and that is then made again at the next wait, never raised.

A hint only ever shortens a wait that the listener would end on its own (a periodic look, the
sweeper), so a missing subscription costs time, not correctness.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import redis
from redis.exceptions import RedisError

__all__ = ["Subscription"]

log = logging.getLogger("kontext_batch.hints")


class Subscription:
    def __init__(self, r: redis.Redis, channel: str) -> None:
        self._r, self.channel = r, channel
        self._ps: Any = None
        self._subscribe()

    def _subscribe(self) -> None:
        try:
            ps = self._r.pubsub(ignore_subscribe_messages=True)
            ps.subscribe(self.channel)
            self._ps = ps
        except (RedisError, OSError) as exc:
            log.debug("not subscribed to %s (%s): waiting the whole interval", self.channel, exc)

    def messages(self, timeout_s: float) -> list[object]:
        """The data of the messages that arrive until the first one (with any queued behind it),
        or ``[]`` once ``timeout_s`` has passed; without a subscription, after sleeping it out."""
        deadline = time.monotonic() + timeout_s
        if self._ps is None:
            self._subscribe()
        got: list[object] = []
        while self._ps is not None and not got:
            left = deadline - time.monotonic()
            if left <= 0:
                return got
            try:
                # None also for the subscription's own confirmation: wait on until the deadline.
                msg = self._ps.get_message(timeout=left)
                while msg is not None:
                    got.append(msg.get("data"))
                    msg = self._ps.get_message(timeout=0)
            except (RedisError, OSError) as exc:
                log.debug("subscription to %s lost (%s): waiting the whole interval", self.channel, exc)
                self.close()
        if not got:
            time.sleep(max(0.0, deadline - time.monotonic()))
        return got

    def close(self) -> None:
        ps, self._ps = self._ps, None
        if ps is not None:
            with contextlib.suppress(RedisError, OSError):
                ps.close()
