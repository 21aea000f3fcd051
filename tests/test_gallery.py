"""gallery.html: a real run (manifest, staged inputs, emulator, inline pipeline) opened in headless Chromium.

Chromium is Debian's ``chromium`` package (scripts/check installs it where apt-get can); without it
the browser tests are skipped locally and fail in CI. Screenshots go to ``$KONTEXT_TEST_ARTIFACTS``
(default ``tests/artifacts/``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest

from kontext_batch.emulator import Emulator, EmulatorConfig, LatencySpec
from kontext_batch.run.enqueue import RunRequest, start_run
from kontext_batch.runtime import Runtime
from kontext_batch.secret import Secret
from kontext_batch.settings import Settings
from kontext_batch.steps.gallery import GALLERY_NAME, ids_from_file, relative_link, render_gallery
from tests.conftest import unavailable
from tests.e2e_support import product_image, write_csv
from tests.pipeline_support import InlineScheduler, inline_runtime

KEY = "gallery-test-key"
HOSTILE = "</script><img src=x onerror=alert(1)>"
ARTIFACTS = Path(os.environ.get("KONTEXT_TEST_ARTIFACTS") or Path(__file__).parent / "artifacts")


@dataclass
class Run:
    rt: Runtime
    run_id: str
    out: Path
    total: int


@pytest.fixture
def run(redis_url: str, tmp_path: Path) -> Iterator[Run]:
    """12 rows: 9 edited (one with a hostile prompt, one with two inputs), 2 failed, 1 moderated."""
    cfg = EmulatorConfig(latency={"*": LatencySpec.fixed(0.1)}, seed=5)
    with Emulator(cfg) as emu:
        s = Settings(
            api_key=Secret(KEY),
            api_base=emu.base_url,
            redis_url=redis_url,
            poll_first_s=0.05,
            poll_min_s=0.05,
            retry_base_s=0.01,
            retry_max_s=0.05,
            http_timeout_s=5.0,
        )
        sched = InlineScheduler()
        rt = inline_runtime(s, sched)
        images = tmp_path / "manifest" / "images"
        colours = [(180, 40, 40), (40, 140, 60), (40, 70, 170), (200, 160, 30)]
        for i, c in enumerate(colours):
            product_image(images / f"p{i}.jpg", c, size=(320, 240))
        rows: list[dict[str, object]] = []
        for i in range(1, 13):
            prompt = f"Put product {i} on a white background"
            if i == 3:
                prompt = HOSTILE
            elif i in (5, 9):
                prompt += " [emulator:error]"
            elif i == 7:
                prompt += " [emulator:request-moderated]"
            rows.append(
                {
                    "id": f"sku-{i:02d}",
                    "prompt": prompt,
                    "input_image": f"images/p{i % 4}.jpg",
                    "input_image_2": "images/p0.jpg" if i == 4 else "",
                    "output_format": "png",
                    "seed": 100 + i,
                    "output_name": "edits/{id}.{ext}",
                }
            )
        manifest = write_csv(
            tmp_path / "manifest" / "m.csv",
            ["id", "prompt", "input_image", "input_image_2", "output_format", "seed", "output_name"],
            rows,
        )
        out = tmp_path / "out folder"  # a space: links must be encoded
        queued = start_run(rt, RunRequest(str(manifest), str(out)))
        sched.run(rt)
        try:
            yield Run(rt, queued.run_id, out, len(rows))
        finally:
            rt.close()


@pytest.mark.parametrize("own", [False, True], ids=["output-page", "runs-own-page"])
def test_the_run_writes_gallery_html_beside_results_csv(run: Run, own: bool) -> None:
    """Both pages: the output's (its root) and the run's own (runs/RUN_ID/, two folders deeper);
    every link resolves from the page's own folder."""
    folder = run.out / "runs" / run.run_id if own else run.out
    page = (folder / GALLERY_NAME).read_text(encoding="utf-8")
    assert (folder / "results.csv").exists()
    data = _embedded(page)
    assert data["run"] == (run.run_id if own else "output")
    assert len(data["rows"]) == run.total
    by_id = {r[1]: dict(zip(data["fields"], r, strict=True)) for r in data["rows"]}
    assert by_id["sku-05"]["status"] == "failed"
    assert by_id["sku-05"]["error"]
    assert by_id["sku-07"]["status"] == "moderated"
    assert by_id["sku-01"]["model"] == "flux-kontext-pro"
    assert by_id["sku-01"]["seed"] == "101"
    # Relative links: the output at its name, the staged input under _inputs/, both resolvable here.
    assert by_id["sku-01"]["run"] == run.run_id
    up = "../../" if own else ""
    assert by_id["sku-01"]["output"] == f"{up}edits/sku-01.png"
    assert len(by_id["sku-04"]["inputs"]) == 2
    for r in by_id.values():
        for link, _ in r["inputs"]:
            assert re.fullmatch(rf"{up}_inputs/[0-9a-f]{{64}}\.(jpg|png|webp)", link)
            assert (folder / unquote(link)).resolve().is_file()
        if r["output"]:
            assert (folder / unquote(r["output"])).resolve().is_file()


