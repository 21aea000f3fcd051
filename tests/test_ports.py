"""Ports for private servers (kontext_batch.run.local): a restarted one keeps a port nobody is handed."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from kontext_batch.run.local import steady_port

pytestmark = pytest.mark.integration  # real sockets

RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


@pytest.mark.skipif(not RANGE.exists(), reason="Linux only: the kernel's ephemeral range is read from /proc")
def test_a_steady_port_is_free_and_outside_the_range_the_kernel_hands_out() -> None:
    """A restarted server comes back on its port: one the kernel never gives a port-0 bind or an
    outgoing connection while the server is down."""
    low = int(RANGE.read_text().split()[0])
    ports = {steady_port() for _ in range(20)}
    assert all(1024 <= p < low for p in ports)
    assert len(ports) > 1  # drawn at random: two drills side by side rarely meet
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free when handed out


def test_a_port_in_use_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = steady_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        draws = iter([taken, taken, taken + 1 if taken + 1 < 32768 else taken - 1])
        monkeypatch.setattr("random.Random.randrange", lambda self, a, b: next(draws))
        assert steady_port() != taken
