"""Pictures that are not digits, as a person draws or types them to test the service: the tests' negatives.

Made by other code than the trainer's negatives (trainer/negatives.py), so a test measures what the model
learnt about "not a digit", not what it memorised: other fonts (italic, bold italic and typewriter faces the
trainer never draws with), other kinds (smileys, arrows, hand-drawn scribbles with momentum), PIL's drawing
instead of OpenCV's, and whole pictures as users send them (PNG files of 160-400 pixels, dark ink on paper,
light ink in dark mode, or ink only in the alpha channel of a web canvas).

    from testkit.not_digits import KINDS, make_not_digits
    for data, kind in make_not_digits(per_kind=100, seed=0): ...   # data: PNG bytes

Characters a person would read as a digit (O, l, I, S, Z, B, g, q, ...) are never drawn: a hand-drawn "O"
is a zero.
"""

from __future__ import annotations

import io
import math
import zlib
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

KINDS = ("letters", "symbols", "words", "scribbles", "smileys", "shapes", "arrows")

# Fonts the trainer never draws its negatives with (trainer/negatives.py TRAIN_FONTS), from matplotlib.
TEST_FONTS = (
    "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSans-Oblique.ttf",
    "STIXGeneralBolIta.ttf",
    "STIXGeneralItalic.ttf",
    "cmb10.ttf",
    "cmti10.ttf",
    "cmtt10.ttf",
)
LETTERS = "AEFHKMNRUVWXYacehkmnrwxy"
SYMBOLS = "@?&%#$*€£¥©®§¶πΔΩλ∞✓"


class NotDigit(NamedTuple):
    data: bytes  # a PNG file
    kind: str


@lru_cache(maxsize=1)
def test_fonts() -> tuple[Path, ...]:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return tuple(folder / name for name in TEST_FONTS if (folder / name).is_file())


def _canvas(rng: np.random.Generator) -> tuple[Image.Image, int]:
    side = int(rng.integers(160, 400))
    return Image.new("L", (side, side), 0), side


def _typed(text: str, rng: np.random.Generator) -> Image.Image:
    fonts = test_fonts()
    size = int(rng.integers(40, 160) / max(1, len(text)) ** 0.4)
    font = ImageFont.truetype(str(fonts[rng.integers(len(fonts))]), size)
    left, top, right, bottom = font.getbbox(text)
    pad = int(rng.integers(10, 60))
    image = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    ImageDraw.Draw(image).text((pad - left, pad - top), text, font=font, fill=255)
    return image


def letters(rng: np.random.Generator) -> Image.Image:
    return _typed(LETTERS[rng.integers(len(LETTERS))], rng)


def symbols(rng: np.random.Generator) -> Image.Image:
    return _typed(SYMBOLS[rng.integers(len(SYMBOLS))], rng)


def words(rng: np.random.Generator) -> Image.Image:
    return _typed("".join(rng.choice(list(LETTERS), int(rng.integers(3, 8)))), rng)


def scribbles(rng: np.random.Generator) -> Image.Image:
    """One continuous hand-drawn stroke: a random walk whose heading drifts (momentum), kept in the canvas."""
    image, side = _canvas(rng)
    steps = int(rng.integers(60, 160))
    heading, turn = rng.uniform(0, 2 * math.pi), 0.0
    x, y = side / 2, side / 2
    points = [(x, y)]
    step = side / 40
    for _ in range(steps):
        turn = 0.85 * turn + rng.normal(0, 0.25)
        heading += turn
        x, y = x + step * math.cos(heading), y + step * math.sin(heading)
        if not (0.1 * side < x < 0.9 * side and 0.1 * side < y < 0.9 * side):
            heading += math.pi * 0.75
            x, y = min(max(x, 0.1 * side), 0.9 * side), min(max(y, 0.1 * side), 0.9 * side)
        points.append((x, y))
    ImageDraw.Draw(image).line(points, fill=255, width=_width(side, rng), joint="curve")
    return image


def smileys(rng: np.random.Generator) -> Image.Image:
    """A face: a ring, two eyes (dots or short strokes) and a mouth (smile, frown or straight)."""
    image, side = _canvas(rng)
    draw = ImageDraw.Draw(image)
    width = _width(side, rng)
    r = side * rng.uniform(0.3, 0.42)
    c = side / 2
    draw.ellipse([c - r, c - r, c + r, c + r], outline=255, width=width)
    eye_y, eye_dx, eye_r = c - r * rng.uniform(0.2, 0.4), r * rng.uniform(0.28, 0.45), r * rng.uniform(0.08, 0.16)
    for sx in (-1, 1):
        ex = c + sx * eye_dx
        if rng.uniform() < 0.7:
            draw.ellipse([ex - eye_r, eye_y - eye_r, ex + eye_r, eye_y + eye_r], fill=255)
        else:
            draw.line([(ex, eye_y - eye_r * 1.5), (ex, eye_y + eye_r * 1.5)], fill=255, width=width)
    mouth = rng.integers(3)
    mr = r * rng.uniform(0.4, 0.65)
    my = c + r * rng.uniform(0.05, 0.25)
    if mouth == 0:  # smile
        draw.arc([c - mr, my - mr, c + mr, my + mr], 20, 160, fill=255, width=width)
    elif mouth == 1:  # frown
        draw.arc([c - mr, my + r * 0.3, c + mr, my + r * 0.3 + 2 * mr], 200, 340, fill=255, width=width)
    else:
        draw.line([(c - mr, my + r * 0.2), (c + mr, my + r * 0.2)], fill=255, width=width)
    return image


