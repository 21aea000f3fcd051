"""Real object-store servers on loopback for the gs:// and az:// tests, each in its own process.

``gcs_server()``      context manager: gcp-storage-emulator (PyPI) with the XML API object_store needs
                      (below); yields its URL. ``create_gcs_bucket(url)`` makes a fresh bucket.
``azurite()``         context manager: Azurite's blob service from .tools/azurite (``bash scripts/setup``
                      installs it from npm); yields its URL (``http://127.0.0.1:PORT``).
                      ``create_azure_container(url)`` makes a fresh container, signed with the dev key.
``gcs_env(...)``, ``azure_env(...)``  the environment variables a user sets to reach such a server.
``gcs_object(...)``, ``azure_blob_headers(...)``  what the server itself recorded for an object.

A server that cannot be started calls :func:`tests.conftest.unavailable`: skipped locally, failed in CI.

Why the GCS server is more than the emulator: object_store (so obstore, so kontext_batch) speaks GCS's
XML API for objects (PUT/GET/HEAD/DELETE ``/BUCKET/OBJECT``, GET ``/BUCKET?list-type=2``), while
gcp-storage-emulator serves the JSON API and, of the XML API, only GET and PUT, without the ETag and
Last-Modified headers object_store requires, and with no HEAD, DELETE, listing or create-only
precondition (object_store's calls get 501 or "ETag Header missing"). So ``python -m
tests.cloud_servers gcs PORT`` runs the emulator's own server (its storage, its object records, its
JSON API, which creates the buckets) and answers those XML calls itself from the same storage, as
GCS documents them: ETag is the quoted MD5 in hex, a create-only put (``x-goog-if-generation-match:
0``) on an existing object is 412, a missing bucket is 404 ``NoSuchBucket``. fake-gcs-server has the
same gap for uploads (XML PUT without a signature is a 400 there).
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import hmac
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from http import HTTPStatus
from http.server import HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, quote, unquote, urlsplit
from xml.sax.saxutils import escape

import httpx

from kontext_batch.run.local import free_port
from tests.conftest import unavailable

__all__ = [
    "AZURITE_ACCOUNT",
    "AZURITE_KEY",
    "azure_blob_headers",
    "azure_env",
    "azurite",
    "create_azure_container",
    "create_gcs_bucket",
    "gcs_env",
    "gcs_object",
    "gcs_server",
]

ROOT = Path(__file__).resolve().parent.parent
AZURITE_BIN = ROOT / ".tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's one account and its published key (the Azure storage emulator's, the same everywhere).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_START_TIMEOUT_S = 30.0


def _wait_listening(proc: subprocess.Popen[bytes], url: str, what: str, log: Path) -> None:
    """Return once ``url`` answers HTTP at all; stop the process and report if it never does."""
    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            unavailable(f"{what} exited with {proc.returncode} at start: {tail}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                _stop(proc)
                unavailable(f"{what} did not answer on {url} within {_START_TIMEOUT_S:g} s")
            time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- GCS -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def gcs_server() -> Iterator[str]:
    """gcp-storage-emulator plus the XML object API, in its own process; yields ``http://127.0.0.1:PORT``."""
    if importlib.util.find_spec("gcp_storage_emulator") is None:
        unavailable("gcp-storage-emulator is not installed (pip install -e '.[test]')")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="gcs-") as tmp:
        log = Path(tmp) / "server.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.cloud_servers", "gcs", str(port)],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_listening(proc, url + "/", "gcp-storage-emulator", log)
            yield url
        finally:
            _stop(proc)


def create_gcs_bucket(url: str, name: str | None = None) -> str:
    """Create a bucket through the emulator's JSON API (as ``gcloud storage buckets create`` does)."""
    bucket = name or f"kb-{uuid.uuid4().hex[:12]}"
    resp = httpx.post(f"{url}/storage/v1/b", json={"name": bucket}, timeout=10)
    resp.raise_for_status()
    return bucket


