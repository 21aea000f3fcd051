"""The tabular manifest formats (CSV, .xlsx, .parquet) as one shape: a header and its records.

Each format only turns its file into a :class:`Table`; naming the columns, checking the cells and
building rows is shared (:mod:`kontext_batch.manifest.reader`), so the same rows give the same
outcome and the same messages whatever file they came in.

Row numbers: record N is the Nth data row after the header, which is spreadsheet row N+1 when the
header is spreadsheet row 1 (what Excel shows for the CSV and what the .xlsx holds). Blank records
are skipped but keep their number.

openpyxl and pyarrow are optional: they are imported when such a file is read, and their absence is
a one-line file-level error that names the extra to install.
"""

from __future__ import annotations

import csv
import datetime as dt
import importlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from types import ModuleType
from typing import Any, Final, NamedTuple

from kontext_batch.errors import ManifestError, RowError

__all__ = [
    "DELIMITERS",
    "Record",
    "Table",
    "cell_text",
    "csv_table",
    "file_error",
    "parquet_table",
    "parse_delimiter",
    "xlsx_table",
]

#: What ``--delimiter`` accepts, and the delimiter each name means.
DELIMITERS: Final = {",": ",", "comma": ",", ";": ";", "semicolon": ";", "tab": "\t", "\t": "\t", "\\t": "\t"}
_DETECTED: Final = (",", ";", "\t")
_LABELS: Final = {",": "comma", ";": "semicolon", "\t": "tab"}
_PARQUET_BATCH_ROWS: Final = 1024


def file_error(msg: str) -> ManifestError:
    """A problem with the file as a whole (row 0, field ``<file>``), not with one of its rows."""
    return ManifestError([RowError(0, "<file>", msg)], msg)


class Record(NamedTuple):
    """One data record: its cells, or (``cells`` None) why the format could not read it."""

    row: int
    cells: list[str] | None
    error: str = ""


@dataclass
class Table:
    """A header (raw cells, as the file has them) and an iterator over the records after it."""

    header: list[str]
    records: Iterator[Record]
    #: The field a record's own error is reported under (a CSV's are ``<csv>``, as before).
    error_field: str = "<csv>"


def parse_delimiter(value: str | None) -> str | None:
    """The delimiter ``value`` (``,``, ``;``, ``tab``, ...) names; None: detect it from the header."""
    if value is None or value == "":
        return None
    key = value if value == "\t" else value.strip().lower()
    if key not in DELIMITERS:
        raise file_error(f"unknown delimiter {value!r}: use ',', ';' or 'tab'")
    return DELIMITERS[key]


def _unquoted(line: str) -> str:
    """``line`` without its quoted parts, so a comma inside a quoted column name is not counted."""
    return "".join(part for i, part in enumerate(line.split('"')) if i % 2 == 0)


def _detect_delimiter(header_line: str) -> str:
    text = _unquoted(header_line.rstrip("\r\n"))
    counts = {d: text.count(d) for d in _DETECTED}
    best = max(counts.values())
    if best == 0:
        return ","  # one column: any delimiter reads it the same
    tied = [_LABELS[d] for d, n in counts.items() if n == best]
    if len(tied) > 1:
        raise file_error(
            f"cannot tell the delimiter from the header (line 1): it has as many {' as '.join(tied)} "
            "separators; give --delimiter"
        )
    return next(d for d, n in counts.items() if n == best)


def csv_table(lines: Iterator[str], delimiter: str | None = None) -> Table:
    """A CSV table, its delimiter (``,``, ``;`` or tab) taken from the header line unless given."""
    seen: list[str] = []
    for line in lines:
        seen.append(line)
        if line.strip():
            break
    else:
        raise file_error("the manifest is empty: no rows")
    delim = delimiter or _detect_delimiter(seen[-1])
    reader = csv.reader(chain(seen, lines), delimiter=delim, strict=False)
    try:
        header = next(reader, None)
        while header is not None and not header:  # blank lines before the header
            header = next(reader, None)
    except csv.Error as exc:
        raise file_error(f"the header (line {reader.line_num}) is not valid CSV: {exc}") from None
    if header is None:
        raise file_error("the manifest is empty: no rows")

    def records() -> Iterator[Record]:
        row = 0
        line = reader.line_num
        while True:
            start = line + 1
            row += 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                line = reader.line_num
                yield Record(row, None, f"line {start}: not valid CSV: {exc}")
                continue
            line = reader.line_num
            if cells and len(cells) != len(header):
                hint = " (an unclosed quote?)" if any("\n" in c for c in cells) else ""
                msg = f"has {len(cells)} cells but the header has {len(header)} columns (line {start}){hint}"
                yield Record(row, cells, msg)
                continue
            yield Record(row, cells)

    return Table(header, records())


