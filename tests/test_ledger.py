"""The output's results.csv merge (kontext_batch.steps.ledger): which line of a row wins, and that
old lines are kept cell for cell. Files are built and read back with the csv module, as written."""

from __future__ import annotations

from pathlib import Path

import pytest

from kontext_batch.coord import outputs
from kontext_batch.coord.outputs import hold_output
from kontext_batch.emulator import Emulator, EmulatorConfig, LatencySpec
from kontext_batch.run.enqueue import RunRequest, start_run
from kontext_batch.runtime import Runtime
from kontext_batch.secret import Secret
from kontext_batch.settings import Settings
from kontext_batch.steps.complete import finalize
from kontext_batch.steps.ledger import Ledger, merge, parse
from kontext_batch.steps.results import COLUMNS, cell
from tests.e2e_support import read_results, write_csv
from tests.pipeline_support import InlineScheduler, inline_runtime

NIGHT1 = ("n1", "2026-12-01T22:00:00.000Z")
NIGHT2 = ("n2", "2026-12-02T22:00:00.000Z")


def line(
    run: tuple[str, str], name: str, *, prompt: str, finished: str, status: str = "succeeded", **extra: str
) -> dict[str, str]:
    return {
        "id": name.partition(".")[0],
        "status": status,
        "prompt": prompt,
        "output_name": name,
        "run_id": run[0],
        "run_started_at": run[1],
        "finished_at": finished,
        **extra,
    }


def ledger(lines: list[dict[str, str]], extras: tuple[str, ...] = ()) -> Ledger:
    header = [cell(c) for c in (*COLUMNS, *extras)]
    return Ledger(header, [[cell(x.get(c, "")) for c in (*COLUMNS, *extras)] for x in lines])


def rows_of(led: Ledger) -> dict[str, dict[str, str]]:
    return {r[COLUMNS.index("output_name")]: dict(zip(led.header, r, strict=True)) for r in led.rows}


def through_file(led: Ledger) -> Ledger:
    """As the store would hand it back: written and parsed."""
    return parse(led.csv().encode())


@pytest.mark.unit
def test_a_later_run_beats_an_earlier_runs_retry_and_the_retry_updates_what_it_alone_had() -> None:
    night1 = ledger(
        [
            line(NIGHT1, "a.png", prompt="old a", finished="2026-12-01T22:01:00.000Z"),
            line(NIGHT1, "b.png", prompt="only night 1", finished="2026-12-01T22:01:00.000Z", status="failed"),
        ]
    )
    night2 = ledger([line(NIGHT2, "a.png", prompt="new a", finished="2026-12-02T22:01:00.000Z")])
    prefix = through_file(merge(through_file(night1), night2))
    # The morning after night 2: night 1's retry of both rows, finished later than anything.
    retry = ledger(
        [
            line(NIGHT1, "a.png", prompt="old a", finished="2026-12-03T08:00:00.000Z"),
            line(NIGHT1, "b.png", prompt="only night 1", finished="2026-12-03T08:00:00.000Z"),
        ]
    )
    got = rows_of(merge(prefix, retry))
    assert (got["a.png"]["prompt"], got["a.png"]["run_id"]) == ("new a", "n2")
    assert (got["b.png"]["status"], got["b.png"]["finished_at"]) == ("succeeded", "2026-12-03T08:00:00.000Z")
    assert list(got) == ["a.png", "b.png"]  # each row keeps its place


@pytest.mark.unit
def test_an_earlier_run_never_replaces_a_later_ones_line_even_finishing_later() -> None:
    prefix = ledger([line(NIGHT2, "a.png", prompt="new", finished="2026-12-02T22:01:00.000Z")])
    older = ledger([line(NIGHT1, "a.png", prompt="old", finished="2026-12-09T00:00:00.000Z")])
    assert rows_of(merge(prefix, older))["a.png"]["prompt"] == "new"


@pytest.mark.unit
def test_old_cells_are_kept_exactly_as_written_never_escaped_twice() -> None:
    hostile = '=HYPERLINK("http://x")'
    prefix = through_file(
        ledger([line(NIGHT1, "a.png", prompt=hostile, finished="2026-12-01T22:01:00.000Z", sku="-2")], ("sku",))
    )
    new = ledger([line(NIGHT2, "z.png", prompt="+1", finished="2026-12-02T22:01:00.000Z")])
    merged = through_file(merge(prefix, new))
    got = rows_of(merged)
    assert got["a.png"]["prompt"] == "'" + hostile
    assert got["a.png"]["sku"] == "'-2"
    assert got["z.png"]["prompt"] == "'+1"
    assert next(iter(merged.lines()))["prompt"] == hostile  # what the page shows


