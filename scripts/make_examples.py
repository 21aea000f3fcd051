#!/usr/bin/env python3
"""Draw the product photos that manifests/examples/ uses. Pillow only; the same pixels every run.

    python scripts/make_examples.py                 # writes manifests/examples/images/*.jpg
    python scripts/make_examples.py --out /tmp/x    # somewhere else

Each picture is drawn at twice its size and scaled down (smooth edges), on a studio backdrop with a
soft shadow, then saved as a small JPEG. Noise comes from ``random.Random(seed)``, never from
Pillow's unseeded noise effects, so the pixels only change when this file does. (The JPEG bytes can
still differ between libjpeg builds.)
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFilter

__all__ = ["PICTURES", "draw_all", "main"]

SS = 2  # supersampling factor
RGB = tuple[int, int, int]
Pt = tuple[float, float]


# -- building blocks --------------------------------------------------------------------------------


class Shot:
    """A canvas at SS times the output size; shapes are placed in 0..1 coordinates of the frame."""

    def __init__(self, w: int, h: int, top: RGB, bottom: RGB, seed: int) -> None:
        self.w, self.h, self.seed = w, h, seed
        self.W, self.H = w * SS, h * SS
        self.rng = random.Random(seed)
        self.im = _backdrop(self.W, self.H, top, bottom, self.rng)

    def p(self, pts: Sequence[Pt]) -> list[tuple[float, float]]:
        return [(x * self.W, y * self.H) for x, y in pts]

    def box(self, x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        return (x0 * self.W, y0 * self.H, x1 * self.W, y1 * self.H)

    def mask(self) -> tuple[Image.Image, ImageDraw.ImageDraw]:
        m = Image.new("L", (self.W, self.H), 0)
        return m, ImageDraw.Draw(m)

    def shadow(self, box: tuple[float, float, float, float], strength: int = 150, blur: float = 0.03) -> None:
        """A soft contact shadow: a blurred dark ellipse under the object."""
        m, d = self.mask()
        d.ellipse(self.box(*box), fill=strength)
        m = m.filter(ImageFilter.GaussianBlur(blur * self.W))
        dark = ImageChops.multiply(self.im, Image.new("RGB", self.im.size, (70, 66, 62)))
        self.im.paste(dark, (0, 0), m)

    def fill(self, m: Image.Image, paint: Image.Image | RGB) -> None:
        src = paint if isinstance(paint, Image.Image) else Image.new("RGB", self.im.size, paint)
        self.im.paste(src, (0, 0), m)

    def shade_x(self, base: RGB, x0: float, x1: float, profile: Sequence[float]) -> Image.Image:
        """``base`` lit by ``profile`` (brightness factors) from x0 to x1: a cylinder's shading."""
        return _profile_image(self.im.size, base, (x0, x1), profile, horizontal=True)

    def shade_y(self, base: RGB, y0: float, y1: float, profile: Sequence[float]) -> Image.Image:
        return _profile_image(self.im.size, base, (y0, y1), profile, horizontal=False)

    def glow(self, box: tuple[float, float, float, float], colour: RGB, strength: int, blur: float) -> None:
        """A blurred light patch (highlight, lamp glow)."""
        m, d = self.mask()
        d.ellipse(self.box(*box), fill=strength)
        self.fill(m.filter(ImageFilter.GaussianBlur(blur * self.W)), colour)

    def finish(self) -> Image.Image:
        out = self.im.resize((self.w, self.h), Image.Resampling.LANCZOS)
        return _grain(out, self.rng, amount=3)


def _clamp(v: float) -> int:
    return max(0, min(255, round(v)))


def _scale(c: RGB, k: float) -> RGB:
    return (_clamp(c[0] * k), _clamp(c[1] * k), _clamp(c[2] * k))


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return (_clamp(a[0] + (b[0] - a[0]) * t), _clamp(a[1] + (b[1] - a[1]) * t), _clamp(a[2] + (b[2] - a[2]) * t))


