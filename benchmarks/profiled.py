"""Run a Python module under cProfile in every thread, counting each thread's CPU time, not wall time.

::

    python benchmarks/profiled.py OUT.prof -m kontext_batch worker -c 32 ...

``python -m cProfile`` profiles the main thread only, and a Celery worker with the threads pool runs
every task in other threads; so each new thread gets its own ``cProfile.Profile`` (timer
``time.thread_time``: the thread's CPU, so time spent waiting on sockets is not counted), and the
profiles are merged into ``OUT.prof`` at exit (a worker stopped by SIGTERM exits normally). When the
file ``OUT.prof.reset`` appears, every profile so far is cleared, so start-up (imports, connecting)
is left out: the benchmark creates it once the workers answer a ping. CPython 3.11 only: from 3.12
on one profiler at a time may be active.
"""

from __future__ import annotations

import atexit
import cProfile
import pstats
import runpy
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["main", "merged"]


class _Snapshot:
    """What ``pstats.Stats`` reads from a profiler, without disabling it (only its own thread may)."""

    def __init__(self, stats: dict[Any, Any]) -> None:
        self.stats = stats

    def create_stats(self) -> None:
        pass


def merged(profiles: list[cProfile.Profile]) -> pstats.Stats | None:
    """One ``Stats`` of every profile's functions so far (None when there is none)."""
    out: pstats.Stats | None = None
    for prof in profiles:
        prof.snapshot_stats()
        part = pstats.Stats(_Snapshot(prof.stats))  # type: ignore[arg-type]
        if out is None:
            out = part
        else:
            out.add(part)
    return out


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[2] != "-m":
        sys.exit("usage: profiled.py OUT.prof -m MODULE [ARGS...]")
    out, module = sys.argv[1], sys.argv[3]
    sys.argv = [module, *sys.argv[4:]]
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start() -> cProfile.Profile:
        prof = cProfile.Profile(time.thread_time)
        with lock:
            profiles.append(prof)
        prof.enable()  # replaces the hook below for this thread
        return prof

    def hook(_frame: FrameType, _event: str, _arg: object) -> None:
        start()

    def dump() -> None:
        threading.setprofile(None)
        with lock:
            stats = merged(list(profiles))
        if stats is not None:
            stats.dump_stats(out)

    def reset_when_asked() -> None:
        flag = Path(out + ".reset")
        while not flag.exists():
            time.sleep(0.05)
        # This thread holds the GIL here, so no profiled thread is inside a profiler callback; a
        # thread whose call stack the clear forgets just records its next calls afresh.
        with lock:
            for prof in profiles:
                prof.clear()

    # Started before the hook: this thread is not profiled.
    threading.Thread(target=reset_when_asked, name="profile-reset", daemon=True).start()
    threading.setprofile(hook)
    atexit.register(dump)
    start()
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
