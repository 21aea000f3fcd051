"""Read a manifest's records, CSV, .xlsx, .parquet or JSONL, row by row in constant memory; each
becomes a :class:`~kontext_batch.manifest.rows.RowOutcome` (:func:`~kontext_batch.manifest.rows.build_row`).

The tabular formats (:mod:`kontext_batch.manifest.tables`) only yield a header and records; naming
the columns and checking the cells is :func:`_iter_table`, shared, so the same rows give the same
outcomes and messages in any of them. A CSV's delimiter (``,``, ``;`` or tab) is read from its
header line unless ``delimiter`` is given.

Row numbers (see manifests/README.md): a tabular row N is the Nth record after the header
(spreadsheet row N+1; on CSV line N+1 unless an earlier prompt holds a line break); JSONL row N is
line N. Blank lines are skipped but keep their number. File-level problems (no rows, no prompt
column, an undetectable delimiter, duplicate column names, a missing optional library) raise
:class:`~kontext_batch.errors.ManifestError` with one RowError whose ``row`` is 0 and ``field`` is
``<file>``: reported as the file's, never as a row's.

Memory: one row at a time, plus what :class:`~kontext_batch.manifest.rows.RowContext` keeps to
report clashes (the ids seen, the output names and folders claimed).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from pathlib import Path
from typing import IO, Any, Final, TextIO

from kontext_batch.errors import ManifestError, RowError
from kontext_batch.manifest.model import COLUMNS
from kontext_batch.manifest.rows import BAD_UTF8_RE, RowContext, RowOutcome, build_row
from kontext_batch.manifest.tables import (
    Table,
    csv_table,
    file_error,
    parquet_table,
    parse_delimiter,
    xlsx_table,
)

__all__ = ["DEFAULT_OUTPUT_NAME", "FORMATS", "TABULAR", "detect_format", "is_tabular", "iter_manifest"]

DEFAULT_OUTPUT_NAME: Final = "{id}.{ext}"
FORMATS: Final = {
    ".csv": "csv",
    ".tsv": "csv",
    ".xlsx": "xlsx",
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
#: Formats whose rows are a header's columns (their row N is spreadsheet row N+1).
TABULAR: Final = frozenset({"csv", "xlsx", "parquet"})
_NAMES: Final = "csv, xlsx, parquet or jsonl"
#: Separators a one-column header may hold: ``|`` is never detected, the others only when forced.
_LOOKS_SEPARATED: Final = {"|": "|", ",": "comma", ";": "semicolon", "\t": "tab"}
_file_error = file_error


def detect_format(path: str | Path, fmt: str | None = None) -> str:
    """``csv``, ``xlsx``, ``parquet`` or ``jsonl`` from ``fmt`` or the file's extension. Raises ManifestError."""
    if fmt:
        f = fmt.strip().lower().lstrip(".")
        f = "jsonl" if f == "ndjson" else f
        if f not in ("csv", "jsonl", "xlsx", "parquet"):
            raise _file_error(f"unknown manifest format {fmt!r}: use {_NAMES}")
        return f
    suffix = Path(str(path)).suffix.lower()
    if suffix not in FORMATS:
        raise _file_error(
            f"cannot tell the format of {str(path)!r} from its extension: name it .csv, .tsv, .xlsx, "
            ".parquet or .jsonl (or .ndjson), or give the format explicitly"
        )
    return FORMATS[suffix]


def is_tabular(path: str | Path, fmt: str | None = None) -> bool:
    """Whether the manifest is a header and columns (its rows are spreadsheet rows); False if unknown."""
    try:
        return detect_format(path, fmt) in TABULAR if fmt or str(path) != "-" else False
    except ManifestError:
        return False


# --- lines -------------------------------------------------------------------------------------


def _binary_lines(f: IO[bytes]) -> Iterator[str]:
    """Decode line by line, keeping line endings (csv needs them) and undecodable bytes as surrogates."""
    first = True
    for raw in f:
        line = raw.decode("utf-8", errors="surrogateescape")
        if first:
            line = line.removeprefix("\ufeff")
            first = False
        yield line


def _text_lines(f: Iterable[str]) -> Iterator[str]:
    first = True
    for text in f:
        yield text.removeprefix("\ufeff") if first else text
        first = False


def _sniff(lines: Iterator[str]) -> tuple[str, Iterator[str]]:
    """Format of a stream with no name: ``jsonl`` if its first non-blank character is ``{``."""
    seen: list[str] = []
    for line in lines:
        seen.append(line)
        s = line.strip()
        if s:
            return ("jsonl" if s.startswith("{") else "csv"), chain(seen, lines)
    return "csv", iter(seen)


# --- CSV ---------------------------------------------------------------------------------------


def _normalise_header(header: list[str]) -> list[str]:
    names: list[str] = []
    for i, cell in enumerate(header, start=1):
        if BAD_UTF8_RE.search(cell):
            raise _file_error(f"the header (line 1) is not valid UTF-8 text in column {i}; save as UTF-8")
        name = cell.strip()
        names.append(name.lower() if name.lower() in COLUMNS else name)
    seen: set[str] = set()
    dups = [n for n in names if n and (n in seen or seen.add(n))]  # type: ignore[func-returns-value]
    if dups:
        raise _file_error(f"duplicate column name(s) in the header: {', '.join(sorted(set(dups)))}")
    if len(names) == 1:
        for delim, label in _LOOKS_SEPARATED.items():
            if delim in header[0]:
                raise _file_error(
                    f"the header has one column {header[0].strip()!r}: the file looks {label}-separated; "
                    "separate columns with ',', ';' or tab (or give --delimiter)"
                )
    if "prompt" not in names:
        raise _file_error(f"no 'prompt' column in the header (columns: {', '.join(names) or 'none'})")
    return names


