"""The test tiers: which one each test belongs to, and a watch that holds each test to its tier.

================  ==================================================================================
tier (marker)     what its tests may use
================  ==================================================================================
``unit``          no services: no Redis, no servers (``httpx.MockTransport`` is in-process), no
                  subprocesses, no network socket. The whole tier runs in well under a minute.
``integration``   real Redis, the emulator, an S3 or HTTP server on loopback, a private
                  redis-server, the CLI or a tool (promtool, chromium, check-jsonschema) as a
                  subprocess; no worker processes.
``e2e``           real worker processes (``running_system``, ``WorkerPool``, ``kontext-batch worker``).
``faults``        the fault-injection suite: workers killed, Redis restarted mid-run.
================  ==================================================================================

Every test gets exactly one tier, decided at collection by :func:`assign`:

1. a tier marker on the test, its class or its module (``pytestmark = pytest.mark.e2e``) says it
   outright; two tier markers on one test are a usage error;
2. else a test that asks for a fixture in :data:`SERVICE_FIXTURES` (directly or through another
   fixture) is ``integration``;
3. else it is ``unit``.

What fixtures do not show (a test that starts ``Emulator(...)`` or the CLI itself) the
:class:`Watch` catches while the test runs: a ``unit`` test that opens an internet socket or starts
a subprocess, or a ``unit`` or ``integration`` test that starts a worker process, fails, naming what
it did and the marker to give it. Only the test's own threads count (threads alive before it
started serve earlier tests). The subprocess and socket calls themselves go through unchanged.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Final

import pytest

__all__ = [
    "SERVICE_FIXTURES",
    "TIERS",
    "Watch",
    "assign",
    "tier_of",
    "worker_argv",
]

TIERS: Final = ("unit", "integration", "e2e", "faults")

#: Fixtures that hand a test a running service. A plain name is any fixture of that name (the
#: shared ones in tests/conftest.py, tests/s3_server.py, tests/emulator_fixtures.py, and modules'
#: own ``emu``); ``module::name`` is one module's own fixture, and ``module::name[param]`` one value
#: of a parametrized fixture that starts a service for that value only.
SERVICE_FIXTURES: Final = frozenset(
    {
        "redis_url",  # the test Redis, flushed
        "redis_client",
        "emu",  # the emulator on a loopback port
        "http",  # an httpx client for it
        "webhook_receiver",  # an HTTP server for the emulator's webhooks
        "s3_server",  # moto's S3 in its own process
        "s3_url",
        "http_server",  # a threaded HTTP server
        "tests.test_api_trust::api",  # local HTTP servers
        "tests.test_api_trust::other",
        "tests.test_fetch_safety::srv",
        "tests.test_emulator_cli::served",  # the emulator command as a process
        "tests.test_redis_errors::servers",  # private redis-servers
        "tests.test_storage::store[s3]",
        "tests.test_manifest::out_store[s3]",
        "tests.test_cloud_stores::gcs_endpoint",  # gcp-storage-emulator and Azurite as processes
        "tests.test_cloud_stores::azurite_endpoint",
        "tests.test_cloud_stores::bucket_url",  # each of its values asks for one of the two
    }
)

_INET: Final = (socket.AF_INET, socket.AF_INET6)
_SHOWN: Final = 5  # what a report lists of what a test did beyond its tier


def _explicit(item: pytest.Item) -> list[str]:
    return sorted({m.name for m in item.iter_markers() if m.name in TIERS})


def tier_of(item: pytest.Item) -> str:
    """The tier ``item`` belongs to (after :func:`assign`: its one tier marker)."""
    tiers = _explicit(item)
    if len(tiers) != 1:
        raise pytest.UsageError(f"{item.nodeid}: tier markers {tiers}, want exactly one of {', '.join(TIERS)}")
    return tiers[0]


def _uses_a_service(item: pytest.Item) -> bool:
    module = getattr(getattr(item, "module", None), "__name__", "")
    params: dict[str, object] = getattr(getattr(item, "callspec", None), "params", {})
    for name in getattr(item, "fixturenames", ()):
        keys = {name, f"{module}::{name}"}
        if name in params:
            keys.add(f"{module}::{name}[{params[name]}]")
        if keys & SERVICE_FIXTURES:
            return True
    return False


def _stale_entries(items: Sequence[pytest.Item]) -> list[str]:
    """``module::name`` entries whose module was collected but defines no fixture of that name."""
    modules = {m.__name__: m for m in (getattr(i, "module", None) for i in items) if m is not None}
    stale = []
    for entry in SERVICE_FIXTURES:
        module, sep, name = entry.partition("::")
        if sep and module in modules and not hasattr(modules[module], name.split("[")[0]):
            stale.append(entry)
    return sorted(stale)


def assign(items: Sequence[pytest.Item]) -> None:
    """Give every collected test one tier marker; refuse a test with two (a usage error ends the session)."""
    problems = [f"{i.nodeid}: {', '.join(t)}" for i in items if len(t := _explicit(i)) > 1]
    problems += [f"SERVICE_FIXTURES names no fixture of its module: {e}" for e in _stale_entries(items)]
    if problems:
        raise pytest.UsageError("test tiers (tests/tier_support.py):\n  " + "\n  ".join(problems))
    for item in items:
        if not _explicit(item):
            item.add_marker("integration" if _uses_a_service(item) else "unit")
        tier_of(item)  # exactly one now


def worker_argv(argv: object) -> bool:
    """Whether ``argv`` runs worker processes: ``kontext-batch worker`` (``python -m kontext_batch
    worker``), celery's ``worker``, or a command that starts its own (``run --local``, ``demo``)."""
    if isinstance(argv, (str, bytes)):
        words = str(argv).split()
    elif isinstance(argv, Sequence):
        words = [str(a) for a in argv]
    else:
        return False
    ours = any("kontext_batch" in w or "kontext-batch" in w or w.endswith("celery") for w in words)
    return ours and any(w in ("worker", "--local", "demo") for w in words)


