"""Render modes: ``full`` (each task's own image, the default) and ``fast`` (one shared image per size
and format, for load tests).

Given an emulator in fast mode, when many tasks of a few sizes and formats run over HTTP, then every
sample decodes with Pillow at its bucket size in its format, and the placeholder renderer ran once
per (size, format), counted by wrapping it, not by timing it. In full mode every Ready task gets its
own rendering, as before.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from PIL import Image

from kontext_batch.emulator import Emulator, EmulatorConfig, emulator_command, images
from kontext_batch.emulator.placeholders import PlaceholderSamples
from tests.emulator_fixtures import fast_config, http, image_b64, submit, wait_terminal

__all__ = ["http"]  # fixtures used by name

# (aspect_ratio, output_format) -> (size, Pillow format, content type)
CASES = {
    ("16:9", "jpeg"): ((1392, 752), "JPEG", "image/jpeg"),
    ("16:9", "png"): ((1392, 752), "PNG", "image/png"),
    ("9:21", "webp"): ((672, 1568), "WEBP", "image/webp"),
    ("1:1", "png"): ((1024, 1024), "PNG", "image/png"),
}
TASKS_PER_CASE = 5


class Calls:
    """Wraps a module function and counts its calls by their arguments (the renders run in threads)."""

    def __init__(self, fn: Callable[..., bytes], key: Callable[..., Any]) -> None:
        self.fn, self.key = fn, key
        self.counts: Counter[Any] = Counter()
        self._lock = threading.Lock()

    def __call__(self, *args: Any) -> bytes:
        with self._lock:
            self.counts[self.key(*args)] += 1
        return self.fn(*args)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> tuple[Calls, Calls]:
    """(placeholder renders by (w, h, format), full renders by (w, h, format)), patched where looked up."""
    placeholder = Calls(images.render_placeholder, lambda w, h, fmt: (w, h, fmt))
    full = Calls(images.render, lambda spec: (spec.width, spec.height, spec.output_format))
    monkeypatch.setattr(images, "render_placeholder", placeholder)
    monkeypatch.setattr(images, "render", full)
    return placeholder, full


Downloads = list[tuple[tuple[str, str], httpx.Response]]


def run_all(client: httpx.Client, base_url: str, with_input: bool = False) -> Downloads:
    """Submit TASKS_PER_CASE tasks of every case (distinct prompts and seeds), then download each sample."""
    pending = []
    for n in range(TASKS_PER_CASE):
        for ratio, fmt in CASES:
            body: dict[str, Any] = {"prompt": f"task {n} {ratio} {fmt}", "seed": n, "aspect_ratio": ratio}
            body["output_format"] = fmt
            if with_input:
                body["input_image"] = image_b64()
            resp = submit(client, base_url, body)
            assert resp.status_code == 200, resp.text
            pending.append(((ratio, fmt), resp.json()["polling_url"]))
    out = []
    for case, polling_url in pending:
        result = wait_terminal(client, polling_url)
        assert result["status"] == "Ready", result
        out.append((case, client.get(result["result"]["sample"])))
    return out


def test_fast_samples_are_real_images_of_the_requested_size_and_format(
    http: httpx.Client, counted: tuple[Calls, Calls]
) -> None:
    with Emulator(fast_config(render="fast")) as emu:
        downloads = run_all(http, emu.base_url, with_input=True)
        stats = emu.stats(tasks=False)
    for (ratio, fmt), resp in downloads:
        size, pil_format, mime = CASES[(ratio, fmt)]
        assert resp.status_code == 200
        assert resp.headers["content-type"] == mime
        img = Image.open(io.BytesIO(resp.content))
        img.load()
        assert (img.format, img.size) == (pil_format, size), (ratio, fmt)
    assert stats["downloads"] == len(CASES) * TASKS_PER_CASE


def test_fast_mode_renders_once_per_size_and_format_across_many_tasks(
    http: httpx.Client, counted: tuple[Calls, Calls]
) -> None:
    placeholder, full = counted
    with Emulator(fast_config(render="fast")) as emu:
        downloads = run_all(http, emu.base_url)
        stats = emu.stats(tasks=False)
    assert len(downloads) == len(CASES) * TASKS_PER_CASE
    expected = {(w, h, fmt) for (_, fmt), ((w, h), _, _) in CASES.items()}
    assert placeholder.counts == Counter(dict.fromkeys(expected, 1))
    assert full.total == 0
    assert stats["samples_rendered"] == len(expected)
    # Same size and format, other prompt and seed: the very same bytes.
    by_case: dict[tuple[str, str], set[bytes]] = {}
    for case, resp in downloads:
        by_case.setdefault(case, set()).add(resp.content)
    assert all(len(contents) == 1 for contents in by_case.values())


def test_full_mode_renders_every_task_its_own_image(http: httpx.Client, counted: tuple[Calls, Calls]) -> None:
    placeholder, full = counted
    assert EmulatorConfig().render == "full"
    with Emulator(fast_config()) as emu:
        downloads = run_all(http, emu.base_url)
        stats = emu.stats(tasks=False)
    assert placeholder.total == 0
    assert full.total == len(CASES) * TASKS_PER_CASE
    assert stats["samples_rendered"] == full.total
    assert len({resp.content for _, resp in downloads}) == len(downloads)


def test_the_placeholder_cache_is_bounded_and_renders_again_after_eviction(counted: tuple[Calls, Calls]) -> None:
    placeholder, _ = counted

    async def scenario() -> list[int]:
        cache = PlaceholderSamples(max_entries=2)
        sizes_seen = []
        for w, h in [(16, 16), (32, 16), (16, 16), (48, 16), (32, 16)]:
            data = await cache.sample(None, w, h, "png")
            assert Image.open(io.BytesIO(data)).size == (w, h)
            assert len(cache) <= 2
            sizes_seen.append(cache.renders)
        return sizes_seen

    # (16,16) hit while cached; (48,16) evicts (32,16), the least recently used, which then renders again.
    assert asyncio.run(scenario()) == [1, 2, 2, 3, 4]
    assert placeholder.counts[(32, 16, "png")] == 2
    assert placeholder.counts[(16, 16, "png")] == 1


def test_render_mode_is_an_option_with_help_and_bad_values_are_refused() -> None:
    runner = CliRunner()
    help_text = runner.invoke(emulator_command, ["--help"]).output
    assert "--render [full|fast]" in help_text
    assert "fast" in help_text
    assert "full" in help_text
    result = runner.invoke(emulator_command, ["--render", "turbo"])
    assert result.exit_code == 2
    assert "--render" in result.output
    with pytest.raises(ValueError, match="render"):
        EmulatorConfig(render="turbo")  # type: ignore[arg-type]
