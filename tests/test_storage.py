"""The object-store layer: the same behaviour over a local folder, memory:// and S3 (moto over HTTP)."""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import boto3
import pytest
from obstore.exceptions import GenericError, PermissionDeniedError

from kontext_batch.errors import ObjectNotFound, ObjectTooLarge, StorageError, StorageUnavailable
from kontext_batch.io.names import check_object_name
from kontext_batch.io.netguard import FetchPolicy
from kontext_batch.io.read import read_url
from kontext_batch.io.stores import ObjectStore, open_store, translate_error
from tests.s3_server import TEST_CREDENTIALS, closed_port_url, create_bucket, start_moto

BACKENDS = ["local", "memory", "s3"]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return open_store(str(tmp_path / "out"))
    if request.param == "memory":
        return open_store(f"memory://test-{uuid.uuid4().hex}")
    return open_store(request.getfixturevalue("s3_url") + "/run-1")


def test_put_get_roundtrip_and_uri_is_readable(store: ObjectStore) -> None:
    uri = store.put("a/b/c.png", b"\x89PNG data", content_type="image/png")
    assert uri == store.uri("a/b/c.png")
    assert store.get("a/b/c.png") == b"\x89PNG data"
    assert read_url(uri) == b"\x89PNG data"


def test_put_replaces_existing_object(store: ObjectStore) -> None:
    store.put("x.txt", b"one")
    store.put("x.txt", b"two")
    assert store.get("x.txt") == b"two"


def test_put_if_absent_writes_once(store: ObjectStore) -> None:
    assert store.put_if_absent("_inputs/abc.png", b"first") is True
    assert store.put_if_absent("_inputs/abc.png", b"second") is False
    assert store.get("_inputs/abc.png") == b"first"


def test_missing_object_is_file_not_found(store: ObjectStore) -> None:
    with pytest.raises(FileNotFoundError) as info:
        store.get("nope.png")
    assert isinstance(info.value, ObjectNotFound)
    assert info.value.uri == store.uri("nope.png")
    assert store.exists("nope.png") is False
    with pytest.raises(ObjectNotFound):
        read_url(store.uri("nope.png"))


def test_list_is_relative_and_by_folder(store: ObjectStore) -> None:
    for name in ("r/1.png", "r/sub/2.png", "rx/3.png", "top.txt"):
        store.put(name, b"x")
    assert sorted(store.list()) == ["r/1.png", "r/sub/2.png", "rx/3.png", "top.txt"]
    assert sorted(store.list("r")) == ["r/1.png", "r/sub/2.png"]
    assert sorted(store.list("r/")) == ["r/1.png", "r/sub/2.png"]
    assert list(store.list("empty")) == []


def test_delete_and_delete_missing(store: ObjectStore) -> None:
    store.put("d.txt", b"x")
    store.delete("d.txt")
    assert not store.exists("d.txt")
    store.delete("d.txt")  # no error the second time


def test_size_without_reading(store: ObjectStore) -> None:
    store.put("s.bin", b"12345")
    assert store.size("s.bin") == 5


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/passwd", "a\\b", "a//b", "a/", "", "a\x00b"])
def test_unsafe_names_never_reach_the_backend(store: ObjectStore, name: str) -> None:
    with pytest.raises(ValueError):
        store.put(name, b"x")
    with pytest.raises(ValueError):
        store.get(name)
    assert list(store.list()) == []


def test_racing_writers_exactly_one_wins(store: ObjectStore) -> None:
    results: list[bool] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def writer(i: int) -> None:
        barrier.wait()
        won = store.put_if_absent("race.bin", f"writer {i}".encode())
        with lock:
            results.append(won)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    assert store.get("race.bin").startswith(b"writer ")


def test_one_handle_shared_by_threads(store: ObjectStore) -> None:
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(5):
                store.put(f"t{i}/{j}.bin", bytes([i, j]))
                assert store.get(f"t{i}/{j}.bin") == bytes([i, j])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(list(store.list())) == 30


