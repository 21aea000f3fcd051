"""gallery --presign: the review page for a private bucket, every link in it presigned.

The browser test runs a real run (manifest, staged inputs, emulator, inline pipeline) into moto's S3,
which refuses anonymous reads (asserted first), then opens what ``gallery RUN --presign 1h`` printed
in headless Chromium: every image must load. The plain gallery.html, opened the same way (through a
presigned link to the page itself: what a user of a private bucket did), must show every image
broken, so the test can fail. Chromium is Debian's ``chromium`` (``scripts/setup`` installs it):
without it the browser test skips locally and fails in CI.

moto checks that a request is signed, not the signature nor its expiry: the S3 links' signatures are
checked against botocore's SigV4 here instead. Azurite does check a SAS's signature and expiry, so the
az:// test forges one.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, parse_qsl, quote, urlencode, urlsplit

import httpx
import pytest
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from kontext_batch.emulator import Emulator, EmulatorConfig, LatencySpec
from kontext_batch.errors import PresignRefused
from kontext_batch.io.names import GALLERY_NAME, PRESIGNED_GALLERY_NAME
from kontext_batch.io.sign import MAX_PRESIGN_S, Presigner
from kontext_batch.io.stores import open_store
from kontext_batch.run.enqueue import RunRequest, start_run
from kontext_batch.runtime import Runtime
from kontext_batch.secret import Secret
from kontext_batch.settings import Settings
from tests.cloud_servers import AZURITE_ACCOUNT, azure_env, azurite, create_azure_container
from tests.conftest import unavailable
from tests.e2e_support import product_image, write_csv
from tests.pipeline_support import InlineScheduler, inline_runtime

KEY = "presign-test-key"
# moto takes any secret; a distinctive one shows whether it leaked anywhere.
SECRET = "presign-secret-0123456789abcdefSECRET"
ACCESS_KEY_ID = "testing"


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kontext_batch", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _env(rt: Runtime) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("KONTEXT_")} | rt.settings.to_env()


# --- the signer, offline --------------------------------------------------------------------------


@pytest.fixture
def s3_offline(monkeypatch: pytest.MonkeyPatch) -> str:
    """An s3:// URL with static credentials and an endpoint nothing listens on: signing is offline."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    return "s3://private-bucket/night 1"


@pytest.mark.parametrize("duration_s", [MAX_PRESIGN_S + 1, 8 * 86_400, 0, 0.5, -1])
def test_a_duration_outside_the_backends_range_is_refused(s3_offline: str, duration_s: float) -> None:
    with pytest.raises(PresignRefused, match=r"from 1 second to 7 days") as caught:
        Presigner(open_store(s3_offline), duration_s)
    assert caught.value.url.startswith("s3://private-bucket")


def test_the_longest_link_is_seven_days_and_carries_no_secret(s3_offline: str) -> None:
    url = Presigner(open_store(s3_offline), MAX_PRESIGN_S).url("edits/sku 1.png")
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    assert parts.path == "/private-bucket/night%201/edits/sku%201.png"
    assert query["X-Amz-Expires"] == [str(MAX_PRESIGN_S)]
    assert query["X-Amz-Credential"][0].startswith(f"{ACCESS_KEY_ID}/")
    assert re.fullmatch(r"[0-9a-f]{64}", query["X-Amz-Signature"][0])
    assert SECRET not in url


