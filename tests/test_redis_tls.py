"""``rediss://`` with our own CA: the CLI and real workers over a redis-server that speaks only TLS.

The server listens on its TLS port alone (``--port 0``), so state and broker traffic that forgot TLS
could not work at all: a finished run proves both connections used it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kontext_batch.emulator import EmulatorConfig, LatencySpec
from tests.e2e_support import E2E_KEY, read_results, running_system, write_csv
from tests.redis_servers import Pki, make_pki, redis_server, tls_args

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def mtls_port(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[int]:
    """A TLS-only server that also wants a client certificate signed by the CA."""
    with redis_server(tmp_path_factory.mktemp("mtls"), *tls_args(pki, auth_clients=True), tls=True) as port:
        yield port


@pytest.fixture(scope="module")
def tls_port(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[int]:
    with redis_server(tmp_path_factory.mktemp("tls"), *tls_args(pki), tls=True) as port:
        yield port


def status(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KONTEXT_")}
    return subprocess.run(
        [sys.executable, "-m", "kontext_batch", "status"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_status_works_with_the_ca_and_says_why_without_it(tls_port: int, pki: Pki) -> None:
    url = f"rediss://127.0.0.1:{tls_port}/0"
    ok = status(KONTEXT_REDIS_URL=url, KONTEXT_REDIS_CA=str(pki.ca))
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "Traceback" not in ok.stderr

    refused = status(KONTEXT_REDIS_URL=url)
    assert refused.returncode == 2, refused.stderr[-3000:]
    (line,) = [ln for ln in refused.stderr.splitlines() if ln.strip()]
    assert f"TLS handshake with Redis at {url} failed: certificate verify failed" in line


def test_a_client_certificate_is_sent_when_set(mtls_port: int, pki: Pki) -> None:
    url = f"rediss://127.0.0.1:{mtls_port}/0"
    cert = {"KONTEXT_REDIS_CERT": str(pki.client_cert), "KONTEXT_REDIS_KEY": str(pki.client_key)}
    ok = status(KONTEXT_REDIS_URL=url, KONTEXT_REDIS_CA=str(pki.ca), **cert)
    assert ok.returncode == 0, ok.stderr[-3000:]

    without = status(KONTEXT_REDIS_URL=url, KONTEXT_REDIS_CA=str(pki.ca))
    assert without.returncode == 2, without.stderr[-3000:]
    (line,) = [ln for ln in without.stderr.splitlines() if ln.strip()]
    assert f"TLS handshake with Redis at {url} failed" in line


def test_a_run_through_real_workers_over_mutual_tls(mtls_port: int, pki: Pki, tmp_path: Path) -> None:
    rows: list[dict[str, object]] = [{"id": f"t{i}", "prompt": f"white background {i}"} for i in range(4)]
    manifest = write_csv(tmp_path / "m.csv", ["id", "prompt"], rows)
    out = tmp_path / "out"
    cfg = EmulatorConfig(latency={"*": LatencySpec.fixed(0.2)}, api_keys=(E2E_KEY,))
    with running_system(
        f"rediss://127.0.0.1:{mtls_port}/0",
        emulator=cfg,
        workers=1,
        log_dir=tmp_path / "logs",
        redis_ca=str(pki.ca),
        redis_cert=str(pki.client_cert),
        redis_key=str(pki.client_key),
    ) as system:
        assert system.env()["KONTEXT_REDIS_CA"] == str(pki.ca)  # what the workers were started with
        proc = system.cli("run", str(manifest), "--output", str(out), "--wait", timeout_s=120)
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "logs").glob("*.log"))
    assert proc.returncode == 0, (proc.stderr[-3000:], logs[-3000:])
    results = read_results((out / "results.csv").read_bytes())
    assert [r["status"] for r in results] == ["succeeded"] * 4
    assert "Traceback" not in logs
