"""The slot leases and wait lists against real Redis: caps per key, pools of keys, FIFO, live keys."""

from __future__ import annotations

import threading

import redis

from kontext_batch.coord.holders import Holders, KeyCaps
from kontext_batch.coord.keys import Keys, slot_id
from kontext_batch.coord.pools import Pool
from kontext_batch.coord.slots import KeySlot, Slots

MAX = "flux-kontext-max"
PRO = "flux-kontext-pro"
ACCT = KeySlot("acct", 6, 24)  # on MAX
ACCT_PRO = KeySlot("acct", 24, 24)
KEYS = Keys("kbtest")


def make(r: redis.Redis) -> Slots:
    return Slots(r, KEYS, lease_s=30, grace_s=30)


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
    g.release(slot_id("acct", MAX), "run:3")
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
    g.enqueue(pool.id, PRO, [f"run:{i}" for i in range(1, 101)])
    slots = [KeySlot("a", 4, 4), KeySlot("b", 4, 4), KeySlot("c", 2, 2)]
    grants = g.dispatch(pool.id, PRO, slots)
    assert len(grants) == 10
    assert [x.fp for x in grants][:3] == ["a", "b", "c"]  # in turn, one row each
    assert {fp: sum(x.fp == fp for x in grants) for fp in "abc"} == {"a": 4, "b": 4, "c": 2}
    assert (g.active("a"), g.active("b"), g.active("c")) == (4, 4, 2)


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


def test_known_waits_name_each_pool_and_endpoint_once(redis_client: redis.Redis) -> None:
    g = make(redis_client)
    pool = Pool.of(["a", "b"])
    g.enqueue(pool.id, PRO, ["run:1"])
    g.enqueue(pool.id, PRO, ["run:2"])
    g.enqueue("acct", MAX, ["other:1"])
    assert sorted(g.known_waits()) == sorted([(pool.id, PRO), ("acct", MAX)])


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
