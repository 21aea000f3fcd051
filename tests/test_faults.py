"""The fault suite: real worker processes, a real emulator over HTTP, real Redis, and things breaking.

Each test runs a whole run through the CLI and the workers while something goes wrong (workers killed
with SIGKILL, Redis stopped and started again, every API fault at once, credits running out, a
cancel), then checks the run's books: one results line per manifest row, one valid output per
succeeded row, the API's active-task caps never passed, no lease left behind. What each test saw is
added to :mod:`tests.fault_figures`, printed at the end of the session.

Settings are shrunk so recovery happens in seconds: HTTP timeouts of 1.5 s, backoff from 0.05 s up to
1 s. A killed worker's jobs are re-driven when its heartbeat (5 s TTL) lapses; leases of 5 s are only
the leak guard.
"""

from __future__ import annotations

import io
import json
import signal
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from PIL import Image

from kontext_batch.coord.keys import Keys
from kontext_batch.coord.redisio import now_ms
from kontext_batch.coord.runs import RunInfo, RunStore
from kontext_batch.coord.slots import Slots
from kontext_batch.emulator import EmulatorConfig, LatencySpec
from kontext_batch.io.stores import open_store
from kontext_batch.run.local import restartable_redis
from tests import fault_figures
from tests.e2e_support import (
    E2E_KEY,
    System,
    product_image,
    read_results,
    running_system,
    wait_finished,
    write_csv,
)

pytestmark = pytest.mark.faults

FAST: dict[str, Any] = {
    "lease_s": 5.0,
    "http_timeout_s": 1.5,
    "retry_base_s": 0.05,
    "retry_max_s": 1.0,
    "poll_first_s": 0.3,
    "poll_min_s": 0.05,
    "poll_max_s": 1.0,
    # Whatever else leaves a job busy for a live holder, it is re-driven well within a test's wait.
    "step_deadline_s": 30.0,
}
HEADER = ["id", "model", "prompt", "input_image", "output_format", "seed"]
ENDPOINTS = ("flux-kontext-pro", "flux-kontext-max")
CAPS = {"total": 24, "flux-kontext-max": 6}


@pytest.fixture(autouse=True, scope="module")
def _figures_plugin(pytestconfig: pytest.Config) -> None:
    fault_figures.register(pytestconfig)


def emulator(latency_s: float, **kw: Any) -> EmulatorConfig:
    base: dict[str, Any] = {"latency": {"*": LatencySpec.fixed(latency_s)}, "api_keys": (E2E_KEY,), "seed": 5}
    base.update(kw)
    return EmulatorConfig(**base)


def manifest(tmp: Path, n: int, *, every_max: int = 4, every_image: int = 3, prompt: Any = None) -> Path:
    """``n`` rows: every ``every_max``-th on max, every ``every_image``-th with a small input image."""
    images = [product_image(tmp / "images" / f"p{i}.jpg", c, (160, 120)) for i, c in enumerate(_COLOURS)]
    rows = [
        {
            "id": f"r{i:04d}",
            "model": "max" if every_max and i % every_max == 0 else "pro",
            "prompt": prompt(i) if prompt else f"put product {i} on a white background",
            "input_image": f"images/{images[i % len(images)].name}" if every_image and i % every_image == 0 else None,
            "output_format": "png" if i % 5 == 0 else "jpeg",
            "seed": 1000 + i,
        }
        for i in range(1, n + 1)
    ]
    return write_csv(tmp / "manifest.csv", HEADER, rows)


_COLOURS = [(180, 40, 40), (40, 90, 170), (30, 130, 70), (200, 160, 40)]


