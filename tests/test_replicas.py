"""ReplicaGuard: whether a step's writes reached a replica before it POSTs, against real servers:
a Redis without replicas, and a master with a real replica that stalls, then leaves."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from kontext_batch.coord.replicas import Node, ReplicaGuard
from tests.redis_servers import redis_binary, redis_server


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write(guard: ReplicaGuard, r: redis.Redis, key: str = "kb:write", value: str = "1") -> Node:
    """A write and the node that took it, as a step makes them."""
    pipe = r.pipeline(transaction=False)
    pipe.set(key, value)
    guard.where_in(pipe)
    return Node.from_reply(pipe.execute()[-1])


def wait_until(cond: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[redis.Redis, redis.Redis]]:
    """A master and its replica, in sync."""
    redis_binary()  # skips (fails in CI) without a usable redis-server
    with redis_server(tmp_path / "master") as mport:
        replica_args = ("--replicaof", "127.0.0.1", str(mport), "--enable-debug-command", "yes")
        with redis_server(tmp_path / "replica", *replica_args) as rport:
            master, replica = redis.Redis(port=mport), redis.Redis(port=rport)
            wait_until(lambda: replica.info("replication").get("master_link_status") == "up")
            wait_until(lambda: master.info("replication").get("connected_slaves") == 1)
            yield master, replica
            master.close()
            replica.close()


@pytest.mark.integration
def test_a_redis_without_replicas_is_taken_as_it_is_and_waits_for_nothing(tmp_path: Path) -> None:
    with redis_server(tmp_path / "alone") as port:
        r = redis.Redis(port=port)
        guard = ReplicaGuard(r, "kb:replica-probe:t")
        assert guard.confirm(write(guard, r)) == "lone"
        assert guard.confirm(write(guard, r)) == "lone"
        assert r.exists("kb:replica-probe:t") == 0  # no probe, no WAIT: the default set-up pays nothing
        r.close()


@pytest.mark.integration
def test_writes_on_a_master_with_a_live_replica_are_confirmed(pair: tuple[redis.Redis, redis.Redis]) -> None:
    master, replica = pair
    guard = ReplicaGuard(master, "kb:replica-probe:t")
    assert guard.confirm(write(guard, master)) == "replicated"
    assert replica.get("kb:write") == b"1"


@pytest.mark.integration
def test_a_stalled_replica_leaves_the_write_unconfirmed(pair: tuple[redis.Redis, redis.Redis]) -> None:
    master, replica = pair
    guard = ReplicaGuard(master, "kb:replica-probe:t", timeout_ms=200)
    assert guard.confirm(write(guard, master)) == "replicated"
    port = replica.connection_pool.connection_kwargs["port"]
    # The replica is connected but acknowledges nothing while it sleeps.
    sleeper = threading.Thread(target=lambda: redis.Redis(port=port).execute_command("DEBUG", "SLEEP", "3"))
    sleeper.start()
    time.sleep(0.3)
    assert guard.confirm(write(guard, master, value="2")) == "unconfirmed"
    sleeper.join()


@pytest.mark.integration
def test_a_master_that_just_lost_its_replica_is_refused_until_the_window_passes(
    pair: tuple[redis.Redis, redis.Redis],
) -> None:
    master, replica = pair
    clock = Clock()
    guard = ReplicaGuard(master, "kb:replica-probe:t", timeout_ms=200, recent_s=15, clock=clock)
    assert guard.confirm(write(guard, master)) == "replicated"
    # What the old master of a forced failover sees: its replica promoted, gone from under it.
    replica.replicaof("NO", "ONE")
    wait_until(lambda: master.info("replication").get("connected_slaves") == 0)
    clock.now += 1
    assert guard.confirm(write(guard, master)) == "unconfirmed"
    clock.now += 10
    assert guard.confirm(write(guard, master)) == "unconfirmed"
    clock.now += 5  # 16 s without a replica: a master left alone for good (a kill -9's survivor)
    assert guard.confirm(write(guard, master)) == "lone"
    # The promoted replica: a new replication id, never seen with a replica, so its writes are taken
    # as they are (nothing else can take writes from it).
    promoted = write(guard, replica)
    assert promoted.replid != write(guard, master).replid
    assert guard.confirm(promoted) == "lone"


@pytest.mark.integration
def test_a_user_that_may_not_run_info_goes_on_unchecked(tmp_path: Path) -> None:
    acl = ("--user", "app", "on", ">pw", "~kb:*", "+@all", "-info", "--user", "default", "off")
    with redis_server(tmp_path / "acl", *acl) as port:
        r = redis.Redis(port=port, username="app", password="pw")
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.info("replication")
        guard = ReplicaGuard(r, "kb:replica-probe:t")
        node = write(guard, r)  # where() inside the script survives the refused INFO
        assert node.role == "unknown"
        # Not "unconfirmed": that would hold every submit back for ever.
        assert guard.confirm(node) == "lone"
        assert guard.confirm(write(guard, r)) == "lone"
        r.close()
