"""A run's spending limit: every submit reserves its price first, and none starts that would pass it.

The reservation is made by the submit's own write before its POST (:meth:`~kontext_batch.coord.jobs.Jobs.submitting`,
``lua/reserve.lua``): one script, so a reservation is never left behind by a job that turned out to
be another step's, and the submit waits on one round trip less.

Per run, in credits: ``budget`` (absent: no limit), ``spent`` (what the API reported, or the price
table's figure for a task that reported nothing) and ``reserved`` (submits under way and tasks whose
cost is not known yet). A reservation succeeds only while ``spent + reserved + price <= budget``,
at the price table's figure: spend passes the budget only by what the API charges above it.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from redis.client import Pipeline

from kontext_batch.coord.keys import Keys
from kontext_batch.coord.redisio import decode

__all__ = ["Budget", "Spend"]


@dataclass(frozen=True)
class Spend:
    """A run's credits: its budget (None: none), spent and reserved."""

    budget: float | None
    spent: float
    reserved: float


class Budget:
    """Reservations against each run's budget in Redis. Thread-safe."""

    def __init__(self, r: redis.Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys

    def set(self, run_id: str, budget: float | None) -> None:
        if budget is None:
            self.r.hdel(self.keys.budget(run_id), "budget")
        else:
            self.r.hset(self.keys.budget(run_id), "budget", str(budget))

    def settle(self, run_id: str, reserved: float, spent: float) -> None:
        """A reservation of ``reserved`` became a cost of ``spent`` (0 when no task was created)."""
        pipe = self.r.pipeline(transaction=True)
        self.settle_in(pipe, run_id, reserved, spent)
        pipe.execute()

    def settle_in(self, pipe: Pipeline, run_id: str, reserved: float, spent: float) -> None:
        """:meth:`settle` queued on a pipeline, which must be a transaction: a reservation checks
        spent + reserved, and must never see the one changed without the other."""
        pipe.hincrbyfloat(self.keys.budget(run_id), "reserved", -reserved)
        if spent:
            pipe.hincrbyfloat(self.keys.budget(run_id), "spent", spent)

    def spend(self, run_id: str) -> Spend:
        raw = {decode(k): decode(v) for k, v in self.r.hgetall(self.keys.budget(run_id)).items()}
        return Spend(
            float(raw["budget"]) if "budget" in raw else None,
            round(float(raw.get("spent", 0)), 4),
            round(max(0.0, float(raw.get("reserved", 0))), 4),
        )

    def delete(self, run_id: str) -> None:
        self.r.delete(self.keys.budget(run_id))
