"""The pipeline's steps against real Redis and a real emulator, run inline (no Celery)."""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from kontext_batch.api.prices import cost_credits_for
from kontext_batch.emulator import Emulator, EmulatorConfig, LatencySpec
from kontext_batch.run.control import cancel_run, retry_run
from kontext_batch.runtime import Runtime
from kontext_batch.steps.sweep import sweep
from tests.pipeline_support import InlineScheduler, inline_runtime, start_specs, text_specs
from tests.settings_support import fast_settings

KEY = "pipeline-test-key"


def fast(**kw: object) -> EmulatorConfig:
    base: dict[str, object] = {"latency": {"*": LatencySpec.fixed(0.2)}, "time_scale": 1.0, "seed": 7}
    base.update(kw)
    return EmulatorConfig(**base)  # type: ignore[arg-type]


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(fast()) as e:
        yield e


@pytest.fixture(autouse=True)
def _close_runtimes(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    made: list[Runtime] = []
    real = inline_runtime

    def tracking(*a: object, **kw: object) -> Runtime:
        rt = real(*a, **kw)  # type: ignore[arg-type]
        made.append(rt)
        return rt

    monkeypatch.setitem(globals(), "inline_runtime", tracking)
    yield
    for rt in made:
        rt.close()


def results_csv(rt: Runtime, run_id: str, out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))


def test_every_row_is_stored_with_a_sidecar_and_one_result(redis_url: str, emu: Emulator, tmp_path: Path) -> None:
    sched = InlineScheduler()
    rt = inline_runtime(fast_settings(emu.base_url, redis_url, api_key=KEY), sched)
    start_specs(rt, "r1", str(tmp_path), text_specs(30))
    sched.run(rt)
    rows = results_csv(rt, "r1", tmp_path)
    assert [r["row"] for r in rows] == [str(i) for i in range(1, 31)]
    assert {r["status"] for r in rows} == {"succeeded"}
    for r in rows:
        with Image.open(tmp_path / "out" / f"{r['row']}.png") as im:
            assert im.size == (1024, 1024)
        assert (tmp_path / "out" / f"{r['row']}.png.json").exists()
        assert r["seed"] == r["row"]
        assert r["bfl_task_id"]
    assert rt.slots.active(rt.settings.api_key.fingerprint) == 0
    assert emu.stats()["peak_active"][rt.settings.api_key.fingerprint]["total"] <= 24
    # 24 rows got a slot at enqueue and went out as submit messages; the other 6 were submitted by
    # the poll that freed a slot, without a trip through the broker.
    assert sum(1 for kind, _, _ in sched.sent if kind == "submit") == 24


def test_a_message_delivered_twice_submits_downloads_and_records_once(
    redis_url: str, emu: Emulator, tmp_path: Path
) -> None:
    sched = InlineScheduler(duplicate=True)
    rt = inline_runtime(fast_settings(emu.base_url, redis_url, api_key=KEY), sched)
    start_specs(rt, "dup", str(tmp_path), text_specs(5))
    sched.run(rt)
    stats = emu.stats()
    assert stats["submits"] == 5
    assert stats["downloads"] == 5
    info = rt.runs.info("dup")
    # Every message ran twice; half of the runs were no-ops.
    assert int(info.meta["task_executions"]) == 2 * (5 + stats["polls"])
    assert info.counts == {"succeeded": 5}
    assert info.ndone == 5


def test_cancel_ends_a_run_with_nothing_submitted_at_once(redis_url: str, emu: Emulator, tmp_path: Path) -> None:
    sched = InlineScheduler()
    rt = inline_runtime(fast_settings(emu.base_url, redis_url, api_key=KEY), sched)
    start_specs(rt, "c", str(tmp_path), text_specs(20, endpoint="flux-kontext-max"))  # 6 granted, 14 waiting
    assert cancel_run(rt, "c") == 20
    info = rt.runs.info("c")
    assert info.finished  # ended now, not when the in-flight rows end
    assert info.counts == {"cancelled": 20}
    assert info.status == "cancelled"
    sched.run(rt)  # the granted rows' submit messages arrive late: stale, nothing is sent
    assert rt.runs.info("c").counts == {"cancelled": 20}
    assert rt.slots.active(rt.settings.api_key.fingerprint) == 0
    assert emu.stats()["submits"] == 0