class Watch:
    """What a test of ``tier`` did beyond its tier, seen from the threads it started itself."""

    def __init__(self, tier: str) -> None:
        self.tier = tier
        self.seen: list[tuple[str, str]] = []  # (what, the tier it needs)
        self._before = {t.ident for t in threading.enumerate()} - {threading.get_ident()}

    def _record(self, what: str, needs: str) -> None:
        if threading.get_ident() not in self._before and (what, needs) not in self.seen:
            self.seen.append((what, needs))

    def socket_used(self, call: str, family: int, address: object) -> None:
        if self.tier == "unit" and family in _INET:
            self._record(f"socket {call} {address!r}", "integration")

    def process_started(self, argv: object) -> None:
        if self.tier in ("unit", "integration") and worker_argv(argv):
            self._record(f"started worker processes: {argv!r}", "e2e")
        elif self.tier == "unit":
            self._record(f"started a subprocess: {argv!r}", "integration")

    def report(self, seen: Sequence[tuple[str, str]]) -> str:
        needs = "e2e" if any(n == "e2e" for _, n in seen) else "integration"
        lines = [what for what, _ in seen[:_SHOWN]]
        if len(seen) > _SHOWN:
            lines.append(f"... and {len(seen) - _SHOWN} more")
        return (
            f"{'an' if self.tier == 'integration' else 'a'} {self.tier} test went beyond its tier;"
            f" give it pytest.mark.{needs} (tests/tier_support.py):\n  " + "\n  ".join(lines)
        )

    @contextlib.contextmanager
    def installed(self) -> Iterator[Watch]:
        """Wrap socket connect/bind and subprocess.Popen while the test runs."""
        if self.tier not in ("unit", "integration"):
            yield self
            return
        watch = self
        originals = {name: getattr(socket.socket, name) for name in ("connect", "connect_ex", "bind")}
        popen_init = subprocess.Popen.__init__

        def wrap(name: str) -> Any:
            original = originals[name]

            def method(sock: socket.socket, address: Any) -> Any:
                watch.socket_used(name, sock.family, address)
                return original(sock, address)

            return method

        def init(popen: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
            watch.process_started(args)
            popen_init(popen, args, *rest, **kwargs)

        for name in originals:
            setattr(socket.socket, name, wrap(name))
        subprocess.Popen.__init__ = init  # type: ignore[method-assign]
        try:
            yield self
        finally:
            for name, original in originals.items():
                setattr(socket.socket, name, original)
            subprocess.Popen.__init__ = popen_init  # type: ignore[method-assign]
