"""Whether what a step wrote has reached a replica, before the step acts on it outside Redis.

Replication is asynchronous: when Sentinel promotes a replica, the writes it had not received are
gone, and during a forced failover (``SENTINEL FAILOVER``) the old master even goes on taking
writes for a moment after the promotion, all of them lost when it resyncs. For most of a job's
writes that costs a re-drive. For the write before a POST it costs money: the job rewinds to
before its submit and the row is sent again as if for the first time, an extra API task that
nothing flags (issue 19, docs/guarantees.md "Sentinel").

So the submit step asks :meth:`ReplicaGuard.confirm` after its ``submitting`` write and before the
POST, and again after recording the task id. ``WAIT`` answers for the writes of its own
connection, so the check writes a probe key and waits on that connection: the probe comes after
every write this process made before it (one replication stream), so its acknowledgement covers
them all.

The rule for a master with no replica (the survivor of a ``kill -9``): ``WAIT`` would block for
its whole timeout and never succeed, so a master that has had no replica as long as this process
has watched it is taken as it is, unconfirmed writes and all. A master whose replica went away
within the last ``recent_s`` is not: that is what the old master of a forced failover looks like
between the promotion and its own demotion, and a write there is refused until the clients move.
A plain Redis without replicas (the default set-up) never waits and costs nothing but one
``INFO replication`` every ``refresh_s`` per process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import redis

__all__ = ["Confirmation", "ReplicaGuard"]

log = logging.getLogger("kontext_batch.replicas")

Confirmation = Literal["replicated", "lone", "unconfirmed"]


@dataclass(frozen=True)
class _Seen:
    replid: str
    role: str
    replicas: int
    at: float


class ReplicaGuard:
    """One per process (the Runtime's): thread-safe, with its view of the master cached."""

    def __init__(
        self,
        client: redis.Redis,
        probe_key: str,
        *,
        timeout_ms: int = 1000,
        recent_s: float = 15.0,
        refresh_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = client
        self._probe = probe_key
        self._timeout_ms = timeout_ms
        self._recent_s = recent_s
        self._refresh_s = refresh_s
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: _Seen | None = None
        self._blind = False  # INFO refused (an ACL without it): see confirm()
        # Per master (its replication id, new at each promotion): when it last had a replica.
        self._had_replica: dict[str, float] = {}

    def confirm(self) -> Confirmation:
        """Whether this process's writes so far are on a replica (``replicated``), on a master that has
        none to lose them to (``lone``), or neither (``unconfirmed``: act on them later)."""
        if self._blind:
            return "lone"
        try:
            seen = self._view()
            if self._alone(seen):
                return "lone"
            if seen.role == "master" and seen.replicas > 0:
                pipe = self._redis.pipeline(transaction=False)
                pipe.set(self._probe, "1", ex=60)
                pipe.wait(1, self._timeout_ms)
                if int(pipe.execute()[-1]) >= 1:
                    return "replicated"
            seen = self._view(fresh=True)
        except redis.exceptions.NoPermissionError:
            # An ACL user without INFO cannot tell a lone master from one that just lost its
            # replica: go on unchecked rather than hold every submit back for ever.
            self._blind = True
            log.warning(
                "this Redis user may not run INFO: submits are not checked against a failover "
                "(add +info to its ACL rule; docs/guarantees.md)"
            )
            return "lone"
        except redis.RedisError as exc:  # the node went away or turned replica: a failover, likely
            log.info("could not confirm the writes on a replica: %s", exc)
            return "unconfirmed"
        return "lone" if self._alone(seen) else "unconfirmed"

    def _alone(self, seen: _Seen) -> bool:
        """A master without a replica, and none lost lately: nothing to confirm against."""
        return seen.role == "master" and seen.replicas == 0 and not self._lost_replica(seen)

    def _lost_replica(self, seen: _Seen) -> bool:
        last = self._had_replica.get(seen.replid)
        return last is not None and seen.at - last < self._recent_s

    def _view(self, *, fresh: bool = False) -> _Seen:
        with self._lock:
            now = self._clock()
            if fresh or self._seen is None or now - self._seen.at >= self._refresh_s:
                info = self._redis.info("replication")
                seen = _Seen(
                    replid=str(info.get("master_replid", "")),
                    role=str(info.get("role", "")),
                    replicas=int(info.get("connected_slaves", 0) or 0),
                    at=now,
                )
                if seen.replicas > 0:
                    self._had_replica[seen.replid] = now
                elif self._seen is not None and self._seen.replicas > 0 and self._seen.replid == seen.replid:
                    log.warning(
                        "the Redis master's replica went away: submits wait until one is back or %g s pass",
                        self._recent_s,
                    )
                self._seen = seen
            return self._seen