def _profile_image(
    size: tuple[int, int], base: RGB, span: tuple[float, float], profile: Sequence[float], *, horizontal: bool
) -> Image.Image:
    n = 256
    vals: list[RGB] = []
    for i in range(n):
        t = i / (n - 1)
        pos = t * (len(profile) - 1)
        j = min(int(pos), len(profile) - 2)
        k = profile[j] + (profile[j + 1] - profile[j]) * (pos - j)
        vals.append(_scale(base, k))
    strip = Image.new("RGB", (n, 1) if horizontal else (1, n))
    strip.putdata(vals)
    w, h = size
    a, b = span
    if horizontal:
        inner = strip.resize((max(1, round((b - a) * w)), h), Image.Resampling.BILINEAR)
        canvas = Image.new("RGB", size, vals[0])
        canvas.paste(Image.new("RGB", (w, h), vals[-1]), (round(b * w), 0))
        canvas.paste(inner, (round(a * w), 0))
    else:
        inner = strip.resize((w, max(1, round((b - a) * h))), Image.Resampling.BILINEAR)
        canvas = Image.new("RGB", size, vals[0])
        canvas.paste(Image.new("RGB", (w, h), vals[-1]), (0, round(b * h)))
        canvas.paste(inner, (0, round(a * h)))
    return canvas


