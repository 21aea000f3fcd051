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


def _redis_servers(*, port: str | None = None, parent: int | None = None) -> list[int]:
    """Live redis-server processes on ``port`` or started by ``parent``. redis-server rewrites its
    command line to ``redis-server 127.0.0.1:PORT``, so look for that, not for its ``--port``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state, ppid = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:2]
        except OSError:
            continue
        if "redis-server" not in cmdline or state == "Z":
            continue
        if (port is not None and f":{port}" in cmdline) or (parent is not None and int(ppid) == parent):
            found.append(int(proc.name))
    return found


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
    started = _redis_servers(parent=proc.pid)
    assert len(started) == 1, "the local stack never started its Redis"
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
    assert _redis_servers(port=port) == []
