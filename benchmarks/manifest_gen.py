"""Generated manifests for the benchmark: N text-only rows, or rows sharing a few small input images.

::

    python benchmarks/manifest_gen.py out.csv --rows 100000            # text-only
    python benchmarks/manifest_gen.py out.csv --rows 600 --images 4    # 4 distinct 256x256 JPEGs

Rows with images make validation and staging do their real work (decode each image, upload it once
to ``_inputs/``); rows are otherwise alike, each with its own seed and output name.
"""

from __future__ import annotations

import argparse
import csv
import random
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

__all__ = ["make_images", "write_manifest"]

_HEADER = ("id", "model", "prompt", "input_image", "output_format", "seed", "output_name")
_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "pink")


def make_images(folder: Path, count: int, *, size: int = 256, seed: int = 1) -> list[Path]:
    """``count`` small, distinct JPEGs in ``folder`` (drawn from ``seed``, so re-runs write the same bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths: list[Path] = []
    for i in range(count):
        img = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x0, y0 = rng.randrange(size // 2), rng.randrange(size // 2)
            box = (x0, y0, x0 + rng.randrange(16, size // 2), y0 + rng.randrange(16, size // 2))
            draw.ellipse(box, fill=tuple(rng.randrange(256) for _ in range(3)))
        path = folder / f"input-{i}.jpg"
        img.save(path, "JPEG", quality=85)
        paths.append(path)
    return paths


def write_manifest(
    path: Path,
    rows: int,
    *,
    model: str = "pro",
    images: int = 0,
    output_format: str = "jpeg",
) -> Path:
    """Write a CSV manifest of ``rows`` rows; with ``images`` > 0 the rows cycle through that many inputs.

    Images go to ``<manifest folder>/images/`` and are referenced relative to the manifest.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    refs: Sequence[str] = ()
    if images > 0:
        refs = [f"images/{p.name}" for p in make_images(path.parent / "images", images)]
    ext = "jpg" if output_format == "jpeg" else output_format
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(_HEADER)
        for i in range(1, rows + 1):
            colour = _COLOURS[i % len(_COLOURS)]
            prompt = f"Studio product photo of item {i}, {colour} backdrop, soft shadow"
            if refs:
                prompt = f"Make the object {colour}, keep its shape and the lighting (row {i})"
            w.writerow(
                (f"r{i}", model, prompt, refs[i % len(refs)] if refs else "", output_format, i, f"out/r{i}.{ext}")
            )
    return path


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("path", type=Path, help="the CSV manifest to write")
    p.add_argument("--rows", type=int, default=600)
    p.add_argument("--model", default="pro", help="pro or max")
    p.add_argument("--images", type=int, default=0, help="distinct input images the rows share (0: text-only)")
    p.add_argument("--format", dest="output_format", default="jpeg", choices=("jpeg", "png", "webp"))
    a = p.parse_args(argv)
    print(write_manifest(a.path, a.rows, model=a.model, images=a.images, output_format=a.output_format))


if __name__ == "__main__":
    main()
