"""A Redis the CLI or a worker cannot use: one clear line naming it and the cause, never a traceback.

Every case is a real redis-server (or a free port where nothing listens) and the real
``kontext-batch`` command as a subprocess: refused connection, wrong password, wrong ACL user,
no password, and TLS mismatches (plain client to a TLS server, TLS client to a plain server, a
CA that did not sign the server's certificate).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import redis
from celery import Celery
from kombu.exceptions import OperationalError
from redis.exceptions import NoPermissionError, RedisError

from kontext_batch.run.local import WorkerPool, free_port
from kontext_batch.secret import Secret
from kontext_batch.settings import Settings
from tests.e2e_support import read_results, running_system, write_csv
from tests.redis_servers import Pki, make_pki, redis_server, tls_args

PASSWORD = "s3cret-redis-pw-51ab"
WRONG = "wrong-pw-9c0d"
#: (command args, whether it needs a manifest); every command that talks to Redis.
COMMANDS = [
    ("run", "{manifest}"),
    ("status",),
    ("results", "RUN-X"),
    ("cancel", "RUN-X"),
    ("retry", "RUN-X"),
    ("follow", "RUN-X"),
]


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KONTEXT_")}
    # The timeout is a ceiling, not a measurement: before this fix these commands took ~34 s.
    return subprocess.run(
        [sys.executable, "-m", "kontext_batch", *args],
        env={**clean, "KONTEXT_API_KEY": "redis-errors-key", "KONTEXT_API_BASE": "http://127.0.0.1:9", **env},
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def one_clear_line(proc: subprocess.CompletedProcess[str], *must: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    for text in must:
        assert text in lines[0], (text, lines[0])
    assert PASSWORD not in proc.stderr + proc.stdout
    assert WRONG not in proc.stderr + proc.stdout
    return lines[0]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[dict[str, int]]:
    """Four private servers: plain, password, ACL user only, TLS only."""
    work = tmp_path_factory.mktemp("redis")
    acl = ("--user", "default", "off", "--user", "kb", "on", f">{PASSWORD}", "~kb:*", "+@all")
    with ExitStack() as stack:
        yield {
            "plain": stack.enter_context(redis_server(work / "plain")),
            "password": stack.enter_context(redis_server(work / "password", "--requirepass", PASSWORD)),
            "acl": stack.enter_context(redis_server(work / "acl", *acl)),
            "tls": stack.enter_context(redis_server(work / "tls", *tls_args(pki), tls=True)),
        }


@pytest.mark.integration
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_every_command_says_nothing_listens_in_one_line(command: tuple[str, ...], tmp_path: Path) -> None:
    manifest = write_csv(tmp_path / "m.csv", ["id", "prompt"], [{"id": "a", "prompt": "white background"}])
    url = f"redis://127.0.0.1:{free_port()}/0"
    proc = cli({"KONTEXT_REDIS_URL": url}, *(a.format(manifest=manifest) for a in command))
    one_clear_line(proc, f"cannot reach Redis at {url}: connection refused")


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_every_command_says_the_password_was_refused(
    command: tuple[str, ...], servers: dict[str, int], tmp_path: Path
) -> None:
    manifest = write_csv(tmp_path / "m.csv", ["id", "prompt"], [{"id": "a", "prompt": "white background"}])
    port = servers["password"]
    url = f"redis://:{WRONG}@127.0.0.1:{port}/0"
    proc = cli({"KONTEXT_REDIS_URL": url}, *(a.format(manifest=manifest) for a in command))
    one_clear_line(proc, f"Redis at redis://:***@127.0.0.1:{port}/0 refused the password (WRONGPASS)")


Case = Callable[[dict[str, int], Pki], tuple[dict[str, str], list[str]]]
CASES: dict[str, Case] = {
    "no-password": lambda s, _: (
        {"KONTEXT_REDIS_URL": f"redis://127.0.0.1:{s['password']}/0"},
        [f"Redis at redis://127.0.0.1:{s['password']}/0 requires a password (NOAUTH)"],
    ),
    "acl-user-wrong-password": lambda s, _: (
        {"KONTEXT_REDIS_URL": f"redis://kb:{WRONG}@127.0.0.1:{s['acl']}/0"},
        [f"Redis at redis://kb:***@127.0.0.1:{s['acl']}/0 refused the password (WRONGPASS)"],
    ),
    "acl-unknown-user": lambda s, _: (
        {"KONTEXT_REDIS_URL": f"redis://nobody:{PASSWORD}@127.0.0.1:{s['acl']}/0"},
        ["refused the password (WRONGPASS)"],
    ),
    "plain-client-tls-server": lambda s, _: (
        {"KONTEXT_REDIS_URL": f"redis://127.0.0.1:{s['tls']}/0"},
        [f"Redis at redis://127.0.0.1:{s['tls']}/0 closed the connection", "rediss://"],
    ),
    "tls-client-plain-server": lambda s, p: (
        {"KONTEXT_REDIS_URL": f"rediss://127.0.0.1:{s['plain']}/0", "KONTEXT_REDIS_CA": str(p.ca)},
        [f"TLS handshake with Redis at rediss://127.0.0.1:{s['plain']}/0 failed"],
    ),
    "tls-without-ca": lambda s, _: (
        {"KONTEXT_REDIS_URL": f"rediss://127.0.0.1:{s['tls']}/0"},
        [f"TLS handshake with Redis at rediss://127.0.0.1:{s['tls']}/0 failed: certificate verify failed"],
    ),
    "tls-unknown-ca": lambda s, p: (
        {"KONTEXT_REDIS_URL": f"rediss://127.0.0.1:{s['tls']}/0", "KONTEXT_REDIS_CA": str(p.other_ca)},
        ["TLS handshake with Redis at", "certificate verify failed", "KONTEXT_REDIS_CA"],
    ),
    "ca-with-plain-url": lambda s, p: (
        {"KONTEXT_REDIS_URL": f"redis://127.0.0.1:{s['plain']}/0", "KONTEXT_REDIS_CA": str(p.ca)},
        ["KONTEXT_REDIS_CA is set but KONTEXT_REDIS_URL is not rediss://"],
    ),
    "missing-ca-file": lambda s, _: (
        {"KONTEXT_REDIS_URL": f"rediss://127.0.0.1:{s['tls']}/0", "KONTEXT_REDIS_CA": "/nonexistent/ca.pem"},
        ["KONTEXT_REDIS_CA: no such file"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_status_names_the_cause_in_one_line(case: str, servers: dict[str, int], pki: Pki) -> None:
    env, must = CASES[case](servers, pki)
    one_clear_line(cli(env, "status"), *must)


def test_the_right_password_and_acl_user_work(servers: dict[str, int]) -> None:
    for url in (
        f"redis://:{PASSWORD}@127.0.0.1:{servers['password']}/0",
        f"redis://kb:{PASSWORD}@127.0.0.1:{servers['acl']}/0",
    ):
        proc = cli({"KONTEXT_REDIS_URL": url}, "status")
        assert proc.returncode == 0, proc.stderr[-3000:]  # the cases above fail for their stated cause


# -- workers ----------------------------------------------------------------------------------------


def wait_for(what: str, check: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def answers_ping(app: Celery) -> bool:
    """A broadcast ping over a fresh broker connection (an old one may point at a stopped server)."""
    try:
        with app.connection_for_write() as conn:
            return bool(app.control.ping(timeout=1.0, connection=conn))
    except (RedisError, OperationalError):
        return False


@pytest.mark.e2e
def test_a_worker_waits_for_redis_says_why_in_one_line_and_connects_when_it_comes(tmp_path: Path) -> None:
    from kontext_batch.workers.app import configure  # noqa: PLC0415 - the app is configured per test

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    s = Settings(api_key=Secret("worker-key"), api_base="http://127.0.0.1:9", redis_url=url)
    log = tmp_path / "logs" / "worker-0.log"
    with WorkerPool(s, n=1, concurrency=2, loglevel="INFO", log_dir=tmp_path / "logs") as pool:
        clear = f"cannot reach Redis at {url}: connection refused"
        wait_for("the worker's line", lambda: clear in log.read_text(errors="replace"), 30)
        time.sleep(3)
        assert pool.alive() == 1, log.read_text(errors="replace")[-3000:]
        assert "Traceback" not in log.read_text(errors="replace")

        with redis_server(tmp_path / "redis", port=port):
            app = configure(s)
            wait_for("a ping answered by the worker", lambda: answers_ping(app), 60)

        # Redis goes away under a connected worker: the sweeper says so once, the worker stays.
        lost = f"cannot reach Redis at {url}"
        wait_for("the sweeper's line", lambda: "the sweeper keeps trying" in log.read_text(errors="replace"), 60)
        time.sleep(3)
        text = log.read_text(errors="replace")
        assert pool.alive() == 1, text[-3000:]
        assert text.count("the sweeper keeps trying") == 1, text[-3000:]
        assert lost in text
        assert "Traceback" not in text, text[-5000:]

        with redis_server(tmp_path / "redis2", port=port):
            wait_for("the sweeper recovering", lambda: "answers again" in log.read_text(errors="replace"), 60)
            wait_for("a ping answered again", lambda: answers_ping(app), 60)
        assert "Traceback" not in log.read_text(errors="replace")


# -- the locked-down user of docs/guarantees.md -----------------------------------------------------

GUARANTEES = Path(__file__).resolve().parent.parent / "docs" / "guarantees.md"


def documented_acl() -> list[str]:
    """The ``user kontext ...`` rule that docs/guarantees.md recommends, as redis-server arguments."""
    (line,) = [ln.strip() for ln in GUARANTEES.read_text().splitlines() if ln.strip().startswith("user kontext ")]
    words = line.split()
    return ["--user", *[f">{PASSWORD}" if w == ">PASSWORD" else w for w in words[1:]]]


@pytest.mark.e2e
def test_a_run_works_as_the_documented_acl_user_and_nothing_else_is_reachable(tmp_path: Path) -> None:
    with redis_server(tmp_path / "acl", *documented_acl(), "--user", "default", "off") as port:
        url = f"redis://kontext:{PASSWORD}@127.0.0.1:{port}/0"
        rows: list[dict[str, object]] = [{"id": f"a{i}", "prompt": f"white background {i}"} for i in range(3)]
        manifest = write_csv(tmp_path / "m.csv", ["id", "prompt"], rows)
        with running_system(url, workers=1, log_dir=tmp_path / "logs") as system:
            proc = system.cli("run", str(manifest), "--output", str(tmp_path / "out"), "--wait", timeout_s=60)
            status = system.cli("status")
        logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "logs").glob("*.log"))
        assert proc.returncode == 0, (proc.stderr[-3000:], logs[-3000:])
        assert status.returncode == 0, status.stderr[-3000:]
        assert "NOPERM" not in logs, logs[-3000:]
        assert [r["status"] for r in read_results((tmp_path / "out" / "results.csv").read_bytes())] == ["succeeded"] * 3

        client = redis.Redis.from_url(url)
        with pytest.raises(NoPermissionError):
            client.get("someone-elses-key")
        with pytest.raises(NoPermissionError):
            client.config_get("dir")
        client.close()