# --- check_object_name ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "..",
        "../a",
        "a/..",
        "./a",
        "/abs",
        "C:/x",
        "a\\b",
        "a//b",
        "a/",
        "x\ny",
        "x\ty",
        "a#1",
        "a?b",
        "/".join(["é" * 120] * 5),  # 1204 bytes
        "x" * 253,  # a file name: staged locally as NAME#1, 255 bytes is too long
        "d" * 256 + "/x.png",  # a folder name
        "é" * 128 + "/x.png",  # a folder name of 128 characters, 256 bytes
        "invoice\u202egnp.png",  # right-to-left override: shows as invoicepng.exe-style lies
        "a\u2066b",
        "a\u200bb",
        "a\u0085b",
        "a\ufeffb",
        "a\u2028b",
    ],
)
def test_check_object_name_refuses(name: str) -> None:
    with pytest.raises(ValueError):
        check_object_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "a.png",
        "run/1/out put.png",
        "ü/日本.webp",
        "a..b.png",
        ".hidden",
        "/".join(["x" * 200] * 5),
        "x" * 252,
        "d" * 255 + "/" + "é" * 126,
        "\U0001f600.png",  # emoji are fine; only invisible characters are refused
    ],
)
def test_check_object_name_accepts(name: str) -> None:
    assert check_object_name(name) == name


