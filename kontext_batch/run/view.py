"""Look at a run: one view of it (``status``), or follow it until it ends (``--wait``, ``follow``).

Nothing here prints: :func:`follow` reports through a callback and returns a :class:`RunOutcome`.
A run whose state Redis lost ends the following at once, as ``lost``: no look at it is reported,
since its counts can no longer be trusted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from kontext_batch.coord.budget import Spend
from kontext_batch.coord.ends import EndWatch
from kontext_batch.coord.runs import RunInfo
from kontext_batch.errors import Interrupted
from kontext_batch.runtime import Runtime

__all__ = ["KeyState", "Pass", "Progress", "RunOutcome", "RunView", "follow", "outcome_of", "passes", "view_run"]


@dataclass(frozen=True)
class KeyState:
    """One key of a run's pool: is a live worker holding it, and has the API refused it."""

    fp: str
    live: bool
    active: int
    refused: str | None

    @property
    def note(self) -> str:
        if self.refused:
            return f"left the pool: {self.refused}"
        return f"{self.active} active" if self.live else "waiting: no live worker holds this key"


@dataclass(frozen=True)
class RunView:
    """What ``status``, and each look while following, shows of a run: its counts, its spend and the
    state of its keys."""

    info: RunInfo
    spend: Spend
    keys: tuple[KeyState, ...]
    waiting: int

    @property
    def possible_duplicates(self) -> int:
        return int(self.info.meta.get("possible_duplicates", 0) or 0)


@dataclass(frozen=True)
class Pass:
    """One pass over a run's rows: the first (from the run's start), then one per ``retry`` of the
    run once it had ended (from the retry). It ends when its last row became final."""

    started_at: float
    ended_at: float | None  # None: under way

    def duration_s(self, now: float | None = None) -> float:
        end = self.ended_at if self.ended_at is not None else (time.time() if now is None else now)
        return max(0.0, end - self.started_at)


def passes(meta: dict[str, str]) -> list[Pass]:
    """The run's passes, first to last (none when its start is unknown). The hours between a night's
    run and the next morning's retry belong to none, so no duration counts them."""
    if not meta.get("created_at"):
        return []
    done = [Pass(float(a), float(b)) for a, b in json.loads(meta.get("passes") or "[]")]
    start = float(meta.get("pass_started_at") or meta["created_at"])
    end = None
    if meta.get("finished_at"):
        # Not finished_at: results.csv may be written late (a store down for a while, the sweep).
        end = max(start, float(meta.get("last_final_at") or meta["finished_at"]))
    return [*done, Pass(start, end)]


def view_run(rt: Runtime, run_id: str) -> RunView:
    info = rt.runs.info(run_id)
    fps = json.loads(info.meta.get("keys", "[]"))
    out = rt.pools.keys_out()
    live = rt.holders.live_keys(fps)
    keys = tuple(KeyState(fp, fp in live, rt.slots.active(fp), out.get(fp)) for fp in fps)
    pool_id = info.meta.get("pool", "")
    waiting = sum(rt.slots.waiting(p, e) for p, e in rt.slots.known_waits() if p == pool_id) if pool_id else 0
    return RunView(info, rt.budget.spend(run_id), keys, waiting)


# --- following a run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """One look at a run while following it."""

    info: RunInfo
    elapsed_s: float
    rows_per_s: float
    stalled_s: float = 0.0  # since the last row became final (or following began)

    @property
    def eta_s(self) -> float | None:
        left = self.info.total - self.info.ndone
        return left / self.rows_per_s if self.rows_per_s > 0 else None


OutcomeKind = Literal["succeeded", "rows_failed", "stopped", "timed_out", "lost"]


@dataclass(frozen=True)
class RunOutcome:
    """How a followed run ended. ``kind`` decides the exit code; the CLI maps it."""

    info: RunInfo
    kind: OutcomeKind
    failed: int

    @property
    def results_uri(self) -> str | None:
        return None if self.info.lost else self.info.meta.get("results_uri")

    @property
    def stopped_reason(self) -> str | None:
        return self.info.lost_reason or self.info.meta.get("stopped_reason") or None


def outcome_of(info: RunInfo, *, max_failures: float = 0) -> RunOutcome:
    """Judge a run: its state lost beats stopped (credits, key, cancel), which beats failed rows
    beyond ``max_failures`` (a count, or a fraction of the rows when below 1)."""
    if info.lost:
        return RunOutcome(info, "lost", 0)
    failed = sum(v for k, v in info.counts.items() if k not in ("succeeded", "skipped"))
    allowed = max_failures * info.total if 0 < max_failures < 1 else max_failures
    if info.meta.get("stopped") or info.status == "cancelled":
        kind: OutcomeKind = "stopped"
    elif failed > allowed:
        kind = "rows_failed"
    else:
        kind = "succeeded"
    return RunOutcome(info, kind, failed)


def follow(
    rt: Runtime,
    run_id: str,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    max_failures: float = 0,
    interval_s: float = 1.0,
    timeout_s: float | None = None,
    stop: Callable[[], bool] | None = None,
) -> RunOutcome:
    """Look at the run every ``interval_s`` until it is final (or ``timeout_s`` passed), and at once
    when its end is announced (:mod:`~kontext_batch.coord.ends`).

    Calls ``on_progress`` with each look, the last one included (not a look at a lost run: it
    returns its ``lost`` outcome at once); prints nothing. Raises
    Interrupted when ``stop()`` turns true (asked between two looks; the run goes on, only the
    looking stops).
    """
    start = last_change = time.monotonic()
    first_done: int | None = None
    last_done = -1
    # Subscribed before the first look: an end announced after it wakes the wait below.
    with EndWatch(rt.redis, rt.keys, run_id) as ends:
        while True:
            info = rt.runs.info(run_id)
            if info.lost:
                return outcome_of(info)
            now = time.monotonic()
            first_done = info.ndone if first_done is None else first_done
            if info.ndone != last_done:
                last_done, last_change = info.ndone, now
            elapsed = now - start
            rate = (info.ndone - first_done) / elapsed if elapsed > 0 else 0.0
            if on_progress is not None:
                on_progress(Progress(info, elapsed, rate, now - last_change))
            if info.finished:
                return outcome_of(info, max_failures=max_failures)
            if timeout_s is not None and elapsed >= timeout_s:
                return RunOutcome(info, "timed_out", 0)
            ends.wait(interval_s)
            if stop is not None and stop():
                raise Interrupted
