"""The fenced job hash against real Redis: fencing tokens, liveness, hand-offs, re-drives, requeues."""

from __future__ import annotations

import time

import redis

from kontext_batch.coord.budget import Budget
from kontext_batch.coord.holders import Holders, KeyCaps
from kontext_batch.coord.jobs import Jobs
from kontext_batch.coord.keys import Keys, slot_id
from kontext_batch.coord.slots import KeySlot, Slots
from kontext_batch.runtime import connect_redis
from tests.tcp_proxy import TcpProxy

MAX = "flux-kontext-max"
ACCT = KeySlot("acct", 6, 24)  # on MAX
KEYS = Keys("kbtest")


def make(r: redis.Redis, *, grace_s: float = 30, hold_s: float = 2.0) -> tuple[Slots, Jobs]:
    return Slots(r, KEYS, lease_s=30, grace_s=grace_s), Jobs(r, KEYS, lease_s=30, grace_s=grace_s, hold_s=hold_s)


def test_fencing_token_admits_one_message_per_step_and_fences_its_writes(redis_client: redis.Redis) -> None:
    s, j = make(redis_client)
    s.enqueue("acct", MAX, ["run:1"])
    (grant,) = s.dispatch("acct", MAX, [ACCT])
    first = j.claim("run:1", grant.token, "proc-1")
    assert first is not None
    assert first["state"] == "granted"
    held = first["step"]
    assert j.claim("run:1", grant.token, "proc-1") is None  # the same message delivered twice
    assert j.update("run:1", held, state="submitting")
    assert j.claim("run:1", int(held), "proc-2") is not None  # the next step's message
    assert not j.update("run:1", held, state="stale write")  # the earlier step is fenced out
    assert j.fields("run:1", "state") == {"state": "submitting"}


def test_a_busy_job_of_a_live_holder_is_never_reclaimed_however_long_it_takes(redis_client: redis.Redis) -> None:
    s, j = make(redis_client, hold_s=0.2)
    holders = Holders(redis_client, KEYS)
    holders.beat("alive", {"acct": KeyCaps(24, {})})
    s.enqueue("acct", MAX, ["run:1"])
    (grant,) = s.dispatch("acct", MAX, [ACCT])
    assert j.claim("run:1", grant.token, "alive") is not None
    for _ in range(4):  # a slow API call: 4 x the hold, the holder still beating
        time.sleep(0.3)
        holders.beat("alive", {"acct": KeyCaps(24, {})})
        assert j.claim_expired() == []
    assert s.active("acct", MAX) == 1


def test_a_dead_holders_job_is_handed_out_once_with_a_new_token(redis_client: redis.Redis) -> None:
    s, j = make(redis_client, hold_s=0.2)
    s.enqueue("acct", MAX, ["run:1", "run:2"])
    grants = {x.ref: x.token for x in s.dispatch("acct", MAX, [ACCT])}
    job = j.claim("run:2", grants["run:2"], "never-beat")  # its holder has no heartbeat: dead
    assert job is not None
    j.update("run:2", job["step"], state="polling")
    time.sleep(0.3)
    stale = {x.ref: x for x in j.claim_expired()}
    assert set(stale) == {"run:2"}  # run:1 waits for its submit message: not due past the grace yet
    assert stale["run:2"].state == "polling"
    assert stale["run:2"].slot_id == slot_id("acct", MAX)
    assert stale["run:2"].pool_id == "acct"
    assert j.claim_expired() == []  # not handed out twice
    assert j.claim("run:2", int(job["step"]), "p") is None  # the old step's next message is stale now
    assert j.claim("run:2", stale["run:2"].token, "p") is not None


def test_a_message_overdue_past_its_grace_is_handed_out(redis_client: redis.Redis) -> None:
    s, j = make(redis_client, grace_s=0.2)
    s.enqueue("acct", MAX, ["run:1"])
    s.dispatch("acct", MAX, [ACCT])  # its submit message was lost with a killed worker
    time.sleep(0.3)
    (stale,) = j.claim_expired()
    assert (stale.ref, stale.state) == ("run:1", "granted")


def test_handoff_sets_the_deadline_from_when_the_next_step_is_due(redis_client: redis.Redis) -> None:
    s, j = make(redis_client, grace_s=0.2)
    s.enqueue("acct", MAX, ["run:1"])
    (grant,) = s.dispatch("acct", MAX, [ACCT])
    job = j.claim("run:1", grant.token, "p")
    assert job is not None
    assert j.handoff("run:1", job["step"], 1.0, state="polling")  # next poll due in 1 s
    time.sleep(0.3)
    assert j.claim_expired() == []  # due later: not overdue yet


