"""The benchmark of issue 6: kontext-batch at the API's active-task cap beside two baselines, in one table.

    python benchmarks/run.py            # the full benchmark (about 6 minutes on 2 cores)
    python benchmarks/run.py --quick    # a smoke version: the same runs with smaller N

One embedded Redis serves every system run; each run gets a fresh in-process emulator, fresh worker
processes and its own API key (see ``measure.py``). The table goes to stdout, progress to stderr, and
every figure to ``benchmarks/last_run.json``. ``benchmarks/README.md`` says what each figure means.
"""

from __future__ import annotations

import argparse
import compileall
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

import kontext_batch
from benchmarks.kills import KillsFigures, run_kills
from benchmarks.measure import (
    PROFILE_ENV,
    BaselineFigures,
    EnqueueFigures,
    Phases,
    Scenario,
    SystemFigures,
    WebhookFigures,
    profile_dir,
    run_baseline,
    run_enqueue,
    run_system,
    run_webhook,
)
from benchmarks.profiles import load, top
from kontext_batch.emulator import LatencySpec
from kontext_batch.run.local import embedded_redis

__all__ = ["Plan", "Row", "Targets", "build_rows", "main", "make_plan", "render_table"]

LAST_RUN = Path(__file__).resolve().parent / "last_run.json"
PARTS = (
    "pro",
    "pro-full",
    "max",
    "lognormal",
    "lognormal-2x",
    "scale",
    "pool",
    "pool-3",
    "webhook",
    "asyncio",
    "bfl-loop",
    "asyncio-lognormal",
    "enqueue",
    "kills",
)
WEBHOOK_DROP_RATE = 0.1


class Targets:
    """Every target the table checks, in one place."""

    # Timed as a user times it: the command's start -> its exit (issue 22).
    user_pro = 0.975  # C=24, L=1 s, 1,200 rows, and at least the asyncio script's ratio in the same run
    user_pool = 0.93  # a pool of 4 x 24, 1,920 rows
    first_submit_s = 0.3  # the command's start -> the first submit
    exit_after_store_s = 0.3  # the last output stored -> the command's exit
    # On the internal API wall (first submit -> last store), for the runs issue 22 sets no target for.
    util_max = 0.95
    util_scale = 0.90  # C=96 on one key
    util_pool = 0.90  # a pool of keys, against the pool's ideal
    busy_pool = 0.90  # mean busy slots, as a fraction of the pool's slots
    polls = 1.5
    ready_p95_s = 0.5
    enqueue_wall_s = 60.0
    enqueue_rss_mb = 300.0
    worker_cpu_ms = 8.0  # issue 22
    webhook_polls = 0.0
    webhook_drop_polls = 0.3
    kill_ratio = 1.2  # issue 22: 10 worker kills and a Redis restart, against the quiet run


@dataclass(frozen=True)
class Plan:
    """Everything one invocation runs."""

    systems: tuple[Scenario, ...]
    bfl_rows: int
    # BFL's 0.5 s loop on the lognormal law at real speed (time_scale 1): its polls per job, about L/0.5.
    baseline_lognormal: Scenario
    webhook: Scenario
    enqueue: tuple[tuple[int, int], ...]  # (rows, shared images)
    kills: Scenario
    kill_count: int = 10

    def system(self, name: str) -> Scenario:
        return next(s for s in self.systems if s.name == name)