def _sigv4(url: str, secret: str) -> tuple[str, str]:
    """The link's signature, and SigV4's for the same request as botocore computes it with ``secret``."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    signature = query.pop("X-Amz-Signature")
    unsigned = parts._replace(query=urlencode(query, quote_via=quote)).geturl()
    request = AWSRequest(method="GET", url=unsigned, headers={"host": parts.netloc})
    request.context["timestamp"] = query["X-Amz-Date"]
    auth = S3SigV4QueryAuth(Credentials(ACCESS_KEY_ID, secret), "s3", "us-east-1", expires=3600)
    return signature, auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)


@pytest.mark.parametrize("name", ["edits/sku-1.png", "edits/sku 1.png", "edits/é+x%.png"])
def test_an_s3_link_carries_sigv4s_signature(s3_offline: str, name: str) -> None:
    # moto does not check signatures: botocore's SigV4 does, for names that need encoding too.
    url = Presigner(open_store(s3_offline), 3600).url(name)
    signature, expected = _sigv4(url, SECRET)
    assert signature == expected
    assert _sigv4(url, SECRET + "x")[1] != signature


def test_a_pages_links_are_signed_and_absolute_ones_kept(s3_offline: str) -> None:
    signer = Presigner(open_store(s3_offline), 3600)
    assert SECRET not in repr(signer)
    assert signer.link("https://cdn.example.com/a.png?x=1") == "https://cdn.example.com/a.png?x=1"
    signed = urlsplit(signer.link("_inputs/ab%20c.png"))
    assert signed.path == "/private-bucket/night%201/_inputs/ab%20c.png"
    assert parse_qs(signed.query)["X-Amz-Expires"] == ["3600"]


@pytest.mark.parametrize("where", ["folder", "file", "memory"])
def test_a_store_that_cannot_sign_is_refused_naming_those_that_do(tmp_path: Path, where: str) -> None:
    url = {"folder": str(tmp_path / "out"), "file": (tmp_path / "out").as_uri(), "memory": "memory://ns"}[where]
    with pytest.raises(PresignRefused) as caught:
        Presigner(open_store(url), 3600)
    message = str(caught.value)
    assert "presigning needs an object store (s3:// or az://)" in message
    assert ("memory://" if where == "memory" else "local folder") in message


def test_gs_is_refused_saying_which_stores_sign() -> None:
    # object_store signs GCS links with a service account's key or IAM's signBlob: neither runs offline here.
    with pytest.raises(PresignRefused, match=r"presigning signs s3:// or az:// stores, not gs:// yet"):
        Presigner(open_store("gs://some-bucket/p"), 3600)


# --- the command ---------------------------------------------------------------------------------


@pytest.fixture
def registered(redis_url: str) -> Iterator[Runtime]:
    """A Runtime on the test Redis (no run yet): the refusals need a run to refuse, not a finished one."""
    rt = inline_runtime(Settings(api_key=Secret(KEY), redis_url=redis_url), InlineScheduler())
    try:
        yield rt
    finally:
        rt.close()


def test_gallery_presign_refuses_a_local_output_in_one_line(registered: Runtime, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    registered.runs.register("r-local", {"id": "r-local", "output": out.as_uri(), "total": 0})
    done = _cli(_env(registered), "gallery", "r-local", "--presign", "1h")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "presigning needs an object store (s3:// or az://)" in lines[0]
    assert done.stdout == ""
    assert list(out.iterdir()) == []  # nothing written


def test_gallery_presign_refuses_eight_days_in_one_line(registered: Runtime, s3_url: str) -> None:
    registered.runs.register("r-s3", {"id": "r-s3", "output": s3_url, "total": 0})
    done = _cli(_env(registered), "gallery", "r-s3", "--presign", "8d")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "from 1 second to 7 days" in lines[0]
    assert "not 8 days" in lines[0]
    assert list(open_store(s3_url).list()) == []  # nothing written


# --- in the browser, from a private bucket ----------------------------------------------------------


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    unavailable("no chromium on PATH (Debian: apt-get install chromium; bash scripts/setup does it)")
    raise AssertionError("unreachable")


class _Dom(HTMLParser):
    """The dumped DOM's body attributes and images."""

    def __init__(self) -> None:
        super().__init__()
        self.body: dict[str, str] = {}
        self.imgs: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.body = a
        elif tag == "img":
            self.imgs.append(a)


def _open_in_chromium(url: str, profile: Path) -> _Dom:
    """The page's DOM once its images settled: the page itself counts them (``data-images`` on the
    body: ``complete`` when every <img> decoded with naturalWidth > 0, ``errors`` when some did not)."""
    done = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=15000",  # virtual time waits while fetches are pending
            "--window-size=1400,4000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    dom = _Dom()
    dom.feed(done.stdout)
    return dom


