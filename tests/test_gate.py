"""The slot gate against real Redis: caps per key, pools of keys, FIFO, liveness, fencing tokens."""

from __future__ import annotations

import threading
import time

import redis

from kontext_batch.coord.gate import KeySlot, Pool, SlotGate, gate_id
from kontext_batch.coord.holders import Holders, KeyCaps
from kontext_batch.coord.keys import Keys

MAX = "flux-kontext-max"
PRO = "flux-kontext-pro"
ACCT = KeySlot("acct", 6, 24)  # on MAX
ACCT_PRO = KeySlot("acct", 24, 24)
KEYS = Keys("kbtest")


def make(r: redis.Redis, *, grace_s: float = 30, hold_s: float = 2.0) -> SlotGate:
    return SlotGate(r, KEYS, lease_s=30, grace_s=grace_s, hold_s=hold_s)


def test_dispatch_grants_up_to_the_cap_in_fifo_order(redis_client: redis.Redis) -> None:
    g = make(redis_client)
    g.enqueue("acct", MAX, [f"run:{i}" for i in range(1, 11)])
    grants = g.dispatch("acct", MAX, [ACCT])
    assert [x.ref for x in grants] == [f"run:{i}" for i in range(1, 7)]
    assert {x.fp for x in grants} == {"acct"}
    assert g.dispatch("acct", MAX, [ACCT]) == []  # full
    assert g.active("acct", MAX) == 6
    assert g.waiting("acct", MAX) == 4


def test_no_live_key_grants_nothing(redis_client: redis.Redis) -> None:
    g = make(redis_client)
    g.enqueue("acct", MAX, ["run:1"])
    assert g.dispatch("acct", MAX, []) == []
    assert g.waiting("acct", MAX) == 1


def test_release_frees_exactly_one_slot(redis_client: redis.Redis) -> None:
    g = make(redis_client)
    g.enqueue("acct", MAX, [f"run:{i}" for i in range(1, 11)])
    g.dispatch("acct", MAX, [ACCT])
    g.release(gate_id("acct", MAX), "run:3")
    assert [x.ref for x in g.dispatch("acct", MAX, [ACCT])] == ["run:7"]


def test_account_cap_spans_endpoints(redis_client: redis.Redis) -> None:
    g = make(redis_client)
    g.enqueue("acct", MAX, [f"m:{i}" for i in range(1, 7)])
    g.enqueue("acct", PRO, [f"p:{i}" for i in range(1, 31)])
    assert len(g.dispatch("acct", MAX, [ACCT])) == 6
    assert len(g.dispatch("acct", PRO, [ACCT_PRO])) == 18  # 24 in all for the account
    assert g.active("acct") == 24


def test_a_pool_spreads_rows_over_its_keys_each_within_its_own_cap(redis_client: redis.Redis) -> None:
    g = make(redis_client)
    pool = Pool.of(["a", "b", "c"])
    g.register_pool(pool)
    g.enqueue(pool.id, PRO, [f"run:{i}" for i in range(1, 101)])
    slots = [KeySlot("a", 4, 4), KeySlot("b", 4, 4), KeySlot("c", 2, 2)]
    grants = g.dispatch(pool.id, PRO, slots)
    assert len(grants) == 10
    assert [x.fp for x in grants][:3] == ["a", "b", "c"]  # in turn, one row each
    assert {fp: sum(x.fp == fp for x in grants) for fp in "abc"} == {"a": 4, "b": 4, "c": 2}
    assert (g.active("a"), g.active("b"), g.active("c")) == (4, 4, 2)
    assert g.pool(pool.id) == pool


def test_a_key_shared_by_two_pools_keeps_one_cap(redis_client: redis.Redis) -> None:
    g = make(redis_client)
    solo, both = Pool.of(["a"]), Pool.of(["a", "b"])
    g.enqueue(solo.id, PRO, [f"s:{i}" for i in range(10)])
    g.enqueue(both.id, PRO, [f"p:{i}" for i in range(10)])
    assert len(g.dispatch(solo.id, PRO, [KeySlot("a", 4, 4)])) == 4
    grants = g.dispatch(both.id, PRO, [KeySlot("a", 4, 4), KeySlot("b", 4, 4)])
    assert {x.fp for x in grants} == {"b"}  # a is full with the other pool's rows
    assert g.active("a") == 4


def test_concurrent_dispatchers_never_exceed_the_cap(redis_client: redis.Redis) -> None:
    g = make(redis_client)
    g.enqueue("acct", PRO, [f"run:{i}" for i in range(1, 201)])
    got: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(20):
            grants = g.dispatch("acct", PRO, [ACCT_PRO])
            with lock:
                got.extend(x.ref for x in grants)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 24
    assert len(set(got)) == 24


def test_fencing_token_admits_one_message_per_step_and_fences_its_writes(redis_client: redis.Redis) -> None:
    g = make(redis_client)
    g.enqueue("acct", MAX, ["run:1"])
    (grant,) = g.dispatch("acct", MAX, [ACCT])
    first = g.claim("run:1", grant.token, "proc-1")
    assert first is not None
    assert first["state"] == "granted"
    held = first["step"]
    assert g.claim("run:1", grant.token, "proc-1") is None  # the same message delivered twice
    assert g.update("run:1", held, state="submitting")
    assert g.claim("run:1", int(held), "proc-2") is not None  # the next step's message
    assert not g.update("run:1", held, state="stale write")  # the earlier step is fenced out
    assert g.fields("run:1", "state") == {"state": "submitting"}


