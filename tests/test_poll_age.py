"""A task's age, which its progress is read against, counts from the POST's answer: a POST that
waited long before the API took it does not make the next poll late."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kontext_batch.api.provider import KontextProvider
from kontext_batch.emulator import Emulator, EmulatorConfig, LatencySpec
from tests.pipeline_support import InlineScheduler, inline_runtime, start_specs, text_specs
from tests.settings_support import fast_settings

KEY = "poll-age-test-key"
POST_WAIT_S = 0.4  # before the API takes the POST
LATENCY_S = 1.0


@dataclass
class SlowPost:
    """The real client, whose submits wait before they reach the API (a cold connection, a busy API)."""

    inner: KontextProvider

    def submit(self, *a: Any, **kw: Any) -> Any:
        time.sleep(POST_WAIT_S)
        return self.inner.submit(*a, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class PlannedPolls(InlineScheduler):
    countdowns: list[float] = field(default_factory=list)

    def poll(self, ref: str, token: int, fp: str, *, countdown_s: float = 0.0) -> None:
        self.countdowns.append(countdown_s)
        super().poll(ref, token, fp, countdown_s=countdown_s)


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(latency={"*": LatencySpec.fixed(LATENCY_S)}, time_scale=1.0, seed=3)) as e:
        yield e


def test_a_slow_post_does_not_stretch_the_predicted_rest_of_the_task(
    redis_url: str, emu: Emulator, tmp_path: Path
) -> None:
    # Given a cold planner (first poll 0.5 s after the submit) and POSTs that reach the API 0.4 s late
    sched = PlannedPolls()
    rt = inline_runtime(fast_settings(emu.base_url, redis_url, api_key=KEY, poll_first_s=0.5), sched)
    rt.provider = SlowPost(rt.provider_for(rt.settings.api_key.fingerprint))  # type: ignore[assignment]
    try:
        start_specs(rt, "r1", str(tmp_path), text_specs(1))
        # When the row runs: its first poll finds the task under way, a fraction of the way through
        sched.run(rt)
        assert rt.runs.results_of("r1", [1])[1]["status"] == "succeeded"
    finally:
        rt.close()
    assert sched.countdowns[1:], sched.countdowns
    # Then the next poll is planned for the rest of the task's 1 s (counted from the API's start),
    # not stretched by the 0.4 s the POST waited: read from the POST's start, 10 % done at 0.5 s
    # would mean 4.5 s to go.
    assert sched.countdowns[1] <= LATENCY_S + 0.1
