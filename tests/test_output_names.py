"""Output names that would land on one file: every clash is refused at validation, naming both rows.

A name clashes with another when the two are one file on some file system the output store may
live on (macOS and Windows fold case; macOS folds Unicode normalisation), when one is the other's
sidecar (``NAME.json``), when one is a folder of the other, or when it is a file the run writes
itself. The boundary cases are checked against a real local store.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

from kontext_batch.errors import RowError
from kontext_batch.io.stores import open_store
from kontext_batch.manifest import iter_manifest
from kontext_batch.manifest.model import render_output_name
from kontext_batch.steps.gallery import GALLERY_NAME
from kontext_batch.steps.results import RESULTS_NAME


def manifest(tmp_path: Path, names: list[str]) -> Path:
    """One JSON Lines row per output name (JSON, so any character can be written)."""
    p = tmp_path / "m.jsonl"
    lines = [json.dumps({"prompt": "edit", "output_name": n}, ensure_ascii=False) for n in names]
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def errors_for(tmp_path: Path, names: list[str]) -> list[RowError]:
    return [e for outcome in iter_manifest(manifest(tmp_path, names)) for e in outcome.errors]


def assert_clash(tmp_path: Path, names: list[str], row: int, earlier: int) -> None:
    errors = errors_for(tmp_path, names)
    assert [(e.row, e.field) for e in errors] == [(row, "output_name")], errors
    assert f"row {earlier}" in errors[0].msg, errors[0].msg


# --- one file under two names --------------------------------------------------------------------


@pytest.mark.parametrize("names", [["x.png", "x.png.json"], ["x.png.json", "x.png"]])
def test_a_name_that_is_another_rows_sidecar_is_refused(tmp_path: Path, names: list[str]) -> None:
    assert_clash(tmp_path, names, row=2, earlier=1)


@pytest.mark.parametrize(
    "names",
    [
        ["Shoe.png", "shoe.PNG"],
        ["a/Shoe.png", "A/shoe.png"],
        ["caf\u00e9.png", "cafe\u0301.png"],  # NFC and NFD spellings of one name
        ["CAFE\u0301.png", "caf\u00e9.png"],
        ["stra\u00dfe.png", "STRASSE.png"],  # casefold, not lower(): ß folds to ss
        ["x.png", "X.PNG.json"],
    ],
)
def test_names_equal_after_case_folding_and_nfc_are_one_file(tmp_path: Path, names: list[str]) -> None:
    assert_clash(tmp_path, names, row=2, earlier=1)


def test_the_clash_names_the_earlier_row_not_only_the_previous_one(tmp_path: Path) -> None:
    assert_clash(tmp_path, ["Shoe.png", "a.png", "b.png", "SHOE.png"], row=4, earlier=1)


# --- a name that is also a folder ----------------------------------------------------------------


@pytest.mark.parametrize(
    "names",
    [
        ["dir", "dir/y.png"],
        ["dir/y.png", "dir"],
        ["Dir", "dir/y.png"],
        ["dir/y.png", "DIR"],
        ["a/b", "a/b/c/d.png"],
        ["a/b/c/d.png", "a/B"],
        ["caf\u00e9", "cafe\u0301/y.png"],
        ["dir", "dir.json/y.png"],  # the sidecar dir.json would be a folder
        ["dir.json/y.png", "dir"],
        ["dir.json", "dir.json/y.png"],
    ],
)
def test_a_name_that_is_a_folder_of_another_is_refused(tmp_path: Path, names: list[str]) -> None:
    assert_clash(tmp_path, names, row=2, earlier=1)


def test_the_message_names_the_folder_as_written(tmp_path: Path) -> None:
    errors = errors_for(tmp_path, ["a/STRASSE", "a/stra\u00dfe/y.png"])
    assert [(e.row, e.field) for e in errors] == [(2, "output_name")]
    assert "its folder 'a/stra\u00dfe' is the same file as the output of row 1" in errors[0].msg


@pytest.mark.parametrize(
    "names",
    [
        ["dir/x.png", "dir/y.png", "dir/sub/z.png"],
        ["dir/y.png", "dira/y.png", "di/y.png", "dir.png"],
        ["a.png", "a.png.jpg", "a.json", "b/a.png"],
        ["x.json.png", "x.png"],
        ["\u00e9t\u00e9/a.png", "\u00c9T\u00c9/b.png"],  # one folder, two files: fine
    ],
)
def test_names_that_share_folders_or_prefixes_are_fine(tmp_path: Path, names: list[str]) -> None:
    assert errors_for(tmp_path, names) == []


# --- names the run writes itself -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("row_id", "template", "written"),
    [
        ("results", "{id}.csv", RESULTS_NAME),  # the name kontext_batch.steps.results writes
        ("Results", "{id}.CSV", RESULTS_NAME),
        ("gallery", "{id}.html", GALLERY_NAME),  # the name kontext_batch.steps.gallery writes
        ("gallery", "{id}.html/x.png", GALLERY_NAME),
        ("runs", "{id}/20261121T224501-3f9a1c/results.csv", "runs"),  # a run's own file (steps.ledger)
        ("Runs", "{id}/x.png", "runs"),
    ],
)
def test_a_template_that_renders_to_a_file_the_run_writes_is_refused(
    tmp_path: Path, row_id: str, template: str, written: str
) -> None:
    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps({"id": row_id, "prompt": "edit", "output_name": template}) + "\n", encoding="utf-8")
    errors = [e for outcome in iter_manifest(p) for e in outcome.errors]
    assert [(e.row, e.field) for e in errors] == [(1, "output_name")], errors
    assert f"{written!r} is reserved for " in errors[0].msg
    if written == "runs":  # says what lives there, so the user knows why
        assert "each run's own results.csv and gallery.html (runs/RUN_ID/)" in errors[0].msg


@pytest.mark.parametrize(
    "name",
    [
        "results.csv",
        "Results.CSV",
        "gallery.html",
        "GALLERY.html",
        "results.csv/x.png",
        "gallery.html/x.png",
        "_inputs",
        "_inputs/x.png",
        "_Inputs/x.png",
        "_inputs/deep/x.png",
        "runs",
        "runs/x.png",
        "RUNS/night-1/results.csv",
    ],
)
def test_reserved_names_are_refused(tmp_path: Path, name: str) -> None:
    errors = errors_for(tmp_path, [name])
    assert [(e.row, e.field) for e in errors] == [(1, "output_name")], errors
    assert "reserved" in errors[0].msg


@pytest.mark.parametrize(
    "name", ["x/results.csv", "results.csv.png", "my_inputs/x.png", "gallery.htm", "runs.png", "x/runs/a.png"]
)
def test_reserved_names_elsewhere_are_fine(tmp_path: Path, name: str) -> None:
    assert errors_for(tmp_path, [name]) == []


# --- characters ----------------------------------------------------------------------------------

_BIDI = [chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)]
_OTHER = ["\x85", "\x9b", "\u200b", "\u200d", "\u00ad", "\ufeff", "\u2028", "\U000e0041"]


@pytest.mark.parametrize("char", _BIDI + _OTHER, ids=lambda c: f"U+{ord(c):04X}")
def test_control_and_format_characters_are_refused(tmp_path: Path, char: str) -> None:
    errors = errors_for(tmp_path, [f"invoice{char}gnp.png"])
    assert [(e.row, e.field) for e in errors] == [(1, "output_name")], errors
    assert f"U+{ord(char):04X}" in errors[0].msg


def test_every_cc_and_cf_character_is_refused() -> None:
    for code in range(0x110000):
        if unicodedata.category(chr(code)) in ("Cc", "Cf"):
            with pytest.raises(ValueError):
                render_output_name(f"a{chr(code)}.png", {})


# --- lengths -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "a" * 300 + ".png",
        "d" * 256 + "/x.png",
        "\u00e9" * 130 + ".png",  # 264 bytes in 134 characters
        "a" * 247 + ".png",  # 251 bytes: its sidecar staged locally would need 258
        "/".join(["d" * 200] * 5) + "/" + "x" * 16,  # 1021 bytes; its sidecar would be 1026
    ],
)
def test_a_segment_too_long_for_a_file_system_is_refused(tmp_path: Path, name: str) -> None:
    errors = errors_for(tmp_path, [name])
    assert [(e.row, e.field) for e in errors] == [(1, "output_name")], errors
    assert "bytes" in errors[0].msg


def test_the_longest_accepted_names_can_be_stored_with_their_sidecars(tmp_path: Path) -> None:
    """Everything validation accepts, a local store can write: output, sidecar, create-only too."""
    folder = "d" * 255
    file_name = "\u00e9" * 121 + "a.png"  # 247 bytes; the sidecar 252; staged as NAME.json#1
    name = f"{folder}/{file_name}"
    assert errors_for(tmp_path, [name]) == []
    assert errors_for(tmp_path, [f"{folder}/a{file_name}"]) != []
    store = open_store(str(tmp_path / "out"))
    store.put(name, b"image")
    assert store.put_if_absent(name + ".json", b"{}")
    assert store.get(name + ".json") == b"{}"
