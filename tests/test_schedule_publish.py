"""A step's publish: the task message goes out without Celery's result machinery (steps report
through Redis), so the CLI's first publish does not pay for loading a result backend."""

from __future__ import annotations

import pytest
from celery import Celery

from kontext_batch.coord.delays import DueMessage
from kontext_batch.workers.queues import SUBMIT_TASK, key_queues
from kontext_batch.workers.schedule import CelerySchedule


def test_a_publish_never_builds_the_result_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given an app on an in-memory broker whose result backend may not be built, when a submit and
    a delayed poll (no delay queue: Celery's countdown) are sent, then both messages are on their
    key's queues, without result headers asking for a result."""
    app = Celery("t", broker="memory://")

    def no_backend() -> None:
        raise AssertionError("a publish built the result backend")

    monkeypatch.setattr(app, "_get_backend", no_backend)
    sched = CelerySchedule(app)
    sched.send(DueMessage("submit", "run:1", 7, "fp1"))
    sched.poll("run:2", 8, "fp1", countdown_s=5.0)
    submit_q, poll_q = key_queues("fp1")
    with app.connection_for_write() as conn:
        msg = conn.SimpleQueue(submit_q).get(timeout=1)
        assert msg.headers["task"] == SUBMIT_TASK
        assert msg.headers["ignore_result"] is True
        assert msg.decode()[0] == ["run:1", 7]
        assert conn.SimpleQueue(poll_q).get(timeout=1).decode()[0] == ["run:2", 8]
