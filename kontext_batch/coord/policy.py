"""Whether a Redis can be trusted with runs: its eviction policy, its memory and its persistence.

Every row's state, every slot and every credit of a budget live in Redis, and a key that Redis
evicts is a row lost or a run corrupted without a word. So any ``maxmemory-policy`` but
``noeviction`` is refused (:class:`~kontext_batch.errors.ConfigError`: exit 2), unless
``KONTEXT_REDIS_ALLOW_EVICTION=1`` makes it a warning; a Redis without persistence (no AOF, no RDB
snapshots) gets one warning that a restart loses the queue; and a run is refused before anything
is written when it would take Redis past 90 % of its ``maxmemory``.

A run's footprint is estimated from its manifest before anything is written
(:func:`manifest_footprint`, from bytes per row measured by ``benchmarks/redis_sizing.py``), and a
Redis that fills up anyway (``OOM command not allowed when used memory > 'maxmemory'``) becomes one
line naming ``maxmemory`` and what was being written (:func:`out_of_memory`).

Everything is read with ``INFO`` (which managed services allow), and ``CONFIG GET save`` only for
RDB snapshots (which some refuse: then that is said, not guessed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import redis

from kontext_batch.errors import ConfigError

__all__ = [
    "HEADROOM",
    "Footprint",
    "RedisMemory",
    "check_headroom",
    "check_policy",
    "manifest_footprint",
    "out_of_memory",
    "read_memory",
]

#: The share of ``maxmemory`` a run may take Redis to, with its estimate counted.
HEADROOM: Final = 0.9

# What a run holds in Redis per row, measured with benchmarks/redis_sizing.py on Redis 7.0.15
# (jemalloc, 64-bit): used_memory before and after start_run, and MEMORY USAGE of the run's keys,
# for 5,000-100,000 rows of 30- to 3,000-character prompts (a CSV of id, prompt). A waiting row is
# its spec's field in the rows hash (~235 B + 1.13 B per manifest byte: the spec is the row's JSON)
# plus its ref in the wait list (~30 B): 337 B a row at 38 manifest bytes, 1,371 B at 1,010, 3,675 B
# at 3,010. The figures below round that up, so the estimate errs towards refusing.
#: A waiting row's fixed cost: its rows-hash field and its wait-list ref.
ROW_BYTES: Final = 300
#: Each ASCII byte of the manifest (the prompt, mostly) in the row's spec.
ASCII_BYTE_BYTES: Final = 1.2
#: Each non-ASCII byte: the spec's JSON escapes it (``\u00e9`` for 2 bytes, ``\u4e2d`` for 3).
OTHER_BYTE_BYTES: Final = 3.0
#: A finished row's result record (status, output URI, task id, cost, timings), kept beside its spec
#: until the run is pruned: 360 B measured (1,000 rows through the emulator with local workers, a
#: local output folder); about twice that, for longer output URIs and error messages.
RESULT_BYTES: Final = 700


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


@dataclass(frozen=True)
class Footprint:
    """What a manifest will take in Redis once its run has finished (its largest): rows and bytes."""

    rows: int
    bytes: int

    @property
    def what(self) -> str:
        return f"this run of {self.rows:,} rows"


def manifest_footprint(path: Path) -> Footprint:
    """The run's footprint from the manifest file's bytes and line count (one fast read, no parsing).

    Lines over-count rows for prompts that hold line breaks, and a header counts as a row: the
    estimate errs towards refusing. Raises OSError when the file cannot be read."""
    lines = ascii_bytes = other_bytes = 0
    last = b"\n"
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            lines += chunk.count(b"\n")
            ascii_len = len(chunk.translate(None, _NON_ASCII))
            ascii_bytes += ascii_len
            other_bytes += len(chunk) - ascii_len
            last = chunk[-1:]
    lines += last != b"\n"  # a last line with no line break
    rows = max(0, lines - 1)
    total = lines * (ROW_BYTES + RESULT_BYTES) + int(ascii_bytes * ASCII_BYTE_BYTES + other_bytes * OTHER_BYTE_BYTES)
    return Footprint(rows, total)


_NON_ASCII: Final = bytes(range(128, 256))


def out_of_memory(mem: RedisMemory, where: str, writing: str) -> ConfigError:
    """The one line for Redis's ``OOM command not allowed when used memory > 'maxmemory'``."""
    limit = f"its maxmemory ({_mb(mem.maxmemory)})" if mem.maxmemory else "its maxmemory"
    return ConfigError(
        f"Redis at {where} is out of memory: {limit} was reached while writing {writing}. Raise maxmemory, "
        "prune finished runs, or split the manifest; the run was removed, nothing was queued"
    )


def _mb(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB"
