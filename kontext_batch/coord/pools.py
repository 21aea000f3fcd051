"""The pool registry: which API keys each run may use, and which keys the API has refused.

A run is bound to a *pool* of key fingerprints (often one) when it is queued; its rows wait in the
pool's wait lists (:mod:`~kontext_batch.coord.slots`) and take a slot on any of its keys. A key the
API refuses (401/403, or 402 when out of credits) is marked out, for every pool, until ``retry``
clears it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass

import redis

from kontext_batch.coord.keys import Keys
from kontext_batch.coord.redisio import decode
from kontext_batch.errors import ConfigError

__all__ = ["Pool", "Pools"]


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


class Pools:
    """Registered pools and refused keys in Redis, with a per-process cache. Safe to share between threads."""

    def __init__(self, r: redis.Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys
        self._pools: dict[str, Pool] = {}
        self._keys_out: tuple[float, dict[str, str]] | None = None

    def register_pool(self, pool: Pool) -> None:
        self.r.hset(self.keys.pools, pool.id, json.dumps(pool.fps))
        self._pools[pool.id] = pool

    def pool(self, pool_id: str) -> Pool:
        """A pool by id (cached: a pool never changes). ConfigError if this Redis has no such pool:
        every run registers its pool before it queues a row, so its data was lost or edited."""
        found = self._pools.get(pool_id)
        if found is None:
            raw = self.r.hget(self.keys.pools, pool_id)
            if raw is None:
                raise ConfigError(f"no key pool {pool_id!r}")
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
