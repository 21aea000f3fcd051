"""Whether what a step wrote has reached a replica, before the step acts on it outside Redis.

Replication is asynchronous: when Sentinel promotes a replica, the writes it had not received are
gone, and during a forced failover (``SENTINEL FAILOVER``) the old master goes on taking writes for
some seconds after the promotion (about 10 s on loopback), all of them lost when it resyncs. For
most of a job's writes that costs a re-drive. For the write before a POST it costs money: the job
rewinds to before its submit and the row is sent again as if for the first time, an extra API task
that nothing flags (issue 19, docs/guarantees.md "Sentinel").

So the submit step asks :meth:`ReplicaGuard.confirm` after its ``submitting`` write and before the
POST, and again after recording the task id. The check is about the node that took the write, and
no other: a Sentinel client's pool holds connections to the old master (in use by other threads
when the sentinels moved) beside new ones to the new master, so a write may land on the old
master while the next command reaches the new one, which has no replica yet and a fresh
replication id. Each write therefore reports its node (:data:`WHERE`, run inside the writing
script or transaction: role, replicas, replication id), and the check is a probe write and
``WAIT`` on one connection, taken only if that connection reaches the same node (same replication
id). ``WAIT`` answers for the writes of its own connection; the probe comes after the write on the
node's one replication stream, so its acknowledgement covers the write.

The rule for a master with no replica (the survivor of a ``kill -9``, or the new master of a
forced failover before the old one rejoins it): ``WAIT`` would block for its whole timeout and
never succeed, so a master that has had no replica as long as this process has watched it is taken
as it is. A master whose replica went away within the last ``recent_s`` is not: that is what the
old master of a forced failover looks like between the promotion and its own demotion, and a write
there is refused until the clients move. A plain Redis without replicas (the default set-up) never
waits: the report costs an ``INFO replication`` inside the script, a few microseconds in Redis.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import redis
from redis.client import Pipeline

from kontext_batch.coord.redisio import decode, eval_in, lua

__all__ = ["WHERE", "Confirmation", "Node", "ReplicaGuard"]

log = logging.getLogger("kontext_batch.replicas")

Confirmation = Literal["replicated", "lone", "unconfirmed"]

#: Lua: ``where()``, the node a script runs on (prepended to the scripts whose writes are checked).
WHERE: Final = lua("where.lua")
_WHERE_ALONE: Final = WHERE + "return where()\n"


@dataclass(frozen=True)
class Node:
    """A node as a script that ran there saw it. ``role`` is ``unknown`` when the user may not run INFO."""

    role: str
    replicas: int
    replid: str

    @classmethod
    def from_reply(cls, reply: Sequence[object]) -> Node:
        role, replicas, replid = reply
        return cls(decode(role), int(replicas), decode(replid))  # type: ignore[call-overload]


class ReplicaGuard:
    """One per process (the Runtime's): thread-safe; remembers, per master, when it last had a replica."""

    def __init__(
        self,
        client: redis.Redis,
        probe_key: str,
        *,
        timeout_ms: int = 1000,
        recent_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = client
        self._probe = probe_key
        self._timeout_ms = timeout_ms
        self._recent_s = recent_s
        self._clock = clock
        self._lock = threading.Lock()
        self._where = client.register_script(_WHERE_ALONE)
        self._warned_blind = False
        # Per master (its replication id, new at each promotion): when it last had a replica.
        self._had_replica: dict[str, float] = {}
        self._warned_lost: set[str] = set()

    def where_in(self, pipe: Pipeline) -> None:
        """Queue the node's report on ``pipe`` (its reply: :meth:`Node.from_reply`), after the writes to check."""
        eval_in(pipe, self._where, [], [])

    def confirm(self, written: Node) -> Confirmation:
        """Whether the writes this process made on node ``written`` so far are on a replica
        (``replicated``), on a master that has none to lose them to (``lone``), or neither
        (``unconfirmed``: act on them later)."""
        if written.role == "unknown":
            self._blind()
            return "lone"
        now = self._note(written)
        if self._alone(written, now):
            return "lone"
        if written.role != "master" or written.replicas == 0:
            return "unconfirmed"
        return self._wait_on(written)

    def _wait_on(self, written: Node) -> Confirmation:
        """A probe and ``WAIT`` on one connection, worth something only if it reached ``written``."""
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.set(self._probe, "1", ex=60)
            pipe.wait(1, self._timeout_ms)
            self.where_in(pipe)
            _, acked, reply = pipe.execute()
        except redis.RedisError as exc:  # the node went away or turned replica: a failover, likely
            log.info("could not confirm the writes on a replica: %s", exc)
            return "unconfirmed"
        there = Node.from_reply(reply)
        now = self._note(there)
        if there.replid != written.replid:
            # The WAIT ran on another node (the pool has moved on): it says nothing of the write.
            return "unconfirmed"
        if int(acked) >= 1:
            return "replicated"
        return "lone" if self._alone(there, now) else "unconfirmed"

    def _alone(self, node: Node, now: float) -> bool:
        """A master without a replica, and none lost lately: nothing to confirm against."""
        if node.role != "master" or node.replicas > 0:
            return False
        last = self._had_replica.get(node.replid)
        return last is None or now - last >= self._recent_s

    def _note(self, node: Node) -> float:
        with self._lock:
            now = self._clock()
            if node.replicas > 0:
                self._had_replica[node.replid] = now
                self._warned_lost.discard(node.replid)
            elif node.replid in self._had_replica and node.replid not in self._warned_lost:
                self._warned_lost.add(node.replid)
                log.warning(
                    "the Redis master's replica went away: submits wait until one is back or %g s pass",
                    self._recent_s,
                )
            return now

    def _blind(self) -> None:
        # An ACL user without INFO cannot tell a lone master from one that just lost its replica:
        # go on unchecked rather than hold every submit back for ever.
        if not self._warned_blind:
            self._warned_blind = True
            log.warning(
                "this Redis user may not run INFO: submits are not checked against a failover "
                "(add +info to its ACL rule; docs/guarantees.md)"
            )
