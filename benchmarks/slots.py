"""Where a run's slot time went, from the emulator's per-task record (``emulator-stats.json``).

    python benchmarks/slots.py WORK/pool-3/emulator-stats.json [--cap 24]

(``python benchmarks/run.py --only pool-3 --keep`` keeps the work folder.) Per key, the k-th task to
end frees the slot that the (cap + k)-th submit takes, so ``submit[cap + k] - ready[k]`` is a slot's
idle gap. Printed: each slot's idle time before its first task, in gaps and after its last task;
gap percentiles; how late polls saw tasks end (``seen_done_at - ready_at``), overall and per wave
(one wave = tasks submitted in the same second of the run); and from that notice to the next submit.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["idle_per_slot", "main", "notice_lags"]

Task = dict[str, Any]


def _ms(values: Sequence[float], qs: Sequence[float] = (0.1, 0.5, 0.9, 0.99)) -> str:
    if not values:
        return "-"
    v = sorted(values)
    return " / ".join(f"{v[min(len(v) - 1, int(len(v) * q))] * 1000:.1f}" for q in qs)


def _by_key(tasks: Sequence[Task]) -> dict[str, list[Task]]:
    out: dict[str, list[Task]] = defaultdict(list)
    for t in tasks:
        out[t["key"]].append(t)
    return out


def idle_per_slot(tasks: Sequence[Task], cap: int) -> tuple[dict[str, float], list[float]]:
    """Mean idle seconds per slot before the first task, in gaps and after the last; and every gap."""
    t0 = min(t["submitted_at"] for t in tasks)
    end = max(t["ready_at"] for t in tasks)
    idle = {"start": 0.0, "gaps": 0.0, "end": 0.0}
    gaps: list[float] = []
    slots = 0
    for group in _by_key(tasks).values():
        subs = sorted(t["submitted_at"] for t in group)
        ready = sorted(t["ready_at"] for t in group)
        c = min(cap, len(group))
        slots += c
        idle["start"] += sum(s - t0 for s in subs[:c])
        key_gaps = [subs[c + i] - ready[i] for i in range(len(group) - c)]
        gaps += key_gaps
        idle["gaps"] += sum(key_gaps)
        idle["end"] += sum(end - r for r in ready[len(group) - c :])
    return {k: v / slots for k, v in idle.items()}, gaps


def notice_lags(tasks: Sequence[Task]) -> dict[int, list[float]]:
    """Seconds from each task's end to the first poll that saw it, by wave (second of the run)."""
    t0 = min(t["submitted_at"] for t in tasks)
    waves: dict[int, list[float]] = defaultdict(list)
    for t in tasks:
        if t.get("seen_done_at"):
            waves[int(t["submitted_at"] - t0)].append(t["seen_done_at"] - t["ready_at"])
    return dict(sorted(waves.items()))


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stats", type=Path, help="emulator-stats.json of one run")
    p.add_argument("--cap", type=int, default=24, help="each key's cap (24; 96 for the scale run)")
    a = p.parse_args(argv)
    tasks: list[Task] = list(json.loads(a.stats.read_text())["tasks"].values())
    t0 = min(t["submitted_at"] for t in tasks)
    wall = max(t["ready_at"] for t in tasks) - t0
    busy = sum(t["ready_at"] - t["submitted_at"] for t in tasks) / wall
    idle, gaps = idle_per_slot(tasks, a.cap)
    print(f"{len(tasks)} tasks on {len(_by_key(tasks))} key(s); wall {wall:.3f} s; mean busy slots {busy:.1f}")
    print("idle s per slot: " + ", ".join(f"{k} {v:.3f}" for k, v in idle.items()))
    print(f"gaps ms p10 / p50 / p90 / p99: {_ms(gaps)}")
    waves = notice_lags(tasks)
    print(f"notice lag ms p10 / p50 / p90 / p99: {_ms([x for w in waves.values() for x in w])}")
    for wave, lags in waves.items():
        print(f"  wave {wave:3d}: {len(lags):5d} tasks, notice lag ms p50 / p90 / max: {_ms(lags, (0.5, 0.9, 1.0))}")
    seen = sorted(t["seen_done_at"] for t in tasks if t.get("seen_done_at"))
    subs = sorted(t["submitted_at"] for t in tasks)
    first = a.cap * len(_by_key(tasks))
    after = [subs[first + i] - seen[i] for i in range(min(len(seen), len(subs) - first))]
    print(f"notice -> next submit ms p10 / p50 / p90 / p99: {_ms(after)}")
    polls: dict[int, int] = defaultdict(int)
    for t in tasks:
        polls[int(t["polls"])] += 1
    print("tasks by polls: " + ", ".join(f"{n} poll(s): {c}" for n, c in sorted(polls.items())))


if __name__ == "__main__":
    main()