def test_hostile_prompt_stays_data_in_the_page_source(run: Run) -> None:
    page = (run.out / GALLERY_NAME).read_text(encoding="utf-8")
    assert HOSTILE not in page
    assert page.count("</script>") == 2  # the JSON block's end and the script's end, nothing more
    assert "onerror=alert" in page  # it is there, escaped inside the JSON
    assert _embedded(page)["rows"][2][3] == HOSTILE


def test_relative_links_for_each_kind_of_store_and_input() -> None:
    assert relative_link("file:///d/out%20x", "file:///d/out%20x/a%20b/c.png") == "a%20b/c.png"
    assert relative_link("s3://b/p?endpoint=http://h:9", "s3://b/p/x y.png?endpoint=http://h:9") == "x%20y.png"
    assert relative_link("s3://b/p", "s3://other/x.png") is None
    assert relative_link("s3://b/p", "s3://b/px/x.png") is None  # a sibling prefix, not inside the store
    assert relative_link("s3://b/p", "https://cdn.example/x.png") == "https://cdn.example/x.png"
    # A name that looks like a scheme cannot become one.
    assert relative_link("s3://b/p", "s3://b/p/javascript:alert(1)") == "javascript%3Aalert%281%29"


def test_ids_from_file_reads_the_downloaded_list(tmp_path: Path) -> None:
    f = tmp_path / "rejected.txt"
    f.write_bytes("\ufeffsku-01\r\n\n  sku-07  \n# a note\nsku-01\nsku 10\n".encode())
    assert ids_from_file(f) == ["sku-01", "sku-07", "sku 10"]
    (tmp_path / "empty.txt").write_text("")
    assert ids_from_file(tmp_path / "empty.txt") == []


def test_gallery_renders_while_rows_are_pending(redis_url: str) -> None:
    with Emulator(EmulatorConfig()) as emu:
        s = Settings(api_key=Secret(KEY), api_base=emu.base_url, redis_url=redis_url)
        rt = inline_runtime(s, InlineScheduler())
        try:
            rt.runs.register("r-pending", {"id": "r-pending", "output": "memory://g", "total": 2})
            rt.runs.put_rows("r-pending", [(1, {"id": "a", "prompt": "p", "images": []})])
            data = _embedded(render_gallery(rt.runs, "r-pending", "memory://g"))
        finally:
            rt.close()
    assert [r[2] for r in data["rows"]] == ["pending", "pending"]


# --- in the browser --------------------------------------------------------------------------------


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    unavailable("no chromium on PATH (Debian: apt-get install chromium)")
    raise AssertionError("unreachable")


