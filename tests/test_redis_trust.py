"""The commands trust a Redis only once it is checked: eviction refused at `run`, `retry` and `worker`
start, a warning once when allowed, runs refused when Redis has no room, and a Redis that fills up
mid-enqueue said in one line with nothing of the run left behind."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import pytest
import redis

from kontext_batch.errors import ConfigError
from kontext_batch.run.enqueue import RunRequest, start_run
from kontext_batch.secret import Secret
from kontext_batch.settings import Settings
from tests.conftest import unavailable
from tests.e2e_support import read_results, running_system, write_csv
from tests.pipeline_support import InlineScheduler, inline_runtime
from tests.test_redis_policy import _cli, private_redis


def _url(r: redis.Redis) -> str:
    return f"redis://127.0.0.1:{r.connection_pool.connection_kwargs['port']}/0"


def _manifest(path: Path, n: int) -> Path:
    rows = [{"id": f"r{i}", "prompt": f"Studio product photo of item {i}, soft shadow"} for i in range(1, n + 1)]
    return write_csv(path, ["id", "prompt"], rows)


def _run_keys(r: redis.Redis) -> list[str]:
    """Every key of a run, and the runs' indexes when they name one (a fresh Redis had none)."""
    keys = [k.decode() for k in r.keys("kb:run:*")]
    keys += [f"kb:runs {m.decode()}" for m in r.zrange("kb:runs", 0, -1)]
    keys += [f"kb:runs:open {m.decode()}" for m in r.smembers("kb:runs:open")]
    keys += [f"{k.decode()} (a wait list)" for k in r.keys("kb:wait:*") if r.llen(k)]
    return keys


@pytest.mark.e2e  # starts `kontext-batch worker` (which exits at once)
def test_run_retry_and_worker_refuse_an_lru_redis_in_one_line_writing_nothing(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path / "m.csv", 2)
    with private_redis(tmp_path, "--maxmemory", "20mb", "--maxmemory-policy", "allkeys-lru", "--save", "") as r:
        url = _url(r)
        for args in (
            ("run", str(manifest), "-o", str(tmp_path / "out")),
            ("retry", "20261204T000000-abcdef"),
            ("worker", "-c", "1"),
        ):
            refused = _cli(url, tmp_path, *args, timeout_s=30)
            assert refused.returncode == 2, refused.stderr
            (line,) = refused.stderr.strip().splitlines()
            assert "maxmemory-policy allkeys-lru" in line
            assert "CONFIG SET maxmemory-policy noeviction" in line
        assert r.keys("kb:*") == []


@pytest.mark.e2e  # worker processes and the emulator
def test_with_allow_eviction_run_and_workers_go_on_and_warn_once(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path / "m.csv", 6)
    logs = tmp_path / "logs"
    with (
        private_redis(tmp_path, "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru", "--save", "") as r,
        running_system(_url(r), workers=2, log_dir=logs, redis_allow_eviction=True) as system,
    ):
        out = tmp_path / "out"
        done = system.cli("run", str(manifest), "-o", str(out), "--wait")
        assert done.returncode == 0, done.stderr
        assert done.stderr.count("maxmemory-policy allkeys-lru") == 1, done.stderr
        assert done.stderr.count("keeps nothing on disk") == 1, done.stderr
        rows = read_results((out / "results.csv").read_bytes())
        assert [row["status"] for row in rows] == ["succeeded"] * 6
        for log in sorted(logs.glob("worker-*.log")):
            text = log.read_text(encoding="utf-8", errors="replace")
            assert text.count("maxmemory-policy allkeys-lru") == 1, f"{log.name}:\n{text[-3000:]}"


@pytest.mark.e2e  # a worker process, watched for a minute and more
def test_a_running_worker_says_once_when_its_redis_starts_evicting_and_goes_on(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    with (
        private_redis(tmp_path, "--maxmemory-policy", "noeviction", "--appendonly", "yes") as r,
        running_system(_url(r), workers=1, log_dir=logs) as system,
    ):
        log = logs / "worker-0.log"
        deadline = time.monotonic() + 60
        while not r.keys("kb:proc:*"):  # its first heartbeat: the sweeper starts with it
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.2)
        time.sleep(3)  # past the sweeper's first look, so the one below is a periodic one
        assert "maxmemory-policy" not in log.read_text(errors="replace")
        r.config_set("maxmemory-policy", "allkeys-lru")
        deadline = time.monotonic() + 180  # the sweeper looks about once a minute
        while "maxmemory-policy allkeys-lru" not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        text = log.read_text(errors="replace")
        (line,) = [x for x in text.splitlines() if "maxmemory-policy allkeys-lru" in x]
        assert "ERROR" in line
        assert all(p.poll() is None for p in system.workers.procs)  # the worker goes on


@pytest.mark.integration  # a private redis-server, the CLI
def test_a_50000_row_run_too_big_for_maxmemory_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path / "m.csv", 50_000)
    with private_redis(tmp_path, "--maxmemory", "10mb", "--maxmemory-policy", "noeviction", "--save", "") as r:
        refused = _cli(_url(r), tmp_path, "run", str(manifest), "-o", str(tmp_path / "out"))
        assert refused.returncode == 2, refused.stderr
        (line,) = [x for x in refused.stderr.splitlines() if x.startswith("error:")]
        assert "this run of 50,000 rows needs about" in line
        assert "Raise maxmemory to at least" in line
        assert "nothing was queued" in line
        assert r.keys("kb:*") == []