def start(system: System, path: Path, out: Path, *extra: str) -> str:
    proc = system.cli("run", str(path), "--output", str(out), *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


@dataclass
class Books:
    """What a finished run left behind, read from Redis, the output store and the emulator."""

    info: RunInfo
    results: list[dict[str, str]]
    stats: dict[str, Any]
    lost: int
    duplicated: int

    def statuses(self) -> Counter[str]:
        return Counter(r["status"] for r in self.results)


def _pending_jobs(r: redis.Redis, run_id: str) -> str:
    """Where the unfinished rows are: watch deadlines, wait lists, job hashes (for the failure message)."""
    keys = Keys()
    lines = [f"watch: {r.zrange(keys.watch, 0, -1, withscores=True)[:20]} (now {now_ms()})"]
    lines += [f"{k.decode()}: {r.lrange(k, 0, 20)}" for k in r.scan_iter(f"{keys.ns}:wait:*")]
    lines += [f"{k.decode()}: {r.zrange(k, 0, -1, withscores=True)[:20]}" for k in r.scan_iter(f"{keys.ns}:lease:*")]
    for k in list(r.scan_iter(f"{keys.job_prefix}{run_id}:*"))[:30]:
        lines.append(f"{k.decode()}: {r.hgetall(k)}")
    return "\n".join(lines)


def account(out: Path, info: RunInfo, n_rows: int) -> tuple[list[dict[str, str]], int, int]:
    """results.csv as rows, and how many manifest rows are missing from it and duplicated in it."""
    results = read_results((out / "results.csv").read_bytes())
    seen = Counter(int(r["row"]) for r in results)
    lost = sum(1 for i in range(1, n_rows + 1) if seen[i] == 0)
    duplicated = sum(c - 1 for c in seen.values() if c > 1) + sum(c for i, c in seen.items() if not 1 <= i <= n_rows)
    assert info.ndone == n_rows, info
    return results, lost, duplicated


def check_outputs(out: Path, results: list[dict[str, str]]) -> None:
    """Each succeeded row: exactly one output object that decodes, and its sidecar naming the same task.

    Besides those, the store holds only the inputs, the prefix's ledger and each run's own ledger.
    """
    store = open_store(str(out))
    listed = set(store.list())
    ledgers = {f"runs/{r['run_id']}/{f}" for r in results for f in ("results.csv", "gallery.html")}
    assert ledgers <= listed, f"a run's own ledger is missing: {sorted(ledgers - listed)}"
    ledgers |= {"results.csv", "gallery.html"}
    names = [n for n in listed if not n.startswith("_inputs/") and n not in ledgers]
    by_uri = {store.uri(n): n for n in names}
    expected: set[str] = set()
    for r in results:
        if r["status"] != "succeeded":
            assert not r["output_uri"], r
            continue
        name = by_uri.get(r["output_uri"])
        assert name is not None, f"row {r['row']}: {r['output_uri']} not in the store"
        with Image.open(io.BytesIO(store.get(name))) as im:
            im.load()
            assert im.format in ("PNG", "JPEG"), (r["row"], im.format)
        side = json.loads(store.get(name + ".json"))
        assert side["row"] == int(r["row"])
        assert side["bfl_task_id"] == r["bfl_task_id"], r
        expected |= {name, name + ".json"}
    assert sorted(names) == sorted(expected), "objects that belong to no succeeded row"


def check_no_leases(r: redis.Redis, fp: str) -> None:
    slots = Slots(r, Keys(), lease_s=FAST["lease_s"])
    assert slots.active(fp) == 0
    for ep in ENDPOINTS:
        assert slots.active(fp, ep) == 0, ep
        assert slots.waiting(fp, ep) == 0, ep
    assert r.zcard(Keys().watch) == 0, r.zrange(Keys().watch, 0, 20)


def check_caps(stats: dict[str, Any], fp: str) -> None:
    peak = stats["peak_active"].get(fp, {})
    assert peak.get("total", 0) <= CAPS["total"], peak
    assert peak.get("flux-kontext-max", 0) <= CAPS["flux-kontext-max"], peak


def orphans(stats: dict[str, Any], results: list[dict[str, str]]) -> int:
    """API tasks no row recorded: submits that reached the API from a worker that died before saving the id."""
    recorded = {r["bfl_task_id"] for r in results if r["bfl_task_id"]}
    return sum(1 for task_id in stats["tasks"] if task_id not in recorded)


def record(books: Books, *, kills: int = 0, redis_restarts: int = 0, orphaned: int = 0) -> None:
    res = books.results
    row_polls = sum(int(r["polls"] or 0) for r in res)
    request_faults = sum(
        v for k, v in books.stats["faults_injected"].items() if k in ("500", "503", "429", "timeout", "disconnect")
    )
    fault_figures.add(
        rows=len(res),
        kills=kills,
        redis_restarts=redis_restarts,
        faults_injected=sum(books.stats["faults_injected"].values()),
        retries=sum(max(0, int(r["attempts"] or 0) - 1) for r in res)
        + request_faults
        + max(0, books.stats["polls"] - row_polls),
        rows_lost=books.lost,
        rows_duplicated=books.duplicated,
        orphans=orphaned,
    )


def books_of(
    system: System, r: redis.Redis, out: Path, run_id: str, n_rows: int, timeout_s: float, during: Any = None
) -> Books:
    info = wait_finished(RunStore(r, Keys()), run_id, timeout_s, during=during, detail=lambda: _pending_jobs(r, run_id))
    results, lost, duplicated = account(out, info, n_rows)
    return Books(info, results, system.emu.stats(), lost, duplicated)


# -- 1. kill -9 -------------------------------------------------------------------------------------


def test_workers_killed_mid_run_lose_and_duplicate_nothing(redis_url: str, tmp_path: Path) -> None:
    n = 300
    path = manifest(tmp_path, n)
    out = tmp_path / "out"
    r = redis.Redis.from_url(redis_url)
    kills: list[float] = []
    with running_system(redis_url, emulator=emulator(1.0), log_dir=tmp_path / "logs", **FAST) as system:
        run_id = start(system, path, out)
        t0 = time.monotonic()

        def kill_now_and_then(info: RunInfo) -> None:
            # Every ~2 s, alternating: SIGKILL one worker (threads die mid-submit, mid-poll, mid-store)
            # and start a fresh one in its place.
            if info.ndone < info.total and time.monotonic() - t0 > 2.0 * (len(kills) + 1) and len(kills) < 6:
                system.workers.restart(len(kills) % 2)
                kills.append(time.monotonic() - t0)

        books = books_of(system, r, out, run_id, n, 150, during=kill_now_and_then)
        check_no_leases(r, system.settings.api_key.fingerprint)
    fp = system.settings.api_key.fingerprint
    assert len(kills) >= 4, f"the run ended before 4 kills: {kills}"
    assert books.lost == 0
    assert books.duplicated == 0
    assert books.statuses() == {"succeeded": n}, books.statuses()
    check_outputs(out, books.results)
    check_caps(books.stats, fp)
    orphaned = orphans(books.stats, books.results)
    assert books.stats["submits"] - n == orphaned
    # Only a worker killed between its POST and saving the task id leaves an orphan: at most one
    # per in-flight submit of the killed worker.
    assert orphaned <= len(kills) * CAPS["total"], orphaned
    record(books, kills=len(kills), orphaned=orphaned)
    print(
        f"kill -9: {len(kills)} kills at {[round(k, 1) for k in kills]} s, {orphaned} orphan task(s), "
        f"{books.stats['rejected_429']} cap 429(s), peak {books.stats['peak_active'][fp]}"
    )


# -- 2. Redis restarted -----------------------------------------------------------------------------


def _check_workers(system: System, log_dir: Path) -> None:
    """A worker must ride out the outage (Celery reconnects), not exit: nothing restarts it here.

    This caught a real crash: with celery 5.7.0 + kombu 5.7.0 a lost broker connection made the
    worker exit with ``Unrecoverable error: AttributeError(... 'hostname')`` from kombu's redis
    ``_connparams`` (fixed in ``workers/broker.py``).
    """
    if system.workers.alive() != len(system.workers.procs):
        raise AssertionError(_worker_deaths(log_dir))


def _worker_deaths(log_dir: Path) -> str:
    """The lines around each worker's fatal error, for the failure message."""
    out = ["a worker process exited after the Redis restart:"]
    for log in sorted(log_dir.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()
        for i, line in enumerate(lines):
            if "CRITICAL" in line or "Unrecoverable" in line:
                end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("[")), len(lines))
                out.append(f"{log.name}: " + "\n".join([line, *lines[max(i + 1, end - 6) : end]]))
                break
    return "\n".join(out)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_redis_restarted_mid_run_finishes_every_row(tmp_path: Path, sig: signal.Signals) -> None:
    # SIGTERM: Redis writes and fsyncs its AOF, then exits (a `docker compose restart`).
    # SIGKILL: no shutdown at all. With appendfsync everysec Redis has already write()n every
    # acknowledged command to the AOF file, so the page cache keeps it: a process crash loses
    # nothing (only a machine crash could lose the last second).
    n = 120
    path = manifest(tmp_path, n, every_max=6)
    out = tmp_path / "out"
    restarted: list[float] = []
    with (
        tempfile.TemporaryDirectory(prefix="kb-aof-") as wd,
        restartable_redis(wd) as (url, restart),
        running_system(url, emulator=emulator(0.5), log_dir=tmp_path / "logs", **FAST) as system,
    ):
        r = redis.Redis.from_url(url, retry_on_timeout=True)
        run_id = start(system, path, out)
        t0 = time.monotonic()

        def restart_once(info: RunInfo) -> None:
            if not restarted and time.monotonic() - t0 > 2.5:
                assert info.ndone < info.total, "the run ended before Redis could be restarted"
                restart(sig)
                restarted.append(time.monotonic() - t0)
            _check_workers(system, tmp_path / "logs")

        books = books_of(system, r, out, run_id, n, 150, during=restart_once)
        check_no_leases(r, system.settings.api_key.fingerprint)
        _check_workers(system, tmp_path / "logs")
        r.close()
    assert restarted
    assert books.lost == 0
    assert books.duplicated == 0
    assert books.statuses() == {"succeeded": n}, books.statuses()
    check_outputs(out, books.results)
    check_caps(books.stats, system.settings.api_key.fingerprint)
    orphaned = orphans(books.stats, books.results)
    record(books, redis_restarts=len(restarted), orphaned=orphaned)
    print(
        f"redis {sig.name}: restarted at {restarted[0]:.1f} s, {orphaned} orphan task(s), "
        f"{books.stats['rejected_429']} cap 429(s), {books.info.meta.get('task_executions')} task executions"
    )


