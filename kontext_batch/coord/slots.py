"""The global slot leases: at most N active Kontext tasks per API key and endpoint, across every worker.

Rows wait for a slot in a Redis list, not in Celery: a waiting row costs one list entry and no task
executions. A run is bound to a *pool* of API keys (often one, :mod:`~kontext_batch.coord.pools`);
its rows wait in the pool's list for their endpoint, and :meth:`Slots.dispatch` hands each waiting
row a slot on whichever key of the pool has room, among the keys the caller names (those a live
worker holds). Every grant runs in one Lua script, so two workers can never hand out the same
slot; that script also starts each granted row's job (:mod:`~kontext_batch.coord.jobs`), so it
lives here, with the method that calls it. Freeing a slot (:meth:`Slots.release`) and re-taking
the slot of a job whose API task is still active (:meth:`Slots.hold`) are plain transactions.

Two sorted sets per key hold its leases: one per endpoint (6 for kontext-max) and one across
endpoints (24). A key's slots on one endpoint are named by a *slot id*, ``"{fp}|{endpoint}"``
(:func:`~kontext_batch.coord.keys.slot_id`); a pool's wait list for one endpoint by a *wait id*,
``"{pool}|{endpoint}"``. A slot is freed when the API task is terminal, when a job that holds no
API task goes back to its wait list (a re-drive, a refused key), or, as a guard against leaks, when
its lease expires unrenewed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import redis

from kontext_batch.coord.jobs import Grant
from kontext_batch.coord.keys import Keys, split_slot_id, split_wait_id, wait_id
from kontext_batch.coord.redisio import batched, decode, lua, now_ms

__all__ = ["KeySlot", "Slots"]

_DISPATCH: Final = lua("dispatch.lua")
_DROP_RUN: Final = lua("drop_run.lua")


@dataclass(frozen=True)
class KeySlot:
    """A key that may take waiting rows now, with its caps on the endpoint and over all endpoints."""

    fp: str
    cap: int
    cap_total: int


class Slots:
    """Leases per key and endpoint, and the pools' wait lists, in Redis. Safe to share between threads."""

    def __init__(self, r: redis.Redis, keys: Keys, *, lease_s: float, grace_s: float = 15.0) -> None:
        self.r = r
        self.keys = keys
        self.lease_ms = int(lease_s * 1000)
        self.grace_ms = int(grace_s * 1000)
        self._dispatch = r.register_script(_DISPATCH)
        self._drop_run = r.register_script(_DROP_RUN)

    # -- waiting and granting ----------------------------------------------------------------------

    def enqueue(
        self,
        pool_id: str,
        endpoint: str,
        refs: Iterable[str],
        *,
        front: bool = False,
        jobs: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> int:
        """Put rows in the pool's wait list for ``endpoint`` (FIFO; ``front`` for rows that lost their slot).

        ``jobs`` starts some of their job hashes with fields (ref -> fields), written before the
        rows can be granted: a retried row's earlier attempts and credits (``retry``)."""
        pipe = self.r.pipeline(transaction=False)
        for ref, fields in (jobs or {}).items():
            mapping: dict[Any, Any] = dict(fields)
            pipe.hset(self.keys.job(ref), mapping=mapping)
        pipe.sadd(self.keys.wait_ids, wait_id(pool_id, endpoint))
        push = pipe.lpush if front else pipe.rpush
        n = 0
        for batch in batched(refs):
            push(self.keys.wait(pool_id, endpoint), *batch)
            n += len(batch)
        pipe.execute()
        return n

    def dispatch(
        self,
        pool_id: str,
        endpoint: str,
        slots: Sequence[KeySlot],
        *,
        limit: int = 1000,
        release: tuple[str, str] | None = None,
    ) -> list[Grant]:
        """Hand free slots on ``slots`` (in turn, one row each) to waiting rows, oldest first.

        ``release`` (slot id, ref) frees that job's slot first, in the same script: a step that ends
        a task and hands its slot on makes one round trip, not two.
        """
        if not slots:
            if release is not None:
                self.release(*release)
            return []
        rel_ref, rel_fp, rel_ep = ("", "", "")
        if release is not None:
            rel_ref = release[1]
            rel_fp, rel_ep = split_slot_id(release[0])
        now = now_ms()
        args: list[str | int] = [
            now,
            self.lease_ms,
            limit,
            self.keys.job_prefix,
            self.keys.lease_total(""),
            endpoint,
            pool_id,
            now + self.grace_ms,
            rel_ref,
            rel_fp,
            rel_ep,
            *(v for s in slots for v in (s.fp, s.cap, s.cap_total)),
        ]
        flat = self._dispatch(keys=[self.keys.wait(pool_id, endpoint), self.keys.watch], args=args)
        return [Grant(decode(flat[i]), int(flat[i + 1]), decode(flat[i + 2])) for i in range(0, len(flat), 3)]

    def release(self, sid: str, ref: str) -> None:
        """Give the slot back: the API task is terminal (or was never created)."""
        fp, endpoint = split_slot_id(sid)
        pipe = self.r.pipeline(transaction=True)
        pipe.zrem(self.keys.lease_total(fp), ref)
        pipe.zrem(self.keys.lease(fp, endpoint), ref)
        pipe.execute()

    def hold(self, sid: str, ref: str) -> None:
        """(Re)take the slot for a job known to be active at the API (used when re-driving a poll)."""
        fp, endpoint = split_slot_id(sid)
        exp = now_ms() + self.lease_ms
        pipe = self.r.pipeline(transaction=True)
        pipe.zadd(self.keys.lease_total(fp), {ref: exp})
        pipe.zadd(self.keys.lease(fp, endpoint), {ref: exp})
        pipe.execute()

    # -- looking -----------------------------------------------------------------------------------

    def known_waits(self) -> list[tuple[str, str]]:
        """Every (pool id, endpoint) whose wait list was ever used."""
        return [split_wait_id(decode(w)) for w in self.r.smembers(self.keys.wait_ids)]

    def active(self, fp: str, endpoint: str | None = None) -> int:
        key = self.keys.lease(fp, endpoint) if endpoint else self.keys.lease_total(fp)
        return int(self.r.zcount(key, now_ms(), "+inf"))

    def waiting(self, pool_id: str, endpoint: str) -> int:
        return int(self.r.llen(self.keys.wait(pool_id, endpoint)))

    def remove_run_from_wait(self, pool_id: str, endpoint: str, run_id: str) -> list[str]:
        """Take every waiting row of one run out of a wait list (for cancel). Returns their refs.

        One pass in Lua: the other runs keep their order, and a 100,000-row list is not scanned
        once per removed row.
        """
        removed = self._drop_run(keys=[self.keys.wait(pool_id, endpoint)], args=[f"{run_id}:"])
        return [decode(x) for x in removed]