def make_plan(a: argparse.Namespace) -> Plan:
    fixed = LatencySpec.fixed(a.latency)
    return Plan(
        systems=(
            Scenario("pro", a.n, "pro", 24, fixed),
            # The same run with the emulator rendering each task's own image: what Pillow costs here.
            Scenario("pro-full", a.n, "pro", 24, fixed, render="full"),
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
            # Twice as slow: half the job rate, so polling rather than CPU decides.
            Scenario(
                "lognormal-2x",
                a.n_lognormal,
                "pro",
                24,
                LatencySpec.lognormal(5.0, 0.4),
                time_scale=2 * a.lognormal_time_scale,
                scale_poll_knobs=True,
            ),
            # C=96 is one key whose cap is 96 (KONTEXT_MAX_ACTIVE=96 and the emulator's max_active_total).
            Scenario("scale", a.n_scale, "pro", a.scale_cap, fixed),
            Scenario("pool", a.n_pool, "pro", 24, fixed, keys=a.pool_keys),
            # The figure: 3 keys with cap 24 each, 720 rows, "about 72 slots busy".
            Scenario("pool-3", a.n_pool3, "pro", 24, fixed, keys=3),
        ),
        bfl_rows=a.bfl_rows,
        baseline_lognormal=Scenario(
            "lognormal-real", a.baseline_lognormal_rows, "pro", 24, LatencySpec.lognormal(5.0, 0.4)
        ),
        webhook=Scenario("webhook", a.n_webhook, "pro", 24, fixed),
        kills=Scenario("kills", a.n_kills, "pro", 24, fixed),
        kill_count=a.kill_count,
        enqueue=((a.enqueue_rows, 0),) + (((a.enqueue_images_rows, a.enqueue_images),) if a.enqueue_images else ()),
    )


# -- the table ----------------------------------------------------------------------------------------


