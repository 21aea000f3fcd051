"""Run one piece of the benchmark and return its figures: a system scenario, a baseline, the enqueue CLI.

Every run gets a fresh in-process emulator (port 0), so its ``/_emulator/stats`` cover that run only.
System runs also get fresh worker processes (``local.WorkerPool``, as after a deploy) and their own
API key on the shared embedded Redis, so their slot gates, wait lists and counters are their own.
The workers' learnt latencies (``kb:latency:*``) are kept from the case before when it ran the same
latency law, as a second night's run finds them, and cleared otherwise (:func:`_latencies_kept`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from benchmarks.manifest_gen import write_manifest
from kontext_batch.api.models import MODEL_ENDPOINTS
from kontext_batch.emulator import Emulator, EmulatorConfig, LatencySpec
from kontext_batch.emulator.config import WEBHOOK_FAULTS
from kontext_batch.run.enqueue import RunRequest, start_run
from kontext_batch.run.local import WorkerPool, embedded_redis, free_port
from kontext_batch.runtime import Runtime
from kontext_batch.secret import Secret
from kontext_batch.settings import ApiKey, Settings
from kontext_batch.workers.app import celery_runtime

__all__ = [
    "BaselineFigures",
    "EnqueueFigures",
    "Phases",
    "Scenario",
    "SystemFigures",
    "WebhookFigures",
    "pct",
    "phases",
    "run_baseline",
    "run_enqueue",
    "run_system",
    "run_webhook",
]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MAX_CAP = 6  # BFL's cap for flux-kontext-max: the emulator's and Settings' default too
EMULATOR_SEED = 6
#: Set to a folder: every worker and the enqueue CLI run under cProfile and leave their profiles there.
PROFILE_ENV = "KB_BENCH_PROFILE"


def profile_dir() -> Path | None:
    raw = os.environ.get(PROFILE_ENV, "").strip()
    return Path(raw) if raw else None


@dataclass(frozen=True)
class Scenario:
    """N rows of one model against an emulator with one latency law and one cap."""

    name: str
    n: int
    model: str  # "pro" or "max"
    cap_total: int  # active tasks per key, all models: Settings.max_active and the emulator's max_active_total
    latency: LatencySpec
    time_scale: float = 1.0
    scale_poll_knobs: bool = False  # poll_first/min/max_s times time_scale: the same run, only faster
    keys: int = 1  # more than 1: a pool of this many keys (KONTEXT_API_KEYS), each with cap_total
    render: str = "fast"  # the emulator's rendering: "fast" (one shared sample) or "full" (Pillow per task)
    faults: tuple[tuple[str, float], ...] = ()

    @property
    def cap_per_key(self) -> int:
        return min(MAX_CAP, self.cap_total) if self.model == "max" else self.cap_total

    @property
    def cap(self) -> int:
        """The cap that binds this scenario's rows: every key of the pool together."""
        return self.cap_per_key * self.keys

    def emulator_config(self) -> EmulatorConfig:
        return EmulatorConfig(
            latency={"*": self.latency},
            time_scale=self.time_scale,
            max_active={"flux-kontext-max": MAX_CAP},
            max_active_total=self.cap_total,
            seed=EMULATOR_SEED,
            render="full" if self.render == "full" else "fast",
            faults=dict(self.faults),
        )

    def key_settings(self) -> dict[str, Any]:
        """``api_key`` for one key, ``api_keys`` (the pool a run binds to) for several."""
        if self.keys == 1:
            return {"api_key": Secret(f"bench-{self.name}")}
        return {"api_keys": tuple(ApiKey(Secret(f"bench-{self.name}-{i}")) for i in range(self.keys))}

    def settings_changes(self) -> dict[str, Any]:
        """The Settings this scenario sets away from the defaults (reported beside the figures)."""
        d = Settings()
        out: dict[str, Any] = {"max_active": self.cap_total} if self.cap_total != d.max_active else {}
        if self.scale_poll_knobs:
            out.update(
                poll_first_s=round(d.poll_first_s * self.time_scale, 4),
                poll_min_s=round(d.poll_min_s * self.time_scale, 4),
                poll_max_s=round(d.poll_max_s * self.time_scale, 4),
            )
        return out

    def describe(self) -> str:
        lat = self.latency
        if lat.kind == "fixed":
            ltxt = f"L={lat.median * self.time_scale:g}s"
        else:
            ltxt = f"L~logn({lat.median:g}s,{lat.sigma:g})x{self.time_scale:g}"
        cap = f"{self.keys} keys x C={self.cap_per_key}" if self.keys > 1 else f"C={self.cap}"
        render = " render=full" if self.render == "full" else ""
        return f"{self.model} {cap} {ltxt} N={self.n}{render}"


