"""The Redis delay queue and the pump that sends its messages when due (real Redis, a recording sender)."""

from __future__ import annotations

import threading
import time

import redis

from kontext_batch.coord.delays import DelayQueue, DueMessage
from kontext_batch.coord.keys import Keys
from kontext_batch.workers.schedule import CelerySchedule


class _Recorder(CelerySchedule):
    """The real pump, with the Celery send replaced by a list of (message, when sent)."""

    def __init__(self, delays: DelayQueue) -> None:
        super().__init__(celery=None, delays=delays)  # type: ignore[arg-type]
        self.sent: list[tuple[DueMessage, float]] = []

    def send(self, msg: DueMessage) -> None:
        self.sent.append((msg, time.time()))


def test_due_messages_are_taken_once_in_due_order(redis_client: redis.Redis) -> None:
    q = DelayQueue(redis_client, Keys())
    q.push(DueMessage("poll", "r:2", 1, "fp"), 0.0)
    q.push(DueMessage("poll", "r:1", 1, "fp"), -1.0)
    q.push(DueMessage("submit", "r:3", 1, "fp"), 30.0)
    due, next_in = q.take_due()
    assert [m.ref for m in due] == ["r:1", "r:2"]
    assert next_in is not None
    assert 29 < next_in <= 30
    assert q.take_due()[0] == []
    assert len(q) == 1


def test_a_push_wakes_the_pump_only_when_due_before_its_next_look(redis_client: redis.Redis) -> None:
    q = DelayQueue(redis_client, Keys())
    q.wake_at = time.time() + 0.4  # the pump sleeps until then
    q.push(DueMessage("poll", "r:late", 1, "fp"), 1.0)
    assert not q.pushed.is_set()  # due after the pump's next look: no need to wake it
    q.push(DueMessage("poll", "r:soon", 1, "fp"), 0.05)
    assert q.pushed.is_set()
    q.pushed.clear()
    q.wake_at = 0.0  # the pump is looking: every push wakes it
    q.push(DueMessage("poll", "r:any", 1, "fp"), 5.0)
    assert q.pushed.is_set()


def test_the_pump_sends_each_message_once_in_due_order_never_early(redis_client: redis.Redis) -> None:
    q = DelayQueue(redis_client, Keys())
    pump = _Recorder(q)
    stop = threading.Event()
    thread = threading.Thread(target=pump.pump, args=(stop,), daemon=True)
    thread.start()
    try:
        time.sleep(0.1)  # the pump is asleep now, until at most 0.5 s from its last look
        pushed = {}
        for ref, delay in (("r:a", 0.3), ("r:b", 0.05), ("r:c", 0.15)):
            pushed[ref] = time.time() + delay
            q.push(DueMessage("poll", ref, 1, "fp"), delay)
        deadline = time.time() + 3
        while len(pump.sent) < 3 and time.time() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        q.pushed.set()
        thread.join(2)
    assert [m.ref for m, _ in pump.sent] == ["r:b", "r:c", "r:a"]
    for msg, at in pump.sent:
        assert at >= pushed[msg.ref] - 0.002, (msg.ref, at - pushed[msg.ref])  # due times are whole ms