def test_a_busy_job_of_a_live_holder_is_never_reclaimed_however_long_it_takes(redis_client: redis.Redis) -> None:
    g = make(redis_client, hold_s=0.2)
    holders = Holders(redis_client, KEYS)
    holders.beat("alive", {"acct": KeyCaps(24, {})})
    g.enqueue("acct", MAX, ["run:1"])
    (grant,) = g.dispatch("acct", MAX, [ACCT])
    assert g.claim("run:1", grant.token, "alive") is not None
    for _ in range(4):  # a slow API call: 4 x the hold, the holder still beating
        time.sleep(0.3)
        holders.beat("alive", {"acct": KeyCaps(24, {})})
        assert g.claim_expired() == []
    assert g.active("acct", MAX) == 1


def test_a_dead_holders_job_is_handed_out_once_with_a_new_token(redis_client: redis.Redis) -> None:
    g = make(redis_client, hold_s=0.2)
    g.enqueue("acct", MAX, ["run:1", "run:2"])
    grants = {x.ref: x.token for x in g.dispatch("acct", MAX, [ACCT])}
    job = g.claim("run:2", grants["run:2"], "never-beat")  # its holder has no heartbeat: dead
    assert job is not None
    g.update("run:2", job["step"], state="polling")
    time.sleep(0.3)
    stale = {s.ref: s for s in g.claim_expired()}
    assert set(stale) == {"run:2"}  # run:1 waits for its submit message: not due past the grace yet
    assert stale["run:2"].state == "polling"
    assert stale["run:2"].gate_id == gate_id("acct", MAX)
    assert stale["run:2"].pool_id == "acct"
    assert g.claim_expired() == []  # not handed out twice
    assert g.claim("run:2", int(job["step"]), "p") is None  # the old step's next message is stale now
    assert g.claim("run:2", stale["run:2"].token, "p") is not None


def test_a_message_overdue_past_its_grace_is_handed_out(redis_client: redis.Redis) -> None:
    g = make(redis_client, grace_s=0.2)
    g.enqueue("acct", MAX, ["run:1"])
    g.dispatch("acct", MAX, [ACCT])  # its submit message was lost with a killed worker
    time.sleep(0.3)
    (stale,) = g.claim_expired()
    assert (stale.ref, stale.state) == ("run:1", "granted")


def test_handoff_sets_the_deadline_from_when_the_next_step_is_due(redis_client: redis.Redis) -> None:
    g = make(redis_client, grace_s=0.2)
    g.enqueue("acct", MAX, ["run:1"])
    (grant,) = g.dispatch("acct", MAX, [ACCT])
    job = g.claim("run:1", grant.token, "p")
    assert job is not None
    assert g.handoff("run:1", job["step"], 1.0, state="polling")  # next poll due in 1 s
    time.sleep(0.3)
    assert g.claim_expired() == []  # due later: not overdue yet


def test_requeue_puts_the_job_first_in_line(redis_client: redis.Redis) -> None:
    g = make(redis_client)
    g.enqueue("acct", MAX, [f"run:{i}" for i in range(1, 9)])
    g.dispatch("acct", MAX, [ACCT])
    g.requeue("run:2", "acct", MAX, gate_id("acct", MAX), possible_duplicate=1)
    assert [x.ref for x in g.dispatch("acct", MAX, [ACCT])] == ["run:2"]
    assert g.fields("run:2", "possible_duplicate") == {"possible_duplicate": "1"}


def test_keys_out_are_remembered_until_cleared(redis_client: redis.Redis) -> None:
    g = make(redis_client)
    g.mark_key_out("a", "403")
    assert g.keys_out() == {"a": "403"}
    g.clear_keys_out(["a"])
    assert g.keys_out() == {}


def test_remove_run_from_wait_keeps_other_runs(redis_client: redis.Redis) -> None:
    g = make(redis_client)
    g.enqueue("acct", PRO, ["a:1", "b:1", "a:2", "b:2"])
    assert sorted(g.remove_run_from_wait("acct", PRO, "a")) == ["a:1", "a:2"]
    assert [x.ref for x in g.dispatch("acct", PRO, [ACCT_PRO])] == ["b:1", "b:2"]


def test_cancel_drops_a_large_run_from_the_wait_list_in_one_pass(redis_client: redis.Redis) -> None:
    g = make(redis_client)
    refs = [f"{'big' if i % 2 else 'other'}:{i}" for i in range(100_000)]
    g.enqueue("acct", PRO, refs)
    removed = g.remove_run_from_wait("acct", PRO, "big")
    assert len(removed) == 50_000
    assert g.waiting("acct", PRO) == 50_000
    assert [x.ref for x in g.dispatch("acct", PRO, [ACCT_PRO])] == [f"other:{i}" for i in range(0, 48, 2)]


def test_holders_report_only_live_keys_with_their_caps(redis_client: redis.Redis) -> None:
    holders = Holders(redis_client, KEYS, cache_s=0)
    holders.beat("w1", {"a": KeyCaps(12, {MAX: 3})})
    live = holders.live_keys(["a", "b"])
    assert set(live) == {"a"}
    assert live["a"].cap_for(MAX) == 3
    assert live["a"].cap_for(PRO) == 12
    holders.leave("w1", ["a"])
    assert holders.live_keys(["a"]) == {}