def test_out_of_credits_stops_the_run_and_retry_completes_it(redis_url: str, tmp_path: Path) -> None:
    with Emulator(fast(credits=4 * 10)) as emu:
        sched = InlineScheduler()
        rt = inline_runtime(fast_settings(emu.base_url, redis_url, api_key=KEY), sched)
        start_specs(rt, "402", str(tmp_path), text_specs(30))
        sched.run(rt)
        info = rt.runs.info("402")
        assert info.counts == {"succeeded": 10, "failed": 20}
        assert info.meta["stopped"] == "out_of_credits"
        assert emu.stats()["rejected_402"] >= 1
        emu.set_credits(KEY, 1000)
        assert retry_run(rt, "402", ["failed"]) == 20
        sched.run(rt)
        info = rt.runs.info("402")
        assert info.counts == {"succeeded": 30}
        assert "stopped" not in info.meta
        rows = results_csv(rt, "402", tmp_path)
        assert len(rows) == 30
        assert {r["status"] for r in rows} == {"succeeded"}


@pytest.mark.parametrize("provider", ["bfl", "reseller"])
@pytest.mark.parametrize(
    ("fault", "status", "reason"),
    [
        ("request-moderated", "moderated", "Request Moderated: Derivative Works Filter"),
        ("content-moderated", "moderated", "Content Moderated: Content Filter"),
        ("error", "failed", "the API failed the task ("),
    ],
)
def test_terminal_outcomes_are_recorded_with_their_reason(
    redis_url: str, tmp_path: Path, fault: str, status: str, reason: str, provider: str
) -> None:
    with Emulator(fast(faults={fault: 1.0})) as emu:
        sched = InlineScheduler()
        base = emu.base_url + ("/reseller/v1" if provider == "reseller" else "")
        rt = inline_runtime(fast_settings(base, redis_url, api_key=KEY, provider=provider), sched)
        start_specs(rt, "t", str(tmp_path), text_specs(3))
        sched.run(rt)
        rows = results_csv(rt, "t", tmp_path)
        assert {r["status"] for r in rows} == {status}
        # The same words from either dialect, and a sentence, not a repr of the API's details.
        assert all(r["error"].startswith(reason) for r in rows), rows[0]["error"]
        assert not any(ch in r["error"] for r in rows for ch in "{}'")
        if fault == "error":
            assert all(r["error"].endswith("): Internal error while generating the image (emulated)") for r in rows)
        assert emu.stats()["submits"] == 3  # never retried
        assert not list((tmp_path / "out").glob("*.png")) if (tmp_path / "out").exists() else True


def test_a_row_whose_input_is_gone_fails_with_a_sentence_naming_it(redis_url: str, tmp_path: Path) -> None:
    gone = tmp_path / "staged" / "vanished.png"  # staged when queued, removed before the submit
    with Emulator(fast()) as emu:
        sched = InlineScheduler()
        rt = inline_runtime(fast_settings(emu.base_url, redis_url, api_key=KEY), sched)
        (spec,) = text_specs(1)
        start_specs(rt, "g", str(tmp_path), [dataclasses.replace(spec, images=[gone.as_uri()], digests=["0" * 64])])
        sched.run(rt)
        (row,) = results_csv(rt, "g", tmp_path)
        assert row["status"] == "failed"
        assert str(gone) in row["error"]
        assert row["error"].startswith("not submitted: ")
        assert "Error:" not in row["error"]  # no exception class names: they say nothing to the reader
        assert emu.stats()["submits"] == 0


def test_transient_faults_are_retried_within_bounds(redis_url: str, tmp_path: Path) -> None:
    with Emulator(fast(faults={"500": 0.2, "503": 0.1, "429": 0.1})) as emu:
        sched = InlineScheduler()
        # 40 % of submits fail: with the default 6 attempts a row fails 0.4**6 = 0.4 % of the time,
        # one run of this test in nine. 12 attempts make that one in 60,000 while bounds still apply.
        rt = inline_runtime(fast_settings(emu.base_url, redis_url, api_key=KEY, max_attempts=12), sched)
        start_specs(rt, "f", str(tmp_path), text_specs(30))
        sched.run(rt)
        assert rt.runs.info("f").counts == {"succeeded": 30}
        stats = emu.stats()
        assert stats["submits"] - stats["rejected_429"] - 30 <= sum(stats["faults_injected"].values())