def gcs_object(url: str, bucket: str, name: str) -> dict[str, Any]:
    """The emulator's own record of an object (JSON API), to see what a write stored."""
    resp = httpx.get(f"{url}/storage/v1/b/{bucket}/o/{quote(name, safe='')}", timeout=10)
    resp.raise_for_status()
    record: dict[str, Any] = resp.json()
    return record


def gcs_env(url: str, folder: Path) -> dict[str, str]:
    """What a user sets for a GCS emulator: a service-account file naming its base URL without OAuth
    (object_store's own recipe) and GOOGLE_ALLOW_HTTP, since the emulator speaks plain HTTP."""
    account = folder / "gcs-emulator-account.json"
    account.write_text(
        json.dumps(
            {"gcs_base_url": url, "disable_oauth": True, "client_email": "", "private_key": "", "private_key_id": ""}
        )
    )
    return {"GOOGLE_SERVICE_ACCOUNT": str(account), "GOOGLE_ALLOW_HTTP": "true"}


def _serve_gcs(port: int) -> None:
    """Run the emulator with the XML object API on 127.0.0.1:``port`` until terminated."""
    # The server process alone needs the emulator (the test process may not have it).
    from gcp_storage_emulator.exceptions import NotFound  # noqa: PLC0415
    from gcp_storage_emulator.handlers import objects  # noqa: PLC0415
    from gcp_storage_emulator.server import RequestHandler  # noqa: PLC0415
    from gcp_storage_emulator.storage import Storage  # noqa: PLC0415

    # The JSON API's first path segments; anything else is /BUCKET[/OBJECT] of the XML API.
    json_roots = {"", "storage", "upload", "download", "batch", "b", "wipe"}

    def md5_hex(obj: dict[str, Any]) -> str:
        return base64.b64decode(obj["md5Hash"]).hex()

    class XmlApiHandler(RequestHandler):  # type: ignore[misc]
        storage: Storage

        def _xml_target(self) -> tuple[str, str, dict[str, list[str]]] | None:
            parts = urlsplit(self.path)
            bucket, _, name = parts.path.lstrip("/").partition("/")
            if bucket in json_roots:
                return None
            return unquote(bucket), unquote(name), parse_qs(parts.query)

        def _reply(self, status: int, headers: dict[str, str], body: bytes = b"", *, length: int | None = None) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: HTTPStatus, code: str, message: str) -> None:
            body = (
                f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
            )
            self._reply(status, {"Content-Type": "application/xml; charset=UTF-8"}, body.encode())

        def _no_bucket(self) -> None:
            self._error(HTTPStatus.NOT_FOUND, "NoSuchBucket", "The specified bucket does not exist.")

        def _object_headers(self, obj: dict[str, Any]) -> dict[str, str]:
            updated = datetime.fromisoformat(obj["updated"])
            return {
                "Content-Type": obj.get("contentType") or "application/octet-stream",
                "ETag": f'"{md5_hex(obj)}"',
                "Last-Modified": email.utils.format_datetime(updated, usegmt=True),
                "x-goog-generation": str(obj["generation"]),
                "x-goog-metageneration": str(obj.get("metageneration", "1")),
                "x-goog-hash": f"crc32c={obj['crc32c']},md5={obj['md5Hash']}",
                "x-goog-stored-content-length": str(obj["size"]),
            }

        def _lookup(self, bucket: str, name: str) -> dict[str, Any] | None:
            try:
                obj: dict[str, Any] = self.storage.get_file_obj(bucket, name)
            except NotFound:
                return None
            return obj

        def do_GET(self) -> None:
            target = self._xml_target()
            if target is None:
                super().do_GET()
            elif not target[1]:
                self._list(target[0], target[2])
            else:
                self._read(*target[:2])

        def do_HEAD(self) -> None:
            target = self._xml_target()
            if target is None or not target[1]:
                self._reply(HTTPStatus.NOT_IMPLEMENTED, {})
            else:
                self._read(*target[:2])

        def _read(self, bucket: str, name: str) -> None:
            if self.storage.get_bucket(bucket) is None:
                if self.command == "HEAD":  # GCS answers a HEAD's error without a body
                    self._reply(HTTPStatus.NOT_FOUND, {})
                else:
                    self._no_bucket()
                return
            obj = self._lookup(bucket, name)
            if obj is None:
                if self.command == "HEAD":
                    self._reply(HTTPStatus.NOT_FOUND, {})
                else:
                    self._error(HTTPStatus.NOT_FOUND, "NoSuchKey", "The specified key does not exist.")
                return
            headers = self._object_headers(obj)
            if self.command == "HEAD":
                self._reply(HTTPStatus.OK, headers, length=int(obj["size"]))
            else:
                self._reply(HTTPStatus.OK, headers, self.storage.get_file(bucket, name))

        def do_PUT(self) -> None:
            target = self._xml_target()
            if target is None or not target[1]:
                super().do_PUT()
                return
            bucket, name, _ = target
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.storage.get_bucket(bucket) is None:
                self._no_bucket()
                return
            match = self.headers.get("x-goog-if-generation-match")
            current = self._lookup(bucket, name)
            if match is not None and match != (str(current["generation"]) if current else "0"):
                self._error(
                    HTTPStatus.PRECONDITION_FAILED,
                    "PreconditionFailed",
                    "At least one of the pre-conditions you specified did not hold.",
                )
                return
            ctype = self.headers.get("Content-Type") or "application/octet-stream"
            base_url = f"http://{self.headers.get('Host')}"
            obj = objects._make_object_resource(base_url, bucket, name, ctype, str(len(data)))
            obj = objects._checksums(data, obj)
            self.storage.create_file(bucket, name, data, obj)
            self._reply(HTTPStatus.OK, {"ETag": f'"{md5_hex(obj)}"', "x-goog-generation": str(obj["generation"])})

        def do_DELETE(self) -> None:
            target = self._xml_target()
            if target is None or not target[1]:
                super().do_DELETE()
                return
            bucket, name, _ = target
            if self.storage.get_bucket(bucket) is None:
                self._no_bucket()
                return
            if self._lookup(bucket, name) is None:
                self._error(HTTPStatus.NOT_FOUND, "NoSuchKey", "The specified key does not exist.")
                return
            self.storage.delete_file(bucket, name)
            self._reply(HTTPStatus.NO_CONTENT, {})

        def _list(self, bucket: str, query: dict[str, list[str]]) -> None:
            """ListObjectsV2, as GCS's XML API answers it: keys in order, pages of max-keys."""

            def arg(key: str) -> str:
                return query.get(key, [""])[0]

            if self.storage.get_bucket(bucket) is None:
                self._no_bucket()
                return
            prefix, delimiter = arg("prefix"), arg("delimiter")
            files, prefixes = self.storage.get_file_list(bucket, prefix or None, delimiter or None)
            after = arg("continuation-token") or arg("start-after")
            if arg("continuation-token"):
                after = base64.urlsafe_b64decode(after).decode()
            entries = sorted([(f["name"], f) for f in files] + [(p, None) for p in prefixes], key=lambda e: e[0])
            entries = [e for e in entries if e[0] > after] if after else entries
            max_keys = int(arg("max-keys") or 1000)
            page, more = entries[:max_keys], len(entries) > max_keys
            parts = [f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix>"]
            parts.append(f"<KeyCount>{len(page)}</KeyCount><MaxKeys>{max_keys}</MaxKeys>")
            parts.append(f"<IsTruncated>{'true' if more else 'false'}</IsTruncated>")
            for key, obj in page:
                if obj is None:
                    parts.append(f"<CommonPrefixes><Prefix>{escape(key)}</Prefix></CommonPrefixes>")
                    continue
                parts.append(
                    f"<Contents><Key>{escape(key)}</Key><Generation>{obj['generation']}</Generation>"
                    f'<LastModified>{obj["updated"]}</LastModified><ETag>"{md5_hex(obj)}"</ETag>'
                    f"<Size>{obj['size']}</Size></Contents>"
                )
            if more:
                token = base64.urlsafe_b64encode(page[-1][0].encode()).decode()
                parts.append(f"<NextContinuationToken>{token}</NextContinuationToken>")
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>'
                '<ListBucketResult xmlns="http://doc.s3.amazonaws.com/2006-03-01">'
                + "".join(parts)
                + "</ListBucketResult>"
            )
            self._reply(HTTPStatus.OK, {"Content-Type": "application/xml; charset=UTF-8"}, body.encode())

    storage = Storage(use_memory_fs=True)

    def handler(*args: Any, **kwargs: Any) -> XmlApiHandler:
        return XmlApiHandler(storage, *args, **kwargs)

    # One request at a time, as the emulator's own server runs: its storage takes no locks, and
    # this also makes a create-only put atomic.
    httpd = HTTPServer(("127.0.0.1", port), handler)
    print(f"gcs emulator with the XML API on http://127.0.0.1:{port}", flush=True)
    httpd.serve_forever()