@dataclass
class Row:
    figure: str
    scenario: str
    measured: str
    target: str
    met: bool | None  # None: a figure without a target, or one not run
    internal: str = "-"  # the same figure as earlier tables measured it, when the headline changed

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def build_rows(
    systems: dict[str, SystemFigures],
    baselines: dict[str, BaselineFigures],
    enqueue: Sequence[EnqueueFigures],
    *,
    webhooks: dict[str, WebhookFigures | str] | None = None,
    machine_info: dict[str, Any] | None = None,
    kills: KillsFigures | None = None,
) -> list[Row]:
    """The table's rows. ``webhooks`` maps "webhook" / "webhook-drop" to figures or why they did not run."""
    rows: list[Row] = []
    t = Targets

    def add(
        figure: str, scenario: str, value: str, target: str = "-", met: bool | None = None, internal: str = "-"
    ) -> None:
        rows.append(Row(figure, scenario, value, target, met, internal))

    if machine_info:
        m = machine_info
        add("machine", "-", f"{m['nproc']} cores, {m['cpu_model']}, {m['memory']} memory, Python {m['python']}")
        add("project bytecode", "-", m.get("bytecode", "-"))
        for when in ("start", "end"):
            load_avg = m.get(f"loadavg_at_{when}") or []
            add(f"load average at {when}", "1 / 5 / 15 min", " / ".join(f"{x:.2f}" for x in load_avg) or "-")

    def internal(s: SystemFigures) -> str:
        api, system = f"{s.util_api:.3f} ({s.api_wall_s:.1f}s)", f"{s.util_system:.3f} ({s.system_wall_s:.1f}s)"
        return f"API wall {api}; system wall {system}"

    def split(describe: str, ph: Phases | None, *, targets: bool) -> None:
        """The phase split beside a headline; ``targets``: check the start and end targets."""
        if ph is None:
            return
        first, end = ph.start_to_first_submit_s, ph.last_store_to_exit_s
        tf, te = (f"<= {t.first_submit_s}s", f"<= {t.exit_after_store_s}s") if targets else ("-", "-")
        add("  start -> first submit", describe, f"{first:.3f}s", tf, first <= t.first_submit_s if targets else None)
        add("  slot utilisation inside", describe, f"{ph.inside_util:.3f} (first submit -> last ready)")
        add("  last ready -> last store", describe, f"{ph.last_ready_to_last_store_s:.3f}s")
        fin = "" if ph.last_store_to_finished_s is None else f" (run finished at +{ph.last_store_to_finished_s:.3f}s)"
        add("  last store -> exit", describe, f"{end:.3f}s{fin}", te, end <= t.exit_after_store_s if targets else None)
        lag = f"{ph.notice_lag_p50_s * 1000:.0f} / {ph.notice_lag_p95_s * 1000:.0f} ms"
        add("  notice lag p50 / p95", describe, lag)

    def util(figure: str, s: SystemFigures, target: float | None, *, user: bool = False) -> None:
        """The headline, the command's start -> its exit. ``user``: ``target`` is on it; else on the
        API wall (the internal figure), as before issue 22."""
        ceiling = f"; CPU ceiling {s.cpu_ceiling:.2f}" if s.cpu_ceiling < 1 else ""
        value = f"{s.util_user:.3f} ({s.user_wall_s:.1f}s / ideal {s.ideal_s:.1f}s{ceiling})"
        if target is None:
            tgt, met = "-", None
        elif user:
            tgt, met = f">= {target:.3g}", s.util_user >= target
        else:
            tgt, met = f">= {target:.2f} (API wall)", s.util_api >= target
        add(f"{figure}, start -> exit", s.describe, value, tgt, met, internal(s))
        split(s.describe, s.phases, targets=True)

    if (s := systems.get("pro")) is not None:
        util("1 cap utilisation", s, t.user_pro, user=True)
    if (s := systems.get("pro")) is not None and (b := baselines.get("asyncio")) is not None:
        versus = f"{s.util_user:.3f} vs {b.ratio:.3f}"
        inside = f"API wall {s.util_api:.3f} vs {b.ratio_internal:.3f}"
        add("1 kontext-batch vs asyncio", s.describe, versus, ">= asyncio", s.util_user >= b.ratio, inside)
    if (b := baselines.get("asyncio")) is not None:
        split(f"{b.name}: {b.scenario}", b.phases, targets=False)
    if (s := systems.get("pro-full")) is not None:
        util("1 cap utilisation (full render)", s, None)
    if (s := systems.get("max")) is not None:
        util("1 cap utilisation", s, t.util_max)
    if (s := systems.get("scale")) is not None:
        util("6 scale utilisation (1 key, cap 96)", s, t.util_scale)
    for name in ("pool", "pool-3"):
        if (s := systems.get(name)) is not None:
            if name == "pool":
                util("7 pool utilisation", s, t.user_pool, user=True)
            else:
                util("7 pool utilisation", s, t.util_pool)
            need = t.busy_pool * s.cap
            busy = f"{s.mean_busy_slots:.1f} of {s.cap} (peak {s.peak_active}: {'+'.join(map(str, s.per_key_peak))})"
            add("7 pool mean busy slots", s.describe, busy, f">= {need:.0f} (~{s.cap})", s.mean_busy_slots >= need)
    for name in ("lognormal", "lognormal-2x", "pro", "max", "scale", "pool", "pool-3"):
        if (s := systems.get(name)) is not None:
            polls = f"{s.polls_per_job:.2f} (max {s.polls_max})"
            add("2 polls per job", s.describe, polls, f"<= {t.polls}", s.polls_per_job <= t.polls)
    if (b := baselines.get("asyncio-lognormal")) is not None:
        add("2 polls per job, 0.5 s loop", f"{b.name}: {b.scenario}", f"{b.polls_per_job:.2f}")
    for name in ("pro", "lognormal", "lognormal-2x"):
        if (s := systems.get(name)) is not None:
            add("3 ready->stored p50", s.describe, f"{s.ready_to_stored_p50_s:.3f}s")
            ceiling = f"; CPU ceiling {s.cpu_ceiling:.2f}" if s.cpu_ceiling < 1 else ""
            p95 = f"{s.ready_to_stored_p95_s:.3f}s (max {s.ready_to_stored_max_s:.2f}s{ceiling})"
            ok = s.ready_to_stored_p95_s <= t.ready_p95_s
            add("3 ready->stored p95", s.describe, p95, f"<= {t.ready_p95_s}s", ok)
    for e in enqueue:
        what = f"{e.rows:,} rows, " + (f"{e.images} shared images" if e.images else "text-only")
        per_row = f" ({e.cpu_s / e.rows * 1e6:.0f} us CPU/row)" if e.rows else ""
        add("4 enqueue wall (CLI)", what, f"{e.wall_s:.1f}s{per_row}", f"<= {t.enqueue_wall_s:.0f}s", e.wall_s <= 60)
        rss_ok = e.peak_rss_mb <= t.enqueue_rss_mb
        add("4 enqueue peak RSS (CLI)", what, f"{e.peak_rss_mb:.0f} MB", f"<= {t.enqueue_rss_mb:.0f} MB", rss_ok)
        add("4 Redis memory per queued row", what, f"{e.redis_bytes_per_row:.0f} B")
    for name in ("pro", "pro-full", "max", "lognormal", "lognormal-2x", "scale", "pool", "pool-3"):
        if (s := systems.get(name)) is not None:
            limit = 2 + s.polls_per_job
            ok = s.executions_per_job <= limit + 1e-9
            add("5 task executions per job", s.describe, f"{s.executions_per_job:.2f}", f"<= {limit:.2f}", ok)
    asyncio_cpu = baselines.get("asyncio")
    beside = f" (asyncio script {asyncio_cpu.cpu_ms_per_job:.1f})" if asyncio_cpu is not None else ""
    for name in ("pro", "pro-full", "scale", "pool", "pool-3"):
        if (s := systems.get(name)) is not None:
            cpu = s.worker_cpu_ms_per_job
            ok = cpu <= t.worker_cpu_ms
            add("8 worker CPU per job, ms", s.describe, f"{cpu:.1f}{beside}", f"<= {t.worker_cpu_ms:g}", ok)
    wh = webhooks or {}
    scen = "webhook"
    for key, figure, target in (
        ("webhook", "9 polls per job, rows done by webhook", f"<= {t.webhook_polls:g}"),
        ("webhook-drop", f"9 polls per job, {WEBHOOK_DROP_RATE:.0%} webhooks dropped", "all rows; <= 0.3"),
    ):
        got = wh.get(key, "not asked (--only)")
        if isinstance(got, str):
            add(figure, scen, f"not run: {got}", target, None)
            continue
        all_rows = got.succeeded == got.n
        limit = t.webhook_polls if key == "webhook" else t.webhook_drop_polls
        value = f"{got.polls_per_job:.2f} ({got.succeeded}/{got.n} rows, webhooks sent {got.webhooks_sent})"
        add(figure, got.describe, value, target, all_rows and got.polls_per_job <= limit + 1e-9)
    if kills is not None:
        q, k = kills.quiet, kills.killed
        faults = f"{k.kills_done} of {kills.kills_planned} kills, {k.restarts_done} Redis restart(s)"
        all_done = q.succeeded == k.succeeded == kills.n and k.kills_done == kills.kills_planned and k.restarts_done
        value = f"{kills.ratio:.3f} ({k.user_wall_s:.1f}s / quiet {q.user_wall_s:.1f}s; {faults})"
        met = all_done and kills.ratio <= t.kill_ratio
        add("10 kill ratio, start -> exit", kills.describe, value, f"<= {t.kill_ratio:g}, all rows", bool(met))
        for run, what in ((q, "quiet"), (k, "with kills")):
            paid = (
                f"{run.succeeded}/{kills.n} rows, {run.emulator_tasks} emulator tasks, {run.rejected_429} 429s, "
                f"{run.task_executions} task executions"
            )
            add(f"10 kills: {what}", kills.describe, paid)
    for name in ("asyncio", "bfl-loop"):
        if (b := baselines.get(name)) is not None:
            what = f"{b.name}: {b.scenario}" + (f" (ran {b.rows}, extrapolated)" if b.extrapolated_to else "")
            value = (
                f"{b.ratio:.3f} ({b.user_wall_s:.1f}s, {b.polls_per_job:.2f} polls/job, "
                f"{b.cpu_ms_per_job:.1f} ms CPU/job)"
            )
            inside = f"first submit -> last file {b.ratio_internal:.3f} ({b.wall_s:.1f}s)"
            add("baseline ratio to ideal, start -> exit", what, value, internal=inside)
    return rows


