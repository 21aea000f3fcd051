"""Bad input through the real ``kontext-batch`` command, run as a subprocess.

The row/field corpus is checked at library level in ``test_manifest_bad_input.py``; here we check
what an operator sees: the exit code (1 invalid rows for ``validate``; 2 bad usage, settings or
manifest for ``run``), a message naming the row and field, no Python traceback, and for ``run``
that nothing was registered or queued (no run keys, no Celery messages) unless ``--skip-invalid``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from kontext_batch.cli import commands
from kontext_batch.cli.exits import EXIT_FAILED_ROWS, EXIT_INTERRUPTED, EXIT_MEANINGS, EXIT_STOPPED, EXIT_USAGE
from kontext_batch.emulator import EmulatorConfig, LatencySpec
from tests.e2e_support import E2E_KEY, read_results, running_system, write_csv

#: Nothing listens on the discard port: a run that tried to reach the API would fail loudly.
NO_API = "http://127.0.0.1:9"

CORPUS_HEADER = ["id", "prompt", "aspect_ratio", "seed", "safety_tolerance", "input_image", "output_name", "model"]
CORPUS: list[dict[str, object]] = [
    {"id": "ok", "prompt": "a valid row"},
    {"id": "b", "prompt": ""},
    {"id": "c", "prompt": "hi", "aspect_ratio": "30:1"},
    {"id": "d", "prompt": "hi", "seed": -5, "safety_tolerance": 7},
    {"id": "e", "prompt": "hi", "seed": "x", "input_image": "not-an-image.jpg"},
    {"id": "f", "prompt": "hi", "output_name": "../escape.png"},
    {"id": "g", "prompt": "hi", "model": "prro"},
    {"id": "ok", "prompt": "the same id again"},
]
#: (row, field) of every error the corpus must report; row 1 is valid.
CORPUS_ERRORS = {
    (2, "prompt"),
    (3, "aspect_ratio"),
    (4, "seed"),
    (4, "safety_tolerance"),
    (5, "seed"),
    (5, "input_image"),
    (6, "output_name"),
    (7, "model"),
    (8, "id"),
}


def corpus(tmp: Path) -> Path:
    (tmp / "not-an-image.jpg").write_text("this is text, not a JPEG")
    return write_csv(tmp / "corpus.csv", CORPUS_HEADER, CORPUS)


@pytest.fixture
def env(redis_url: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("KONTEXT_")}
    out.update(KONTEXT_REDIS_URL=redis_url, KONTEXT_API_KEY="bad-input-key", KONTEXT_API_BASE=NO_API)
    return out


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kontext_batch", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout, proc.stdout[-3000:]


def nothing_queued(r: redis.Redis) -> None:
    """No run registered, no row waiting for a slot, no Celery message anywhere."""
    keys = sorted(k.decode() for k in r.scan_iter(count=1000))
    assert not [k for k in keys if k.startswith(("kb:run", "kb:wait:", "kb:job:", "kb:lease:"))], keys
    for queue in ("kontext.submit", "kontext.poll", "celery"):
        assert not r.exists(queue), (queue, keys)
    assert not r.hlen("unacked"), keys


# -- validate ---------------------------------------------------------------------------------------


def test_validate_names_every_bad_row_and_field(env: dict[str, str], tmp_path: Path) -> None:
    path = corpus(tmp_path)
    as_json = cli(env, tmp_path, "validate", str(path), "--json")
    assert as_json.returncode == 1, as_json.stderr[-3000:]
    no_traceback(as_json)
    report = json.loads(as_json.stdout)
    assert {(e["row"], e["field"]) for e in report["errors"]} == CORPUS_ERRORS
    assert all(e["message"] for e in report["errors"])
    assert (report["rows_total"], report["rows_valid"]) == (8, 1)

    text = cli(env, tmp_path, "validate", str(path))
    assert text.returncode == 1
    no_traceback(text)
    for row in sorted({row for row, _ in CORPUS_ERRORS}):
        assert f"row {row} (spreadsheet row {row + 1}):" in text.stdout
    for _, field in CORPUS_ERRORS:
        assert f"{field}:" in text.stdout


# -- run: nothing is queued -------------------------------------------------------------------------


def test_run_with_invalid_rows_exits_2_and_queues_nothing(env: dict[str, str], r: redis.Redis, tmp_path: Path) -> None:
    proc = cli(env, tmp_path, "run", str(corpus(tmp_path)), "--output", str(tmp_path / "out"))
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    no_traceback(proc)
    assert "nothing was queued" in proc.stderr
    for row, field in CORPUS_ERRORS:
        assert f"row {row}, field {field}:" in proc.stderr, (row, field, proc.stderr)
    assert not proc.stdout.strip(), "a run id was printed for a run that must not exist"
    nothing_queued(r)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*")), "inputs were staged"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty"),
        ("id,prompt\n", "only a header"),
        ("id,prompt\r\n", "only a header"),
        ("id|prompt\na|put it on white\n", "separated"),
    ],
    ids=["empty", "header-only", "header-only-crlf", "pipes"],
)
def test_run_on_an_unusable_file_exits_2_with_a_clear_message(
    env: dict[str, str], r: redis.Redis, tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes(content.encode())
    proc = cli(env, tmp_path, "run", str(path), "--output", str(tmp_path / "out"))
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    no_traceback(proc)
    assert message in proc.stderr, proc.stderr
    nothing_queued(r)


def test_run_on_a_missing_manifest_exits_2_without_a_traceback(
    env: dict[str, str], r: redis.Redis, tmp_path: Path
) -> None:
    proc = cli(env, tmp_path, "run", str(tmp_path / "nope.csv"))
    no_traceback(proc)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "nope.csv" in proc.stderr
    nothing_queued(r)


def test_validate_on_a_missing_manifest_fails_without_a_traceback(env: dict[str, str], tmp_path: Path) -> None:
    proc = cli(env, tmp_path, "validate", str(tmp_path / "nope.csv"))
    no_traceback(proc)
    assert proc.returncode != 0
    assert "nope.csv" in proc.stderr


# -- settings ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("KONTEXT_MAX_ACTIVE", "abc"),
        ("KONTEXT_MAX_ACTIVE_MODELS", "flux-kontext-max=zero"),
        ("KONTEXT_API_BASE", "ftp://example.org"),
        ("KONTEXT_LEASE_S", "0"),
    ],
)
def test_bad_settings_exit_2_naming_the_variable(
    env: dict[str, str], r: redis.Redis, tmp_path: Path, variable: str, value: str
) -> None:
    path = write_csv(tmp_path / "m.csv", ["id", "prompt"], [{"id": "a", "prompt": "white background"}])
    proc = cli({**env, variable: value}, tmp_path, "run", str(path))
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    no_traceback(proc)
    assert variable in proc.stderr, proc.stderr
    nothing_queued(r)


def test_run_without_a_key_exits_2_naming_it(env: dict[str, str], r: redis.Redis, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "m.csv", ["id", "prompt"], [{"id": "a", "prompt": "white background"}])
    proc = cli({k: v for k, v in env.items() if k != "KONTEXT_API_KEY"}, tmp_path, "run", str(path))
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    no_traceback(proc)
    assert "KONTEXT_API_KEY" in proc.stderr
    nothing_queued(r)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("variable", "option"),
    [("KONTEXT_API_BASE", "--api-base"), ("KONTEXT_REDIS_URL", "--redis-url")],
)
def test_an_option_overrides_a_bad_variable_it_names(tmp_path: Path, variable: str, option: str) -> None:
    path = write_csv(tmp_path / "m.csv", ["id", "prompt"], [{"id": "a", "prompt": "white background"}])
    env = {variable: "redis+sentinel://" if variable == "KONTEXT_REDIS_URL" else "ftp://example.org"}
    good = "redis://127.0.0.1:9/0" if variable == "KONTEXT_REDIS_URL" else "http://127.0.0.1:9"
    runner = CliRunner()
    refused = runner.invoke(commands.cli, ["validate", str(path), "--no-images"], env=env)
    assert refused.exit_code == 2, refused.output  # the variable alone is still refused, naming it
    assert variable in refused.output
    given = runner.invoke(commands.cli, [option, good, "validate", str(path), "--no-images"], env=env)
    assert given.exit_code == 0, given.output
    assert "1 row: 4 credits" in given.output


# -- an unknown run id ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ("status", "NO-SUCH-RUN"),
        ("results", "NO-SUCH-RUN"),
        ("cancel", "NO-SUCH-RUN"),
        ("retry", "NO-SUCH-RUN"),
        ("follow", "NO-SUCH-RUN"),
        ("gallery", "NO-SUCH-RUN"),
    ],
    ids=lambda c: c[0],
)
def test_an_unknown_run_id_is_an_error_message_not_a_traceback(
    env: dict[str, str], r: redis.Redis, tmp_path: Path, command: tuple[str, str]
) -> None:
    proc = cli(env, tmp_path, *command)
    no_traceback(proc)
    assert proc.returncode == EXIT_USAGE, proc.stderr  # bad usage, as in every command
    assert "NO-SUCH-RUN" in proc.stderr
    nothing_queued(r)


# -- files: one exit code for a file that cannot be used, whichever command was given it ----------


def bad_file(tmp: Path, kind: str, name: str) -> Path:
    """A file a command cannot use: missing, a directory where a file should be, or not UTF-8 text."""
    path = tmp / name
    if kind == "directory":
        path.mkdir()
    elif kind == "not-utf8":
        path.write_bytes(b"\xff\xfe\x80id,prompt\n\x81\x82,\xc3\x28\n")
    return path


#: (command line with {f} for the file, the file's name, what it is): every command that reads a file.
FILE_CASES = [
    *[(("validate", "{f}"), "m.csv", kind) for kind in ("missing", "directory", "not-utf8")],
    *[(("run", "{f}", "--output", "{out}"), "m.csv", kind) for kind in ("missing", "directory", "not-utf8")],
    *[(("retry", "NO-SUCH-RUN", "--ids", "{f}"), "ids.txt", kind) for kind in ("missing", "directory", "not-utf8")],
    (("validate", "{good}", "--inputs-root", "{f}"), "images", "missing"),
    (("run", "{good}", "--output", "{out}", "--inputs-root", "{f}"), "images", "missing"),
]


@pytest.mark.parametrize(("argv", "name", "kind"), FILE_CASES, ids=[f"{a[0]}-{n}-{k}" for a, n, k in FILE_CASES])
def test_a_file_a_command_cannot_use_exits_2_naming_it(
    env: dict[str, str], r: redis.Redis, tmp_path: Path, argv: tuple[str, ...], name: str, kind: str
) -> None:
    path = bad_file(tmp_path, kind, name)
    good = write_csv(tmp_path / "good.csv", ["id", "prompt"], [{"id": "a", "prompt": "white background"}])
    args = [a.format(f=path, out=tmp_path / "out", good=good) for a in argv]
    proc = cli(env, tmp_path, *args)
    no_traceback(proc)
    assert proc.returncode == EXIT_USAGE, (proc.returncode, proc.stderr[-3000:])
    assert name in proc.stderr, proc.stderr
    nothing_queued(r)


def test_a_keys_file_that_is_not_text_exits_2_naming_the_variable(env: dict[str, str], tmp_path: Path) -> None:
    keys = bad_file(tmp_path, "not-utf8", "keys.txt")
    proc = cli({**env, "KONTEXT_API_KEYS": str(keys)}, tmp_path, "status")
    no_traceback(proc)
    assert proc.returncode == EXIT_USAGE, (proc.returncode, proc.stderr[-3000:])
    assert "KONTEXT_API_KEYS" in proc.stderr


def test_results_into_a_folder_that_does_not_exist_exits_2_naming_it(env: dict[str, str], tmp_path: Path) -> None:
    good = write_csv(tmp_path / "good.csv", ["id", "prompt"], [{"id": "a", "prompt": "white background"}])
    queued = cli(env, tmp_path, "run", str(good), "--output", str(tmp_path / "out"), "--json")
    assert queued.returncode == 0, queued.stderr[-3000:]
    run_id = json.loads(queued.stdout.splitlines()[0])["run_id"]
    target = tmp_path / "no-such-folder" / "results.csv"
    proc = cli(env, tmp_path, "results", run_id, "-o", str(target))
    no_traceback(proc)
    assert proc.returncode == EXIT_USAGE, (proc.returncode, proc.stderr[-3000:])
    assert "no-such-folder" in proc.stderr
    assert not target.parent.exists()


@pytest.mark.unit
def test_the_readme_exit_code_table_is_the_one_the_cli_uses() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:3] for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    documented = {int(code): meaning.strip() for code, meaning in rows[1:]}  # rows[0] is the header
    assert documented == dict(EXIT_MEANINGS)
    assert set(dict(EXIT_MEANINGS)) >= {0, EXIT_FAILED_ROWS, EXIT_USAGE, EXIT_STOPPED, EXIT_INTERRUPTED}
    shown = CliRunner().invoke(commands.cli, ["--help"], terminal_width=400).output
    assert all(str(code) in shown for code in dict(EXIT_MEANINGS))


# -- run --skip-invalid -----------------------------------------------------------------------------


@pytest.mark.e2e
def test_skip_invalid_records_invalid_rows_and_runs_the_rest(redis_url: str, tmp_path: Path) -> None:
    rows: list[dict[str, object]] = [{"id": f"v{i}", "prompt": f"white background {i}"} for i in range(4)]
    rows.insert(1, {"id": "no-prompt", "prompt": ""})
    rows.insert(3, {"id": "bad-ratio", "prompt": "hi", "aspect_ratio": "30:1"})
    path = write_csv(tmp_path / "m.csv", ["id", "prompt", "aspect_ratio"], rows)
    out = tmp_path / "out"
    cfg = EmulatorConfig(latency={"*": LatencySpec.fixed(0.2)}, api_keys=(E2E_KEY,))
    with running_system(redis_url, emulator=cfg) as system:
        proc = system.cli("run", str(path), "--output", str(out), "--skip-invalid", "--wait", "--max-failures", "2")
        assert proc.returncode == 0, proc.stderr[-3000:]
        no_traceback(proc)
        strict = system.cli("run", str(path), "--output", str(tmp_path / "out2"), "--skip-invalid", "--wait")
        stats = system.emu.stats()
    assert strict.returncode == 1, strict.stderr[-3000:]  # invalid rows count as failures by default
    results = read_results((out / "results.csv").read_bytes())
    assert [r["id"] for r in results] == [str(r["id"]) for r in rows]
    by_id = {r["id"]: r for r in results}
    assert by_id["no-prompt"]["status"] == "invalid"
    assert "prompt" in by_id["no-prompt"]["error"]
    assert by_id["bad-ratio"]["status"] == "invalid"
    assert "aspect_ratio" in by_id["bad-ratio"]["error"]
    assert not by_id["no-prompt"]["output_uri"]
    assert {by_id[f"v{i}"]["status"] for i in range(4)} == {"succeeded"}
    assert stats["submits"] == 8  # the valid rows of both runs; invalid rows never reach the API
