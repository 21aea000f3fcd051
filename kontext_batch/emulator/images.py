"""The emulator's image engine: check input images, pick the output size, render a visible "edit".

The output is not a model's: it is the first input fitted to the output bucket with a colour
treatment the prompt asks for (or one its hash picks), the other inputs as insets, and a caption
strip with the prompt's first words and the seed. Everything derives from (inputs, prompt, seed,
size, format), so the same request renders byte-identical files and another seed another file.
Text-only requests get a gradient and a pattern drawn from the prompt's hash.

:func:`render_placeholder` is the cheap render mode's image: it depends on (size, format) alone, so
one rendering serves every task of that size and format (see :mod:`.placeholders`).

Rendering is CPU work: callers run :func:`render` and :func:`render_placeholder` in a thread,
never on the event loop.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

from kontext_batch.emulator.aspect import TALLEST, WIDEST, parse_aspect_ratio

__all__ = [
    "KONTEXT_BUCKETS",
    "MAX_INPUT_BYTES",
    "MAX_INPUT_PIXELS",
    "InputImageError",
    "RenderSpec",
    "bucket_for",
    "bucket_for_ratio",
    "check_image",
    "content_type",
    "decode_base64_image",
    "megapixels",
    "render",
    "render_placeholder",
]

MAX_INPUT_BYTES: Final = 20 * 1024 * 1024
MAX_INPUT_PIXELS: Final = 20_000_000

#: (width, height) of FLUX.1 Kontext's ~1 MP output buckets, multiples of 16, from 21:9 to 9:21.
KONTEXT_BUCKETS: Final[tuple[tuple[int, int], ...]] = (
    (672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248), (880, 1184),
    (944, 1104), (1024, 1024), (1104, 944), (1184, 880), (1248, 832), (1328, 800), (1392, 752),
    (1456, 720), (1504, 688), (1568, 672),
)  # fmt: skip

_CONTENT_TYPES: Final = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_COLOURS: Final[dict[str, tuple[int, int, int]]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 90, 220),
    "yellow": (235, 200, 40),
    "purple": (140, 60, 190),
    "orange": (240, 130, 30),
    "pink": (240, 120, 170),
}


class InputImageError(ValueError):
    """Raised when an input image is not base64, does not decode, or exceeds 20 MB / 20 MP."""


def content_type(output_format: str) -> str:
    return _CONTENT_TYPES[output_format]


def bucket_for_ratio(width: float, height: float) -> tuple[int, int]:
    """The bucket nearest in (log) aspect ratio to width:height, clamped to 21:9..9:21."""
    ratio = min(max(width / height, TALLEST[0] / TALLEST[1]), WIDEST[0] / WIDEST[1])
    return min(KONTEXT_BUCKETS, key=lambda b: abs(math.log(b[0] / b[1]) - math.log(ratio)))


def bucket_for(aspect_ratio: str | None, default_ratio: str, first_input: tuple[int, int] | None) -> tuple[int, int]:
    """Output size: the requested ratio's bucket; else 1:1, or the first input's ratio (``input``)."""
    if aspect_ratio is not None:
        w, h = parse_aspect_ratio(aspect_ratio)
        return bucket_for_ratio(w, h)
    if default_ratio == "input" and first_input is not None:
        return bucket_for_ratio(*first_input)
    return 1024, 1024


def decode_base64_image(value: str) -> bytes:
    """Bytes of a base64 input; a ``data:...;base64,`` prefix is tolerated. Raises InputImageError."""
    text = value.strip()
    if text.startswith("data:"):
        _, sep, text = text.partition(",")
        if not sep:
            raise InputImageError("data URI without a comma before its base64 payload")
    text = "".join(text.split())
    if len(text) > (MAX_INPUT_BYTES // 3 + 1) * 4:
        raise InputImageError(f"input image larger than {MAX_INPUT_BYTES // (1024 * 1024)} MB")
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InputImageError("input image is neither an http(s) URL nor valid base64") from None
    if not data:
        raise InputImageError("input image is empty")
    return data


def check_image(data: bytes) -> tuple[int, int]:
    """Decode ``data`` fully and return its (width, height). Raises InputImageError with the reason."""
    if len(data) > MAX_INPUT_BYTES:
        raise InputImageError(f"input image larger than {MAX_INPUT_BYTES // (1024 * 1024)} MB")
    try:
        with warnings.catch_warnings():
            # Our own 20 MP limit comes first; Pillow's decompression-bomb warning is not news.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if width * height <= MAX_INPUT_PIXELS:
                    img.load()
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for undecodable bytes
        raise InputImageError(f"input image could not be decoded: {type(exc).__name__}") from None
    if width * height > MAX_INPUT_PIXELS:
        raise InputImageError(f"input image has {width * height / 1e6:.1f} megapixels; the limit is 20")
    return width, height


@dataclass(frozen=True)
class RenderSpec:
    """Everything the output depends on."""

    prompt: str
    seed: int
    width: int
    height: int
    output_format: str = "png"
    inputs: Sequence[bytes] = field(default=(), repr=False)


def _digest(spec: RenderSpec) -> bytes:
    h = hashlib.sha256()
    for part in (spec.prompt.encode(), str(spec.seed).encode(), f"{spec.width}x{spec.height}".encode()):
        h.update(len(part).to_bytes(8, "big") + part)
    for data in spec.inputs:
        h.update(hashlib.sha256(data).digest())
    return h.digest()


def _open_rgb(data: bytes) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        opened = Image.open(io.BytesIO(data))
        img = ImageOps.exif_transpose(opened) or opened
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return img.convert("RGB")


def _text_only_base(spec: RenderSpec, rng: random.Random) -> Image.Image:
    """A two-colour gradient at a hashed angle with a few translucent shapes."""
    c1 = tuple(rng.randrange(30, 226) for _ in range(3))
    c2 = tuple(rng.randrange(30, 226) for _ in range(3))
    size = math.ceil(math.hypot(spec.width, spec.height))  # covers the frame at any angle
    ramp = Image.linear_gradient("L").resize((size, size)).rotate(rng.uniform(0, 360))
    ramp = ramp.crop(
        ((size - spec.width) // 2, (size - spec.height) // 2, (size + spec.width) // 2, (size + spec.height) // 2)
    )
    img = ImageOps.colorize(ramp, black=c1, white=c2).convert("RGB")
    overlay = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    for _ in range(rng.randint(4, 9)):
        r = rng.randint(spec.width // 20, spec.width // 5)
        x, y = rng.randrange(spec.width), rng.randrange(spec.height)
        colour = (*(rng.randrange(256) for _ in range(3)), 90)
        if rng.random() < 0.5:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        else:
            draw.rectangle((x - r, y - r, x + r, y + r), fill=colour)
    img.paste(overlay, mask=overlay)
    return img


def _treatment(prompt: str, prompt_hash: int) -> str:
    p = prompt.lower()
    if any(w in p for w in ("black and white", "grayscale", "greyscale", "monochrome")):
        return "grayscale"
    if any(w in p for w in ("sepia", "vintage", "old photo")):
        return "sepia"
    if "background" in p:
        return "background"
    if any(w in p for w in ("invert", "negative")):
        return "invert"
    found = [(p.find(c), c) for c in _COLOURS if c in p]
    if found:
        return "tint:" + min(found)[1]
    return ("warm", "cool", "posterize", "contrast", "tint:blue", "tint:purple")[prompt_hash % 6]


def _apply(img: Image.Image, treatment: str, strength: float) -> Image.Image:  # noqa: PLR0911 - one return per output format
    if treatment == "grayscale":
        return ImageOps.grayscale(img).convert("RGB")
    if treatment == "sepia":
        return ImageOps.colorize(ImageOps.grayscale(img), black=(46, 31, 15), white=(245, 230, 200))
    if treatment == "invert":
        return ImageOps.invert(img)
    if treatment == "posterize":
        return ImageOps.posterize(img, 3)
    if treatment == "contrast":
        return ImageOps.autocontrast(img, cutoff=2)
    if treatment == "background":
        # Whiten everything but the centre, feathered: a plausible "white background" edit.
        w, h = img.size
        mask = Image.new("L", img.size, 255)
        ImageDraw.Draw(mask).ellipse((w * 0.18, h * 0.12, w * 0.82, h * 0.88), fill=0)
        mask = mask.filter(ImageFilter.GaussianBlur(max(w, h) // 40))
        return Image.composite(Image.new("RGB", img.size, (250, 250, 250)), img, mask)
    colour = {"warm": (255, 150, 60), "cool": (60, 140, 255)}.get(treatment)
    if colour is None:
        colour = _COLOURS[treatment.removeprefix("tint:")]
    return Image.blend(img, Image.new("RGB", img.size, colour), strength)


def _insets(img: Image.Image, refs: Sequence[bytes]) -> None:
    """Paste the extra reference images as framed thumbnails along the top-right edge."""
    w, _ = img.size
    side = w // 5
    margin = max(8, w // 64)
    x = w - margin - side
    for data in refs:
        thumb = ImageOps.fit(_open_rgb(data), (side, side), Image.Resampling.BILINEAR)
        framed = ImageOps.expand(thumb, border=3, fill=(255, 255, 255))
        img.paste(framed, (x - 3, margin - 3))
        x -= side + margin


def _caption(img: Image.Image, prompt: str, seed: int) -> None:
    w, h = img.size
    strip = max(28, h // 24)
    words = " ".join(prompt.split()[:6])
    if len(words) > 60:
        words = words[:57] + "..."
    text = f"{words}  |  seed {seed}"
    band = Image.new("RGBA", (w, strip), (0, 0, 0, 160))
    img.paste(band, (0, h - strip), mask=band)
    font = ImageFont.load_default(size=int(strip * 0.6))
    ImageDraw.Draw(img).text((strip // 3, h - strip + strip // 5), text, fill=(255, 255, 255), font=font)


def render(spec: RenderSpec) -> bytes:
    """Render the output image for ``spec``, encoded in its format. CPU-bound: call from a thread."""
    digest = _digest(spec)
    rng = random.Random(digest)
    prompt_hash = int.from_bytes(hashlib.sha256(spec.prompt.encode()).digest()[:8], "big")
    size = (spec.width, spec.height)
    if spec.inputs:
        base = ImageOps.fit(_open_rgb(spec.inputs[0]), size, Image.Resampling.BICUBIC)
    else:
        base = _text_only_base(spec, rng)
    strength = 0.22 + (spec.seed % 11) * 0.02
    img = _apply(base, _treatment(spec.prompt, prompt_hash), strength)
    if len(spec.inputs) > 1:
        _insets(img, spec.inputs[1:])
    _caption(img, spec.prompt, spec.seed)
    return _encode(img, spec.output_format)


def render_placeholder(width: int, height: int, output_format: str) -> bytes:
    """A plain gradient of ``width`` x ``height`` labelled as a placeholder, encoded in ``output_format``."""
    ramp = Image.linear_gradient("L").resize((width, height))
    img = ImageOps.colorize(ramp, black=(40, 60, 110), white=(170, 190, 230)).convert("RGB")
    _caption(img, f"emulator placeholder {width}x{height} {output_format}", 0)
    return _encode(img, output_format)


def _encode(img: Image.Image, output_format: str) -> bytes:
    out = io.BytesIO()
    if output_format == "jpeg":
        img.save(out, "JPEG", quality=90)
    elif output_format == "webp":
        img.save(out, "WEBP", quality=85, method=4)
    else:
        img.save(out, "PNG", compress_level=3)
    return out.getvalue()


def megapixels(size: tuple[int, int]) -> float:
    return round(size[0] * size[1] / 1e6, 2)