# -- 3. every fault at once -------------------------------------------------------------------------

ALL_FAULTS = {
    "500": 0.05,
    "503": 0.05,
    "429": 0.05,
    "timeout": 0.03,
    "disconnect": 0.02,
    "request-moderated": 0.01,
    "content-moderated": 0.01,
    "error": 0.01,
}
REQUEST_FAULTS = ("500", "503", "429", "timeout", "disconnect")
PINNED = {
    1: "request-moderated",
    2: "request-moderated",
    3: "content-moderated",
    4: "content-moderated",
    5: "error",
    6: "error",
}
EMULATOR_STATUS = {
    "Ready": "succeeded",
    "Request Moderated": "moderated",
    "Content Moderated": "moderated",
    "Error": "failed",
}


def test_every_fault_at_once_ends_every_row_with_the_right_status(redis_url: str, tmp_path: Path) -> None:
    n = 200

    def prompt(i: int) -> str:
        pinned = PINNED.get(i)
        return f"[emulator:{pinned}] row {i}" if pinned else f"make product {i} matte black"

    path = manifest(tmp_path, n, every_max=5, every_image=4, prompt=prompt)
    out = tmp_path / "out"
    r = redis.Redis.from_url(redis_url)
    # A `timeout` fault holds the request 2 s; the client gives up after 1.5 s and tries again.
    cfg = emulator(0.4, faults=ALL_FAULTS, seed=20261121, timeout_fault_s=2.0)
    with running_system(redis_url, emulator=cfg, log_dir=tmp_path / "logs", **FAST) as system:
        run_id = start(system, path, out)
        books = books_of(system, r, out, run_id, n, 180)
        check_no_leases(r, system.settings.api_key.fingerprint)
    stats, results = books.stats, books.results
    assert books.lost == 0
    assert books.duplicated == 0
    assert set(books.statuses()) <= {"succeeded", "moderated", "failed"}, books.statuses()
    for res in results:
        row = int(res["row"])
        # Every row's outcome is the one the API gave its recorded task: nothing was lost to a fault.
        assert res["bfl_task_id"], res
        api_status = stats["tasks"][res["bfl_task_id"]]["status"]
        assert res["status"] == EMULATOR_STATUS[api_status], (res, api_status)
        if res["status"] != "succeeded":
            assert api_status in res["error"], res  # BFL's word, in a sentence for Error
        if row in PINNED:
            assert (
                api_status
                == {
                    "request-moderated": "Request Moderated",
                    "content-moderated": "Content Moderated",
                    "error": "Error",
                }[PINNED[row]]
            )
        assert 1 <= int(res["attempts"]) <= system.settings.max_attempts, res
    check_outputs(out, results)
    fp = system.settings.api_key.fingerprint
    check_caps(stats, fp)
    injected = stats["faults_injected"]
    request_faults = sum(injected.get(k, 0) for k in REQUEST_FAULTS)
    assert request_faults >= 20, injected  # the faults did fire
    assert sum(injected.get(k, 0) for k in ("request-moderated", "content-moderated", "error")) >= 1, injected
    # No retry storm: tasks created stay within 1.5 x rows plus the faults answered on requests.
    assert stats["submits"] <= 1.5 * n + request_faults, (stats["submits"], injected)
    orphaned = orphans(stats, results)
    record(books, orphaned=orphaned)
    print(
        f"all faults: {books.statuses()}, injected {injected}, submits {stats['submits']}, "
        f"{orphaned} orphan task(s), attempts max {max(int(x['attempts']) for x in results)}"
    )