def test_the_longest_names_accepted_can_be_written_locally(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    for name in ("d" * 255 + "/" + "é" * 126, "f" * 252):
        assert check_object_name(name) == name
        store.put(name, b"x")
        assert store.get(name) == b"x"
        store.delete(name)
        assert store.put_if_absent(name, b"y")
        assert store.get(name) == b"y"


# --- local specifics -----------------------------------------------------------------------------


def test_plain_relative_folder_is_created_under_base_dir(tmp_path: Path) -> None:
    store = open_store("./output/run", base_dir=tmp_path)
    assert (tmp_path / "output" / "run").is_dir()
    assert store.url == (tmp_path / "output" / "run").resolve().as_uri()
    uri = store.put("with space.png", b"x")
    assert uri.startswith("file://")
    assert "%20" in uri
    assert read_url(uri) == b"x"
    assert (tmp_path / "output" / "run" / "with space.png").read_bytes() == b"x"


def test_file_url_opens_the_same_folder(tmp_path: Path) -> None:
    open_store(str(tmp_path)).put("k.txt", b"v")
    assert open_store(tmp_path.as_uri()).get("k.txt") == b"v"
    assert read_url(str(tmp_path / "k.txt")) == b"v"


def test_local_overwrite_replaces_the_file_not_its_bytes(tmp_path: Path) -> None:
    """Atomic replace: a write renames a new file over the old, so an open reader keeps the old bytes."""
    store = open_store(str(tmp_path))
    store.put("obj.bin", b"old contents")
    os.link(tmp_path / "obj.bin", tmp_path / "reader-view")  # what a concurrent reader holds
    store.put("obj.bin", b"new")
    assert (tmp_path / "reader-view").read_bytes() == b"old contents"
    assert (tmp_path / "obj.bin").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["obj.bin", "reader-view"]  # no staging files


def test_uncreatable_folder_is_storage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(StorageError):
        open_store(str(tmp_path / "file" / "sub"))


def test_read_url_local_errors(tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound):
        read_url(str(tmp_path / "missing.png"))
    with pytest.raises(StorageError):
        read_url(str(tmp_path))
    (tmp_path / "big.bin").write_bytes(b"x" * 100)
    with pytest.raises(ObjectTooLarge) as info:
        read_url((tmp_path / "big.bin").as_uri(), max_bytes=99)
    assert info.value.size == 100


# --- memory specifics ----------------------------------------------------------------------------


def test_memory_namespaces_are_separate() -> None:
    a = open_store("memory://ns-a-" + uuid.uuid4().hex)
    b = open_store("memory://ns-b-" + uuid.uuid4().hex)
    a.put("k", b"1")
    assert not b.exists("k")
    assert list(b.list()) == []
    assert open_store(a.url).get("k") == b"1"  # same process, same data
    assert read_url(a.uri("k")) == b"1"


# --- S3 specifics --------------------------------------------------------------------------------


def test_s3_objects_land_under_prefix_with_content_type(s3_url: str, s3_server: str) -> None:
    store = open_store(s3_url + "/runs/r1/")
    assert store.url == s3_url + "/runs/r1"
    store.put("img/1.png", b"png-bytes")
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    head = client.head_object(Bucket=s3_url.removeprefix("s3://"), Key="runs/r1/img/1.png")
    assert head["ContentType"] == "image/png"
    assert head["ContentLength"] == 9


def test_s3_endpoint_in_url_query_travels_in_uris(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT", "AWS_ALLOW_HTTP"):
        monkeypatch.delenv(key, raising=False)
    bucket = create_bucket(s3_server)
    store = open_store(f"s3://{bucket}/p?endpoint={s3_server}")
    uri = store.put("o.bin", b"abc")
    assert uri == f"s3://{bucket}/p/o.bin?endpoint={s3_server}"
    assert read_url(uri) == b"abc"


def test_s3_missing_bucket_is_storage_error(s3_url: str) -> None:
    store = open_store("s3://no-such-bucket-" + uuid.uuid4().hex[:8])
    with pytest.raises(StorageError) as info:
        store.put("x", b"1")
    assert not isinstance(info.value, StorageUnavailable)


@pytest.mark.integration
def test_s3_unreachable_endpoint_is_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    store = open_store(f"s3://bucket?endpoint={closed_port_url('')}")
    with pytest.raises(StorageUnavailable):
        store.get("x")


def test_s3_server_errors_are_retryable(
    monkeypatch: pytest.MonkeyPatch, http_server: tuple[str, dict[str, tuple[int, bytes]]]
) -> None:
    base, routes = http_server
    routes["/bucket/x"] = (503, b"<Error><Code>SlowDown</Code></Error>")
    for key, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    store = open_store(f"s3://bucket?endpoint={base}")
    with pytest.raises(StorageUnavailable) as info:
        store.get("x")
    assert info.value.retryable


# --- storage errors: one line naming the store and what to check -----------------------------------


def one_line(exc: BaseException) -> str:
    """The message, held to what an operator can read at a glance: one line, no XML, no debug dump."""
    text = str(exc)
    assert "\n" not in text, text
    assert "<" not in text, text
    assert "Debug source" not in text, text
    assert len(text) < 400, text
    return text


@pytest.mark.parametrize("op", ["put", "list", "get"])
def test_a_missing_bucket_says_so_naming_the_store(s3_url: str, op: str) -> None:
    url = f"s3://nosuch-{uuid.uuid4().hex[:8]}/out"
    store = open_store(url)
    with pytest.raises(StorageError) as info:
        store.put("x", b"1") if op == "put" else list(store.list()) if op == "list" else store.get("x")
    assert not isinstance(info.value, StorageUnavailable | ObjectNotFound)
    assert one_line(info.value) == f"{url}: the bucket does not exist (check the bucket name and region, or create it)"


@pytest.mark.integration
def test_wrong_credentials_say_access_denied_and_what_to_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "0")  # this moto checks every request's credentials
    proc, endpoint = start_moto()
    try:
        for key, value in TEST_CREDENTIALS.items():
            monkeypatch.setenv(key, value)
        url = f"s3://any-bucket/out?endpoint={endpoint}"
        with pytest.raises(StorageError) as info:
            open_store(url).put("x", b"1")
    finally:
        proc.kill()
        proc.wait()
    text = one_line(info.value)
    assert text.startswith(f"{url}: access denied")
    assert "InvalidAccessKeyId" in text  # the store's own word for it
    assert "check the credentials" in text


def test_a_refused_permission_says_access_denied_without_the_xml_body(
    monkeypatch: pytest.MonkeyPatch, http_server: tuple[str, dict[str, tuple[int, bytes]]]
) -> None:
    base, routes = http_server
    body = b'<?xml version="1.0"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message>'
    routes["/bucket/out/x"] = (403, body + b"<HostId>" + b"h" * 500 + b"</HostId></Error>")
    for key, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    url = f"s3://bucket/out?endpoint={base}"
    with pytest.raises(StorageError) as info:
        open_store(url).get("x")
    text = one_line(info.value)
    assert text.startswith(f"{url}: access denied (AccessDenied: Access Denied)")
    assert "check the credentials" in text


@pytest.mark.integration
def test_an_unreachable_store_says_so_and_is_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    url = f"s3://bucket/out?endpoint={closed_port_url('')}"
    with pytest.raises(StorageUnavailable) as info:
        open_store(url).get("x")
    text = one_line(info.value)
    assert text.startswith(f"{url}: the object store cannot be reached")
    assert "check the endpoint" in text


@pytest.mark.parametrize(
    ("exc", "url", "words"),
    [
        (
            GenericError(
                "Generic GCS error: Error performing token request: Error performing GET "
                "http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/token?audience=x "
                "in 1ms - Server returned non-2xx status code: 403 Forbidden: resolve_deny\n\nDebug source: ..."
            ),
            "gs://nosuch/out",
            ("no credentials", "GOOGLE_SERVICE_ACCOUNT"),
        ),
        (
            GenericError("Generic MicrosoftAzure error: Account must be specified"),
            "az://nosuch/out",
            ("AZURE_STORAGE_ACCOUNT_NAME",),
        ),
        (
            GenericError(
                "Generic MicrosoftAzure error: ... 404 Not Found: <?xml?><Error><Code>ContainerNotFound</Code>"
            ),
            "az://nosuch/out",
            ("the container does not exist (check the container name", "or create it)"),
        ),
        (
            GenericError("Generic GCS error: ... status code: 404 Not Found: The specified bucket does not exist."),
            "gs://nosuch/out",
            ("the bucket does not exist",),
        ),
        (
            GenericError(
                "Generic S3 error: Received redirect without LOCATION, "
                "this normally indicates an incorrectly configured region"
            ),
            "s3://nosuch/out",
            ("another region", "AWS_REGION"),
        ),
        (PermissionError(13, "Permission denied", "/srv/out/x"), "file:///srv/out", ("access denied", "owner")),
    ],
    ids=[
        "gs-no-credentials",
        "az-no-account",
        "az-no-container",
        "gs-no-bucket",
        "s3-wrong-region",
        "local-permission",
    ],
)
def test_each_kind_of_store_failure_names_the_store_and_what_to_check(
    exc: Exception, url: str, words: tuple[str, ...]
) -> None:
    mapped = translate_error(exc, f"{url}/x", store=url)
    assert isinstance(mapped, StorageError)
    text = one_line(mapped)
    assert text.startswith(url)
    assert all(w in text for w in words), text


def test_a_store_url_with_credentials_in_it_is_shown_without_them() -> None:
    mapped = translate_error(
        PermissionDeniedError("denied"), "az://c/x?sig=SECRET", store="az://user:pw@c/out?sig=SECRET"
    )
    text = one_line(mapped)
    assert "SECRET" not in text
    assert "pw" not in text


@pytest.mark.parametrize("url", ["ftp://host/x", "s3://", "memory://a/../b", "  "])
def test_bad_store_urls(url: str) -> None:
    with pytest.raises((StorageError, ValueError)):
        open_store(url)


# --- read_url over HTTP --------------------------------------------------------------------------

Serve = tuple[str, dict[str, tuple[int, bytes]]]


def test_read_url_http(http_server: Serve) -> None:
    base, routes = http_server
    routes["/ok.png"] = (200, b"image bytes")
    routes["/gone.png"] = (404, b"")
    routes["/busy.png"] = (503, b"")
    routes["/denied.png"] = (403, b"")
    loopback_ok = FetchPolicy(allow_private=True)  # the test server is on 127.0.0.1
    assert read_url(base + "/ok.png", fetch=loopback_ok) == b"image bytes"
    with pytest.raises(ObjectNotFound):
        read_url(base + "/gone.png", fetch=loopback_ok)
    with pytest.raises(StorageUnavailable):
        read_url(base + "/busy.png", fetch=loopback_ok)
    with pytest.raises(StorageError) as info:
        read_url(base + "/denied.png", fetch=loopback_ok)
    assert not info.value.retryable
    with pytest.raises(ObjectTooLarge):
        read_url(base + "/ok.png", max_bytes=5, fetch=loopback_ok)


@pytest.mark.integration
def test_read_url_refused_connection_is_retryable() -> None:
    with pytest.raises(StorageUnavailable):
        read_url(closed_port_url(), fetch=FetchPolicy(allow_private=True))


@pytest.mark.parametrize("url", ["ftp://host/x.png", "data:image/png;base64,AAAA", "s3://bucket-only"])
def test_read_url_refuses_what_it_cannot_read(url: str) -> None:
    with pytest.raises(StorageError):
        read_url(url)


def test_gcs_and_azure_urls_open_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    gs = open_store("gs://bucket/runs/")
    assert gs.url == "gs://bucket/runs"
    assert gs.uri("a/b.png") == "gs://bucket/runs/a/b.png"
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "acct")
    az = open_store("az://container/out")
    assert az.uri("x.png") == "az://container/out/x.png"
