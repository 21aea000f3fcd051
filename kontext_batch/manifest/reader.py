"""Read a manifest row by row, in constant memory, turning every problem into a located RowError.

Row numbers (see manifests/README.md): CSV row N is the Nth record after the header (on line
N+1 unless an earlier prompt holds a line break); JSONL row N is line N. Blank lines are skipped
but keep their number. File-level problems (no rows, no prompt column, a ;-separated file,
duplicate column names) raise :class:`~kontext_batch.errors.ManifestError` with one RowError whose
``row`` is 0 and ``field`` is ``<file>``.

Memory: one row at a time, plus the ids seen and the output names and folders claimed (folded
keys, to report clashes): about 200 bytes per row, 100 more when every row has its own folder.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path
from typing import IO, Any, Final, NamedTuple, TextIO

from kontext_batch.api.models import KontextRequest
from kontext_batch.errors import ConfigError, ManifestError, RequestInvalid, RowError
from kontext_batch.manifest.images import resolve_image_ref
from kontext_batch.manifest.model import (
    COLUMNS,
    EXTENSIONS,
    IMAGE_FIELDS,
    SIDECAR_SUFFIX,
    ImageRef,
    ManifestRow,
    fold_name,
    render_output_name,
    resolve_model,
)

__all__ = ["DEFAULT_OUTPUT_NAME", "FORMATS", "RowOutcome", "detect_format", "iter_manifest"]

DEFAULT_OUTPUT_NAME: Final = "{id}.{ext}"
FORMATS: Final = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
ID_MAX_CHARS: Final = 256
_INT_RE: Final = re.compile(r"^[+-]?\d+$")
_TRUE: Final = frozenset({"true", "1", "yes", "y", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "n", "off"})
_DELIMITERS: Final = {";": ";", "\t": "tab", "|": "|"}
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")
_BAD_UTF8_RE: Final = re.compile(r"[\udc80-\udcff]")  # bytes surrogateescape could not decode
_FORMAT_ALIASES: Final = {"jpg": "jpeg"}
_FOLD_HINT: Final = " (names are compared ignoring case and Unicode normalisation)"


class RowOutcome(NamedTuple):
    """One data row: a ManifestRow when it is valid (``errors`` empty), else None and the errors."""

    row: int
    value: ManifestRow | None
    errors: list[RowError]
    raw: dict[str, str]


def _file_error(msg: str) -> ManifestError:
    return ManifestError([RowError(0, "<file>", msg)], msg)


def detect_format(path: str | Path, fmt: str | None = None) -> str:
    """``csv`` or ``jsonl`` from ``fmt`` or the file's extension. Raises ManifestError."""
    if fmt:
        f = fmt.strip().lower().lstrip(".")
        f = "jsonl" if f == "ndjson" else f
        if f not in ("csv", "jsonl"):
            raise _file_error(f"unknown manifest format {fmt!r}: use csv or jsonl")
        return f
    suffix = Path(str(path)).suffix.lower()
    if suffix not in FORMATS:
        raise _file_error(
            f"cannot tell the format of {str(path)!r} from its extension: name it .csv or .jsonl "
            "(or .ndjson), or give the format explicitly"
        )
    return FORMATS[suffix]


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


# --- cells -------------------------------------------------------------------------------------


def _parse_int(value: str, field: str, errors: list[RowError], row: int) -> int | None:
    if not _INT_RE.match(value):
        errors.append(RowError(row, field, f"must be an integer, got {value!r}"))
        return None
    return int(value)


