"""`run --local` / `demo`: everything they start is stopped on exit, Ctrl-C included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e_support import write_csv

pytestmark = pytest.mark.e2e


def _children(pid: int) -> list[int]:
    """Every process whose command line names this run's parent pid (workers are named after it)."""
    out = subprocess.run(["pgrep", "-f", "--", f"-{pid}@"], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_run_local_stops_redis_and_workers_when_interrupted(tmp_path: Path, sig: signal.Signals) -> None:
    rows = [{"prompt": f"slow edit {i}"} for i in range(30)]
    manifest = write_csv(tmp_path / "m.csv", ["prompt"], rows)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KONTEXT_")}
    # Ignored SIGINT, as a job started with `&` from a script inherits it.
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kontext_batch",
            "run",
            str(manifest),
            "--local",
            "--emulator",
            "--output",
            str(tmp_path / "out"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # noqa: PLW1509
    ) as proc:
        _interrupt_once_started(proc, sig)


def _interrupt_once_started(proc: subprocess.Popen[str], sig: signal.Signals) -> None:
    deadline = time.monotonic() + 60
    while len(_children(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    workers = _children(proc.pid)
    assert len(workers) == 2, "the local stack never started its workers"
    redis_port_line = ""
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err
    assert "Traceback" not in err
    for line in err.splitlines():
        if "started private Redis at" in line:
            redis_port_line = line
    assert redis_port_line
    port = redis_port_line.rsplit(":", 1)[1].split("/")[0]
    assert _children(proc.pid) == []
    leftover = subprocess.run(["pgrep", "-f", "--", f"--port {port} "], capture_output=True, text=True, check=False)
    assert leftover.stdout.strip() == ""
