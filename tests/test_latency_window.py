"""The poll planner's learnt latencies, shared through Redis: a new process starts warm."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import redis

from kontext_batch.coord.keys import Keys
from kontext_batch.coord.latencies import LATENCY_TTL_S, LatencyLog
from kontext_batch.steps.timing import PollPlanner

EP = "flux-kontext-pro"


def _share(planner: PollPlanner, log: LatencyLog, r: redis.Redis) -> None:
    """What a terminal poll's pipeline does: the step's own command first, the planner's last."""
    pipe = r.pipeline(transaction=False)
    pipe.ping()
    take = planner.share_in(pipe, log, EP)
    take(pipe.execute())


def test_a_new_process_plans_its_first_poll_from_what_another_process_learnt(
    redis_url: str, redis_client: redis.Redis
) -> None:
    # Given another process that saw 40 tasks of about 3 s end and shared them on its polls' pipelines
    learner = textwrap.dedent(f"""
        import redis
        from kontext_batch.coord.keys import Keys
        from kontext_batch.coord.latencies import LatencyLog
        from kontext_batch.steps.timing import PollPlanner
        r = redis.Redis.from_url({redis_url!r})
        planner, log = PollPlanner(), LatencyLog(r, Keys("t"))
        for i in range(40):
            planner.observe({EP!r}, 2.8 + i * 0.01)
            pipe = r.pipeline(transaction=False)
            planner.share_in(pipe, log, {EP!r})(pipe.execute())
    """)
    subprocess.run([sys.executable, "-c", learner], check=True, timeout=60)
    # When a fresh process's planner loads the shared windows, as a worker does at its start
    fresh = PollPlanner(first_s=0.5)
    assert fresh.first_delay(EP) == 0.5  # cold, it would guess
    fresh.warm(LatencyLog(redis_client, Keys("t")).load([EP, "flux-kontext-max"]))
    # Then its first poll is planned at the learnt quantile, not at the guess
    assert abs(fresh.first_delay(EP) - (2.8 + 22 * 0.01)) < 1e-6
    assert fresh.first_delay("flux-kontext-max") == 0.5  # nothing learnt there: still the guess


def test_the_shared_window_is_bounded_and_expires(redis_client: redis.Redis) -> None:
    log = LatencyLog(redis_client, Keys("t"), window=16)
    planner = PollPlanner(window=16)
    for i in range(50):
        planner.observe(EP, 1.0 + i / 100)
    _share(planner, log, redis_client)
    key = Keys("t").latency(EP)
    assert redis_client.llen(key) == 16
    assert 0 < int(redis_client.ttl(key)) <= LATENCY_TTL_S
    # The newest are kept, oldest first as the planner holds them.
    assert log.load([EP])[EP] == [round(1.0 + i / 100, 4) for i in range(34, 50)]


def test_each_latency_is_written_once_and_the_window_read_back_every_refresh(redis_client: redis.Redis) -> None:
    log = LatencyLog(redis_client, Keys("t"))
    mine, other = PollPlanner(refresh_s=3600), PollPlanner()
    other.observe(EP, 5.0)
    _share(other, log, redis_client)
    mine.observe(EP, 1.0)
    _share(mine, log, redis_client)  # the first share reads the window: another process's 5 s arrives
    assert sorted(mine._sorted(EP)) == [1.0, 5.0]
    _share(mine, log, redis_client)  # nothing new to write, and not due to read again
    assert redis_client.llen(Keys("t").latency(EP)) == 2
    other.observe(EP, 6.0)
    _share(other, log, redis_client)
    mine.observe(EP, 2.0)
    _share(mine, log, redis_client)
    assert mine._sorted(EP) == [1.0, 2.0, 5.0]  # 6 s waits for the next refresh
    assert sorted(log.load([EP])[EP]) == [1.0, 2.0, 5.0, 6.0]


def test_entries_that_are_not_latencies_are_skipped() -> None:
    assert LatencyLog.parse([b"2.5", b"x", b"-1", b"1.5"]) == [1.5, 2.5]
    assert LatencyLog.parse(None) == []