def mark(met: bool | None) -> str:
    return "-" if met is None else ("met" if met else "MISSED")


def render_table(rows: Sequence[Row]) -> str:
    head = ("figure", "scenario", "measured", "internal (as before issue 22)", "target", "met?")
    cells = [(r.figure, r.scenario, r.measured, r.internal, r.target, mark(r.met)) for r in rows]
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(len(head))]

    def line(c: Sequence[str]) -> str:
        return " | ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)).rstrip()

    return "\n".join([line(head), "-+-".join("-" * w for w in widths), *(line(c) for c in cells)])


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []


def compile_bytecode() -> str:
    """Compile the project's modules to bytecode where Python looks for it (``__pycache__``).

    A user's command runs from an installed wheel, and pip compiles a wheel's modules when it
    installs them. This checkout is an editable install, and where PYTHONDONTWRITEBYTECODE is set
    (this machine kind sets it) Python never writes the bytecode, so every command recompiled the
    project's ~70 modules: ~70 ms of a CLI start measured here (250 ms against 184 ms to import
    kontext_batch.cli). Reading bytecode is not affected by that variable.
    """
    package = Path(kontext_batch.__file__).resolve().parent  # the one the CLI and workers import
    roots = [package, package.parent / "workers", package.parent / "tasks"]  # both symlinked into it
    ok = all(compileall.compile_dir(str(r), quiet=1) for r in roots if r.is_dir())
    return "compiled, as a pip-installed wheel" if ok else "partly compiled (compileall failed for some)"