def _parse_cells(row: int, cells: dict[str, str], errors: list[RowError]) -> dict[str, Any]:
    """Typed API fields from the string cells (set ones only); type errors appended to ``errors``."""
    out: dict[str, Any] = {}
    for name in ("seed", "safety_tolerance", "steps"):
        if cells.get(name):
            num = _parse_int(cells[name], name, errors, row)
            if num is not None:
                out[name] = num
    if cells.get("guidance_scale"):
        try:
            out["guidance_scale"] = float(cells["guidance_scale"])
        except ValueError:
            errors.append(RowError(row, "guidance_scale", f"must be a number, got {cells['guidance_scale']!r}"))
    if cells.get("prompt_upsampling"):
        v = cells["prompt_upsampling"].lower()
        if v in _TRUE or v in _FALSE:
            out["prompt_upsampling"] = v in _TRUE
        else:
            errors.append(RowError(row, "prompt_upsampling", f"must be true or false (or 1/0, yes/no), got {v!r}"))
    if cells.get("output_format"):
        v = cells["output_format"].lower()
        out["output_format"] = _FORMAT_ALIASES.get(v, v)
    for name in ("aspect_ratio", "negative_prompt"):
        if cells.get(name):
            out[name] = cells[name]
    return out


class _Context:
    """State that spans rows: options, the ids seen, and the output files and folders claimed.

    Output names are kept only as :func:`fold_name` keys (``names``: key -> row), with every
    folder they imply (``folders``: key -> first row); a row's check is a few dict look-ups, one per
    folder level.
    """

    def __init__(
        self, base_dir: Path, default_model: str, default_output_name: str, inputs_root: Path | None = None
    ) -> None:
        self.base_dir = base_dir
        self.inputs_root = inputs_root
        try:
            resolve_model(default_model)
        except ValueError as exc:
            raise ConfigError(f"default model: {exc}") from None
        self.default_model = default_model
        self.default_output_name = default_output_name
        self.ids: dict[str, int] = {}
        self.names: dict[str, int] = {}
        self.folders: dict[str, int] = {}

    def _owner(self, key: str) -> tuple[int, str] | None:
        """The row whose output or sidecar is the file ``key``, and which of the two it is."""
        row = self.names.get(key)
        if row is not None:
            return row, "output"
        if key.endswith(SIDECAR_SUFFIX):
            row = self.names.get(key[: -len(SIDECAR_SUFFIX)])
            if row is not None:
                return row, "sidecar"
        return None

    def clash(self, name: str, key: str) -> str | None:
        """Why ``name`` (folded: ``key``) and its sidecar cannot join the names claimed, or None."""
        side = key + SIDECAR_SUFFIX
        hit = self._owner(key)
        if hit is not None:
            return f"{name!r} is the same file as the {hit[1]} of row {hit[0]}{_FOLD_HINT}"
        row = self.names.get(side)
        if row is not None:
            return f"its sidecar {name + SIDECAR_SUFFIX!r} is the same file as the output of row {row}{_FOLD_HINT}"
        for mine, what in ((key, repr(name)), (side, f"its sidecar {name + SIDECAR_SUFFIX!r}")):
            row = self.folders.get(mine)
            if row is not None:
                return f"{what} is a folder in the output name of row {row}{_FOLD_HINT}"
        end, depth = key.find("/"), 1
        while end != -1:
            hit = self._owner(key[:end])
            if hit is not None:
                folder = "/".join(name.split("/")[:depth])  # folding may change lengths, never slashes
                return f"its folder {folder!r} is the same file as the {hit[1]} of row {hit[0]}{_FOLD_HINT}"
            end, depth = key.find("/", end + 1), depth + 1
        return None

    def claim(self, key: str, row: int) -> None:
        self.names[key] = row
        end = key.find("/")
        while end != -1:
            self.folders.setdefault(key[:end], row)
            end = key.find("/", end + 1)


