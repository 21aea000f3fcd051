"""`run --wait` and `follow` as an operator sees them, against the whole system (emulator, Redis, workers).

On a terminal (a real pseudo-terminal): the live display, Ctrl-C detaching with a `follow` hint, and
`follow` re-attaching to the end. Off one: the progress cadence and state-change lines, the summary,
the mixed-model cost. And what `--help` and `status` say.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
import redis

from kontext_batch.emulator import EmulatorConfig, LatencySpec
from tests.e2e_support import E2E_KEY, System, read_results, running_system, write_csv

pytestmark = pytest.mark.e2e

_ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]|\x1b\][^\x07]*\x07|\r")
_PROGRESS_LINE = re.compile(r"^\d\d:\d\d:\d\d run \S+ (\w+)")


class Terminal:
    """A command on a real pseudo-terminal (110 x 30), in its own process group, its screen collected."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 110, 0, 0))
        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**env, "TERM": "xterm-256color"},
            cwd=cwd,
            start_new_session=True,
        )
        os.close(slave)
        self.master = master
        self.buf = bytearray()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: the other side closed
                return
            if not chunk:
                return
            self.buf.extend(chunk)

    @property
    def text(self) -> str:
        return _ANSI.sub("", bytes(self.buf).decode(errors="replace"))

    def wait_for(self, pattern: str, timeout_s: float = 90) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            m = re.search(pattern, self.text)
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{pattern!r} never appeared on the screen:\n{self.text[-3000:]}")

    def finish(self, timeout_s: float = 120) -> int:
        rc = self.proc.wait(timeout=timeout_s)
        self.reader.join(timeout=5)
        os.close(self.master)
        return rc


def _cli(system: System, *args: str) -> list[str]:
    return [sys.executable, "-m", "kontext_batch", *args]


def _manifest(path: Path, n_pro: int, n_max: int = 0) -> Path:
    rows = [{"id": f"p{i}", "prompt": f"white background {i}", "model": "pro"} for i in range(n_pro)]
    rows += [{"id": f"m{i}", "prompt": f"studio light {i}", "model": "max"} for i in range(n_max)]
    return write_csv(path, ["id", "prompt", "model"], rows)


def _slow(latency_s: float, **faults: float) -> EmulatorConfig:
    return EmulatorConfig(latency={"*": LatencySpec.fixed(latency_s)}, api_keys=(E2E_KEY,), seed=5, faults=faults)


def test_live_progress_then_ctrl_c_detaches_and_follow_finishes_the_run(redis_url: str, tmp_path: Path) -> None:
    manifest = _manifest(tmp_path / "m.csv", 24)
    with running_system(redis_url, emulator=_slow(0.8), max_active=2) as system:
        env = system.env()
        term = Terminal(_cli(system, "run", str(manifest), "--wait", "-o", str(tmp_path / "out")), env, tmp_path)
        run_id = term.wait_for(r"(\d{8}T\d{6}-[0-9a-f]{6})").group(1)
        # The live display: a bar, counts of final rows, in flight against the key's cap, credits.
        term.wait_for(r"succeeded [1-9]")
        screen = term.text
        assert "━" in screen
        assert re.search(r"\d+/24 +\d+%", screen)
        assert re.search(r"in flight [0-2]/2 ", screen)
        assert re.search(r"credits [1-9]\d* spent", screen)
        assert re.search(r"ETA \d+:\d\d:\d\d", screen)
        assert re.search(r"elapsed \d+:\d\d:\d\d", screen)

        os.killpg(term.proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
        assert term.finish() == 130, term.text[-3000:]
        assert f"kontext-batch follow {run_id}" in term.text
        assert "Traceback" not in term.text
        assert "Aborted" not in term.text

        # The run goes on without the terminal: the workers keep finishing rows.
        def look() -> dict[str, object]:
            doc: dict[str, object] = json.loads(system.cli("status", run_id, "--json").stdout)[0]
            return doc

        done_then = look()["done"]
        deadline = time.monotonic() + 30
        while (now := look())["done"] == done_then and now["status"] == "running":
            assert time.monotonic() < deadline, "no row finished after detaching"
            time.sleep(0.5)

        again = Terminal(_cli(system, "follow", run_id), env, tmp_path)
        assert again.finish() == 0, again.text[-3000:]
        summary = again.text
        assert f"run {run_id} finished in " in summary
        assert "succeeded 24" in summary
        assert "credits: 96 spent" in summary  # 24 pro rows at 4 credits
        assert f"results: {tmp_path / 'out' / 'results.csv'}" in summary
        assert f"gallery: {tmp_path / 'out' / 'gallery.html'}" in summary
    results = read_results((tmp_path / "out" / "results.csv").read_bytes())
    assert [row["status"] for row in results] == ["succeeded"] * 24


def _progress_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if _PROGRESS_LINE.match(line)]


