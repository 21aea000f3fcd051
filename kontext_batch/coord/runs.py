"""Run state in Redis: metadata, the rows' job specs, and each row's final result, written once.

Completion is counted, not chorded: recording a row's result is one Lua call that writes it only if
the row has none yet (``HSETNX``) and then bumps the run's counter, so each row counts once. Four
paths then finalize a run (:func:`kontext_batch.steps.complete.finalize`): the step whose record
brings the counter to the total, the sweeper (for a complete run still open: a reply lost, a writer
killed), the enqueue pass (a run complete as soon as it is queued) and ``cancel``. Several may try
at once; a short claim in Redis (:meth:`RunStore.claim_finalizing`) lets one of them write
``results.csv`` at a time. Finalizing is safe to repeat: a later caller that takes the claim writes
the same file again.

A Redis with an eviction policy, or a flush, can take any of a run's keys away. Each read of a run
(:meth:`RunStore.info`) checks, in the same MULTI, that what is left still holds together
(:func:`missing_state`): the metadata has its ``total`` (a step's counter would recreate a vanished
hash without it), the rows hash has ``total`` rows once queued, and the
results hash, the done counter and the status counts agree, as ``record.lua`` and ``reopen.lua``
keep them. A run that fails the check is lost (:attr:`RunInfo.lost`): it reads as ``failed``, and
:meth:`RunStore.mark_lost` records it so on what survives of the run.

Retention: at a run's end every key of it gets the same TTL (:meth:`RunStore.retain`,
``KONTEXT_RUN_RETENTION_S``), so they go together, and a tombstone (``run-gone``, where its
results.csv went) outlives them. The runs index is a sorted set, whose members cannot expire: the
run is listed in ``runs:ended`` by when its keys expire, and the sweep drops it from the index once
they have (:meth:`RunStore.forget_expired`). ``retry`` makes the keys permanent again while the run
runs (:meth:`RunStore.persist`); ``prune`` deletes a finished run's keys at once (:meth:`RunStore.prune`).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal

import redis
from redis.client import Pipeline

from kontext_batch.coord.keys import Keys
from kontext_batch.coord.redisio import batched, decode, eval_in, existing, lua
from kontext_batch.errors import ConfigError, RunStateLost

__all__ = ["FINAL_STATUSES", "GONE_TTL_S", "RowStatus", "RunInfo", "RunStore", "missing_state", "new_run_id"]

RowStatus = Literal["succeeded", "failed", "moderated", "invalid", "skipped", "cancelled", "budget"]
FINAL_STATUSES: Final[tuple[RowStatus, ...]] = (
    "succeeded",
    "failed",
    "moderated",
    "invalid",
    "skipped",
    "cancelled",
    "budget",
)

#: How long the tombstone of a run whose state left Redis outlives it: ``status`` can still say
#: where its results.csv went, for a quarter after the run itself is gone.
GONE_TTL_S: Final = 90 * 86_400

_RECORD: Final = lua("record.lua")
_REOPEN: Final = lua("reopen.lua")


def new_run_id() -> str:
    """Sortable by time, unique without coordination: ``20261121T224501-3f9a1c``."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


@dataclass(frozen=True)
class RunInfo:
    """A run as ``status`` shows it."""

    id: str
    meta: dict[str, str]
    counts: dict[str, int]
    ndone: int
    #: What of the run's state Redis no longer holds ("" while it is whole): see :func:`missing_state`.
    lost: str = ""

    @property
    def total(self) -> int:
        return int(self.meta.get("total", 0) or 0)

    @property
    def status(self) -> str:
        return "failed" if self.lost else self.meta.get("status", "unknown")

    @property
    def finished(self) -> bool:
        if self.lost:  # for good: nothing left of it can be finished or trusted
            return True
        return self.status in ("finished", "cancelled", "failed") and "finished_at" in self.meta

    @property
    def lost_reason(self) -> str:
        """The line a lost run shows (``status``, its end, ``stopped_reason``); "" while it is whole."""
        return f"{RunStateLost.REASON}: {self.lost}" if self.lost else ""