def _iter_table(table: Table, ctx: RowContext) -> Iterator[RowOutcome]:
    """The rows of any tabular format: one header, one row model, one set of messages."""
    names = _normalise_header(table.header)
    for row, cells, error in table.records:
        if error:
            seen = dict(zip(names, cells, strict=False)) if cells is not None else {}
            yield RowOutcome(row, None, [RowError(row, table.error_field, error)], seen)
            continue
        if not cells:
            continue  # a blank line: skipped, but it keeps its row number
        raw: dict[str, str] = {}
        unnamed: list[RowError] = []
        for i, (name, cell) in enumerate(zip(names, cells, strict=True), start=1):
            if not name:
                if cell.strip():
                    unnamed.append(RowError(row, f"column {i}", "has a value but no column name in the header"))
                continue
            raw[name] = cell
        outcome = build_row(row, raw, ctx)
        if unnamed:
            outcome = RowOutcome(row, None, unnamed + outcome.errors, raw)
        yield outcome


# --- JSONL -------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)


def _iter_jsonl(lines: Iterator[str], ctx: RowContext) -> Iterator[RowOutcome]:
    for row, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if BAD_UTF8_RE.search(line):
            yield RowOutcome(row, None, [RowError(row, "<json>", "line is not valid UTF-8 text")], {})
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield RowOutcome(
                row, None, [RowError(row, "<json>", f"not valid JSON: {exc.msg} at column {exc.colno}")], {}
            )
            continue
        if not isinstance(obj, dict):
            yield RowOutcome(
                row, None, [RowError(row, "<json>", f"must be a JSON object, got {type(obj).__name__}")], {}
            )
            continue
        raw: dict[str, str] = {}
        errors: list[RowError] = []
        for key, value in obj.items():
            name = key.strip().lower() if key.strip().lower() in COLUMNS else key
            if name in raw:
                errors.append(RowError(row, name, "given twice (keys differ only in case or spaces)"))
            if name in COLUMNS and isinstance(value, list | dict):
                errors.append(RowError(row, name, f"must be a string or number, got {type(value).__name__}"))
            raw[name] = _cell(value)
        outcome = build_row(row, raw, ctx)
        yield RowOutcome(row, None, errors + outcome.errors, raw) if errors else outcome


# --- entry point -------------------------------------------------------------------------------


def iter_manifest(
    path: str | Path,
    *,
    default_model: str = "pro",
    fmt: str | None = None,
    stdin: TextIO | None = None,
    default_output_name: str = DEFAULT_OUTPUT_NAME,
    inputs_root: Path | None = None,
    delimiter: str | None = None,
    sheet: str | None = None,
) -> Iterator[RowOutcome]:
    """Yield one :class:`RowOutcome` per data row of the manifest at ``path`` (``-``: ``stdin``).

    With ``inputs_root``, a local input image outside that folder (symlinks resolved) is a row error.
    ``delimiter`` (``,``, ``;``, ``tab``) overrides a CSV's detected one; ``sheet`` names the .xlsx
    sheet to read (default: the first).

    Streams: nothing but the ids and output names seen is kept between rows. Raises
    ManifestError for file-level problems (possibly after some rows were yielded), ConfigError for a
    bad ``default_model``, FileNotFoundError when ``path`` does not exist.
    """
    delim = parse_delimiter(delimiter)
    if str(path) == "-":
        stream = stdin if stdin is not None else sys.stdin
        buffer = getattr(stream, "buffer", None)
        lines = _binary_lines(buffer) if buffer is not None else _text_lines(stream)
        if fmt:
            kind = detect_format("-", fmt)
        else:
            kind, lines = _sniff(lines)
        if kind not in ("csv", "jsonl"):
            raise _file_error(f"a {kind} manifest cannot be read from stdin: give its path")
        ctx = RowContext(Path.cwd(), default_model, default_output_name, inputs_root)
        yield from _iter_checked(kind, lambda: _lines_table(kind, lines, delim), ctx)
        return
    p = Path(path)
    kind = detect_format(p, fmt)
    if delim is None and p.suffix.lower() == ".tsv":
        delim = "\t"
    ctx = RowContext(p.resolve().parent, default_model, default_output_name, inputs_root)
    if kind == "xlsx":
        if not p.exists():
            raise FileNotFoundError(2, "No such file or directory", str(p))
        yield from _iter_checked(kind, lambda: xlsx_table(p, sheet), ctx)
    elif kind == "parquet":
        if not p.exists():
            raise FileNotFoundError(2, "No such file or directory", str(p))
        yield from _iter_checked(kind, lambda: parquet_table(p), ctx)
    else:
        with p.open("rb") as f:
            lines = _binary_lines(f)
            yield from _iter_checked(kind, lambda: _lines_table(kind, lines, delim), ctx)


def _lines_table(kind: str, lines: Iterator[str], delimiter: str | None) -> Table | Iterator[str]:
    return csv_table(lines, delimiter) if kind == "csv" else lines


def _iter_checked(kind: str, open_table: Callable[[], Table | Iterator[str]], ctx: RowContext) -> Iterator[RowOutcome]:
    source = open_table()
    inner = _iter_table(source, ctx) if isinstance(source, Table) else _iter_jsonl(source, ctx)
    count = 0
    for outcome in inner:
        count += 1
        yield outcome
    if count == 0:
        what = "no JSON lines" if kind == "jsonl" else "only a header"
        raise _file_error(f"the manifest has {what}: no rows")
