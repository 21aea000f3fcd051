"""A Sentinel group on loopback: one master, one replica and three sentinels (``redis-server
--sentinel``), for the failover tests. Every server started here is stopped on exit."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from kontext_batch.run.local import free_port
from tests.redis_servers import redis_binary, wait_listening

MASTER = "kbmaster"


@dataclass
class SentinelGroup:
    data_ports: list[int]
    sentinel_ports: list[int]
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def url(self, db: int = 0) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{MASTER}/{db}"

    def sentinel(self, i: int = 0) -> redis.Redis:
        return redis.Redis(port=self.sentinel_ports[i], socket_timeout=2, decode_responses=True)

    def master_port(self) -> int:
        """The master's port as the first sentinel that answers sees it now."""
        for port in self.sentinel_ports:
            with contextlib.suppress(redis.RedisError):
                s = redis.Redis(port=port, socket_timeout=2, decode_responses=True)
                addr = s.execute_command("SENTINEL", "get-master-addr-by-name", MASTER)
                s.close()
                if addr:
                    return int(addr[1])
        raise AssertionError("no sentinel answered")

    def failover(self) -> int:
        """``SENTINEL FAILOVER`` and wait until every sentinel names the new master and the old one
        serves as its replica; returns the new master's port."""
        old = self.master_port()
        self.sentinel().execute_command("SENTINEL", "FAILOVER", MASTER)
        return self._wait_master_moved(old)

    def kill_master(self) -> int:
        """``kill -9`` of the master (it stays dead); wait for the sentinels to promote the replica."""
        old = self.master_port()
        self.procs[old].kill()
        self.procs[old].wait(10)
        return self._wait_master_moved(old)

    def named(self) -> set[int]:
        """The master ports the sentinels name now (one, once they agree)."""
        seen = set()
        for port in self.sentinel_ports:
            with contextlib.suppress(redis.RedisError):
                s = redis.Redis(port=port, socket_timeout=2, decode_responses=True)
                addr = s.execute_command("SENTINEL", "get-master-addr-by-name", MASTER)
                s.close()
                seen.add(int(addr[1]))
        return seen

    def _wait_master_moved(self, old: int, timeout_s: float = 60) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            seen = self.named()
            if len(seen) == 1 and old not in seen:
                new = seen.pop()
                # The new master must answer as one before the failover is over for the tests.
                if self.role(new) == "master" and self.role(old) in ("slave", None):
                    return new
            time.sleep(0.1)
        raise AssertionError(f"the sentinels did not move the master off {old} within {timeout_s:.0f} s")

    def role(self, port: int) -> str | None:
        """``master`` or ``slave`` as the server itself says; None when it is not running."""
        proc = self.procs.get(port)
        if proc is None or proc.poll() is not None:
            return None
        r = redis.Redis(port=port, socket_timeout=2, decode_responses=True)
        try:
            return str(r.info("replication")["role"])
        except redis.RedisError:
            return "unknown"
        finally:
            r.close()


def _start(cmd: list[str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(port, proc)
    return proc


@contextlib.contextmanager
def sentinel_group(workdir: Path) -> Iterator[SentinelGroup]:
    binary = redis_binary()
    master, replica = free_port(), free_port()
    group = SentinelGroup([master, replica], [free_port() for _ in range(3)])
    try:
        for port in group.data_ports:
            folder = workdir / f"redis-{port}"
            folder.mkdir(parents=True)
            cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", ""]
            cmd += ["--appendonly", "yes", "--maxmemory-policy", "noeviction"]
            if port == replica:
                cmd += ["--replicaof", "127.0.0.1", str(master)]
            group.procs[port] = _start(cmd, port)
        for port in group.sentinel_ports:
            conf = workdir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {master} 2\n"
                f"sentinel down-after-milliseconds {MASTER} 1000\n"
                f"sentinel failover-timeout {MASTER} 10000\n"
                f"sentinel parallel-syncs {MASTER} 1\n"
            )
            group.procs[port] = _start([binary, str(conf), "--sentinel"], port)
        _wait_ready(group)
        yield group
    finally:
        for proc in group.procs.values():
            proc.terminate()
        for proc in group.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _wait_ready(group: SentinelGroup, timeout_s: float = 60) -> None:
    """Every sentinel knows the replica and the two other sentinels, and the replica is in sync."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready = True
        for i in range(len(group.sentinel_ports)):
            s = group.sentinel(i)
            try:
                replicas = s.execute_command("SENTINEL", "replicas", MASTER)
                others = s.execute_command("SENTINEL", "sentinels", MASTER)
            except redis.RedisError:
                ready = False
            else:
                ready = ready and len(replicas) == 1 and len(others) == 2
            finally:
                s.close()
        rep = redis.Redis(port=group.data_ports[1], socket_timeout=2, decode_responses=True)
        with contextlib.suppress(redis.RedisError):
            ready = ready and rep.info("replication").get("master_link_status") == "up"
        rep.close()
        if ready:
            return
        time.sleep(0.2)
    raise AssertionError(f"the Sentinel group was not ready within {timeout_s:.0f} s")