def machine() -> dict[str, Any]:
    mem = ""
    with contextlib.suppress(OSError, IndexError):
        mem = subprocess.run(["free", "-h"], capture_output=True, text=True, check=False).stdout.splitlines()[1]
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory": mem.split()[1] if mem else "",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": loadavg(),
        "bytecode": compile_bytecode(),
    }


# -- main ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark kontext-batch against the emulator and print one table.")
    p.add_argument("--quick", action="store_true", help="smaller N everywhere: a smoke run of a few minutes")
    p.add_argument("--n", type=int, help="rows of the kontext-pro cap-24 runs and the asyncio baseline (1200)")
    p.add_argument("--n-max", type=int, help="rows of the kontext-max cap-6 run (120)")
    p.add_argument("--n-lognormal", type=int, help="rows of the lognormal runs (600)")
    p.add_argument("--lognormal-time-scale", type=float, default=0.1, help="emulator time_scale of the lognormal run")
    p.add_argument("--n-scale", type=int, help="rows of the cap-96 run (2400 = 25 waves of 96)")
    p.add_argument("--scale-cap", type=int, default=96, help="cap of the one key of the scale run")
    p.add_argument(
        "--n-pool",
        type=int,
        help="rows of the pool run (1920 = 20 waves of 4 x 24: issue 22's size)",
    )
    p.add_argument("--pool-keys", type=int, default=4, help="keys of the pool run, each with cap 24")
    p.add_argument("--n-pool3", type=int, help="rows of the 3-key pool run (720)")
    p.add_argument("--n-webhook", type=int, help="rows of each webhook run (240)")
    p.add_argument("--n-kills", type=int, help="rows of each kills run, quiet and with kills (600)")
    p.add_argument("--kill-count", type=int, default=10, help="worker SIGKILLs in the kills run")
    p.add_argument("--latency", type=float, default=1.0, help="fixed task latency in seconds")
    p.add_argument("--bfl-rows", type=int, help="rows the BFL loop runs before extrapolating (20)")
    p.add_argument("--baseline-lognormal-rows", type=int, help="rows of the asyncio run on lognormal latency (72)")
    p.add_argument("--enqueue-rows", type=int, help="text-only rows of the enqueue run (1000000)")
    p.add_argument("--enqueue-images-rows", type=int, help="rows of the enqueue run with shared images (100000)")
    p.add_argument("--enqueue-images", type=int, default=4, help="images those rows share (0: skip that run)")
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--concurrency", type=int, default=32, help="threads per worker process")
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument(
        "--profile",
        type=Path,
        help=f"profile workers and the enqueue CLI into this folder (same as {PROFILE_ENV}=DIR); "
        "figures then include cProfile's cost",
    )
    p.add_argument(
        "--timeline",
        action="store_true",
        help="run each system case's CLI through cli_timeline.py and print its start and end steps (ms)",
    )
    p.add_argument("--json", type=Path, default=LAST_RUN, help="where to write the figures as JSON")
    p.add_argument("--keep", action="store_true", help="keep the work folder (manifests, outputs, logs, stats)")
    a = p.parse_args(argv)
    unknown = set(a.only.split(",")) - set(PARTS)
    if unknown:
        p.error(f"--only: unknown part(s) {', '.join(sorted(unknown))}")
    defaults = {
        "n": (1200, 120),
        "n_max": (120, 30),
        "n_lognormal": (600, 240),
        "n_scale": (2400, 480),
        "n_pool": (1920, 384),
        "n_pool3": (720, 144),
        "n_webhook": (240, 48),
        "n_kills": (600, 240),
        "bfl_rows": (20, 5),
        "baseline_lognormal_rows": (72, 24),
        "enqueue_rows": (1_000_000, 20_000),
        "enqueue_images_rows": (100_000, 10_000),
    }
    for k, (full, quick) in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, quick if a.quick else full)
    if a.profile is None:
        a.profile = profile_dir()
    return a