def _build_row(row: int, raw: dict[str, str], ctx: _Context) -> RowOutcome:
    """Check one row's cells (already strings, keyed by normalised column name)."""
    errors: list[RowError] = []
    for name, value in raw.items():
        if _BAD_UTF8_RE.search(value):
            errors.append(RowError(row, name, "is not valid UTF-8 text; save the manifest as UTF-8"))
    if errors:
        return RowOutcome(row, None, errors, raw)
    cells = {k: (v if k == "prompt" else v.strip()) for k, v in raw.items() if k in COLUMNS}
    extra = {k: v for k, v in raw.items() if k not in COLUMNS}

    row_id = cells.get("id") or str(row)
    id_ok = False
    if len(row_id) > ID_MAX_CHARS or _CONTROL_RE.search(row_id):
        errors.append(RowError(row, "id", f"must be at most {ID_MAX_CHARS} printable characters"))
    elif row_id in ctx.ids:
        errors.append(RowError(row, "id", f"duplicate id {row_id!r}: row {ctx.ids[row_id]} has it too"))
    else:
        ctx.ids[row_id] = row
        id_ok = True

    try:
        endpoint = resolve_model(cells.get("model") or ctx.default_model)
    except ValueError as exc:
        errors.append(RowError(row, "model", str(exc)))
        endpoint = ""

    images: list[ImageRef] = []
    gap: str | None = None
    for name in IMAGE_FIELDS:
        value = cells.get(name, "")
        if not value:
            gap = gap or name
            continue
        if gap is not None:
            errors.append(RowError(row, name, f"is set but {gap} is empty; fill image columns in order"))
        try:
            images.append(resolve_image_ref(value, name, ctx.base_dir, ctx.inputs_root))
        except ValueError as exc:
            errors.append(RowError(row, name, str(exc)))

    params = _parse_cells(row, cells, errors)
    prompt = cells.get("prompt", "")
    fields: dict[str, Any] = dict(params)
    for ref in images:
        fields[ref.field] = "placeholder"  # the real payload comes at submit time
    request: KontextRequest | None = None
    if not prompt.strip():
        errors.append(RowError(row, "prompt", "is required and must not be blank"))
    else:
        try:
            request = KontextRequest.build(prompt=prompt, **fields)
        except RequestInvalid as exc:
            errors.extend(RowError(row, fe.field, fe.msg) for fe in exc.errors)

    output_format = params.get("output_format") or "png"
    template = cells.get("output_name") or ctx.default_output_name
    output_name = ""
    try:
        output_name = render_output_name(
            template,
            raw,
            id=row_id,
            row=row,
            model=endpoint,
            ext=EXTENSIONS.get(output_format, output_format),
        )
    except ValueError as exc:
        errors.append(RowError(row, "output_name", str(exc)))
    else:
        key = fold_name(output_name)
        clash = ctx.clash(output_name, key)
        if clash is not None and not id_ok:
            pass  # a duplicate id already explains it ({id} is in most names)
        elif clash is not None:
            errors.append(RowError(row, "output_name", clash))
        else:
            ctx.claim(key, row)

    if errors or request is None:
        return RowOutcome(row, None, errors, raw)
    typed = request.model_dump(include=set(params), exclude_none=True)
    manifest_row = ManifestRow(
        row=row,
        id=row_id,
        endpoint=endpoint,
        prompt=prompt,
        images=tuple(images),
        params=typed,
        output_name=output_name,
        output_format=output_format,
        extra=extra,
    )
    return RowOutcome(row, manifest_row, [], raw)


# --- CSV ---------------------------------------------------------------------------------------


def _normalise_header(header: list[str]) -> list[str]:
    names: list[str] = []
    for i, cell in enumerate(header, start=1):
        if _BAD_UTF8_RE.search(cell):
            raise _file_error(f"the header (line 1) is not valid UTF-8 text in column {i}; save as UTF-8")
        name = cell.strip()
        names.append(name.lower() if name.lower() in COLUMNS else name)
    seen: set[str] = set()
    dups = [n for n in names if n and (n in seen or seen.add(n))]  # type: ignore[func-returns-value]
    if dups:
        raise _file_error(f"duplicate column name(s) in the header: {', '.join(sorted(set(dups)))}")
    if len(names) == 1:
        for delim, label in _DELIMITERS.items():
            if delim in header[0]:
                raise _file_error(
                    f"the header has one column {header[0].strip()!r}: the file looks {label}-separated; "
                    "save it as comma-separated CSV"
                )
    if "prompt" not in names:
        raise _file_error(f"no 'prompt' column in the header (columns: {', '.join(names) or 'none'})")
    return names


