"""When to poll next: few polls per job, and each sample fetched moments after it is ready.

BFL's own example polls every 0.5 s, about L/0.5 polls for a task of L seconds. We instead learn the
latency distribution as jobs finish and poll when a job is likely to be ready:

- first poll at the 55th percentile of the latencies seen so far for the endpoint (``first_s``, an
  early probe, before any). A job still running then reports the progress that times the next poll,
  which nearly always lands: polls per job come to about 1 + (1 - q) = 1.45. The quantile trades
  polls against the wait of the jobs that end before it: one ending at the 5th percentile waits
  Q(0.55) - Q(0.05), about half the median latency when the spread is lognormal with sigma 0.4
  (q = 0.4 gave 1.62 polls per job and a wait about 0.39 of the median);
- while Pending with a usable ``progress`` p after t seconds, the rest should take t*(1-p)/p: poll
  just after that. After the *first* poll that one prediction may come sooner than ``min_s`` (down to
  a tenth of it): a first poll that lands a few milliseconds before the end would otherwise hold the
  slot a whole ``min_s`` longer. Later polls keep ``min_s``, so a progress figure that never moves
  cannot make us poll fast for long;
- with no progress, poll at the median of the seen latencies that exceed the time already waited,
  or back off geometrically when the job outlives everything seen.

What one process learns, the others read: each terminal poll's pipeline also appends the latencies
seen since the last one to the endpoint's window in Redis and, every ``refresh_s``, reads that window
back in place of our own (:mod:`kontext_batch.coord.latencies`). A worker loads the windows as it
starts (:meth:`PollPlanner.warm`), so its first wave is polled like its fifth.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.client import Pipeline

from kontext_batch.coord.latencies import LatencyLog
from kontext_batch.settings import Settings

__all__ = ["PollPlanner"]


@dataclass
class PollPlanner:
    first_s: float = 0.5
    min_s: float = 0.25
    max_s: float = 10.0
    first_quantile: float = 0.55
    window: int = 256
    #: How often a process reads the shared window back (s): others' completions reach it this late.
    refresh_s: float = 5.0
    _seen: dict[str, deque[float]] = field(default_factory=dict, repr=False)
    #: Latencies seen here and not yet written to the shared window, by endpoint.
    _unshared: dict[str, list[float]] = field(default_factory=dict, repr=False)
    _read_at: dict[str, float] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> PollPlanner:
        return cls(first_s=settings.poll_first_s, min_s=settings.poll_min_s, max_s=settings.poll_max_s)

    def observe(self, endpoint: str, duration_s: float) -> None:
        if duration_s <= 0:
            return
        with self._lock:
            self._seen.setdefault(endpoint, deque(maxlen=self.window)).append(duration_s)
            self._unshared.setdefault(endpoint, []).append(duration_s)

    def warm(self, windows: Mapping[str, Sequence[float]]) -> None:
        """Start from shared windows (oldest first), as :meth:`LatencyLog.load` reads them."""
        with self._lock:
            for endpoint, seen in windows.items():
                self._seen[endpoint] = deque(seen, maxlen=self.window)

    def share_in(self, pipe: Pipeline, log: LatencyLog, endpoint: str) -> Callable[[Sequence[Any]], None]:
        """Queue, last on ``pipe``, the write of what this process saw on ``endpoint`` since its last
        share, and every ``refresh_s`` a read of the shared window. Call what it returns with the
        pipeline's replies: it takes the window read in place of ours."""
        now = time.monotonic()
        with self._lock:
            fresh = self._unshared.pop(endpoint, [])
            read = now - self._read_at.get(endpoint, -self.refresh_s) >= self.refresh_s
            if read:
                self._read_at[endpoint] = now
        log.add_in(pipe, endpoint, fresh)
        if not read:
            return _ignore
        log.read_in(pipe, endpoint)

        def take(replies: Sequence[Any]) -> None:
            shared = log.parse(replies[-1])
            if not shared:
                return
            with self._lock:
                # Seen here since the read was queued: not in the shared window yet.
                self._seen[endpoint] = deque([*shared, *self._unshared.get(endpoint, ())], maxlen=self.window)

        return take

    def _sorted(self, endpoint: str) -> list[float]:
        with self._lock:
            return sorted(self._seen.get(endpoint, ()))

    def _clamp(self, s: float) -> float:
        return max(self.min_s, min(self.max_s, s))

    def deadline_s(self, endpoint: str, floor_s: float, factor: float = 5.0) -> float:
        """How long a task may take before it is given up: ``factor`` times the slowest 5 % of the
        latencies seen (the 95th percentile), never under ``floor_s``."""
        seen = self._sorted(endpoint)
        if not seen:
            return floor_s
        return max(floor_s, factor * seen[min(len(seen) - 1, int(len(seen) * 0.95))])

    def webhook_fallback_s(self, endpoint: str) -> float:
        """When to poll a task whose end a webhook should announce: only if the delivery is late,
        twice the slowest 5 % of the latencies seen plus a second (10 s before any is seen)."""
        seen = self._sorted(endpoint)
        if not seen:
            return 10.0
        return 2 * seen[min(len(seen) - 1, int(len(seen) * 0.95))] + 1.0

    def first_delay(self, endpoint: str) -> float:
        seen = self._sorted(endpoint)
        if not seen:
            return self._clamp(self.first_s)
        return self._clamp(seen[min(len(seen) - 1, int(len(seen) * self.first_quantile))])

    def next_delay(self, endpoint: str, elapsed_s: float, progress: float | None, *, polls: int = 1) -> float:
        """When to poll again, ``elapsed_s`` after the submit, after ``polls`` polls found it running."""
        if progress is not None and 0.05 <= progress < 1.0 and elapsed_s > 0:
            remaining = elapsed_s * (1.0 - progress) / progress
            # A little past the predicted end: landing just before it costs a whole extra poll.
            floor = self.min_s / 10 if polls <= 1 else self.min_s
            return max(floor, min(self.max_s, remaining * 1.03 + 0.03))
        seen = self._sorted(endpoint)
        later = seen[bisect.bisect_right(seen, elapsed_s) :]
        if later:
            return self._clamp(later[len(later) // 2] - elapsed_s + 0.03)
        return self._clamp(max(elapsed_s * 0.5, self.min_s))


def _ignore(_: Sequence[Any]) -> None:
    return None
