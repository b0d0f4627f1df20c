"""Realistic users' pictures of digits, made from MNIST *test* digits (which no model trains on) and from fonts.

Each style imitates one way people send a digit: a paint program, a web canvas that keeps the ink in the alpha
channel, a thin pen, a small digit somewhere on a big canvas, coloured ink on coloured paper, a phone photo of
paper, dark mode, and typed digits in the machine's fonts. Everything is deterministic given the seed.

    from testkit.user_images import make_user_images, make_printed_digits
    images = make_user_images(mnist.test_images.numpy(), mnist.test_labels.numpy(), per_style=50, seed=0)
    for data, label, style in images: ...       # data: the encoded file's bytes

A MNIST digit becomes a drawing at realistic resolution by upscaling it smoothly (cubic) and binarising it, then
changing its stroke width with distance transforms (anti-aliased edges): grown for a brush, eroded a little for a
finer pen. For a pen far finer than the writer's (1-3 px on a big canvas) the shape is thinned to a one-pixel
skeleton (Zhang-Suen) and traced with a round pen, unless the skeleton leaves out a filled loop or a blotted arm
(the digit would become another): those are drawn as thin as their shape allows. So the same digit can be drawn
with a 1-pixel pen or a 60-pixel brush.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from shared.normalize import distance_to_zero

# A pen thinner than this share of the writer's own stroke draws the digit's centre line; from it up, the shape
# eroded (draw_digit).
THINNEST_ERODED = 0.6
# The share of a shape's pixels its centre line may leave out before a fine pen would draw another digit (loses_parts).
CENTRE_LINE_MISSES = 0.04


class UserImage(NamedTuple):
    data: bytes  # an encoded image file (PNG, JPEG, ...)
    label: int
    style: str


# ---------------------------------------------------------------------------------------------------------------
# Drawing a MNIST digit at any size with any pen


def digit_shape(digit: np.ndarray, height: int) -> np.ndarray:
    """A (28, 28) uint8 MNIST digit at `height` pixels for its bounding box's long side: (h, w) bool.

    Cropped to the ink, upscaled smoothly (cubic), binarised at mid-grey; a margin of two pixels.
    """
    ys, xs = np.nonzero(digit > 30)
    crop = cv2.copyMakeBorder(
        digit[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1], 2, 2, 2, 2, cv2.BORDER_CONSTANT, value=0
    )
    scale = height / (max(crop.shape) - 4)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    return cv2.resize(crop, size, interpolation=cv2.INTER_CUBIC) >= 128


def stroke_width_of(shape: np.ndarray) -> float:
    """2 * area / perimeter of a (h, w) bool shape: a stroke's width, in pixels."""
    contours, _ = cv2.findContours(shape.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    return 2.0 * np.count_nonzero(shape) / max(sum(cv2.arcLength(c, True) for c in contours), 1.0)


def reshape_stroke(shape: np.ndarray, radius: float) -> np.ndarray:
    """Grow (radius > 0) or erode (< 0) a (h, w) bool shape's strokes: (h', w') float32 coverage, anti-aliased."""
    pad = int(np.ceil(max(radius, 0))) + 2
    shape = np.pad(shape, pad)
    if radius >= 0:
        outside = distance_to_zero((~shape).astype(np.uint8))
        return np.clip(radius + 1.0 - outside, 0, 1).astype(np.float32)  # the shape's own pixels are at 0
    inside = distance_to_zero(shape.astype(np.uint8))
    return np.clip(inside + radius, 0, 1).astype(np.float32)  # its edge pixels are at 1


def _zhang_suen_tables() -> tuple[np.ndarray, np.ndarray]:
    """For each of the 256 neighbourhoods (bit i set = neighbour P(i+2) is ink, clockwise from north), whether
    Zhang & Suen's first and second sub-iteration delete the centre pixel. (256,) bool each."""
    codes = np.arange(256)
    p = [(codes >> i) & 1 for i in range(8)]  # P2 (N), P3 (NE), P4 (E), P5 (SE), P6 (S), P7 (SW), P8 (W), P9 (NW)
    neighbours = sum(p)
    transitions = sum((p[i] == 0) & (p[(i + 1) % 8] == 1) for i in range(8))
    common = (neighbours >= 2) & (neighbours <= 6) & (transitions == 1)
    first = common & (p[0] * p[2] * p[4] == 0) & (p[2] * p[4] * p[6] == 0)
    second = common & (p[0] * p[2] * p[6] == 0) & (p[0] * p[4] * p[6] == 0)
    return first, second


_ZHANG_SUEN = tuple(table.astype(np.uint8) for table in _zhang_suen_tables())  # for cv2.LUT
# filter2D correlates: each neighbour's weight is its bit, so the result is the neighbourhood's code.
_NEIGHBOUR_BITS = np.array([[128, 1, 2], [64, 0, 4], [32, 16, 8]], np.float32)


def zhang_suen_thinning(mask: np.ndarray) -> np.ndarray:
    """Thin a (h, w) bool shape to a one-pixel, 8-connected skeleton (Zhang & Suen, 1984), whole-array steps.

    Each sub-iteration reads every pixel's 8 neighbours as one byte (a correlation with their bit weights) and
    looks its fate up in a 256-entry table, so a pass costs two array operations whatever the picture.
    """
    img = mask.astype(np.uint8)
    while True:
        changed = False
        for table in _ZHANG_SUEN:
            codes = cv2.filter2D(img, cv2.CV_8U, _NEIGHBOUR_BITS, borderType=cv2.BORDER_CONSTANT)
            delete = cv2.bitwise_and(cv2.LUT(codes, table), img)
            if cv2.countNonZero(delete):
                img = cv2.subtract(img, delete)
                changed = True
        if not changed:
            return img.astype(bool)


def pen_stroke(skeleton: np.ndarray, radius: float) -> np.ndarray:
    """Paint a skeleton (h, w) bool with a round pen: (h + 2p, w + 2p) float32 coverage in [0, 1], anti-aliased."""
    pad = int(np.ceil(radius)) + 2
    skeleton = np.pad(skeleton, pad)
    distance = distance_to_zero((~skeleton).astype(np.uint8))  # exact: the same picture on every run
    return np.clip(radius + 0.5 - distance, 0, 1).astype(np.float32)


def draw_digit(digit: np.ndarray, height: int, stroke_width: float | None = None) -> np.ndarray:
    """The digit drawn `height` pixels tall with strokes `stroke_width` pixels wide: (h, w) float32 coverage.

    At or above the writer's own width, the MNIST shape itself is grown (it keeps the writer's pressure
    variations). Somewhat thinner, it is eroded, with its centre line traced at half the width on top so that
    thin parts do not break (measured: +1 point of a MNIST model's accuracy over erosion alone). Far thinner (a
    fine pen on a big canvas), only the centre line is traced, with a round pen, unless that line leaves a part of
    the digit out (loses_parts): then it is eroded as far as THINNEST_ERODED. None keeps the writer's width.
    """
    return draw_digit_and_pen(digit, height, stroke_width)[0]


def draw_digit_and_pen(digit: np.ndarray, height: int, stroke_width: float | None = None) -> tuple[np.ndarray, float]:
    """draw_digit, and the stroke width it drew with: the one asked for, but for a digit loses_parts widens."""
    shape = digit_shape(digit, height)
    natural = stroke_width_of(shape)
    stroke_width = natural if stroke_width is None else stroke_width
    if stroke_width >= natural:
        return reshape_stroke(shape, (stroke_width - natural) / 2), stroke_width
    centre_line = zhang_suen_thinning(shape)
    if stroke_width < THINNEST_ERODED * natural:
        if not loses_parts(shape, centre_line, natural):
            return pen_stroke(centre_line, max(stroke_width, 1.0) / 2), stroke_width
        stroke_width = THINNEST_ERODED * natural  # its centre line is another digit: the thinnest pen that keeps it
    eroded = reshape_stroke(shape, (stroke_width - natural) / 2)  # padded by 2
    traced = pen_stroke(centre_line, max(stroke_width / 4, 0.5))  # padded by ceil(radius) + 2
    margin = (traced.shape[0] - eroded.shape[0]) // 2
    return np.maximum(np.pad(eroded, margin), traced), stroke_width


def loses_parts(shape: np.ndarray, centre_line: np.ndarray, natural: float) -> bool:
    """Whether a shape's centre line leaves out a part of it: more than CENTRE_LINE_MISSES of its pixels lie
    farther than 3/4 of the writer's stroke width from the line (a uniform stroke's lie within half of it).

    Thick writers fill loops and blot short arms, and thinning shrinks a blot to a point: traced with a fine pen,
    such a 6's filled loop became a "(", a bold 2's foot vanished into a 1 and a 3's middle arm into a "ↄ", drawings
    no person reads as the digit they are labelled. About 6.5 % of MNIST's test digits lose that much at 90 px."""
    if not centre_line.any():
        return True
    far = distance_to_zero((~centre_line).astype(np.uint8)) > 0.75 * natural  # (h, w)
    return np.count_nonzero(shape & far) > CENTRE_LINE_MISSES * np.count_nonzero(shape)


def place(
    canvas_shape: tuple[int, int],
    ink: np.ndarray,
    rng: np.random.Generator,
    *,
    margin: float = 0.02,
    centre_bias: float = 0.0,
) -> np.ndarray:
    """Put an ink coverage patch at a random position on an empty (H, W) canvas. (H, W) float32.

    centre_bias in [0, 1] pulls the position towards the middle (0 = anywhere that fits).
    """
    height, width = canvas_shape
    h, w = ink.shape
    if h > height or w > width:  # shrink a patch that does not fit
        scale = min(height / h, width / w) * 0.95
        ink = cv2.resize(ink, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=cv2.INTER_AREA)
        h, w = ink.shape
    m_y, m_x = int(margin * height), int(margin * width)
    free_y, free_x = max(height - h - 2 * m_y, 0), max(width - w - 2 * m_x, 0)
    fy, fx = rng.uniform(0, 1, 2)
    fy, fx = (1 - centre_bias) * fy + centre_bias * 0.5, (1 - centre_bias) * fx + centre_bias * 0.5
    top, left = min(m_y + int(fy * free_y), height - h), min(m_x + int(fx * free_x), width - w)
    canvas = np.zeros(canvas_shape, np.float32)
    canvas[top : top + h, left : left + w] = ink
    return canvas


def paint(coverage: np.ndarray, ink_rgb: Iterable[float], paper_rgb: Iterable[float]) -> np.ndarray:
    """Colour a coverage map (H, W) in [0, 1]: (H, W, 3) float32 RGB, paper where 0, ink where 1."""
    ink_rgb = np.asarray(list(ink_rgb), np.float32)
    paper_rgb = np.asarray(list(paper_rgb), np.float32)
    return paper_rgb + coverage[:, :, None] * (ink_rgb - paper_rgb)


def encode(array: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    """uint8 or float (H, W[, C]) array -> encoded file bytes via Pillow (fmt: PNG, JPEG, WEBP, ...)."""
    if array.dtype != np.uint8:
        array = np.clip(array + 0.5, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def pick(rng: np.random.Generator, choices):
    return choices[int(rng.integers(len(choices)))]


# ---------------------------------------------------------------------------------------------------------------
# Drawn styles. Each takes a (28, 28) uint8 MNIST digit and a generator and returns the encoded file.


def coloured_ink_and_paper(rng: np.random.Generator):
    """(ink, paper) RGB: a third of the time a pair of (nearly) the same brightness, else any two colours that
    differ by at least 100 in some channel."""
    if rng.uniform() < 1 / 3:
        return pick(rng, _ISOLUMINANT_PAIRS)
    while True:
        ink, paper = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        if np.abs(ink - paper).max() >= 100:
            return ink, paper


def paint_program(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """Black (or dark) brush on a white canvas, thick strokes, big canvas, digit off-centre. PNG."""
    width, height = pick(rng, [(800, 600), (1024, 768), (1280, 720), (640, 640)])
    digit_height = int(rng.uniform(0.35, 0.75) * height)
    brush = rng.uniform(0.12, 0.28) * digit_height
    coverage = place((height, width), draw_digit(digit, digit_height, brush), rng)
    ink = pick(rng, [(0, 0, 0), (20, 20, 20), (0, 0, 0), (40, 30, 120), (150, 0, 0)])
    return encode(paint(coverage, ink, (255, 255, 255)), "PNG")


def web_canvas(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A browser canvas export: RGBA, transparent background, the strokes only in alpha (RGB constant). PNG."""
    width, height = pick(rng, [(280, 280), (400, 400), (500, 300), (300, 300)])
    digit_height = int(rng.uniform(0.5, 0.85) * height)
    coverage = place(
        (height, width), draw_digit(digit, digit_height, rng.uniform(0.07, 0.18) * digit_height), rng, centre_bias=0.5
    )
    rgb = pick(rng, [(0, 0, 0), (0, 0, 0), (255, 255, 255), (30, 90, 200)])  # (0,0,0,0) is an empty canvas's pixel
    rgba = np.empty((height, width, 4), np.uint8)
    rgba[:, :, :3] = rgb
    rgba[:, :, 3] = np.clip(coverage * 255 + 0.5, 0, 255).astype(np.uint8)
    return encode(rgba, "PNG")


def thin_pen(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A thin pen (1-3 px) on a white canvas, the stroke a small fraction of MNIST's relative width. PNG."""
    side = int(rng.integers(400, 800))
    digit_height = int(rng.uniform(0.4, 0.8) * side)
    coverage = place((side, side), draw_digit(digit, digit_height, rng.uniform(1.0, 3.0)), rng)
    ink = pick(rng, [(0, 0, 0), (10, 30, 140), (60, 60, 60)])
    return encode(paint(coverage, ink, (255, 255, 255)), "PNG")


def small_off_centre(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A small digit (25-80 px) anywhere on a big canvas. PNG."""
    width, height = pick(rng, [(1200, 900), (1600, 1200), (1000, 1000), (1920, 1080)])
    digit_height = int(rng.integers(25, 80))
    coverage = place((height, width), draw_digit(digit, digit_height, rng.uniform(0.07, 0.16) * digit_height), rng)
    return encode(paint(coverage, (0, 0, 0), (255, 255, 255)), "PNG")


# Pairs (ink, paper) that differ mainly in hue: their luminances are within ~15 grey levels of each other.
_ISOLUMINANT_PAIRS = [
    ((200, 40, 40), (50, 125, 50)),  # red on green
    ((40, 80, 220), (160, 60, 70)),  # blue on red
    ((220, 60, 160), (90, 150, 120)),  # magenta on sea green
    ((240, 200, 0), (180, 200, 255)),  # yellow on light blue
]


def coloured(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """Coloured ink on coloured paper; a third of them with both of about the same brightness. PNG or JPEG."""
    side = int(rng.integers(300, 800))
    digit_height = int(rng.uniform(0.4, 0.8) * side)
    coverage = place((side, side), draw_digit(digit, digit_height, rng.uniform(0.06, 0.18) * digit_height), rng)
    ink, paper = coloured_ink_and_paper(rng)
    image = paint(coverage, ink, paper)
    return encode(image, "PNG") if rng.uniform() < 0.5 else encode(image, "JPEG", quality=92)


def dark_mode(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """Light ink on a dark background, as drawing apps in dark mode export. PNG."""
    side = int(rng.integers(300, 700))
    digit_height = int(rng.uniform(0.45, 0.8) * side)
    coverage = place((side, side), draw_digit(digit, digit_height, rng.uniform(0.07, 0.18) * digit_height), rng)
    paper = np.array([1, 1, 1.15]) * rng.uniform(15, 45)
    ink = pick(rng, [(255, 255, 255), (230, 230, 230), (120, 220, 255), (255, 230, 120)])
    return encode(paint(coverage, ink, paper), "PNG")


def paper_photo(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A phone photo of a digit written with a ballpoint on paper. JPEG.

    Greyish, slightly tinted paper; a lighting gradient and vignette; a few degrees of rotation and perspective;
    defocus blur; sensor noise; JPEG compression; and in a third of them the pixels stored sideways with an EXIF
    orientation tag, as phones do.
    """
    width, height = pick(rng, [(640, 480), (640, 480), (1024, 768), (1280, 960)])
    digit_height = int(rng.uniform(0.35, 0.65) * height)
    coverage = place(
        (height, width),
        draw_digit(digit, digit_height, rng.uniform(0.035, 0.08) * digit_height),
        rng,
        margin=0.15,
        centre_bias=0.4,
    )
    paper = rng.uniform(150, 225) * np.array([1.0, rng.uniform(0.97, 1.02), rng.uniform(0.9, 1.0)])
    ink = pick(rng, [(25, 25, 35), (20, 35, 110), (45, 45, 45)])
    image = paint(coverage, ink, paper)
    image = tilt_and_perspective(image, rng, paper)
    image *= lighting(height, width, rng)[:, :, None]
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 1.3))
    image += rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(2, 6)
    orientation = pick(rng, [1, 1, 6, 8])
    stored = {1: image, 6: np.rot90(image, 1), 8: np.rot90(image, -1)}[orientation]  # what the sensor wrote
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(np.ascontiguousarray(stored), "JPEG", quality=int(rng.integers(55, 90)), exif=exif.tobytes())


def tilt_and_perspective(image: np.ndarray, rng: np.random.Generator, paper: np.ndarray) -> np.ndarray:
    """Rotate by up to 6 degrees and move each corner by up to 4% of the size (a phone held at a slight angle)."""
    height, width = image.shape[:2]
    corners = np.float32([[0, 0], [width, 0], [width, height], [0, height]])
    angle = np.radians(rng.uniform(-6, 6))
    centre = np.float32([width / 2, height / 2])
    rotation = np.float32([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = (corners - centre) @ rotation.T + centre
    moved += rng.uniform(-0.04, 0.04, (4, 2)).astype(np.float32) * np.float32([width, height])
    homography = cv2.getPerspectiveTransform(corners, moved.astype(np.float32))
    return cv2.warpPerspective(
        image,
        homography,
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=tuple(float(c) for c in paper),
    )


def lighting(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W) float32 multiplier in ~[0.6, 1]: a linear gradient in a random direction plus a vignette."""
    x = (np.arange(width, dtype=np.float32) / width - 0.5)[None, :]  # (1, W): broadcast, not a full grid
    y = (np.arange(height, dtype=np.float32) / height - 0.5)[:, None]  # (H, 1)
    direction = rng.uniform(0, 2 * np.pi)
    ramp = (x * np.cos(direction) + y * np.sin(direction)) + 0.5  # 0..1 across the picture
    vignette = x * x + y * y  # 0 at the centre, 0.5 at the corners
    return (1.0 - rng.uniform(0.05, 0.3) * ramp - rng.uniform(0.0, 0.3) * vignette).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Real paper: the structure of the sheet (ruled and squared lines, a margin), shadows, pencil, dust, and scans at
# low resolution. Each is a photo of a digit written on paper, like paper_photo, plus one difficulty.


def sheet(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Blank paper (H, W, 3) float32 and its colour (3,): greyish white, slightly tinted."""
    colour = rng.uniform(185, 235) * np.array([1.0, rng.uniform(0.97, 1.02), rng.uniform(0.9, 1.0)], np.float32)
    return np.broadcast_to(colour, (height, width, 3)).astype(np.float32), colour


def draw_lines(
    paper: np.ndarray,
    rng: np.random.Generator,
    *,
    spacing: float,
    colour,
    width: float,
    vertical: bool,
    offset: float | None = None,
) -> None:
    """Rule the paper in place: lines `spacing` px apart (anti-aliased, `width` px thick) in `colour`."""
    height, w = paper.shape[:2]
    length = w if vertical else height
    positions = np.arange(rng.uniform(0, spacing) if offset is None else offset, length, spacing)
    coordinate = np.arange(length, dtype=np.float32)
    distance = (
        np.min(np.abs(coordinate[:, None] - positions[None, :]), axis=1)
        if len(positions)
        else np.full(length, 1e9, np.float32)
    )
    coverage = np.clip(width / 2 + 0.5 - distance, 0, 1) * rng.uniform(0.75, 1.0)
    coverage = coverage[None, :, None] if vertical else coverage[:, None, None]
    paper += coverage * (np.asarray(colour, np.float32) - paper)


def photographed(
    paper: np.ndarray,
    coverage: np.ndarray,
    ink,
    rng: np.random.Generator,
    *,
    shadow: tuple[float, float] | None = None,
    grain: float = 0.0,
) -> bytes:
    """Ink on the (structured) paper, photographed: tilt, lighting, an optional shadow (depth, edge width in px),
    blur, noise and JPEG, as paper_photo."""
    height, width = coverage.shape
    if grain:  # pencil: graphite leaves the paper's tooth showing through
        coverage = coverage * np.clip(1.0 + grain * rng.standard_normal(coverage.shape, dtype=np.float32), 0.35, 1.0)
    image = paper + coverage[:, :, None] * (np.asarray(ink, np.float32) - paper)
    image = tilt_and_perspective(image, rng, paper[0, 0])
    image *= lighting(height, width, rng)[:, :, None]
    if shadow is not None:
        image *= cast_shadow(height, width, rng, depth=shadow[0], edge=shadow[1])[:, :, None]
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 1.2))
    image += rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(2, 5)
    return encode(image, "JPEG", quality=int(rng.integers(60, 90)))


def cast_shadow(height: int, width: int, rng: np.random.Generator, *, depth: float, edge: float) -> np.ndarray:
    """(H, W) float32 multiplier: 1 in the light, 1 - depth in the shadow of a straight edge (a phone, a hand)
    crossing the middle third of the picture in a random direction; the edge blurred over `edge` px."""
    xs = np.arange(width, dtype=np.float32)[None, :]
    ys = np.arange(height, dtype=np.float32)[:, None]
    angle = rng.uniform(0, 2 * np.pi)
    cx, cy = rng.uniform(0.33, 0.67) * width, rng.uniform(0.33, 0.67) * height
    signed = (xs - cx) * np.cos(angle) + (ys - cy) * np.sin(angle)  # (H, W): distance from the edge, in px
    shade = 0.5 * (1 + np.tanh(signed / max(edge / 2, 0.5)))  # 0 -> 1 across about `edge` px
    return (1.0 - depth * shade).astype(np.float32)


def written_on_paper(
    digit: np.ndarray,
    rng: np.random.Generator,
    *,
    pen: tuple[float, float] = (0.04, 0.08),
    size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, int, int, int]:
    """A ballpoint digit on a photo-sized canvas: (coverage (H, W), digit height, top of the digit, bottom)."""
    width, height = size or pick(rng, [(640, 480), (800, 600)])  # the sizes phone apps send
    digit_height = int(rng.uniform(0.3, 0.55) * height)
    drawn = draw_digit(digit, digit_height, rng.uniform(*pen) * digit_height)
    coverage = place((height, width), drawn, rng, margin=0.15, centre_bias=0.5)
    rows = np.nonzero(coverage.max(axis=1) > 0.5)[0]
    return coverage, digit_height, int(rows[0]), int(rows[-1])


BALLPOINT_INKS = [(25, 25, 35), (20, 35, 110), (45, 45, 45)]


def rule_notebook(paper: np.ndarray, rng: np.random.Generator, digit_height: float, baseline: int) -> None:
    """Notebook paper's lines on a sheet (H, W, 3), in place: blue rules a little closer than the writing is tall,
    one under its foot (`baseline`, a row); in two fifths of them a red margin line."""
    spacing = rng.uniform(0.55, 0.9) * digit_height
    draw_lines(
        paper,
        rng,
        spacing=spacing,
        colour=(rng.uniform(60, 150), rng.uniform(100, 170), rng.uniform(190, 230)),
        width=rng.uniform(1.2, 3.0),
        vertical=False,
        offset=(baseline + rng.uniform(-3, 3)) % spacing,
    )
    if rng.uniform() < 0.4:
        margin = rng.uniform(0.06, 0.25) * paper.shape[1]
        draw_lines(
            paper,
            rng,
            spacing=paper.shape[1] * 2,
            colour=(215, 80, 85),
            width=rng.uniform(1.5, 3.0),
            vertical=True,
            offset=margin,
        )


def rule_squares(paper: np.ndarray, rng: np.random.Generator, digit_height: float) -> None:
    """Squared (graph) paper's grid on a sheet (H, W, 3), in place: grey-blue, the writing two to three squares
    tall."""
    spacing = digit_height / rng.uniform(2.0, 3.0)
    colour = (rng.uniform(90, 160), rng.uniform(120, 180), rng.uniform(170, 220))
    width = rng.uniform(1.0, 2.2)
    draw_lines(paper, rng, spacing=spacing, colour=colour, width=width, vertical=False)
    draw_lines(paper, rng, spacing=spacing, colour=colour, width=width, vertical=True)


def ruled_paper(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """Notebook paper (rule_notebook), the digit's foot on a rule. JPEG."""
    coverage, digit_height, _top, bottom = written_on_paper(digit, rng)
    paper, _ = sheet(*coverage.shape, rng)
    rule_notebook(paper, rng, digit_height, bottom)
    return photographed(paper, coverage, pick(rng, BALLPOINT_INKS), rng)


def squared_paper(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """Squared (graph) paper (rule_squares). JPEG."""
    coverage, digit_height, _, _ = written_on_paper(digit, rng)
    paper, _ = sheet(*coverage.shape, rng)
    rule_squares(paper, rng, digit_height)
    return photographed(paper, coverage, pick(rng, BALLPOINT_INKS), rng)


def soft_shadow(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A diffuse shadow across the paper (its edge blurred over 80-250 px), 25-55 % darker. JPEG."""
    coverage, _, _, _ = written_on_paper(digit, rng)
    paper, _ = sheet(*coverage.shape, rng)
    return photographed(
        paper, coverage, pick(rng, BALLPOINT_INKS), rng, shadow=(rng.uniform(0.25, 0.55), rng.uniform(80, 250))
    )


def hard_shadow(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """The sharp shadow of a phone or a hand: its edge 2-12 px wide, 30-60 % darker, often across the digit. JPEG."""
    coverage, _, _, _ = written_on_paper(digit, rng)
    paper, _ = sheet(*coverage.shape, rng)
    return photographed(
        paper, coverage, pick(rng, BALLPOINT_INKS), rng, shadow=(rng.uniform(0.3, 0.6), rng.uniform(2, 12))
    )


def pencil(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """Faint pencil: grey graphite (70-130 grey levels darker than the paper), grainy, a thin to medium line. JPEG."""
    coverage, _, _, _ = written_on_paper(digit, rng, pen=(0.03, 0.07))
    paper, colour = sheet(*coverage.shape, rng)
    graphite = np.full(3, float(colour.mean()) - rng.uniform(70, 130), np.float32)
    return photographed(paper, coverage, graphite, rng, grain=rng.uniform(0.1, 0.3))


def specks(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """Dust and specks on the paper or the lens: 20-200 dots of 1-6 px, a few larger. JPEG."""
    coverage, _, _, _ = written_on_paper(digit, rng)
    height, width = coverage.shape
    dots = np.zeros_like(coverage)
    for _ in range(int(rng.integers(20, 200))):
        radius = rng.uniform(0.5, 2.0) if rng.uniform() < 0.9 else rng.uniform(2.0, 3.5)
        cv2.circle(
            dots,
            (int(rng.integers(width)), int(rng.integers(height))),
            max(1, round(radius)),
            float(rng.uniform(0.5, 1.0)),
            -1,
            lineType=cv2.LINE_AA,
        )
    paper, _ = sheet(height, width, rng)
    return photographed(paper, np.maximum(coverage, dots), pick(rng, BALLPOINT_INKS), rng)


def low_resolution(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A scan at very low resolution (the digit 10-18 px tall), then enlarged 4-10x by a viewer or an app
    (bicubic), as old forms and thumbnails arrive. PNG or JPEG."""
    digit_height = int(rng.integers(10, 19))
    side = int(digit_height * rng.uniform(1.6, 2.6))
    # Drawn at 4x and averaged down: the scanner's sensor integrates the ink over each of its pixels.
    small = cv2.resize(
        place((side * 4, side * 4), draw_digit(digit, digit_height * 4), rng, margin=0.1, centre_bias=0.6),
        (side, side),
        interpolation=cv2.INTER_AREA,
    )
    paper = rng.uniform(190, 240)
    image = paper + small * (rng.uniform(20, 70) - paper)
    image += rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(1, 4)
    scale = rng.uniform(4, 10)
    enlarged = cv2.resize(np.clip(image, 0, 255), (int(side * scale), int(side * scale)), interpolation=cv2.INTER_CUBIC)
    return encode(enlarged, "PNG") if rng.uniform() < 0.5 else encode(enlarged, "JPEG", quality=85)


# ---------------------------------------------------------------------------------------------------------------
# Scenes around the digit: a box or ring drawn round it, a sheet photographed lying on a desk


def centred(digit: np.ndarray, side: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The digit drawn 3/5 of a (side, side) canvas tall in its middle: (coverage (side, side) float32, the ink's box
    (x0, y0, x1, y1) inclusive)."""
    ink = draw_digit(digit, side * 3 // 5, None)
    coverage = np.zeros((side, side), np.float32)
    top, left = (side - ink.shape[0]) // 2, (side - ink.shape[1]) // 2
    coverage[top : top + ink.shape[0], left : left + ink.shape[1]] = ink
    ys, xs = np.nonzero(coverage > 0.5)
    return coverage, (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))


def boxed(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A box drawn a few pixels inside the picture's edge (a form's box, a border on a canvas), paper all round
    outside it, clear of the digit. PNG, dark on white."""
    side = int(pick(rng, [64, 100, 140, 200, 300, 500]))
    coverage, _ = centred(digit, side)
    width = int(rng.integers(1, max(2, side // 25) + 1))
    inset = int(rng.integers((width + 1) // 2 + 1, max((width + 1) // 2 + 2, int(0.15 * side) - width + 1)))
    frame = np.zeros((side, side), np.uint8)
    cv2.rectangle(frame, (inset, inset), (side - 1 - inset, side - 1 - inset), 1, width)
    return encode(paint(np.maximum(coverage, frame), (0, 0, 0), (255, 255, 255)), "PNG")


def circled(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """The digit circled, as an answer is: a ring round it, or an oval as tall as a ring and 0.55-1 as wide (half
    the pictures), drawn with the same pen, clear of it. PNG."""
    side = int(pick(rng, [100, 160, 300]))
    coverage, (x0, y0, x1, y1) = centred(digit, side)
    pen = max(1, side // 60)
    radius = int(rng.uniform(0.6, 0.68) * max(x1 - x0, y1 - y0)) + side // 40
    aspect = rng.uniform(0.55, 1.0) if rng.uniform() < 0.5 else 1.0
    found = oval_clear_of(coverage, (x0, y0, x1, y1), radius, aspect, pen, widen=pen)
    assert found is not None  # with no limit, it grows until it clears
    return encode(paint(np.maximum(coverage, found[0]), (20, 20, 60), (250, 250, 245)), "PNG")


def oval_clear_of(
    coverage: np.ndarray,
    box: tuple[int, int, int, int],
    radius: int,
    aspect: float,
    pen: int,
    widen: int,
    limit: int | None = None,
) -> tuple[np.ndarray, tuple[int, int]] | None:
    """An oval drawn round the ink `coverage` (side, side) whose box is `box` (x0, y0, x1, y1), as a digit is
    circled: (its mask (side, side) uint8, its half-axes (a, b)). Half as tall as `radius`, `aspect` as wide but at
    least `widen` pixels wider than half the ink, with a pen of `pen` pixels; grown by 2 pixels at a time until it
    clears the ink (a ring through it is one stroke with it). None if it reaches `limit` first."""
    x0, y0, x1, y1 = box
    ink = cv2.dilate((coverage > 0.02).astype(np.uint8), np.ones((3, 3), np.uint8))
    ring = np.zeros_like(ink)
    while limit is None or radius < limit:
        ring[:] = 0
        axes = (max(int(aspect * radius), (x1 - x0) // 2 + widen), radius)
        cv2.ellipse(ring, ((x0 + x1) // 2, (y0 + y1) // 2), axes, 0, 0, 360, 1, pen)
        if not (ink & ring).any():
            return ring, axes
        radius += 2
    return None


def on_a_desk(digit: np.ndarray, rng: np.random.Generator, page: bool, tilted: bool = False) -> bytes:
    """A phone photo from above of a sheet lying on a desk, the desk all round it: a sticky note 40-65 % of the
    picture's height (`page` False) or a page 75-85 % of it, turned by up to 25 (5) degrees; JPEG. `tilted`: the
    phone tilted back, so the sheet's far (top) edge is 55-85 % as long as its near one and a little lower."""
    height, width = 480, 640
    side = int(rng.uniform(0.75, 0.85) * height if page else rng.uniform(0.4, 0.65) * height)
    paper = (240, 240, 235) if page else pick(rng, [(250, 235, 120), (250, 190, 200), (245, 245, 245), (190, 225, 250)])
    desk = pick(rng, [(60, 45, 35), (110, 110, 115), (190, 160, 120), (35, 35, 40)])
    coverage, _ = centred(digit, side)
    photo = np.empty((height, width, 3), np.float32)
    photo[:] = desk
    photo += rng.standard_normal((height, width, 1), dtype=np.float32) * rng.uniform(2, 8)  # the desk's grain
    top, left = (height - side) // 2 + int(rng.integers(-20, 21)), (width - side) // 2 + int(rng.integers(-40, 41))
    sheet = paint(coverage, pick(rng, [(20, 20, 60), (30, 30, 30)]), paper)
    turn = cv2.getRotationMatrix2D((left + side / 2, top + side / 2), rng.uniform(-1, 1) * (5 if page else 25), 1.0)
    if tilted:
        # The sheet alone is seen in perspective and laid on the desk: a perspective's far side, mapped back, would
        # reach past the desk's edge (its mirror image holds copies of the sheet).
        inset = (1 - rng.uniform(0.55, 0.85)) / 2 * side
        square = np.array([[0, 0], [side, 0], [side, side], [0, side]], np.float32)
        shift = [[left + inset, top + inset / 2], [left - inset, top + inset / 2], [left, top], [left, top]]
        seen = square + np.array(shift, np.float32)
        view = np.vstack([turn, [0.0, 0.0, 1.0]]) @ cv2.getPerspectiveTransform(square, seen)
        cover = cv2.warpPerspective(np.ones((side, side), np.float32), view, (width, height))[..., None]
        photo = photo * (1 - cover) + cv2.warpPerspective(sheet, view, (width, height)) * cover
    else:
        photo[top : top + side, left : left + side] = sheet
        photo = cv2.warpAffine(photo, turn, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    photo = cv2.GaussianBlur(photo, (0, 0), rng.uniform(0.5, 1.0))
    return encode(photo, "JPEG", quality=int(rng.integers(75, 93)))


def note_on_desk(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    return on_a_desk(digit, rng, page=False)


def note_at_an_angle(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    return on_a_desk(digit, rng, page=False, tilted=True)


def page_on_table(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    return on_a_desk(digit, rng, page=True)


def page_at_an_angle(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    return on_a_desk(digit, rng, page=True, tilted=True)


# Not among the tests' styles (tests/inference/test_user_drawings.py); bench_user_images --styles scenes.
SCENE_KINDS: dict[str, Callable[[np.ndarray, np.random.Generator], bytes]] = {
    "boxed": boxed,
    "circled": circled,
    "note_on_desk": note_on_desk,
    "note_at_an_angle": note_at_an_angle,
    "page_on_table": page_on_table,
    "page_at_an_angle": page_at_an_angle,
}


PAPER_KINDS: dict[str, Callable[[np.ndarray, np.random.Generator], bytes]] = {
    "ruled": ruled_paper,
    "squared": squared_paper,
    "soft_shadow": soft_shadow,
    "hard_shadow": hard_shadow,
    "pencil": pencil,
    "specks": specks,
    "low_resolution": low_resolution,
}


DRAWN_STYLES: dict[str, Callable[[np.ndarray, np.random.Generator], bytes]] = {
    "paint_program": paint_program,
    "web_canvas_alpha": web_canvas,
    "thin_pen": thin_pen,
    "small_off_centre": small_off_centre,
    "coloured": coloured,
    "paper_photo": paper_photo,
    "dark_mode": dark_mode,
}
PRINTED_STYLE = "printed"
ALL_STYLES = {**DRAWN_STYLES, **PAPER_KINDS, **SCENE_KINDS}  # make_user_images(styles=PAPER_KINDS): the paper kinds


def make_user_images(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    per_style: int = 20,
    seed: int = 0,
    styles: Iterable[str] | None = None,
    processes: int = 1,
) -> list[UserImage]:
    """`per_style` pictures in each style (default: the drawn styles; any of ALL_STYLES), from randomly chosen
    MNIST test digits (N, 28, 28) uint8.

    Deterministic for a given seed: each style draws from its own generator, so adding a style does not change
    the others' pictures, and `processes` > 1 (styles made side by side) gives the same pictures as 1.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    jobs = [(images, labels, per_style, seed, style) for style in (styles or DRAWN_STYLES)]
    if processes <= 1 or len(jobs) == 1:
        return [picture for job in jobs for picture in _make_style(*job)]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        return [picture for made in pool.map(_make_style, *zip(*jobs)) for picture in made]


def _make_style(images: np.ndarray, labels: np.ndarray, per_style: int, seed: int, style: str) -> list[UserImage]:
    rng = style_generator(style, seed)
    return [
        UserImage(ALL_STYLES[style](images[i], rng), int(labels[i]), style)
        for i in source_indices(images, per_style, rng, style)
    ]


def style_generator(style: str, seed: int) -> np.random.Generator:
    """The generator a style draws from: seeded by (seed, a checksum of the style's name)."""
    return np.random.default_rng([seed, zlib.crc32(style.encode())])


# A pen 1-3 px wide cannot draw a blob: MNIST's boldest 2% (stroke wider than this fraction of the digit's size)
# are not drawn in the thin-pen style, where thinning them to a centre line would turn them into other shapes.
THIN_PEN_MAX_SOURCE_STROKE = 0.2


def source_indices(images: np.ndarray, per_style: int, rng: np.random.Generator, style: str) -> list[int]:
    """Which MNIST digits a style draws (the generator's first draws), so a caller can find each picture's source:
    `source_indices(images, per_style, style_generator(style, seed), style)` gives the same indices again."""
    candidates = rng.permutation(len(images))
    if style != "thin_pen":
        return [int(i) for i in candidates[:per_style]]
    line_like = (i for i in candidates if source_stroke_ratio(images[i]) <= THIN_PEN_MAX_SOURCE_STROKE)
    return [int(i) for _, i in zip(range(per_style), line_like)]


def source_stroke_ratio(digit: np.ndarray) -> float:
    """A MNIST digit's stroke width / box size (0.11 typical), measured on its 4x upscaled shape."""
    return stroke_width_of(digit_shape(digit, 80)) / 80


# ---------------------------------------------------------------------------------------------------------------
# Printed digits

# Fonts that draw ordinary digits: DejaVu and STIX ship with matplotlib (always present where the project is
# installed); Computer Modern Roman/Sans/Typewriter too. Maths and symbol fonts are left out (cmmi10's digits
# are old-style, cmex/cmsy hold none).
_FONT_NAMES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSansCondensed.ttf",
    "DejaVuSans-ExtraLight.ttf",
    "DejaVuSerifCondensed.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "cmr10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
)
# Other fonts a machine may have, by file name pattern (Liberation, Noto, FreeFont, Ubuntu, ...).
_EXTRA_FONT_PATTERNS = (
    "Liberation*-Regular.ttf",
    "Liberation*-Bold.ttf",
    "NotoSans-Regular.ttf",
    "NotoSerif-Regular.ttf",
    "NotoSansMono-Regular.ttf",
    "Free*.ttf",
    "Ubuntu-R.ttf",
)


@lru_cache(maxsize=1)
def available_fonts() -> tuple[Path, ...]:
    """The digit fonts on this machine, matplotlib's first, one file per name, sorted for determinism."""
    import matplotlib

    folders = [
        Path(matplotlib.get_data_path()) / "fonts" / "ttf",
        Path("/usr/share/fonts"),
        Path("/usr/local/share/fonts"),
        Path.home() / ".fonts",
    ]
    found: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for name in _FONT_NAMES:
            for path in sorted(folder.rglob(name)):
                found.setdefault(path.name, path)
        for pattern in _EXTRA_FONT_PATTERNS:
            for path in sorted(folder.rglob(pattern)):
                found.setdefault(path.name, path)
    return tuple(sorted(found.values(), key=lambda p: p.name))


def printed_digit(digit: int, font_path: Path, rng: np.random.Generator) -> bytes:
    """One typed digit: a random size (16-220 px), position and colour scheme, as a screenshot would be."""
    size = int(pick(rng, [16, 24, 40, 72, 120, 220]))
    font = ImageFont.truetype(str(font_path), size)
    left, top, right, bottom = font.getbbox(str(digit))
    text_w, text_h = right - left, bottom - top
    pad_x, pad_y = int(rng.integers(4, 4 + 3 * text_w)), int(rng.integers(4, 4 + 2 * text_h))
    width, height = text_w + 2 * pad_x, text_h + 2 * pad_y
    scheme = pick(rng, ["black_on_white", "black_on_white", "grey_on_white", "white_on_dark", "blue_on_yellow"])
    ink, paper = {
        "black_on_white": ((0, 0, 0), (255, 255, 255)),
        "grey_on_white": ((90, 90, 90), (250, 250, 250)),
        "white_on_dark": ((240, 240, 240), (30, 30, 36)),
        "blue_on_yellow": ((20, 40, 160), (250, 240, 170)),
    }[scheme]
    canvas = Image.new("RGB", (width, height), paper)
    x = int(rng.integers(0, 2 * pad_x - 3)) if pad_x > 2 else 0
    y = int(rng.integers(0, 2 * pad_y - 3)) if pad_y > 2 else 0
    ImageDraw.Draw(canvas).text((x - left + 2, y - top + 2), str(digit), font=font, fill=ink)
    fmt = "PNG" if rng.uniform() < 0.7 else "JPEG"
    buffer = io.BytesIO()
    canvas.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def make_printed_digits(*, per_font: int = 10, seed: int = 0, fonts: Iterable[Path] | None = None) -> list[UserImage]:
    """`per_font` typed digits per available font, cycling 0..9 (so 10 gives every digit once per font)."""
    out = []
    for font_index, font_path in enumerate(fonts or available_fonts()):
        rng = np.random.default_rng([seed, 1000 + font_index])
        for i in range(per_font):
            out.append(UserImage(printed_digit(i % 10, font_path, rng), i % 10, PRINTED_STYLE))
    return out


CACHED_PER_STYLE = 300  # pictures per style that cached_user_images makes


def cached_user_images(mnist, group: str, styles: list[str] | None) -> list[UserImage]:
    """CACHED_PER_STYLE pictures of each of `styles` (None: every drawn style) from MNIST test digits, made once
    (on both cores) and kept in the test cache (testkit/cache.py), keyed by this module's code: thousands of them
    take minutes to draw. The tests' fixtures and the benchmarks share them; `group` names the set."""
    from testkit.cache import cached_pickle, code_hash

    def make():
        return make_user_images(
            mnist.test_images.numpy(),
            mnist.test_labels.numpy(),
            per_style=CACHED_PER_STYLE,
            seed=0,
            styles=styles,
            processes=2,
        )

    key = code_hash(("testkit/user_images.py", "shared/normalize.py"), extra=f"{group}-{CACHED_PER_STYLE}")
    return cached_pickle("user-pictures", key, make)
