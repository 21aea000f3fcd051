"""The bad-input corpus: every way a manifest or an input image goes wrong, located by row and field.

Images are generated here with Pillow (nothing binary is committed). Each case asserts the row
and field of the error, not just its wording; valid-but-odd inputs assert how they are handled.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

import kontext_batch.io.images as images_mod
from kontext_batch.errors import ConfigError, InvalidImage, ManifestError, RowError
from kontext_batch.io.images import inspect_image, normalise_image
from kontext_batch.io.netguard import FetchPolicy
from kontext_batch.manifest import (
    ImageCache,
    iter_manifest,
    validate_manifest,
)
from tests.s3_server import closed_port_url

# --- image makers --------------------------------------------------------------------------------


def image_bytes(mode: str = "RGB", size: tuple[int, int] = (16, 12), fmt: str = "PNG", **save: object) -> bytes:
    color: object = {"RGB": (200, 30, 30), "RGBA": (200, 30, 30, 128), "CMYK": (0, 200, 200, 0)}.get(mode, 100)
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, fmt, **save)  # type: ignore[arg-type]
    return buf.getvalue()


def png_48bit(width: int = 6, height: int = 4) -> bytes:
    """A 16-bit-per-channel RGB PNG, written by hand (Pillow cannot write one)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pixel = struct.pack(">HHH", 65535, 32768, 0)
    raw = b"".join(b"\x00" + pixel * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def exif_rotated_jpeg(size: tuple[int, int] = (40, 20)) -> bytes:
    """A landscape JPEG whose EXIF says "rotate 90° clockwise to display" (orientation 6)."""
    im = Image.new("RGB", size, (10, 200, 10))
    exif = im.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue()


def noise_png(min_bytes: int) -> bytes:
    """A real, decodable PNG larger than ``min_bytes`` and well under 20 MP (random pixels, stored)."""
    side = int((min_bytes / 3) ** 0.5) + 16
    im = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    buf = io.BytesIO()
    im.save(buf, "PNG", compress_level=0)
    return buf.getvalue()


# --- helpers -------------------------------------------------------------------------------------


def write(tmp_path: Path, text: str | bytes, name: str = "m.csv") -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return p


def located(errors: list[RowError]) -> set[tuple[int, str]]:
    return {(e.row, e.field) for e in errors}


def row_errors(path: Path) -> list[RowError]:
    return [e for outcome in iter_manifest(path) for e in outcome.errors]


def file_error(path: Path) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        list(iter_manifest(path))
    assert [(e.row, e.field) for e in info.value.errors] == [(0, "<file>")]
    return info.value


# --- file level ----------------------------------------------------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    assert "no rows" in str(file_error(write(tmp_path, "")))


def test_header_only(tmp_path: Path) -> None:
    assert "no rows" in str(file_error(write(tmp_path, "prompt,seed\r\n")))


def test_jsonl_with_only_blank_lines(tmp_path: Path) -> None:
    assert "no rows" in str(file_error(write(tmp_path, "\n\n  \n", "m.jsonl")))


@pytest.mark.parametrize(("sep", "label"), [("|", "|")])  # , ; and tab are detected
def test_wrong_delimiter(tmp_path: Path, sep: str, label: str) -> None:
    err = file_error(write(tmp_path, f"prompt{sep}seed\nmake it blue{sep}1\n"))
    assert f"looks {label}-separated" in str(err)


def test_no_prompt_column(tmp_path: Path) -> None:
    err = str(file_error(write(tmp_path, "id,seed\na,1\n")))
    assert "no 'prompt' column in the header (columns: id, seed)" in err


def test_duplicate_header_names(tmp_path: Path) -> None:
    # "seed" is in the input twice (case aside); only the message says which names are duplicated.
    err = str(file_error(write(tmp_path, "prompt,seed,Seed\nx,1,2\n")))
    assert "duplicate column name(s) in the header: seed" in err


def test_unknown_extension(tmp_path: Path) -> None:
    file_error(write(tmp_path, "prompt\nx\n", "m.txt"))


def test_bad_default_model_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        list(iter_manifest(write(tmp_path, "prompt\nx\n"), default_model="nonsense model"))


# --- encodings and line endings ------------------------------------------------------------------


def test_bom_is_ignored(tmp_path: Path) -> None:
    outcomes = list(iter_manifest(write(tmp_path, b"\xef\xbb\xbfprompt,seed\r\nmake it blue,7\r\n")))
    assert outcomes[0].value is not None
    assert outcomes[0].value.params == {"seed": 7}


def test_crlf_and_quoted_newlines(tmp_path: Path) -> None:
    text = 'id,prompt,seed\r\na,"line one\r\nline two, with comma",1\r\nb,plain,2\r\n'
    outcomes = list(iter_manifest(write(tmp_path, text)))
    assert [o.row for o in outcomes] == [1, 2]
    assert outcomes[0].value is not None
    assert outcomes[0].value.prompt == "line one\r\nline two, with comma"
    assert outcomes[1].value is not None
    assert outcomes[1].value.params["seed"] == 2


def test_non_utf8_cell_names_row_and_column(tmp_path: Path) -> None:
    text = "prompt,style\nok,fine\nmake it caf\xe9,x\n".encode("latin-1")
    errors = row_errors(write(tmp_path, text))
    assert located(errors) == {(2, "prompt")}
    assert "UTF-8" in errors[0].msg


def test_non_utf8_jsonl_line(tmp_path: Path) -> None:
    text = b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n'
    assert located(row_errors(write(tmp_path, text, "m.jsonl"))) == {(2, "<json>")}


# --- row structure -------------------------------------------------------------------------------


def test_wrong_cell_count(tmp_path: Path) -> None:
    errors = row_errors(write(tmp_path, "prompt,seed\nmake it blue, please,1\nok,2\nshort\n"))
    assert located(errors) == {(1, "<csv>"), (3, "<csv>")}


def test_blank_lines_keep_their_row_numbers(tmp_path: Path) -> None:
    outcomes = list(iter_manifest(write(tmp_path, "prompt,seed\nx,1\n\ny,abc\n")))
    assert [o.row for o in outcomes] == [1, 3]
    assert located(outcomes[1].errors) == {(3, "seed")}


def test_jsonl_bad_json_and_non_objects(tmp_path: Path) -> None:
    text = '{"prompt": "ok"}\n\n{"prompt": "unterminated\n[1, 2]\n"just a string"\n{"prompt": "fine"}\n'
    outcomes = list(iter_manifest(write(tmp_path, text, "m.jsonl")))
    assert [o.row for o in outcomes] == [1, 3, 4, 5, 6]
    assert located([e for o in outcomes for e in o.errors]) == {(3, "<json>"), (4, "<json>"), (5, "<json>")}
    assert outcomes[-1].value is not None
    assert outcomes[-1].value.id == "6"


def test_jsonl_nested_value_in_known_field(tmp_path: Path) -> None:
    text = '{"prompt": "x", "seed": [1]}\n{"prompt": "y", "meta": {"a": 1}}\n'
    outcomes = list(iter_manifest(write(tmp_path, text, "m.jsonl")))
    assert (1, "seed") in located(outcomes[0].errors)
    assert outcomes[1].value is not None
    assert outcomes[1].value.extra == {"meta": '{"a": 1}'}


def test_duplicate_ids(tmp_path: Path) -> None:
    errors = row_errors(write(tmp_path, "id,prompt\na,x\nb,y\na,z\n"))
    assert located(errors) == {(3, "id")}
    assert "row 1" in errors[0].msg


def test_explicit_id_colliding_with_default_id(tmp_path: Path) -> None:
    # row 2 has no id, so its id is "2" -- which row 1 already claimed.
    errors = row_errors(write(tmp_path, "id,prompt\n2,x\n,y\n"))
    assert located(errors) == {(2, "id")}


def test_unknown_columns_are_carried_as_extra_in_order(tmp_path: Path) -> None:
    outcomes = list(iter_manifest(write(tmp_path, "zeta,prompt,alpha,Note \nz1,x,a1,\n")))
    row = outcomes[0].value
    assert row is not None
    assert list(row.extra.items()) == [("zeta", "z1"), ("alpha", "a1"), ("Note", "")]


def test_value_under_a_nameless_column(tmp_path: Path) -> None:
    errors = row_errors(write(tmp_path, "prompt,seed,\nx,1,\ny,2,oops\n"))
    assert located(errors) == {(2, "column 3")}


# --- fields --------------------------------------------------------------------------------------


def test_missing_and_blank_prompt(tmp_path: Path) -> None:
    assert located(row_errors(write(tmp_path, "prompt,seed\n,1\n   ,2\nok,3\n"))) == {(1, "prompt"), (2, "prompt")}


def test_prompt_over_10000_characters(tmp_path: Path) -> None:
    text = f"prompt\n{'a' * 10_000}\n{'b' * 10_001}\n"
    assert located(row_errors(write(tmp_path, text))) == {(2, "prompt")}


@pytest.mark.parametrize("ratio", ["22:9", "16-9", "0:1", "9:22", "wide", "1:0"])
def test_bad_aspect_ratios(tmp_path: Path, ratio: str) -> None:
    assert located(row_errors(write(tmp_path, f"prompt,aspect_ratio\nx,{ratio}\n"))) == {(1, "aspect_ratio")}


def test_good_aspect_ratios_are_normalised(tmp_path: Path) -> None:
    outcomes = list(iter_manifest(write(tmp_path, 'prompt,aspect_ratio\nx,21:9\ny," 9 : 21 "\n')))
    assert [o.value.params["aspect_ratio"] for o in outcomes if o.value] == ["21:9", "9:21"]


@pytest.mark.parametrize(
    ("seed", "needle"), [("-1", "greater than"), ("abc", "must be an integer"), ("1.5", "must be an integer")]
)
def test_bad_seeds(tmp_path: Path, seed: str, needle: str) -> None:
    errors = row_errors(write(tmp_path, f"prompt,seed\nx,{seed}\n"))
    assert located(errors) == {(1, "seed")}
    assert needle in errors[0].msg


@pytest.mark.parametrize("value", ["7", "-1", "high"])
def test_bad_safety_tolerance(tmp_path: Path, value: str) -> None:
    assert located(row_errors(write(tmp_path, f"prompt,safety_tolerance\nx,{value}\n"))) == {(1, "safety_tolerance")}


def test_bool_parsing(tmp_path: Path) -> None:
    text = "prompt,prompt_upsampling\na,true\nb,NO\nc,1\nd,maybe\n"
    outcomes = list(iter_manifest(write(tmp_path, text)))
    assert [o.value.params["prompt_upsampling"] for o in outcomes if o.value] == [True, False, True]
    assert located([e for o in outcomes for e in o.errors]) == {(4, "prompt_upsampling")}


def test_bad_output_format_and_reseller_ranges(tmp_path: Path) -> None:
    text = "prompt,output_format,steps,guidance_scale\na,gif,,\nb,png,51,\nc,png,10,x\nd,JPG,50,10\n"
    outcomes = list(iter_manifest(write(tmp_path, text)))
    assert located([e for o in outcomes for e in o.errors]) == {
        (1, "output_format"),
        (2, "steps"),
        (3, "guidance_scale"),
    }
    last = outcomes[3].value
    assert last is not None
    assert (last.output_format, last.output_name) == ("jpeg", "4.jpg")


def test_unknown_model(tmp_path: Path) -> None:
    text = "prompt,model\na,prro\nb,MAX\nc,flux-2-pro\nd,bad name!\n"
    outcomes = list(iter_manifest(write(tmp_path, text)))
    assert located([e for o in outcomes for e in o.errors]) == {(1, "model"), (4, "model")}
    assert [o.value.endpoint for o in outcomes if o.value] == ["flux-kontext-max", "flux-2-pro"]


@pytest.mark.parametrize(
    ("cell", "field"),
    [
        ("ftp://host/a.png", "input_image"),
        ("data:image/png;base64,AAAA", "input_image"),
        ("s3://", "input_image"),
    ],
)
def test_unusable_image_references(tmp_path: Path, cell: str, field: str) -> None:
    assert located(row_errors(write(tmp_path, f'prompt,input_image\nx,"{cell}"\n'))) == {(1, field)}


def test_image_columns_must_be_filled_in_order(tmp_path: Path) -> None:
    text = "prompt,input_image,input_image_2,input_image_3\nx,a.png,,c.png\n"
    assert located(row_errors(write(tmp_path, text))) == {(1, "input_image_3")}


# --- output names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "../escape.png",
        "a/../../b.png",
        "/etc/x.png",
        "a\\b.png",
        "a//b.png",
        "_inputs/x.png",
        "{nope}.png",
        "results.csv",
        "gallery.html",
        "_INPUTS/x.png",
        "a" * 300 + ".png",
        "invoice\u202egnp.png",
        "zero\u200bwidth.png",
    ],
)
def test_unsafe_output_names(tmp_path: Path, name: str) -> None:
    assert located(row_errors(write(tmp_path, f'prompt,output_name\nx,"{name}"\n'))) == {(1, "output_name")}