# -- 4. out of credits mid-run, then retry ----------------------------------------------------------


def test_out_of_credits_stops_the_run_and_retry_completes_it(redis_url: str, tmp_path: Path) -> None:
    n, paid = 50, 20  # credits for 20 of the 50 rows (4 credits each on pro)
    path = manifest(tmp_path, n, every_max=0, every_image=5)
    out = tmp_path / "out"
    r = redis.Redis.from_url(redis_url)
    cfg = emulator(0.5, credits=paid * 4)
    with running_system(redis_url, emulator=cfg, log_dir=tmp_path / "logs", **FAST) as system:
        first = system.cli("run", str(path), "--output", str(out), "--wait")
        assert first.returncode == 3, (first.returncode, first.stderr[-3000:])
        assert "out of credits" in first.stdout + first.stderr, first.stderr[-3000:]  # the summary says why
        assert "Traceback" not in first.stderr
        run_id = first.stdout.splitlines()[0].strip()
        info = RunStore(r, Keys()).info(run_id)
        stopped = system.emu.stats()
        # Submissions stopped at the first 402; every job the API had accepted was finished and stored.
        assert info.counts == {"succeeded": paid, "failed": n - paid}, info.counts
        assert info.meta["stopped"] == "out_of_credits"
        assert stopped["submits"] == paid
        assert stopped["rejected_402"] >= 1
        failed = [x for x in read_results((out / "results.csv").read_bytes()) if x["status"] == "failed"]
        assert all("out of credits" in x["error"] or "out_of_credits" in x["error"] for x in failed), failed[:3]

        system.emu.set_credits(E2E_KEY, 10_000)
        again = system.cli("retry", run_id, "--wait")
        assert again.returncode == 0, (again.returncode, again.stderr[-3000:])
        assert f"{n - paid} row(s) queued again" in again.stderr
        books = books_of(system, r, out, run_id, n, 60)
        check_no_leases(r, system.settings.api_key.fingerprint)
    assert books.lost == 0
    assert books.duplicated == 0
    assert books.statuses() == {"succeeded": n}
    assert "stopped" not in books.info.meta
    assert books.stats["submits"] == n  # the paid rows were not submitted again
    check_outputs(out, books.results)
    record(books)


