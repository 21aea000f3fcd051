"""Looking after a run needs no API key: ``status``, ``results``, ``follow`` and ``cancel`` without one.

Runs are made for real (emulator, real workers, the CLI with the key); then each command runs as a
process whose environment has no ``KONTEXT_API_KEY`` at all, against that state in Redis.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kontext_batch.emulator import EmulatorConfig, LatencySpec
from tests.e2e_support import E2E_KEY, System, read_results, running_system, write_csv

pytestmark = pytest.mark.e2e


def keyless(system: System, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in system.env().items() if k != "KONTEXT_API_KEY"}
    assert E2E_KEY not in env.values()
    return subprocess.run(
        [sys.executable, "-m", "kontext_batch", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr
    return proc


def test_status_results_follow_and_cancel_need_no_key(redis_url: str, tmp_path: Path) -> None:
    rows: list[dict[str, object]] = [{"id": f"r{i}", "prompt": f"white background {i}"} for i in range(3)]
    manifest = write_csv(tmp_path / "m.csv", ["id", "prompt"], rows)
    cfg = EmulatorConfig(latency={"*": LatencySpec.fixed(0.2)}, api_keys=(E2E_KEY,))
    with running_system(redis_url, emulator=cfg, workers=1, max_active=1) as system:
        done = system.cli("run", str(manifest), "--output", str(tmp_path / "done"), "--wait", "--json")
        assert done.returncode == 0, done.stderr[-3000:]
        run_id = json.loads(done.stdout.splitlines()[0])["run_id"]

        listed = json.loads(ok(keyless(system, "status", "--json")).stdout)
        assert [(d["run_id"], d["done"], d["total"]) for d in listed] == [(run_id, 3, 3)]
        one = json.loads(ok(keyless(system, "status", run_id, "--json")).stdout)
        assert one[0]["counts"] == {"succeeded": 3}

        csv_text = ok(keyless(system, "results", run_id)).stdout
        assert [r["status"] for r in read_results(csv_text.encode())] == ["succeeded"] * 3

        followed = json.loads(ok(keyless(system, "follow", run_id, "--json")).stdout.strip().splitlines()[-1])
        assert (followed["run_id"], followed["status"], followed["counts"]) == (run_id, "finished", {"succeeded": 3})

        # A run whose rows wait for the single slot: stop the workers so they keep waiting.
        system.workers.stop()
        queued = system.cli("run", str(manifest), "--output", str(tmp_path / "queued"), "--json")
        assert queued.returncode == 0, queued.stderr[-3000:]
        waiting = json.loads(queued.stdout)["run_id"]
        cancelled = ok(keyless(system, "cancel", waiting))
        # All three wait: no live worker holds the key, so none was granted a slot.
        assert f"{waiting}: cancelled; 3 row(s) marked cancelled" in cancelled.stdout
        after = json.loads(ok(keyless(system, "status", waiting, "--json")).stdout)[0]
        assert after["status"] == "cancelled"
        assert after["counts"] == {"cancelled": 3}

        # Queuing rows again needs no key either: the run is bound to its own keys, which only
        # the workers that hold them use.
        retried = keyless(system, "retry", waiting, "--cancelled")
        assert retried.returncode == 0, retried.stderr[-3000:]
        assert f"{waiting}: 3 row(s) queued again" in retried.stderr
