"""Reading manifest inputs safely: regular files only, capped reads, bounded URL fetches, and no
fetch into loopback/private/link-local addresses unless the operator allows it.

Every network target here is a server this test starts on 127.0.0.1; other addresses appear only
in checks that refuse them before any connection is made.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from kontext_batch.errors import StorageError, StorageUnavailable, UrlRefused
from kontext_batch.io.guarded import guarded_transport
from kontext_batch.io.images import MAX_IMAGE_BYTES
from kontext_batch.io.netguard import AddressGuard, FetchPolicy, address_problem
from kontext_batch.io.read import read_url
from kontext_batch.manifest.images import resolve_image_ref
from kontext_batch.manifest.validate import validate_manifest
from kontext_batch.secret import Secret
from kontext_batch.settings import Settings
from tests.local_http import LocalServer, local_server

LOOPBACK_OK = FetchPolicy(allow_private=True)


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def manifest(tmp_path: Path, *cells: str) -> Path:
    path = tmp_path / "m.csv"
    path.write_text("prompt,input_image\n" + "".join(f"row {i},{c}\n" for i, c in enumerate(cells)))
    return path


def located(report: object) -> set[tuple[int, str]]:
    return {(e.row, e.field) for e in report.errors}  # type: ignore[attr-defined]


@pytest.fixture
def srv() -> Iterator[LocalServer]:
    with local_server() as server:
        server.routes["/ok.png"] = lambda h: h.reply(200, png(), {"Content-Type": "image/png"})
        yield server


# --- local inputs: regular files only, read with a cap --------------------------------------------


@pytest.mark.timeout(30)  # before the fix, opening the FIFO waited for a writer for ever
def test_a_fifo_input_is_refused_without_opening_it_for_good(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    report = validate_manifest(manifest(tmp_path, "pipe.png"))
    assert located(report) == {(1, "input_image")}
    assert "FIFO" in report.errors[0].msg


@pytest.mark.integration
def test_dev_zero_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero here")
    # In a child whose address space is capped at 1 GiB: reading /dev/zero whole fails there with a
    # MemoryError instead of taking this machine's memory.
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "from kontext_batch.manifest.validate import validate_manifest\n"
        "report = validate_manifest(sys.argv[1])\n"
        "print([(e.row, e.field, e.msg) for e in report.errors])\n"
    )
    path = manifest(tmp_path, "/dev/zero")
    argv = [sys.executable, "-c", code, str(path)]
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(1, 'input_image'" in done.stdout
    assert "character device" in done.stdout


def test_a_local_read_stops_at_the_cap(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (MAX_IMAGE_BYTES + 1))
    report = validate_manifest(manifest(tmp_path, "big.png"))
    assert located(report) == {(1, "input_image")}
    assert "over the 20 MB limit" in report.errors[0].msg


# --- inputs_root ----------------------------------------------------------------------------------


def test_inputs_root_refuses_paths_outside_it(tmp_path: Path) -> None:
    root = tmp_path / "inputs"
    root.mkdir()
    (root / "in.png").write_bytes(png())
    outside = tmp_path / "secret.png"
    outside.write_bytes(png())
    (root / "link.png").symlink_to(outside)  # inside by name, outside once resolved
    path = manifest(root, "in.png", "../secret.png", str(outside), "link.png", outside.as_uri())
    report = validate_manifest(path, inputs_root=root)
    assert located(report) == {(2, "input_image"), (3, "input_image"), (4, "input_image"), (5, "input_image")}
    assert all("outside the inputs folder" in e.msg for e in report.errors)
    assert validate_manifest(path).ok  # without the option, nothing is confined


# --- object-store URLs from a cell carry no endpoint ----------------------------------------------


def test_a_cell_cannot_choose_the_object_store_endpoint(
    tmp_path: Path, srv: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before the fix, this row made the CLI send a signed request, key id and token, to srv.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-TEST-KEY-ID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "test-session-token")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    report = validate_manifest(manifest(tmp_path, f"s3://bucket/x.png?endpoint={srv.base}"), fetch=LOOPBACK_OK)
    assert located(report) == {(1, "input_image")}
    assert "query string" in report.errors[0].msg
    assert srv.seen == []
    with pytest.raises(ValueError, match="query string"):
        resolve_image_ref("gs://bucket/x.png?anything=1", "input_image", tmp_path)
    assert resolve_image_ref("https://host.test/x.png?sig=1", "input_image", tmp_path).ref.endswith("?sig=1")


# --- URL fetches: deadline, redirects -------------------------------------------------------------


def test_a_dripping_url_fails_at_the_deadline(srv: LocalServer) -> None:
    srv.routes["/drip.png"] = lambda h: h.drip(total=1000, every_s=0.2)
    policy = FetchPolicy(allow_private=True, deadline_s=1.0)
    with pytest.raises(StorageError, match="deadline"):
        read_url(srv.url("/drip.png"), timeout_s=10.0, fetch=policy)


def test_redirects_are_followed_and_bounded(srv: LocalServer) -> None:
    srv.routes["/moved.png"] = lambda h: h.redirect("/ok.png")
    srv.routes["/loop.png"] = lambda h: h.redirect("/loop.png")
    srv.routes["/ftp.png"] = lambda h: h.redirect("ftp://127.0.0.1/x.png")
    assert read_url(srv.url("/moved.png"), fetch=LOOPBACK_OK) == png()
    with pytest.raises(UrlRefused, match="more than 2 redirects"):
        read_url(srv.url("/loop.png"), fetch=FetchPolicy(allow_private=True, max_redirects=2))
    assert sum(path == "/loop.png" for path, _ in srv.seen) == 3
    with pytest.raises(StorageError, match="not an http"):
        read_url(srv.url("/ftp.png"), fetch=LOOPBACK_OK)


# --- the address policy ---------------------------------------------------------------------------


def test_a_loopback_url_is_refused_by_default_and_allowed_by_the_setting(tmp_path: Path, srv: LocalServer) -> None:
    path = manifest(tmp_path, srv.url("/ok.png"))
    refused = validate_manifest(path)
    assert located(refused) == {(1, "input_image")}
    assert "loopback" in refused.errors[0].msg
    assert "KONTEXT_ALLOW_PRIVATE_URLS" in refused.errors[0].msg
    assert srv.seen == []  # refused before connecting
    settings = Settings.from_env({"KONTEXT_ALLOW_PRIVATE_URLS": "true"})
    assert validate_manifest(path, fetch=FetchPolicy.from_settings(settings)).ok
    assert len(srv.seen) == 1


def test_the_setting_is_read_once_and_carried_to_workers() -> None:
    assert not Settings.from_env({}).allow_private_urls
    for raw in ("1", "true", "TRUE"):
        on = Settings.from_env({"KONTEXT_ALLOW_PRIVATE_URLS": raw})
        assert on.allow_private_urls
        assert Settings.from_env(on.to_env()).allow_private_urls
    assert not Settings.from_env(Settings.from_env({}).to_env()).allow_private_urls
    tuned = Settings.from_env({"KONTEXT_FETCH_DEADLINE_S": "5", "KONTEXT_MAX_SAMPLE_BYTES": "1000"})
    again = Settings.from_env(tuned.to_env())
    assert (again.fetch_deadline_s, again.max_sample_bytes) == (5.0, 1000)
    assert FetchPolicy.from_settings(again).deadline_s == 5.0


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "non-public"),
        ("fd00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "link-local"),
        ("::ffff:10.0.0.1", "private"),
        ("2002:7f00:1::", "loopback"),  # 6to4 wrapping 127.0.0.1
        ("224.0.0.1", "multicast"),
        ("93.184.216.34", None),
        ("2606:4700::1111", None),
    ],
)
def test_address_problem(address: str, problem: str | None) -> None:
    assert address_problem(address) == problem


def resolver_of(table: dict[str, list[str]]) -> AddressGuard:
    return AddressGuard(resolver=lambda host, port: table[host])


def test_every_address_of_a_host_is_checked() -> None:
    guard = resolver_of(
        {
            "images.example": ["93.184.216.34"],
            "intranet.example": ["10.0.0.5"],
            "mixed.example": ["93.184.216.34", "127.0.0.1"],  # one bad address refuses the host
            "mapped.example": ["::ffff:127.0.0.1"],
            "metadata.example": ["169.254.169.254"],
        }
    )
    assert guard.resolve("images.example", 443) == ["93.184.216.34"]
    for host in ("intranet.example", "mixed.example", "mapped.example", "metadata.example"):
        with pytest.raises(UrlRefused) as info:
            guard.resolve(host, 443)
        assert info.value.host == host
    for literal in ("127.0.0.1", "[::1]", "0.0.0.0", "[::ffff:7f00:1]"):
        with pytest.raises(UrlRefused):
            guard.check_url(f"http://{literal}:8080/x.png")
    # A redirect from a public host to one that resolves into the intranet is refused the same way:
    with pytest.raises(UrlRefused):
        guard.check_url("https://intranet.example/x.png")
    assert AddressGuard(allow_private=True, resolver=lambda h, p: ["10.0.0.5"]).resolve("intranet.example", 80)


def test_the_connection_goes_to_the_checked_address(srv: LocalServer) -> None:
    """A guarded transport connects to the addresses the guard returned, not to a second lookup, so
    a DNS answer that changes between check and connect cannot move the connection (rebinding)."""
    calls: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"]

    port = srv.base.rsplit(":", 1)[1]
    allowed = httpx.Client(transport=guarded_transport(AddressGuard(allow_private=True, resolver=resolver)))
    with allowed:
        assert allowed.get(f"http://images.invalid:{port}/ok.png").content == png()
    assert calls == ["images.invalid"]
    refused = httpx.Client(transport=guarded_transport(AddressGuard(resolver=resolver)))
    with refused, pytest.raises(UrlRefused):
        refused.get(f"http://images.invalid:{port}/ok.png")
    assert len(srv.seen) == 1


def test_a_redirect_into_loopback_is_refused_by_default(srv: LocalServer) -> None:
    srv.routes["/moved.png"] = lambda h: h.redirect("/ok.png")
    with pytest.raises(UrlRefused, match="loopback"):
        read_url(srv.url("/moved.png"))
    assert srv.seen == []


# --- a run honours the setting and the confinement ------------------------------------------------


def test_start_run_reads_the_setting_and_inputs_root(tmp_path: Path, srv: LocalServer, redis_url: str) -> None:
    from kontext_batch.errors import ManifestError  # noqa: PLC0415
    from kontext_batch.run.enqueue import RunRequest, start_run  # noqa: PLC0415 - needs Redis, like the fixture
    from kontext_batch.runtime import Runtime  # noqa: PLC0415
    from tests.pipeline_support import InlineScheduler, inline_runtime  # noqa: PLC0415

    def runtime(**extra: object) -> Runtime:
        base = Settings(api_key=Secret("k"), api_base=srv.base, redis_url=redis_url)
        return inline_runtime(base.with_(**extra), InlineScheduler())

    path = manifest(tmp_path, srv.url("/ok.png"))
    out = f"memory://run-{tmp_path.name}"
    with pytest.raises(ManifestError, match="loopback"):
        start_run(runtime(), RunRequest(str(path), out))
    assert start_run(runtime(allow_private_urls=True), RunRequest(str(path), out)).total == 1
    out = out + "-2"  # the first run still "uses" that output (no worker runs it here)
    (tmp_path / "inputs").mkdir()
    (tmp_path / "a.png").write_bytes(png())
    local = manifest(tmp_path, "a.png")
    with pytest.raises(ManifestError, match="outside the inputs folder"):
        start_run(runtime(), RunRequest(str(local), out, inputs_root=tmp_path / "inputs"))


def test_errors_name_a_url_without_its_signature(srv: LocalServer) -> None:
    # A presigned URL's query is a credential: the request carries it, no message does.
    signed = "?X-Amz-Signature=s3cr3t-sig&X-Amz-Credential=AKIA-key"
    srv.routes["/gone.png"] = lambda h: h.reply(500, b"boom")
    srv.routes["/drip.png"] = lambda h: h.drip(total=1000, every_s=0.2)
    srv.routes["/ftp.png"] = lambda h: h.redirect("ftp://127.0.0.1/x.png?token=ftp-secret")
    cases = [
        ("/gone.png", LOOPBACK_OK),
        ("/drip.png", FetchPolicy(allow_private=True, deadline_s=0.5)),
        ("/ftp.png", LOOPBACK_OK),
    ]
    for path, policy in cases:
        with pytest.raises((StorageError, StorageUnavailable)) as err:
            read_url(srv.url(path) + signed, timeout_s=10.0, fetch=policy)
        assert path in str(err.value)
        assert "s3cr3t" not in str(err.value)
        assert "AKIA" not in str(err.value)
        assert "ftp-secret" not in str(err.value)
    assert any("s3cr3t-sig" in p for p, _ in srv.seen)  # the request itself kept the signature