# -- 5. cancel --------------------------------------------------------------------------------------


def test_cancel_lets_in_flight_jobs_finish_and_cancels_the_rest(redis_url: str, tmp_path: Path) -> None:
    n = 100
    path = manifest(tmp_path, n, every_max=1, every_image=0)  # all max: 6 at a time
    out = tmp_path / "out"
    r = redis.Redis.from_url(redis_url)
    with running_system(redis_url, emulator=emulator(1.0), log_dir=tmp_path / "logs", **FAST) as system:
        run_id = start(system, path, out)
        cancelled = system.cli("cancel", run_id)
        assert cancelled.returncode == 0, cancelled.stderr[-3000:]
        assert "cancelled" in cancelled.stdout
        books = books_of(system, r, out, run_id, n, 60)
        check_no_leases(r, system.settings.api_key.fingerprint)
        status = system.cli("status", run_id, "--json")
        assert status.returncode == 0, status.stderr[-3000:]
    assert json.loads(status.stdout)[0]["status"] == "cancelled"
    assert books.info.status == "cancelled"
    assert books.lost == 0
    assert books.duplicated == 0
    counts = books.statuses()
    assert set(counts) <= {"succeeded", "cancelled"}, counts
    assert counts["cancelled"] >= 1
    # Every job the API accepted finished and was stored; no row was submitted after the cancel.
    assert counts["succeeded"] == books.stats["submits"], (counts, books.stats["submits"])
    assert all(x["error"] for x in books.results if x["status"] == "cancelled")
    check_outputs(out, books.results)
    record(books)
    print(f"cancel: {counts}")
