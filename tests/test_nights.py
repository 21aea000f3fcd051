"""The second night: a re-run into the same output is priced and budgeted by the rows it will run."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote

import pytest
import redis

from kontext_batch.coord.keys import Keys
from kontext_batch.coord.runs import RunStore
from tests.e2e_support import product_image, read_results, running_system, write_csv

pytestmark = pytest.mark.e2e

PRO_CREDITS = 4  # kontext-pro's price per image (api's price table)


def _manifest(path: Path, changed: set[int]) -> Path:
    rows = [
        {"id": f"sku-{i}", "prompt": f"shoe {i} on white" + (" (new angle)" if i in changed else ""), "model": "pro"}
        for i in range(1, 13)
    ]
    return write_csv(path, ["id", "prompt", "model"], rows)


def test_a_nightly_rerun_is_priced_and_budgeted_by_the_rows_it_runs(redis_url: str, tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    with running_system(redis_url) as system:
        first = system.cli("run", str(_manifest(tmp_path / "n1.csv", set())), "-o", out, "--wait")
        assert first.returncode == 0, first.stderr
        assert "12 rows: 48 credits" in first.stderr
        # Night 2: two prompts changed. Its budget is just above what those two cost; the old
        # estimate (all 12 rows, 48 credits) refused it and queued nothing.
        budget = str(2 * PRO_CREDITS + 1)
        second = system.cli("run", str(_manifest(tmp_path / "n2.csv", {3, 7})), "-o", out, "--budget", budget, "--wait")
        assert second.returncode == 0, second.stderr
        assert "12 rows: 2 to run (8 credits ($0.08)), 10 already done" in second.stderr
        spent = system.emu.stats(tasks=False)["keys"]
        assert sum(k["credits_spent"] for k in spent.values()) == 14 * PRO_CREDITS
        # --force prices (and runs) everything again: over this budget, refused, nothing queued.
        forced = system.cli(
            "run", str(_manifest(tmp_path / "n2.csv", {3, 7})), "-o", out, "--budget", budget, "--force"
        )
        assert forced.returncode == 2
        assert "estimate of 48 credits is over its budget of 9 credits" in forced.stderr
    results = read_results((tmp_path / "out" / "results.csv").read_bytes())
    by_id = {r["id"]: r for r in results}
    assert {i for i, r in by_id.items() if r["status"] == "succeeded"} == {"sku-3", "sku-7"}
    assert by_id["sku-3"]["prompt"] == "shoe 3 on white (new angle)"
    assert sum(r["status"] == "skipped" for r in results) == 10


def test_validate_prices_only_the_rows_a_run_into_that_output_would_run(redis_url: str, tmp_path: Path) -> None:
    images = Path(__file__).parent.parent / "manifests" / "examples" / "images"
    mug, bag = sorted(images.glob("*.jpg"))[:2]

    def night(path: Path, changed: set[int]) -> Path:
        rows = [
            {"id": f"sku-{i}", "prompt": f"item {i} on white" + (" (new)" if i in changed else ""), "input_image": img}
            for i, img in enumerate((mug, bag, "", ""), start=1)
        ]
        return write_csv(path, ["id", "prompt", "input_image"], rows)

    out = tmp_path / "out"
    with running_system(redis_url) as system:
        first = system.cli("run", str(night(tmp_path / "n1.csv", set())), "-o", str(out), "--wait")
        assert first.returncode == 0, first.stderr
        second = night(tmp_path / "n2.csv", {2})  # an image row's prompt changed: it runs again
        checked = system.cli("validate", str(second), "-o", str(out))
        assert checked.returncode == 0, checked.stderr
        assert "4 rows: 1 to run (4 credits ($0.04)), 3 already done" in checked.stdout, checked.stdout
        forced = system.cli("validate", str(second), "-o", str(out), "--force")
        assert "4 rows: 16 credits ($0.16)" in forced.stdout, forced.stdout
        elsewhere = system.cli("validate", str(second), "-o", str(tmp_path / "new-out"))
        assert "4 rows: 16 credits ($0.16)" in elsewhere.stdout, elsewhere.stdout
        assert not (tmp_path / "new-out").exists()  # validate writes nothing, not even a folder
        # What validate said is what run then does.
        again = system.cli("run", str(second), "-o", str(out), "--wait")
        assert again.returncode == 0, again.stderr
        assert "4 rows: 1 to run (4 credits ($0.04)), 3 already done" in again.stderr


def test_retry_ids_with_an_unknown_id_queues_nothing_unless_told(redis_url: str, tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    ids = tmp_path / "rejected.txt"
    ids.write_text("sku-3\nsku-7\nsku-77\n", encoding="utf-8")  # sku-77: a typo, or another run's row
    with running_system(redis_url) as system:
        first = system.cli("run", str(_manifest(tmp_path / "n1.csv", set())), "-o", out, "--wait")
        assert first.returncode == 0, first.stderr
        run_id = first.stdout.split()[0]
        created = system.emu.stats(tasks=False)["tasks_created"]
        refused = system.cli("retry", run_id, "--ids", str(ids), "--wait")
        assert refused.returncode == 2
        assert f"1 id(s) given are no row of run {run_id}: sku-77; nothing was queued" in refused.stderr
        assert system.emu.stats(tasks=False)["tasks_created"] == created
        status = system.cli("status", run_id, "--json")
        assert '"succeeded": 12' in status.stdout.replace(" ", "").replace('":', '": ')
        done = system.cli("retry", run_id, "--ids", str(ids), "--ignore-unknown", "--wait")
        assert done.returncode == 0, done.stderr
        assert f"{run_id}: 2 row(s) queued again" in done.stderr
        assert system.emu.stats(tasks=False)["tasks_created"] == created + 2


def _with_rejects(path: Path) -> Path:
    """12 rows; sku-2 and sku-5 are moderated (after their task was created and charged), sku-8 fails."""
    marker = {2: " [emulator:content-moderated]", 5: " [emulator:content-moderated]", 8: " [emulator:error]"}
    rows = [{"id": f"sku-{i}", "prompt": f"shoe {i} on white{marker.get(i, '')}", "model": "pro"} for i in range(1, 13)]
    return write_csv(path, ["id", "prompt", "model"], rows)


def test_a_retried_row_counts_every_attempt_and_every_credit(redis_url: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with running_system(redis_url) as system:
        first = system.cli("run", str(_with_rejects(tmp_path / "m.csv")), "-o", str(out), "--wait")
        assert first.returncode == 1, first.stderr  # rows failed
        run_id = first.stdout.split()[0]
        again = system.cli("retry", run_id, "--failed", "--moderated", "--wait")
        assert again.returncode == 1, again.stderr  # the markers fail them again: charged twice
        [status] = json.loads(system.cli("status", run_id, "--json").stdout)
        charged = sum(k["credits_spent"] for k in system.emu.stats(tasks=False)["keys"].values())
    results = {r["id"]: r for r in read_results((out / "results.csv").read_bytes())}
    assert charged == 15 * PRO_CREDITS
    assert status["credits_spent"] == charged
    # Before: each retried row showed attempts 1 and only its second charge (48 in the file, 60 spent).
    assert sum(float(r["cost_credits"] or 0) for r in results.values()) == charged
    for sku in ("sku-2", "sku-5", "sku-8"):
        assert (results[sku]["attempts"], float(results[sku]["cost_credits"])) == ("2", 2 * PRO_CREDITS), sku
    assert (results["sku-1"]["attempts"], float(results["sku-1"]["cost_credits"])) == ("1", PRO_CREDITS)


def test_durations_are_the_time_rows_were_in_work_not_the_idle_hours_between(redis_url: str, tmp_path: Path) -> None:
    with running_system(redis_url) as system:
        first = system.cli("run", str(_with_rejects(tmp_path / "m.csv")), "-o", str(tmp_path / "out"), "--wait")
        assert first.returncode == 1, first.stderr
        run_id = first.stdout.split()[0]
        # As if the night's run had ended an hour before the morning's retry.
        runs = RunStore(redis.Redis.from_url(redis_url), Keys())
        meta = runs.meta(run_id)
        runs.update(run_id, **{k: float(meta[k]) - 3600 for k in ("created_at", "last_final_at", "finished_at")})
        again = system.cli("retry", run_id, "--failed", "--moderated", "--wait")
        assert again.returncode == 1, again.stderr
        status = system.cli("status", run_id)
        [doc] = json.loads(system.cli("status", run_id, "--json").stdout)
    # Both counted from the run's creation, idle hour included: 'finished in 1:00:05', 'took 1:00:05'.
    finished_in = re.search(r"finished in (\d+):\d\d:\d\d", again.stdout)
    assert finished_in is not None, again.stdout
    assert finished_in[1] == "0", again.stdout
    took = re.search(r"took (\d+):\d\d:\d\d; retry took (\d+):\d\d:\d\d", status.stdout)
    assert took is not None, status.stdout
    assert took[1] == took[2] == "0", status.stdout
    assert doc["took_s"] < 3600, doc
    assert len(doc["retries_s"]) == 1, doc
    assert doc["retries_s"][0] < 3600, doc


# --- the output's results.csv and each run's own ------------------------------------------------


def _night(path: Path, skus: range, changed: set[int]) -> Path:
    """Rows sku-N with one input image each (the gallery's input links); ``changed`` get a new prompt."""
    images = path.parent / "images"
    for i in skus:
        product_image(images / f"p{i}.jpg", (40 * i % 255, 90, 160), size=(160, 120))
    rows = [
        {
            "id": f"sku-{i}",
            "prompt": f"shoe {i} on white" + (" (new angle)" if i in changed else ""),
            "input_image": f"images/p{i}.jpg",
            "output_name": "shoes/{id}.{ext}",
        }
        for i in skus
    ]
    return write_csv(path, ["id", "prompt", "input_image", "output_name"], rows)


def _page_rows(page: Path) -> dict[str, dict[str, object]]:
    m = re.search(r'<script type="application/json" id="data">(.*?)</script>', page.read_text(encoding="utf-8"), re.S)
    assert m is not None, page
    data = json.loads(m.group(1))
    return {r[1]: dict(zip(data["fields"], r, strict=True)) for r in data["rows"]}


def _links_resolve(page: Path) -> int:
    """Every image link of the page names a file, relative to the page's own folder; how many."""
    n = 0
    for r in _page_rows(page).values():
        links = [link for link, _ in r["inputs"]] + ([r["output"]] if r["output"] else [])  # type: ignore[attr-defined]
        for link in links:
            assert not str(link).startswith(("/", "file:")), link
            assert (page.parent / unquote(str(link))).resolve().is_file(), (page, link)
            n += 1
    return n


def test_a_retry_of_last_nights_rows_never_brings_back_an_older_prompt(redis_url: str, tmp_path: Path) -> None:
    """Night 1 (sku-1..6), night 2 (sku-1..5, sku-3's prompt changed), then the morning's retry of
    night 1's sku-3 (night 2 has a newer line) and sku-6 (night 2 left it out)."""
    out = tmp_path / "out"
    ids = tmp_path / "rejected.txt"
    ids.write_text("sku-3\nsku-6\n", encoding="utf-8")
    with running_system(redis_url) as system:
        first = system.cli("run", str(_night(tmp_path / "n1" / "m.csv", range(1, 7), set())), "-o", str(out), "--wait")
        assert first.returncode == 0, first.stderr
        run1 = first.stdout.split()[0]
        night1 = {r["id"]: r for r in read_results((out / "results.csv").read_bytes())}
        second = system.cli("run", str(_night(tmp_path / "n2" / "m.csv", range(1, 6), {3})), "-o", str(out), "--wait")
        assert second.returncode == 0, second.stderr
        run2 = second.stdout.split()[0]
        retried = system.cli("retry", run1, "--ids", str(ids), "--wait")
        assert retried.returncode == 0, retried.stderr
        status = system.cli("status", run1)
        spent = sum(k["credits_spent"] for k in system.emu.stats(tasks=False)["keys"].values())
    prefix = {r["id"]: r for r in read_results((out / "results.csv").read_bytes())}
    # The measured defect: the retry rewrote the output's results.csv from run 1's Redis state, so
    # sku-3 read night 1's prompt again while its sidecar said night 2's.
    assert prefix["sku-3"]["prompt"] == "shoe 3 on white (new angle)", prefix["sku-3"]
    assert (prefix["sku-3"]["run_id"], prefix["sku-3"]["output_run_id"]) == (run2, run2)
    assert set(prefix) == {f"sku-{i}" for i in range(1, 7)}
    # sku-6 only night 1 had: its retry is the newest line of the row.
    assert (prefix["sku-6"]["run_id"], prefix["sku-6"]["status"], prefix["sku-6"]["attempts"]) == (
        run1,
        "succeeded",
        "2",
    )
    assert prefix["sku-6"]["output_bfl_task_id"] not in ("", night1["sku-6"]["bfl_task_id"])
    # Night 2's skipped rows say what made their output: night 1's task, seed and price; this run paid nothing.
    for sku in ("sku-1", "sku-2", "sku-4", "sku-5"):
        row = prefix[sku]
        assert (row["status"], row["run_id"], row["cost_credits"]) == ("skipped", run2, ""), row
        made = (row["output_run_id"], row["output_seed"], row["output_bfl_task_id"], row["output_cost_credits"])
        assert made == (run1, night1[sku]["seed"], night1[sku]["bfl_task_id"], str(float(PRO_CREDITS))), row
        assert night1[sku]["seed"], night1[sku]
        assert night1[sku]["bfl_task_id"], night1[sku]
    # Each run's own file is exactly what it did: run 1's shows the retried row with its old prompt.
    own1 = {r["id"]: r for r in read_results((out / "runs" / run1 / "results.csv").read_bytes())}
    own2 = {r["id"]: r for r in read_results((out / "runs" / run2 / "results.csv").read_bytes())}
    assert (own1["sku-3"]["prompt"], own1["sku-3"]["attempts"]) == ("shoe 3 on white", "2")
    assert float(own1["sku-3"]["cost_credits"]) == 2 * PRO_CREDITS
    # Nor does the retry bring back night 1's image: night 2's stays at the row's name (a night 3 of
    # night 2's prompt skips it), and the retry's goes into run 1's own folder, which its file names.
    side = json.loads((out / "shoes" / "sku-3.png.json").read_bytes())
    assert (side["run_id"], side["prompt"]) == (run2, "shoe 3 on white (new angle)")
    assert own1["sku-3"]["output_uri"] == (out / "runs" / run1 / "shoes" / "sku-3.png").as_uri()
    assert json.loads((out / "runs" / run1 / "shoes" / "sku-3.png.json").read_bytes())["prompt"] == "shoe 3 on white"
    assert own1["sku-6"]["output_uri"] == (out / "shoes" / "sku-6.png").as_uri()
    assert prefix["sku-6"]["output_uri"] == own1["sku-6"]["output_uri"]
    assert set(own2) == {f"sku-{i}" for i in range(1, 6)}
    # What was spent is the sum over the runs' own files: 6 + 1 + 2 tasks, each charge counted once.
    # Where each is, as the end of the retry and status name them.
    assert f"this run's own: {out / 'runs' / run1 / 'results.csv'}" in retried.stdout + retried.stderr
    assert f"results: {(out / 'results.csv').as_uri()}" in status.stdout, status.stdout
    assert f"this run's own: {(out / 'runs' / run1 / 'results.csv').as_uri()}" in status.stdout, status.stdout
    own_files = sorted((out / "runs").glob("*/results.csv"))
    assert len(own_files) == 2
    in_files = sum(float(r["cost_credits"] or 0) for f in own_files for r in read_results(f.read_bytes()))
    assert spent == 9 * PRO_CREDITS
    assert in_files == spent
    # The output's gallery shows night 2's sku-3; run 1's own page its own. Every image link resolves.
    shown = _page_rows(out / "gallery.html")
    assert (shown["sku-3"]["prompt"], shown["sku-3"]["run"]) == ("shoe 3 on white (new angle)", run2)
    assert set(shown) == set(prefix)
    assert _page_rows(out / "runs" / run1 / "gallery.html")["sku-3"]["prompt"] == "shoe 3 on white"
    assert _links_resolve(out / "gallery.html") == 12  # six rows: an input and an output each
    assert _links_resolve(out / "runs" / run1 / "gallery.html") == 12
    assert _links_resolve(out / "runs" / run2 / "gallery.html") == 10


def test_runs_into_different_outputs_do_not_touch_each_other(redis_url: str, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    with running_system(redis_url) as system:
        first = system.cli("run", str(_night(tmp_path / "n1" / "m.csv", range(1, 4), set())), "-o", str(a), "--wait")
        assert first.returncode == 0, first.stderr
        before = {p.relative_to(a): p.read_bytes() for p in a.rglob("*") if p.is_file()}
        other = system.cli("run", str(_night(tmp_path / "n2" / "m.csv", range(4, 6), set())), "-o", str(b), "--wait")
        assert other.returncode == 0, other.stderr
    assert {p.relative_to(a): p.read_bytes() for p in a.rglob("*") if p.is_file()} == before
    assert {r["id"] for r in read_results((b / "results.csv").read_bytes())} == {"sku-4", "sku-5"}
    assert [p.name for p in (b / "runs").iterdir()] == [other.stdout.split()[0]]