@pytest.mark.integration  # a private redis-server, the CLI
@pytest.mark.parametrize("source", ["stdin", "parquet"])
def test_a_manifest_not_sized_up_front_is_refused_when_it_outgrows_maxmemory_and_cleaned_up(
    tmp_path: Path, source: str
) -> None:
    # Stdin has no size before its end, and a .parquet file is compressed: its bytes say little of
    # its rows (a line count of it would pass this run). Both are checked at each flush.
    manifest = _manifest(tmp_path / "m.csv", 50_000)
    args: list[str] = ["-"]
    stdin: str | None = manifest.read_text()
    if source == "parquet":
        try:
            import pyarrow.csv as pcsv  # noqa: PLC0415 - the optional extra
            import pyarrow.parquet as pq  # noqa: PLC0415
        except ImportError:
            unavailable("pyarrow (the parquet extra) is not installed")
        pq.write_table(pcsv.read_csv(manifest), tmp_path / "m.parquet")
        args, stdin = [str(tmp_path / "m.parquet")], None
    with private_redis(tmp_path, "--maxmemory", "10mb", "--maxmemory-policy", "noeviction", "--save", "") as r:
        before = set(r.keys("*"))
        refused = _cli(_url(r), tmp_path, "run", *args, "-o", str(tmp_path / "out"), stdin=stdin)
        assert refused.returncode == 2, refused.stderr
        (line,) = [x for x in refused.stderr.splitlines() if x.startswith("error:")]
        assert f"rows read from {'stdin' if source == 'stdin' else 'm.parquet'} so far" in line
        assert "needs about" in line
        assert _run_keys(r) == []
        assert r.info("memory")["used_memory"] < 0.9 * r.info("memory")["maxmemory"]
        assert set(r.keys("*")) - before <= {b"kb:pools", b"kb:gates", b"kb:demand"}  # shared, not the run's


@pytest.mark.integration  # a private redis-server
def test_redis_filling_up_mid_enqueue_is_one_line_naming_maxmemory_and_leaves_nothing_of_the_run(
    tmp_path: Path,
) -> None:
    manifest = _manifest(tmp_path / "m.csv", 5_000)
    with private_redis(tmp_path, "--maxmemory", "40mb", "--maxmemory-policy", "noeviction", "--save", "") as r:
        filler = redis.Redis(port=r.connection_pool.connection_kwargs["port"])
        rows_read = 0

        def fill_redis_after_the_check() -> bool:
            # Another tenant takes the room after the headroom check passed, while the rows go in.
            nonlocal rows_read
            rows_read += 1
            if rows_read == 2_500:
                blob = b"x" * 256_000
                for i in range(1_000):
                    try:
                        filler.set(f"other:{i}", blob)
                    except redis.exceptions.OutOfMemoryError:
                        break
            return False

        s = Settings(api_key=Secret("trust-key"), api_base="http://127.0.0.1:9", redis_url=_url(r))
        rt = inline_runtime(s, InlineScheduler())
        try:
            with pytest.raises(ConfigError) as refused:
                start_run(
                    rt, RunRequest(str(manifest), f"memory://oom-{tmp_path.name}"), stop=fill_redis_after_the_check
                )
        finally:
            rt.close()
        msg = str(refused.value)
        assert "\n" not in msg
        assert "out of memory: its maxmemory (41.9 MB) was reached while writing the run's rows" in msg
        assert "nothing was queued" in msg
        assert _run_keys(r) == []
        filler.close()


def test_the_footprint_counts_rows_and_prompt_bytes(tmp_path: Path) -> None:
    from kontext_batch.coord.policy import manifest_footprint  # noqa: PLC0415

    short = _manifest(tmp_path / "short.csv", 1_000)
    long = tmp_path / "long.csv"
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["id", "prompt"])
    for i in range(1_000):
        w.writerow([f"r{i}", "é" * 1_000])
    long.write_text(buf.getvalue(), encoding="utf-8")
    a, b = manifest_footprint(short), manifest_footprint(long)
    assert (a.rows, b.rows) == (1_000, 1_000)
    # ~1 KB of a finished short row; a 1,000-character non-ASCII prompt escaped in the spec's JSON.
    assert 900_000 < a.bytes < 1_200_000
    assert b.bytes > 1_000 * 6_000


@pytest.mark.integration
def test_taking_a_run_out_of_a_wait_list_in_a_full_redis_keeps_the_other_runs_rows(tmp_path: Path) -> None:
    """The script deletes the list and pushes back the other runs' refs: in a Redis at maxmemory,
    a push refused after the delete would lose them. Redis lets a script that has written go on."""
    from kontext_batch.coord.keys import Keys  # noqa: PLC0415
    from kontext_batch.coord.slots import Slots  # noqa: PLC0415

    with private_redis(tmp_path, "--maxmemory", "4mb", "--maxmemory-policy", "noeviction", "--save", "") as r:
        slots = Slots(r, Keys(), lease_s=30, grace_s=5)
        refs = [f"{'a' if i % 3 else 'b'}:{i}" for i in range(3_000)]
        slots.enqueue("pool", "flux-kontext-pro", refs)
        full = False
        for i in range(1_000_000):  # fill it to the brim
            try:
                r.set(f"other:{i}", b"x" * 100)
            except redis.exceptions.OutOfMemoryError:
                full = True
                break
        assert full
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            r.rpush(Keys().wait("pool", "flux-kontext-pro"), "a:new")  # what the script's push would meet
        removed = slots.remove_run_from_wait("pool", "flux-kontext-pro", "b")
        assert removed == [ref for ref in refs if ref.startswith("b:")]
        kept = [x.decode() for x in r.lrange(Keys().wait("pool", "flux-kontext-pro"), 0, -1)]
        assert kept == [ref for ref in refs if ref.startswith("a:")]
