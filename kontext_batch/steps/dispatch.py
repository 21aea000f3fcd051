"""Hand free slots to waiting rows and send their submit tasks to workers holding the granted key.

Below both sides: the enqueue side (a new run, ``retry``) and the workers (a slot freed, the sweeper)
call it alike. Only keys that a live worker holds, and that the API has not refused, take rows: a
row of a key nobody holds waits in its list, and is never run with another key.
"""

from __future__ import annotations

import random

from kontext_batch.coord.jobs import Grant
from kontext_batch.coord.nudges import nudge
from kontext_batch.coord.slots import KeySlot
from kontext_batch.runtime import Runtime

__all__ = ["dispatch", "hand_over", "live_slots"]


def live_slots(rt: Runtime, pool_id: str, endpoint: str) -> list[KeySlot]:
    """The pool's keys that may take rows now, in random order so that rows spread over them."""
    out = rt.pools.keys_out()
    live = rt.holders.live_keys(fp for fp in rt.pools.pool(pool_id).fps if fp not in out)
    slots = [KeySlot(fp, caps.cap_for(endpoint), caps.total) for fp, caps in live.items()]
    random.shuffle(slots)
    return slots


def dispatch(
    rt: Runtime,
    pool_id: str,
    endpoint: str,
    *,
    keep_one: bool = False,
    release: tuple[str, str] | None = None,
) -> Grant | None:
    """Give free slots of the pool's live keys to waiting rows and send their submit tasks.

    With ``keep_one`` the first grant is returned instead of sent, for the caller to submit itself
    (it must hold that grant's key). ``release`` (slot id, ref) frees that job's slot first.
    """
    grants = rt.slots.dispatch(pool_id, endpoint, live_slots(rt, pool_id, endpoint), release=release)
    kept = None
    if keep_one:
        kept = next((g for g in grants if g.fp in rt.held), None)
        grants = [g for g in grants if g is not kept]
    for g in grants:
        rt.scheduler.submit(g.ref, g.token, g.fp)
    return kept


def hand_over(rt: Runtime, pool_id: str, endpoint: str) -> None:
    """Rows just queued: a nudge has the listening workers dispatch them at once
    (:mod:`kontext_batch.coord.nudges`); with none listening, they are dispatched here."""
    if nudge(rt.redis, rt.keys, pool_id, endpoint) == 0:
        dispatch(rt, pool_id, endpoint)