def test_two_rows_writing_one_object(tmp_path: Path) -> None:
    text = "id,prompt,output_name\na,x,same.png\nb,y,other.png\nc,z,same.png\n"
    errors = row_errors(write(tmp_path, text))
    assert located(errors) == {(3, "output_name")}
    assert "row 1" in errors[0].msg


@pytest.mark.parametrize(
    "names",
    [("x.png", "x.png.json"), ("Shoe.png", "shoe.PNG"), ("caf\u00e9.png", "cafe\u0301.png"), ("dir", "dir/y.png")],
)
def test_two_rows_writing_one_file_under_different_names(tmp_path: Path, names: tuple[str, str]) -> None:
    text = "id,prompt,output_name\n" + "".join(f"r{i},x,{n}\n" for i, n in enumerate(names))
    errors = row_errors(write(tmp_path, text))
    assert located(errors) == {(2, "output_name")}
    assert "row 1" in errors[0].msg


def test_template_collision_via_column(tmp_path: Path) -> None:
    text = "prompt,style,output_name\nx,red,{style}.{ext}\ny,red,{style}.{ext}\n"
    assert located(row_errors(write(tmp_path, text))) == {(2, "output_name")}


# --- images: checked by validate_manifest --------------------------------------------------------


def validate_errors(tmp_path: Path, cells: dict[str, bytes | None], field: str = "input_image") -> set[tuple[int, str]]:
    """One row per named image file (None: the file does not exist); return located errors."""
    lines = [f"prompt,{field}" if field == "input_image" else f"prompt,input_image,{field}"]
    ok = tmp_path / "ok.png"
    ok.write_bytes(image_bytes())
    for name, data in cells.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
        lines.append(f"edit,{name}" if field == "input_image" else f"edit,ok.png,{name}")
    report = validate_manifest(write(tmp_path, "\n".join(lines) + "\n"))
    return located(report.errors)


