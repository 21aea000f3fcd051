"""The end of a followed run: the follower learns of it when it is announced, not at its next look,
and the command's exit then waits for nothing but its own output (issue 22, "End")."""

from __future__ import annotations

import gc
import sys
import threading
from pathlib import Path

import pytest

from kontext_batch.cli import main
from kontext_batch.coord import subscription
from kontext_batch.coord.ends import EndWatch, announce_end
from kontext_batch.coord.keys import Keys
from kontext_batch.emulator import Emulator, EmulatorConfig, LatencySpec
from kontext_batch.run.enqueue import RunRequest, start_run
from kontext_batch.run.view import RunOutcome, follow
from kontext_batch.secret import Secret
from kontext_batch.settings import Settings
from tests.e2e_support import write_csv
from tests.pipeline_support import InlineScheduler, inline_runtime
from tests.redis_servers import NoPubSub


@pytest.mark.integration
def test_a_follower_wakes_when_the_run_ends_not_at_its_next_look(redis_url: str, tmp_path: Path) -> None:
    with Emulator(EmulatorConfig(latency={"*": LatencySpec.fixed(0.05)}, seed=5)) as emu:
        s = Settings(api_key=Secret("end-key"), api_base=emu.base_url, redis_url=redis_url, poll_first_s=0.05)
        sched = InlineScheduler()
        rt = inline_runtime(s, sched)
        try:
            manifest = write_csv(
                tmp_path / "m.csv", ["id", "prompt"], [{"id": f"r{i}", "prompt": "p"} for i in range(3)]
            )
            run_id = start_run(rt, RunRequest(str(manifest), str(tmp_path / "out"))).run_id
            looked = threading.Event()
            outcomes: list[RunOutcome] = []

            def following() -> None:
                # An hour between looks: only the announced end can return this.
                outcomes.append(follow(rt, run_id, on_progress=lambda _: looked.set(), interval_s=3600))

            follower = threading.Thread(target=following, daemon=True)
            follower.start()
            assert looked.wait(30), "the follower never took its first look"
            sched.run(rt)  # the rows, their stores and the run's finalize, in this thread
            follower.join(60)
            assert not follower.is_alive(), "the follower slept through the run's end"
        finally:
            rt.close()
    assert [o.kind for o in outcomes] == ["succeeded"]
    assert outcomes[0].info.finished
    assert (tmp_path / "out" / "results.csv").is_file()


@pytest.mark.unit
def test_the_console_script_leaves_its_heap_frozen_for_the_interpreters_exit(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The exit's collection of the whole heap is what a user waited for after the summary; frozen,
    # it is skipped. Output and exit code are the command's own.
    monkeypatch.setattr(sys, "argv", ["kontext-batch", "--help"])
    gc.unfreeze()
    try:
        with pytest.raises(SystemExit) as ended:
            main()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
    assert ended.value.code == 0
    assert "Usage:" in capsys.readouterr().out


@pytest.mark.unit
def test_a_redis_refusing_pub_sub_leaves_the_periodic_look_and_ends_the_run_all_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept: list[float] = []
    monkeypatch.setattr(subscription.time, "sleep", slept.append)
    announce_end(NoPubSub(), Keys(), "RUN-1")  # type: ignore[arg-type]  # never raises: the run has ended
    with EndWatch(NoPubSub(), Keys(), "RUN-1") as watch:  # type: ignore[arg-type]
        assert watch.wait(0.5) is False
    assert len(slept) == 1  # the whole interval, slept as before
    assert 0 < slept[0] <= 0.5