def test_off_a_terminal_lines_keep_their_cadence_and_state_changes_print(redis_url: str, tmp_path: Path) -> None:
    manifest = _manifest(tmp_path / "mixed.csv", 8, 6)  # 8 x 4 + 6 x 8 = 80 credits
    with running_system(redis_url, emulator=_slow(0.8, error=0.25), max_active=2) as system:
        env = system.env()
        args = _cli(system, "run", str(manifest), "--wait", "--max-failures", "0.9", "-o", str(tmp_path / "a"))
        started = time.monotonic()
        every_second = subprocess.run(
            args, env={**env, "KONTEXT_PROGRESS_EVERY_S": "1"}, capture_output=True, text=True, timeout=180, check=False
        )
        took_s = time.monotonic() - started
        assert every_second.returncode == 0, every_second.stderr[-3000:]
        lines = _progress_lines(every_second.stderr)
        # Looks come twice a second; lines come once a second (plus the state changes).
        assert took_s >= 4, "the run must last a few seconds for the cadence to mean anything"
        assert took_s / 2 - 2 <= len(lines) <= took_s + 3, (took_s, lines)
        assert "finished" in lines[-1]

        # The mixed-model cost: the total, then the per-model breakdown.
        assert "14 rows: 80 credits ($0.80)" in every_second.stderr
        assert "flux-kontext-pro: 8 rows x 4 = 32 credits" in every_second.stderr
        assert "flux-kontext-max: 6 rows x 8 = 48 credits" in every_second.stderr

        # The summary: counts, failures by reason, credits, files.
        out = every_second.stdout
        assert re.search(r"run \S+ finished in \d+:\d\d:\d\d: 14/14 rows", out), out
        assert "failures by reason" in out
        assert re.search(r"^ +\d+  failed: ", out, re.MULTILINE), out
        assert re.search(r"credits: \d+ spent", out)
        assert f"results: {tmp_path / 'a' / 'results.csv'}" in out

        # A long period: only the first look and each change of state print.
        quiet = subprocess.run(
            [*args[:-1], str(tmp_path / "b")],
            env={**env, "KONTEXT_PROGRESS_EVERY_S": "3600"},
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert quiet.returncode == 0, quiet.stderr[-3000:]
        states = [_PROGRESS_LINE.match(line).group(1) for line in _progress_lines(quiet.stderr)]  # type: ignore[union-attr]
        assert states == ["running", "finished"], quiet.stderr[-3000:]

        # status lists both runs with start time, duration, manifest and credits.
        listed = system.cli("status")
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.count("    started ") == 2
        assert listed.stdout.count(f"manifest {manifest}") == 2
        assert re.search(r"took \d+:\d\d:\d\d", listed.stdout)
        assert listed.stdout.count("credits: ") == 2


def test_help_names_the_environment_variables_and_an_empty_redis_says_so(redis_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KONTEXT_")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kontext_batch", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    top = " ".join(cli("--help").stdout.split())
    assert "env var: KONTEXT_REDIS_URL" in top
    assert "env var: KONTEXT_API_BASE" in top
    run_help = " ".join(cli("run", "--help").stdout.split())
    for var in ("KONTEXT_OUTPUT", "KONTEXT_MODEL", "KONTEXT_BUDGET", "KONTEXT_INPUTS_ROOT"):
        assert f"env var: {var}" in run_help
    assert "KONTEXT_PROGRESS_EVERY_S seconds" in run_help
    assert "env var: KONTEXT_MODEL" in " ".join(cli("validate", "--help").stdout.split())

    empty = cli("--redis-url", redis_url, "status")
    assert empty.returncode == 0, empty.stderr
    assert f"no runs in the Redis at {redis_url}" in empty.stdout
    bad = cli("--api-base", "ftp://nowhere", "status")
    assert bad.returncode == 2
    assert "KONTEXT_API_BASE" in bad.stderr


def test_ctrl_c_while_the_manifest_is_checked_queues_nothing_and_exits_130(redis_url: str, tmp_path: Path) -> None:
    manifest = _manifest(tmp_path / "big.csv", 200_000)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KONTEXT_")}
    env.update(KONTEXT_REDIS_URL=redis_url, KONTEXT_API_KEY="k-interrupted")
    r = redis.Redis.from_url(redis_url)
    with subprocess.Popen(
        [sys.executable, "-m", "kontext_batch", "run", str(manifest), "--wait", "-o", str(tmp_path / "out")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        deadline = time.monotonic() + 60
        while not r.keys("kb:run:*"):  # registered as `enqueuing`: the one pass over the rows has begun
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the run was never registered"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert "nothing was queued" in err
    assert "Aborted" not in err
    assert not out.strip(), "a run id was printed for a run that was never queued"
    assert r.keys("kb:run:*") == []
    r.close()
