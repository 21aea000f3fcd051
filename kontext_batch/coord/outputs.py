"""The lock that serializes the merges into one output's results.csv.

Every run into an output merges its lines into the output's ``results.csv`` (read, merge, write:
:mod:`kontext_batch.steps.ledger`); two runs finalizing into one output at once would each write
what it read, and one's rows would be lost. Object stores offer no compare-and-swap on all backends
(S3's conditional overwrite is recent, a local folder has none), so the merge holds a short Redis
lock named by the output's URL instead. It expires, so a finalizer killed mid-merge holds it no
longer than ``ttl_s``; redis-py's lock releases only its own token.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Final

import redis
from redis.exceptions import LockError

from kontext_batch.coord.keys import Keys
from kontext_batch.errors import OutputBusy

__all__ = ["LOCK_TTL_S", "LOCK_WAIT_S", "hold_output"]

#: Longest one merge may hold the lock: reading and writing two objects of a 40,000-row night.
LOCK_TTL_S: Final = 120.0
#: Longest a finalize waits for another's merge before it leaves its run to the next sweep.
LOCK_WAIT_S: Final = 30.0


@contextmanager
def hold_output(
    r: redis.Redis, keys: Keys, url: str, *, ttl_s: float = LOCK_TTL_S, wait_s: float | None = None
) -> Iterator[None]:
    """Hold the output's merge lock for the block. Raises OutputBusy when another holds it past
    ``wait_s`` (default :data:`LOCK_WAIT_S`, read at each call)."""
    wait_s = LOCK_WAIT_S if wait_s is None else wait_s
    lock = r.lock(keys.output_lock(url), timeout=ttl_s, sleep=0.05, blocking_timeout=wait_s)
    if not lock.acquire():
        raise OutputBusy(url, wait_s)
    try:
        yield
    finally:
        # It may have expired mid-merge (a very slow store): then another holds it now, and keeps it.
        with suppress(LockError):
            lock.release()
