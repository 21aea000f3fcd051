"""gallery --presign's signer (kontext_batch.io.sign): links into a private bucket, signed offline.

moto checks that a request is signed, not the signature nor its expiry: the S3 links' signatures are
checked against botocore's SigV4 here instead.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, parse_qsl, quote, urlencode, urlsplit

import pytest
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from kontext_batch.errors import PresignRefused
from kontext_batch.io.sign import MAX_PRESIGN_S, Presigner
from kontext_batch.io.stores import open_store
from kontext_batch.runtime import Runtime

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
