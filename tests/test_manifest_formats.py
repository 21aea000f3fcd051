"""Manifest formats: a `,` CSV, an Excel `;` CSV (BOM, CRLF), a tab CSV, an .xlsx and a .parquet of the
same rows read as the same rows, with the same messages, naming a bad row as a spreadsheet shows it.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from kontext_batch.cli import commands
from kontext_batch.errors import ManifestError
from kontext_batch.manifest import ManifestRow, iter_manifest, render_report, validate_manifest
from kontext_batch.manifest.tables import cell_text
from tests.conftest import unavailable

HEADER = ["id", "prompt", "seed", "sku"]
# Row 2 (spreadsheet row 3) has no prompt; the others are valid. Seeds are numbers, as a spreadsheet holds them.
ROWS: list[list[Any]] = [
    ["a", "put it on white, keep the shadow", 42, "SKU-1"],
    ["b", None, 7, "SKU-2"],
    ["c", "make the strap brown; matte", None, "SKU-3"],
]


@pytest.mark.unit
def test_cells_read_as_a_csv_would_hold_them() -> None:
    assert [cell_text(v) for v in (None, 42, 42.0, 2.5, float("nan"), True, "x")] == [
        "",
        "42",
        "42",
        "2.5",
        "",
        "true",
        "x",
    ]


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def write_delimited(path: Path, delimiter: str, *, excel: bool = False) -> Path:
    lines = [HEADER, *[[_text(v) for v in row] for row in ROWS]]
    with path.open("w", encoding="utf-8-sig" if excel else "utf-8", newline="") as f:
        csv.writer(f, delimiter=delimiter, lineterminator="\r\n" if excel else "\n").writerows(lines)
    return path


def write_xlsx(path: Path, *, sheet: str | None = None) -> Path:
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    ws = book.active
    if sheet is not None:
        ws.title = "Notes"
        ws.append(["not", "the", "manifest"])
        ws = book.create_sheet(sheet)
    ws.append(HEADER)
    for row in ROWS:
        ws.append(row)
    book.save(path)
    return path


def write_parquet(path: Path) -> Path:
    try:
        pa = importlib.import_module("pyarrow")
        pq = importlib.import_module("pyarrow.parquet")
    except ImportError:
        unavailable("pyarrow is not installed (pip install 'kontext-batch[parquet]')")
    columns = {name: [row[i] for row in ROWS] for i, name in enumerate(HEADER)}
    pq.write_table(pa.table(columns), path)
    return path


def every_format(folder: Path) -> dict[str, Path]:
    return {
        "comma": write_delimited(folder / "comma.csv", ","),
        "excel-semicolon": write_delimited(folder / "excel.csv", ";", excel=True),
        "tab": write_delimited(folder / "tab.csv", "\t"),
        "xlsx": write_xlsx(folder / "m.xlsx"),
        "parquet": write_parquet(folder / "m.parquet"),
    }


def _plain(row: ManifestRow | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {f.name: getattr(row, f.name) for f in fields(row)} | {"params": dict(row.params), "extra": dict(row.extra)}


def parsed(path: Path, **kw: Any) -> list[tuple[int, Any, list[str]]]:
    return [(o.row, _plain(o.value), [str(e) for e in o.errors]) for o in iter_manifest(path, **kw)]


def report_body(path: Path, **kw: Any) -> str:
    """The validation report without its first line (which names the file)."""
    return render_report(validate_manifest(path, check_images=False, **kw)).split("\n", 1)[1]


@pytest.mark.unit
def test_every_format_gives_the_same_rows_and_messages(tmp_path: Path) -> None:
    paths = every_format(tmp_path)
    rows = {name: parsed(p) for name, p in paths.items()}
    reports = {name: report_body(p) for name, p in paths.items()}

    expected = rows["comma"]
    assert [r[0] for r in expected] == [1, 2, 3]
    assert expected[0][1]["params"] == {"seed": 42}
    assert expected[0][1]["extra"] == {"sku": "SKU-1"}
    assert expected[2][1]["prompt"] == "make the strap brown; matte"
    assert expected[1][1] is None
    assert expected[1][2] == ["row 2, field prompt: is required and must not be blank"]
    for name, got in rows.items():
        assert got == expected, name
        assert reports[name] == reports["comma"], name
    # Named as a spreadsheet shows it: the header is row 1, the bad record sits on row 3.
    assert "row 2 (spreadsheet row 3):\n  prompt: is required" in reports["xlsx"]


@pytest.mark.unit
def test_delimiter_option_overrides_detection(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("prompt;notes, more\nput it on white;soft, low\n")  # one ; and one , : a tie
    with pytest.raises(ManifestError) as err:
        list(iter_manifest(path))
    assert [(e.row, e.field) for e in err.value.errors] == [(0, "<file>")]
    assert "cannot tell the delimiter" in str(err.value)
    assert "--delimiter" in str(err.value)

    (row,) = list(iter_manifest(path, delimiter=";"))
    assert row.value is not None
    assert row.value.extra == {"notes, more": "soft, low"}


@pytest.mark.unit
def test_a_forced_wrong_delimiter_is_a_file_error(tmp_path: Path) -> None:
    path = write_delimited(tmp_path / "semi.csv", ";", excel=True)
    with pytest.raises(ManifestError) as err:
        list(iter_manifest(path, delimiter=","))
    assert [e.row for e in err.value.errors] == [0]
    assert "looks semicolon-separated" in str(err.value)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty"), (b"\r\n\r\n", "empty"), (b"\xef\xbb\xbfid;prompt\r\n", "only a header")],
    ids=["empty", "blank-lines", "excel-header-only"],
)
def test_file_level_problems_are_the_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes(content)
    with pytest.raises(ManifestError) as err:
        validate_manifest(path, check_images=False)
    assert [(e.row, e.field) for e in err.value.errors] == [(0, "<file>")]
    assert message in str(err.value)
    assert "row 0" not in str(err.value)


@pytest.mark.unit
def test_validate_cli_takes_delimiter_and_sheet(tmp_path: Path) -> None:
    tied = tmp_path / "m.csv"
    tied.write_text("prompt;notes, more\nput it on white;soft, low\n")
    book = write_xlsx(tmp_path / "m.xlsx", sheet="Edits")
    runner = CliRunner()
    env = {"KONTEXT_REDIS_URL": "redis://127.0.0.1:1/0"}  # validate never connects

    refused = runner.invoke(commands.cli, ["validate", str(tied), "--no-images"], env=env)
    assert refused.exit_code != 0, refused.output
    assert "cannot tell the delimiter" in refused.output
    forced = runner.invoke(commands.cli, ["validate", str(tied), "--no-images", "--delimiter", ";"], env=env)
    assert forced.exit_code == 0, forced.output
    assert "1 row: 4 credits" in forced.output

    first = runner.invoke(commands.cli, ["validate", str(book), "--no-images"], env=env)
    assert first.exit_code != 0, first.output
    assert "no 'prompt' column" in first.output
    named = runner.invoke(commands.cli, ["validate", str(book), "--no-images", "--sheet", "Edits"], env=env)
    assert named.exit_code == 1, named.output  # row 2 has no prompt
    assert "row 2 (spreadsheet row 3):" in named.output
    assert "2 valid rows: 8 credits" in named.output
    missing = runner.invoke(commands.cli, ["validate", str(book), "--sheet", "Nope"], env=env)
    assert "no sheet 'Nope'" in missing.output
    assert "Edits" in missing.output


@pytest.mark.unit
@pytest.mark.parametrize(
    ("module", "suffix", "extra"), [("openpyxl", "xlsx", "xlsx"), ("pyarrow", "parquet", "parquet")]
)
def test_a_missing_optional_library_names_its_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, suffix: str, extra: str
) -> None:
    path = tmp_path / f"m.{suffix}"
    path.write_bytes(b"not read")
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # what an uninstalled package looks like to import
    with pytest.raises(ManifestError) as err:
        list(iter_manifest(path))
    msg = str(err.value)
    assert "\n" not in msg
    assert module in msg
    assert f"kontext-batch[{extra}]" in msg
    assert [e.row for e in err.value.errors] == [0]


@pytest.mark.e2e  # `run --local` starts worker processes
def test_run_local_gives_the_same_results_from_every_format(tmp_path: Path) -> None:
    """`run --local --emulator` of an Excel ;-CSV, an .xlsx and a .parquet: the same results.csv, row for row."""
    sources = {
        "csv": write_delimited(tmp_path / "excel.csv", ";", excel=True),
        "xlsx": write_xlsx(tmp_path / "m.xlsx"),
        "parquet": write_parquet(tmp_path / "m.parquet"),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("KONTEXT_")}
    results: dict[str, list[dict[str, str]]] = {}
    for name, manifest in sources.items():
        out = tmp_path / f"out-{name}"
        proc = subprocess.run(
            [sys.executable, "-m", "kontext_batch", "run", str(manifest), "--local", "--emulator",
             "--skip-invalid", "--output", str(out), "--json"],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600, check=False,
        )  # fmt: skip
        assert proc.returncode in (0, 1), (proc.returncode, proc.stderr[-3000:])
        with (out / "results.csv").open(newline="", encoding="utf-8") as f:
            results[name] = list(csv.DictReader(f))
    # What the manifest decides; the task ids, times, polls and the emulator's own seeds vary per run.
    decided = ("row", "id", "status", "error", "model", "prompt", "cost_credits", "attempts", "output_format", "sku")

    def stable(rows: list[dict[str, str]]) -> list[dict[str, str]]:
        return [{k: r[k] for k in decided} | {"output": r["output_uri"].rsplit("/", 1)[-1]} for r in rows]

    assert [(r["id"], r["status"]) for r in results["csv"]] == [
        ("a", "succeeded"),
        ("b", "invalid"),
        ("c", "succeeded"),
    ]
    assert results["csv"][0]["seed"] == results["xlsx"][0]["seed"] == "42"
    for name in ("xlsx", "parquet"):
        assert stable(results[name]) == stable(results["csv"]), json.dumps(results, indent=1)[:3000]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (b"", (), "the manifest is empty"),
        (b"prompt;notes, more\r\nput it on white;soft, low\r\n", (), "cannot tell the delimiter"),
        (b"\xef\xbb\xbfid;prompt\r\na;put it on white\r\n", ("--delimiter", ","), "looks semicolon-separated"),
    ],
    ids=["empty", "tied-delimiters", "forced-delimiter"],
)
def test_run_reports_a_bad_file_as_the_files(
    redis_url: str, tmp_path: Path, content: bytes, args: tuple[str, ...], message: str
) -> None:
    """`run` says what is wrong with the file in one line, not as `row 0, field <file>`, and queues nothing."""
    path = tmp_path / "m.csv"
    path.write_bytes(content)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KONTEXT_")}
    env.update(KONTEXT_REDIS_URL=redis_url, KONTEXT_API_KEY="formats-key", KONTEXT_API_BASE="http://127.0.0.1:9")
    proc = subprocess.run(
        [sys.executable, "-m", "kontext_batch", "run", str(path), "--output", str(tmp_path / "out"), *args],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert message in proc.stderr, proc.stderr
    assert "nothing was queued" in proc.stderr
    assert "row 0" not in proc.stderr
    assert "<file>" not in proc.stderr
    assert "Traceback" not in proc.stderr
    client = redis.Redis.from_url(redis_url)
    try:
        assert not list(client.scan_iter("kb:run*", count=1000))
    finally:
        client.close()


@pytest.mark.unit
def test_stdin_and_tsv_read_the_same_rows(tmp_path: Path) -> None:
    excel = write_delimited(tmp_path / "excel.csv", ";", excel=True)
    expected = parsed(write_delimited(tmp_path / "comma.csv", ","))
    from_stdin = [
        (o.row, _plain(o.value), [str(e) for e in o.errors])
        for o in iter_manifest(
            "-", stdin=io.TextIOWrapper(io.BytesIO(excel.read_bytes()), encoding="utf-8", newline="")
        )
    ]
    assert from_stdin == expected
    assert parsed(write_delimited(tmp_path / "m.tsv", "\t")) == expected


@pytest.mark.unit
def test_xlsx_rows_keep_their_spreadsheet_numbers(tmp_path: Path) -> None:
    """A blank spreadsheet row keeps its number; a value beyond the header's columns is that row's error."""
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    ws = book.active
    ws.append(["prompt", "seed"])
    ws.append(["put it on white", 1])
    ws.append([])
    ws.append(["put it on grey", "two"])
    ws.append(["put it on black", 3, "stray"])
    book.save(tmp_path / "m.xlsx")
    report = validate_manifest(tmp_path / "m.xlsx", check_images=False)
    assert [(e.row, e.field) for e in report.errors] == [(3, "seed"), (4, "<row>")]
    text = render_report(report)
    assert "row 3 (spreadsheet row 4):\n  seed: must be an integer, got 'two'" in text
    assert "row 4 (spreadsheet row 5):\n  <row>: has a value in column 3 but the header has 2 columns" in text