def pct(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(q * len(s)) - 1))]


@dataclass(frozen=True)
class Phases:
    """Where a command's wall went, from its start to its exit, on one clock.

    Every time here is ``time.time()``: the emulator stamps its tasks with it (``EmulatorState.now``),
    and the benchmark stamps the command's start and exit with it, so the two can be subtracted.
    """

    start_to_first_submit_s: float  # the command's start -> the emulator's earliest submitted_at
    inside_util: float  # busy slot-seconds / (cap x (last ready - first submit)): the steady state
    last_ready_to_last_store_s: float  # the emulator's last ready_at -> the last output stored
    last_store_to_exit_s: float  # the last output stored -> the command's exit
    notice_lag_p50_s: float  # ready_at -> the first poll that saw it (seen_done_at)
    notice_lag_p95_s: float
    # kontext-batch only: the last store -> the run marked finished (results.csv written), the part of
    # last_store_to_exit_s the workers' finalize takes; the rest is the CLI's --wait loop and exit.
    last_store_to_finished_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def phases(
    tasks: Sequence[dict[str, Any]],
    cap: int,
    *,
    started_at: float,
    exited_at: float,
    last_stored_at: float,
    finished_at: float | None = None,
) -> Phases:
    """The phase split of one command's run from the emulator's per-task record (``stats["tasks"]``)."""
    if not tasks:
        return Phases(0.0, 0.0, 0.0, exited_at - last_stored_at, 0.0, 0.0)
    first_submit = min(t["submitted_at"] for t in tasks)
    last_ready = max(t["ready_at"] for t in tasks)
    busy = sum(t["ready_at"] - t["submitted_at"] for t in tasks)
    span = last_ready - first_submit
    lags = [t["seen_done_at"] - t["ready_at"] for t in tasks if t.get("seen_done_at") is not None]
    return Phases(
        start_to_first_submit_s=first_submit - started_at,
        inside_util=busy / (cap * span) if span > 0 and cap > 0 else 0.0,
        last_ready_to_last_store_s=last_stored_at - last_ready,
        last_store_to_exit_s=exited_at - last_stored_at,
        notice_lag_p50_s=pct(lags, 0.50),
        notice_lag_p95_s=pct(lags, 0.95),
        last_store_to_finished_s=None if finished_at is None else finished_at - last_stored_at,
    )


# -- CPU accounting (Linux /proc; zeros elsewhere) ----------------------------------------------------


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine so far."""
    try:
        fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


def process_cpu_s(pids: Sequence[int]) -> float:
    """User + system CPU seconds of these processes so far."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (float(parts[11]) + float(parts[12])) / tick
    return total


def redis_pid(url: str) -> int | None:
    """The pid of the redis-server serving ``url``, found by its process title."""
    port = url.rsplit(":", 1)[1].split("/", 1)[0]
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            # redis-server retitles itself "redis-server 127.0.0.1:PORT".
            title = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            if b"redis-server" in title and (b":" + port.encode()) in title:
                return int(proc.name)
    return None


