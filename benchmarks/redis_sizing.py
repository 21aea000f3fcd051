"""How much Redis a run takes: bytes per waiting row, per finished row and per in-flight job.

::

    python -m benchmarks.redis_sizing                 # 100,000 rows queued, 1,000 run to the end
    python -m benchmarks.redis_sizing --queued 20000 --finished 300

Each figure comes from a private Redis (the embedded one of ``--local``), flushed between figures,
so used_memory before and after is the measured writes' alone:

- waiting: ``start_run`` (the real enqueue path) on a manifest of ``--queued`` rows, no workers; the
  delta of used_memory per row, beside MEMORY USAGE of the run's rows hash and wait list;
- finished: ``--finished`` rows run to the end through the emulator with local worker processes;
  MEMORY USAGE of the run's keys per row once it is final (specs, results, counters; the jobs are
  retired), and the delta of used_memory (which also counts the workers' connections and queues);
- in flight: the same run with the emulator slow (30 s per task), sampled while every slot is busy:
  MEMORY USAGE of the job hashes plus the slots' leases and the watch, per job.

The prompts are the benchmark manifest's (about 60 characters); longer prompts add about 1.13 B per
byte of manifest to a row (see kontext_batch.coord.policy).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from tempfile import TemporaryDirectory

import redis

from benchmarks.manifest_gen import write_manifest
from kontext_batch.emulator import Emulator, EmulatorConfig, LatencySpec
from kontext_batch.run.enqueue import RunRequest, start_run
from kontext_batch.run.local import WorkerPool, embedded_redis
from kontext_batch.secret import Secret
from kontext_batch.settings import Settings
from kontext_batch.workers.app import celery_runtime

KEY = "sizing-key-5d1e"


class _Nowhere:
    """No worker: the dispatched rows' submit messages go nowhere (the waiting figure has none)."""

    def submit(self, ref: str, token: int, fp: str, *, countdown_s: float = 0.0) -> None:
        pass

    def poll(self, ref: str, token: int, fp: str, *, countdown_s: float = 0.0) -> None:
        pass


