"""The global slot gate: at most N active Kontext tasks per API key and endpoint, across every worker.

Rows wait for a slot in a Redis list, not in Celery: a waiting row costs one list entry and no task
executions. When a slot frees (a task turned terminal, or a lease expired because its worker died),
:meth:`SlotGate.dispatch` pops waiting rows, gives each a lease, and returns them so the caller can
enqueue their submit tasks. Everything that changes slots runs in one Lua script, so two workers
can never hand out the same slot.

Two sorted sets hold leases (score = expiry in ms): one per key and endpoint (6 for kontext-max) and
one per key across endpoints (24). A lease is renewed by every step of its job and removed when the
API task is terminal; a lease whose worker died expires by itself and its slot is reused.

Every in-flight job also carries a fencing token, ``step``: each task message holds the token it
was sent with and proceeds only if the job's token still matches (then bumps it). A redelivered or
duplicated message finds the token moved on and does nothing. The ``watch`` set holds a deadline per
in-flight job; :meth:`SlotGate.claim_expired` hands jobs whose worker went quiet to the sweeper,
which sends them again with a fresh token.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import redis

from kontext_batch.keys import Keys
from kontext_batch.redisio import batched, decode

__all__ = ["Gate", "Grant", "SlotGate", "StaleJob"]

_DISPATCH: Final = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local n = math.min(tonumber(ARGV[3]) - redis.call('ZCARD', KEYS[2]),
                   tonumber(ARGV[4]) - redis.call('ZCARD', KEYS[1]),
                   tonumber(ARGV[5]))
local out = {}
local exp = now + tonumber(ARGV[2])
for i = 1, n do
  local ref = redis.call('LPOP', KEYS[3])
  if not ref then break end
  redis.call('ZADD', KEYS[1], exp, ref)
  redis.call('ZADD', KEYS[2], exp, ref)
  redis.call('ZADD', KEYS[4], exp, ref)
  local jk = ARGV[6] .. ref
  local step = redis.call('HINCRBY', jk, 'step', 1)
  redis.call('HSET', jk, 'state', 'granted', 'gate', ARGV[7])
  out[#out + 1] = ref
  out[#out + 1] = step
end
return out
"""

# KEYS: job hash, watch. ARGV: token, deadline ms, ref, lease key prefix.
_CLAIM: Final = """
local step = redis.call('HGET', KEYS[1], 'step')
if not step or step ~= ARGV[1] then return false end
redis.call('HINCRBY', KEYS[1], 'step', 1)
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
local gate = redis.call('HGET', KEYS[1], 'gate')
if gate then
  local fp, ep = string.match(gate, '^([^|]*)|(.*)$')
  redis.call('ZADD', ARGV[4] .. fp, 'XX', ARGV[2], ARGV[3])
  redis.call('ZADD', ARGV[4] .. fp .. ':' .. ep, 'XX', ARGV[2], ARGV[3])
end
return redis.call('HGETALL', KEYS[1])
"""