@dataclass
class CpuMeter:
    """CPU used between start() and stop(): the machine, the workers, this process (the emulator), Redis."""

    worker_pids: list[int]
    redis_pids: list[int]
    busy: float = 0.0
    workers_s: float = 0.0
    emulator_s: float = 0.0
    redis_s: float = 0.0
    _start: tuple[tuple[float, float], float, float, float] | None = None

    def start(self) -> None:
        self._start = (
            machine_cpu(),
            process_cpu_s(self.worker_pids),
            time.process_time(),
            process_cpu_s(self.redis_pids),
        )

    def stop(self) -> None:
        assert self._start is not None
        (b0, t0), w0, e0, r0 = self._start
        b1, t1 = machine_cpu()
        self.busy = (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0
        self.workers_s = process_cpu_s(self.worker_pids) - w0
        self.emulator_s = time.process_time() - e0
        self.redis_s = process_cpu_s(self.redis_pids) - r0


# -- system runs --------------------------------------------------------------------------------------


@dataclass
class SystemFigures:
    """One scenario through the whole system. Times in seconds; see README for each definition."""

    scenario: str
    describe: str
    n: int
    cap: int
    succeeded: int
    mean_latency_s: float  # the emulator's drawn task latencies
    ideal_s: float  # sum of latencies / cap: no client can finish sooner
    system_wall_s: float  # the run registered (meta created_at) -> run marked finished (results.csv written)
    api_wall_s: float  # first submit at the emulator -> last output stored (sidecar stored_at)
    enqueue_s: float  # the command's start -> the run registered (its import, Redis checks, the manifest pass)
    polls_per_job: float
    polls_max: int
    executions_per_job: float
    ready_to_stored_p50_s: float
    ready_to_stored_p95_s: float
    ready_to_stored_max_s: float
    rejected_429: int
    peak_active: int  # the emulator's peak of active tasks, summed over the pool's keys
    mean_busy_slots: float  # sum of task latencies / (first submit -> last ready): slots busy on average
    cpu_busy: float  # fraction of the whole machine's CPU busy during the run (every process)
    cpu_ms_per_job: dict[str, float] = field(default_factory=dict)  # workers / emulator / redis
    settings_changed: dict[str, Any] = field(default_factory=dict)
    keys: int = 1
    render: str = "fast"
    per_key_peak: list[int] = field(default_factory=list)
    # What a user times: `kontext-batch run MANIFEST -o OUT --wait` from its start to its exit.
    user_wall_s: float = 0.0
    phases: Phases | None = None
    #: Whether the workers started with the latencies a case before learnt ("warm") or none ("cold").
    latency_start: str = "cold"

    @property
    def util_user(self) -> float:
        """The headline: ideal / (the command's start -> its exit)."""
        return self.ideal_s / self.user_wall_s if self.user_wall_s > 0 else 0.0

    @property
    def worker_cpu_ms_per_job(self) -> float:
        return self.cpu_ms_per_job.get("workers", 0.0)

    @property
    def util_api(self) -> float:
        return self.ideal_s / self.api_wall_s if self.api_wall_s > 0 else 0.0

    @property
    def util_system(self) -> float:
        return self.ideal_s / self.system_wall_s if self.system_wall_s > 0 else 0.0

    @property
    def cpu_ours(self) -> float:
        """Fraction of the machine's CPU used by this run's processes (workers, emulator, Redis)."""
        used_s = sum(self.cpu_ms_per_job.values()) / 1000 * self.n
        return used_s / (self.system_wall_s * (os.cpu_count() or 1)) if self.system_wall_s > 0 else 0.0

    @property
    def cpu_ceiling(self) -> float:
        """The utilisation this machine's cores allow at the CPU cost per job measured here (<= 1)."""
        per_job_s = sum(self.cpu_ms_per_job.values()) / 1000
        if per_job_s <= 0 or self.mean_latency_s <= 0:
            return 1.0
        return min(1.0, ((os.cpu_count() or 1) / per_job_s) / (self.cap / self.mean_latency_s))

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.update(
            phases=self.phases.to_json() if self.phases is not None else None,
            util_user=round(self.util_user, 4),
            util_api=round(self.util_api, 4),
            util_system=round(self.util_system, 4),
            cpu_ours=round(self.cpu_ours, 3),
            cpu_ceiling=round(self.cpu_ceiling, 3),
        )
        return d


class BenchWorkerPool(WorkerPool):
    """Workers as ``WorkerPool`` starts them; with ``prof_dir`` each runs under ``profiled.py`` (cProfile in
    every thread) and leaves ``worker-{tag}-{i}.prof`` there; ``extra_env`` goes to their environment."""

    def __init__(
        self,
        settings: Settings,
        *,
        prof_dir: Path | None = None,
        tag: str = "",
        extra_env: dict[str, str] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(settings, **kw)
        self.prof_dir = prof_dir
        self.tag = tag
        self.extra_env = extra_env or {}

    def _env(self) -> dict[str, str]:
        return {**super()._env(), **self.extra_env}

    def _command(self, i: int) -> list[str]:
        cmd = super()._command(i)
        if self.prof_dir is None:
            return cmd
        self.prof_dir.mkdir(parents=True, exist_ok=True)
        # The same worker, started through the per-thread profiler (cmd[0] is the interpreter).
        return [cmd[0], str(HERE / "profiled.py"), str(self.prof_dir / f"worker-{self.tag}-{i}.prof"), *cmd[1:]]


def _busy_slots(tasks: dict[str, dict[str, Any]]) -> float:
    """Slots the emulator saw busy on average: each task is active from its submit to its ready time."""
    if not tasks:
        return 0.0
    start = min(t["submitted_at"] for t in tasks.values())
    end = max(t["ready_at"] for t in tasks.values())
    busy = sum(t["ready_at"] - t["submitted_at"] for t in tasks.values())
    return busy / (end - start) if end > start else 0.0


def _wait_for_workers(app: Any, n: int, timeout_s: float = 60) -> None:
    """Return once ``n`` workers answer a ping, so worker boot is not part of any wall time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(app.control.ping(timeout=0.5) or []) >= n:
            return
    raise RuntimeError(f"{n} workers did not answer a ping within {timeout_s:.0f} s")


def _wait_finished(rt: Runtime, run_id: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not rt.runs.info(run_id).finished:
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id} did not finish within {timeout_s:.0f} s")
        time.sleep(0.05)


@dataclass(frozen=True)
class CliRun:
    """One ``kontext-batch run ... --wait`` as a user starts it; times are ``time.time()``."""

    run_id: str
    started_at: float
    exited_at: float
    cpu_s: float  # the command's own user + system CPU


_RUN_ID = re.compile(r"^\d{8}T\d{6}-[0-9a-f]{6}$", re.MULTILINE)


def run_cli(
    settings: Settings, manifest: Path, out: Path, wdir: Path, *, timeout_s: float, timeline: bool = False
) -> CliRun:
    """``python -m kontext_batch run MANIFEST -o OUT --wait`` with ``settings`` as its environment.

    Timed from just before the process is started to just after it is reaped: the interpreter's
    start, the imports, the manifest pass, the run and the --wait loop's last look, all of it.
    Its stdout and stderr are kept in ``wdir`` (``cli.out``, ``cli.err``). With ``timeline`` the same
    command runs through ``cli_timeline.py``, which appends its start and end steps, in ms from the
    start, to ``cli.err``.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("KONTEXT_")}
    env.update(settings.to_env())
    args = ["run", str(manifest), "-o", str(out), "--wait"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    how = [str(HERE / "cli_timeline.py"), repr(started)] if timeline else ["-m", "kontext_batch"]
    cmd = [sys.executable, *how, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout_s, check=False)
    exited = time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    (wdir / "cli.out").write_text(proc.stdout)
    (wdir / "cli.err").write_text(proc.stderr)
    found = _RUN_ID.search(proc.stdout)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"kontext-batch run exited {proc.returncode}: {proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return CliRun(found.group(0), started, exited, cpu)


def _latencies_kept(rt: Runtime, sc: Scenario) -> bool:
    """Keep the shared latency windows when the case before ran the same latency law (True), else
    delete them, so that no case starts from another law's latencies."""
    law = f"{sc.latency!r} x {sc.time_scale}"
    if rt.redis.getset("bench:latency-law", law) == law.encode():
        return rt.latencies.load(MODEL_ENDPOINTS.values()) != {}
    rt.redis.delete(*(rt.keys.latency(ep) for ep in MODEL_ENDPOINTS.values()))
    return False


def run_system(
    sc: Scenario,
    redis_url: str,
    work: Path,
    *,
    workers: int,
    concurrency: int,
    prof_dir: Path | None = None,
    timeline: bool = False,
) -> SystemFigures:
    """Generate ``sc``'s manifest and run it through the whole system; return its figures.

    Workers are started and answer a ping first; then the user's command, ``kontext-batch run
    MANIFEST -o OUT --wait``, runs as a subprocess (:func:`run_cli`) and is timed from its start to
    its exit: the headline. The internal figures (API wall, system wall) come from the same run.
    With ``prof_dir`` every worker runs under cProfile and leaves ``worker-{scenario}-{i}.prof`` there.
    """
    wdir = work / sc.name
    out = wdir / "output"
    manifest = write_manifest(wdir / "manifest.csv", sc.n, model=sc.model)
    changed = sc.settings_changes()
    with Emulator(sc.emulator_config()) as emu:
        settings = Settings(
            api_base=emu.base_url,
            redis_url=redis_url,
            output=str(out),
            log_level="WARNING",
            **sc.key_settings(),
            **changed,
        )
        rt = celery_runtime(settings)
        pool = BenchWorkerPool(
            settings, prof_dir=prof_dir, tag=sc.name, n=workers, concurrency=concurrency, log_dir=wdir / "logs"
        )
        warm = _latencies_kept(rt, sc)
        try:
            pool.start()
            _wait_for_workers(rt.scheduler.celery, workers)  # type: ignore[attr-defined]
            if prof_dir is not None:  # leave worker start-up out of the profiles (see profiled.py)
                for i in range(workers):
                    (prof_dir / f"worker-{sc.name}-{i}.prof.reset").touch()
                time.sleep(0.5)
            meter = CpuMeter([p.pid for p in pool.procs], [p for p in [redis_pid(redis_url)] if p])
            meter.start()
            ideal_guess = sc.n * sc.latency.median * sc.time_scale / sc.cap
            cli = run_cli(settings, manifest, out, wdir, timeout_s=max(120.0, 20 * ideal_guess), timeline=timeline)
            meter.stop()
            info = rt.runs.info(cli.run_id)
            stats = emu.stats()
        finally:
            pool.stop()
            rt.close()
    (wdir / "emulator-stats.json").write_text(json.dumps(stats))
    tasks: dict[str, dict[str, Any]] = stats["tasks"]
    sidecars = [json.loads(p.read_text()) for p in (out / "out").rglob("*.json")]
    lags = [
        s["timings"]["stored_at"] - tasks[s["bfl_task_id"]]["ready_at"] for s in sidecars if s["bfl_task_id"] in tasks
    ]
    latencies = [t["ready_at"] - t["submitted_at"] for t in tasks.values()]
    fps = [k.fingerprint for k in settings.run_keys]
    per_key_peak = [int(stats["peak_active"].get(fp, {}).get("total", 0)) for fp in fps]
    t0 = cli.started_at
    first_submit = min((t["submitted_at"] for t in tasks.values()), default=t0)
    last_stored = max((s["timings"]["stored_at"] for s in sidecars), default=t0)
    created, finished = float(info.meta["created_at"]), float(info.meta["finished_at"])
    return SystemFigures(
        latency_start="warm" if warm else "cold",
        scenario=sc.name,
        describe=sc.describe(),
        n=sc.n,
        cap=sc.cap,
        succeeded=info.counts.get("succeeded", 0),
        mean_latency_s=sum(latencies) / len(latencies) if latencies else 0.0,
        ideal_s=sum(latencies) / sc.cap,
        system_wall_s=finished - created,
        api_wall_s=last_stored - first_submit,
        enqueue_s=created - t0,
        polls_per_job=float(stats["polls_per_task_mean"]),
        polls_max=int(stats["polls_per_task_max"]),
        executions_per_job=int(info.meta.get("task_executions", 0)) / sc.n,
        ready_to_stored_p50_s=pct(lags, 0.50),
        ready_to_stored_p95_s=pct(lags, 0.95),
        ready_to_stored_max_s=max(lags, default=0.0),
        rejected_429=int(stats["rejected_429"]),
        peak_active=sum(per_key_peak),
        mean_busy_slots=_busy_slots(tasks),
        cpu_busy=meter.busy,
        cpu_ms_per_job={
            "workers": round(meter.workers_s / sc.n * 1000, 2),
            "emulator": round(meter.emulator_s / sc.n * 1000, 2),
            "redis": round(meter.redis_s / sc.n * 1000, 2),
            "cli": round(cli.cpu_s / sc.n * 1000, 2),
        },
        settings_changed=changed,
        keys=sc.keys,
        render=sc.render,
        per_key_peak=per_key_peak,
        user_wall_s=cli.exited_at - cli.started_at,
        phases=phases(
            list(tasks.values()),
            sc.cap,
            started_at=cli.started_at,
            exited_at=cli.exited_at,
            last_stored_at=last_stored,
            finished_at=finished,
        ),
    )


# -- baselines ----------------------------------------------------------------------------------------


@dataclass
class BaselineFigures:
    """A baseline script's run; with ``extrapolated_to`` its wall and ideal are scaled to that many rows."""

    name: str
    scenario: str
    rows: int
    stored: int
    wall_s: float  # first submit -> last file written (the internal figure)
    ideal_s: float
    polls_per_job: float
    poll_interval_s: float
    extrapolated_to: int | None = None
    cpu_ms_per_job: float = 0.0  # the script's own CPU (user + system) over its run, per row it ran
    user_wall_s: float = 0.0  # the script's process from its start to its exit, as kontext-batch's CLI is timed
    phases: Phases | None = None

    @property
    def ratio(self) -> float:
        """The headline, as kontext-batch's: ideal / (the script's start -> its exit)."""
        return self.ideal_s / self.user_wall_s if self.user_wall_s > 0 else 0.0

    @property
    def ratio_internal(self) -> float:
        """ideal / (first submit -> last file written): the figure earlier tables printed."""
        return self.ideal_s / self.wall_s if self.wall_s > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "phases": self.phases.to_json() if self.phases is not None else None,
            "ratio": round(self.ratio, 4),
            "ratio_internal": round(self.ratio_internal, 4),
        }


def run_baseline(
    kind: str, sc: Scenario, rows: int, work: Path, *, extrapolate_to: int | None = None, tag: str = ""
) -> BaselineFigures:
    """``baselines.py KIND`` as its own process against a fresh emulator with ``sc``'s settings.

    The poll interval is BFL's 0.5 s times the scenario's time_scale, as the system's poll knobs are.
    """
    wdir = work / f"baseline-{kind}{tag}"
    manifest = write_manifest(wdir / "manifest.csv", rows, model=sc.model)
    interval = 0.5 * sc.time_scale
    with Emulator(sc.emulator_config()) as emu:
        started = time.time()
        proc = subprocess.run(
            [
                sys.executable,
                str(HERE / "baselines.py"),
                kind,
                str(manifest),
                "--base-url",
                emu.base_url,
                "--key",
                f"bench-baseline-{kind}",
                "--out",
                str(wdir / "output"),
                "--concurrency",
                str(sc.cap),
                "--poll-interval",
                str(interval),
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        exited = time.time()
        stats = emu.stats()
    res = json.loads(proc.stdout)
    tasks = list(stats["tasks"].values())
    latencies = [t["ready_at"] - t["submitted_at"] for t in tasks]
    wall, ideal = float(res["wall_s"]), sum(latencies) / sc.cap
    split = phases(tasks, sc.cap, started_at=started, exited_at=exited, last_stored_at=float(res["last_stored_at"]))
    user_wall = exited - started
    if extrapolate_to:
        # One job at a time: the wall grows linearly with N, and so does the ideal N*L/C; the
        # script's start and exit do not, so they are added once.
        wall, ideal = wall / rows * extrapolate_to, ideal / rows * extrapolate_to
        user_wall = wall + split.start_to_first_submit_s + split.last_store_to_exit_s
    return BaselineFigures(
        name=kind,
        scenario=sc.describe().rsplit(" N=", 1)[0] + f" N={extrapolate_to or rows}",
        rows=rows,
        stored=int(res["stored"]),
        wall_s=wall,
        ideal_s=ideal,
        polls_per_job=float(stats["polls_per_task_mean"]),
        poll_interval_s=interval,
        extrapolated_to=extrapolate_to,
        cpu_ms_per_job=round(float(res.get("cpu_s", 0.0)) / rows * 1000, 2),
        user_wall_s=user_wall,
        phases=split,
    )


# -- enqueue ------------------------------------------------------------------------------------------

# Run the command, then report its wall time and the peak RSS of this wrapper's only child.
_MEASURE = """
import resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
wall = time.perf_counter() - t
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(rc.returncode, wall, ru.ru_maxrss, ru.ru_utime + ru.ru_stime)
sys.stderr.write(rc.stderr[-2000:])
"""


@dataclass
class EnqueueFigures:
    rows: int
    images: int
    wall_s: float
    peak_rss_mb: float
    cpu_s: float
    redis_bytes_per_row: float

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_enqueue(rows: int, work: Path, *, images: int = 0, prof: Path | None = None) -> EnqueueFigures:
    """``kontext-batch run MANIFEST --output DIR`` as a subprocess with no workers: it validates and enqueues.

    It gets its own embedded Redis (flushed afterwards), so used_memory before/after is its alone.
    With ``prof`` the CLI runs under ``python -m cProfile -o PROF`` (its figures then include cProfile's cost).
    """
    wdir = work / f"enqueue-{rows}-{images}"
    manifest = write_manifest(wdir / "manifest.csv", rows, images=images)
    with embedded_redis() as url:
        r = redis.Redis.from_url(url)
        before = int(r.info("memory")["used_memory"])
        env = {k: v for k, v in os.environ.items() if not k.startswith("KONTEXT_")}
        env.update(KONTEXT_REDIS_URL=url, KONTEXT_API_KEY="bench-enqueue", KONTEXT_LOG_LEVEL="WARNING")
        cmd = [
            sys.executable,
            "-c",
            _MEASURE,
            sys.executable,
            *(["-m", "cProfile", "-o", str(prof)] if prof is not None else []),
            "-m",
            "kontext_batch",
            "run",
            str(manifest),
            "--output",
            str(wdir / "output"),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=True)
        code, wall, maxrss, cpu = proc.stdout.split()
        after = int(r.info("memory")["used_memory"])
        r.flushall()
        r.close()
    if int(code) != 0:
        raise RuntimeError(f"kontext-batch run exited {code}: {proc.stderr}")
    # ru_maxrss is in kilobytes on Linux, bytes on macOS.
    rss_mb = int(maxrss) / (1024 * 1024 if sys.platform == "darwin" else 1024)
    return EnqueueFigures(rows, images, float(wall), rss_mb, float(cpu), (after - before) / rows)


# -- webhooks -----------------------------------------------------------------------------------------

#: The emulator's fault that drops a task's webhook delivery.
WEBHOOK_DROP_FAULT = WEBHOOK_FAULTS[0]


@dataclass
class WebhookFigures:
    scenario: str
    describe: str
    n: int
    drop_rate: float
    succeeded: int
    polls_per_job: float
    webhooks_sent: int
    webhooks_failed: int
    system_wall_s: float

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_webhook(
    sc: Scenario, redis_url: str, work: Path, *, workers: int, concurrency: int, drop_rate: float
) -> WebhookFigures:
    """``sc`` with ``KONTEXT_WEBHOOK_URL`` set: rows complete by webhook; ``drop_rate`` of webhooks are
    lost (the emulator's ``webhook-lost`` fault). The receiver runs as ``kontext-batch webhooks --port N``."""
    wdir = work / f"{sc.name}-drop{drop_rate:g}"
    out = wdir / "output"
    manifest = write_manifest(wdir / "manifest.csv", sc.n, model=sc.model)
    faults = dict(sc.faults)
    if drop_rate > 0:
        faults[WEBHOOK_DROP_FAULT] = drop_rate
    port = free_port()
    cfg = dataclasses.replace(sc.emulator_config(), faults=faults)
    with Emulator(cfg) as emu, contextlib.ExitStack() as stack:
        settings = Settings(
            api_base=emu.base_url,
            redis_url=redis_url,
            output=str(out),
            log_level="WARNING",
            **sc.key_settings(),
            **sc.settings_changes(),
            webhook_url=f"http://127.0.0.1:{port}",
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("KONTEXT_")}
        env.update(settings.to_env(), KONTEXT_WEBHOOK_URL=f"http://127.0.0.1:{port}")
        receiver = [sys.executable, "-m", "kontext_batch", "webhooks", "--port", str(port)]
        proc = subprocess.Popen(receiver, env=env, cwd=ROOT)
        stack.callback(proc.wait, 10)
        stack.callback(proc.terminate)
        rt = celery_runtime(settings)
        stack.callback(rt.close)
        pool = BenchWorkerPool(
            settings,
            extra_env={"KONTEXT_WEBHOOK_URL": env["KONTEXT_WEBHOOK_URL"]},
            n=workers,
            concurrency=concurrency,
            log_dir=wdir / "logs",
        )
        stack.enter_context(pool)
        _wait_for_workers(rt.scheduler.celery, workers)  # type: ignore[attr-defined]
        t0 = time.time()
        rep = start_run(rt, RunRequest(str(manifest), str(out), model=sc.model))
        _wait_finished(rt, rep.run_id, max(120.0, 20 * sc.n * sc.latency.median * sc.time_scale / sc.cap))
        info = rt.runs.info(rep.run_id)
        stats = emu.stats(tasks=False)
    return WebhookFigures(
        scenario=sc.name,
        describe=sc.describe(),
        n=sc.n,
        drop_rate=drop_rate,
        succeeded=info.counts.get("succeeded", 0),
        polls_per_job=float(stats["polls_per_task_mean"]),
        webhooks_sent=int(stats.get("webhooks_sent", 0)),
        webhooks_failed=int(stats.get("webhooks_failed", 0)),
        system_wall_s=float(info.meta["finished_at"]) - t0,
    )
