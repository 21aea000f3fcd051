"""A new run's first wave: sent by a listening worker the moment its rows wait, with nothing of
Celery loaded in the CLI; sent by the CLI itself when no worker listens (issue 22, "Start")."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis

from kontext_batch.coord import subscription
from kontext_batch.coord.keys import Keys
from kontext_batch.coord.nudges import NudgeWatch, nudge
from kontext_batch.run.enqueue import RunRequest, start_run
from kontext_batch.secret import Secret
from kontext_batch.settings import Settings
from kontext_batch.workers.process import dispatch_on_nudges
from kontext_batch.workers.sender import sender_runtime
from tests.e2e_support import write_csv
from tests.pipeline_support import InlineScheduler, inline_runtime
from tests.redis_servers import NoPubSub

KEYS = Keys()


def _settings(redis_url: str) -> Settings:
    return Settings(api_key=Secret("nudge-key"), api_base="http://127.0.0.1:9", redis_url=redis_url)


def _manifest(tmp_path: Path, n: int) -> str:
    rows = [{"id": f"r{i}", "prompt": f"a shoe on white, {i}"} for i in range(n)]
    return str(write_csv(tmp_path / "m.csv", ["id", "prompt"], rows))


@pytest.mark.integration
def test_a_nudge_is_heard_by_the_listeners_of_its_database_only(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    other_db = int(r.connection_pool.connection_kwargs["db"]) ^ 1
    other = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + f"/{other_db}")
    watch, elsewhere = NudgeWatch(r, KEYS), NudgeWatch(other, KEYS)
    try:
        _wait_for_listener(r)  # SUBSCRIBE is not confirmed before it returns: a sleep races a busy machine
        _wait_for_listener(other)  # so that the silence elsewhere below means something
        assert nudge(r, KEYS, "pool-a", "flux-kontext-pro") == 1
        r.publish(KEYS.rows_waiting(int(r.connection_pool.connection_kwargs["db"])), b"not json")
        assert watch.wait(5) == {("pool-a", "flux-kontext-pro")}
        assert watch.wait(0.2) == set()  # the garbage after it is ignored, never raised
        assert elsewhere.wait(0.2) == set()
    finally:
        watch.close()
        elsewhere.close()
        other.close()
        r.close()


@pytest.mark.integration
def test_with_a_worker_listening_the_cli_sends_no_step_and_the_worker_sends_the_first_wave(
    redis_url: str, tmp_path: Path
) -> None:
    """Given a worker's nudge listener (no sweeper) holding the key, when the CLI's own runtime
    queues 5 rows, then the CLI never loads its Celery schedule and the worker sends all 5 submits."""
    s = _settings(redis_url)
    worker_sched = InlineScheduler()
    worker = inline_runtime(s, worker_sched)  # a live holder of the key
    stop = threading.Event()
    listener = threading.Thread(target=dispatch_on_nudges, args=(worker, stop), daemon=True)
    listener.start()
    cli = sender_runtime(s)
    try:
        _wait_for_listener(worker.redis)
        start_run(cli, RunRequest(_manifest(tmp_path, 5), str(tmp_path / "out")))
        deadline = time.monotonic() + 10
        while len(worker_sched.sent) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [kind for kind, _, _ in worker_sched.sent] == ["submit"] * 5
        assert not cli.scheduler.loaded  # type: ignore[attr-defined]
    finally:
        stop.set()
        listener.join(5)
        cli.close()
        worker.close()


@pytest.mark.integration
def test_with_no_worker_listening_the_cli_dispatches_the_rows_itself(redis_url: str, tmp_path: Path) -> None:
    """Given a live holder of the key that does not listen (a worker of an older version, in a
    rolling update), when a run queues 3 rows, then the CLI's own dispatch sends their submits."""
    s = _settings(redis_url)
    sched = InlineScheduler()
    rt = inline_runtime(s, sched)
    try:
        start_run(rt, RunRequest(_manifest(tmp_path, 3), str(tmp_path / "out")))
        assert [kind for kind, _, _ in sched.sent] == ["submit"] * 3
    finally:
        rt.close()


def _wait_for_listener(r: redis.Redis) -> None:
    channel = KEYS.rows_waiting(int(r.connection_pool.connection_kwargs["db"]))
    deadline = time.monotonic() + 10
    while not r.pubsub_numsub(channel)[0][1]:
        assert time.monotonic() < deadline, "the listener never subscribed"
        time.sleep(0.01)


@pytest.mark.unit
def test_a_redis_refusing_pub_sub_leaves_the_rows_to_the_clis_own_dispatch_and_the_sweepers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Refused, a nudge counts as heard by nobody (the CLI then dispatches itself), and a listener
    sleeps out each wait (the sweeper dispatches) instead of failing or spinning."""
    slept: list[float] = []
    monkeypatch.setattr(subscription.time, "sleep", slept.append)
    assert nudge(NoPubSub(), KEYS, "pool-a", "flux-kontext-pro") == 0  # type: ignore[arg-type]
    watch = NudgeWatch(NoPubSub(), KEYS)  # type: ignore[arg-type]
    assert watch.wait(0.5) == set()
    assert len(slept) == 1
    assert 0 < slept[0] <= 0.5
