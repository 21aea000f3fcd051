"""The rendering of a followed run: the live frame, the off-terminal cadence, JSON events, the summary.

Looks are built from plain values (no service needed); failures by reason read a real Redis.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from kontext_batch.cli.progress import (
    JsonReporter,
    KeyLoad,
    LineReporter,
    Look,
    Summary,
    failure_reasons,
    gallery_of,
    hms,
    live_frame,
    reporter_for,
)
from kontext_batch.cli.render import took
from kontext_batch.coord.budget import Spend
from kontext_batch.coord.runs import RunInfo
from kontext_batch.run.view import KeyState, Progress, RunView, passes
from kontext_batch.settings import Settings
from tests.pipeline_support import InlineScheduler, inline_runtime


def _look(
    *,
    done: int = 42,
    total: int = 100,
    status: str = "running",
    stopped: str = "",
    elapsed_s: float = 60.0,
    rate: float = 1.0,
) -> Look:
    meta = {"status": status, "total": str(total)}
    if stopped:
        meta["stopped"] = stopped
    counts = {"succeeded": done - 2, "failed": 2} if done else {}
    info = RunInfo("20261130T010203-abcdef", meta, counts, done)
    view = RunView(
        info,
        Spend(budget=None, spent=4.0 * (done - 2), reserved=20.0),
        (KeyState("fp1", True, 3, None), KeyState("fp2", True, 2, None)),
        waiting=total - done - 5,
    )
    keys = (KeyLoad("fp1", 3, 24, None), KeyLoad("fp2", 2, 12, None))
    return Look(Progress(info, elapsed_s, rate), view, keys)


def _screen(look: Look) -> str:
    console = Console(record=True, width=100, force_terminal=True, file=io.StringIO())
    console.print(live_frame(look, width=100))
    return console.export_text()


def test_hms_is_hours_minutes_seconds() -> None:
    assert hms(8) == "0:00:08"
    assert hms(3725) == "1:02:05"
    assert hms(-3) == "0:00:00"


def test_the_live_frame_has_a_bar_counts_in_flight_per_key_rate_eta_and_credits() -> None:
    text = _screen(_look())
    assert "━" in text  # the bar
    assert "42/100" in text
    assert "succeeded 40" in text
    assert "failed 2" in text
    assert "waiting 53" in text
    assert "in flight 5/36" in text
    assert "key fp1: 3/24" in text
    assert "key fp2: 2/12" in text
    assert "1.0 rows/s" in text
    assert "elapsed 0:01:00" in text
    assert "ETA 0:00:58" in text
    assert "160 spent, 20 in flight" in text


def test_a_key_without_a_live_worker_and_a_stopped_run_are_said_so() -> None:
    look = _look(stopped="out_of_credits")
    look = Look(look.progress, look.view, (KeyLoad("fp1", 0, None, None),))
    text = _screen(look)
    assert "stopped: out_of_credits" in text
    assert "key fp1: 0 (no live worker)" in text


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_off_a_terminal_one_line_per_period_not_one_per_look() -> None:
    lines: list[str] = []
    clock = _Clock()
    rep = LineReporter(lines.append, 30.0, clock=clock)
    for i in range(200):  # 100 s of looks twice a second
        clock.t = i * 0.5
        rep.update(_look(done=min(99, i // 2), elapsed_s=clock.t))
    assert len(lines) == 4  # at 0, 30, 60 and 90 s
    assert all("run 20261130T010203-abcdef running" in line for line in lines)
    assert "ETA " in lines[-1]
    assert "credits " in lines[-1]


def test_off_a_terminal_every_change_of_state_prints_at_once() -> None:
    lines: list[str] = []
    clock = _Clock()
    rep = LineReporter(lines.append, 30.0, clock=clock)
    rep.update(_look())
    clock.t = 1.0
    rep.update(_look(stopped="out_of_credits"))
    clock.t = 2.0
    rep.update(_look(stopped="out_of_credits"))
    clock.t = 3.0
    rep.update(_look(done=100, status="finished", stopped="out_of_credits"))
    assert len(lines) == 3
    assert "stopped=out_of_credits" in lines[1]
    assert " finished stopped=out_of_credits: 100/100" in lines[2]


def test_json_events_are_one_object_a_line() -> None:
    lines: list[str] = []
    rep = JsonReporter(lines.append, 30.0)
    rep.update(_look())
    doc = json.loads(lines[0])
    assert doc["event"] == "progress"
    assert doc["done"] == 42
    assert doc["in_flight"] == 5
    assert doc["cap"] == 36
    assert doc["credits_spent"] == 160.0
    assert doc["eta_s"] == 58.0


def test_a_stream_that_is_not_a_terminal_gets_plain_lines() -> None:
    rep = reporter_for(as_json=False, every_s=30.0, stream=io.StringIO(), out=io.StringIO())
    assert type(rep) is LineReporter


def test_the_summary_names_counts_reasons_credits_duration_and_files() -> None:
    results = "file:///data/out/night%201/results.csv"
    s = Summary(
        run_id="r1",
        status="finished",
        kind="rows_failed",
        total=10,
        done=10,
        counts={"succeeded": 6, "failed": 3, "moderated": 1},
        failed=4,
        reasons=[("failed: Error: internal error", 3)],
        credits_spent=36.0,
        duration_s=3725.0,
        results_uri=results,
        gallery_uri=gallery_of(results),
        run_results_uri="file:///data/out/night%201/runs/r1/results.csv",
        output="file:///data/out/night%201",
    )
    text = s.render()
    assert "run r1 finished in 1:02:05: 10/10 rows" in text
    assert "succeeded 6   failed 3   moderated 1" in text
    assert "failures by reason (4 row(s)):" in text
    assert "       3  failed: Error: internal error" in text
    assert "       1  (other reasons)" in text
    assert "credits: 36 spent" in text
    assert f"results: {Path('/data/out/night 1/results.csv')}" in text
    assert f"gallery: {Path('/data/out/night 1/gallery.html')}" in text
    assert f"this run's own: {Path('/data/out/night 1/runs/r1/results.csv')} (and gallery.html beside it)" in text
    assert s.doc()["run_results"] == "file:///data/out/night%201/runs/r1/results.csv"
    assert json.loads(json.dumps(s.doc()))["failures"] == [{"reason": "failed: Error: internal error", "rows": 3}]


def test_the_gallery_sits_beside_results_csv_on_s3_too() -> None:
    uri = "s3://bucket/night/results.csv?endpoint=http://127.0.0.1:9000"
    assert gallery_of(uri) == "s3://bucket/night/gallery.html?endpoint=http://127.0.0.1:9000"


def test_failures_are_grouped_by_reason_most_rows_first_top_five(redis_url: str) -> None:
    rt = inline_runtime(Settings(redis_url=redis_url), InlineScheduler())
    run_id = "20261130T000000-000001"
    rt.runs.register(run_id, {"id": run_id, "total": 30, "status": "running"})
    reasons = [f"reason {i}" for i in range(7)]
    row = 0
    for i, reason in enumerate(reasons):
        for _ in range(i + 1):  # reason i fails i+1 rows
            row += 1
            rt.runs.record(run_id, row, {"status": "failed", "error": reason})
    rt.runs.record(run_id, row + 1, {"status": "moderated", "error": ""})
    rt.runs.record(run_id, row + 2, {"status": "succeeded"})
    got = failure_reasons(rt, run_id, 30)
    assert got == [
        ("failed: reason 6", 7),
        ("failed: reason 5", 6),
        ("failed: reason 4", 5),
        ("failed: reason 3", 4),
        ("failed: reason 2", 3),
    ]


def test_each_pass_is_timed_on_its_own_and_the_idle_hours_between_are_in_none() -> None:
    night = {"created_at": "1000", "last_final_at": "1013", "finished_at": "1014"}
    assert took(night) == "took 0:00:13"  # to its last final row, not to the results write
    # Retried at 9:00 next morning (two of them, the second under way at 9:00:04).
    retried = {**night, "passes": json.dumps([[1000, 1013], [33400, 33402]]), "pass_started_at": "33500"}
    del retried["finished_at"]
    spans = passes(retried)
    assert [p.duration_s(now=33504) for p in spans] == [13, 2, 4]
    assert spans[-1].ended_at is None
    assert (
        took({**retried, "last_final_at": "33507", "finished_at": "33508"}) == "took 0:00:13; retries 0:00:02, 0:00:07"
    )
    one = {**night, "passes": json.dumps([[1000, 1013]]), "pass_started_at": "33400"}
    assert took({**one, "last_final_at": "33402", "finished_at": "33403"}) == "took 0:00:13; retry took 0:00:02"
