"""Retention: a finished run's keys expire together after KONTEXT_RUN_RETENTION_S, ``retry`` keeps
them while it runs, ``prune`` removes finished runs now, and a run gone from Redis still says
where its results.csv is. Runs are made by the real steps, inline, against real Redis and the
emulator; the commands run as the real ``kontext-batch`` subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import redis

from kontext_batch.cli.options import parse_duration
from kontext_batch.emulator import Emulator, EmulatorConfig, LatencySpec
from kontext_batch.run.control import prune_runs, retry_run
from kontext_batch.runtime import Runtime
from kontext_batch.steps.sweep import sweep
from tests.e2e_support import running_system, write_csv
from tests.pipeline_support import InlineScheduler, inline_runtime, start_specs, text_specs
from tests.settings_support import fast_settings

KEY = "retention-test-key"
RETENTION_S = 3600


@pytest.fixture
def emu() -> Iterator[Emulator]:
    cfg = EmulatorConfig(latency={"*": LatencySpec.fixed(0.05)}, time_scale=1.0, seed=3)
    with Emulator(cfg) as e:
        yield e


@pytest.fixture
def rt(redis_url: str, emu: Emulator) -> Iterator[Runtime]:
    runtime = inline_runtime(
        fast_settings(emu.base_url, redis_url, api_key=KEY, run_retention_s=float(RETENTION_S)), InlineScheduler()
    )
    yield runtime
    runtime.close()


def finished_run(rt: Runtime, run_id: str, out: Path, n: int = 4) -> None:
    """A run of ``n`` rows driven to its end by the real steps (its budget set, so that key exists)."""
    start_specs(rt, run_id, str(out), text_specs(n))
    rt.budget.set(run_id, 1000)
    assert isinstance(rt.scheduler, InlineScheduler)
    rt.scheduler.run(rt)
    assert rt.runs.info(run_id).finished


def run_keys(r: redis.Redis, run_id: str) -> list[str]:
    """Every key in Redis that names the run (whatever the key table says)."""
    return sorted(k.decode() for k in r.scan_iter(match=f"*{run_id}*", count=1000))


def cli(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KONTEXT_")}
    env.update(KONTEXT_REDIS_URL=redis_url, KONTEXT_API_KEY=KEY, KONTEXT_API_BASE="http://127.0.0.1:9")
    return subprocess.run(
        [sys.executable, "-m", "kontext_batch", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_every_key_of_a_finished_run_expires_within_the_retention(rt: Runtime, tmp_path: Path) -> None:
    finished_run(rt, "ret1", tmp_path)
    keys = rt.runs.run_keys("ret1")
    assert all(rt.redis.exists(k) for k in keys), "the run's six keys, budget included"
    for k in keys:
        assert 0 < rt.redis.ttl(k) <= RETENTION_S, k
    # Nothing else of the run is left without a TTL: the tombstone outlives the keys, and goes too.
    for k in run_keys(rt.redis, "ret1"):
        assert rt.redis.ttl(k) > 0, k
    assert rt.redis.ttl(rt.keys.run_gone("ret1")) > RETENTION_S


def test_retry_keeps_the_keys_while_it_runs_and_its_end_sets_the_ttl_again(rt: Runtime, tmp_path: Path) -> None:
    finished_run(rt, "ret2", tmp_path)
    assert retry_run(rt, "ret2", [], ids={"r1", "r3"}) == 2
    for k in rt.runs.run_keys("ret2"):
        assert rt.redis.ttl(k) == -1, f"{k} still expires while the run runs again"
    assert not rt.runs.gone("ret2")
    assert isinstance(rt.scheduler, InlineScheduler)
    rt.scheduler.run(rt)
    assert rt.runs.info("ret2").finished
    for k in rt.runs.run_keys("ret2"):
        assert 0 < rt.redis.ttl(k) <= RETENTION_S, k


def test_prune_removes_a_finished_run_and_leaves_an_unfinished_one(rt: Runtime, tmp_path: Path) -> None:
    finished_run(rt, "done", tmp_path / "a")
    start_specs(rt, "open", str(tmp_path / "b"), text_specs(3))  # queued, no step run: unfinished
    open_before = {k: rt.redis.type(k) for k in run_keys(rt.redis, "open")}
    # Ended just now: an hour's age spares it, none removes it.
    assert prune_runs(rt, 3600) == (0, 0)
    n_runs, n_keys = prune_runs(rt, 0)
    assert (n_runs, n_keys) == (1, 6)
    assert run_keys(rt.redis, "done") == [rt.keys.run_gone("done")]
    assert not rt.redis.zscore(rt.keys.runs, "done")
    assert {k: rt.redis.type(k) for k in run_keys(rt.redis, "open")} == open_before
    assert rt.runs.info("open").status == "running"


def test_the_sweep_drops_an_expired_run_from_the_index(rt: Runtime, tmp_path: Path) -> None:
    finished_run(rt, "exp", tmp_path)
    for k in rt.runs.run_keys("exp"):  # as its TTL would, without waiting an hour
        rt.redis.delete(k)
    assert rt.redis.zscore(rt.keys.runs, "exp") is not None
    sweep(rt)
    assert rt.redis.zscore(rt.keys.runs, "exp") is not None, "not due yet: its retention has not passed"
    rt.runs.forget_expired(now=rt.redis.zscore(rt.keys.ended_runs, "exp"))
    assert rt.redis.zscore(rt.keys.runs, "exp") is None
    assert run_keys(rt.redis, "exp") == [rt.keys.run_gone("exp")]


def test_status_and_retry_of_a_pruned_run(rt: Runtime, redis_url: str, tmp_path: Path) -> None:
    finished_run(rt, "gone1", tmp_path)
    results_uri = rt.runs.meta("gone1")["results_uri"]
    got = cli(redis_url, "prune", "--older-than", "0m")
    assert got.returncode == 0, got.stderr
    assert "pruned 1 run(s): 6 key(s) removed" in got.stdout

    status = cli(redis_url, "status", "gone1")
    assert status.returncode == 0, status.stderr
    assert "gone from Redis (pruned)" in status.stdout
    assert results_uri in status.stdout

    listing = cli(redis_url, "status")
    assert listing.returncode == 0, listing.stderr
    assert "gone1" not in listing.stdout

    retry = cli(redis_url, "retry", "gone1")
    assert retry.returncode == 2
    assert "cannot be retried" in retry.stderr
    assert results_uri in retry.stderr
    assert "Traceback" not in retry.stderr


@pytest.mark.parametrize("command", ["results", "gallery", "cancel", "follow"])
def test_commands_of_a_pruned_run_say_it_is_gone_and_where_its_results_are(
    rt: Runtime, redis_url: str, tmp_path: Path, command: str
) -> None:
    finished_run(rt, "gone2", tmp_path)
    results_uri = rt.runs.meta("gone2")["results_uri"]
    assert cli(redis_url, "prune", "--older-than", "0m").returncode == 0
    got = cli(redis_url, command, "gone2")
    assert got.returncode == 2, got.stderr  # as retry: nothing of the run is left to act on
    assert "gone from Redis (pruned)" in got.stderr
    assert results_uri in got.stderr
    assert "no run" not in got.stderr
    assert "Traceback" not in got.stderr


def test_prune_refuses_a_duration_it_cannot_read(redis_url: str) -> None:
    got = cli(redis_url, "prune", "--older-than", "a week")
    assert got.returncode == 2
    assert "7d, 36h, 90m" in got.stderr


@pytest.mark.e2e
def test_a_finished_run_expires_from_redis_with_real_workers(redis_url: str, tmp_path: Path) -> None:
    """The whole path: ``run --wait`` ends the run with every key on its TTL; the keys expire, the
    workers' sweep drops the run from the index; ``status`` then says where its results.csv is."""
    retention_s = 30  # long enough for `run --wait` to read the end, short enough to wait for
    rows = [{"id": f"e{i}", "prompt": f"white background {i}"} for i in range(8)]
    manifest = write_csv(tmp_path / "m.csv", ["id", "prompt"], rows)
    out = tmp_path / "out"
    r = redis.Redis.from_url(redis_url)
    with running_system(redis_url, run_retention_s=float(retention_s)) as system:
        used_before = int(r.info("memory")["used_memory"])
        proc = system.cli("run", str(manifest), "--output", str(out), "--wait")
        assert proc.returncode == 0, proc.stderr[-3000:]
        found = re.search(r"(\d{8}T\d{6}-[0-9a-f]{6})", proc.stdout + proc.stderr)
        assert found is not None, proc.stderr[-3000:]
        run_id = found.group(1)
        results_uri = (r.hget(f"kb:run:{run_id}", "results_uri") or b"").decode()
        assert results_uri.endswith("results.csv")
        keys = [k for k in run_keys(r, run_id) if "run-gone" not in k]
        assert keys, "the run's keys, before they expire"
        for k in keys:
            assert 0 < r.ttl(k) <= retention_s, k
        held = sum(int(r.memory_usage(k) or 0) for k in keys)
        print(f"retention figures: rows=8 run_keys={len(keys)} bytes_held={held} bytes_per_row={held // 8}")
        deadline = time.monotonic() + retention_s + 180
        while r.zscore("kb:runs", run_id) is not None:  # the sweep's, once every key has expired
            assert time.monotonic() < deadline, f"run {run_id} still listed: {run_keys(r, run_id)}"
            time.sleep(0.5)
        assert run_keys(r, run_id) == [f"kb:run-gone:{run_id}"]
        print(f"retention figures: used_memory before={used_before} after={int(r.info('memory')['used_memory'])}")
        status = system.cli("status", run_id)
    r.close()
    assert status.returncode == 0, status.stderr
    assert "gone from Redis (expired after its retention)" in status.stdout
    assert f"results.csv: {results_uri}" in status.stdout
    assert (out / "results.csv").exists()


@pytest.mark.unit
@pytest.mark.parametrize(
    ("raw", "seconds"), [("7d", 7 * 86_400), ("36h", 36 * 3600), ("90m", 5400), ("2w", 1_209_600), ("45", 45.0)]
)
def test_prune_reads_durations_in_its_units(raw: str, seconds: float) -> None:
    assert parse_duration(raw) == seconds


@pytest.mark.unit
@pytest.mark.parametrize("raw", ["", "d", "7 days", "-1h", "1y"])
def test_prune_refuses_what_is_no_duration(raw: str) -> None:
    with pytest.raises(click.BadParameter):
        parse_duration(raw)
