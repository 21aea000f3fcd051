"""Manifests that are right: what a row becomes, JSONL and stdin, the report, staging, streaming."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import sys
import uuid
from pathlib import Path

import pytest
from PIL import Image

import kontext_batch.io.images as images_mod
from kontext_batch.errors import ManifestError
from kontext_batch.io.netguard import FetchPolicy
from kontext_batch.io.payload import PayloadCache, load_image_payload
from kontext_batch.io.stores import ObjectStore, open_store
from kontext_batch.manifest import (
    ImageCache,
    ImageRef,
    ManifestRow,
    iter_manifest,
    render_report,
    stage_image,
    validate_manifest,
)

#: The test servers listen on 127.0.0.1, which the default policy refuses.
LOOPBACK_OK = FetchPolicy(allow_private=True)

Serve = tuple[str, dict[str, tuple[int, bytes]]]


def png(size: tuple[int, int] = (8, 6), mode: str = "RGB", fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, {"CMYK": (0, 200, 200, 0)}.get(mode, (9, 99, 199))).save(buf, fmt)
    return buf.getvalue()


def write(tmp_path: Path, text: str, name: str = "m.csv") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8", newline="")
    return p


def rows(path: Path | str, **kw: object) -> list[ManifestRow]:
    out = []
    for outcome in iter_manifest(path, **kw):  # type: ignore[arg-type]
        assert outcome.errors == [], outcome.errors
        assert outcome.value is not None
        out.append(outcome.value)
    return out


# --- what a row becomes ---------------------------------------------------------------------------


def test_full_csv_row(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    text = (
        "id,prompt,input_image,input_image_2,seed,aspect_ratio,output_format,safety_tolerance,"
        "prompt_upsampling,model,output_name,batch,notes\n"
        "cat-1,Make the cat blue,in/cat.png,https://example.com/ref.jpg,42,16:9,jpeg,3,yes,max,"
        "{model}/{batch}/{id}-{row:04d}.{ext},b7,first\n"
    )
    (row,) = rows(write(tmp_path, text))
    assert row.row == 1
    assert row.id == "cat-1"
    assert row.endpoint == "flux-kontext-max"
    assert row.prompt == "Make the cat blue"
    assert row.images == (
        ImageRef("input_image", str((tmp_path / "in" / "cat.png").resolve()), True),
        ImageRef("input_image_2", "https://example.com/ref.jpg", False),
    )
    assert dict(row.params) == {
        "seed": 42,
        "aspect_ratio": "16:9",
        "output_format": "jpeg",
        "safety_tolerance": 3,
        "prompt_upsampling": True,
    }
    assert row.output_format == "jpeg"
    assert row.output_name == "flux-kontext-max/b7/cat-1-0001.jpg"
    assert list(row.extra.items()) == [("batch", "b7"), ("notes", "first")]


def test_defaults(tmp_path: Path) -> None:
    got = rows(write(tmp_path, "prompt\nfirst\nsecond\n"), default_model="max")
    assert [(r.id, r.endpoint, r.output_name, r.output_format, dict(r.params)) for r in got] == [
        ("1", "flux-kontext-max", "1.png", "png", {}),
        ("2", "flux-kontext-max", "2.png", "png", {}),
    ]


def test_default_output_name_template(tmp_path: Path) -> None:
    got = rows(write(tmp_path, "id,prompt\na,x\n"), default_output_name="edits/{id}.{ext}")
    assert got[0].output_name == "edits/a.png"


def test_case_and_spaces_in_header_names(tmp_path: Path) -> None:
    (row,) = rows(write(tmp_path, " Prompt , SEED ,Style\nx,5,red\n"))
    assert dict(row.params) == {"seed": 5}
    assert dict(row.extra) == {"Style": "red"}


def test_file_url_and_absolute_paths_are_local(tmp_path: Path) -> None:
    img = tmp_path / "a b.png"
    text = f'prompt,input_image,input_image_2\nx,{img.as_uri()},"{img}"\n'
    (row,) = rows(write(tmp_path, text))
    assert [(r.ref, r.is_local) for r in row.images] == [(str(img), True), (str(img), True)]


# --- JSON and round trips ------------------------------------------------------------------------


def test_jsonl_typed_values_and_line_numbers(tmp_path: Path) -> None:
    text = (
        '{"prompt": "a", "seed": 7, "prompt_upsampling": true, "tag": 3}\n'
        "\n"
        '{"id": "x", "prompt": "b", "guidance_scale": 2.5, "steps": 30, "tag": null, "model": "flux-2-pro"}\n'
    )
    got = rows(write(tmp_path, text, "m.jsonl"))
    assert [(r.row, r.id) for r in got] == [(1, "1"), (3, "x")]
    assert dict(got[0].params) == {"seed": 7, "prompt_upsampling": True}
    assert dict(got[0].extra) == {"tag": "3"}
    assert dict(got[1].params) == {"guidance_scale": 2.5, "steps": 30}
    assert dict(got[1].extra) == {"tag": ""}
    assert got[1].endpoint == "flux-2-pro"


def test_ndjson_extension(tmp_path: Path) -> None:
    assert len(rows(write(tmp_path, '{"prompt": "a"}\n', "m.ndjson"))) == 1


@pytest.mark.parametrize(
    ("text", "fmt"), [('\n{"prompt": "a"}\n', None), ("prompt\na\n", None), ('{"prompt": "a"}\n', "jsonl")]
)
def test_stdin(text: str, fmt: str | None) -> None:
    got = rows("-", stdin=io.StringIO(text), fmt=fmt)
    assert [r.prompt for r in got] == ["a"]


def test_stdin_bytes_with_bom(tmp_path: Path) -> None:
    raw = io.TextIOWrapper(io.BytesIO(b"\xef\xbb\xbfprompt,seed\r\na,1\r\n"), encoding="utf-8")
    (row,) = rows("-", stdin=raw)
    assert dict(row.params) == {"seed": 1}


def test_rows_are_read_only(tmp_path: Path) -> None:
    (row,) = rows(write(tmp_path, "prompt,seed\nx,1\n"))
    with pytest.raises(TypeError):
        row.params["seed"] = 2  # type: ignore[index]


# --- validation report ---------------------------------------------------------------------------


def test_report_prices_600_pro_rows(tmp_path: Path) -> None:
    text = "prompt\n" + "".join(f"edit {i}\n" for i in range(600))
    report = validate_manifest(write(tmp_path, text), check_images=False)
    assert (report.rows_total, report.rows_valid, report.errors_total) == (600, 600, 0)
    assert report.ok
    assert report.cost_credits == 2400
    assert report.cost_usd == 24.0
    assert "600 rows: 2,400 credits ($24.00)" in render_report(report)


def test_report_mixed_models_and_errors(tmp_path: Path) -> None:
    text = "prompt,model,seed\na,pro,\nb,max,\nc,max,\nd,flux-2-pro,\ne,pro,bad\n"
    report = validate_manifest(write(tmp_path, text), check_images=False)
    assert report.per_endpoint == {"flux-2-pro": 1, "flux-kontext-max": 2, "flux-kontext-pro": 1}
    assert report.cost_credits == 4 + 8 + 8 + 4
    assert report.estimated_endpoints == ["flux-2-pro"]
    assert not report.ok
    text_report = render_report(report)
    assert "row 5 (spreadsheet row 6):\n  seed: must be an integer" in text_report
    assert "4 valid rows: 24 credits ($0.24)" in text_report
    assert "flux-kontext-max: 2 rows x 8 = 16 credits" in text_report
    assert "estimated" in text_report


def test_report_keeps_only_the_first_errors(tmp_path: Path) -> None:
    text = "prompt,seed\n" + "".join(f"p,x{i}\n" for i in range(50))
    report = validate_manifest(write(tmp_path, text), check_images=False, max_errors=10)
    assert len(report.errors) == 10
    assert report.errors_total == 50
    assert [e.row for e in report.errors] == list(range(1, 11))
    assert "40 more error(s)" in render_report(report)


def test_report_raises_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(ManifestError):
        validate_manifest(write(tmp_path, "prompt|seed\nx|1\n"))


def test_validation_checks_images_in_invalid_rows_too(tmp_path: Path) -> None:
    report = validate_manifest(write(tmp_path, "prompt,seed,input_image\nx,bad,missing.png\n"))
    assert {(e.row, e.field) for e in report.errors} == {(1, "seed"), (1, "input_image")}


def test_validation_fetches_http_images(tmp_path: Path, http_server: Serve) -> None:
    base, routes = http_server
    routes["/ok.png"] = (200, png())
    routes["/gone.png"] = (404, b"")
    routes["/junk.png"] = (200, b"<html>")
    text = f"prompt,input_image\na,{base}/ok.png\nb,{base}/gone.png\nc,{base}/junk.png\n"
    report = validate_manifest(write(tmp_path, text), fetch=LOOPBACK_OK)
    assert {(e.row, e.field) for e in report.errors} == {(2, "input_image"), (3, "input_image")}


# --- staging -------------------------------------------------------------------------------------


@pytest.fixture(params=["local", "memory", "s3"])
def out_store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return open_store(str(tmp_path / "output"))
    if request.param == "memory":
        return open_store(f"memory://stage-{uuid.uuid4().hex}")
    return open_store(request.getfixturevalue("s3_url"))


def test_staging_uploads_each_local_image_once(tmp_path: Path, out_store: ObjectStore) -> None:
    (tmp_path / "a.png").write_bytes(png())
    (tmp_path / "cmyk.jpg").write_bytes(png(mode="CMYK", fmt="JPEG"))
    text = "prompt,input_image,input_image_2\n" + "".join(f"r{i},a.png,cmyk.jpg\n" for i in range(20))
    cache = ImageCache()
    staged = [tuple(stage_image(ref, out_store, cache) for ref in r.images) for r in rows(write(tmp_path, text))]
    assert len(set(staged)) == 1
    plain, cmyk = staged[0]
    assert plain.sha256 == hashlib.sha256(png()).hexdigest()  # plain PNG: uploaded byte for byte
    assert plain.uri == out_store.uri(f"_inputs/{plain.sha256}.png")
    assert cmyk.uri.endswith(f"_inputs/{cmyk.sha256}.jpg")
    assert sorted(out_store.list("_inputs")) == sorted([f"_inputs/{plain.sha256}.png", f"_inputs/{cmyk.sha256}.jpg"])
    stored = out_store.get(f"_inputs/{cmyk.sha256}.jpg")
    assert hashlib.sha256(stored).hexdigest() == cmyk.sha256
    assert Image.open(io.BytesIO(stored)).mode == "RGB"


def test_restaging_in_a_new_process_uploads_nothing(tmp_path: Path, out_store: ObjectStore) -> None:
    (tmp_path / "a.png").write_bytes(png())
    ref = ImageRef("input_image", str(tmp_path / "a.png"), True)
    first = stage_image(ref, out_store, ImageCache())
    calls: list[bool] = []
    real = out_store.put_if_absent

    def spy(name: str, data: bytes, **kw: str | None) -> bool:
        calls.append(wrote := real(name, data, **kw))
        return wrote

    out_store.put_if_absent = spy  # type: ignore[method-assign]
    again = stage_image(ref, out_store, ImageCache())  # a fresh cache: as after a restart
    assert again == first
    assert calls == [False]


def test_staging_passes_remote_urls_through(tmp_path: Path, http_server: Serve) -> None:
    base, routes = http_server
    routes["/r.png"] = (200, png())
    store = open_store(f"memory://stage-{uuid.uuid4().hex}")
    cache = ImageCache()
    http_ref = ImageRef("input_image", f"{base}/r.png", False)
    s3_ref = ImageRef("input_image_2", "s3://bucket/key.png", False)
    assert stage_image(http_ref, store, cache).sha256 == ""  # never fetched
    validate_manifest(write(tmp_path, f"prompt,input_image\nx,{base}/r.png\n"), cache=cache, fetch=LOOPBACK_OK)
    assert stage_image(http_ref, store, cache).sha256 == hashlib.sha256(png()).hexdigest()
    assert stage_image(s3_ref, store, cache).uri == "s3://bucket/key.png"
    assert list(store.list()) == []


def test_load_image_payload(tmp_path: Path, out_store: ObjectStore) -> None:
    assert load_image_payload("https://x.test/a.png") == "https://x.test/a.png"
    (tmp_path / "a.png").write_bytes(png())
    staged = stage_image(ImageRef("input_image", str(tmp_path / "a.png"), True), out_store, ImageCache())
    payload = load_image_payload(staged.uri)
    assert not payload.startswith("data:")
    assert base64.b64decode(payload) == png()
    # An image a user put in the store themselves is normalised on the way out.
    cmyk_uri = out_store.put("user/cmyk.jpg", png(mode="CMYK", fmt="JPEG"))
    assert Image.open(io.BytesIO(base64.b64decode(load_image_payload(cmyk_uri)))).mode == "RGB"


def test_payload_cache_reads_staged_images_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(str(tmp_path / "out"))
    (tmp_path / "a.png").write_bytes(png())
    staged = stage_image(ImageRef("input_image", str(tmp_path / "a.png"), True), store, ImageCache())
    other = store.put("user/b.png", png((3, 3)))
    reads: list[str] = []
    real = images_mod.read_url

    def counting(url: str, **kw: object) -> bytes:
        reads.append(url)
        return real(url, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(images_mod, "read_url", counting)
    cache = PayloadCache(max_bytes=1_000_000)
    for _ in range(5):
        load_image_payload(staged.uri, cache=cache)
        load_image_payload(other, cache=cache)
    assert reads.count(staged.uri) == 1
    assert reads.count(other) == 5  # not content-addressed: may change, so never cached


# --- streaming -----------------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_large_manifest_streams_in_bounded_memory(tmp_path: Path, kind: str) -> None:
    """100,000 rows: memory grows by the id/name index (~150 B/row), not by the rows (~2 KB each)."""
    n = 100_000
    path = tmp_path / f"big.{kind}"
    with path.open("w", encoding="utf-8") as f:
        if kind == "csv":
            f.write("prompt,seed,aspect_ratio,style\n")
            f.writelines(f"make row {i} blue and shiny,{i},16:9,style-{i % 7}\n" for i in range(n))
        else:
            f.writelines(
                json.dumps({"prompt": f"make row {i} blue", "seed": i, "style": f"s{i % 7}"}) + "\n" for i in range(n)
            )
    count = 0
    rss_at_20k = 0
    for outcome in iter_manifest(path):
        assert outcome.value is not None
        count += 1
        if count == 20_000:
            rss_at_20k = _rss_bytes()
    grown = _rss_bytes() - rss_at_20k
    assert count == n
    # Holding 80,000 more rows would take > 150 MB; the uniqueness index takes ~15 MB.
    assert grown < 60_000_000, f"memory grew by {grown / 1e6:.0f} MB over 80,000 rows"


@pytest.mark.skipif(not os.environ.get("KONTEXT_BIG_TESTS"), reason="set KONTEXT_BIG_TESTS=1 (about 30 s)")
def test_million_row_manifest_validates(tmp_path: Path) -> None:
    path = tmp_path / "million.csv"
    with path.open("w", encoding="utf-8") as f:
        f.write("prompt,seed\n")
        f.writelines(f"edit {i},{i}\n" for i in range(1_000_000))
    report = validate_manifest(path, check_images=False)
    assert (report.rows_total, report.rows_valid, report.cost_credits) == (1_000_000, 1_000_000, 4_000_000)
