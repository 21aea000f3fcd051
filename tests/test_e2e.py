"""End to end: the CLI against real Redis, real worker processes, the emulator and S3 over HTTP."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from kontext_batch.emulator import EmulatorConfig, LatencySpec
from kontext_batch.io.stores import open_store
from tests.e2e_support import E2E_KEY, product_image, read_results, running_system, write_csv

pytestmark = pytest.mark.e2e

HEADER = [
    "id",
    "model",
    "prompt",
    "input_image",
    "input_image_2",
    "aspect_ratio",
    "output_format",
    "seed",
    "sku",
]
BUCKET_SIZE = {
    None: (1024, 1024),
    "1:1": (1024, 1024),
    "16:9": (1392, 752),
    "9:16": (752, 1392),
    "4:3": (1184, 880),
    "3:2": (1248, 832),
}
FORMAT = {None: "PNG", "png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def catalogue(tmp: Path) -> tuple[Path, list[dict[str, object]], dict[str, str]]:
    """56 rows: pro and max, one and two input images, text-only, moderated and failing rows."""
    colours = [(180, 40, 40), (40, 90, 170), (30, 130, 70), (200, 160, 40), (90, 60, 140), (20, 20, 20)]
    _ = [product_image(tmp / "images" / f"p{i}.jpg", c) for i, c in enumerate(colours)]
    ratios = [None, "1:1", "16:9", "9:16", "4:3", "3:2"]
    formats = [None, "png", "jpeg", "webp"]
    rows: list[dict[str, object]] = []
    expect: dict[str, str] = {}

    def add(status: str, **r: object) -> None:
        r.setdefault("id", f"sku-{len(rows) + 1:03d}")
        r.setdefault("sku", f"SKU{len(rows) + 1:05d}")
        rows.append(r)
        expect[str(r["id"])] = status

    for i in range(30):
        add(
            "succeeded",
            model="pro",
            prompt=f"put product {i} on a pure white background",
            input_image=f"images/p{i % 6}.jpg",
            aspect_ratio=ratios[i % 6],
            output_format=formats[i % 4],
            seed=1000 + i,
        )
    for i in range(10):
        add(
            "succeeded",
            model="max",
            prompt=f"make the product matte black, studio light {i}",
            input_image=f"images/p{i % 6}.jpg",
            aspect_ratio=ratios[(i + 2) % 6],
            output_format="png",
        )
    for i in range(4):
        add(
            "succeeded",
            model="pro" if i % 2 else "max",
            prompt="place the item from image 2 next to image 1",
            input_image=f"images/p{i}.jpg",
            input_image_2=f"images/p{i + 1}.jpg",
            output_format="jpeg",
        )
    for i in range(4):
        add("succeeded", model="pro", prompt=f"a leather handbag on marble, catalogue shot {i}", aspect_ratio="16:9")
    for i in range(2):
        add("moderated", model="pro", prompt=f"[emulator:request-moderated] row {i}", input_image="images/p0.jpg")
        add("moderated", model="max", prompt=f"[emulator:content-moderated] row {i}", input_image="images/p1.jpg")
    for i in range(4):
        add("failed", model="pro", prompt=f"[emulator:error] row {i}", input_image="images/p2.jpg")
    return write_csv(tmp / "catalogue.csv", HEADER, rows), rows, expect


# The emulator lets far more tasks be active than the account allows, so a submit past the gate's cap
# is accepted and shows in its peak (with BFL's own caps it would be a 429 instead, and a peak check
# could never fail).
LOOSE_API = {"max_active": {"flux-kontext-max": 1000}, "max_active_total": 1000}


def test_catalogue_run_end_to_end(redis_url: str, s3_url: str, tmp_path: Path) -> None:
    manifest, rows, expect = catalogue(tmp_path)
    out_url = f"{s3_url}/nightly"
    cfg = EmulatorConfig(latency={"*": LatencySpec.fixed(0.3)}, api_keys=(E2E_KEY,), seed=11, **LOOSE_API)
    with running_system(redis_url, emulator=cfg, log_dir=tmp_path / "logs") as system:
        proc = system.cli("run", str(manifest), "--output", out_url, "--wait", "--max-failures", "8")
        assert proc.returncode == 0, proc.stderr[-3000:]
        stats = system.emu.stats()
    store = open_store(out_url)
    results = read_results(store.get("results.csv"))
    assert [r["row"] for r in results] == [str(i) for i in range(1, len(rows) + 1)]
    assert [r["id"] for r in results] == [str(r["id"]) for r in rows]
    for manifest_row, res in zip(rows, results, strict=True):
        assert res["status"] == expect[res["id"]], res
        assert res["sku"] == manifest_row["sku"]  # extra column carried through
        assert res["prompt"] == manifest_row["prompt"]
        if res["status"] != "succeeded":
            assert res["error"]
            assert not res["output_uri"]
            continue
        name = res["output_uri"].removeprefix(out_url + "/")
        with Image.open(io.BytesIO(store.get(name))) as im:
            assert im.format == FORMAT[manifest_row.get("output_format")]  # type: ignore[index]
            ratio = manifest_row.get("aspect_ratio")
            if not manifest_row.get("input_image") or ratio:
                assert im.size == BUCKET_SIZE[ratio]  # type: ignore[index]
        side = json.loads(store.get(name + ".json"))
        assert side["id"] == res["id"]
        assert side["bfl_task_id"] == res["bfl_task_id"]
        assert side["model"] == ("flux-kontext-max" if manifest_row["model"] == "max" else "flux-kontext-pro")
        assert len(side["input_digests"]) == sum(1 for k in ("input_image", "input_image_2") if manifest_row.get(k))
        if manifest_row.get("seed"):
            assert res["seed"] == str(manifest_row["seed"])
    fp = system.settings.api_key.fingerprint
    assert stats["peak_active"][fp]["total"] <= 24  # the gate's caps; the emulator would allow 1000
    assert stats["peak_active"][fp].get("flux-kontext-max", 0) <= 6
    assert stats["rejected_429"] == 0
    assert stats["submits"] == len(rows)


def test_two_workers_never_exceed_the_cap(redis_url: str, tmp_path: Path) -> None:
    rows = [{"id": i, "model": "max", "prompt": f"white background {i}"} for i in range(40)]
    manifest = write_csv(tmp_path / "m.csv", ["id", "model", "prompt"], rows)
    cfg = EmulatorConfig(latency={"*": LatencySpec.fixed(0.5)}, api_keys=(E2E_KEY,), **LOOSE_API)
    with running_system(redis_url, emulator=cfg) as system:
        proc = system.cli("run", str(manifest), "--output", str(tmp_path / "out"), "--wait")
        assert proc.returncode == 0, proc.stderr[-3000:]
        stats = system.emu.stats()
    fp = system.settings.api_key.fingerprint
    assert stats["peak_active"][fp]["flux-kontext-max"] == 6  # reached, never passed (the API would allow 1000)
    assert stats["rejected_429"] == 0
    assert stats["final_status"] == {"Ready": 40}


def test_second_run_skips_every_row(redis_url: str, tmp_path: Path) -> None:
    img = product_image(tmp_path / "shoe.jpg", (150, 30, 30))
    rows = [{"id": f"s{i}", "prompt": f"white background {i}", "input_image": img.name, "seed": i} for i in range(12)]
    manifest = write_csv(tmp_path / "m.csv", ["id", "prompt", "input_image", "seed"], rows)
    out = tmp_path / "out"
    with running_system(redis_url) as system:
        first = system.cli("run", str(manifest), "--output", str(out), "--wait")
        assert first.returncode == 0, first.stderr[-3000:]
        staged = sorted((out / "_inputs").iterdir())
        second = system.cli("run", str(manifest), "--output", str(out), "--wait")
        assert second.returncode == 0, second.stderr[-3000:]
        stats = system.emu.stats()
    assert stats["submits"] == 12  # nothing submitted the second time
    assert sorted((out / "_inputs").iterdir()) == staged  # the input was staged once, content-addressed
    results = read_results((out / "results.csv").read_bytes())
    assert {r["status"] for r in results} == {"skipped"}
    assert all(r["output_uri"].endswith(f"/s{i}.png") for i, r in enumerate(results))
