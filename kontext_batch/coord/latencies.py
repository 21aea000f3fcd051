"""The task latencies the poll planner learnt, shared by every process and kept across runs.

Each process learns when to poll from the tasks it sees end (:mod:`kontext_batch.steps.timing`).
Alone, a fresh worker knows nothing: its first wave is polled at a guess and noticed late (293 ms
of notice lag in wave 0 against 8 ms in the steady state, issue 22). Kept here, a worker started
now, a second worker and the next night's run begin from what the others learnt.

One list per endpoint, newest first, trimmed to the window; its TTL is renewed by every write,
so it never grows and it goes once the endpoint is no longer used. Writes and reads ride on a
pipeline the poll step sends anyway, never a round trip of their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

import redis
from redis.client import Pipeline

from kontext_batch.coord.keys import Keys

__all__ = ["LATENCY_TTL_S", "LatencyLog"]

#: How long a window outlives its last write: a weekly run still starts warm.
LATENCY_TTL_S: Final = 8 * 86400


class LatencyLog:
    """The shared latency windows (seconds, newest first), at most ``window`` per endpoint."""

    def __init__(self, r: redis.Redis, keys: Keys, window: int = 256) -> None:
        self.r = r
        self.keys = keys
        self.window = window

    def load(self, endpoints: Iterable[str]) -> dict[str, list[float]]:
        """Every window of ``endpoints`` (one round trip); an endpoint never seen is left out."""
        names = list(endpoints)
        pipe = self.r.pipeline(transaction=False)
        for ep in names:
            self.read_in(pipe, ep)
        return {ep: got for ep, raw in zip(names, pipe.execute(), strict=True) if (got := self.parse(raw))}

    def add_in(self, pipe: Pipeline, endpoint: str, durations_s: Sequence[float]) -> None:
        """Queue ``durations_s`` onto the endpoint's window (nothing when there are none)."""
        if not durations_s:
            return
        key = self.keys.latency(endpoint)
        pipe.lpush(key, *(f"{d:.4f}" for d in durations_s))
        pipe.ltrim(key, 0, self.window - 1)
        pipe.expire(key, LATENCY_TTL_S)

    def read_in(self, pipe: Pipeline, endpoint: str) -> None:
        """Queue a read of the endpoint's window (its reply goes to :meth:`parse`)."""
        pipe.lrange(self.keys.latency(endpoint), 0, self.window - 1)

    @staticmethod
    def parse(raw: Any) -> list[float]:
        """A window as read (newest first), oldest first; entries that are not positive numbers are
        dropped (another version's, or a hand edit)."""
        out = []
        for item in reversed(raw or ()):
            try:
                v = float(item)
            except (TypeError, ValueError):
                continue
            if v > 0:
                out.append(v)
        return out
