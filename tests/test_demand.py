"""The autoscaler's demand signal (kb:demand, read by KEDA's redis trigger) follows the open rows."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from kontext_batch.coord.demand import demand_key, set_demand
from kontext_batch.coord.keys import Keys
from kontext_batch.emulator import EmulatorConfig, LatencySpec
from kontext_batch.secret import Secret
from kontext_batch.settings import Settings
from tests.e2e_support import E2E_KEY, running_system, write_csv

DEMAND = demand_key(Keys())


def _rows(n: int) -> list[dict[str, object]]:
    return [{"id": f"d{i}", "prompt": f"banner {i} at 16:9", "output_format": "png"} for i in range(1, n + 1)]


def test_set_demand_grows_and_shrinks_the_list_to_the_count(redis_client: redis.Redis) -> None:
    for n in (3, 2500, 7, 0, 1):
        set_demand(redis_client, Keys(), n)
        assert redis_client.llen(DEMAND) == n
    set_demand(redis_client, Keys(), 0)
    assert not redis_client.exists(DEMAND)


def test_a_run_queued_with_no_worker_running_raises_the_signal(redis_url: str, tmp_path: Path) -> None:
    # Scale from zero: nobody but `run` itself is there to say that work is waiting.
    manifest = write_csv(tmp_path / "m.csv", ["id", "prompt", "output_format"], _rows(40))
    s = Settings(api_key=Secret(E2E_KEY), redis_url=redis_url, api_base="http://127.0.0.1:9")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KONTEXT_")} | s.to_env()
    done = subprocess.run(
        [sys.executable, "-m", "kontext_batch", "run", str(manifest), "-o", str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert redis.Redis.from_url(redis_url).llen(DEMAND) == 40


@pytest.mark.e2e
def test_the_signal_falls_as_the_run_finishes_and_is_0_when_nothing_is_left(redis_url: str, tmp_path: Path) -> None:
    r = redis.Redis.from_url(redis_url)
    manifest = write_csv(tmp_path / "m.csv", ["id", "prompt", "output_format"], _rows(60))
    cfg = EmulatorConfig(latency={"*": LatencySpec.fixed(0.5)}, api_keys=(E2E_KEY,), seed=4)
    with running_system(redis_url, emulator=cfg) as system:
        env = system.env()
        proc = subprocess.Popen(
            [sys.executable, "-m", "kontext_batch", "run", str(manifest), "-o", str(tmp_path / "out"), "--wait"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        seen: list[int] = []
        while proc.poll() is None:
            seen.append(int(r.llen(DEMAND)))
            time.sleep(0.1)
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
        deadline = time.monotonic() + 10
        while r.llen(DEMAND) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert r.llen(DEMAND) == 0
    rising = [n for n in seen if n]
    print(f"demand samples: max {max(rising)}, first {rising[0]}, last non-zero {rising[-1]}, {len(seen)} samples")
    assert max(rising) == 60
    assert rising[-1] < 60
