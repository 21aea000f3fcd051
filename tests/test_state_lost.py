"""A run whose keys vanish from Redis mid-run (evicted by a ``maxmemory`` policy, or flushed) fails:
never a success, never a results.csv that looks complete.

Real worker processes, the emulator over HTTP and the real CLI. Each test starts a run with
``run --wait``, lets some rows finish, deletes one part of the run's state (its rows hash, its
metadata hash, its counters, or its jobs in flight) as an eviction would, then checks what every reader says: the
waiting ``run`` exits 3 with the lost-state reason, the sweeper records the run ``failed`` with it,
``status`` says so and shows no counts, ``results -o`` exits 3 and writes no file, no job of the
run is left in flight, and no results.csv appears in the run's output.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from kontext_batch.coord.keys import Keys
from kontext_batch.coord.runs import RunInfo, RunStore
from kontext_batch.emulator import EmulatorConfig, LatencySpec
from kontext_batch.errors import RunStateLost
from tests.e2e_support import E2E_KEY, System, running_system, write_csv

pytestmark = pytest.mark.e2e

REASON = RunStateLost.REASON
N_ROWS = 60
#: What an eviction or a flush can take, as the keys of one run.
PARTS: dict[str, Callable[[redis.Redis, Keys, str], list[str]]] = {
    "rows": lambda r, k, run_id: [k.rows(run_id)],
    "metadata": lambda r, k, run_id: [k.run(run_id)],
    "counters": lambda r, k, run_id: [k.ndone(run_id), k.counts(run_id)],
    # The hashes of its jobs in flight (their watch entries stay): no message of theirs can run again.
    "jobs": lambda r, k, run_id: [key.decode() for key in r.scan_iter(match=f"{k.job_prefix}{run_id}:*")],
}


def _manifest(tmp: Path) -> Path:
    # All on max (6 active at a time) with 1 s tasks: ten waves, so the run is still going when a
    # key is deleted after the first rows.
    rows = [
        {"id": f"r{i:03d}", "model": "max", "prompt": f"product {i} on white", "output_format": "jpeg"}
        for i in range(1, N_ROWS + 1)
    ]
    return write_csv(tmp / "manifest.csv", ["id", "model", "prompt", "output_format"], rows)


def _wait_for(what: str, timeout_s: float, look: Callable[[], bool], detail: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if look():
            return
        time.sleep(0.1)
    raise AssertionError(f"not {what} after {timeout_s:.0f} s: {detail()}")


def _run_id(out_file: Path, timeout_s: float) -> str:
    """The run id ``run --wait`` prints once its rows are queued (its first line on stdout)."""
    found: list[str] = []

    def printed() -> bool:
        lines = out_file.read_text().splitlines()
        found[:] = lines[:1]
        return bool(found)

    _wait_for("queued", timeout_s, printed, out_file.read_text)
    return found[0].strip()


def _lose_part_mid_run(system: System, tmp_path: Path, part: str) -> None:
    r = redis.Redis.from_url(system.settings.redis_url)
    keys = Keys()
    runs = RunStore(r, keys)
    out = tmp_path / "out"
    stdout, stderr = tmp_path / "run.out", tmp_path / "run.err"
    with stdout.open("w") as so, stderr.open("w") as se:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kontext_batch", "run", str(_manifest(tmp_path)), "--output", str(out), "--wait"],
            env=system.env(),
            stdout=so,
            stderr=se,
            text=True,
        )
    try:
        run_id = _run_id(stdout, 60)
        seen: list[RunInfo] = []

        def some_rows_done() -> bool:
            seen[:] = [runs.info(run_id)]
            return seen[0].ndone >= 6

        _wait_for("6 rows done", 60, some_rows_done, lambda: f"{seen} {stderr.read_text()[-2000:]}")
        assert seen[0].ndone < N_ROWS, "the run ended before a key could be taken from it"
        assert not seen[0].lost, seen[0]
        lose = PARTS[part](r, keys, run_id)
        assert lose, f"nothing of {part} to delete"
        r.delete(*lose)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    said = stdout.read_text() + stderr.read_text()
    assert code == 3, (code, said[-3000:])
    assert REASON in said, said[-3000:]
    assert "Traceback" not in said, said[-3000:]
    assert "finished" not in stdout.read_text(), said[-3000:]

    # Every process agrees: the sweeper recorded the run failed, with the reason, and closed it.
    recorded: list[RunInfo] = []

    def marked() -> bool:
        recorded[:] = [runs.info(run_id)]
        return recorded[0].meta.get("stopped") == "lost"

    _wait_for("recorded lost", 30, marked, lambda: str(recorded))
    info = recorded[0]
    assert info.status == "failed"
    assert info.finished
    assert REASON in info.meta["stopped_reason"]
    assert run_id not in runs.open_runs()

    # No job of it is left in flight: with its spec or output gone, no step of it could run, and a
    # busy job would hold its slot for ever; with only counters gone, they finish on their own.
    def jobs_left() -> list[str]:
        return [k.decode() for k in r.scan_iter(match=f"{keys.job_prefix}{run_id}:*")]

    _wait_for("without jobs", 30, lambda: not jobs_left(), lambda: str(jobs_left()))
    assert not [ref for ref in r.zrange(keys.watch, 0, -1) if ref.decode().startswith(f"{run_id}:")]

    status = system.cli("status", run_id)
    assert status.returncode == 0, status.stderr[-3000:]
    assert "failed" in status.stdout, status.stdout
    assert REASON in status.stdout, status.stdout
    assert "pending" not in status.stdout, status.stdout
    assert f"/{N_ROWS}" not in status.stdout, status.stdout  # no done/total count
    doc = json.loads(system.cli("status", run_id, "--json").stdout)[0]
    assert (doc["status"], doc["outcome"], doc["done"], doc["counts"]) == ("failed", "lost", None, {}), doc
    assert REASON in doc["lost"]

    csv_path = tmp_path / "fetched.csv"
    results = system.cli("results", run_id, "-o", str(csv_path))
    assert results.returncode == 3, (results.returncode, results.stderr[-3000:])
    assert REASON in results.stderr, results.stderr
    assert not csv_path.exists()
    assert not Path(f"{csv_path}.part").exists()
    to_stdout = system.cli("results", run_id)
    assert to_stdout.returncode == 3, to_stdout.stderr[-3000:]
    assert "pending" not in to_stdout.stdout, to_stdout.stdout[:2000]

    follow = system.cli("follow", run_id)
    assert follow.returncode == 3, follow.stderr[-3000:]
    assert REASON in follow.stdout + follow.stderr, follow.stderr[-3000:]


@pytest.mark.parametrize("part", list(PARTS))
def test_a_run_whose_state_is_lost_mid_run_fails_and_writes_no_results(
    redis_url: str, tmp_path: Path, part: str
) -> None:
    cfg = EmulatorConfig(latency={"*": LatencySpec.fixed(1.0)}, api_keys=(E2E_KEY,), seed=3)
    with running_system(redis_url, emulator=cfg, log_dir=tmp_path / "logs") as system:
        _lose_part_mid_run(system, tmp_path, part)
    # The workers are stopped: whatever they were going to write is written. No results.csv, which
    # would show the lost rows as pending (or without their id and prompt) in a file that looks done.
    assert not (tmp_path / "out" / "results.csv").exists()
    # The steps still in flight meet the loss as one line each, not as tracebacks.
    worker_logs = "".join(p.read_text(errors="replace") for p in sorted((tmp_path / "logs").glob("*")) if p.is_file())
    assert "Traceback" not in worker_logs, worker_logs[worker_logs.find("Traceback") - 500 :][:4000]
