"""gs:// and az:// over their own protocols: a GCS emulator and Azurite on loopback, through
kontext_batch's store layer and through a whole run (real workers, the CLI, the API emulator).

Each server is reached with the environment variables a user sets (tests.cloud_servers.gcs_env and
azure_env), put in this process's environment so the workers and the CLI inherit them.
"""

from __future__ import annotations

import io
import json
import os
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest
from PIL import Image

from kontext_batch.errors import ObjectNotFound, StorageError, StorageUnavailable
from kontext_batch.io.read import read_url
from kontext_batch.io.stores import open_store
from tests.cloud_servers import (
    azure_blob_headers,
    azure_env,
    azurite,
    create_azure_container,
    create_gcs_bucket,
    gcs_env,
    gcs_object,
    gcs_server,
)
from tests.e2e_support import product_image, read_results, running_system, write_csv

SCHEMES = ["gs", "az"]
_CLOUD_VARS = ("GOOGLE_", "AZURE_", "AZURITE_")


@pytest.fixture(scope="session")
def gcs_endpoint() -> Iterator[str]:
    with gcs_server() as url:
        yield url


@pytest.fixture(scope="session")
def azurite_endpoint() -> Iterator[str]:
    with azurite() as url:
        yield url


def _clean_cloud_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GOOGLE_*/AZURE_* of the machine's may decide which account a test reaches."""
    for key in list(os.environ):
        if key.startswith(_CLOUD_VARS):
            monkeypatch.delenv(key)


