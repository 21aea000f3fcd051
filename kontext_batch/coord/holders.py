"""Which worker processes are alive, and which API keys each holds: heartbeats in Redis.

Every worker process beats about once a second: it renews a short-lived key of its own (5 s TTL)
and its entry in the holder set of each key it holds. A job a process is working on stays with it
while it beats, however slow the API is; when it stops beating, the sweeper re-drives those jobs
within seconds (:mod:`~kontext_batch.coord.jobs`). Only keys some live process holds take waiting
rows. The keys themselves never reach Redis: only their fingerprints.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

import redis

from kontext_batch.coord.keys import Keys
from kontext_batch.coord.protocol import PROTOCOL, VERSION, Speaker, speaker_of
from kontext_batch.coord.redisio import decode

__all__ = ["BEAT_S", "TTL_S", "Holders", "KeyCaps", "new_process_id"]

BEAT_S: Final = 1.0
TTL_S: Final = 5.0


def new_process_id() -> str:
    """Unique per process start: host, pid and a random tag (pids are reused)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class KeyCaps:
    """A held key's caps, as its holder announces them: over all endpoints, and per endpoint."""

    total: int
    per_endpoint: Mapping[str, int]

    def cap_for(self, endpoint: str) -> int:
        return min(self.per_endpoint.get(endpoint, self.total), self.total)


class Holders:
    """Heartbeats and the live holders of each key fingerprint. Thread-safe."""

    def __init__(self, r: redis.Redis, keys: Keys, *, cache_s: float = 0.5) -> None:
        self.r = r
        self.keys = keys
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, KeyCaps | None]] = {}
        self._lock = threading.Lock()

    def beat(self, proc: str, held: Mapping[str, KeyCaps]) -> None:
        """Say that ``proc`` is alive and holds these keys (fingerprint -> caps), for the next TTL_S,
        and which version and protocol it speaks (:mod:`~kontext_batch.coord.protocol`)."""
        now_ms = int(time.time() * 1000)
        exp = now_ms + int(TTL_S * 1000)
        doc = {fp: {"total": c.total, "caps": dict(c.per_endpoint)} for fp, c in held.items()}
        beat = {"version": VERSION, "protocol": PROTOCOL, "keys": doc}
        pipe = self.r.pipeline(transaction=False)
        pipe.set(self.keys.proc(proc), json.dumps(beat), px=int(TTL_S * 1000))
        for fp in held:
            pipe.zadd(self.keys.holders(fp), {proc: exp})
            pipe.zremrangebyscore(self.keys.holders(fp), "-inf", now_ms)
            pipe.hset(self.keys.key_caps, fp, json.dumps(doc[fp]))
        pipe.execute()

    def leave(self, proc: str, fps: Iterable[str]) -> None:
        """A clean stop: the jobs the process was working on can be re-driven at once."""
        pipe = self.r.pipeline(transaction=False)
        pipe.delete(self.keys.proc(proc))
        for fp in fps:
            pipe.zrem(self.keys.holders(fp), proc)
        pipe.execute()

    def speakers(self, fps: Iterable[str]) -> list[Speaker]:
        """The live processes holding any of ``fps``, with the version and protocol each speaks."""
        now_ms = int(time.time() * 1000)
        pipe = self.r.pipeline(transaction=False)
        for fp in dict.fromkeys(fps):
            pipe.zrangebyscore(self.keys.holders(fp), now_ms, "+inf")
        procs = sorted({decode(p) for found in pipe.execute() for p in found})
        if not procs:
            return []
        docs = self.r.mget([self.keys.proc(p) for p in procs])
        # A holder whose heartbeat key is gone stopped within the last TTL_S: not live.
        return [speaker_of(p, json.loads(decode(d))) for p, d in zip(procs, docs, strict=True) if d]

    def release(self, proc: str, fps: Iterable[str]) -> None:
        """``proc`` lets go of its keys but stays alive: its jobs in hand stay with it, and no new
        row waits for it (a worker stepping aside for a newer protocol)."""
        pipe = self.r.pipeline(transaction=False)
        for fp in fps:
            pipe.zrem(self.keys.holders(fp), proc)
        pipe.execute()
        with self._lock:
            self._cache.clear()

    def live_keys(self, fps: Iterable[str]) -> dict[str, KeyCaps]:
        """Of ``fps``, those some live process holds now, with the caps its holder announced.

        Answers are cached for ``cache_s``: dispatch asks on every freed slot.
        """
        now = time.monotonic()
        wanted = list(dict.fromkeys(fps))
        with self._lock:
            stale = [fp for fp in wanted if now - self._cache.get(fp, (-1e9, None))[0] >= self.cache_s]
        if stale:
            now_ms = int(time.time() * 1000)
            pipe = self.r.pipeline(transaction=False)
            for fp in stale:
                pipe.zcount(self.keys.holders(fp), now_ms, "+inf")
            pipe.hmget(self.keys.key_caps, stale)
            *counts, caps_raw = pipe.execute()
            fresh: dict[str, KeyCaps | None] = {}
            for fp, n, raw in zip(stale, counts, caps_raw, strict=True):
                doc = json.loads(decode(raw)) if int(n) and raw else None
                fresh[fp] = KeyCaps(int(doc["total"]), {k: int(v) for k, v in doc["caps"].items()}) if doc else None
            with self._lock:
                self._cache.update({fp: (now, caps) for fp, caps in fresh.items()})
        with self._lock:
            return {fp: caps for fp in wanted if (caps := self._cache[fp][1]) is not None}