@pytest.mark.e2e
def test_presigned_gallery_shows_every_image_from_a_private_bucket(
    redis_url: str, s3_url: str, s3_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _chromium()  # before the run: without a browser there is nothing to check
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    output = f"{s3_url}/night 1"  # a prefix with a space: links must be encoded
    images = tmp_path / "manifest" / "images"
    for i, colour in enumerate([(180, 40, 40), (40, 140, 60), (40, 70, 170)]):
        product_image(images / f"p{i}.jpg", colour, size=(320, 240))
    rows = [
        {
            "id": f"sku-{i}",
            "prompt": f"Put product {i} on white" + (" [emulator:error]" if i == 5 else ""),
            "input_image": f"images/p{i % 3}.jpg",
            "input_image_2": "images/p0.jpg" if i == 2 else "",
            "output_format": "png",
            "output_name": "edits/{id}.{ext}",
        }
        for i in range(1, 6)
    ]
    manifest = write_csv(
        tmp_path / "manifest" / "m.csv",
        ["id", "prompt", "input_image", "input_image_2", "output_format", "output_name"],
        rows,
    )
    n_images = 6 + 4  # six inputs (row 2 has two), four outputs (row 5 fails)
    with Emulator(EmulatorConfig(latency={"*": LatencySpec.fixed(0.05)}, seed=3)) as emu:
        s = Settings(
            api_key=Secret(KEY),
            api_base=emu.base_url,
            redis_url=redis_url,
            poll_first_s=0.05,
            poll_min_s=0.05,
            retry_base_s=0.01,
            retry_max_s=0.05,
            http_timeout_s=5.0,
        )
        sched = InlineScheduler()
        rt = inline_runtime(s, sched)
        try:
            run_id = start_run(rt, RunRequest(str(manifest), output)).run_id
            sched.run(rt)
            store = open_store(output)
            assert store.exists(GALLERY_NAME)

            # The bucket is private: an output and the plain page answer an anonymous GET with 403.
            bucket_path = f"{s3_server}/{urlsplit(s3_url).netloc}/night%201"
            for name in ("edits/sku-1.png", GALLERY_NAME):
                assert store.exists(name)
                assert httpx.get(f"{bucket_path}/{name}", timeout=10).status_code == 403

            done = _cli(_env(rt), "gallery", run_id, "--presign", "1h")
        finally:
            rt.close()
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    page_url = lines[0]
    assert urlsplit(page_url).path == f"/{urlsplit(s3_url).netloc}/night%201/{PRESIGNED_GALLERY_NAME}"
    assert parse_qs(urlsplit(page_url).query)["X-Amz-Expires"] == ["3600"]
    page = store.get(PRESIGNED_GALLERY_NAME).decode("utf-8")
    assert SECRET not in page
    assert httpx.get(page_url, timeout=10).status_code == 200
    results = re.search(r'<a href="([^"]*)">results.csv</a>', page)
    assert results is not None
    assert httpx.get(html.unescape(results.group(1)), timeout=10).text.startswith("row,")

    dom = _open_in_chromium(page_url, tmp_path / "chromium-signed")
    assert len(dom.imgs) == n_images
    for img in dom.imgs:
        query = parse_qs(urlsplit(img["src"]).query)
        assert query["X-Amz-Expires"] == ["3600"], img
        assert query["X-Amz-Credential"][0].startswith(f"{ACCESS_KEY_ID}/")
    assert dom.body.get("data-images") == "complete", dom.body
    assert dom.body.get("data-images-loaded") == str(n_images)
    assert dom.body.get("data-images-failed") == "0"

    # The plain page, opened through a presigned link to itself, as before: every image broken.
    plain = _open_in_chromium(Presigner(store, 3600).url(GALLERY_NAME), tmp_path / "chromium-plain")
    assert len(plain.imgs) == n_images
    assert plain.body.get("data-images") == "errors", plain.body
    assert plain.body.get("data-images-loaded") == "0"
    assert plain.body.get("data-images-failed") == str(n_images)


@pytest.mark.integration
def test_presigned_gallery_from_a_private_azure_container(
    registered: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Azurite checks a SAS's signature and expiry, as Azure does: what moto does not."""
    _chromium()
    with azurite() as endpoint:
        for key, value in azure_env(endpoint).items():
            monkeypatch.setenv(key, value)
        container = create_azure_container(endpoint)
        output = f"az://{container}/night1"
        store = open_store(output)
        for i, colour in enumerate([(180, 40, 40), (40, 140, 60)]):
            picture = product_image(tmp_path / f"p{i}.png", colour, size=(64, 48))
            store.put(f"_inputs/in{i}.png", picture.read_bytes())
            store.put(f"edits/sku-{i}.png", picture.read_bytes())
        rt = registered
        rt.runs.register("r-az", {"id": "r-az", "output": store.url, "total": 2})
        rt.runs.put_rows(
            "r-az",
            [(i + 1, {"id": f"sku-{i}", "prompt": "p", "images": [store.uri(f"_inputs/in{i}.png")]}) for i in range(2)],
        )
        for i in range(2):
            rt.runs.record("r-az", i + 1, {"status": "succeeded", "output_uri": store.uri(f"edits/sku-{i}.png")})
        anonymous = f"{endpoint}/{AZURITE_ACCOUNT}/{container}/night1/edits/sku-0.png"
        assert httpx.get(anonymous, timeout=10).status_code == 403

        done = _cli(_env(rt), "gallery", "r-az", "--presign", "1h")
        assert done.returncode == 0, done.stderr
        page_url = done.stdout.strip()
        assert "sig=" in page_url
        assert os.environ["AZURE_STORAGE_ACCOUNT_KEY"] not in done.stdout + done.stderr
        assert os.environ["AZURE_STORAGE_ACCOUNT_KEY"] not in store.get(PRESIGNED_GALLERY_NAME).decode()
        dom = _open_in_chromium(page_url, tmp_path / "chromium")
        assert len(dom.imgs) == 4
        assert all("sig=" in img["src"] for img in dom.imgs)
        assert dom.body.get("data-images") == "complete", dom.body
        # A signature Azurite checks: one changed character and the object is refused.
        src = dom.imgs[0]["src"]
        at = src.index("sig=") + len("sig=")
        forged = src[:at] + ("B" if src[at] != "B" else "C") + src[at + 1 :]
        assert httpx.get(src, timeout=10).status_code == 200
        assert httpx.get(forged, timeout=10).status_code == 403

        # A name Azure's links cannot carry (a space): refused in one line, and no page written.
        store.delete(PRESIGNED_GALLERY_NAME)
        rt.runs.register("r-az2", {"id": "r-az2", "output": store.url, "total": 1})
        rt.runs.put_rows("r-az2", [(1, {"id": "sku 0", "prompt": "p", "images": []})])
        rt.runs.record("r-az2", 1, {"status": "succeeded", "output_uri": store.put("edits/sku 0.png", b"x")})
        refused = _cli(_env(rt), "gallery", "r-az2", "--presign", "1h")
        assert refused.returncode == 2, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert "edits/sku 0.png: an Azure link to a name with a space" in refused.stderr
        assert not store.exists(PRESIGNED_GALLERY_NAME)