_CLAIM_EXPIRED: Final = """
local refs = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[4]))
local out = {}
for _, ref in ipairs(refs) do
  local jk = ARGV[3] .. ref
  if redis.call('EXISTS', jk) == 0 then
    redis.call('ZREM', KEYS[1], ref)
  else
    redis.call('ZADD', KEYS[1], ARGV[2], ref)
    local step = redis.call('HINCRBY', jk, 'step', 1)
    out[#out + 1] = ref
    out[#out + 1] = step
    out[#out + 1] = redis.call('HGET', jk, 'state') or ''
    out[#out + 1] = redis.call('HGET', jk, 'gate') or ''
  end
end
return out
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


@dataclass(frozen=True)
class Gate:
    """One slot pool: an account (key fingerprint) and an endpoint, with its caps."""

    fp: str
    endpoint: str
    cap: int
    cap_total: int

    @property
    def id(self) -> str:
        return f"{self.fp}|{self.endpoint}"


@dataclass(frozen=True)
class Grant:
    """A job that holds a slot now. Send its submit task with ``token``."""

    ref: str
    token: int


@dataclass(frozen=True)
class StaleJob:
    """An in-flight job whose worker went quiet. Re-drive it with ``token`` according to ``state``."""

    ref: str
    token: int
    state: str
    gate_id: str


class SlotGate:
    """Leases, wait lists and fencing tokens in Redis. Safe to share between threads."""

    def __init__(self, r: redis.Redis, keys: Keys, *, lease_s: float) -> None:
        self.r = r
        self.keys = keys
        self.lease_ms = int(lease_s * 1000)
        self._dispatch = r.register_script(_DISPATCH)
        self._claim = r.register_script(_CLAIM)
        self._claim_expired = r.register_script(_CLAIM_EXPIRED)
        self._drop_run = r.register_script(_DROP_RUN)

    @staticmethod
    def now_ms() -> int:
        return int(time.time() * 1000)

    def enqueue(self, gate: Gate, refs: Iterable[str], *, front: bool = False) -> int:
        """Put rows in the gate's wait list (FIFO; ``front`` for rows that lost their slot)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.sadd(self.keys.gates, gate.id)
        push = pipe.lpush if front else pipe.rpush
        n = 0
        for batch in batched(refs):
            push(self.keys.wait(gate.fp, gate.endpoint), *batch)
            n += len(batch)
        pipe.execute()
        return n

    def dispatch(self, gate: Gate, *, limit: int = 1000) -> list[Grant]:
        """Hand free slots to waiting rows, oldest first. Returns the rows that got one."""
        flat = self._dispatch(
            keys=[
                self.keys.lease_total(gate.fp),
                self.keys.lease(gate.fp, gate.endpoint),
                self.keys.wait(gate.fp, gate.endpoint),
                self.keys.watch,
            ],
            args=[
                self.now_ms(),
                self.lease_ms,
                gate.cap,
                gate.cap_total,
                limit,
                self.keys.job_prefix,
                gate.id,
            ],
        )
        return [Grant(decode(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2)]

    def claim(self, ref: str, token: int) -> dict[str, str] | None:
        """Take the job for one step if ``token`` is current; renews its watch and lease.

        Returns the job's fields, or None when the message is stale (a duplicate or a re-driven job).
        """
        deadline = self.now_ms() + self.lease_ms
        raw = self._claim(
            keys=[self.keys.job(ref), self.keys.watch],
            args=[str(token), deadline, ref, self.keys.lease_total("")],
        )
        if not raw:
            return None
        return {decode(raw[i]): decode(raw[i + 1]) for i in range(0, len(raw), 2)}

    def update(self, ref: str, **fields: Any) -> None:
        self.r.hset(self.keys.job(ref), mapping={k: str(v) for k, v in fields.items()})

    def hold(self, gate_id: str, ref: str) -> None:
        """(Re)take the slot for a job known to be active at the API (used when re-driving a poll)."""
        fp, _, endpoint = gate_id.partition("|")
        exp = self.now_ms() + self.lease_ms
        pipe = self.r.pipeline(transaction=True)
        pipe.zadd(self.keys.lease_total(fp), {ref: exp})
        pipe.zadd(self.keys.lease(fp, endpoint), {ref: exp})
        pipe.execute()

    def release(self, gate_id: str, ref: str) -> None:
        """Give the slot back: the API task is terminal (or was never created)."""
        fp, _, endpoint = gate_id.partition("|")
        pipe = self.r.pipeline(transaction=True)
        pipe.zrem(self.keys.lease_total(fp), ref)
        pipe.zrem(self.keys.lease(fp, endpoint), ref)
        pipe.execute()

    def retire(self, ref: str) -> None:
        """Forget a job whose row is final: its state and its watch entry (its slot is released first)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.zrem(self.keys.watch, ref)
        pipe.delete(self.keys.job(ref))
        pipe.execute()

    def requeue(self, gate: Gate, ref: str) -> None:
        """Send a job that holds no API task back to the front of its wait list."""
        pipe = self.r.pipeline(transaction=True)
        pipe.zrem(self.keys.lease_total(gate.fp), ref)
        pipe.zrem(self.keys.lease(gate.fp, gate.endpoint), ref)
        pipe.zrem(self.keys.watch, ref)
        pipe.hset(self.keys.job(ref), "state", "queued")
        pipe.lpush(self.keys.wait(gate.fp, gate.endpoint), ref)
        pipe.execute()

    def claim_expired(self, *, limit: int = 100) -> list[StaleJob]:
        """Jobs past their watch deadline, each with a fresh token (old messages become stale)."""
        now = self.now_ms()
        flat = self._claim_expired(keys=[self.keys.watch], args=[now, now + self.lease_ms, self.keys.job_prefix, limit])
        return [
            StaleJob(decode(flat[i]), int(flat[i + 1]), decode(flat[i + 2]), decode(flat[i + 3]))
            for i in range(0, len(flat), 4)
        ]

    def known_gates(self) -> list[tuple[str, str]]:
        return [tuple(decode(g).split("|", 1)) for g in self.r.smembers(self.keys.gates)]  # type: ignore[misc]

    def active(self, fp: str, endpoint: str | None = None) -> int:
        key = self.keys.lease(fp, endpoint) if endpoint else self.keys.lease_total(fp)
        return int(self.r.zcount(key, self.now_ms(), "+inf"))

    def waiting(self, fp: str, endpoint: str) -> int:
        return int(self.r.llen(self.keys.wait(fp, endpoint)))

    def remove_run_from_wait(self, fp: str, endpoint: str, run_id: str) -> list[str]:
        """Take every waiting row of one run out of a wait list (for cancel). Returns their refs.

        One pass in Lua: the other runs keep their order, and a 100,000-row list is not scanned
        once per removed row.
        """
        removed = self._drop_run(keys=[self.keys.wait(fp, endpoint)], args=[f"{run_id}:"])
        return [decode(x) for x in removed]
