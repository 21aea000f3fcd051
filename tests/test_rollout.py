"""Version skew in a rolling update: workers announce their version and protocol in the heartbeat;
``run`` refuses to queue beside workers of another protocol, and a worker that sees newer ones on its
keys steps aside (no more steps, no key held, readiness 503) so the newer fleet takes the queue."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from kontext_batch.coord.holders import Holders, KeyCaps
from kontext_batch.coord.keys import Keys
from kontext_batch.coord.protocol import PROTOCOL, VERSION, Speaker, refuse_other_protocols, speaker_of
from kontext_batch.emulator import Emulator, EmulatorConfig, LatencySpec
from kontext_batch.errors import ConfigError
from kontext_batch.run.local import WorkerPool, free_port
from tests.e2e_support import E2E_KEY, E2E_TIMINGS, read_results, write_csv
from tests.settings_support import fast_settings

#: A process of the next release: the same code, one protocol up (set before anything reads it).
NEXT = PROTOCOL + 1
AS_NEXT = f"import kontext_batch.coord.protocol as p; p.PROTOCOL = {NEXT}; from kontext_batch.cli import main; main()"


def test_a_heartbeat_says_which_version_and_protocol_its_process_speaks(redis_client: redis.Redis) -> None:
    holders = Holders(redis_client, Keys())
    holders.beat("host-1-aaaaaa", {"fp1": KeyCaps(6, {"flux-kontext-pro": 6})})
    doc = json.loads(redis_client.get("kb:proc:host-1-aaaaaa") or "{}")
    caps = {"fp1": {"total": 6, "caps": {"flux-kontext-pro": 6}}}
    assert doc == {"version": VERSION, "protocol": PROTOCOL, "keys": caps}
    assert holders.speakers(["fp1"]) == [Speaker("host-1-aaaaaa", VERSION, PROTOCOL)]
    assert holders.speakers(["fp2"]) == []
    # A release from before the protocol number announced only its keys' caps.
    assert speaker_of("old", {"fp1": {"total": 6, "caps": {}}}).protocol == 0
    holders.release("host-1-aaaaaa", ["fp1"])
    assert holders.speakers(["fp1"]) == []
    assert redis_client.exists("kb:proc:host-1-aaaaaa")  # alive for its jobs in hand


def test_refusal_names_every_other_speaker() -> None:
    refuse_other_protocols([Speaker("a", VERSION, PROTOCOL)])
    with pytest.raises(ConfigError, match=r"b \(kontext-batch 9\.9, protocol 0\).*nothing was queued"):
        refuse_other_protocols([Speaker("a", VERSION, PROTOCOL), Speaker("b", "9.9", 0)])


class RollingPool(WorkerPool):
    """Worker 1 runs the next release; worker 0 this one."""

    def _command(self, i: int) -> list[str]:
        argv = super()._command(i)
        return [sys.executable, "-c", AS_NEXT, *argv[3:]] if i == 1 else argv


def _cli(env: dict[str, str], *args: str, next_release: bool = False) -> subprocess.CompletedProcess[str]:
    head = [sys.executable, "-c", AS_NEXT] if next_release else [sys.executable, "-m", "kontext_batch"]
    return subprocess.run([*head, *args], env=env, capture_output=True, text=True, timeout=180, check=False)


@pytest.mark.e2e
def test_an_older_worker_steps_aside_and_an_older_cli_queues_nothing(redis_url: str, tmp_path: Path) -> None:
    cfg = EmulatorConfig(latency={"*": LatencySpec.fixed(0.2)}, api_keys=(E2E_KEY,), seed=5)
    ports = [free_port(), free_port()]
    logs = tmp_path / "logs"
    r = redis.Redis.from_url(redis_url)
    with Emulator(cfg) as emu:
        s = fast_settings(emu.base_url, redis_url, api_key=E2E_KEY, **E2E_TIMINGS)
        pool = RollingPool(s, n=2, concurrency=8, loglevel="INFO", log_dir=logs)
        pool.extra_args = lambda i: ["--metrics-port", str(ports[i])]
        with pool:
            # The older worker (0) sees the newer one on its key within a few beats and steps aside.
            deadline = time.monotonic() + 90
            ready = ""
            while "stepped aside" not in ready:
                assert time.monotonic() < deadline, f"worker 0 still ready: {ready!r}"
                try:
                    resp = httpx.get(f"http://127.0.0.1:{ports[0]}/readyz", timeout=5)
                    ready = f"{resp.status_code} {resp.text}"
                except httpx.HTTPError as exc:
                    ready = str(exc)
                time.sleep(0.5)
            assert ready.startswith("503 ")
            assert httpx.get(f"http://127.0.0.1:{ports[0]}/healthz", timeout=5).status_code == 200  # not to be killed
            text = (logs / "worker-0.log").read_text(encoding="utf-8")
            assert "speak a newer protocol: it takes no more steps" in text

            env = pool._env()
            rows = [{"id": f"r{i}", "prompt": f"shoe {i} on white"} for i in range(1, 13)]
            manifest = write_csv(tmp_path / "m.csv", ["id", "prompt"], rows)
            # This release's CLI beside a worker of the next: refused, nothing written.
            before = set(r.scan_iter("kb:run*"))
            old = _cli(env, "run", str(manifest), "--output", str(tmp_path / "old"))
            assert old.returncode == 2, old.stderr
            assert f"protocol {NEXT}" in old.stderr
            assert "nothing was queued" in old.stderr
            assert set(r.scan_iter("kb:run*")) == before
            assert not (tmp_path / "old").exists()
            # The next release's CLI: its rows are all served by the next release's worker.
            new = _cli(env, "run", str(manifest), "--output", str(tmp_path / "out"), "--wait", next_release=True)
            assert new.returncode == 0, new.stderr
    results = read_results((tmp_path / "out" / "results.csv").read_bytes())
    assert [x["status"] for x in results] == ["succeeded"] * len(rows)
    older = (logs / "worker-0.log").read_text(encoding="utf-8")
    newer = (logs / "worker-1.log").read_text(encoding="utf-8")
    assert " submitted" not in older.split("speak a newer protocol")[1]
    assert newer.count(" submitted") >= len(rows)
