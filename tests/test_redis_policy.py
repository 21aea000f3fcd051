"""The Redis is checked before it is trusted: eviction refused, persistence and headroom said."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from kontext_batch.coord.policy import check_headroom, check_policy, read_memory
from kontext_batch.errors import ConfigError
from kontext_batch.run.local import free_port
from tests.conftest import unavailable


@contextmanager
def private_redis(tmp_path: Path, *args: str) -> Iterator[redis.Redis]:
    server = shutil.which("redis-server")
    if server is None:
        unavailable("no redis-server on PATH")
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_connect_timeout=1)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield client
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


@pytest.mark.integration  # a private redis-server
def test_an_evicting_redis_is_refused_naming_its_policy_and_the_fix(tmp_path: Path) -> None:
    with private_redis(tmp_path, "--maxmemory", "20mb", "--maxmemory-policy", "allkeys-lru", "--save", "") as r:
        mem = read_memory(r)
    assert (mem.policy, mem.maxmemory, mem.aof, mem.rdb) == ("allkeys-lru", 20 * 1024 * 1024, False, False)
    with pytest.raises(ConfigError) as refused:
        check_policy(mem, "127.0.0.1:1/0", allow_eviction=False)
    msg = str(refused.value)
    assert "\n" not in msg
    assert "maxmemory-policy allkeys-lru" in msg
    assert "CONFIG SET maxmemory-policy noeviction" in msg
    assert "KONTEXT_REDIS_ALLOW_EVICTION=1" in msg
    warnings = check_policy(mem, "127.0.0.1:1/0", allow_eviction=True)
    assert [w for w in warnings if "allkeys-lru" in w and "going on" in w]
    assert [w for w in warnings if "keeps nothing on disk" in w]


@pytest.mark.integration  # a private redis-server
@pytest.mark.parametrize("policy", ["volatile-lru", "allkeys-random", "volatile-ttl", "allkeys-lfu"])
def test_every_policy_but_noeviction_is_refused(tmp_path: Path, policy: str) -> None:
    # volatile-* evict only keys with a TTL, and the workers' heartbeats have one: an evicted
    # heartbeat looks like a dead worker, whose jobs are then run twice.
    with private_redis(tmp_path, "--maxmemory-policy", policy) as r:
        mem = read_memory(r)
    with pytest.raises(ConfigError, match=f"maxmemory-policy {policy}"):
        check_policy(mem, "x", allow_eviction=False)


@pytest.mark.integration  # a private redis-server
def test_a_persistent_noeviction_redis_passes_silently(tmp_path: Path) -> None:
    with private_redis(tmp_path, "--maxmemory-policy", "noeviction", "--appendonly", "yes", "--save", "") as r:
        mem = read_memory(r)
    assert (mem.policy, mem.aof, mem.persistent) == ("noeviction", True, True)
    assert check_policy(mem, "x", allow_eviction=False) == []


@pytest.mark.integration  # a private redis-server
def test_no_persistence_warns_except_for_the_embedded_redis(tmp_path: Path) -> None:
    with private_redis(tmp_path, "--appendonly", "no", "--save", "") as r:
        mem = read_memory(r)
    assert mem.persistent is False
    (warning,) = check_policy(mem, "127.0.0.1:6379/0", allow_eviction=False)
    assert "a restart loses every queued row" in warning
    assert check_policy(mem, "x", allow_eviction=False, embedded=True) == []


@pytest.mark.integration  # a private redis-server
def test_a_run_that_would_pass_90_percent_of_maxmemory_is_refused(tmp_path: Path) -> None:
    with private_redis(tmp_path, "--maxmemory", "10mb", "--maxmemory-policy", "noeviction") as r:
        mem = read_memory(r)
    check_headroom(mem, 1_000_000, "x", "this run")  # ~1 MB used + 1 MB of 10 MB: fine
    with pytest.raises(ConfigError) as refused:
        check_headroom(mem, 9_000_000, "127.0.0.1:1/0", "this run of 50,000 rows")
    msg = str(refused.value)
    assert "this run of 50,000 rows needs about 9.0 MB more" in msg
    assert "of 10.5 MB maxmemory" in msg
    assert "nothing was queued" in msg
    with private_redis(tmp_path) as r:  # no maxmemory: no limit to keep under
        check_headroom(read_memory(r), 10**12, "x", "a huge run")


def _cli(
    url: str, tmp_path: Path, *args: str, allow: bool = False, timeout_s: float = 60, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KONTEXT_")}
    env |= {
        "KONTEXT_REDIS_URL": url,
        "KONTEXT_API_KEY": "policy-test-key-71c0",
        "KONTEXT_API_BASE": "http://127.0.0.1:9",
    }
    if allow:
        env["KONTEXT_REDIS_ALLOW_EVICTION"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "kontext_batch", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        cwd=tmp_path,
        input=stdin,
    )
