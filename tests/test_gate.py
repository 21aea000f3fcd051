"""The slot gate against real Redis: caps, FIFO, expiry of dead workers' leases, fencing tokens."""

from __future__ import annotations

import threading
import time

import redis

from kontext_batch.gate import Gate, SlotGate
from kontext_batch.keys import Keys

GATE = Gate(fp="acct", endpoint="flux-kontext-max", cap=6, cap_total=24)
PRO = Gate(fp="acct", endpoint="flux-kontext-pro", cap=24, cap_total=24)


def make(r: redis.Redis, lease_s: float = 30) -> SlotGate:
    return SlotGate(r, Keys("kbtest"), lease_s=lease_s)


def test_dispatch_grants_up_to_the_cap_in_fifo_order(redis_client: redis.Redis) -> None:
    g = make(redis_client)
    g.enqueue(GATE, [f"run:{i}" for i in range(1, 11)])
    grants = g.dispatch(GATE)
    assert [x.ref for x in grants] == [f"run:{i}" for i in range(1, 7)]
    assert g.dispatch(GATE) == []  # full
    assert g.active("acct", GATE.endpoint) == 6
    assert g.waiting("acct", GATE.endpoint) == 4


def test_release_frees_exactly_one_slot(redis_client: redis.Redis) -> None:
    g = make(redis_client)
    g.enqueue(GATE, [f"run:{i}" for i in range(1, 11)])
    g.dispatch(GATE)
    g.release(GATE.id, "run:3")
    assert [x.ref for x in g.dispatch(GATE)] == ["run:7"]


def test_account_cap_spans_endpoints(redis_client: redis.Redis) -> None:
    g = make(redis_client)
    g.enqueue(GATE, [f"m:{i}" for i in range(1, 7)])
    g.enqueue(PRO, [f"p:{i}" for i in range(1, 31)])
    assert len(g.dispatch(GATE)) == 6
    assert len(g.dispatch(PRO)) == 18  # 24 in all for the account
    assert g.active("acct") == 24


def test_concurrent_dispatchers_never_exceed_the_cap(redis_client: redis.Redis) -> None:
    g = make(redis_client)
    g.enqueue(PRO, [f"run:{i}" for i in range(1, 201)])
    got: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(20):
            grants = g.dispatch(PRO)
            with lock:
                got.extend(x.ref for x in grants)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 24
    assert len(set(got)) == 24


def test_expired_lease_frees_its_slot(redis_client: redis.Redis) -> None:
    g = make(redis_client, lease_s=0.2)
    g.enqueue(GATE, [f"run:{i}" for i in range(1, 8)])
    assert len(g.dispatch(GATE)) == 6
    time.sleep(0.3)  # every holder "died": nobody renewed
    assert [x.ref for x in g.dispatch(GATE)] == ["run:7"]


def test_fencing_token_admits_one_message_per_step(redis_client: redis.Redis) -> None:
    g = make(redis_client)
    g.enqueue(GATE, ["run:1"])
    (grant,) = g.dispatch(GATE)
    first = g.claim("run:1", grant.token)
    assert first is not None
    assert first["state"] == "granted"
    assert g.claim("run:1", grant.token) is None  # the same message delivered twice
    assert g.claim("run:1", grant.token + 1) is not None  # the next step's message


def test_claim_expired_hands_quiet_jobs_out_once_with_a_new_token(redis_client: redis.Redis) -> None:
    g = make(redis_client, lease_s=0.2)
    g.enqueue(GATE, ["run:1", "run:2"])
    grants = {x.ref: x.token for x in g.dispatch(GATE)}
    g.update("run:2", state="polling")
    time.sleep(0.3)
    stale = {s.ref: s for s in g.claim_expired()}
    assert set(stale) == {"run:1", "run:2"}
    assert stale["run:2"].state == "polling"
    assert stale["run:1"].gate_id == GATE.id
    assert g.claim_expired() == []  # renewed: not handed out twice
    assert g.claim("run:1", grants["run:1"]) is None  # the old message is stale now
    assert g.claim("run:1", stale["run:1"].token) is not None


def test_requeue_puts_the_job_first_in_line(redis_client: redis.Redis) -> None:
    g = make(redis_client)
    g.enqueue(GATE, [f"run:{i}" for i in range(1, 9)])
    g.dispatch(GATE)
    g.requeue(GATE, "run:2")
    assert [x.ref for x in g.dispatch(GATE)] == ["run:2"]


def test_remove_run_from_wait_keeps_other_runs(redis_client: redis.Redis) -> None:
    g = make(redis_client)
    g.enqueue(PRO, ["a:1", "b:1", "a:2", "b:2"])
    assert sorted(g.remove_run_from_wait("acct", PRO.endpoint, "a")) == ["a:1", "a:2"]
    assert [x.ref for x in g.dispatch(PRO)] == ["b:1", "b:2"]


def test_cancel_drops_a_large_run_from_the_wait_list_in_one_pass(redis_client: redis.Redis) -> None:
    g = make(redis_client)
    refs = [f"{'big' if i % 2 else 'other'}:{i}" for i in range(100_000)]
    g.enqueue(PRO, refs)
    removed = g.remove_run_from_wait("acct", PRO.endpoint, "big")
    assert len(removed) == 50_000
    assert g.waiting("acct", PRO.endpoint) == 50_000
    assert [x.ref for x in g.dispatch(PRO)] == [f"other:{i}" for i in range(0, 48, 2)]
