"""The fenced job hash: one in-flight row's state, its fencing token, and who works on it now.

A job starts when :meth:`~kontext_batch.coord.slots.Slots.dispatch` grants its row a slot (that
script writes the job's first token, state, slot id and pool) and ends when its row is final
(:meth:`Jobs.retire`). The hash keeps the slot id in its field ``gate``; its leases are renewed
from there.

Liveness decides when a job is abandoned, and a step's own deadline bounds it. Each step claims
the job for its process (``holder``, ``busy``) until ``busy_until``, the claim time plus the step
deadline (``KONTEXT_STEP_DEADLINE_S``: longer than any step takes: one API call, its image fetches,
one sample download and upload). While that process beats (:mod:`~kontext_batch.coord.holders`) and
the deadline is ahead, the sweeper only extends the job's watch, however slow the API is. A step
that ends hands the job on (``busy`` off) with a deadline: when its next step is due, plus a grace
for queueing. A job whose holder died, whose step passed its deadline (a step hung, or one that
died in an exception and never handed the job on), or whose next message is overdue past that
grace (lost with a killed worker), is re-driven. Leases also carry an expiry, but only as a guard
against leaks: the sweeper renews them while jobs live.

A claim carries an id of its own: when Redis restarts between running a claim and answering it,
redis-py sends the same call again, and the claim that already took the job gets it again instead
of being refused as stale (which left the job busy for a live holder, with no step at work on it).

Every in-flight job carries a fencing token, ``step``: each task message holds the token it was
sent with and proceeds only if the job's token still matches (then bumps it). Every later write of
that step is fenced by the bumped token, so a duplicated, redelivered or re-driven message, or a
step that outlived its holder's heartbeat, changes nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Final, Literal

import redis
from redis.client import Pipeline

from kontext_batch.coord.keys import Keys, split_slot_id
from kontext_batch.coord.redisio import decode, eval_in, existing, lua, now_ms
from kontext_batch.coord.replicas import WHERE, Node

__all__ = ["Grant", "Jobs", "StaleJob", "Submitting"]

#: What :meth:`Jobs.submitting` did: wrote and reserved, or neither (another step's job; no room in
#: the run's budget).
Submitting = Literal["written", "fenced", "over budget"]

# Each of these renews the job's leases, so each opens with renew.lua's function.
_RENEW: Final = lua("renew.lua")
_CLAIM: Final = _RENEW + lua("claim.lua")
_UPDATE: Final = _RENEW + lua("update.lua")
_CLAIM_EXPIRED: Final = _RENEW + lua("claim_expired.lua")
_SUBMITTING: Final = lua("reserve.lua") + WHERE + lua("submitting.lua")
_WEBHOOK: Final = lua("webhook.lua")


@dataclass(frozen=True)
class Grant:
    """A job that holds a slot on key ``fp`` now. Send its submit task with ``token``."""

    ref: str
    token: int
    fp: str


@dataclass(frozen=True)
class StaleJob:
    """An in-flight job whose holder died, whose step passed its deadline (``late``), or whose next
    message is overdue: re-drive it with ``token``. ``gone``: its watch entry outlived its job hash
    (dropped now): nothing to re-drive, and unless its row is final, Redis lost the job."""

    ref: str
    token: int
    state: str
    slot_id: str
    pool_id: str
    late: bool = False
    gone: bool = False


class Jobs:
    """Claims, fenced writes, hand-offs and re-drives of in-flight jobs in Redis. Safe to share between threads."""

    def __init__(
        self,
        r: redis.Redis,
        keys: Keys,
        *,
        lease_s: float,
        grace_s: float = 15.0,
        hold_s: float = 1.0,
        step_deadline_s: float = 600.0,
    ) -> None:
        self.r = r
        self.keys = keys
        self.lease_ms = int(lease_s * 1000)
        self.grace_ms = int(grace_s * 1000)
        self.hold_ms = int(hold_s * 1000)
        self.step_deadline_ms = int(step_deadline_s * 1000)
        self._claim = r.register_script(_CLAIM)
        self._update = r.register_script(_UPDATE)
        self._claim_expired = r.register_script(_CLAIM_EXPIRED)
        self._submitting = r.register_script(_SUBMITTING)
        self._webhook = r.register_script(_WEBHOOK)

    # -- one step of a job -------------------------------------------------------------------------

    def claim(self, ref: str, token: int, holder: str) -> dict[str, str] | None:
        """Take the job for one step of process ``holder`` if ``token`` is current.

        Returns the job's fields (``step`` is now the token this step holds), or None when the
        message is stale (a duplicate, or a job re-driven meanwhile).
        """
        keys, args = self._claim_call(ref, token, holder)
        return self.claimed(self._claim(keys=keys, args=args))

    def claim_in(self, pipe: Pipeline, ref: str, token: int, holder: str) -> None:
        """:meth:`claim` queued on a pipeline; read its reply with :meth:`claimed`."""
        eval_in(pipe, self._claim, *self._claim_call(ref, token, holder))

    def _claim_call(self, ref: str, token: int, holder: str) -> tuple[list[str], list[str | int]]:
        now = now_ms()
        return [self.keys.job(ref), self.keys.watch], [
            str(token),
            now + self.hold_ms,
            ref,
            self.keys.lease_total(""),
            now + self.lease_ms,
            holder,
            uuid.uuid4().hex,
            now + self.step_deadline_ms,
        ]

    @staticmethod
    def claimed(raw: Any) -> dict[str, str] | None:
        """The job's fields from a claim's reply, or None when the claim was refused (stale token)."""
        if not raw:
            return None
        return {decode(raw[i]): decode(raw[i + 1]) for i in range(0, len(raw), 2)}

    def update(self, ref: str, held: int | str, **fields: Any) -> bool:
        """Write job fields if the step still holds token ``held``. False: a newer step owns the job."""
        return self._fenced(ref, held, "", fields)

    def submitting(
        self, ref: str, held: int | str, run_id: str, price: float, **fields: Any
    ) -> tuple[Submitting, Node | None]:
        """The write before a submit's POST, if the step still holds token ``held``, and ``price``
        reserved in the run's budget (:mod:`~kontext_batch.coord.budget`), together or not at all;
        with the node that took it, for :meth:`~kontext_batch.coord.replicas.ReplicaGuard.confirm`."""
        pairs = [v for k, val in fields.items() for v in (k, str(val))]
        keys = [self.keys.job(ref), self.keys.budget(run_id)]
        got = self._submitting(keys=keys, args=[str(held), str(price), *pairs])
        status = int(got[0])
        if status == 1:
            return "written", Node.from_reply(got[1:])
        return ("fenced" if status == 0 else "over budget"), None

    def update_in(self, pipe: Pipeline, ref: str, held: int | str, **fields: Any) -> None:
        """:meth:`update` queued on a pipeline (its reply: 1 written, 0 fenced off)."""
        eval_in(pipe, self._update, *self._fenced_call(ref, held, "", fields))

    def handoff(self, ref: str, held: int | str, next_in_s: float, **fields: Any) -> bool:
        """The step ends and the job's next message goes out, due in ``next_in_s``: not busy any more,
        and overdue (so re-driven) ``grace_s`` after it is due. Call before sending the message."""
        deadline = now_ms() + int(next_in_s * 1000) + self.grace_ms
        return self._fenced(ref, held, str(deadline), {**fields, "busy": 0, "holder": ""})

    def handoff_in(self, pipe: Pipeline, ref: str, held: int | str, next_in_s: float, **fields: Any) -> None:
        """:meth:`handoff` queued on a pipeline (its reply: 1 handed off, 0 fenced off)."""
        deadline = now_ms() + int(next_in_s * 1000) + self.grace_ms
        eval_in(pipe, self._update, *self._fenced_call(ref, held, str(deadline), {**fields, "busy": 0, "holder": ""}))

    def _fenced(self, ref: str, held: int | str, deadline: str, fields: dict[str, Any]) -> bool:
        keys, args = self._fenced_call(ref, held, deadline, fields)
        return bool(self._update(keys=keys, args=args))

    def _fenced_call(
        self, ref: str, held: int | str, deadline: str, fields: dict[str, Any]
    ) -> tuple[list[str], list[str | int]]:
        pairs = [v for k, val in fields.items() for v in (k, str(val))]
        exp = (int(deadline) if deadline else now_ms()) + self.lease_ms
        args: list[str | int] = [str(held), deadline, ref, self.keys.lease_total(""), exp, *pairs]
        return [self.keys.job(ref), self.keys.watch], args

    def fields(self, ref: str, *names: str) -> dict[str, str]:
        """Some of a job's fields (missing ones left out)."""
        got = self.r.hmget(self.keys.job(ref), list(names))
        return {n: decode(v) for n, v in zip(names, got, strict=True) if v is not None}

    def retire(self, ref: str) -> None:
        """Forget a job whose row is final: its state and its watch entry (its slot is released first)."""
        pipe = self.r.pipeline(transaction=True)
        self.retire_in(pipe, ref)
        pipe.execute()

    def forget_orphans(self, run_id: str) -> int:
        """Drop the run's watch entries whose job hash is gone (lost from Redis with its run):
        nothing can re-drive them. Returns how many."""
        prefix = f"{run_id}:"
        refs = [decode(x) for x in self.r.zrange(self.keys.watch, 0, -1)]
        refs = [ref for ref in refs if ref.startswith(prefix)]
        if not refs:
            return 0
        there = existing(self.r, [self.keys.job(ref) for ref in refs])
        orphans = [ref for ref, kept in zip(refs, there, strict=True) if not kept]
        if orphans:
            self.r.zrem(self.keys.watch, *orphans)
        return len(orphans)

    def retire_in(self, pipe: Pipeline, ref: str) -> None:
        """:meth:`retire` queued on a pipeline."""
        pipe.zrem(self.keys.watch, ref)
        pipe.delete(self.keys.job(ref))

    def requeue(self, ref: str, pool_id: str, endpoint: str, sid: str = "", **fields: Any) -> None:
        """Send a job that holds no API task back to the front of its pool's wait list, in one
        transaction: its slot ``sid`` (if any) freed, its watch entry dropped, its state queued."""
        pipe = self.r.pipeline(transaction=True)
        if sid:
            fp, ep = split_slot_id(sid)
            pipe.zrem(self.keys.lease_total(fp), ref)
            pipe.zrem(self.keys.lease(fp, ep), ref)
        pipe.zrem(self.keys.watch, ref)
        mapping: dict[Any, Any] = {"state": "queued", "busy": "0", "holder": "", **fields}
        pipe.hset(self.keys.job(ref), mapping=mapping)
        pipe.lpush(self.keys.wait(pool_id, endpoint), ref)
        pipe.execute()

    # -- the sweeper and the webhook receiver --------------------------------------------------------

    def claim_expired(self, *, limit: int = 100) -> list[StaleJob]:
        """Jobs to re-drive, each with a fresh token (their old messages become stale). Jobs whose
        holder is alive and busy, within their step's deadline, are not among them: their watch and
        leases are extended instead."""
        now = now_ms()
        flat = self._claim_expired(
            keys=[self.keys.watch],
            args=[
                now,
                self.hold_ms,
                self.keys.job_prefix,
                limit,
                self.keys.proc(""),
                self.keys.lease_total(""),
                self.lease_ms,
            ],
        )
        return [
            StaleJob(
                decode(flat[i]),
                int(flat[i + 1]),
                decode(flat[i + 2]),
                decode(flat[i + 3]),
                decode(flat[i + 4]),
                late=decode(flat[i + 5]) == "deadline",
                gone=decode(flat[i + 5]) == "gone",
            )
            for i in range(0, len(flat), 6)
        ]

    def webhook_arrived(self, ref: str, task_id: str, result_json: str) -> Grant | None:
        """A webhook announced the end of the job's current task: keep its outcome on the job and
        take a new token (the pending fallback poll becomes stale). Returns the grant to send the
        job's next poll with, or None when the webhook is for another task (late, from an earlier
        submit), a duplicate, or the job is not waiting on the API any more."""
        raw = self._webhook(
            keys=[self.keys.job(ref), self.keys.watch],
            args=[task_id, result_json, ref, now_ms() + self.grace_ms],
        )
        if not raw:
            return None
        return Grant(ref, int(raw[0]), split_slot_id(decode(raw[1]))[0])
