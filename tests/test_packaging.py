"""What the wheel ships and under which names: only ``kontext_batch`` at the top of site-packages.

The repository keeps ``workers/`` and ``tasks/`` at its top (the design card); they ship as
``kontext_batch.workers`` and ``kontext_batch.tasks``. A folder holding an Invoke-style ``tasks.py``
(or any other distribution's ``tasks`` / ``workers``) must not shadow them or be shadowed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KEY = "packaging-test-key-1b9e"


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KONTEXT_", "CELERY_", "PYTHON"))}
    env.update(extra)
    return env


@pytest.mark.integration
def test_the_wheel_names_only_kontext_batch_at_the_top(tmp_path: Path) -> None:
    # Built from a copy (symlinks kept, as git checks them out), so the build leaves nothing in the checkout.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "kontext_batch", "workers", "tasks"):
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(src)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=240,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = tmp_path.glob("kontext_batch-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        assert zf.read(top_level).decode().split() == ["kontext_batch"]
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"kontext_batch"}
    for module in ("workers/app.py", "workers/process.py", "workers/broker.py", "tasks/submit.py", "tasks/poll.py"):
        assert f"kontext_batch/{module}" in names, module


_IMPORT_CHECK = """
import importlib.util, os, sys
assert importlib.util.find_spec("workers") is None, importlib.util.find_spec("workers")
assert importlib.util.find_spec("tasks") is None, importlib.util.find_spec("tasks")
import kontext_batch.workers.app, kontext_batch.tasks.submit, kontext_batch.tasks.poll, kontext_batch.cli.commands
files = {}
for name, mod in list(sys.modules.items()):
    f = getattr(mod, "__file__", None)
    if f and "kontext_batch" in f:
        files.setdefault(os.path.realpath(f), []).append(name)
twice = {f: n for f, n in files.items() if len(n) > 1}
assert not twice, twice
print(len(files), "modules")
"""


@pytest.mark.integration
def test_outside_the_checkout_no_top_level_workers_or_tasks_and_no_module_twice(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_CHECK],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[0]) > 20  # the imports above really loaded the package


def _shadowing_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    # What `invoke` users and many repositories keep at their top: importing either is the bug.
    for name in ("tasks.py", "workers.py"):
        (folder / name).write_text(f'raise SystemExit("{name} was imported by the worker")\n')
    return folder


@pytest.mark.e2e
def test_a_worker_starts_beside_tasks_py_and_answers_celery_inspect_with_only_the_redis_url(
    redis_url: str, tmp_path: Path
) -> None:
    folder = _shadowing_folder(tmp_path)
    log = tmp_path / "worker.log"
    node = f"packaging-{os.getpid()}@localhost"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "kontext_batch", "worker", "-c", "2", "-l", "INFO", "-n", node],
            cwd=folder,
            env=_clean_env(KONTEXT_REDIS_URL=redis_url, KONTEXT_API_KEY=KEY, PYTHONUNBUFFERED="1"),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        while b" ready." not in log.read_bytes():
            assert worker.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.2)
        celery = shutil.which("celery", path=str(Path(sys.executable).parent)) or "celery"
        # Celery's own tool, run as an operator would: only the project's Redis URL in the
        # environment, no -b, from the folder with the shadowing files.
        ping = subprocess.run(
            [celery, "-A", "kontext_batch.workers.app", "inspect", "ping", "--timeout", "10", "-d", node],
            cwd=folder,
            env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "KONTEXT_REDIS_URL": redis_url},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert node in ping.stdout
        assert "pong" in ping.stdout
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
    assert b"was imported by the worker" not in log.read_bytes()