def _backdrop(w: int, h: int, top: RGB, bottom: RGB, rng: random.Random) -> Image.Image:
    """A studio sweep: vertical gradient, a lighter centre, and faint low-frequency mottling."""
    grad = Image.linear_gradient("L").resize((w, h), Image.Resampling.BILINEAR)
    im = Image.composite(Image.new("RGB", (w, h), bottom), Image.new("RGB", (w, h), top), grad)
    spot = Image.radial_gradient("L").resize((w, h), Image.Resampling.BILINEAR)
    im = Image.composite(_scale_image(im, 0.9), im, spot.point(lambda v: min(255, v * 3 // 4)))
    small = Image.frombytes("L", (6, 6), rng.randbytes(36)).point(lambda v: 124 + v * 8 // 255)
    mottle = small.resize((w, h), Image.Resampling.BICUBIC).convert("RGB")
    return ImageChops.add(im, mottle, scale=1.0, offset=-128)


def _scale_image(im: Image.Image, k: float) -> Image.Image:
    return im.point(lambda v: _clamp(v * k))


def _grain(im: Image.Image, rng: random.Random, amount: int) -> Image.Image:
    noise = Image.frombytes("L", im.size, rng.randbytes(im.size[0] * im.size[1]))
    noise = noise.point(lambda v: 128 - amount + v * (2 * amount) // 255).convert("RGB")
    return ImageChops.add(im, noise, scale=1.0, offset=-128)


def _arc_points(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int = 24) -> list[Pt]:
    """Points on an ellipse from angle a0 to a1 (degrees, 0 = right, 90 = down)."""
    return [
        (
            cx + rx * math.cos(math.radians(a0 + (a1 - a0) * i / n)),
            cy + ry * math.sin(math.radians(a0 + (a1 - a0) * i / n)),
        )
        for i in range(n + 1)
    ]


CYLINDER = (0.55, 0.8, 1.0, 1.12, 1.05, 0.9, 0.7, 0.5)


# -- the products -----------------------------------------------------------------------------------


def shoe() -> Image.Image:
    """A brown leather oxford, side view, on warm grey."""
    s = Shot(800, 600, (214, 208, 200), (176, 170, 162), seed=11)
    s.shadow((0.12, 0.70, 0.90, 0.80), strength=190)
    leather = (112, 62, 34)
    upper = [
        (0.14, 0.70),
        (0.13, 0.58),
        (0.15, 0.44),
        (0.20, 0.36),
        (0.27, 0.35),
        (0.33, 0.40),
        (0.44, 0.45),
        (0.56, 0.46),
        (0.66, 0.50),
        (0.76, 0.55),
        (0.85, 0.60),
        (0.89, 0.66),
        (0.88, 0.71),
    ]
    m, d = s.mask()
    d.polygon(s.p(upper), fill=255)
    s.fill(m, s.shade_y(leather, 0.35, 0.72, (1.25, 1.1, 0.95, 0.8, 0.65)))
    # heel counter and toe cap seams
    d2 = ImageDraw.Draw(s.im)
    d2.line(s.p([(0.16, 0.48), (0.26, 0.50), (0.33, 0.60), (0.36, 0.71)]), fill=_scale(leather, 0.6), width=5)
    d2.line(s.p([(0.70, 0.52), (0.68, 0.60), (0.70, 0.71)]), fill=_scale(leather, 0.6), width=5)
    # laces over the vamp
    for i in range(5):
        x = 0.42 + i * 0.035
        d2.line(s.p([(x, 0.45 + i * 0.006), (x + 0.04, 0.49 + i * 0.008)]), fill=(40, 26, 18), width=6)
        d2.ellipse(
            s.box(x - 0.006, 0.445 + i * 0.006 - 0.008, x + 0.006, 0.445 + i * 0.006 + 0.008), fill=(200, 170, 90)
        )
    # sole and heel
    d2.rounded_rectangle(s.box(0.12, 0.70, 0.90, 0.745), radius=0.02 * s.W, fill=(38, 30, 26))
    d2.rectangle(s.box(0.13, 0.74, 0.27, 0.79), fill=(30, 24, 20))
    d2.line(s.p([(0.14, 0.715), (0.88, 0.715)]), fill=(90, 80, 70), width=3)
    s.glow((0.22, 0.38, 0.50, 0.44), (250, 235, 215), 70, 0.02)
    return s.finish()


def mug() -> Image.Image:
    """A cream ceramic mug with a handle, on pale blue-grey."""
    s = Shot(640, 640, (226, 232, 236), (190, 198, 204), seed=12)
    s.shadow((0.24, 0.74, 0.84, 0.84), strength=170)
    glaze = (236, 228, 212)
    # handle: a thick elliptical ring on the right
    m, d = s.mask()
    d.ellipse(s.box(0.58, 0.38, 0.84, 0.68), fill=255)
    d.ellipse(s.box(0.635, 0.44, 0.785, 0.62), fill=0)
    s.fill(m, s.shade_x(glaze, 0.58, 0.84, (0.9, 1.0, 0.8, 0.6)))
    # body
    m, d = s.mask()
    d.rectangle(s.box(0.26, 0.30, 0.70, 0.76), fill=255)
    d.ellipse(s.box(0.26, 0.72, 0.70, 0.80), fill=255)
    s.fill(m, s.shade_x(glaze, 0.26, 0.70, CYLINDER))
    # rim and the coffee inside
    m, d = s.mask()
    d.ellipse(s.box(0.26, 0.26, 0.70, 0.34), fill=255)
    s.fill(m, _scale(glaze, 0.92))
    m, d = s.mask()
    d.ellipse(s.box(0.28, 0.27, 0.68, 0.33), fill=255)
    s.fill(m, s.shade_y((92, 58, 36), 0.27, 0.33, (0.7, 1.0)))
    s.glow((0.33, 0.36, 0.39, 0.70), (255, 255, 250), 120, 0.01)
    return s.finish()


def handbag() -> Image.Image:
    """A burgundy leather handbag with a top handle and gold clasp, on blush pink."""
    s = Shot(800, 600, (236, 214, 208), (206, 180, 174), seed=13)
    s.shadow((0.22, 0.78, 0.80, 0.88), strength=180)
    leather = (128, 28, 44)
    # handle
    m, d = s.mask()
    d.ellipse(s.box(0.34, 0.12, 0.66, 0.52), fill=255)
    d.ellipse(s.box(0.37, 0.16, 0.63, 0.52), fill=0)
    d.rectangle(s.box(0.30, 0.34, 0.70, 0.60), fill=0)
    s.fill(m, _scale(leather, 0.8))
    # body: a trapezoid with rounded bottom corners
    body = [(0.30, 0.34), (0.70, 0.34), (0.78, 0.76), *_arc_points(0.74, 0.76, 0.04, 0.05, 0, 90), (0.26, 0.81)]
    body += _arc_points(0.26, 0.76, 0.04, 0.05, 90, 180)
    m, d = s.mask()
    d.polygon(s.p(body), fill=255)
    s.fill(m, s.shade_x(leather, 0.22, 0.78, (0.6, 0.9, 1.1, 1.05, 0.95, 0.7)))
    # flap and clasp
    m, d = s.mask()
    d.polygon(s.p([(0.30, 0.34), (0.70, 0.34), (0.72, 0.50), (0.50, 0.58), (0.28, 0.50)]), fill=255)
    s.fill(m, s.shade_y(leather, 0.34, 0.58, (1.15, 0.95, 0.75)))
    d2 = ImageDraw.Draw(s.im)
    d2.line(s.p([(0.28, 0.50), (0.50, 0.58), (0.72, 0.50)]), fill=_scale(leather, 0.5), width=4)
    d2.rounded_rectangle(s.box(0.47, 0.53, 0.53, 0.61), radius=8, fill=(212, 172, 80), outline=(150, 112, 40), width=3)
    s.glow((0.36, 0.38, 0.46, 0.72), (250, 200, 200), 50, 0.02)
    return s.finish()


def tshirt() -> Image.Image:
    """A heather-grey crew-neck t-shirt, flat lay on light oak."""
    s = Shot(720, 720, (222, 196, 160), (204, 176, 138), seed=14)
    # wood grain: thin darker streaks
    d0 = ImageDraw.Draw(s.im)
    for _ in range(40):
        y = s.rng.random()
        d0.line(s.p([(0, y), (1, y + s.rng.uniform(-0.02, 0.02))]), fill=(196, 166, 128), width=s.rng.randint(2, 6))
    s.im = s.im.filter(ImageFilter.GaussianBlur(2))
    cotton = (150, 154, 160)
    shirt = [
        (0.36, 0.14),
        (0.43, 0.17),
        (0.50, 0.18),
        (0.57, 0.17),
        (0.64, 0.14),
        (0.84, 0.24),
        (0.92, 0.42),
        (0.78, 0.48),
        (0.73, 0.40),
        (0.73, 0.88),
        (0.27, 0.88),
        (0.27, 0.40),
        (0.22, 0.48),
        (0.08, 0.42),
        (0.16, 0.24),
    ]
    m, d = s.mask()
    d.polygon(s.p(shirt), fill=255)
    sh = m.filter(ImageFilter.GaussianBlur(0.015 * s.W))
    s.fill(ImageChops.offset(sh, 8, 12).point(lambda v: v * 2 // 5), (120, 96, 70))
    s.fill(m, s.shade_y(cotton, 0.14, 0.88, (1.1, 1.0, 0.95, 0.9)))
    d2 = ImageDraw.Draw(s.im)
    d2.chord(s.box(0.40, 0.08, 0.60, 0.26), 0, 180, fill=_scale(cotton, 0.7))
    d2.arc(s.box(0.40, 0.08, 0.60, 0.26), 0, 180, fill=_scale(cotton, 1.15), width=10)
    for a, b in (((0.27, 0.40), (0.31, 0.19)), ((0.73, 0.40), (0.69, 0.19)), ((0.27, 0.85), (0.73, 0.85))):
        d2.line(s.p([a, b]), fill=_scale(cotton, 0.85), width=3)
    s.glow((0.35, 0.30, 0.65, 0.80), (235, 235, 240), 40, 0.06)
    return s.finish()


def chair() -> Image.Image:
    """A mid-century lounge chair: mustard upholstery, walnut legs, on warm white."""
    s = Shot(640, 800, (238, 234, 226), (208, 202, 192), seed=15)
    s.shadow((0.18, 0.82, 0.86, 0.90), strength=160)
    walnut, fabric = (92, 58, 36), (206, 156, 46)
    d2 = ImageDraw.Draw(s.im)
    for top, bot in (((0.30, 0.62), (0.22, 0.86)), ((0.70, 0.62), (0.80, 0.86)), ((0.40, 0.62), (0.36, 0.82))):
        d2.line(s.p([top, bot]), fill=walnut, width=int(0.022 * s.W))
    d2.line(s.p([(0.60, 0.62), (0.64, 0.82)]), fill=_scale(walnut, 0.8), width=int(0.02 * s.W))
    # backrest, then seat in front of it
    m, d = s.mask()
    d.rounded_rectangle(s.box(0.24, 0.16, 0.76, 0.58), radius=0.08 * s.W, fill=255)
    s.fill(m, s.shade_x(fabric, 0.24, 0.76, (0.7, 0.95, 1.05, 1.0, 0.8)))
    m, d = s.mask()
    d.rounded_rectangle(s.box(0.18, 0.52, 0.82, 0.66), radius=0.05 * s.W, fill=255)
    s.fill(m, s.shade_y(fabric, 0.52, 0.66, (1.15, 1.0, 0.7)))
    for x in (0.38, 0.50, 0.62):  # tufting buttons
        d2.ellipse(s.box(x - 0.008, 0.36 - 0.006, x + 0.008, 0.36 + 0.006), fill=_scale(fabric, 0.6))
    return s.finish()


def lamp() -> Image.Image:
    """A table lamp: linen drum shade, brass stem, white marble base, on sage green."""
    s = Shot(640, 800, (196, 206, 190), (160, 172, 154), seed=16)
    s.shadow((0.30, 0.84, 0.72, 0.90), strength=170)
    brass = (186, 150, 78)
    d2 = ImageDraw.Draw(s.im)
    m, d = s.mask()
    d.rectangle(s.box(0.485, 0.40, 0.515, 0.82), fill=255)
    s.fill(m, s.shade_x(brass, 0.485, 0.515, (0.6, 1.3, 0.9, 0.6)))
    m, d = s.mask()
    d.ellipse(s.box(0.34, 0.80, 0.66, 0.88), fill=255)
    d.rectangle(s.box(0.34, 0.78, 0.66, 0.84), fill=255)
    d.ellipse(s.box(0.34, 0.75, 0.66, 0.81), fill=255)
    s.fill(m, s.shade_x((232, 230, 226), 0.34, 0.66, CYLINDER))
    m, d = s.mask()
    d.polygon(s.p([(0.34, 0.14), (0.66, 0.14), (0.74, 0.44), (0.26, 0.44)]), fill=255)
    s.fill(m, s.shade_x((230, 220, 200), 0.26, 0.74, (0.7, 0.95, 1.08, 1.05, 0.85, 0.65)))
    d2.line(s.p([(0.26, 0.44), (0.74, 0.44)]), fill=(200, 188, 168), width=4)
    return s.finish()


def _watch_face(s: Shot, cx: float, cy: float, r: float, strap: RGB) -> None:
    d2 = ImageDraw.Draw(s.im)
    # straps above and below the case
    m, d = s.mask()
    d.rounded_rectangle(s.box(cx - r * 0.55, cy - r * 2.6, cx + r * 0.55, cy + r * 2.6), radius=0.02 * s.W, fill=255)
    s.fill(m, s.shade_x(strap, cx - r * 0.55, cx + r * 0.55, (0.7, 1.0, 1.05, 0.75)))
    for k in (1.6, 2.0):
        d2.ellipse(s.box(cx - 0.01, cy + r * k - 0.01, cx + 0.01, cy + r * k + 0.01), fill=_scale(strap, 0.5))
    # case, bezel, dial
    m, d = s.mask()
    d.ellipse(s.box(cx - r, cy - r, cx + r, cy + r), fill=255)
    s.fill(m, s.shade_y((200, 200, 204), cy - r, cy + r, (1.25, 1.0, 0.7)))
    d2.rectangle(s.box(cx + r * 0.95, cy - r * 0.12, cx + r * 1.15, cy + r * 0.12), fill=(170, 170, 176))
    rd = r * 0.86
    m, d = s.mask()
    d.ellipse(s.box(cx - rd, cy - rd, cx + rd, cy + rd), fill=255)
    s.fill(m, s.shade_y((24, 38, 64), cy - rd, cy + rd, (1.3, 1.0, 0.8)))
    for i in range(12):
        a = math.radians(i * 30)
        r0, r1 = rd * (0.78 if i % 3 else 0.68), rd * 0.9
        d2.line(
            s.p([(cx + r0 * math.cos(a), cy + r0 * math.sin(a)), (cx + r1 * math.cos(a), cy + r1 * math.sin(a))]),
            fill=(235, 235, 238),
            width=6 if i % 3 == 0 else 3,
        )
    for ang, length, width in ((-60, 0.5, 8), (30, 0.75, 5)):  # 10:10, the catalogue convention
        a = math.radians(ang - 90)
        d2.line(
            s.p([(cx, cy), (cx + rd * length * math.cos(a), cy + rd * length * math.sin(a))]),
            fill=(240, 240, 240),
            width=width,
        )
    d2.ellipse(s.box(cx - 0.008, cy - 0.008, cx + 0.008, cy + 0.008), fill=(240, 240, 240))


def watch() -> Image.Image:
    """A steel watch with a navy dial and tan leather strap, on slate."""
    s = Shot(640, 640, (120, 126, 134), (84, 90, 98), seed=17)
    s.shadow((0.36, 0.10, 0.68, 0.96), strength=120, blur=0.04)
    _watch_face(s, 0.5, 0.5, 0.17, (150, 96, 54))
    s.glow((0.40, 0.36, 0.52, 0.44), (255, 255, 255), 50, 0.015)
    return s.finish()


def sneakers() -> Image.Image:
    """A pair of white sneakers with a teal stripe and gum soles, on pale concrete."""
    s = Shot(800, 600, (214, 214, 210), (182, 182, 178), seed=18)

    def one(dx: float, dy: float, k: float) -> None:
        def q(pts: Sequence[Pt]) -> list[Pt]:
            return [(0.5 + (x - 0.5) * k + dx, 0.5 + (y - 0.5) * k + dy) for x, y in pts]

        (x0, y0), (x1, y1) = q([(0.10, 0.70), (0.92, 0.80)])
        s.shadow((x0, y0, x1, y1), strength=170)
        upper = [
            (0.12, 0.70),
            (0.12, 0.50),
            (0.18, 0.36),
            (0.30, 0.34),
            (0.40, 0.42),
            (0.55, 0.46),
            (0.75, 0.52),
            (0.88, 0.60),
            (0.90, 0.70),
        ]
        m, d = s.mask()
        d.polygon(s.p(q(upper)), fill=255)
        s.fill(
            m, s.shade_y((244, 244, 242), 0.5 + (0.34 - 0.5) * k + dy, 0.5 + (0.72 - 0.5) * k + dy, (1.05, 1.0, 0.85))
        )
        m, d = s.mask()
        (cx0, cy0), (cx1, cy1) = q([(0.17, 0.35), (0.36, 0.42)])
        d.ellipse(s.box(cx0, cy0, cx1, cy1), fill=255)
        s.fill(m, (70, 70, 72))  # the collar opening
        m, d = s.mask()
        d.polygon(s.p(q([(0.30, 0.62), (0.62, 0.50), (0.70, 0.53), (0.40, 0.66)])), fill=255)
        s.fill(m, (22, 140, 138))
        d2 = ImageDraw.Draw(s.im)
        d2.polygon(s.p(q([(0.11, 0.69), (0.91, 0.69), (0.92, 0.75), (0.12, 0.76)])), fill=(176, 128, 74))
        for i in range(4):
            x = 0.40 + i * 0.045
            d2.line(s.p(q([(x, 0.43 + i * 0.01), (x + 0.03, 0.47 + i * 0.012)])), fill=(210, 210, 208), width=5)

    one(-0.02, -0.10, 0.82)
    one(0.06, 0.08, 0.90)
    return s.finish()


def sunglasses() -> Image.Image:
    """Folded tortoiseshell sunglasses with dark green lenses, on sand beige."""
    s = Shot(800, 600, (232, 218, 196), (206, 190, 166), seed=19)
    s.shadow((0.12, 0.60, 0.88, 0.70), strength=130, blur=0.04)
    tort = (96, 56, 26)
    # the frame: a mottled brown layer cut out by the frame's shape
    shell = Image.new("RGB", s.im.size, tort)
    ds = ImageDraw.Draw(shell)
    for _ in range(160):
        x, y, r = s.rng.uniform(0.08, 0.92), s.rng.uniform(0.30, 0.66), s.rng.uniform(0.006, 0.02)
        ds.ellipse(s.box(x - r, y - r * 0.7, x + r, y + r * 0.7), fill=s.rng.choice(((150, 96, 44), (60, 32, 16))))
    shell = shell.filter(ImageFilter.GaussianBlur(4))
    m, d = s.mask()
    d.rectangle(s.box(0.16, 0.43, 0.84, 0.46), fill=255)  # folded temples behind the lenses
    s.fill(m, _scale(tort, 0.7))
    m, d = s.mask()
    for x0 in (0.12, 0.53):
        d.rounded_rectangle(s.box(x0, 0.34, x0 + 0.35, 0.62), radius=0.08 * s.W, fill=255)
    d.arc(s.box(0.44, 0.37, 0.56, 0.49), 180, 360, fill=255, width=int(0.02 * s.W))
    s.fill(m, shell)
    for x0 in (0.12, 0.53):
        m, d = s.mask()
        d.rounded_rectangle(s.box(x0 + 0.025, 0.37, x0 + 0.325, 0.59), radius=0.065 * s.W, fill=255)
        s.fill(m, s.shade_y((34, 58, 40), 0.37, 0.59, (1.4, 1.0, 0.7)))
        s.glow((x0 + 0.05, 0.39, x0 + 0.15, 0.44), (255, 255, 255), 60, 0.01)
    return s.finish()


def wrist() -> Image.Image:
    """A model's bare forearm resting across the frame, denim cuff at the left: the target for a watch."""
    s = Shot(800, 600, (222, 222, 224), (190, 190, 194), seed=20)
    skin = (214, 164, 130)
    arm = [
        (0.00, 0.40),
        (0.30, 0.42),
        (0.55, 0.45),
        (0.70, 0.46),
        (0.70, 0.60),
        (0.55, 0.61),
        (0.30, 0.64),
        (0.00, 0.68),
    ]
    hand = [
        (0.66, 0.45),
        (0.73, 0.42),
        (0.80, 0.37),
        (0.87, 0.355),
        (0.895, 0.375),
        (0.85, 0.42),
        (0.92, 0.445),
        (0.96, 0.49),
        (0.96, 0.54),
        (0.92, 0.60),
        (0.80, 0.64),
        (0.68, 0.61),
    ]  # fingers folded, thumb along the top
    m, d = s.mask()
    d.polygon(s.p(arm), fill=255)
    d.polygon(s.p(hand), fill=255)
    m = m.filter(ImageFilter.GaussianBlur(0.008 * s.W)).point(lambda v: 255 if v > 127 else 0)  # round the corners
    sh = m.filter(ImageFilter.GaussianBlur(0.02 * s.W))
    s.fill(ImageChops.offset(sh, 10, 26).point(lambda v: v // 2), (150, 150, 156))
    s.fill(m.filter(ImageFilter.GaussianBlur(1.5)), s.shade_y(skin, 0.36, 0.68, (1.08, 1.04, 0.95, 0.8)))
    d2 = ImageDraw.Draw(s.im)
    for i in range(3):
        x = 0.87 + i * 0.022
        d2.arc(s.box(x - 0.02, 0.48, x + 0.02, 0.60), 300, 60, fill=_scale(skin, 0.8), width=3)
    d2.arc(s.box(0.60, 0.44, 0.72, 0.62), 250, 290, fill=_scale(skin, 0.85), width=3)  # wrist bone
    m, d = s.mask()
    d.polygon(s.p([(0.00, 0.36), (0.24, 0.37), (0.26, 0.70), (0.00, 0.72)]), fill=255)
    s.fill(m, s.shade_y((64, 92, 140), 0.36, 0.72, (1.1, 1.0, 0.9, 0.7)))
    d2.line(s.p([(0.235, 0.375), (0.25, 0.69)]), fill=(210, 180, 120), width=3)
    return s.finish()


#: file name -> drawing function. The manifest refers to these names.
PICTURES: dict[str, Callable[[], Image.Image]] = {
    "oxford-brown.jpg": shoe,
    "mug-cream.jpg": mug,
    "handbag-burgundy.jpg": handbag,
    "tshirt-grey.jpg": tshirt,
    "chair-mustard.jpg": chair,
    "lamp-brass.jpg": lamp,
    "watch-navy.jpg": watch,
    "sneakers-white.jpg": sneakers,
    "sunglasses-tortoise.jpg": sunglasses,
    "model-wrist.jpg": wrist,
}


def draw_all(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in PICTURES.items():
        path = out / name
        draw().save(path, "JPEG", quality=84, optimize=True, progressive=False, subsampling="4:2:0")
        written.append(path)
    return written


def main() -> None:
    here = Path(__file__).resolve().parent.parent / "manifests" / "examples" / "images"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--out", type=Path, default=here, help=f"folder to write (default {here})")
    args = ap.parse_args()
    paths = draw_all(args.out)
    total = sum(p.stat().st_size for p in paths)
    for p in paths:
        print(f"{p.stat().st_size // 1024:5d} KiB  {p}")
    print(f"{total // 1024:5d} KiB  total, {len(paths)} images")


if __name__ == "__main__":
    main()
