"""The results file: one line per manifest row, in manifest order, then the manifest's extra columns.

People open it in Excel, LibreOffice or Google Sheets, which run a cell that starts with ``=``,
``+``, ``-`` or ``@`` (or a tab or CR before one) as a formula: a prompt or an id such as
``=HYPERLINK(...)`` or ``+cmd|...`` would run on the reader's machine. Following OWASP's advice on
CSV injection, every such cell (any column, the header and the manifest's extra columns included)
is written with a leading single quote ``'``, which spreadsheets show as text; ``-2`` becomes
``'-2``. Only this file is escaped: the sidecars and Redis keep the exact text.

Lines end with CRLF (RFC 4180) so that the csv module quotes a cell holding a lone CR; with a
``\n`` terminator it writes such a cell bare, and readers split the row there.

A run whose state Redis lost is not written at all (:class:`~kontext_batch.errors.RunStateLost`):
its rows would read as ``pending``, or lose their id and prompt, in a file that looks complete.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from typing import Any, Final, TextIO

from kontext_batch.coord.runs import RunStore
from kontext_batch.errors import RunStateLost
from kontext_batch.io.names import RESULTS_NAME

__all__ = ["COLUMNS", "FORMULA_STARTS", "RESULTS_NAME", "render_results", "results_rows"]

#: First characters that make a spreadsheet read a cell as a formula (OWASP, "CSV Injection").
FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")
COLUMNS: Final = (
    "row",
    "id",
    "job_id",
    "status",
    "output_uri",
    "error",
    "model",
    "prompt",
    "seed",
    "bfl_task_id",
    "cost_credits",
    "attempts",
    "polls",
    "submitted_at",
    "finished_at",
    "duration_s",
    "input_image",
    "input_image_2",
    "input_image_3",
    "input_image_4",
    "aspect_ratio",
    "output_format",
    "key_fingerprint",
    "possible_duplicate",
)


def _cell(value: Any) -> str:
    """``value`` as the spreadsheet should see it: text that would start a formula gets a ``'`` first."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _iso(ts: Any) -> str:
    if ts in (None, ""):
        return ""
    return datetime.fromtimestamp(float(ts), tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def results_rows(runs: RunStore, run_id: str) -> tuple[list[str], Any]:
    """Header and a generator of CSV rows. Rows not final yet show status ``pending``.

    Raises RunStateLost when the run's state is lost, at once or (a key going meanwhile) from the
    generator when it meets a row without its spec."""
    info = runs.info(run_id)
    if info.lost:
        raise RunStateLost(run_id, info.lost)
    meta = info.meta
    extra_cols: list[str] = json.loads(meta.get("extra_columns", "[]"))
    total = int(meta.get("total", 0))

    def gen() -> Any:
        for row, spec_or_none, res_or_none in runs.iter_results(run_id, total):
            if spec_or_none is None:
                raise RunStateLost(run_id, f"row {row} has no spec in its rows hash")
            spec = spec_or_none
            res = res_or_none or {"status": "pending"}
            seed = res.get("seed", spec.get("params", {}).get("seed", ""))
            inputs = spec.get("inputs") or {}
            line = {
                "row": row,
                "id": spec.get("id", res.get("id", "")),
                "job_id": f"{run_id}:{row}",
                "status": res["status"],
                "output_uri": res.get("output_uri", ""),
                "error": res.get("error", ""),
                "model": spec.get("endpoint", res.get("model", "")),
                "prompt": spec.get("prompt", res.get("prompt", "")),
                "seed": "" if seed is None else seed,
                "bfl_task_id": res.get("bfl_task_id", ""),
                "cost_credits": res.get("cost_credits", ""),
                "attempts": res.get("attempts", 0),
                "polls": res.get("polls", 0),
                "submitted_at": _iso(res.get("submitted_at")),
                "finished_at": _iso(res.get("finished_at")),
                "duration_s": res.get("duration_s", ""),
                **{f: inputs.get(f, "") for f in ("input_image", "input_image_2", "input_image_3", "input_image_4")},
                "aspect_ratio": spec.get("params", {}).get("aspect_ratio") or "",
                "output_format": spec.get("output_format", ""),
                "key_fingerprint": res.get("key", ""),
                "possible_duplicate": 1 if res.get("possible_duplicate") else "",
            }
            extra = spec.get("extra") or res.get("extra") or {}
            yield [_cell(line[c]) for c in COLUMNS] + [_cell(extra.get(c, "")) for c in extra_cols]

    return [_cell(c) for c in (*COLUMNS, *extra_cols)], gen()


def render_results(runs: RunStore, run_id: str, out: TextIO | None = None) -> str:
    """Write the CSV to ``out`` (returns "") or return it as a string."""
    buf = io.StringIO()
    header, rows = results_rows(runs, run_id)
    w = csv.writer(out if out is not None else buf, lineterminator="\r\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()
