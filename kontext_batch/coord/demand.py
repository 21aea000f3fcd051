"""The demand signal an autoscaler reads: a Redis list of fixed name, ``kb:demand``, whose length is
the rows not final yet across every open run (waiting for a slot, in flight, or waiting for a key no
live worker holds).

KEDA's ``redis`` trigger scales the workers on that length (``listName: kb:demand``), down to zero
when it is 0. The list's items mean nothing; only its length does. It is set from the runs'
counters, not counted up and down row by row, so a lost or repeated update cannot leave it wrong
for longer than one sweep: ``run`` and ``retry`` set it when they queue (no worker may be running
to do it), and every worker's sweeper sets it again each second.
"""

from __future__ import annotations

from typing import Final

import redis

from kontext_batch.coord.keys import Keys
from kontext_batch.coord.redisio import lua
from kontext_batch.coord.runs import RunStore

__all__ = ["demand_key", "rows_open", "set_demand", "sync_demand"]

_SET: Final = lua("set_demand.lua")


def demand_key(keys: Keys) -> str:
    return keys.demand


def rows_open(runs: RunStore) -> int:
    """Rows of open runs that are not final yet."""
    n = 0
    for run_id in runs.open_runs():
        info = runs.info(run_id)
        n += max(0, info.total - info.ndone)
    return n


def set_demand(r: redis.Redis, keys: Keys, rows: int) -> None:
    r.eval(_SET, 1, demand_key(keys), max(0, int(rows)))


def sync_demand(r: redis.Redis, keys: Keys, runs: RunStore) -> int:
    """Set the signal from the open runs' counters; returns it."""
    n = rows_open(runs)
    set_demand(r, keys, n)
    return n