def missing_state(  # noqa: PLR0911 - one check per key of the run, each naming what it lost
    meta: dict[str, str], counts_sum: int, ndone: int | None, n_rows: int, n_results: int
) -> str:
    """What is missing from a run read as these values (all from one MULTI), or "" when they agree.

    ``ndone`` is None when the done counter's key does not exist. A run recorded lost
    (:meth:`RunStore.mark_lost`) stays lost, whatever its keys hold since.
    """
    if meta.get("lost"):
        return meta["lost"]
    if "total" not in meta:
        return "its metadata is gone"
    total = int(meta["total"] or 0)
    if meta.get("status") != "enqueuing" and n_rows < total:
        return f"its rows hash holds {n_rows} of its {total} rows"
    if ndone is None:
        return f"its done counter is gone ({n_results} row(s) final)" if n_results else ""
    if n_results != ndone:
        return f"{n_results} row result(s) kept for {ndone} row(s) counted final"
    if counts_sum != ndone:
        return f"its status counts add up to {counts_sum}, not the {ndone} row(s) final"
    return ""


class RunStore:
    """Reads and writes one Redis namespace's runs. Thread-safe (redis-py pools connections)."""

    def __init__(self, r: redis.Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys
        self._record = r.register_script(_RECORD)
        self._reopen = r.register_script(_REOPEN)
        self._meta_cache: dict[str, tuple[float, dict[str, str]]] = {}
        self._meta_lock = threading.Lock()

    def register(self, run_id: str, meta: dict[str, Any]) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.keys.run(run_id), mapping={k: _enc(v) for k, v in meta.items()})
        pipe.zadd(self.keys.runs, {run_id: time.time()})
        pipe.sadd(self.keys.open_runs, run_id)
        pipe.execute()

    def update(self, run_id: str, **fields: Any) -> None:
        self.r.hset(self.keys.run(run_id), mapping={k: _enc(v) for k, v in fields.items()})

    def update_in(self, pipe: Pipeline, run_id: str, **fields: Any) -> None:
        """:meth:`update` queued on a pipeline."""
        pipe.hset(self.keys.run(run_id), mapping={k: _enc(v) for k, v in fields.items()})

    def clear(self, run_id: str, *fields: str) -> None:
        if fields:
            self.r.hdel(self.keys.run(run_id), *fields)

    def meta(self, run_id: str) -> dict[str, str]:
        return {decode(k): decode(v) for k, v in self.r.hgetall(self.keys.run(run_id)).items()}

    def recent_meta(self, run_id: str, max_age_s: float = 1.0) -> dict[str, str]:
        """The run's metadata as read at most ``max_age_s`` ago by this process: every step of every
        job reads it, and what steps need (output, webhook, stop flags) may lag by a second. A step
        that would end a row on a cached stop asks again with ``max_age_s=0`` (``retry`` lifts stops)."""
        now = time.monotonic()
        with self._meta_lock:
            hit = self._meta_cache.get(run_id)
        if hit is not None and now - hit[0] < max_age_s:
            return hit[1]
        meta = self.meta(run_id)
        with self._meta_lock:
            if len(self._meta_cache) > 1000:
                self._meta_cache.clear()
            self._meta_cache[run_id] = (now, meta)
        return meta

    def exists(self, run_id: str) -> bool:
        return bool(self.r.exists(self.keys.run(run_id)))

    def known(self, run_id: str) -> bool:
        """The run has metadata, or was registered and lost it (still listed in the runs index)."""
        return self.exists(run_id) or self.r.zscore(self.keys.runs, run_id) is not None

    def put_rows(self, run_id: str, rows: Iterable[tuple[int, dict[str, Any]]]) -> int:
        key = self.keys.rows(run_id)
        n = 0
        for batch in batched(rows):
            self.r.hset(key, mapping={str(row): json.dumps(spec, separators=(",", ":")) for row, spec in batch})
            n += len(batch)
        return n

    def row(self, run_id: str, row: int) -> dict[str, Any]:
        return self.parse_row(self.r.hget(self.keys.rows(run_id), str(row)), run_id, row)

    def row_in(self, pipe: Pipeline, run_id: str, row: int) -> None:
        """:meth:`row` queued on a pipeline; read its reply with :meth:`parse_row`."""
        pipe.hget(self.keys.rows(run_id), str(row))

    @staticmethod
    def parse_row(raw: Any, run_id: str, row: int) -> dict[str, Any]:
        """A row's job spec from :meth:`row_in`'s reply. ConfigError when this Redis has no such row
        (as for an unknown run: every queued row's spec is written before it waits)."""
        if raw is None:
            raise ConfigError(f"run {run_id} has no row {row}")
        out: dict[str, Any] = json.loads(raw)
        return out

    def spec_or_none(self, run_id: str, row: int) -> dict[str, Any] | None:
        """A row's job spec, or None when Redis has no such row (a lost rows hash)."""
        raw = self.r.hget(self.keys.rows(run_id), str(row))
        return None if raw is None else self.parse_row(raw, run_id, row)

    def set_row(self, run_id: str, row: int, spec: dict[str, Any]) -> None:
        self.r.hset(self.keys.rows(run_id), str(row), json.dumps(spec, separators=(",", ":")))

    def record(self, run_id: str, row: int, result: dict[str, Any]) -> int | None:
        """Write a row's final result once. Returns the run's new done-count, or None if already final."""
        keys, args = self._record_call(run_id, row, result)
        return self.recorded(self._record(keys=keys, args=args))

    def record_in(self, pipe: Pipeline, run_id: str, row: int, result: dict[str, Any]) -> None:
        """:meth:`record` queued on a pipeline; read its reply with :meth:`recorded`."""
        eval_in(pipe, self._record, *self._record_call(run_id, row, result))

    def _record_call(self, run_id: str, row: int, result: dict[str, Any]) -> tuple[list[str], list[str]]:
        keys = [self.keys.results(run_id), self.keys.ndone(run_id), self.keys.counts(run_id)]
        return keys, [str(row), json.dumps(result, separators=(",", ":")), result["status"]]

    @staticmethod
    def recorded(raw: Any) -> int | None:
        """The run's new done-count from a record's reply, or None when the row was final already."""
        return None if int(raw) < 0 else int(raw)

    def count(self, run_id: str, name: str, n: int = 1) -> None:
        """Add to one of the run's counters (kept in its metadata)."""
        self.r.hincrby(self.keys.run(run_id), name, n)

    def count_in(self, pipe: Pipeline, run_id: str, name: str, n: int = 1) -> None:
        """:meth:`count` queued on a pipeline."""
        pipe.hincrby(self.keys.run(run_id), name, n)

    def first_time(self, run_id: str, what: str) -> bool:
        """True the first time ``what`` is said of this run (to log a thing once per run)."""
        return bool(self.r.hsetnx(self.keys.run(run_id), f"seen:{what}", "1"))

    def open_runs(self) -> list[str]:
        """Runs not finalized yet."""
        return sorted(decode(x) for x in self.r.smembers(self.keys.open_runs))

    def is_final(self, run_id: str, row: int) -> bool:
        return bool(self.r.hexists(self.keys.results(run_id), str(row)))

    def is_final_in(self, pipe: Pipeline, run_id: str, row: int) -> None:
        """:meth:`is_final` queued on a pipeline (its reply: 1 when final)."""
        pipe.hexists(self.keys.results(run_id), str(row))

    def total(self, run_id: str) -> int:
        return int(self.r.hget(self.keys.run(run_id), "total") or 0)

    def claim_finalizing(self, run_id: str, ttl_s: int = 300) -> bool:
        """Become the run's one results writer for up to ``ttl_s`` (a writer that dies lets it expire)."""
        return bool(self.r.set(self.keys.finalizing(run_id), "1", nx=True, ex=ttl_s))

    def release_finalizing(self, run_id: str) -> None:
        self.r.delete(self.keys.finalizing(run_id))

    def delete(self, run_id: str) -> None:
        """Forget a run that was never queued (its manifest was refused part-way through)."""
        pipe = self.r.pipeline(transaction=True)
        for key in (
            self.keys.run(run_id),
            self.keys.rows(run_id),
            self.keys.results(run_id),
            self.keys.counts(run_id),
            self.keys.ndone(run_id),
        ):
            pipe.delete(key)
        pipe.zrem(self.keys.runs, run_id)
        pipe.srem(self.keys.open_runs, run_id)
        pipe.execute()

    def run_keys(self, run_id: str) -> list[str]:
        """Every key that holds the run's state (the budget's too: it is the run's alone)."""
        k = self.keys
        return [k.run(run_id), k.rows(run_id), k.results(run_id), k.counts(run_id), k.ndone(run_id), k.budget(run_id)]

    def retain(self, run_id: str, retention_s: float) -> None:
        """Let the ended run's keys expire ``retention_s`` from now, all at once, and keep its
        tombstone beyond them. Repeating it (a later finalize) starts the clock again."""
        ttl = max(1, int(retention_s))
        now = time.time()
        output, results_uri, status = (
            decode(v) if v is not None else ""
            for v in self.r.hmget(self.keys.run(run_id), ["output", "results_uri", "status"])
        )
        gone = self.keys.run_gone(run_id)
        pipe = self.r.pipeline(transaction=True)
        for key in self.run_keys(run_id):
            pipe.expire(key, ttl)
        pipe.zadd(self.keys.ended_runs, {run_id: now + ttl})
        pipe.delete(gone)
        pipe.hset(
            gone, mapping={"finished_at": _enc(now), "output": output, "results_uri": results_uri, "status": status}
        )
        pipe.expire(gone, ttl + GONE_TTL_S)
        pipe.execute()

    def persist(self, run_id: str) -> None:
        """Keep the run's keys for good again (``retry`` of an ended run): it runs, and it ends again."""
        pipe = self.r.pipeline(transaction=True)
        for key in self.run_keys(run_id):
            pipe.persist(key)
        pipe.zrem(self.keys.ended_runs, run_id)
        pipe.delete(self.keys.run_gone(run_id))
        pipe.execute()

    def forget_expired(self, now: float | None = None) -> int:
        """Drop from the runs index the ended runs whose keys have expired (the sweep's; cheap: one
        range read of ``runs:ended`` when none is due). Returns how many were dropped."""
        due = [decode(x) for x in self.r.zrangebyscore(self.keys.ended_runs, "-inf", now or time.time())]
        if not due:
            return 0
        there = existing(self.r, [self.keys.run(run_id) for run_id in due])
        gone = [run_id for run_id, kept in zip(due, there, strict=True) if not kept]
        if gone:
            pipe = self.r.pipeline(transaction=True)
            pipe.zrem(self.keys.runs, *gone)
            pipe.srem(self.keys.open_runs, *gone)
            pipe.zrem(self.keys.ended_runs, *gone)
            pipe.execute()
        return len(gone)

    def prune(self, run_id: str, *, finished_before: float) -> int | None:
        """Delete a finished run's keys now, leaving its tombstone. Returns how many keys went, or
        None (and touches nothing) when the run is not finished before ``finished_before``: one
        that a ``retry`` reopens meanwhile is left alone (the read and the delete are one WATCH)."""
        key = self.keys.run(run_id)
        with self.r.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(key)  # type: ignore[no-untyped-call]
                meta = {decode(k): decode(v) for k, v in pipe.hgetall(key).items()}
                finished_at = float(meta.get("finished_at") or 0)
                if (
                    not finished_at
                    or finished_at > finished_before
                    or meta.get("status") not in ("finished", "cancelled", "failed")
                ):
                    return None
                gone = self.keys.run_gone(run_id)
                pipe.multi()
                for k in (*self.run_keys(run_id), self.keys.finalizing(run_id)):
                    pipe.delete(k)
                pipe.delete(gone)
                pipe.hset(
                    gone,
                    mapping={
                        "finished_at": _enc(finished_at),
                        "output": meta.get("output", ""),
                        "results_uri": meta.get("results_uri", ""),
                        "status": meta.get("status", ""),
                        "pruned_at": _enc(time.time()),
                    },
                )
                pipe.expire(gone, GONE_TTL_S)
                pipe.zrem(self.keys.runs, run_id)
                pipe.srem(self.keys.open_runs, run_id)
                pipe.zrem(self.keys.ended_runs, run_id)
                got = pipe.execute()
            except redis.WatchError:
                return None
        return sum(int(n) for n in got[: len(self.run_keys(run_id)) + 1])

    def all_runs(self) -> list[str]:
        """Every run in the index, oldest first."""
        return [decode(x) for x in self.r.zrange(self.keys.runs, 0, -1)]

    def gone(self, run_id: str) -> dict[str, str]:
        """The tombstone of a run whose state left Redis (pruned or expired): where its results went.
        Empty for a run Redis still holds, and for one it never had (or forgot a quarter ago)."""
        pipe = self.r.pipeline(transaction=True)
        # Any key left means the run is still here, if lost (its metadata evicted): not gone. Its
        # keys expire together, so an expired run has none.
        pipe.exists(*self.run_keys(run_id))
        pipe.hgetall(self.keys.run_gone(run_id))
        there, raw = pipe.execute()
        return {} if there else {decode(k): decode(v) for k, v in raw.items()}

    def reopen(self, run_id: str, rows: Iterable[int], statuses: Iterable[str]) -> list[int]:
        """Forget the results of these rows if their status is one of ``statuses`` (for ``retry``)."""
        wanted = list(statuses)
        return [
            row
            for row in rows
            if self._reopen(
                keys=[self.keys.results(run_id), self.keys.ndone(run_id), self.keys.counts(run_id)],
                args=[str(row), *wanted],
            )
        ]

    def info(self, run_id: str) -> RunInfo:
        return self.infos([run_id])[0]

    def infos(self, run_ids: Iterable[str]) -> list[RunInfo]:
        """:meth:`info` of each run, in one round trip. One MULTI: a record landing between two of
        the reads would otherwise look like counters that disagree (a lost key)."""
        ids = list(run_ids)
        if not ids:
            return []
        pipe = self.r.pipeline(transaction=True)
        for run_id in ids:
            pipe.hgetall(self.keys.run(run_id))
            pipe.hgetall(self.keys.counts(run_id))
            pipe.get(self.keys.ndone(run_id))
            pipe.hlen(self.keys.rows(run_id))
            pipe.hlen(self.keys.results(run_id))
        got = pipe.execute()
        out = []
        for i, run_id in enumerate(ids):
            raw_meta, raw_counts, raw_ndone, n_rows, n_results = got[5 * i : 5 * i + 5]
            meta = {decode(k): decode(v) for k, v in raw_meta.items()}
            counts = {decode(k): int(v) for k, v in raw_counts.items()}
            ndone = None if raw_ndone is None else int(raw_ndone)
            lost = missing_state(meta, sum(counts.values()), ndone, int(n_rows), int(n_results))
            out.append(
                RunInfo(
                    id=run_id,
                    meta=meta,
                    counts={k: v for k, v in counts.items() if v},
                    ndone=ndone or 0,
                    lost=lost,
                )
            )
        return out

    def mark_lost(self, run_id: str, what: str) -> bool:
        """Record that the run's state was lost (``what`` of it): it ends ``failed``, with the reason,
        and leaves the open runs. True for the caller that recorded it first.

        Written into what is left of its metadata (recreated if it went), so that every process
        reads the same end; a run whose metadata goes again is still found lost by its next read.
        """
        key = self.keys.run(run_id)
        if not self.r.hsetnx(key, "lost", what):
            self.close_run(run_id)
            return False
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(
            key,
            mapping={
                "status": "failed",
                "stopped": "lost",
                "stopped_reason": f"{RunStateLost.REASON}: {what}",
                "finished_at": _enc(time.time()),
            },
        )
        pipe.srem(self.keys.open_runs, run_id)
        pipe.execute()
        return True

    def reopen_run(self, run_id: str) -> None:
        self.r.sadd(self.keys.open_runs, run_id)

    def close_run(self, run_id: str) -> None:
        self.r.srem(self.keys.open_runs, run_id)

    def complete_but_open(self) -> list[str]:
        """Open runs whose every row is final: their results file is due (a lost reply can skip it)."""
        ids = [decode(x) for x in self.r.smembers(self.keys.open_runs)]
        if not ids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for run_id in ids:
            pipe.hget(self.keys.run(run_id), "total")
            pipe.hget(self.keys.run(run_id), "status")
            pipe.get(self.keys.ndone(run_id))
        got = pipe.execute()
        return [
            run_id
            for i, run_id in enumerate(ids)
            if got[3 * i] is not None
            and decode(got[3 * i + 1]) != "enqueuing"
            and int(got[3 * i + 2] or 0) >= int(got[3 * i])
        ]

    def list_runs(self, limit: int = 20) -> list[str]:
        return [decode(x) for x in self.r.zrevrange(self.keys.runs, 0, limit - 1)]

    def iter_results(self, run_id: str, total: int, *, batch: int = 1000) -> Iterator[tuple[int, Any, Any]]:
        """``(row, spec, result)`` for rows 1..total in manifest order; result is None while pending."""
        for start in range(1, total + 1, batch):
            rows = [str(i) for i in range(start, min(start + batch, total + 1))]
            pipe = self.r.pipeline(transaction=False)
            pipe.hmget(self.keys.rows(run_id), rows)
            pipe.hmget(self.keys.results(run_id), rows)
            specs, results = pipe.execute()
            for i, spec, res in zip(rows, specs, results, strict=True):
                yield (
                    int(i),
                    json.loads(spec) if spec else None,
                    json.loads(res) if res else None,
                )

    def results_of(self, run_id: str, rows: Iterable[int]) -> dict[int, dict[str, Any]]:
        """The final results of these rows (rows with none left out)."""
        out: dict[int, dict[str, Any]] = {}
        for chunk in batched(rows):
            got = self.r.hmget(self.keys.results(run_id), [str(r) for r in chunk])
            out.update({r: json.loads(raw) for r, raw in zip(chunk, got, strict=True) if raw})
        return out

    def rows_without_result(self, run_id: str) -> list[int]:
        """Rows of the run (as written so far) that have no final result yet."""
        written = {int(decode(k)) for k in self.r.hkeys(self.keys.rows(run_id))}
        final = {int(decode(k)) for k in self.r.hkeys(self.keys.results(run_id))}
        return sorted(written - final)

    def rows_written(self, run_id: str) -> int:
        return int(self.r.hlen(self.keys.rows(run_id)))

    def rows_with_status(self, run_id: str, statuses: Iterable[str]) -> list[int]:
        wanted = set(statuses)
        out: list[int] = []
        for field, raw in self.r.hscan_iter(self.keys.results(run_id), count=1000):
            if json.loads(raw).get("status") in wanted:
                out.append(int(field))
        return sorted(out)


def _enc(v: Any) -> str:
    if isinstance(v, str):
        return v
    return json.dumps(v)
