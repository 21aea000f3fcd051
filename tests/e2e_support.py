"""The whole system for end-to-end tests: emulator over HTTP, real worker processes, the real CLI."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from kontext_batch.coord.runs import RunInfo, RunStore
from kontext_batch.emulator import Emulator, EmulatorConfig, LatencySpec
from kontext_batch.run.local import WorkerPool
from kontext_batch.settings import Settings
from tests.settings_support import fast_settings

E2E_KEY = "e2e-secret-key-7f3a9c1d"
#: Over FAST: worker processes start slower than inline steps, and a lease outlives a busy second.
E2E_TIMINGS: dict[str, object] = {"poll_first_s": 0.2, "retry_base_s": 0.05, "retry_max_s": 0.5, "lease_s": 20.0}


@dataclass
class System:
    emu: Emulator
    settings: Settings
    workers: WorkerPool

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KONTEXT_")}
        env.update(self.settings.to_env())
        return env

    def cli(self, *args: str, timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kontext_batch", *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )


@contextmanager
def running_system(
    redis_url: str,
    *,
    emulator: EmulatorConfig | None = None,
    workers: int = 2,
    log_dir: Path | None = None,
    **settings: object,
) -> Iterator[System]:
    cfg = emulator or EmulatorConfig(latency={"*": LatencySpec.fixed(0.3)}, api_keys=(E2E_KEY,), seed=11)
    with Emulator(cfg) as emu:
        s = fast_settings(emu.base_url, redis_url, api_key=E2E_KEY, **{**E2E_TIMINGS, **settings})
        with WorkerPool(s, n=workers, concurrency=16, loglevel="INFO", log_dir=log_dir) as pool:
            yield System(emu, s, pool)


def product_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (640, 480)) -> Path:
    """A small product-like photo: a coloured object with a shadow on a tinted background."""
    im = Image.new("RGB", size, (236, 230, 222))
    d = ImageDraw.Draw(im)
    w, h = size
    d.ellipse((w * 0.2, h * 0.72, w * 0.8, h * 0.86), fill=(200, 194, 186))
    d.rounded_rectangle((w * 0.3, h * 0.25, w * 0.7, h * 0.78), radius=30, fill=colour)
    d.ellipse((w * 0.4, h * 0.15, w * 0.6, h * 0.32), fill=tuple(max(0, c - 40) for c in colour))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, quality=90)
    return path


def write_csv(path: Path, header: Sequence[str], rows: Sequence[dict[str, object]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(header))
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return path


def read_results(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode())))


def wait_finished(
    runs: RunStore,
    run_id: str,
    timeout_s: float,
    *,
    during: Callable[[RunInfo], None] | None = None,
    detail: Callable[[], str] = lambda: "",
) -> RunInfo:
    """Poll until the run is final; ``during(info)`` runs between looks (to kill things meanwhile).
    On timeout the assertion says where the run stands, plus ``detail()``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = runs.info(run_id)
        if info.finished:
            return info
        if during is not None:
            during(info)
        time.sleep(0.2)
    info = runs.info(run_id)
    raise AssertionError(
        f"run {run_id} not finished after {timeout_s:.0f} s: {info.ndone}/{info.total} {info.counts}\n" + detail()
    )
