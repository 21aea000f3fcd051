"""The kills case of issue 22: the same run twice, quiet and with worker SIGKILLs and a Redis restart.

Both runs share one AOF Redis (as docker-compose runs it), flushed between them, and get a fresh
emulator and fresh workers each; both are timed as a user times them: ``kontext-batch run MANIFEST
-o OUT --wait`` from its start to its exit.
The kills are spread over the quiet run's wall (so they land inside the run, not after it): kill ``i``
SIGKILLs worker ``i mod workers`` and starts a fresh one in its place (``WorkerPool.restart``), as a
supervisor would. The Redis restart (SIGTERM, the AOF kept, a new server on the same port and folder
after a pause: :func:`~kontext_batch.run.local.restartable_redis`, as the fault suite's) is at the middle.
"""

from __future__ import annotations

import functools
import json
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from benchmarks.manifest_gen import write_manifest
from benchmarks.measure import BenchWorkerPool, CliRun, Scenario, _wait_for_workers, run_cli
from kontext_batch.emulator import Emulator
from kontext_batch.run.local import restartable_redis
from kontext_batch.settings import Settings
from kontext_batch.workers.app import celery_runtime

__all__ = ["KillRun", "KillsFigures", "run_kills"]

#: How long Redis stays down between the old server's exit and the new one's start (the fault suite's pause too).
REDIS_DOWN_S = 2.0


@dataclass
class KillRun:
    """One of the two runs: its wall from the command's start to its exit, and what it paid."""

    user_wall_s: float
    succeeded: int
    emulator_tasks: int  # every task the emulator accepted: more than n are duplicates paid for
    rejected_429: int
    kills_done: int
    restarts_done: int
    kill_offsets_s: list[float] = field(default_factory=list)  # from the command's start
    restart_offset_s: float | None = None
    task_executions: int = 0  # every delivered Celery message: the re-drives of killed workers' steps show here

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class KillsFigures:
    describe: str
    n: int
    kills_planned: int
    quiet: KillRun
    killed: KillRun

    @property
    def ratio(self) -> float:
        """with kills / quiet, both from the command's start to its exit."""
        return self.killed.user_wall_s / self.quiet.user_wall_s if self.quiet.user_wall_s > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "describe": self.describe,
            "n": self.n,
            "kills_planned": self.kills_planned,
            "ratio": round(self.ratio, 4),
            "quiet": self.quiet.to_json(),
            "killed": self.killed.to_json(),
        }


def _one_run(
    sc: Scenario,
    wdir: Path,
    url: str,
    restart_redis: Callable[[], None] | None,
    *,
    workers: int,
    concurrency: int,
    kills: int,
    spread_s: float,
) -> KillRun:
    """``sc`` through the system; ``kills`` worker kills and (with ``restart_redis``) one Redis restart
    at even steps of ``spread_s`` from the command's start."""
    out = wdir / "output"
    manifest = write_manifest(wdir / "manifest.csv", sc.n, model=sc.model)
    with Emulator(sc.emulator_config()) as emu:
        settings = Settings(
            api_base=emu.base_url,
            redis_url=url,
            output=str(out),
            log_level="WARNING",
            **sc.key_settings(),
            **sc.settings_changes(),
        )
        rt = celery_runtime(settings)
        pool = BenchWorkerPool(settings, tag=sc.name, n=workers, concurrency=concurrency, log_dir=wdir / "logs")
        result: list[CliRun | BaseException] = []
        try:
            pool.start()
            _wait_for_workers(rt.scheduler.celery, workers)  # type: ignore[attr-defined]
            ideal_guess = sc.n * sc.latency.median * sc.time_scale / sc.cap

            def cli() -> None:
                try:
                    result.append(run_cli(settings, manifest, out, wdir, timeout_s=max(120.0, 20 * ideal_guess)))
                except BaseException as e:  # handed to the main thread, which re-raises it
                    result.append(e)

            t0 = time.time()
            thread = threading.Thread(target=cli, name="kills-cli", daemon=True)
            thread.start()
            # Faults at k/(kills+1) of the spread; the restart at 1/2 (never on a kill's step for 10 kills).
            events: list[tuple[float, str]] = [(spread_s * (k + 1) / (kills + 1), "kill") for k in range(kills)]
            if restart_redis is not None:
                events.append((spread_s / 2, "restart"))
            run = KillRun(0.0, 0, 0, 0, 0, 0)
            restarter: threading.Thread | None = None
            for at, what in sorted(events):
                thread.join(max(0.0, t0 + at - time.time()))
                if not thread.is_alive():
                    break  # the run ended first: the kills not done are reported as not done
                if what == "kill":
                    pool.restart(run.kills_done % workers)
                    run.kills_done += 1
                    run.kill_offsets_s.append(round(time.time() - t0, 2))
                elif restart_redis is not None:
                    # In its own thread: Redis is down for seconds, and the kills keep their schedule meanwhile.
                    restarter = threading.Thread(target=restart_redis, name="kills-redis-restart", daemon=True)
                    restarter.start()
                    run.restarts_done += 1
                    run.restart_offset_s = round(time.time() - t0, 2)
            thread.join()
            if restarter is not None:
                restarter.join()
            got = result[0]
            if isinstance(got, BaseException):
                raise got
            stats = emu.stats()
            info = rt.runs.info(got.run_id)
        finally:
            pool.stop()
            rt.close()
    run.user_wall_s = got.exited_at - got.started_at
    run.succeeded = info.counts.get("succeeded", 0)
    run.emulator_tasks = int(stats["tasks_created"])
    run.rejected_429 = int(stats["rejected_429"])
    run.task_executions = int(info.meta.get("task_executions", 0))
    # Kept with --keep: benchmarks/slots.py reads the tasks; t0 puts the kill offsets on their clock.
    (wdir / "emulator-stats.json").write_text(json.dumps({**stats, "kills_t0": t0, "run": run.to_json()}))
    return run


def run_kills(sc: Scenario, work: Path, *, workers: int, concurrency: int, kills: int = 10) -> KillsFigures:
    """``sc`` quiet, then with ``kills`` worker kills and one Redis restart spread over the quiet wall.

    Both runs use one AOF Redis on one port, flushed between them: the workers' Celery app is built
    once per process (``celery_runtime``) and keeps its first broker URL.
    """
    (work / "kills-redis").mkdir(parents=True, exist_ok=True)
    with restartable_redis(str(work / "kills-redis"), down_s=REDIS_DOWN_S) as (url, restart):
        restart_redis = functools.partial(restart, signal.SIGTERM)
        opts: dict[str, Any] = {"workers": workers, "concurrency": concurrency}
        quiet = _one_run(sc, work / f"{sc.name}-quiet", url, None, kills=0, spread_s=0.0, **opts)
        flush = redis.Redis.from_url(url)
        flush.flushall()
        flush.close()
        killed = _one_run(
            sc, work / f"{sc.name}-killed", url, restart_redis, kills=kills, spread_s=quiet.user_wall_s, **opts
        )
    return KillsFigures(describe=sc.describe(), n=sc.n, kills_planned=kills, quiet=quiet, killed=killed)
