"""Whether a Redis can be trusted with runs: its eviction policy, its memory and its persistence.

Every row's state, every slot and every credit of a budget live in Redis, and a key that Redis
evicts is a row lost or a run corrupted without a word. So any ``maxmemory-policy`` but
``noeviction`` is refused (:class:`~kontext_batch.errors.ConfigError`: exit 2), unless
``KONTEXT_REDIS_ALLOW_EVICTION=1`` makes it a warning; a Redis without persistence (no AOF, no RDB
snapshots) gets one warning that a restart loses the queue; and a run is refused before anything
is written when it would take Redis past 90 % of its ``maxmemory``.

Everything is read with ``INFO`` (which managed services allow), and ``CONFIG GET save`` only for
RDB snapshots (which some refuse: then that is said, not guessed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import redis

from kontext_batch.errors import ConfigError

__all__ = ["HEADROOM", "RedisMemory", "check_headroom", "check_policy", "read_memory"]

#: The share of ``maxmemory`` a run may take Redis to, with its estimate counted.
HEADROOM: Final = 0.9


@dataclass(frozen=True)
class RedisMemory:
    """What one look at a Redis said. ``None``: it could not be read (a managed service refused)."""

    policy: str | None
    maxmemory: int
    used: int
    aof: bool | None
    rdb: bool | None

    @property
    def evicts(self) -> bool:
        return self.policy is not None and self.policy != "noeviction"

    @property
    def persistent(self) -> bool | None:
        if self.aof or self.rdb:
            return True
        if self.aof is None or self.rdb is None:
            return None
        return False


def read_memory(r: redis.Redis) -> RedisMemory:
    """Read the eviction policy, memory and persistence settings (one INFO, one CONFIG GET)."""
    try:
        mem = r.info("memory")
        persistence = r.info("persistence")
    except redis.ResponseError:
        return RedisMemory(None, 0, 0, None, None)
    policy = mem.get("maxmemory_policy")
    aof = persistence.get("aof_enabled")
    try:
        save = r.config_get("save").get("save")
    except redis.ResponseError:  # CONFIG is refused by many managed services
        save = None
    return RedisMemory(
        policy=str(policy) if policy is not None else None,
        maxmemory=int(mem.get("maxmemory", 0) or 0),
        used=int(mem.get("used_memory", 0) or 0),
        aof=bool(int(aof)) if aof is not None else None,
        rdb=None if save is None else bool(str(save).strip()),
    )


def check_policy(mem: RedisMemory, where: str, *, allow_eviction: bool, embedded: bool = False) -> list[str]:
    """Refuse an evicting Redis (ConfigError, one line naming the policy and the fix); return the
    warnings to show once: eviction allowed anyway, an unreadable policy, no persistence."""
    warnings: list[str] = []
    if mem.policy is None:
        warnings.append(
            f"Redis at {where}: its maxmemory-policy could not be read (INFO refused); "
            "kontext-batch needs noeviction: an evicted key loses rows"
        )
    elif mem.evicts:
        what = (
            f"Redis at {where} evicts keys under memory pressure (maxmemory-policy {mem.policy}), "
            "and an evicted key loses rows and corrupts runs"
        )
        if not allow_eviction:
            raise ConfigError(
                f"{what}: set maxmemory-policy noeviction (CONFIG SET maxmemory-policy noeviction, redis.conf, "
                "or your provider's parameter group), or KONTEXT_REDIS_ALLOW_EVICTION=1 to go on anyway"
            )
        warnings.append(f"{what}; going on because KONTEXT_REDIS_ALLOW_EVICTION is set")
    if not embedded and mem.persistent is False:
        warnings.append(
            f"Redis at {where} keeps nothing on disk (no AOF, no RDB snapshots): a restart loses every queued "
            "row and run; turn on appendonly yes"
        )
    return warnings


def check_headroom(mem: RedisMemory, need_bytes: int, where: str, what: str) -> None:
    """Refuse (ConfigError) when ``need_bytes`` more would take Redis past HEADROOM of its maxmemory."""
    if mem.maxmemory <= 0:
        return
    limit = int(mem.maxmemory * HEADROOM)
    if mem.used + need_bytes > limit:
        raise ConfigError(
            f"Redis at {where} has {_mb(mem.used)} of {_mb(mem.maxmemory)} maxmemory in use, and {what} needs about "
            f"{_mb(need_bytes)} more: past {HEADROOM:.0%} of maxmemory. Raise maxmemory to at least "
            f"{_mb(int((mem.used + need_bytes) / HEADROOM) + 1)}, prune finished runs, or split the manifest; "
            "nothing was queued"
        )


def _mb(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB"
