"""The global slot gate: at most N active Kontext tasks per API key and endpoint, across every worker.

Rows wait for a slot in a Redis list, not in Celery: a waiting row costs one list entry and no task
executions. A run is bound to a *pool* of API keys (often one); its rows wait in the pool's list for
their endpoint, and :meth:`SlotGate.dispatch` hands each waiting row a slot on whichever key of the
pool has room, among the keys that a live worker holds. Everything that changes slots runs in one
Lua script, so two workers can never hand out the same slot.

Two sorted sets per key hold its leases: one per endpoint (6 for kontext-max) and one across
endpoints (24). A slot is freed when the API task is terminal, or when the sweeper finds the job's
holder dead and sends the job again.

Liveness, not a clock, decides when a job is abandoned. Each step claims the job for its process
(``holder``, ``busy``); while that process beats (:mod:`~kontext_batch.coord.holders`), the sweeper only
extends the job's watch, however slow the API is. A step that ends hands the job on (``busy`` off)
with a deadline: when its next step is due, plus a grace for queueing. A job whose holder died, or
whose next message is overdue past that grace (lost with a killed worker), is re-driven. Leases
also carry an expiry, but only as a guard against leaks: the sweeper renews them while jobs live.

Every in-flight job carries a fencing token, ``step``: each task message holds the token it was
sent with and proceeds only if the job's token still matches (then bumps it). Every later write of
that step is fenced by the bumped token, so a duplicated, redelivered or re-driven message, or a
step that outlived its holder's heartbeat, changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import redis
from redis.client import Pipeline

from kontext_batch.coord.keys import Keys
from kontext_batch.coord.redisio import batched, decode, eval_in

__all__ = ["Grant", "KeySlot", "Pool", "SlotGate", "StaleJob", "gate_id", "split_gate_id"]

# KEYS: wait list, watch. ARGV: now, lease ms, limit, job prefix, lease prefix, endpoint, pool id,
# watch deadline, then a slot to free first as (ref, fp, endpoint) or ('', '', ''), then
# (fp, endpoint cap, total cap) per candidate key.
_DISPATCH: Final = """
local now = tonumber(ARGV[1])
local lease_exp = now + tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local jp, lp, ep, pool, deadline = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
if ARGV[9] ~= '' then
  redis.call('ZREM', lp .. ARGV[10], ARGV[9])
  redis.call('ZREM', lp .. ARGV[10] .. ':' .. ARGV[11], ARGV[9])