def test_expired_sample_fails_with_a_clear_reason(redis_url: str, tmp_path: Path) -> None:
    # Sample URLs live 600 s * time_scale = 0.3 s; the first poll comes 0.6 s after Ready.
    cfg = fast(time_scale=0.0005, latency={"*": LatencySpec.fixed(200)})
    with Emulator(cfg) as emu:
        sched = InlineScheduler(extra_poll_delay=lambda ref, n: 0.6)
        rt = inline_runtime(fast_settings(emu.base_url, redis_url, api_key=KEY), sched)
        start_specs(rt, "x", str(tmp_path), text_specs(2))
        sched.run(rt)
        rows = results_csv(rt, "x", tmp_path)
        assert {r["status"] for r in rows} == {"failed"}
        assert all("expired" in r["error"] for r in rows)


@pytest.mark.parametrize("provider", ["bfl", "reseller"])
def test_expired_sample_is_resubmitted_with_its_seed_when_allowed(
    redis_url: str, tmp_path: Path, provider: str
) -> None:
    cfg = fast(time_scale=0.0005, latency={"*": LatencySpec.fixed(200)})
    with Emulator(cfg) as emu:
        # Only the first poll of each row is late; the resubmitted job is fetched in time.
        sched = InlineScheduler(extra_poll_delay=lambda ref, n: 0.6 if n == 0 else 0.0)
        # poll_max_s keeps the late first poll from teaching the planner to wait past the URL's life.
        base = emu.base_url + ("/reseller/v1" if provider == "reseller" else "")
        s = fast_settings(base, redis_url, api_key=KEY, resubmit_expired=True, poll_max_s=0.1, provider=provider)
        rt = inline_runtime(s, sched)
        start_specs(rt, "y", str(tmp_path), text_specs(2))
        sched.run(rt)
        rows = results_csv(rt, "y", tmp_path)
        assert {r["status"] for r in rows} == {"succeeded"}
        assert [r["attempts"] for r in rows] == ["2", "2"]
        assert [r["seed"] for r in rows] == ["1", "2"]
        assert emu.stats()["submits"] == 4
        # Both tasks of each row were paid for, and nothing stays reserved (the reseller reports its
        # cost only when a task ends: the expired task's reservation used to stay held for ever).
        spend = rt.budget.spend("y")
        assert spend.reserved == 0
        assert spend.spent == 4 * float(cost_credits_for("flux-kontext-pro"))
        # A row's cost is both its tasks (it showed the second one's only): the file adds up.
        assert [float(r["cost_credits"]) for r in rows] == [spend.spent / 2] * 2


def test_sweep_writes_results_of_a_run_whose_last_reply_was_lost(redis_url: str, emu: Emulator, tmp_path: Path) -> None:
    sched = InlineScheduler()
    rt = inline_runtime(fast_settings(emu.base_url, redis_url, api_key=KEY), sched)
    start_specs(rt, "lost", str(tmp_path), text_specs(3))
    sched.run(rt)
    assert rt.runs.info("lost").finished
    # As if the reply to the last row's record had been lost: complete, but never finalized.
    rt.runs.update("lost", status="running")
    rt.runs.clear("lost", "finished_at")
    rt.runs.reopen_run("lost")
    (tmp_path / "results.csv").unlink()
    sweep(rt)
    assert rt.runs.info("lost").finished
    assert len(results_csv(rt, "lost", tmp_path)) == 3
    assert rt.runs.complete_but_open() == []


def test_a_sweep_does_not_stop_a_run_on_a_stale_view_of_refused_keys(
    redis_url: str, emu: Emulator, tmp_path: Path
) -> None:
    # A worker saw the run's only key refused (and caches that view for a second); then `retry`, in
    # another process, cleared it. The worker's next sweep must not stop the run on its stale view.
    sched = InlineScheduler()
    worker = inline_runtime(fast_settings(emu.base_url, redis_url, api_key=KEY), sched)
    start_specs(worker, "stale", str(tmp_path), text_specs(2))
    fp = worker.settings.api_key.fingerprint
    worker.pools.mark_key_out(fp, "out of credits (402)")
    assert fp in worker.pools.keys_out()  # cached now
    retrying = inline_runtime(fast_settings(emu.base_url, redis_url, api_key=KEY), InlineScheduler())
    retrying.pools.clear_keys_out([fp])
    sweep(worker)
    assert "stopped" not in worker.runs.meta("stale")
    sched.run(worker)
    assert worker.runs.info("stale").counts == {"succeeded": 2}