# --- Azure -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def azurite() -> Iterator[str]:
    """Azurite's blob service in its own process, data in a temporary folder; yields its URL."""
    binary = str(AZURITE_BIN) if AZURITE_BIN.exists() else shutil.which("azurite-blob")
    if binary is None:
        unavailable("Azurite is not installed: run bash scripts/setup (npm install into .tools/azurite)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="azurite-") as tmp:
        log = Path(tmp) / "azurite.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    binary,
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    str(port),
                    "--location",
                    tmp,
                    "--silent",
                    "--skipApiVersionCheck",
                    "--loose",
                    "--disableTelemetry",  # else it posts usage data to an outside address
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_listening(proc, f"{url}/{AZURITE_ACCOUNT}?comp=list", "Azurite", log)
            yield url
        finally:
            _stop(proc)


def _shared_key_headers(method: str, url: str, account: str, key: str) -> dict[str, str]:
    """Headers for a body-less Blob-service request signed with the account key (Shared Key)."""
    headers = {"x-ms-date": email.utils.formatdate(usegmt=True), "x-ms-version": "2021-08-06"}
    parts = urlsplit(url)
    canonical_headers = "".join(f"{k}:{v}\n" for k, v in sorted(headers.items()))
    params = "".join(f"\n{k.lower()}:{v}" for k, v in sorted(parse_qsl(parts.query)))
    # VERB, then eleven standard headers (all empty here), then the x-ms-* headers and the resource.
    to_sign = method + "\n" * 12 + canonical_headers + f"/{account}{parts.path}" + params
    digest = hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()
    headers["Authorization"] = f"SharedKey {account}:{base64.b64encode(digest).decode()}"
    return headers


def create_azure_container(url: str, name: str | None = None) -> str:
    """Create a container on Azurite (``az storage container create`` does this same call)."""
    container = name or f"kb-{uuid.uuid4().hex[:12]}"
    target = f"{url}/{AZURITE_ACCOUNT}/{container}?restype=container"
    resp = httpx.put(target, headers=_shared_key_headers("PUT", target, AZURITE_ACCOUNT, AZURITE_KEY), timeout=10)
    resp.raise_for_status()
    return container


def azure_blob_headers(url: str, container: str, name: str) -> httpx.Headers:
    """A blob's properties as Azurite answers a signed HEAD, to see what a write stored."""
    target = f"{url}/{AZURITE_ACCOUNT}/{container}/{quote(name)}"
    resp = httpx.head(target, headers=_shared_key_headers("HEAD", target, AZURITE_ACCOUNT, AZURITE_KEY), timeout=10)
    resp.raise_for_status()
    return resp.headers


def azure_env(url: str) -> dict[str, str]:
    """What a user sets for an Azure account, here Azurite's: its name, key and blob endpoint, and
    AZURE_ALLOW_HTTP since Azurite speaks plain HTTP."""
    return {
        "AZURE_STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT,
        "AZURE_STORAGE_ACCOUNT_KEY": AZURITE_KEY,
        "AZURE_STORAGE_ENDPOINT": f"{url}/{AZURITE_ACCOUNT}",
        "AZURE_ALLOW_HTTP": "true",
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["gcs"] and len(sys.argv) == 3:
        _serve_gcs(int(sys.argv[2]))
    else:
        sys.exit("usage: python -m tests.cloud_servers gcs PORT")