def test_requeue_puts_the_job_first_in_line(redis_client: redis.Redis) -> None:
    s, j = make(redis_client)
    s.enqueue("acct", MAX, [f"run:{i}" for i in range(1, 9)])
    s.dispatch("acct", MAX, [ACCT])
    j.requeue("run:2", "acct", MAX, slot_id("acct", MAX), possible_duplicate=1)
    assert [x.ref for x in s.dispatch("acct", MAX, [ACCT])] == ["run:2"]
    assert j.fields("run:2", "possible_duplicate") == {"possible_duplicate": "1"}


def test_a_claim_whose_reply_was_lost_gets_the_job_when_redis_py_sends_it_again(redis_client: redis.Redis) -> None:
    # Redis ran the claim and went away before answering (a restart, as in the fault suite): the
    # client reconnects and sends the same call again. Refused as stale, the job would stay busy
    # for a live holder with no step at work on it, and its run would never end.
    s, j = make(redis_client)
    s.enqueue("acct", MAX, ["run:1"])
    (grant,) = s.dispatch("acct", MAX, [ACCT])
    kw = redis_client.connection_pool.connection_kwargs
    with TcpProxy(kw.get("host", "127.0.0.1"), kw.get("port", 6379)) as proxy:
        through = connect_redis(proxy.url(db=kw.get("db", 0)))
        jobs = Jobs(through, KEYS, lease_s=30)
        assert through.ping()
        proxy.lose_next_reply()
        job = jobs.claim("run:1", grant.token, "proc-1")
        through.close()
    assert proxy.replies_lost == 1
    assert job is not None
    assert int(job["step"]) == grant.token + 1  # taken once, not bumped by the second sending
    assert j.claim("run:1", grant.token, "proc-2") is None  # another delivery of the message is still stale


def test_a_busy_job_of_a_live_holder_is_re_driven_once_its_step_passes_its_deadline(
    redis_client: redis.Redis,
) -> None:
    # The step's message was lost (or the step died in an exception) after it claimed the job, and
    # its process beats on: its heartbeat must not keep the job for ever.
    s = Slots(redis_client, KEYS, lease_s=30, grace_s=30)
    j = Jobs(redis_client, KEYS, lease_s=30, grace_s=30, hold_s=0.1, step_deadline_s=0.6)
    holders = Holders(redis_client, KEYS)
    holders.beat("alive", {"acct": KeyCaps(24, {})})
    s.enqueue("acct", MAX, ["run:1"])
    (grant,) = s.dispatch("acct", MAX, [ACCT])
    job = j.claim("run:1", grant.token, "alive")
    assert job is not None
    assert int(job["busy_until"]) - int(time.time() * 1000) <= 600
    stale = []
    while not stale:  # within its deadline, the live holder keeps it; then it is handed out
        before = time.time()
        holders.beat("alive", {"acct": KeyCaps(24, {})})
        stale = j.claim_expired()
        if not stale:
            assert before * 1000 < int(job["busy_until"]), "past its deadline and still kept"
            time.sleep(0.05)
    (late,) = stale
    assert (late.ref, late.late, late.state) == ("run:1", True, "granted")
    assert time.time() * 1000 >= int(job["busy_until"])
    assert not j.update("run:1", job["step"], state="submitting")  # the late step is fenced out
    assert j.claim_expired() == []  # handed out once


def test_the_write_before_a_post_reserves_its_price_with_it_or_does_neither(redis_client: redis.Redis) -> None:
    s, j = make(redis_client)
    budget = Budget(redis_client, KEYS)
    budget.set("run", 10.0)
    s.enqueue("acct", MAX, ["run:1", "run:2"])
    g1, g2 = s.dispatch("acct", MAX, [ACCT])
    held1 = j.claim(g1.ref, g1.token, "proc-1")["step"]  # type: ignore[index]
    held2 = j.claim(g2.ref, g2.token, "proc-1")["step"]  # type: ignore[index]
    wrote, node = j.submitting(g1.ref, held1, "run", 8.0, state="submitting", reserved=8.0)
    assert wrote == "written"
    assert node is not None
    assert node.role == "master"
    assert j.fields(g1.ref, "state", "reserved") == {"state": "submitting", "reserved": "8.0"}
    assert budget.spend("run").reserved == 8.0
    # Past the budget: the job is not written, nothing more is held.
    assert j.submitting(g2.ref, held2, "run", 8.0, state="submitting", reserved=8.0) == ("over budget", None)
    assert j.fields(g2.ref, "state") == {"state": "granted"}
    # Another step's job now (re-driven): no write and no reservation left behind for it.
    budget.settle("run", 8.0, 0)
    assert j.claim(g2.ref, int(held2), "proc-2") is not None
    assert j.submitting(g2.ref, held2, "run", 8.0, state="stale write") == ("fenced", None)
    assert budget.spend("run").reserved == 0.0
    assert j.fields(g2.ref, "state") == {"state": "granted"}