def shapes(rng: np.random.Generator) -> Image.Image:
    """An outlined or filled square, diamond, triangle, hexagon, star or rounded box (never a ring: a zero)."""
    image, side = _canvas(rng)
    draw = ImageDraw.Draw(image)
    width = _width(side, rng)
    c, r = side / 2, side * rng.uniform(0.28, 0.42)
    kind = rng.integers(6)
    fill = 255 if rng.uniform() < 0.25 else None
    if kind == 5:
        draw.rounded_rectangle(
            [c - r, c - r * 0.7, c + r, c + r * 0.7], radius=r * 0.2, outline=255, width=width, fill=fill
        )
        return image
    sides = {0: 4, 1: 4, 2: 3, 3: 6, 4: 5}[int(kind)]
    phase = {0: math.pi / 4, 1: 0.0}.get(int(kind), rng.uniform(0, 2 * math.pi))
    if kind == 4:  # a five-pointed star drawn in one line
        points = [
            (c + r * math.cos(phase + k * 4 * math.pi / 5), c + r * math.sin(phase + k * 4 * math.pi / 5))
            for k in range(6)
        ]
        draw.line(points, fill=255, width=width, joint="curve")
        return image
    points = [
        (c + r * math.cos(phase + k * 2 * math.pi / sides), c + r * math.sin(phase + k * 2 * math.pi / sides))
        for k in range(sides)
    ]
    draw.polygon(points, outline=255, width=width, fill=fill)
    return image


def arrows(rng: np.random.Generator) -> Image.Image:
    """A straight or bent arrow in any direction, with an open or filled head."""
    image, side = _canvas(rng)
    draw = ImageDraw.Draw(image)
    width = _width(side, rng)
    angle = rng.uniform(0, 2 * math.pi)
    length = side * rng.uniform(0.55, 0.8)
    c = side / 2
    dx, dy = math.cos(angle) * length / 2, math.sin(angle) * length / 2
    tail, tip = (c - dx, c - dy), (c + dx, c + dy)
    if rng.uniform() < 0.3:  # bent: tail goes sideways first
        bend = (c - dy * 0.6, c + dx * 0.6)
        draw.line([tail, bend, tip], fill=255, width=width, joint="curve")
        angle = math.atan2(tip[1] - bend[1], tip[0] - bend[0])
    else:
        draw.line([tail, tip], fill=255, width=width)
    head = length * rng.uniform(0.28, 0.4)
    spread = rng.uniform(0.45, 0.7)
    left = (tip[0] - head * math.cos(angle - spread), tip[1] - head * math.sin(angle - spread))
    right = (tip[0] - head * math.cos(angle + spread), tip[1] - head * math.sin(angle + spread))
    if rng.uniform() < 0.4:
        draw.polygon([tip, left, right], fill=255)
    else:
        draw.line([left, tip, right], fill=255, width=width, joint="curve")
    return image


def _width(side: int, rng: np.random.Generator) -> int:
    return max(2, int(side * rng.uniform(0.025, 0.07)))


DRAW = {
    "letters": letters,
    "symbols": symbols,
    "words": words,
    "scribbles": scribbles,
    "smileys": smileys,
    "shapes": shapes,
    "arrows": arrows,
}


def as_sent(ink: Image.Image, rng: np.random.Generator) -> bytes:
    """Ink (L, 255 = ink) -> a PNG as a user would send it: paint program, dark mode, web canvas (alpha) or
    coloured pen on tinted paper, a little blurred sometimes."""
    if rng.uniform() < 0.3:
        ink = ink.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))
    coverage = np.asarray(ink, np.float32)[..., None] / 255
    style = rng.integers(4)
    if style == 2:  # web canvas: black ink in the alpha channel only
        rgba = np.zeros((*coverage.shape[:2], 4), np.uint8)
        rgba[..., 3] = (coverage[..., 0] * 255).astype(np.uint8)
        picture = Image.fromarray(rgba, "RGBA")
    else:
        ink_rgb, paper_rgb = {
            0: ((0, 0, 0), (255, 255, 255)),
            1: ((235, 235, 235), (28, 28, 32)),
            3: ((20, 50, 160), (250, 245, 225)),
        }[int(style)]
        rgb = np.array(paper_rgb, np.float32) + coverage * (np.array(ink_rgb, np.float32) - np.array(paper_rgb))
        picture = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def make_not_digits(*, per_kind: int = 100, seed: int = 0, kinds: tuple[str, ...] = KINDS) -> list[NotDigit]:
    """`per_kind` pictures of each kind, deterministic for `seed` (each kind from its own generator)."""
    out = []
    for kind in kinds:
        rng = np.random.default_rng([seed, zlib.crc32(kind.encode())])
        while sum(1 for p in out if p.kind == kind) < per_kind:
            ink = DRAW[kind](rng)
            if ink.getbbox() is None:  # a character the font lacks, drawn as nothing: draw another
                continue
            out.append(NotDigit(as_sent(ink, rng), kind))
    return out