def _used(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def _usage(r: redis.Redis, pattern: str) -> int:
    return sum(int(r.memory_usage(k, samples=0) or 0) for k in r.scan_iter(pattern, count=1000))


def waiting(url: str, work: Path, rows: int) -> dict[str, float]:
    from kontext_batch.runtime import Runtime  # noqa: PLC0415

    r = redis.Redis.from_url(url)
    r.flushall()
    manifest = write_manifest(work / "queued.csv", rows)
    s = Settings(api_key=Secret(KEY), api_base="http://127.0.0.1:9", redis_url=url, log_level="WARNING")
    rt = Runtime.create(s, _Nowhere())
    before = _used(r)
    t0 = time.monotonic()
    run = start_run(rt, RunRequest(str(manifest), str(work / "out-queued")))
    took = time.monotonic() - t0
    after = _used(r)
    figures = {
        "rows": rows,
        "manifest_bytes_per_row": manifest.stat().st_size / rows,
        "used_memory_per_row": (after - before) / rows,
        "rows_hash_per_row": _usage(r, f"*{run.run_id}:rows") / rows,
        "wait_list_per_row": _usage(r, "kb:wait:*") / rows,
        "enqueue_s": took,
    }
    rt.close()
    r.flushall()
    r.close()
    return figures


def finished(url: str, work: Path, rows: int, *, workers: int = 2) -> dict[str, float]:
    r = redis.Redis.from_url(url)
    r.flushall()
    manifest = write_manifest(work / "finished.csv", rows)
    with Emulator(EmulatorConfig(latency={"*": LatencySpec.fixed(0.2)}, api_keys=(KEY,), seed=5)) as emu:
        s = Settings(api_key=Secret(KEY), api_base=emu.base_url, redis_url=url, log_level="WARNING")
        rt = celery_runtime(s)
        with WorkerPool(s, n=workers, concurrency=16):
            time.sleep(3)  # the workers' heartbeats and first sweeps are in before the baseline
            before = _used(r)
            run = start_run(rt, RunRequest(str(manifest), str(work / "out-finished")))
            _wait(lambda: rt.runs.info(run.run_id).finished, 60 + rows)
            time.sleep(2)  # the last jobs' retirement and the results file's claim settle
            after = _used(r)
            info = rt.runs.info(run.run_id)
        rt.close()
    figures = {
        "rows": rows,
        "succeeded": info.counts.get("succeeded", 0),
        "used_memory_per_row": (after - before) / rows,
        "run_keys_per_row": _usage(r, f"*{run.run_id}*") / rows,
        "results_hash_per_row": _usage(r, f"*{run.run_id}:results") / rows,
        "rows_hash_per_row": _usage(r, f"*{run.run_id}:rows") / rows,
    }
    r.flushall()
    r.close()
    return figures


def in_flight(url: str, work: Path, rows: int = 200) -> dict[str, float]:
    r = redis.Redis.from_url(url)
    r.flushall()
    manifest = write_manifest(work / "inflight.csv", rows)
    with Emulator(EmulatorConfig(latency={"*": LatencySpec.fixed(30.0)}, api_keys=(KEY,), seed=5)) as emu:
        s = Settings(api_key=Secret(KEY), api_base=emu.base_url, redis_url=url, log_level="WARNING")
        rt = celery_runtime(s)
        with WorkerPool(s, n=1, concurrency=32):
            start_run(rt, RunRequest(str(manifest), str(work / "out-inflight")))
            # Every slot busy and each job polling (the API's cap: 24 pro tasks for one key).
            _wait(lambda: sum(1 for _ in r.scan_iter("kb:job:*")) >= 20, 60)
            time.sleep(3)
            jobs = list(r.scan_iter("kb:job:*"))
            job_bytes = sum(int(r.memory_usage(k, samples=0) or 0) for k in jobs)
            # The slots' leases and the watch hold one entry per job; the wait list lost one each.
            leases = _usage(r, "kb:lease*") + _usage(r, "kb:watch*")
        rt.close()
    figures = {"jobs": len(jobs), "job_hash_per_job": job_bytes / len(jobs), "leases_per_job": leases / len(jobs)}
    r.flushall()
    r.close()
    return figures


def _wait(ok: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"not done after {timeout_s:.0f} s")
        time.sleep(0.2)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--queued", type=int, default=100_000, help="rows queued for the waiting figure")
    p.add_argument("--finished", type=int, default=1_000, help="rows run to the end for the finished figure")
    args = p.parse_args(argv)
    with TemporaryDirectory() as tmp, embedded_redis() as url:
        work = Path(tmp)
        w = waiting(url, work, args.queued)
        print(
            f"waiting:  {w['used_memory_per_row']:.0f} B/row used_memory ({w['rows']:,} rows queued in "
            f"{w['enqueue_s']:.1f} s; rows hash {w['rows_hash_per_row']:.0f} B, "
            f"wait list {w['wait_list_per_row']:.0f} B; {w['manifest_bytes_per_row']:.0f} manifest bytes a row)"
        )
        f = finished(url, work, args.finished)
        print(
            f"finished: {f['run_keys_per_row']:.0f} B/row in the run's keys "
            f"(results hash {f['results_hash_per_row']:.0f} B, rows hash {f['rows_hash_per_row']:.0f} B; "
            f"{f['succeeded']:.0f}/{f['rows']:,} succeeded); used_memory grew "
            f"{f['used_memory_per_row']:.0f} B/row, the workers' connections and queues included"
        )
        j = in_flight(url, work)
        print(
            f"in flight: {j['job_hash_per_job'] + j['leases_per_job']:.0f} B/job (job hash "
            f"{j['job_hash_per_job']:.0f} B, leases and watch {j['leases_per_job']:.0f} B; "
            f"{j['jobs']:.0f} jobs sampled)"
        )


if __name__ == "__main__":
    main()
