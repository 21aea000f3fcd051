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
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, Final, TextIO

from kontext_batch.coord.runs import RunStore
from kontext_batch.errors import RunStateLost
from kontext_batch.io.names import RESULTS_NAME

__all__ = [
    "COLUMNS",
    "FORMULA_STARTS",
    "RESULTS_NAME",
    "Line",
    "cell",
    "csv_header",
    "csv_row",
    "render_results",
    "result_lines",
    "results_rows",
    "unescape",
    "write_csv",
]

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
    # Which run wrote the line, and when it started: what the output's results.csv merge compares.
    "run_id",
    "run_started_at",
    # The row's place at the output (the merge's key), and the outcome that made ``output_uri``:
    # this run's own for a row it produced, the earlier run's (from the sidecar) for a skipped one.
    "output_name",
    "output_run_id",
    "output_seed",
    "output_bfl_task_id",
    "output_cost_credits",
    # The staged inputs the API was sent (a JSON list of URIs): what the gallery shows.
    "input_uris",
)
#: The columns of a produced row's own values that ``output_*`` repeat (the result's field for each).
_OWN_OUTPUT: Final = {"output_seed": "seed", "output_bfl_task_id": "bfl_task_id", "output_cost_credits": "cost_credits"}


def cell(value: Any) -> str:
    """``value`` as the spreadsheet should see it: text that would start a formula gets a ``'`` first."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _iso(ts: Any) -> str:
    if ts in (None, ""):
        return ""
    return datetime.fromtimestamp(float(ts), tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


#: One row's line as raw values: :data:`COLUMNS` -> value, and the manifest's extra columns -> value
#: (apart: an extra column may share a name with one of ours).
Line = tuple[dict[str, Any], dict[str, Any]]


def result_lines(runs: RunStore, run_id: str, *, strict: bool = True) -> tuple[list[str], Iterator[Line]]:
    """The manifest's extra columns and a generator of each row's :data:`Line`, in manifest order.
    Rows not final yet show status ``pending``.

    Raises RunStateLost when the run's state is lost, at once or (a key going meanwhile) from the
    generator when it meets a row without its spec; with ``strict`` off (a review page of a run
    still being written) such a row reads as pending, with what its result says."""
    info = runs.info(run_id)
    if info.lost and strict:
        raise RunStateLost(run_id, info.lost)
    meta = info.meta
    extra_cols: list[str] = json.loads(meta.get("extra_columns", "[]"))
    total = int(meta.get("total", 0))
    started = _iso(meta.get("created_at"))

    def gen() -> Iterator[Line]:
        for row, spec_or_none, res_or_none in runs.iter_results(run_id, total):
            if spec_or_none is None and strict:
                raise RunStateLost(run_id, f"row {row} has no spec in its rows hash")
            spec = spec_or_none or {}
            res = res_or_none or {"status": "pending"}
            seed = res.get("seed", (spec.get("params") or {}).get("seed", ""))
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
                "aspect_ratio": (spec.get("params") or {}).get("aspect_ratio") or "",
                "output_format": spec.get("output_format", ""),
                "key_fingerprint": res.get("key", ""),
                "possible_duplicate": 1 if res.get("possible_duplicate") else "",
                "run_id": run_id,
                "run_started_at": started,
                "output_name": spec.get("output_name", ""),
                **_made_by(run_id, res, seed),
                "input_uris": json.dumps(spec["images"]) if spec.get("images") else "",
            }
            extra = spec.get("extra") or res.get("extra") or {}
            yield line, {c: extra.get(c, "") for c in extra_cols}

    return extra_cols, gen()


def results_rows(runs: RunStore, run_id: str) -> tuple[list[str], Iterator[list[str]]]:
    """Header and a generator of CSV rows, every cell escaped (:func:`cell`); see :func:`result_lines`."""
    extra_cols, lines = result_lines(runs, run_id)
    return csv_header(extra_cols), (csv_row(line, extra_cols) for line in lines)


def csv_header(extra_cols: list[str]) -> list[str]:
    """The escaped header of a results file whose manifest had these extra columns."""
    return [cell(c) for c in (*COLUMNS, *extra_cols)]


def csv_row(line: Line, extra_cols: list[str]) -> list[str]:
    """One :data:`Line` as a results file's row of escaped cells."""
    own, extra = line
    return [cell(own[c]) for c in COLUMNS] + [cell(extra[c]) for c in extra_cols]


def _made_by(run_id: str, res: dict[str, Any], seed: Any) -> dict[str, Any]:
    """The ``output_*`` cells: what made the row's output. A skipped row's result carries them (the
    enqueue pass read the sidecar); a row this run produced has its own; any other row, none."""
    if res.get("status") == "skipped":
        return {c: res.get(c, "") for c in ("output_run_id", *_OWN_OUTPUT)}
    if res.get("status") != "succeeded" or not res.get("output_uri"):
        return dict.fromkeys(("output_run_id", *_OWN_OUTPUT), "")
    own = {c: res.get(f, "") for c, f in _OWN_OUTPUT.items()}
    return {"output_run_id": run_id, **own, "output_seed": "" if seed is None else seed}


def render_results(runs: RunStore, run_id: str, out: TextIO | None = None) -> str:
    """Write the run's own CSV to ``out`` (returns "") or return it as a string."""
    header, rows = results_rows(runs, run_id)
    return write_csv(header, rows, out)


def write_csv(header: Iterable[str], rows: Iterable[Iterable[str]], out: TextIO | None = None) -> str:
    """Cells already escaped, as results.csv writes them: to ``out`` (returns ""), or as a string."""
    buf = io.StringIO()
    w = csv.writer(out if out is not None else buf, lineterminator="\r\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def unescape(text: str) -> str:
    """A cell read back from results.csv as it was before :func:`cell` (for the review page: the
    file itself is merged cell for cell, never unescaped)."""
    return text[1:] if text.startswith("'") and text[1:].startswith(FORMULA_STARTS) else text
