"""`run` as a user calls it: `--local --emulator`, `demo`, stdin, `--skip-invalid`; `follow` and `cancel` on its runs.

Each test is the CLI as a real process with its private Redis, emulator and worker processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from kontext_batch.emulator import Emulator, EmulatorConfig, LatencySpec
from kontext_batch.run.local import WorkerPool
from kontext_batch.secret import Secret
from kontext_batch.settings import Settings
from tests.e2e_support import product_image, read_results, write_csv

pytestmark = pytest.mark.e2e


def _cli(*args: str, cwd: Path, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KONTEXT_")}
    return subprocess.run(
        [sys.executable, "-m", "kontext_batch", *args],
        cwd=cwd,
        env={**clean, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("provider", ["bfl", "reseller"])
def test_run_local_emulator_with_each_provider(tmp_path: Path, provider: str) -> None:
    product_image(tmp_path / "shoe.jpg", (120, 40, 40))
    rows = [{"id": f"r{i}", "prompt": f"white background {i}", "input_image": "shoe.jpg"} for i in range(4)]
    manifest = write_csv(tmp_path / "m.csv", ["id", "prompt", "input_image"], rows)
    proc = _cli(
        "run",
        str(manifest),
        "--local",
        "--emulator",
        "-o",
        str(tmp_path / "out"),
        cwd=tmp_path,
        KONTEXT_PROVIDER=provider,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    if provider == "reseller":
        assert "/reseller/v1" in proc.stderr  # the base the reseller's client needs, announced
    results = read_results((tmp_path / "out" / "results.csv").read_bytes())
    assert [r["status"] for r in results] == ["succeeded"] * 4
    assert all((tmp_path / "out" / f"r{i}.png").stat().st_size > 0 for i in range(4))


@pytest.mark.parametrize("provider", ["bfl", "reseller"])
def test_demo_with_each_provider(tmp_path: Path, provider: str) -> None:
    out = tmp_path / "demo"
    proc = _cli("demo", "-o", str(out), "--time-scale", "0.05", cwd=tmp_path, KONTEXT_PROVIDER=provider)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results((out / "results.csv").read_bytes())
    assert len(results) == 20
    assert {r["status"] for r in results} == {"succeeded"}


def test_skip_invalid_with_a_broken_image_finishes_with_that_row_invalid(tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    product_image(tmp_path / "ok.jpg", (40, 40, 120))
    rows = [
        {"id": "bad", "prompt": "white background", "input_image": "broken.jpg"},
        {"id": "good", "prompt": "white background", "input_image": "ok.jpg"},
    ]
    manifest = write_csv(tmp_path / "m.csv", ["id", "prompt", "input_image"], rows)
    args = ("run", str(manifest), "--local", "--emulator", "--skip-invalid", "--max-failures", "1")
    proc = _cli(*args, "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r["id"]: r for r in read_results((tmp_path / "out" / "results.csv").read_bytes())}
    assert results["bad"]["status"] == "invalid"
    assert "input_image" in results["bad"]["error"]
    assert results["good"]["status"] == "succeeded"


def test_stdin_manifest_resolves_relative_paths_against_the_current_folder(tmp_path: Path) -> None:
    product_image(tmp_path / "images" / "mug.jpg", (30, 90, 30))
    text = "id,prompt,input_image\nmug,matte black mug,images/mug.jpg\n"
    proc = _cli("run", "-", "--local", "--emulator", "-o", str(tmp_path / "out"), cwd=tmp_path, stdin=text)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = read_results((tmp_path / "out" / "results.csv").read_bytes())
    assert result["status"] == "succeeded"


def test_a_refused_manifest_leaves_no_run_behind(tmp_path: Path, redis_url: str) -> None:
    rows = [{"prompt": "fine"}, {"prompt": ""}, {"prompt": "also fine"}]
    manifest = write_csv(tmp_path / "m.csv", ["prompt"], rows)
    proc = _cli(
        "run",
        str(manifest),
        "-o",
        str(tmp_path / "out"),
        cwd=tmp_path,
        KONTEXT_REDIS_URL=redis_url,
        KONTEXT_API_KEY="k-refused",
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "row 2" in proc.stderr
    assert redis.Redis.from_url(redis_url).keys("*") == []  # no run, no row, no wait list


def _queue_without_workers(tmp_path: Path, redis_url: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    manifest = write_csv(tmp_path / "m.csv", ["prompt"], [{"prompt": f"edit {i}"} for i in range(5)])
    env = {"KONTEXT_REDIS_URL": redis_url, "KONTEXT_API_KEY": "k-nobody-holds"}
    return _cli("run", str(manifest), "-o", str(out), *extra, cwd=tmp_path, **env)


def test_a_second_run_into_a_busy_output_is_refused_naming_the_first(tmp_path: Path, redis_url: str) -> None:
    out = tmp_path / "out"
    first = _queue_without_workers(tmp_path, redis_url, out)
    assert first.returncode == 0, first.stderr[-3000:]
    run_id = first.stdout.strip().splitlines()[-1]
    second = _queue_without_workers(tmp_path, redis_url, out)
    assert second.returncode == 2
    assert f"run {run_id} is still writing to" in second.stderr
    assert "Traceback" not in second.stderr
    forced = _queue_without_workers(tmp_path, redis_url, out, "--force")
    assert forced.returncode == 0, forced.stderr[-3000:]


def test_cancel_ends_a_run_that_no_worker_serves(tmp_path: Path, redis_url: str) -> None:
    out = tmp_path / "out"
    queued = _queue_without_workers(tmp_path, redis_url, out)
    run_id = queued.stdout.strip().splitlines()[-1]
    env = {"KONTEXT_REDIS_URL": redis_url}  # cancel and status need no API key
    cancelled = _cli("cancel", run_id, cwd=tmp_path, **env)
    assert cancelled.returncode == 0, cancelled.stderr[-3000:]
    follow = _cli("follow", run_id, "--timeout", "20s", cwd=tmp_path, **env)
    assert follow.returncode == 3, follow.stderr[-3000:]  # stopped (cancelled), not timed out
    assert "timeout" not in follow.stderr
    results = read_results((out / "results.csv").read_bytes())
    assert [r["status"] for r in results] == ["cancelled"] * 5


def test_follow_timeout_returns_while_the_run_goes_on(tmp_path: Path, redis_url: str) -> None:
    queued = _queue_without_workers(tmp_path, redis_url, tmp_path / "out")
    run_id = queued.stdout.strip().splitlines()[-1]
    follow = _cli("follow", run_id, "--timeout", "2s", cwd=tmp_path, KONTEXT_REDIS_URL=redis_url)
    assert follow.returncode == 3
    assert f"kontext-batch follow {run_id}" in follow.stderr


class _WorkersWithoutS3Credentials(WorkerPool):
    """Workers configured by hand at 2 a.m.: the CLI has the S3 credentials, these workers do not."""

    def _env(self) -> dict[str, str]:
        return {k: v for k, v in super()._env().items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}


def test_workers_without_storage_credentials_end_the_run_failed_naming_the_cause(
    tmp_path: Path, redis_url: str, s3_url: str
) -> None:
    rows = [{"id": f"r{i}", "prompt": f"edit {i}"} for i in range(20)]
    manifest = write_csv(tmp_path / "m.csv", ["id", "prompt"], rows)
    with Emulator(EmulatorConfig(latency={"*": LatencySpec.fixed(0.2)}, render="fast")) as emu:
        s = Settings(api_key=Secret("k-no-creds"), api_base=emu.base_url, redis_url=redis_url, poll_first_s=0.1)
        with _WorkersWithoutS3Credentials(s, n=2, concurrency=8):
            env = {k: v for k, v in os.environ.items() if not k.startswith("KONTEXT_")} | s.to_env()
            t0 = time.monotonic()
            proc = subprocess.run(
                [sys.executable, "-m", "kontext_batch", "run", str(manifest), "-o", f"{s3_url}/out", "--wait"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            took = time.monotonic() - t0
    assert proc.returncode not in (0, 130), proc.stderr[-3000:]
    assert "no S3 credentials on worker" in proc.stdout + proc.stderr
    assert "169.254.169.254" not in proc.stdout + proc.stderr
    print(f"workers without S3 credentials: exit {proc.returncode} after {took:.1f} s")


def test_inputs_root_confines_local_inputs(tmp_path: Path) -> None:
    product_image(tmp_path / "inside" / "ok.jpg", (10, 120, 10))
    product_image(tmp_path / "outside.jpg", (120, 10, 10))
    text = "id,prompt,input_image\na,edit,inside/ok.jpg\nb,edit,outside.jpg\n"
    (tmp_path / "m.csv").write_text(text)
    proc = _cli("validate", "m.csv", "--inputs-root", str(tmp_path / "inside"), cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "row 2 (spreadsheet row 3):" in proc.stdout
    assert "outside the inputs folder" in proc.stdout
    assert "row 1 (" not in proc.stdout
