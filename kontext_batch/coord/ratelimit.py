"""A global submits-per-second limit shared by every worker: a one-second window counted in Redis.

Optional (``KONTEXT_SUBMITS_PER_S``, 0 = off). The active-task cap is what the API enforces; this
smooths bursts for accounts or resellers that also limit request rates.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Final

import redis

from kontext_batch.coord.redisio import lua

__all__ = ["SubmitRateLimiter"]

_TAKE: Final = lua("submit_rate.lua")


class SubmitRateLimiter:
    """``acquire()`` returns once a submit may go out: at most ``per_s`` per wall-clock second, rounded
    down, and never fewer than one."""

    def __init__(
        self, r: redis.Redis, key_prefix: str, per_s: float, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.per_s = per_s
        self.prefix = key_prefix
        self.sleep = sleep
        self._take = r.register_script(_TAKE)

    def acquire(self, *, now: Callable[[], float] = time.time) -> float:
        """Block until allowed; returns the seconds waited."""
        if self.per_s <= 0:
            return 0.0
        limit = max(1, math.floor(self.per_s))
        waited = 0.0
        while True:
            t = now()
            window = int(t)
            if int(self._take(keys=[f"{self.prefix}:{window}"])) <= limit:
                return waited
            pause = (window + 1) - t + 0.001
            self.sleep(pause)
            waited += pause
