"""Delayed task messages, kept in Redis until due, then sent by whichever worker pumps them first.

A poll due in 0.8 s could be a Celery countdown message instead, but a countdown message waits in
the memory of the worker that reserved it: when that worker is killed, the message is gone until
the broker's visibility timeout (an hour) and its job stalls until the sweeper notices. Kept here,
a due message is taken (atomically, by one pump) and sent the moment it is due, so a killed worker
loses only the steps it was running, which the sweeper re-drives within seconds.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Final

import redis

from kontext_batch.keys import Keys
from kontext_batch.redisio import decode

__all__ = ["DelayQueue", "DueMessage"]

# KEYS: the delay zset. ARGV: now ms, limit. Takes every due entry (once: ZREM in the same script).
_TAKE_DUE: Final = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return due
"""


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

    def push(self, msg: DueMessage, delay_s: float) -> None:
        member = json.dumps([msg.kind, msg.ref, msg.token, msg.fp], separators=(",", ":"))
        self.r.zadd(self.key, {member: int((time.time() + delay_s) * 1000)})

    def take_due(self, limit: int = 500) -> list[DueMessage]:
        raw = self._take(keys=[self.key], args=[int(time.time() * 1000), limit])
        out = []
        for item in raw:
            kind, ref, token, fp = json.loads(decode(item))
            out.append(DueMessage(kind, ref, int(token), fp))
        return out

    def next_due_in_s(self) -> float | None:
        """Seconds until the earliest message is due (0 if one is due), None when there is none."""
        first = self.r.zrange(self.key, 0, 0, withscores=True)
        if not first:
            return None
        return max(0.0, float(first[0][1]) / 1000 - time.time())

    def __len__(self) -> int:
        return int(self.r.zcard(self.key))