@pytest.fixture(params=SCHEMES)
def bucket_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A fresh empty bucket (gs://) or container (az://) with the environment that reaches it."""
    _clean_cloud_env(monkeypatch)
    if request.param == "gs":
        endpoint: str = request.getfixturevalue("gcs_endpoint")
        env, name = gcs_env(endpoint, tmp_path), create_gcs_bucket(endpoint)
    else:
        endpoint = request.getfixturevalue("azurite_endpoint")
        env, name = azure_env(endpoint), create_azure_container(endpoint)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return f"{request.param}://{name}"


def _stored_content_type(request: pytest.FixtureRequest, url: str, name: str) -> str:
    scheme, _, rest = url.partition("://")
    bucket, _, prefix = rest.partition("/")
    key = f"{prefix}/{name}" if prefix else name
    if scheme == "gs":
        return str(gcs_object(request.getfixturevalue("gcs_endpoint"), bucket, key)["contentType"])
    return str(azure_blob_headers(request.getfixturevalue("azurite_endpoint"), bucket, key)["content-type"])


# --- the store layer --------------------------------------------------------------------------------


def test_round_trip(bucket_url: str, request: pytest.FixtureRequest) -> None:
    store = open_store(bucket_url + "/runs/r1/")
    assert store.url == bucket_url + "/runs/r1"
    uri = store.put("img/1.png", b"\x89PNG one")
    assert uri == f"{bucket_url}/runs/r1/img/1.png"
    assert store.get("img/1.png") == b"\x89PNG one"
    assert read_url(uri) == b"\x89PNG one"  # a worker's read, by full URI
    assert _stored_content_type(request, store.url, "img/1.png") == "image/png"
    store.put("img/1.png", b"\x89PNG two")  # replaces
    assert store.get("img/1.png") == b"\x89PNG two"
    assert store.size("img/1.png") == 8
    assert store.exists("img/1.png")

    assert store.put_if_absent("_inputs/abc.jpg", b"first") is True
    assert store.put_if_absent("_inputs/abc.jpg", b"second") is False
    assert store.get("_inputs/abc.jpg") == b"first"

    store.put("img/sub/2.png", b"x")
    store.put("imgx/3.png", b"x")
    store.put("results.csv", b"row\n", content_type="text/csv")
    assert sorted(store.list()) == ["_inputs/abc.jpg", "img/1.png", "img/sub/2.png", "imgx/3.png", "results.csv"]
    assert sorted(store.list("img")) == ["img/1.png", "img/sub/2.png"]  # a folder, not a string prefix
    assert list(store.list("empty")) == []
    assert sorted(open_store(bucket_url).list()) == [
        f"runs/r1/{n}" for n in ("_inputs/abc.jpg", "img/1.png", "img/sub/2.png", "imgx/3.png", "results.csv")
    ]

    store.delete("imgx/3.png")
    assert not store.exists("imgx/3.png")
    store.delete("imgx/3.png")  # deleting what is gone is no error
    with pytest.raises(ObjectNotFound) as info:
        store.get("nope.png")
    assert info.value.uri == f"{bucket_url}/runs/r1/nope.png"
    with pytest.raises(ObjectNotFound):
        store.size("nope.png")
    with pytest.raises(ObjectNotFound):
        read_url(store.uri("nope.png"))


def test_racing_create_only_writers_exactly_one_wins(bucket_url: str) -> None:
    store = open_store(bucket_url + "/race")
    barrier = threading.Barrier(6)
    won: list[bool] = []
    errors: list[Exception] = []

    def writer(i: int) -> None:
        barrier.wait()
        try:
            won.append(store.put_if_absent("_inputs/same.png", f"writer {i}".encode()))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert won.count(True) == 1
    assert store.get("_inputs/same.png").startswith(b"writer ")


def test_missing_bucket_is_a_one_line_storage_error(bucket_url: str) -> None:
    scheme = bucket_url.partition("://")[0]
    missing = f"{scheme}://kb-missing-{uuid.uuid4().hex[:8]}"
    store = open_store(missing + "/out")
    word = "bucket" if scheme == "gs" else "container"
    for call in (lambda: store.put("x.png", b"1"), lambda: store.get("x.png"), lambda: list(store.list())):
        with pytest.raises(StorageError) as info:
            call()
        assert not isinstance(info.value, StorageUnavailable)  # waiting will not make a bucket
        message = str(info.value)
        assert "\n" not in message
        assert message == f"{missing}/out: the {word} does not exist (check the {word} name and region, or create it)"


def test_gcs_base_url_and_bearer_token(gcs_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The other way to a GCS endpoint: GOOGLE_BASE_URL with a static token (no account file)."""
    _clean_cloud_env(monkeypatch)
    monkeypatch.setenv("GOOGLE_BASE_URL", gcs_endpoint)
    monkeypatch.setenv("GOOGLE_BEARER_TOKEN", "emulator-accepts-any")
    monkeypatch.setenv("GOOGLE_ALLOW_HTTP", "true")
    store = open_store(f"gs://{create_gcs_bucket(gcs_endpoint)}/p")
    store.put("o.bin", b"abc")
    assert read_url(store.uri("o.bin")) == b"abc"
    assert list(store.list()) == ["o.bin"]


def test_plain_http_needs_allow_http(bucket_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without GOOGLE_ALLOW_HTTP / AZURE_ALLOW_HTTP an http:// endpoint is refused, and not retried."""
    monkeypatch.delenv("GOOGLE_ALLOW_HTTP", raising=False)
    monkeypatch.delenv("AZURE_ALLOW_HTTP", raising=False)
    store = open_store(bucket_url + "/p")
    with pytest.raises(StorageError) as info:
        store.put("o.bin", b"abc")
    assert not isinstance(info.value, StorageUnavailable)


def test_azurite_through_use_emulator(azurite_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Azurite's own switch: AZURE_STORAGE_USE_EMULATOR=true (its account, key and plain HTTP implied),
    AZURITE_BLOB_STORAGE_URL for a port other than 10000."""
    _clean_cloud_env(monkeypatch)
    monkeypatch.setenv("AZURE_STORAGE_USE_EMULATOR", "true")
    monkeypatch.setenv("AZURITE_BLOB_STORAGE_URL", azurite_endpoint)
    store = open_store(f"az://{create_azure_container(azurite_endpoint)}/p")
    store.put("o.bin", b"abc")
    assert read_url(store.uri("o.bin")) == b"abc"
    assert list(store.list()) == ["o.bin"]


# --- a whole run ------------------------------------------------------------------------------------


def _manifest(tmp: Path) -> tuple[Path, list[dict[str, object]]]:
    """Ten rows, all to succeed: local input images (staged into the bucket's _inputs/), two images
    in one row, text only; PNG, JPEG and WebP outputs."""
    colours = [(180, 40, 40), (40, 90, 170), (30, 130, 70)]
    for i, colour in enumerate(colours):
        product_image(tmp / "images" / f"p{i}.jpg", colour)
    rows: list[dict[str, object]] = []
    for i in range(7):
        rows.append(
            {
                "id": f"sku-{i}",
                "prompt": f"put product {i} on a pure white background",
                "input_image": f"images/p{i % 3}.jpg",
                "output_format": ["png", "jpeg", "webp"][i % 3],
                "seed": 100 + i,
            }
        )
    rows.append(
        {
            "id": "pair",
            "prompt": "place image 2 beside image 1",
            "input_image": "images/p0.jpg",
            "input_image_2": "images/p1.jpg",
            "output_format": "jpeg",
        }
    )
    rows.append({"id": "text-1", "prompt": "a leather handbag on marble", "aspect_ratio": "16:9"})
    rows.append({"id": "text-2", "prompt": "a ceramic mug on oak", "output_format": "png"})
    header = ["id", "prompt", "input_image", "input_image_2", "aspect_ratio", "output_format", "seed"]
    return write_csv(tmp / "catalogue.csv", header, rows), rows


_FORMAT = {None: "PNG", "png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


@pytest.mark.e2e
def test_whole_run_writes_outputs_sidecars_results_and_gallery(
    bucket_url: str, redis_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    manifest, rows = _manifest(tmp_path)
    out_url = f"{bucket_url}/nightly"
    with running_system(redis_url, log_dir=tmp_path / "logs") as system:
        proc = system.cli("run", str(manifest), "--output", out_url, "--wait")
        assert proc.returncode == 0, proc.stderr[-3000:]
    store = open_store(out_url)

    results = read_results(store.get("results.csv"))
    assert [r["id"] for r in results] == [str(r["id"]) for r in rows]
    assert {r["status"] for r in results} == {"succeeded"}, [(r["id"], r["error"]) for r in results]
    for row, res in zip(rows, results, strict=True):
        assert res["output_uri"].startswith(out_url + "/"), res
        name = res["output_uri"].removeprefix(out_url + "/")
        with Image.open(io.BytesIO(store.get(name))) as im:
            assert im.format == _FORMAT[row.get("output_format")]  # type: ignore[index]
        side = json.loads(store.get(name + ".json"))
        assert side["id"] == res["id"]
        assert side["bfl_task_id"] == res["bfl_task_id"]
        assert len(side["input_digests"]) == sum(1 for k in ("input_image", "input_image_2") if row.get(k))

    # The three local images were staged once each, content-addressed, into the bucket.
    staged = sorted(store.list("_inputs"))
    assert len(staged) == 3, staged
    assert all(re.fullmatch(r"_inputs/[0-9a-f]{64}\.(jpg|png|webp)", n) for n in staged), staged

    page = store.get("gallery.html").decode()
    assert _stored_content_type(request, out_url, "gallery.html").startswith("text/html")
    m = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S)
    assert m is not None
    data = json.loads(m.group(1))
    assert len(data["rows"]) == len(rows)
    at = {f: i for i, f in enumerate(data["fields"])}
    for row in data["rows"]:
        output, inputs = row[at["output"]], row[at["inputs"]]
        assert store.exists(unquote(output)), row  # every link on the page is an object of the store
        assert all(link and store.exists(unquote(link)) for link, _ in inputs), row
    assert sum(len(r[at["inputs"]]) for r in data["rows"]) == sum(
        1 for r in rows for k in ("input_image", "input_image_2") if r.get(k)
    )
