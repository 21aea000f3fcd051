"""Delayed task messages, kept in Redis until due, then sent by whichever worker pumps them first.

A poll due in 0.8 s could be a Celery countdown message instead, but a countdown message waits in
the memory of the worker that reserved it: when that worker is killed, the message is gone and its
job stalls until the sweeper notices its message overdue (a grace past when it was due). Kept here,
a due message is taken (atomically, by one pump) and sent the moment it is due, so a killed worker
loses only the steps it was running, which the sweeper re-drives within seconds. A pump sleeps
until the next message is due (at most half a second, since other processes push too) or until its
own process pushes one.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Final

import redis

from kontext_batch.coord.keys import Keys
from kontext_batch.coord.redisio import decode, lua

__all__ = ["DelayQueue", "DueMessage"]

_TAKE_DUE: Final = lua("take_due.lua")


@dataclass(frozen=True)
class DueMessage:
    """A job step to send now: ``kind`` is ``submit`` or ``poll``."""

    kind: str
    ref: str
    token: int
    fp: str


class DelayQueue:
    """One sorted set of delayed messages (score = due time in ms). Thread-safe."""

    def __init__(self, r: redis.Redis, keys: Keys) -> None:
        self.r = r
        self.key = keys.delayed
        self._take = r.register_script(_TAKE_DUE)
        #: Set when this process pushes a message due before its pump means to wake (``wake_at``).
        self.pushed = threading.Event()
        #: When this process's pump will look again (epoch s); 0 while it is looking: any push wakes it.
        #: Most pushes fall due after the pump's next look; waking it for each cost a Redis call per push.
        self.wake_at = 0.0

    def push(self, msg: DueMessage, delay_s: float) -> None:
        member = json.dumps([msg.kind, msg.ref, msg.token, msg.fp], separators=(",", ":"))
        due = time.time() + delay_s
        self.r.zadd(self.key, {member: int(due * 1000)})
        if due < self.wake_at or self.wake_at == 0.0:
            self.pushed.set()

    def take_due(self, limit: int = 500) -> tuple[list[DueMessage], float | None]:
        """Every message due now (each taken by exactly one caller), and the seconds until the next
        one is due (None when there is none)."""
        now = time.time()
        *raw, nxt = self._take(keys=[self.key], args=[int(now * 1000), limit])
        out = []
        for item in raw:
            kind, ref, token, fp = json.loads(decode(item))
            out.append(DueMessage(kind, ref, int(token), fp))
        next_ms = float(nxt)
        return out, (None if next_ms < 0 else max(0.0, next_ms / 1000 - now))

    def __len__(self) -> int:
        return int(self.r.zcard(self.key))