def _iter_csv(lines: Iterator[str], ctx: _Context) -> Iterator[RowOutcome]:
    reader = csv.reader(lines, strict=False)
    try:
        header = next(reader, None)
        while header is not None and not header:  # blank lines before the header
            header = next(reader, None)
    except csv.Error as exc:
        raise _file_error(f"the header (line {reader.line_num}) is not valid CSV: {exc}") from None
    if header is None:
        raise _file_error("the manifest is empty: no rows")
    names = _normalise_header(header)
    row = 0
    line = reader.line_num
    while True:
        start = line + 1
        row += 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            line = reader.line_num
            yield RowOutcome(row, None, [RowError(row, "<csv>", f"line {start}: not valid CSV: {exc}")], {})
            continue
        line = reader.line_num
        if not record:
            continue  # a blank line: skipped, but it keeps its row number
        if len(record) != len(names):
            hint = " (an unclosed quote?)" if any("\n" in c for c in record) else ""
            msg = f"has {len(record)} cells but the header has {len(names)} columns (line {start}){hint}"
            yield RowOutcome(row, None, [RowError(row, "<csv>", msg)], dict(zip(names, record, strict=False)))
            continue
        raw: dict[str, str] = {}
        unnamed: list[RowError] = []
        for i, (name, cell) in enumerate(zip(names, record, strict=True), start=1):
            if not name:
                if cell.strip():
                    unnamed.append(RowError(row, f"column {i}", "has a value but no column name in the header"))
                continue
            raw[name] = cell
        outcome = _build_row(row, raw, ctx)
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


def _iter_jsonl(lines: Iterator[str], ctx: _Context) -> Iterator[RowOutcome]:
    for row, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if _BAD_UTF8_RE.search(line):
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
        outcome = _build_row(row, raw, ctx)
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
) -> Iterator[RowOutcome]:
    """Yield one :class:`RowOutcome` per data row of the manifest at ``path`` (``-``: ``stdin``).

    With ``inputs_root``, a local input image outside that folder (symlinks resolved) is a row error.

    Streams: nothing but the ids and output names seen is kept between rows. Raises
    ManifestError for file-level problems (possibly after some rows were yielded), ConfigError for a
    bad ``default_model``, FileNotFoundError when ``path`` does not exist.
    """
    if str(path) == "-":
        stream = stdin if stdin is not None else sys.stdin
        buffer = getattr(stream, "buffer", None)
        lines = _binary_lines(buffer) if buffer is not None else _text_lines(stream)
        if fmt:
            kind = detect_format("-", fmt)
        else:
            kind, lines = _sniff(lines)
        ctx = _Context(Path.cwd(), default_model, default_output_name, inputs_root)
        yield from _iter_checked(kind, lines, ctx)
        return
    p = Path(path)
    kind = detect_format(p, fmt)
    ctx = _Context(p.resolve().parent, default_model, default_output_name, inputs_root)
    with p.open("rb") as f:
        yield from _iter_checked(kind, _binary_lines(f), ctx)


def _iter_checked(kind: str, lines: Iterator[str], ctx: _Context) -> Iterator[RowOutcome]:
    inner = _iter_csv(lines, ctx) if kind == "csv" else _iter_jsonl(lines, ctx)
    count = 0
    for outcome in inner:
        count += 1
        yield outcome
    if count == 0:
        what = "only a header" if kind == "csv" else "no JSON lines"
        raise _file_error(f"the manifest has {what}: no rows")