def test_missing_image_file(tmp_path: Path) -> None:
    report = validate_manifest(write(tmp_path, "prompt,input_image\nx,nowhere.png\n"))
    assert located(report.errors) == {(1, "input_image")}
    assert "not found" in report.errors[0].msg
    assert str(tmp_path / "nowhere.png") in report.errors[0].msg


def test_zero_byte_truncated_and_non_image(tmp_path: Path) -> None:
    good_jpeg = image_bytes(size=(256, 256), fmt="JPEG")
    good_png = noise_png(30_000)
    cells = {
        "empty.png": b"",
        "cut.jpg": good_jpeg[: len(good_jpeg) // 2],
        "cut.png": good_png[: len(good_png) // 2],
        "text.png": b"this is not an image\n",
        "fine.png": image_bytes(),
    }
    assert validate_errors(tmp_path, cells) == {
        (1, "input_image"),
        (2, "input_image"),
        (3, "input_image"),
        (4, "input_image"),
    }
    for data, needle in [(b"", "empty"), (cells["cut.png"], "truncated"), (cells["text.png"], "not an image")]:
        with pytest.raises(InvalidImage, match=needle):
            inspect_image(data)
    with pytest.raises(InvalidImage, match="truncated"):
        inspect_image(cells["cut.jpg"])


def test_image_over_20_megabytes(tmp_path: Path) -> None:
    big = noise_png(20_000_001)
    info_px = Image.open(io.BytesIO(big)).size
    assert info_px[0] * info_px[1] < 20_000_000  # it is the bytes, not the pixels, that are too many
    errors = validate_errors(tmp_path, {"big.png": big}, field="input_image_2")
    assert errors == {(1, "input_image_2")}
    with pytest.raises(InvalidImage, match="MB"):
        inspect_image(big)


def test_image_over_20_megapixels(tmp_path: Path) -> None:
    huge = image_bytes("L", (5000, 4100))  # 20.5 MP of one grey: a small file
    assert len(huge) < 1_000_000
    assert validate_errors(tmp_path, {"huge.png": huge}) == {(1, "input_image")}
    with pytest.raises(InvalidImage, match="MP"):
        inspect_image(huge)
    assert inspect_image(image_bytes("L", (5000, 4000))).megapixels == 20.0  # exactly 20 MP is fine


@pytest.mark.integration
def test_unreachable_url(tmp_path: Path) -> None:
    url = closed_port_url("/x.png")
    report = validate_manifest(write(tmp_path, f"prompt,input_image\nx,{url}\n"), fetch=FetchPolicy(allow_private=True))
    assert located(report.errors) == {(1, "input_image")}
    assert url in report.errors[0].msg


def test_one_bad_file_used_by_many_rows_reports_each_row(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"nope")
    text = "prompt,input_image\n" + "".join(f"r{i},bad.png\n" for i in range(50))
    report = validate_manifest(write(tmp_path, text))
    assert located(report.errors) == {(i, "input_image") for i in range(1, 51)}


# --- odd but valid images ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "data", "mode_after", "ext"),
    [
        ("cmyk-jpeg", lambda: image_bytes("CMYK", fmt="JPEG"), "RGB", "jpg"),
        ("16-bit-grey", lambda: image_bytes("I;16"), "L", "png"),
        ("48-bit-rgb", png_48bit, "RGB", "png"),
        ("palette", lambda: image_bytes("P"), "RGB", "png"),
        ("palette-transparent", lambda: image_bytes("P", transparency=0), "RGBA", "png"),
        ("grey-alpha", lambda: image_bytes("LA"), "RGBA", "png"),
        ("bitmap-bmp", lambda: image_bytes("RGB", fmt="BMP"), "RGB", "png"),
        ("gif", lambda: image_bytes("P", fmt="GIF"), "RGB", "png"),
    ],
)
def test_odd_images_are_valid_and_normalised(
    tmp_path: Path, label: str, data: object, mode_after: str, ext: str
) -> None:
    raw = data() if callable(data) else data
    assert isinstance(raw, bytes)
    inspect_image(raw)  # valid: no exception
    out, got_ext = normalise_image(raw)
    assert got_ext == ext
    assert out != raw
    im = Image.open(io.BytesIO(out))
    assert im.mode == mode_after
    assert im.format == ("JPEG" if ext == "jpg" else "PNG")
    assert im.size == Image.open(io.BytesIO(raw)).size
    assert normalise_image(out) == (out, ext)  # idempotent: a normalised image is left alone
    assert validate_errors(tmp_path, {f"{label}.img": raw}) == set()


def test_16_bit_values_are_scaled_not_clipped() -> None:
    buf = io.BytesIO()
    Image.new("I;16", (4, 4), 32896).save(buf, "PNG")  # mid-grey in 16 bits
    out, _ = normalise_image(buf.getvalue())
    assert Image.open(io.BytesIO(out)).getpixel((0, 0)) == 128


def test_exif_rotated_jpeg_is_turned_upright(tmp_path: Path) -> None:
    raw = exif_rotated_jpeg((40, 20))
    assert inspect_image(raw).width == 40
    out, ext = normalise_image(raw)
    assert ext == "jpg"
    upright = Image.open(io.BytesIO(out))
    assert upright.size == (20, 40)
    assert upright.getexif().get(0x0112, 1) == 1
    assert validate_errors(tmp_path, {"rotated.jpg": raw}) == set()


@pytest.mark.parametrize(
    ("mode", "fmt", "ext"),
    [("RGB", "PNG", "png"), ("RGBA", "PNG", "png"), ("L", "JPEG", "jpg"), ("RGB", "WEBP", "webp")],
)
def test_plain_images_are_returned_byte_for_byte(mode: str, fmt: str, ext: str) -> None:
    raw = image_bytes(mode, fmt=fmt)
    out, got_ext = normalise_image(raw)
    assert out is raw
    assert got_ext == ext


def test_cache_reads_a_shared_image_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []
    real = images_mod.read_url

    def counting(url: str, **kw: object) -> bytes:
        reads.append(url)
        return real(url, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(images_mod, "read_url", counting)
    (tmp_path / "shared.png").write_bytes(image_bytes())
    text = "prompt,input_image\n" + "".join(f"r{i},shared.png\n" for i in range(300))
    report = validate_manifest(write(tmp_path, text), cache=ImageCache())
    assert report.rows_valid == 300
    assert reads == [str(tmp_path / "shared.png")]