def _optional(module: str, package: str, what: str, extra: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise file_error(f"reading {what} manifests needs {package}: pip install 'kontext-batch[{extra}]'") from None


def cell_text(value: Any) -> str:
    """A spreadsheet or Parquet value as the string a CSV cell would hold."""
    if value is None or (isinstance(value, float) and math.isnan(value)):  # NaN: pandas' missing number
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # spreadsheets store 42 as 42.0; a seed must read "42"
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="surrogateescape")
    return str(value)


def _fit(values: tuple[Any, ...] | list[Any], width: int) -> list[str] | str:
    """The row's cells padded to ``width``; an error when a cell past the header holds a value."""
    cells = [cell_text(v) for v in values]
    if len(cells) > width:
        if any(c.strip() for c in cells[width:]):
            col = width + 1 + next(i for i, c in enumerate(cells[width:]) if c.strip())
            return f"has a value in column {col} but the header has {width} columns"
        cells = cells[:width]
    return cells + [""] * (width - len(cells))


def xlsx_table(path: Path, sheet: str | None = None) -> Table:
    """The first sheet of an .xlsx workbook (or the one named ``sheet``); its first non-empty row is the header."""
    openpyxl = _optional("openpyxl", "openpyxl", ".xlsx", "xlsx")
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # noqa: BLE001 - openpyxl raises zipfile, KeyError, ValueError... for a bad file
        raise file_error(f"cannot read {path.name} as an .xlsx workbook: {exc}") from None
    if sheet is not None and sheet not in book.sheetnames:
        book.close()
        raise file_error(f"no sheet {sheet!r} in {path.name} (sheets: {', '.join(book.sheetnames)})")
    ws = book[sheet] if sheet is not None else book.worksheets[0]
    rows = ws.iter_rows(values_only=True)
    header: list[str] | None = None
    header_at = 0
    for header_at, values in enumerate(rows, start=1):  # noqa: B007 - header_at is read after the loop
        cells = [cell_text(v) for v in values]
        if any(c.strip() for c in cells):
            while cells and not cells[-1].strip():
                cells.pop()
            header = cells
            break
    if header is None:
        book.close()
        raise file_error("the manifest is empty: no rows")
    width = len(header)

    def records() -> Iterator[Record]:
        try:
            # The record's number is its spreadsheet row less one, so "spreadsheet row N+1" is exact.
            for sheet_row, values in enumerate(rows, start=header_at + 1):
                fitted = _fit(values, width)
                if isinstance(fitted, str):
                    yield Record(sheet_row - 1, [cell_text(v) for v in values][:width], fitted)
                elif any(c.strip() for c in fitted):
                    yield Record(sheet_row - 1, fitted)
                else:
                    yield Record(sheet_row - 1, [])  # blank: skipped, keeps its number
        finally:
            book.close()

    return Table(header, records(), "<row>")


def parquet_table(path: Path) -> Table:
    """A Parquet file's columns and rows, read a batch at a time."""
    pq = _optional("pyarrow.parquet", "pyarrow", ".parquet", "parquet")
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError... for a bad file
        raise file_error(f"cannot read {path.name} as a Parquet file: {exc}") from None
    header = list(pf.schema_arrow.names)

    def records() -> Iterator[Record]:
        row = 0
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
            for values in zip(*(col.to_pylist() for col in batch.columns), strict=True):
                row += 1
                yield Record(row, [cell_text(v) for v in values])

    return Table(header, records())
