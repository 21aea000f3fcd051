"""The broker keeps no ack bookkeeping in Redis (workers/config.py), and a channel that closes hands
back what it took and did not finish: a warm shutdown loses no step."""

from __future__ import annotations

import pytest
import redis
from celery import Celery
from kombu import Consumer, Message, Producer, Queue

from kontext_batch.secret import Secret
from kontext_batch.settings import Settings
from kontext_batch.workers.config import configure

pytestmark = pytest.mark.integration


def test_a_delivered_message_has_no_unacked_entry_and_comes_back_when_its_channel_closes(
    redis_url: str, redis_client: redis.Redis
) -> None:
    settings = Settings(api_key=Secret("acks-key"), api_base="http://127.0.0.1:9", redis_url=redis_url)
    app = configure(Celery("acks-test"), settings)
    queue = Queue("kb-test-acks")
    got: list[Message] = []
    with app.connection_for_write() as conn:
        channel = conn.channel()
        Producer(channel).publish({"n": 1}, routing_key=queue.name, declare=[queue], serializer="json")
        consumer = Consumer(channel, queues=[queue], callbacks=[lambda _body, msg: got.append(msg)], accept=["json"])
        consumer.consume()
        conn.drain_events(timeout=5)
        assert [m.payload for m in got] == [{"n": 1}]
        assert redis_client.llen(queue.name) == 0
        # kombu's ack emulation would have written it here, and deleted it again on ack.
        assert not redis_client.exists("unacked", "unacked_index")
        channel.close()  # what a worker's warm shutdown does with a message it took and did not start
    assert redis_client.llen(queue.name) == 1