def _browse(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            _chromium(),
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            "--allow-file-access-from-files",
            "--virtual-time-budget=10000",
            "--window-size=1400,4000",
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class _Dom(HTMLParser):
    """The dumped DOM's elements: body attributes, rows, and every attribute seen."""

    def __init__(self) -> None:
        super().__init__()
        self.body: dict[str, str] = {}
        self.rows: list[dict[str, str]] = []
        self.imgs: list[dict[str, str]] = []
        self.handlers: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.handlers += [(tag, k) for k in a if k.startswith("on")]
        if tag == "body":
            self.body = a
        elif tag == "section" and "row" in a.get("class", "").split():
            self.rows.append(a)
        elif tag == "img":
            self.imgs.append(a)


def _dom(url: str) -> tuple[_Dom, str]:
    done = _browse(url, "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    dom = _Dom()
    dom.feed(done.stdout)
    return dom, done.stdout


def test_every_image_of_the_first_page_loads_in_chromium(run: Run) -> None:
    url = (run.out / GALLERY_NAME).as_uri()
    dom, text = _dom(url)
    assert len(dom.rows) == run.total
    # 12 rows with 13 inputs, and 9 outputs: every one decoded (naturalWidth > 0) by the page's own count.
    assert len(dom.imgs) == 13 + 9
    assert dom.body.get("data-images") == "complete", dom.body
    assert dom.body.get("data-images-loaded") == str(13 + 9)
    assert dom.body.get("data-images-failed") == "0"
    # The hostile prompt is text in the DOM: no element got an event handler, and the page's script ran.
    assert dom.handlers == []
    assert not any(img.get("src") == "x" for img in dom.imgs)
    assert "&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in text
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "gallery.png"
    shot.unlink(missing_ok=True)
    done = _browse(url, f"--screenshot={shot}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.stat().st_size > 10_000


@pytest.mark.parametrize(
    ("address", "status", "n"), [("#status=failed", "failed", 2), ("?status=moderated", "moderated", 1)]
)
def test_status_filter_from_the_address(run: Run, address: str, status: str, n: int) -> None:
    dom, _ = _dom((run.out / GALLERY_NAME).as_uri() + address)
    assert [r["data-status"] for r in dom.rows] == [status] * n
    assert dom.body.get("data-shown") == str(n)
    # Failed and moderated rows have no output: only their inputs are on the page.
    assert len(dom.imgs) == n
    assert dom.body.get("data-images") == "complete"


def test_pages_hold_one_hundred_rows(redis_url: str, tmp_path: Path) -> None:
    with Emulator(EmulatorConfig()) as emu:
        s = Settings(api_key=Secret(KEY), api_base=emu.base_url, redis_url=redis_url)
        rt = inline_runtime(s, InlineScheduler())
        try:
            total = 250
            rt.runs.register("r-big", {"id": "r-big", "output": tmp_path.as_uri(), "total": total})
            rt.runs.put_rows("r-big", [(i, {"id": f"x{i}", "prompt": f"p{i}", "images": []}) for i in range(1, 251)])
            for i in range(1, total + 1):
                rt.runs.record("r-big", i, {"status": "failed" if i % 5 == 0 else "invalid", "error": "e"})
            (tmp_path / GALLERY_NAME).write_text(render_gallery(rt.runs, "r-big", tmp_path.as_uri()), encoding="utf-8")
        finally:
            rt.close()
    url = (tmp_path / GALLERY_NAME).as_uri()
    dom, _ = _dom(url + "#page=3")
    assert [r["data-row"] for r in dom.rows] == [str(i) for i in range(201, 251)]
    dom, _ = _dom(url + "#status=failed")
    assert len(dom.rows) == 50
    assert {r["data-status"] for r in dom.rows} == {"failed"}


def _embedded(page: str) -> dict[str, object]:
    m = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S)
    assert m is not None
    data: dict[str, object] = json.loads(m.group(1))
    return data


def test_gallery_command_rewrites_the_runs_own_page(run: Run) -> None:
    own = run.out / "runs" / run.run_id / GALLERY_NAME
    own.unlink()
    prefix_page = (run.out / GALLERY_NAME).read_bytes()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KONTEXT_")} | run.rt.settings.to_env()
    done = subprocess.run(
        [sys.executable, "-m", "kontext_batch", "gallery", run.run_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == own.as_uri()
    assert len(_embedded(own.read_text(encoding="utf-8"))["rows"]) == run.total  # type: ignore[arg-type]
    # The output's page (every run's newest rows) is not the one run's to replace from Redis.
    assert (run.out / GALLERY_NAME).read_bytes() == prefix_page
    missing = subprocess.run(
        [sys.executable, "-m", "kontext_batch", "gallery", "no-such-run"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode != 0
    assert "no run 'no-such-run'" in missing.stderr