def profile_report(prof: Path, systems: dict[str, SystemFigures], enqueue: Sequence[EnqueueFigures]) -> list[str]:
    """Top functions of each profiled run: workers in ms per job, the enqueue CLI in microseconds per row."""
    out: list[str] = []
    for name, s in systems.items():
        stats = load(sorted(prof.glob(f"worker-{name}-*.prof")))
        if stats is not None:
            out += [f"\nworkers of {name} ({s.describe}), CPU per thread:", *top(stats, s.n)]
    for e in enqueue:
        stats = load([prof / f"enqueue-{e.rows}-{e.images}.prof"])
        if stats is not None:
            out += [f"\nenqueue CLI, {e.rows:,} rows, {e.images} images:", *top(stats, e.rows, per="us/row", scale=1e6)]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    only = set(a.only.split(","))
    plan = make_plan(a)
    m = machine()
    work = Path(tempfile.mkdtemp(prefix="kb-bench-"))
    prof: Path | None = a.profile.resolve() if a.profile else None
    systems: dict[str, SystemFigures] = {}
    baselines: dict[str, BaselineFigures] = {}
    webhooks: dict[str, WebhookFigures | str] = {}
    enqueue: list[EnqueueFigures] = []
    kills: KillsFigures | None = None
    started = time.monotonic()

    def note(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    note(f"machine: {m['nproc']} cores, {m['cpu_model']}; load average {m['loadavg_at_start']}")
    try:
        with embedded_redis() as url:
            for sc in plan.systems:
                if sc.name in only:
                    note(f"system {sc.name}: {sc.describe()}")
                    s = systems[sc.name] = run_system(
                        sc, url, work, workers=a.workers, concurrency=a.concurrency, prof_dir=prof, timeline=a.timeline
                    )
                    if a.timeline:
                        err = (work / sc.name / "cli.err").read_text()
                        note(err[err.find("cli timeline") :].rstrip())
                    note(
                        f"  start -> exit {s.util_user:.3f} ({s.user_wall_s:.1f}s), API wall {s.util_api:.3f}, "
                        f"polls/job {s.polls_per_job:.2f}, "
                        f"ready->stored p95 {s.ready_to_stored_p95_s:.3f}s, CPU busy {s.cpu_busy:.0%}, "
                        f"workers {s.worker_cpu_ms_per_job:.1f} ms/job, latencies {s.latency_start}"
                    )
            if "webhook" in only:
                for key, rate in (("webhook", 0.0), ("webhook-drop", WEBHOOK_DROP_RATE)):
                    note(f"webhook run: {plan.webhook.describe()}, {rate:.0%} of webhooks dropped")
                    webhooks[key] = run_webhook(
                        plan.webhook, url, work, workers=a.workers, concurrency=a.concurrency, drop_rate=rate
                    )
        if "kills" in only:
            ks = plan.kills
            note(f"kills: {ks.describe()} quiet, then {plan.kill_count} worker kills and a Redis restart")
            kills = run_kills(ks, work, workers=a.workers, concurrency=a.concurrency, kills=plan.kill_count)
            q, k = kills.quiet, kills.killed
            note(
                f"  quiet {q.user_wall_s:.1f}s, with kills {k.user_wall_s:.1f}s, ratio {kills.ratio:.3f}; "
                f"kills done {k.kills_done}/{plan.kill_count} at {k.kill_offsets_s}, restarts {k.restarts_done} "
                f"at {k.restart_offset_s}; rows {q.succeeded}/{k.succeeded} of {ks.n}; emulator tasks "
                f"{q.emulator_tasks}/{k.emulator_tasks}; 429s {q.rejected_429}/{k.rejected_429}; "
                f"task executions {q.task_executions}/{k.task_executions}"
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
            for n_rows, images in plan.enqueue:
                if n_rows <= 0:
                    continue
                note(f"enqueue: {n_rows:,} rows, {images} shared images")
                eprof = prof / f"enqueue-{n_rows}-{images}.prof" if prof else None
                enqueue.append(run_enqueue(n_rows, work, images=images, prof=eprof))
                note(f"  {enqueue[-1].wall_s:.1f}s, {enqueue[-1].peak_rss_mb:.0f} MB")
    finally:
        if a.keep:
            note(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    m["loadavg_at_end"] = loadavg()
    rows = build_rows(systems, baselines, enqueue, webhooks=webhooks, machine_info=m, kills=kills)
    print(render_table(rows))
    print(f"\n{m['platform']}" + (f"; profiled (cProfile in {prof}): figures include its cost" if prof else ""))
    for s in systems.values():
        cpu = ", ".join(f"{k} {v:.1f}" for k, v in s.cpu_ms_per_job.items())
        print(
            f"  {s.scenario}: CPU busy {s.cpu_busy:.0%}, ours {s.cpu_ours:.0%} (ms/job: {cpu}); 429s {s.rejected_429}, "
            f"peak active {s.peak_active}, mean busy slots {s.mean_busy_slots:.1f}, succeeded {s.succeeded}/{s.n}"
            + (f"; settings changed: {s.settings_changed}" if s.settings_changed else "")
        )
    if prof is not None:
        print("\n".join(profile_report(prof, systems, enqueue)))
    elapsed = time.monotonic() - started
    note(f"done in {elapsed:.0f}s")
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["python", "benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)]),
        "quick": a.quick,
        "profiled": prof is not None,
        "machine": m,
        "table": [r.to_json() for r in rows],
        "systems": {k: v.to_json() for k, v in systems.items()},
        "baselines": {k: v.to_json() for k, v in baselines.items()},
        "webhooks": {k: v if isinstance(v, str) else v.to_json() for k, v in webhooks.items()},
        "enqueue": [e.to_json() for e in enqueue],
        "kills": kills.to_json() if kills is not None else None,
        "elapsed_s": round(elapsed, 1),
    }
    a.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
