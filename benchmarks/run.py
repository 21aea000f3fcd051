"""The benchmark of issue 6: kontext-batch at the API's active-task cap beside two baselines, in one table.

    python benchmarks/run.py            # the full benchmark (about 6 minutes on 2 cores)
    python benchmarks/run.py --quick    # a smoke version (under 2 minutes)

One embedded Redis serves every system run; each run gets a fresh in-process emulator, fresh worker
processes and its own API key (see ``measure.py``). The table goes to stdout, progress to stderr, and
every figure to ``benchmarks/last_run.json``. ``benchmarks/README.md`` says what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # `python benchmarks/run.py`: make the repository root importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.measure import (
    BaselineFigures,
    EnqueueFigures,
    Scenario,
    SystemFigures,
    run_baseline,
    run_enqueue,
    run_system,
)
from kontext_batch.emulator import LatencySpec
from kontext_batch.local import embedded_redis

__all__ = ["Plan", "Row", "build_rows", "main", "make_plan", "render_table"]

LAST_RUN = Path(__file__).resolve().parent / "last_run.json"
PARTS = (
    "pro",
    "max",
    "lognormal",
    "lognormal-2x",
    "scale",
    "scale-slow",
    "asyncio",
    "bfl-loop",
    "asyncio-lognormal",
    "enqueue",
)


@dataclass(frozen=True)
class Plan:
    """Everything one invocation runs."""

    systems: tuple[Scenario, ...]
    bfl_rows: int
    # BFL's 0.5 s loop on the lognormal law at real speed (time_scale 1): its polls per job, about L/0.5.
    baseline_lognormal: Scenario
    enqueue_rows: int
    enqueue_images: int

    def system(self, name: str) -> Scenario:
        return next(s for s in self.systems if s.name == name)


def make_plan(a: argparse.Namespace) -> Plan:
    fixed = LatencySpec.fixed(a.latency)
    return Plan(
        systems=(
            Scenario("pro", a.n, "pro", 24, fixed),
            Scenario("max", a.n_max, "max", 24, fixed),
            Scenario(
                "lognormal",
                a.n_lognormal,
                "pro",
                24,
                LatencySpec.lognormal(5.0, 0.4),
                time_scale=a.lognormal_time_scale,
                scale_poll_knobs=True,
            ),
            # Twice as slow: half the job rate, so a 2-core machine keeps up and polling, not CPU, decides.
            Scenario(
                "lognormal-2x",
                a.n_lognormal,
                "pro",
                24,
                LatencySpec.lognormal(5.0, 0.4),
                time_scale=2 * a.lognormal_time_scale,
                scale_poll_knobs=True,
            ),
            Scenario("scale", a.n_scale, "pro", a.scale_cap, fixed),
            # The same cap at 4x the latency: the job rate of the cap-24 run, so it fits this machine's CPU.
            Scenario("scale-slow", a.n_scale_slow, "pro", a.scale_cap, LatencySpec.fixed(4 * a.latency)),
        ),
        bfl_rows=a.bfl_rows,
        baseline_lognormal=Scenario(
            "lognormal-real", a.baseline_lognormal_rows, "pro", 24, LatencySpec.lognormal(5.0, 0.4)
        ),
        enqueue_rows=a.enqueue_rows,
        enqueue_images=a.enqueue_images,
    )


# -- the table ----------------------------------------------------------------------------------------


@dataclass
class Row:
    figure: str
    scenario: str
    measured: str
    target: str
    met: bool | None  # None: a figure without a target

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def build_rows(
    systems: dict[str, SystemFigures], baselines: dict[str, BaselineFigures], enqueue: Sequence[EnqueueFigures]
) -> list[Row]:
    rows: list[Row] = []

    def add(figure: str, scenario: str, value: str, target: str = "-", met: bool | None = None) -> None:
        rows.append(Row(figure, scenario, value, target, met))

    def util(figure: str, s: SystemFigures) -> None:
        ceiling = f"; CPU ceiling {s.cpu_ceiling:.2f}" if s.cpu_ceiling < 1 else ""
        api = f"{s.util_api:.3f} ({s.api_wall_s:.1f}s / ideal {s.ideal_s:.1f}s{ceiling})"
        add(f"{figure}, API wall", s.describe, api, ">= 0.95", s.util_api >= 0.95)
        system = f"{s.util_system:.3f} ({s.system_wall_s:.1f}s)"
        add(f"{figure}, system wall", s.describe, system, ">= 0.95", s.util_system >= 0.95)

    for name in ("pro", "max"):
        if name in systems:
            util("1 cap utilisation", systems[name])
    for name in ("lognormal", "lognormal-2x", "pro", "max", "scale", "scale-slow"):
        if (s := systems.get(name)) is not None:
            polls = f"{s.polls_per_job:.2f} (max {s.polls_max})"
            add("2 polls per job", s.describe, polls, "<= 2.0", s.polls_per_job <= 2.0)
    if (b := baselines.get("asyncio-lognormal")) is not None:
        add("2 polls per job, 0.5 s loop", f"{b.name}: {b.scenario}", f"{b.polls_per_job:.2f}")
    for name in ("pro", "lognormal", "lognormal-2x"):
        if (s := systems.get(name)) is not None:
            add("3 ready->stored p50", s.describe, f"{s.ready_to_stored_p50_s:.3f}s")
            ceiling = f"; CPU ceiling {s.cpu_ceiling:.2f}" if s.cpu_ceiling < 1 else ""
            p95 = f"{s.ready_to_stored_p95_s:.3f}s (max {s.ready_to_stored_max_s:.2f}s{ceiling})"
            add("3 ready->stored p95", s.describe, p95, "<= 0.5s", s.ready_to_stored_p95_s <= 0.5)
    for e in enqueue:
        what = f"{e.rows:,} rows, " + (f"{e.images} shared images" if e.images else "text-only")
        add("4 enqueue wall (CLI)", what, f"{e.wall_s:.1f}s", "<= 30s", e.wall_s <= 30)
        add("4 enqueue peak RSS (CLI)", what, f"{e.peak_rss_mb:.0f} MB", "<= 300 MB", e.peak_rss_mb <= 300)
        add("4 Redis memory per queued row", what, f"{e.redis_bytes_per_row:.0f} B")
    for name in ("pro", "max", "lognormal", "lognormal-2x", "scale", "scale-slow"):
        if (s := systems.get(name)) is not None:
            limit = 2 + s.polls_per_job
            ok = s.executions_per_job <= limit + 1e-9
            add("5 task executions per job", s.describe, f"{s.executions_per_job:.2f}", f"<= {limit:.2f}", ok)
    for name in ("scale", "scale-slow"):
        if name in systems:
            util("6 scale utilisation", systems[name])
    for name in ("asyncio", "bfl-loop"):
        if (b := baselines.get(name)) is not None:
            what = f"{b.name}: {b.scenario}" + (f" (ran {b.rows}, extrapolated)" if b.extrapolated_to else "")
            add("baseline ratio to ideal", what, f"{b.ratio:.3f} ({b.wall_s:.1f}s, {b.polls_per_job:.2f} polls/job)")
    if (s := systems.get("pro")) is not None and (b := baselines.get("asyncio")) is not None:
        versus = f"{s.util_api:.3f} vs {b.ratio:.3f}"
        add("kontext-batch vs asyncio", s.describe, versus, ">= asyncio", s.util_api >= b.ratio)
    return rows


def render_table(rows: Sequence[Row]) -> str:
    head = ("figure", "scenario", "measured", "target", "met?")
    cells = [
        (r.figure, r.scenario, r.measured, r.target, "-" if r.met is None else ("yes" if r.met else "NO")) for r in rows
    ]
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(len(head))]

    def line(c: Sequence[str]) -> str:
        return " | ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)).rstrip()

    return "\n".join([line(head), "-+-".join("-" * w for w in widths), *(line(c) for c in cells)])


def machine() -> dict[str, Any]:
    mem = ""
    with contextlib.suppress(OSError, IndexError):
        mem = subprocess.run(["free", "-h"], capture_output=True, text=True, check=False).stdout.splitlines()[1]
    return {
        "nproc": os.cpu_count(),
        "memory": mem.split()[1] if mem else "",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else [],
    }


# -- main ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark kontext-batch against the emulator and print one table.")
    p.add_argument("--quick", action="store_true", help="smaller N everywhere: a smoke run of under 2 minutes")
    p.add_argument("--n", type=int, help="rows of the kontext-pro cap-24 run and the asyncio baseline (600)")
    p.add_argument("--n-max", type=int, help="rows of the kontext-max cap-6 run (120)")
    p.add_argument("--n-lognormal", type=int, help="rows of the lognormal run (600)")
    p.add_argument("--lognormal-time-scale", type=float, default=0.1, help="emulator time_scale of the lognormal run")
    p.add_argument("--n-scale", type=int, help="rows of the scale run (2400 = 25 waves of 96)")
    p.add_argument("--n-scale-slow", type=int, help="rows of the scale run at 4x latency (960)")
    p.add_argument("--scale-cap", type=int, default=96, help="cap of the scale runs")
    p.add_argument("--latency", type=float, default=1.0, help="fixed task latency in seconds (runs 1, 5, 6)")
    p.add_argument("--bfl-rows", type=int, help="rows the BFL loop runs before extrapolating (20)")
    p.add_argument("--baseline-lognormal-rows", type=int, help="rows of the asyncio run on lognormal latency (72)")
    p.add_argument("--enqueue-rows", type=int, help="rows of the enqueue run (100000)")
    p.add_argument("--enqueue-images", type=int, default=4, help="also enqueue rows sharing this many images (0: skip)")
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--concurrency", type=int, default=32, help="threads per worker process")
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--json", type=Path, default=LAST_RUN, help="where to write the figures as JSON")
    p.add_argument("--keep", action="store_true", help="keep the work folder (manifests, outputs, logs, stats)")
    a = p.parse_args(argv)
    unknown = set(a.only.split(",")) - set(PARTS)
    if unknown:
        p.error(f"--only: unknown part(s) {', '.join(sorted(unknown))}")
    defaults = {
        "n": (600, 120),
        "n_max": (120, 30),
        "n_lognormal": (600, 240),
        "n_scale": (2400, 480),
        "n_scale_slow": (960, 192),
        "bfl_rows": (20, 5),
        "baseline_lognormal_rows": (72, 24),
        "enqueue_rows": (100_000, 10_000),
    }
    for k, (full, quick) in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, quick if a.quick else full)
    return a


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    only = set(a.only.split(","))
    plan = make_plan(a)
    m = machine()
    work = Path(tempfile.mkdtemp(prefix="kb-bench-"))
    systems: dict[str, SystemFigures] = {}
    baselines: dict[str, BaselineFigures] = {}
    enqueue: list[EnqueueFigures] = []
    started = time.monotonic()

    def note(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    try:
        with embedded_redis() as url:
            for sc in plan.systems:
                if sc.name in only:
                    note(f"system {sc.name}: {sc.describe()}")
                    s = systems[sc.name] = run_system(sc, url, work, workers=a.workers, concurrency=a.concurrency)
                    note(
                        f"  utilisation {s.util_api:.3f}, polls/job {s.polls_per_job:.2f}, "
                        f"ready->stored p95 {s.ready_to_stored_p95_s:.3f}s, CPU busy {s.cpu_busy:.0%}"
                    )
        pro, logn = plan.system("pro"), plan.baseline_lognormal
        if "asyncio" in only:
            note(f"baseline asyncio: {pro.describe()}")
            baselines["asyncio"] = run_baseline("asyncio", pro, pro.n, work)
        if "bfl-loop" in only:
            note(f"baseline bfl-loop: {plan.bfl_rows} rows, extrapolated to {pro.n}")
            baselines["bfl-loop"] = run_baseline("bfl-loop", pro, plan.bfl_rows, work, extrapolate_to=pro.n)
        if "asyncio-lognormal" in only:
            note(f"baseline asyncio on lognormal latency: {logn.describe()}")
            baselines["asyncio-lognormal"] = run_baseline("asyncio", logn, logn.n, work, tag="-lognormal")
        if "enqueue" in only:
            for images in sorted({0, plan.enqueue_images}):
                note(f"enqueue: {plan.enqueue_rows:,} rows, {images} shared images")
                enqueue.append(run_enqueue(plan.enqueue_rows, work, images=images))
    finally:
        if a.keep:
            note(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    rows = build_rows(systems, baselines, enqueue)
    print(render_table(rows))
    load = " ".join(str(x) for x in m["loadavg_at_start"])
    print(
        f"\nmachine: {m['nproc']} CPUs, {m['memory']} memory, Python {m['python']}, {m['platform']}; "
        f"load average at start {load}"
    )
    for s in systems.values():
        cpu = ", ".join(f"{k} {v:.1f}" for k, v in s.cpu_ms_per_job.items())
        print(
            f"  {s.scenario}: CPU busy {s.cpu_busy:.0%}, ours {s.cpu_ours:.0%} (ms/job: {cpu}); 429s {s.rejected_429}, "
            f"peak active {s.peak_active}, succeeded {s.succeeded}/{s.n}"
            + (f"; settings changed: {s.settings_changed}" if s.settings_changed else "")
        )
    elapsed = time.monotonic() - started
    note(f"done in {elapsed:.0f}s")
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["python", "benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)]),
        "quick": a.quick,
        "machine": m,
        "table": [r.to_json() for r in rows],
        "systems": {k: v.to_json() for k, v in systems.items()},
        "baselines": {k: v.to_json() for k, v in baselines.items()},
        "enqueue": [e.to_json() for e in enqueue],
        "elapsed_s": round(elapsed, 1),
    }
    a.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
