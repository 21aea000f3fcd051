"""The Redis a command's error line names is the one the command used: ``--redis-url`` (and
``--api-base``) given before the command count, not only the environment.

The real ``kontext-batch`` as a subprocess, as in tests/test_redis_errors.py. The environment names
a Redis where nothing listens; ``--redis-url`` names another.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kontext_batch.run.local import free_port
from tests.redis_servers import redis_server

pytestmark = pytest.mark.integration  # the CLI as a subprocess, against Redis servers

PASSWORD = "ping-only-pw-7e21"


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KONTEXT_")}
    return subprocess.run(
        [sys.executable, "-m", "kontext_batch", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert PASSWORD not in proc.stderr + proc.stdout
    return lines[0]


def test_the_start_up_check_names_the_redis_of_redis_url() -> None:
    env_url = f"redis://127.0.0.1:{free_port()}/0"
    line = one_error_line(cli({"KONTEXT_REDIS_URL": env_url}, "--redis-url", "redis://127.0.0.1:1/0", "status"))
    assert "cannot reach Redis at redis://127.0.0.1:1/0: connection refused" in line, line
    assert env_url not in line


def test_a_redis_error_after_the_check_names_the_redis_of_redis_url(tmp_path: Path) -> None:
    # A user that may PING (so the start-up check passes) and nothing else: the first read of run
    # state fails with NOPERM, which reaches main()'s handler for Redis errors met mid-command.
    acl = ("--user", "default", "off", "--user", "kb", "on", f">{PASSWORD}", "~*", "+ping")
    env_url = f"redis://127.0.0.1:{free_port()}/0"
    with redis_server(tmp_path / "ping-only", *acl) as port:
        url = f"redis://kb:{PASSWORD}@127.0.0.1:{port}/0"
        proc = cli(
            {"KONTEXT_REDIS_URL": env_url, "KONTEXT_API_BASE": "us"},
            *("--redis-url", url, "--api-base", "eu", "status"),
        )
    line = one_error_line(proc)
    assert f"Redis at redis://kb:***@127.0.0.1:{port}/0 refused a command to this ACL user (NOPERM)" in line, line
    assert env_url not in line