@pytest.mark.unit
def test_extra_columns_are_the_union_old_first_and_missing_cells_empty() -> None:
    prefix = ledger([line(NIGHT1, "a.png", prompt="p", finished="1", sku="S1")], ("sku",))
    new = ledger([line(NIGHT2, "b.png", prompt="q", finished="2", colour="red")], ("colour",))
    merged = merge(prefix, new)
    assert merged.header[len(COLUMNS) :] == ["sku", "colour"]
    got = rows_of(merged)
    assert (got["a.png"]["sku"], got["a.png"]["colour"]) == ("S1", "")
    assert (got["b.png"]["sku"], got["b.png"]["colour"]) == ("", "red")


@pytest.mark.unit
def test_an_extra_column_named_like_one_of_ours_stays_its_own() -> None:
    prefix = ledger([line(NIGHT1, "a.png", prompt="p", finished="1", status="failed")], ("status",))
    prefix.rows[0][-1] = "in stock"  # the manifest's own 'status' column
    new = ledger([line(NIGHT2, "b.png", prompt="q", finished="2")], ("status",))
    new.rows[0][-1] = ""
    merged = merge(prefix, new)
    assert [r[-1] for r in merged.rows] == ["in stock", ""]
    assert [r[COLUMNS.index("status")] for r in merged.rows] == ["failed", "succeeded"]


@pytest.mark.unit
def test_rows_without_an_output_name_are_keyed_by_their_id() -> None:
    bad1 = {**line(NIGHT1, "", prompt="", finished="1", status="invalid"), "id": "sku-9"}
    bad2 = {**line(NIGHT2, "", prompt="", finished="2", status="invalid"), "id": "sku-9", "error": "again"}
    other = {**line(NIGHT2, "", prompt="", finished="2", status="invalid"), "id": "sku-10"}
    merged = merge(ledger([bad1]), ledger([bad2, other]))
    at = COLUMNS.index
    assert [(r[at("id")], r[at("error")]) for r in merged.rows] == [("sku-9", "again"), ("sku-10", "")]


@pytest.mark.unit
def test_a_file_of_the_layout_before_run_ids_is_replaced_whole() -> None:
    legacy = Ledger(["row", "id", "status"], [["1", "a", "succeeded"]])
    new = ledger([line(NIGHT2, "b.png", prompt="q", finished="2")])
    assert merge(legacy, new) == new
    assert merge(None, new) == new


@pytest.mark.unit
def test_parse_reads_what_csv_wrote_cr_and_newlines_in_cells_included() -> None:
    led = ledger([line(NIGHT1, "a.png", prompt="two\nlines\rand CR", finished="1")])
    assert through_file(led) == led


# --- two runs into one output (real Redis, the emulator, the pipeline inline) ---------------------


def _inline_run(rt: Runtime, sched: InlineScheduler, manifest: Path, out: Path) -> str:
    queued = start_run(rt, RunRequest(str(manifest), str(out), force=True))
    sched.run(rt)
    return queued.run_id


@pytest.mark.integration
def test_a_run_finishing_while_another_merges_into_its_output_waits_and_loses_no_row(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outputs, "LOCK_WAIT_S", 0.2)  # the other's merge outlasts any wait
    out = tmp_path / "out"
    with Emulator(EmulatorConfig(latency={"*": LatencySpec.fixed(0.05)}, seed=3)) as emu:
        s = Settings(api_key=Secret("ledger-key"), api_base=emu.base_url, redis_url=redis_url, poll_first_s=0.05)
        sched = InlineScheduler()
        rt = inline_runtime(s, sched)
        try:
            a = write_csv(tmp_path / "a.csv", ["id", "prompt"], [{"id": f"a{i}", "prompt": "p"} for i in range(3)])
            b = write_csv(tmp_path / "b.csv", ["id", "prompt"], [{"id": f"b{i}", "prompt": "p"} for i in range(2)])
            run_a = _inline_run(rt, sched, a, out)
            store = rt.store(str(out))
            # Another finalize holds the output's merge (as run A's would, had it finished now).
            with hold_output(rt.redis, rt.keys, store.url, wait_s=0):
                run_b = _inline_run(rt, sched, b, out)
                assert rt.runs.info(run_b).status == "running"  # left open for the next sweep
                assert (out / "runs" / run_b / "results.csv").is_file()  # its own file needs no lock
                during = {r["id"] for r in read_results((out / "results.csv").read_bytes())}
            assert during == {"a0", "a1", "a2"}
            assert finalize(rt, run_b) is not None  # what the sweep does next
        finally:
            rt.close()
    lines = read_results((out / "results.csv").read_bytes())
    assert sorted(r["id"] for r in lines) == ["a0", "a1", "a2", "b0", "b1"]
    assert {r["run_id"] for r in lines} == {run_a, run_b}
    assert rt.runs.info(run_b).status == "finished"
