"""Read the benchmark's cProfile files and tell the top costs per job.

    python benchmarks/profiles.py FILE... --jobs N [--us]

Worker profiles come from ``profiled.py`` (each thread's CPU time); the enqueue CLI's from
``python -m cProfile`` (wall time of its one thread, which is nearly all CPU). Figures are divided by
the jobs (or rows) the profiled process handled, and include cProfile's own overhead, which inflates
small, often-called functions most.
"""

from __future__ import annotations

import argparse
import pstats
from collections.abc import Sequence
from pathlib import Path

__all__ = ["load", "top"]

OUR_CODE = ("kontext_batch", "workers", "tasks")


def load(paths: Sequence[Path]) -> pstats.Stats | None:
    existing = [str(p) for p in paths if p.exists() and p.stat().st_size > 0]
    if not existing:
        return None
    return pstats.Stats(*existing)


def _name(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    if filename == "~":
        return name  # a builtin: "<method 'recv_into' of '_socket.socket' objects>"
    parts = Path(filename).parts
    for anchor in ("site-packages", "kontext_batch", "workers", "tasks", "benchmarks", "lib"):
        if anchor in parts:
            i = len(parts) - 1 - parts[::-1].index(anchor)
            rel = "/".join(parts[i + 1 :] if anchor in ("site-packages", "lib") else parts[i:])
            return f"{rel}:{line}({name})"
    return f"{Path(filename).name}:{line}({name})"


def top(stats: pstats.Stats, jobs: int, *, n: int = 15, per: str = "ms/job", scale: float = 1000.0) -> list[str]:
    """The ``n`` functions with the most self time and the ``n`` with the most cumulative time, per job.

    Each line: time per job under the profiler, its share of all profiled time (cProfile's overhead
    inflates every figure; the shares carry over to an unprofiled run better), calls per job, function.
    """
    raw = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_cc, _nc, tt, _ct, _callers) in raw.values()) or 1e-12
    rows = [(func, nc, tt, ct) for func, (_cc, nc, tt, ct, _callers) in raw.items()]
    out = [f"total profiled time {total / jobs * scale:.2f} {per} over {jobs:,} jobs"]
    out.append(f"  by self time ({per}, share, calls/job):")
    for func, nc, tt, _ct in sorted(rows, key=lambda r: -r[2])[:n]:
        out.append(f"    {tt / jobs * scale:8.3f}  {tt / total:5.1%}  {nc / jobs:8.2f}  {_name(func)}")
    out.append(f"  by cumulative time ({per}, share, calls/job):")
    for func, nc, _tt, ct in sorted(rows, key=lambda r: -r[3])[:n]:
        out.append(f"    {ct / jobs * scale:8.3f}  {ct / total:5.1%}  {nc / jobs:8.2f}  {_name(func)}")
    ours = [r for r in rows if any(f"/{d}/" in r[0][0] for d in OUR_CODE)]
    out.append(f"  our code by cumulative time ({per}, share, calls/job):")
    for func, nc, _tt, ct in sorted(ours, key=lambda r: -r[3])[:n]:
        out.append(f"    {ct / jobs * scale:8.3f}  {ct / total:5.1%}  {nc / jobs:8.2f}  {_name(func)}")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--jobs", type=int, required=True, help="jobs (or rows) the profiled processes handled")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--us", action="store_true", help="microseconds per job instead of milliseconds")
    a = p.parse_args(argv)
    stats = load(a.files)
    if stats is None:
        raise SystemExit("no profile data")
    per, scale = ("us/row", 1e6) if a.us else ("ms/job", 1000.0)
    print("\n".join(top(stats, a.jobs, n=a.top, per=per, scale=scale)))


if __name__ == "__main__":
    main()
