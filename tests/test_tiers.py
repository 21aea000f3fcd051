"""The tiers hold: every test has exactly one, fixtures decide it, and the watch sees what a test does.

tests/tier_support.py defines the tiers; these tests check its rules on stand-in items and on the
session's own tests, and that the watch records (and only records) what a test does beyond its tier.
"""

from __future__ import annotations

import importlib
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.tier_support import SERVICE_FIXTURES, TIERS, Watch, assign, tier_of, worker_argv


@dataclass
class FakeItem:
    """What :func:`assign` reads of a pytest item: its markers, fixtures, module and parameters."""

    nodeid: str
    marks: list[str] = field(default_factory=list)
    fixturenames: list[str] = field(default_factory=list)
    params: dict[str, object] = field(default_factory=dict)
    module_name: str = __name__

    @property
    def module(self) -> Any:
        return importlib.import_module(self.module_name)

    @property
    def callspec(self) -> Any:
        return type("CallSpec", (), {"params": self.params})()

    def iter_markers(self) -> list[pytest.Mark]:
        return [getattr(pytest.mark, name).mark for name in self.marks]

    def add_marker(self, name: str) -> None:
        self.marks.append(name)


def test_every_collected_test_has_exactly_one_tier(request: pytest.FixtureRequest) -> None:
    for item in request.session.items:
        assert tier_of(item) in TIERS


def test_a_test_that_asks_for_nothing_is_unit_and_one_with_a_service_is_integration() -> None:
    # fixturenames is the closure: a fixture that asks for redis_url brings redis_url along.
    plain = FakeItem("a", fixturenames=["tmp_path", "caplog"])
    redis = FakeItem("b", fixturenames=["tmp_path", "store", "redis_url"])
    own = FakeItem("c", fixturenames=["api"], module_name="tests.test_api_trust")
    assign([plain, redis, own])  # type: ignore[list-item]
    assert (plain.marks, redis.marks, own.marks) == (["unit"], ["integration"], ["integration"])


def test_an_explicit_tier_is_kept() -> None:
    item = FakeItem("a", marks=["e2e"], fixturenames=["redis_url"])
    assign([item])  # type: ignore[list-item]
    assert item.marks == ["e2e"]


def test_two_tiers_on_one_test_end_the_session() -> None:
    with pytest.raises(pytest.UsageError, match="t::x: faults, integration"):
        assign([FakeItem("t::x", marks=["integration", "faults"])])  # type: ignore[list-item]


def test_one_value_of_a_parametrized_fixture_can_be_the_service() -> None:
    assert "tests.test_storage::store[s3]" in SERVICE_FIXTURES
    s3 = FakeItem("s3", fixturenames=["store"], params={"store": "s3"}, module_name="tests.test_storage")
    local = FakeItem("local", fixturenames=["store"], params={"store": "local"}, module_name="tests.test_storage")
    assign([s3, local])  # type: ignore[list-item]
    assert (s3.marks, local.marks) == (["integration"], ["unit"])


@pytest.mark.parametrize(
    ("argv", "starts_workers"),
    [
        ([sys.executable, "-m", "kontext_batch", "worker", "-c", "2"], True),
        (["kontext-batch", "worker"], True),
        (["/venv/bin/celery", "-A", "kontext_batch.workers.app", "worker"], True),
        ([sys.executable, "-m", "kontext_batch", "run", "m.csv", "--local"], True),
        ("kontext-batch demo", True),
        ([sys.executable, "-m", "kontext_batch", "status"], False),
        ([sys.executable, "-m", "moto.server", "-p", "1"], False),
        (["/usr/bin/redis-server", "--port", "0"], False),
        (["promtool", "check", "rules", "worker.yml"], False),
    ],
)
def test_worker_processes_are_told_from_other_commands(argv: object, starts_workers: bool) -> None:
    assert worker_argv(argv) is starts_workers


@pytest.mark.integration  # it binds a socket and starts a process, to show the watch sees both
def test_the_watch_records_what_a_unit_test_does_and_lets_it_through() -> None:
    watch = Watch("unit")
    with watch.installed(), socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # goes through: the watch only records
        assert sock.getsockname()[1] > 0
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    a, b = socket.socketpair()  # AF_UNIX: not a network socket
    a.close()
    b.close()
    assert [needs for _, needs in watch.seen] == ["integration", "integration"]
    assert "bind ('127.0.0.1', 0)" in watch.seen[0][0]
    assert "give it pytest.mark.integration" in watch.report(watch.seen)


def test_the_watch_lets_integration_use_servers_but_not_workers() -> None:
    watch = Watch("integration")
    with watch.installed():
        watch.socket_used("connect", socket.AF_INET, ("127.0.0.1", 6379))
        watch.process_started(["redis-server", "--port", "0"])
        watch.process_started([sys.executable, "-m", "kontext_batch", "worker"])
    assert [needs for _, needs in watch.seen] == ["e2e"]
    assert "give it pytest.mark.e2e" in watch.report(watch.seen)


def test_threads_alive_before_the_test_are_not_its_own() -> None:
    started, stop = threading.Event(), threading.Event()

    def earlier_server() -> None:  # a server thread an earlier test left running
        started.set()
        stop.wait(5)
        watch.socket_used("connect", socket.AF_INET, ("127.0.0.1", 1))

    thread = threading.Thread(target=earlier_server)
    thread.start()
    started.wait(5)
    watch = Watch("unit")
    stop.set()
    thread.join(5)
    assert watch.seen == []
    watch.socket_used("connect", socket.AF_INET, ("127.0.0.1", 2))  # this test's own thread
    assert len(watch.seen) == 1


def test_the_watch_restores_socket_and_popen() -> None:
    before = (socket.socket.connect, socket.socket.bind, subprocess.Popen.__init__)
    with Watch("unit").installed():
        assert socket.socket.connect is not before[0]
    assert (socket.socket.connect, socket.socket.bind, subprocess.Popen.__init__) == before
