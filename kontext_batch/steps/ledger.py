"""A run's results, written twice at its end: its own file, and its lines merged into the output's.

Users run the same manifest into one output every night, change a few prompts, and retry an older
night's rejects the next morning. So each run keeps ``runs/RUN_ID/results.csv`` and
``runs/RUN_ID/gallery.html``: exactly what that run did and spent (a retry of the run rewrites them).
The output's own ``results.csv`` and ``gallery.html`` hold the newest line of every row at the output,
whichever run wrote it, and a run only ever makes a line there newer:

- a row at the output is its ``output_name`` (an invalid row, which has none, its manifest ``id``);
- of two lines for one row, the newer is the one written by the run that started later
  (``run_started_at``), and within one run the one that finished later (``finished_at``).

Night 2's line for a row therefore beats night 1's retry of it, while night 1's retry of a row night
2 never had updates the output. The output's file is merged from what it holds (read back from the
store, not from Redis: it outlives the runs' state, pruned after 14 days), its cells kept exactly as
written (they are formula-escaped once, by :func:`~kontext_batch.steps.results.cell`, and never again);
a file of the layout before ``run_id`` was a column is one earlier run's whole file, and is replaced.
Two runs finalizing into one output at once take turns (:func:`~kontext_batch.coord.outputs.hold_output`).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from kontext_batch.coord.outputs import hold_output
from kontext_batch.errors import KontextBatchError, ObjectNotFound, StorageError
from kontext_batch.io.names import GALLERY_NAME, RESULTS_NAME, run_file
from kontext_batch.io.stores import ObjectStore
from kontext_batch.runtime import Runtime
from kontext_batch.steps.gallery import HTML, READS, RUN_PAGE_DEPTH, gallery_rows, render_page
from kontext_batch.steps.results import COLUMNS, csv_header, csv_row, result_lines, unescape, write_csv

__all__ = ["Ledger", "Written", "merge", "parse", "write_results"]

log = logging.getLogger("kontext_batch.ledger")

CSV: Final = "text/csv"
_N: Final = len(COLUMNS)
_AT: Final = {c: i for i, c in enumerate(COLUMNS)}


@dataclass(frozen=True)
class Ledger:
    """A results file's header and lines, every cell as written (escaped)."""

    header: list[str]
    rows: list[list[str]]

    def csv(self) -> str:
        return write_csv(self.header, self.rows)

    def lines(self, columns: Iterable[str] = COLUMNS) -> Iterable[dict[str, str]]:
        """Each line's own ``columns`` (those of ours among them), unescaped: what the review page shows."""
        at = [(c, _AT[c]) for c in columns if c in _AT]
        for row in self.rows:
            yield {c: unescape(row[i]) for c, i in at}


@dataclass(frozen=True)
class Written:
    """Where a run's end wrote its results: its own file and the output's merged one."""

    run_results_uri: str
    results_uri: str


def parse(data: bytes) -> Ledger:
    """A results file as written (UTF-8, CRLF, quoted cells), lines padded to the header's width."""
    header, *rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline=""))) or [[]]
    return Ledger(header, [row + [""] * (len(header) - len(row)) for row in rows if row])


def merge(old: Ledger | None, new: Ledger) -> Ledger:
    """``old`` with each of ``new``'s lines in place of the line for the same row, where it is as new
    or newer (module docstring); lines for rows ``old`` lacks are added at the end, in ``new``'s order.
    The extra columns are the union of both, ``old``'s first."""
    if old is None or old.header[:_N] != list(COLUMNS):
        return new
    extras = list(dict.fromkeys([*old.header[_N:], *new.header[_N:]]))
    merged: dict[tuple[str, str], list[str]] = {}
    for row in _widened(old, extras):
        merged[_row_key(row)] = row
    for row in _widened(new, extras):
        key = _row_key(row)
        held = merged.get(key)
        if held is None or _version(row) >= _version(held):
            merged[key] = row  # a dict keeps the place of a key whose value is replaced
    return Ledger([*COLUMNS, *extras], list(merged.values()))


def _widened(ledger: Ledger, extras: list[str]) -> Iterable[list[str]]:
    # An extra column may share its name with one of ours: only the part after ours is looked up.
    at: dict[str, int] = {}
    for i, name in enumerate(ledger.header[_N:], start=_N):
        at.setdefault(name, i)
    for row in ledger.rows:
        yield row[:_N] + [row[at[c]] if c in at else "" for c in extras]


def _row_key(row: list[str]) -> tuple[str, str]:
    name = row[_AT["output_name"]]
    return ("name", name) if name else ("id", row[_AT["id"]])


def _version(row: list[str]) -> tuple[str, str]:
    # ISO 8601 in UTC with milliseconds, never escaped: they compare as text.
    return row[_AT["run_started_at"]], row[_AT["finished_at"]]


def write_results(rt: Runtime, run_id: str, store: ObjectStore) -> Written:
    """Write the run's own results.csv and gallery.html (``runs/RUN_ID/``), then merge its lines into
    the output's results.csv and rewrite the output's gallery.html from the merged lines.

    Raises RunStateLost when the run's state goes while it is read; StorageError /
    StorageUnavailable when the store refuses a results file; OutputBusy when another run's merge
    into this output holds its lock too long. A gallery the store refuses is logged, never raised
    (the page is a convenience and must not keep a run from finishing).
    """
    extra_cols, read = result_lines(rt.runs, run_id)
    lines = list(read)
    own = Ledger(csv_header(extra_cols), [csv_row(line, extra_cols) for line in lines])
    own_csv = own.csv().encode()
    own_uri = store.put(run_file(run_id, RESULTS_NAME), own_csv, content_type=CSV)
    rows = gallery_rows((line for line, _ in lines), store.url, up=RUN_PAGE_DEPTH)
    _put_page(store, run_file(run_id, GALLERY_NAME), render_page(rows, key=run_id, title=f"run {run_id}"))
    with hold_output(rt.redis, rt.keys, store.url):
        try:
            old: Ledger | None = parse(store.get(RESULTS_NAME))
        except ObjectNotFound:
            old = None
        except (UnicodeDecodeError, csv.Error) as exc:
            # Not a file this system wrote (edited by hand, truncated): it cannot be merged, and the
            # output's rows from other runs would be lost by overwriting it, so say so and stop.
            raise StorageError(f"{store.uri(RESULTS_NAME)} is not a results file that can be merged: {exc}") from exc
        merged = merge(old, own)
        # A first run into the output (or one replacing a file of the old layout) is the whole file:
        # the bytes just written, not written out again.
        uri = store.put(RESULTS_NAME, own_csv if merged is own else merged.csv().encode(), content_type=CSV)
        # One pass, of the columns the page shows: the whole output's lines, unescaped twice and
        # whole, were half the time from the run's last row to its end (1,200 rows: ~30 ms of ~65).
        shown = list(merged.lines(READS))
        runs_seen = len({line["run_id"] for line in shown})
        page = render_page(
            gallery_rows(shown, store.url),
            key="output",
            title=f"output: the newest of {len(merged.rows):,} rows, from {runs_seen} run(s)",
        )
        _put_page(store, GALLERY_NAME, page)
    return Written(run_results_uri=own_uri, results_uri=uri)


def _put_page(store: ObjectStore, name: str, page: str) -> None:
    try:
        store.put(name, page.encode("utf-8"), content_type=HTML)
    except (KontextBatchError, OSError) as exc:
        log.warning("%s not written: %s", store.uri(name), exc)