end
local fps, room = {}, {}
local nk = (#ARGV - 11) / 3
for i = 1, nk do
  local fp = ARGV[9 + 3 * i]
  local kt, ke = lp .. fp, lp .. fp .. ':' .. ep
  redis.call('ZREMRANGEBYSCORE', kt, '-inf', now)
  redis.call('ZREMRANGEBYSCORE', ke, '-inf', now)
  fps[i] = fp
  room[i] = math.min(tonumber(ARGV[11 + 3 * i]) - redis.call('ZCARD', kt),
                     tonumber(ARGV[10 + 3 * i]) - redis.call('ZCARD', ke))
end
local out, granted, progress = {}, 0, true
while progress and granted < limit do
  progress = false
  for i = 1, nk do
    if room[i] > 0 and granted < limit then
      local ref = redis.call('LPOP', KEYS[1])
      if not ref then return out end
      local fp = fps[i]
      redis.call('ZADD', lp .. fp, lease_exp, ref)
      redis.call('ZADD', lp .. fp .. ':' .. ep, lease_exp, ref)
      redis.call('ZADD', KEYS[2], deadline, ref)
      local jk = jp .. ref
      local step = redis.call('HINCRBY', jk, 'step', 1)
      redis.call('HSET', jk, 'state', 'granted', 'gate', fp .. '|' .. ep, 'pool', pool, 'busy', '0', 'holder', '')
      out[#out + 1] = ref
      out[#out + 1] = step
      out[#out + 1] = fp
      room[i] = room[i] - 1
      granted = granted + 1
      progress = true
    end
  end
end
return out
"""

# Renew a job's leases (XX: never re-create a released one). Used inside the scripts below.
_RENEW: Final = """
local function renew(jk, lp, exp, ref)
  local gate = redis.call('HGET', jk, 'gate')
  if gate then
    local fp, ep = string.match(gate, '^([^|]*)|(.*)$')
    redis.call('ZADD', lp .. fp, 'XX', exp, ref)
    redis.call('ZADD', lp .. fp .. ':' .. ep, 'XX', exp, ref)
  end
end
"""

# KEYS: job hash, watch. ARGV: token, watch deadline, ref, lease prefix, lease expiry, holder.
_CLAIM: Final = (
    _RENEW
    + """
local step = redis.call('HGET', KEYS[1], 'step')
if not step or step ~= ARGV[1] then return false end
redis.call('HINCRBY', KEYS[1], 'step', 1)
redis.call('HSET', KEYS[1], 'busy', '1', 'holder', ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
renew(KEYS[1], ARGV[4], ARGV[5], ARGV[3])
return redis.call('HGETALL', KEYS[1])
"""
)

# KEYS: job hash, watch. ARGV: held token, watch deadline ('' = keep), ref, lease prefix, lease expiry,
# then field/value pairs.
_UPDATE: Final = (
    _RENEW
    + """
if redis.call('HGET', KEYS[1], 'step') ~= ARGV[1] then return 0 end
if #ARGV > 5 then redis.call('HSET', KEYS[1], unpack(ARGV, 6)) end
if ARGV[2] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
  renew(KEYS[1], ARGV[4], ARGV[5], ARGV[3])
end
return 1
"""
)

# KEYS: watch. ARGV: now, hold ms, job prefix, limit, proc prefix, lease prefix, lease ms.
_CLAIM_EXPIRED: Final = (
    _RENEW
    + """
local now = tonumber(ARGV[1])
local refs = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
local out = {}
for _, ref in ipairs(refs) do
  local jk = ARGV[3] .. ref
  if redis.call('EXISTS', jk) == 0 then
    redis.call('ZREM', KEYS[1], ref)
  else
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ref)
    local holder = redis.call('HGET', jk, 'holder') or ''
    if redis.call('HGET', jk, 'busy') == '1' and holder ~= '' and redis.call('EXISTS', ARGV[5] .. holder) == 1 then
      renew(jk, ARGV[6], now + tonumber(ARGV[7]), ref)
    else
      local step = redis.call('HINCRBY', jk, 'step', 1)
      out[#out + 1] = ref
      out[#out + 1] = step
      out[#out + 1] = redis.call('HGET', jk, 'state') or ''
      out[#out + 1] = redis.call('HGET', jk, 'gate') or ''
      out[#out + 1] = redis.call('HGET', jk, 'pool') or ''
      redis.call('HSET', jk, 'busy', '0', 'holder', '')
    end
  end
end
return out
"""
)

# KEYS: job hash, watch. ARGV: task id, result JSON, ref, watch deadline. Returns {token, gate} or false.
_WEBHOOK: Final = """
if redis.call('HGET', KEYS[1], 'bfl_task_id') ~= ARGV[1] then return false end
if redis.call('HGET', KEYS[1], 'state') ~= 'polling' then return false end
if redis.call('HEXISTS', KEYS[1], 'webhook_result') == 1 then return false end
local step = redis.call('HINCRBY', KEYS[1], 'step', 1)
redis.call('HSET', KEYS[1], 'webhook_result', ARGV[2], 'busy', '0', 'holder', '')
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
return {step, redis.call('HGET', KEYS[1], 'gate')}
"""

_DROP_RUN: Final = """
local all = redis.call('LRANGE', KEYS[1], 0, -1)
local keep, removed = {}, {}
local n = string.len(ARGV[1])
for _, ref in ipairs(all) do
  if string.sub(ref, 1, n) == ARGV[1] then removed[#removed + 1] = ref else keep[#keep + 1] = ref end
end
if #removed > 0 then
  redis.call('DEL', KEYS[1])
  for i = 1, #keep, 5000 do
    redis.call('RPUSH', KEYS[1], unpack(keep, i, math.min(i + 4999, #keep)))
  end
end
return removed
"""


def gate_id(fp: str, endpoint: str) -> str:
    """One key's slots on one endpoint, as a job records them: ``"{fp}|{endpoint}"``."""
    return f"{fp}|{endpoint}"


def split_gate_id(gid: str) -> tuple[str, str]:
    fp, _, endpoint = gid.partition("|")
    return fp, endpoint


@dataclass(frozen=True)
class Pool:
    """The API keys (fingerprints) a run is bound to; its rows may take a slot on any of them."""

    id: str
    fps: tuple[str, ...]

    @classmethod
    def of(cls, fps: Iterable[str]) -> Pool:
        keys = tuple(sorted(set(fps)))
        if not keys:
            raise ValueError("a pool needs at least one key")
        pid = keys[0] if len(keys) == 1 else "pool-" + hashlib.sha256(",".join(keys).encode()).hexdigest()[:10]
        return cls(pid, keys)


@dataclass(frozen=True)
class KeySlot:
    """A key that may take waiting rows now, with its caps on the endpoint and over all endpoints."""

    fp: str
    cap: int
    cap_total: int


@dataclass(frozen=True)
class Grant:
    """A job that holds a slot on key ``fp`` now. Send its submit task with ``token``."""

    ref: str
    token: int
    fp: str


@dataclass(frozen=True)
class StaleJob:
    """An in-flight job whose holder died or whose next message is overdue: re-drive it with ``token``."""

    ref: str
    token: int
    state: str
    gate_id: str
    pool_id: str


class SlotGate:
    """Leases, wait lists and fencing tokens in Redis. Safe to share between threads."""

    def __init__(
        self, r: redis.Redis, keys: Keys, *, lease_s: float, grace_s: float = 15.0, hold_s: float = 1.0
    ) -> None:
        self.r = r
        self.keys = keys
        self.lease_ms = int(lease_s * 1000)
        self.grace_ms = int(grace_s * 1000)
        self.hold_ms = int(hold_s * 1000)
        self._pools: dict[str, Pool] = {}
        self._keys_out: tuple[float, dict[str, str]] | None = None
        self._dispatch = r.register_script(_DISPATCH)
        self._claim = r.register_script(_CLAIM)
        self._update = r.register_script(_UPDATE)
        self._claim_expired = r.register_script(_CLAIM_EXPIRED)
        self._drop_run = r.register_script(_DROP_RUN)
        self._webhook = r.register_script(_WEBHOOK)

    @staticmethod
    def now_ms() -> int:
        return int(time.time() * 1000)

    # -- pools and keys ----------------------------------------------------------------------------

    def register_pool(self, pool: Pool) -> None:
        self.r.hset(self.keys.pools, pool.id, json.dumps(pool.fps))
        self._pools[pool.id] = pool

    def pool(self, pool_id: str) -> Pool:
        """A pool by id (cached: a pool never changes). KeyError if it was never registered."""
        found = self._pools.get(pool_id)
        if found is None:
            raw = self.r.hget(self.keys.pools, pool_id)
            if raw is None:
                raise KeyError(f"no key pool {pool_id!r}")
            found = self._pools[pool_id] = Pool(pool_id, tuple(json.loads(raw)))
        return found

    def mark_key_out(self, fp: str, reason: str) -> None:
        """The API refused this key (401/403/402): no more slots on it until an operator clears it."""
        self.r.hset(self.keys.keys_out, fp, reason)
        self._keys_out = None

    def keys_out(self, max_age_s: float = 1.0) -> dict[str, str]:
        """Refused keys and why, as read at most ``max_age_s`` ago (every dispatch asks)."""
        now = time.monotonic()
        cached = self._keys_out
        if cached is not None and now - cached[0] < max_age_s:
            return cached[1]
        out = {decode(k): decode(v) for k, v in self.r.hgetall(self.keys.keys_out).items()}
        self._keys_out = (now, out)
        return out

    def clear_keys_out(self, fps: Iterable[str]) -> None:
        fps = list(fps)
        if fps:
            self.r.hdel(self.keys.keys_out, *fps)
        self._keys_out = None

    # -- waiting and granting ----------------------------------------------------------------------

    def enqueue(self, pool_id: str, endpoint: str, refs: Iterable[str], *, front: bool = False) -> int:
        """Put rows in the pool's wait list for ``endpoint`` (FIFO; ``front`` for rows that lost their slot)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.sadd(self.keys.gates, gate_id(pool_id, endpoint))
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

        ``release`` (gate id, ref) frees that job's slot first, in the same script: a step that ends
        a task and hands its slot on makes one round trip, not two.
        """
        if not slots:
            if release is not None:
                self.release(*release)
            return []
        rel_ref, rel_fp, rel_ep = ("", "", "")
        if release is not None:
            rel_ref = release[1]
            rel_fp, rel_ep = split_gate_id(release[0])
        now = self.now_ms()
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
        now = self.now_ms()
        return [self.keys.job(ref), self.keys.watch], [
            str(token),
            now + self.hold_ms,
            ref,
            self.keys.lease_total(""),
            now + self.lease_ms,
            holder,
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

    def update_in(self, pipe: Pipeline, ref: str, held: int | str, **fields: Any) -> None:
        """:meth:`update` queued on a pipeline (its reply: 1 written, 0 fenced off)."""
        eval_in(pipe, self._update, *self._fenced_call(ref, held, "", fields))

    def handoff(self, ref: str, held: int | str, next_in_s: float, **fields: Any) -> bool:
        """The step ends and the job's next message goes out, due in ``next_in_s``: not busy any more,
        and overdue (so re-driven) ``grace_s`` after it is due. Call before sending the message."""
        deadline = self.now_ms() + int(next_in_s * 1000) + self.grace_ms
        return self._fenced(ref, held, str(deadline), {**fields, "busy": 0, "holder": ""})

    def handoff_in(self, pipe: Pipeline, ref: str, held: int | str, next_in_s: float, **fields: Any) -> None:
        """:meth:`handoff` queued on a pipeline (its reply: 1 handed off, 0 fenced off)."""
        deadline = self.now_ms() + int(next_in_s * 1000) + self.grace_ms
        eval_in(pipe, self._update, *self._fenced_call(ref, held, str(deadline), {**fields, "busy": 0, "holder": ""}))

    def _fenced(self, ref: str, held: int | str, deadline: str, fields: dict[str, Any]) -> bool:
        keys, args = self._fenced_call(ref, held, deadline, fields)
        return bool(self._update(keys=keys, args=args))

    def _fenced_call(
        self, ref: str, held: int | str, deadline: str, fields: dict[str, Any]
    ) -> tuple[list[str], list[str | int]]:
        pairs = [v for k, val in fields.items() for v in (k, str(val))]
        exp = (int(deadline) if deadline else self.now_ms()) + self.lease_ms
        args: list[str | int] = [str(held), deadline, ref, self.keys.lease_total(""), exp, *pairs]
        return [self.keys.job(ref), self.keys.watch], args

    def fields(self, ref: str, *names: str) -> dict[str, str]:
        """Some of a job's fields (missing ones left out)."""
        got = self.r.hmget(self.keys.job(ref), list(names))
        return {n: decode(v) for n, v in zip(names, got, strict=True) if v is not None}

    def release(self, gid: str, ref: str) -> None:
        """Give the slot back: the API task is terminal (or was never created)."""
        fp, endpoint = split_gate_id(gid)
        pipe = self.r.pipeline(transaction=True)
        pipe.zrem(self.keys.lease_total(fp), ref)
        pipe.zrem(self.keys.lease(fp, endpoint), ref)
        pipe.execute()

    def hold(self, gid: str, ref: str) -> None:
        """(Re)take the slot for a job known to be active at the API (used when re-driving a poll)."""
        fp, endpoint = split_gate_id(gid)
        exp = self.now_ms() + self.lease_ms
        pipe = self.r.pipeline(transaction=True)
        pipe.zadd(self.keys.lease_total(fp), {ref: exp})
        pipe.zadd(self.keys.lease(fp, endpoint), {ref: exp})
        pipe.execute()

    def retire(self, ref: str) -> None:
        """Forget a job whose row is final: its state and its watch entry (its slot is released first)."""
        pipe = self.r.pipeline(transaction=True)
        self.retire_in(pipe, ref)
        pipe.execute()

    def retire_in(self, pipe: Pipeline, ref: str) -> None:
        """:meth:`retire` queued on a pipeline."""
        pipe.zrem(self.keys.watch, ref)
        pipe.delete(self.keys.job(ref))

    def requeue(self, ref: str, pool_id: str, endpoint: str, gid: str = "", **fields: Any) -> None:
        """Send a job that holds no API task back to the front of its pool's wait list."""
        pipe = self.r.pipeline(transaction=True)
        if gid:
            fp, ep = split_gate_id(gid)
            pipe.zrem(self.keys.lease_total(fp), ref)
            pipe.zrem(self.keys.lease(fp, ep), ref)
        pipe.zrem(self.keys.watch, ref)
        mapping: dict[Any, Any] = {"state": "queued", "busy": "0", "holder": "", **fields}
        pipe.hset(self.keys.job(ref), mapping=mapping)
        pipe.lpush(self.keys.wait(pool_id, endpoint), ref)
        pipe.execute()

    def claim_expired(self, *, limit: int = 100) -> list[StaleJob]:
        """Jobs to re-drive, each with a fresh token (their old messages become stale). Jobs whose
        holder is alive and busy are not among them: their watch and leases are extended instead."""
        now = self.now_ms()
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
            StaleJob(decode(flat[i]), int(flat[i + 1]), decode(flat[i + 2]), decode(flat[i + 3]), decode(flat[i + 4]))
            for i in range(0, len(flat), 5)
        ]

    def webhook_arrived(self, ref: str, task_id: str, result_json: str) -> Grant | None:
        """A webhook announced the end of the job's current task: keep its outcome on the job and
        take a new token (the pending fallback poll becomes stale). Returns the grant to send the
        job's next poll with, or None when the webhook is for another task (late, from an earlier
        submit), a duplicate, or the job is not waiting on the API any more."""
        raw = self._webhook(
            keys=[self.keys.job(ref), self.keys.watch],
            args=[task_id, result_json, ref, self.now_ms() + self.grace_ms],
        )
        if not raw:
            return None
        return Grant(ref, int(raw[0]), split_gate_id(decode(raw[1]))[0])

    # -- looking -----------------------------------------------------------------------------------

    def known_waits(self) -> list[tuple[str, str]]:
        """Every (pool id, endpoint) whose wait list was ever used."""
        return [split_gate_id(decode(g)) for g in self.r.smembers(self.keys.gates)]

    def active(self, fp: str, endpoint: str | None = None) -> int:
        key = self.keys.lease(fp, endpoint) if endpoint else self.keys.lease_total(fp)
        return int(self.r.zcount(key, self.now_ms(), "+inf"))

    def waiting(self, pool_id: str, endpoint: str) -> int:
        return int(self.r.llen(self.keys.wait(pool_id, endpoint)))

    def remove_run_from_wait(self, pool_id: str, endpoint: str, run_id: str) -> list[str]:
        """Take every waiting row of one run out of a wait list (for cancel). Returns their refs.

        One pass in Lua: the other runs keep their order, and a 100,000-row list is not scanned
        once per removed row.
        """
        removed = self._drop_run(keys=[self.keys.wait(pool_id, endpoint)], args=[f"{run_id}:"])
        return [decode(x) for x in removed]
