"""Pictures of handwritten numbers, made from MNIST *test* digits in the drawn styles of testkit/user_images.py.

A number is 4 to 8 digits (any count on request) written on one line the way people write: the digits slightly
different in size, not quite on one baseline, all slanted alike, with gaps that are wide, narrow or (layout
"touching") where neighbours' strokes run into each other. Each drawn style of testkit/user_images.py has a number
version here with the same canvas, pen, colours and finish (a paint program, a web canvas with the ink only in
alpha, a thin pen, small on a big canvas, coloured ink, a phone photo of paper, dark mode). Every picture comes
with its truth: the digits, and each digit's box in the picture's pixels as displayed (after EXIF orientation).

    from testkit.numbers import make_numbers
    numbers = make_numbers(mnist.test_images.numpy(), mnist.test_labels.numpy(), per_style=50, seed=0,
                           layout="apart")
    for n in numbers: n.data, n.digits, n.boxes, n.style

Also, for the segmentation's special cases: a decimal point or comma between two digits (`separator=`), digits
broken into pieces by a skipping pen (`pen="broken"`) and digits drawn as dotted lines (`pen="dotted"`).
Deterministic given the seed.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from testkit.user_images import (
    BALLPOINT_INKS,
    coloured_ink_and_paper,
    draw_digit_and_pen,
    encode,
    lighting,
    paint,
    pen_stroke,
    pick,
    rule_notebook,
    rule_squares,
    sheet,
    zhang_suen_thinning,
)

LAYOUTS = ("apart", "touching")
PENS = ("whole", "broken", "dotted")
DOT_MAX_SIZE = 0.06  # a dotted pen's dots, at most this share of the digit's height across
SEPARATORS = (".", ",")

Box = tuple[int, int, int, int]  # x, y, width, height in pixels


@dataclass(frozen=True)
class NumberPicture:
    data: bytes  # an encoded picture file
    digits: str  # the truth, e.g. "20260"
    boxes: tuple[Box, ...]  # one per digit, in the picture's pixels as displayed
    style: str
    layout: str  # "apart" or "touching"
    separator: tuple[int, str] | None = None  # (digits before it, "." or ","), when the number has one
    sources: tuple[int, ...] = ()  # the MNIST test images the digits were drawn from


@dataclass(frozen=True)
class Written:
    """A number written on a transparent strip: ink coverage and where each digit (and the separator) is."""

    coverage: np.ndarray  # (h, w) float32 in [0, 1]
    boxes: tuple[Box, ...]  # per digit, in the strip's pixels
    masks: tuple[np.ndarray, ...]  # per digit, (h, w) bool: its own ink (coverage >= 0.5) in the strip
    separator: tuple[int, str] | None


# ---------------------------------------------------------------------------------------------------------------
# One digit, as written in a number


def glyph(digit28: np.ndarray, height: int, stroke_width: float, slant: float) -> tuple[np.ndarray, float]:
    """A MNIST digit written `height` pixels tall (its ink box, not its long side: in a number every digit has
    the height of the line) with `stroke_width` strokes, sheared by `slant` (dx/dy, > 0 leans right).
    (h, w) float32 coverage cropped to the ink, and the stroke width drawn (draw_digit_and_pen)."""
    ys, xs = np.nonzero(digit28 > 30)
    aspect = (xs.max() - xs.min() + 1) / (ys.max() - ys.min() + 1)
    ink, drawn = draw_digit_and_pen(digit28, max(4, round(height * max(1.0, aspect))), stroke_width)
    if slant:
        h, w = ink.shape
        extra = int(np.ceil(abs(slant) * h)) + 2
        # x' = x + slant * (h - y): the bottom stays put, the top moves right by slant * h for slant > 0.
        shear = np.float32([[1, -slant, slant * h + (extra if slant < 0 else 0)], [0, 1, 0]])
        ink = cv2.warpAffine(ink, shear, (w + extra, h), flags=cv2.INTER_LINEAR, borderValue=0)
    return crop_to_ink(ink), drawn


def crop_to_ink(coverage: np.ndarray) -> np.ndarray:
    x, y, w, h = cv2.boundingRect((coverage > 0.02).astype(np.uint8))
    return np.ascontiguousarray(coverage[y : y + h, x : x + w])


def skipping_pen(coverage: np.ndarray, stroke_width: float, rng: np.random.Generator) -> np.ndarray:
    """A pen that skipped: one or two gaps, each about one to two stroke widths long, at random places on the
    strokes."""
    h, w = coverage.shape
    ys, xs = np.nonzero(coverage >= 0.5)
    mask = np.ones((h, w), np.float32)
    for _ in range(int(rng.integers(1, 3))):
        i = int(rng.integers(len(ys)))
        radius = max(1.0, rng.uniform(0.6, 1.0) * stroke_width)
        cv2.circle(mask, (int(xs[i]), int(ys[i])), round(radius), 0.0, -1)
    return coverage * mask


def dotted_pen(coverage: np.ndarray, stroke_width: float, rng: np.random.Generator) -> np.ndarray:
    """A dotted line: round dots a stroke wide (at most DOT_MAX_SIZE of the digit's height) along the strokes'
    centre line, 8-12 % of the digit's height (and at least two dots' widths) apart. A broad pen's dots are kept
    small, as a person dotting a line keeps them: dots of a brush's width two widths apart left five or six to a
    digit, which no one reads."""
    centre_line = zhang_suen_thinning(coverage >= 0.5)
    ys, xs = np.nonzero(centre_line)
    stroke_width = min(stroke_width, DOT_MAX_SIZE * coverage.shape[0])
    pitch = max(3.0, 2.0 * stroke_width, rng.uniform(0.08, 0.12) * coverage.shape[0])
    chosen: list[tuple[int, int]] = []
    for i in rng.permutation(len(ys)):
        if all((ys[i] - y) ** 2 + (xs[i] - x) ** 2 >= pitch**2 for y, x in chosen):
            chosen.append((int(ys[i]), int(xs[i])))
    dots = np.zeros(coverage.shape, bool)
    for y, x in chosen:
        dots[y, x] = True
    radius = max(1.0, stroke_width / 2)
    drawn = pen_stroke(dots, radius)  # padded by ceil(radius) + 2 on every side
    pad = int(np.ceil(radius)) + 2
    return drawn[pad:-pad, pad:-pad]


def separator_glyph(mark: str, height: int, stroke_width: float) -> np.ndarray:
    """A decimal point (a dot) or comma (a dot with a tail down and to the left), (h, w) float32 coverage."""
    diameter = max(3.0, 1.3 * stroke_width, 0.08 * height)
    side = int(np.ceil(diameter * (2.0 if mark == "," else 1.0))) + 4
    canvas = np.zeros((side, side), np.uint8)
    centre = (side - diameter / 2 - 2, diameter / 2 + 2)  # (x, y): top right for the comma's tail to hang from
    if mark == ".":
        centre = (side / 2, side / 2)
    scale = 16  # cv2 draws with 4 bits of subpixel precision: anti-aliased at 16x, averaged down
    big = np.zeros((side * scale, side * scale), np.uint8)
    cx, cy = round(centre[0] * scale), round(centre[1] * scale)
    cv2.circle(big, (cx, cy), round(diameter / 2 * scale), 255, -1)
    if mark == ",":
        tail = (round((centre[0] - 0.6 * diameter) * scale), round((centre[1] + 1.2 * diameter) * scale))
        cv2.line(big, (cx, cy), tail, 255, max(1, round(0.6 * diameter * scale)))
    canvas = cv2.resize(big, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    return crop_to_ink(canvas)


# ---------------------------------------------------------------------------------------------------------------
# A line of digits


def write_number(
    digits28: list[np.ndarray],
    height: int,
    stroke_width: float,
    rng: np.random.Generator,
    *,
    layout: str = "apart",
    pen: str = "whole",
    separator: tuple[int, str] | None = None,
) -> Written:
    """Write the digits on one line: sizes x0.85..1.15, baseline jitter of +-7 % of the height, one slant for
    the whole number (-0.15..0.35, as people lean right more than left) give or take 0.05 per digit. Gaps are
    wide (0.3..0.7 of the height) or narrow (0.06..0.15) when apart; in the touching layout each neighbouring
    pair touches with probability 1/2 (at least one pair does), its strokes overlapping by 1 pixel to 0.6
    stroke widths at the closest point."""
    if layout not in LAYOUTS or pen not in PENS:
        raise ValueError(f"layout must be one of {LAYOUTS} and pen one of {PENS}")
    count = len(digits28)
    slant = rng.uniform(-0.15, 0.35)
    glyphs, jitters = [], []
    for digit in digits28:
        h = max(8, round(height * rng.uniform(0.85, 1.15)))
        ink, drawn = glyph(digit, h, stroke_width, slant + rng.uniform(-0.05, 0.05))
        if pen == "broken":  # gaps and dots of the pen the digit was drawn with
            ink = skipping_pen(ink, drawn, rng)
        elif pen == "dotted":
            ink = dotted_pen(ink, drawn, rng)
        glyphs.append(ink)
        jitters.append(rng.uniform(-0.07, 0.07) * height)
    touching = np.zeros(max(count - 1, 0), bool)
    if layout == "touching" and count > 1:
        touching = rng.uniform(size=count - 1) < 0.5
        touching[int(rng.integers(count - 1))] = True
    gaps = [
        (
            -rng.uniform(1.0, max(1.0, 0.6 * stroke_width))
            if t
            else rng.uniform(0.3, 0.7) * height
            if rng.uniform() < 0.5
            else rng.uniform(0.06, 0.15) * height
        )
        for t in touching
    ]

    items = [(g, j, True) for g, j in zip(glyphs, jitters)]  # (coverage, baseline offset, is a digit)
    if separator is not None:
        position, mark = separator
        if not 0 < position < count:
            raise ValueError(f"a separator goes between two digits: position 1..{count - 1}, got {position}")
        dot = separator_glyph(mark, height, stroke_width)
        # A comma's tail hangs below the baseline: its dot sits on the line.
        drop = 0.45 * dot.shape[0] if mark == "," else 0.0
        items.insert(position, (dot, rng.uniform(-0.02, 0.04) * height + drop, False))
        # A separator never touches: the gap it replaces becomes a gap on either side of it.
        around = [rng.uniform(0.12, 0.3) * height for _ in range(2)]
        gaps = gaps[: position - 1] + around + gaps[position:]

    # Vertical placement: every item's bottom on the baseline, plus its jitter.
    tops = [-g.shape[0] + j for g, j, _ in items]
    lowest = min(tops)
    tops = [round(t - lowest) for t in tops]
    strip_height = max(t + g.shape[0] for t, (g, _, _) in zip(tops, items))
    # Horizontal placement: each item at the offset that leaves exactly its gap at the closest row, measured on
    # the ink (coverage >= 0.5) of everything placed so far.
    right_edge = np.full(strip_height, -np.inf)  # per row, the rightmost ink pixel placed so far
    lefts = []
    for index, ((ink, _, _), top) in enumerate(zip(items, tops)):
        solid = ink >= 0.5
        rows = np.nonzero(solid.any(axis=1))[0]
        if index == 0:
            left = 0
        else:
            first = np.argmax(solid[rows], axis=1)  # leftmost ink per row of the new item
            reach = right_edge[top + rows] - first  # x at which that row would touch
            left = int(np.ceil(np.max(reach[np.isfinite(reach)], initial=right_edge.max()) + 1 + gaps[index - 1]))
        lefts.append(left)
        last = solid.shape[1] - 1 - np.argmax(solid[rows, ::-1], axis=1)
        right_edge[top + rows] = np.maximum(right_edge[top + rows], left + last)
    shift = -min(lefts)
    lefts = [x + shift for x in lefts]
    width = max(x + g.shape[1] for x, (g, _, _) in zip(lefts, items))
    coverage = np.zeros((strip_height, width), np.float32)
    boxes, masks = [], []
    for (ink, _, is_digit), top, left in zip(items, tops, lefts):
        h, w = ink.shape
        np.maximum(coverage[top : top + h, left : left + w], ink, out=coverage[top : top + h, left : left + w])
        if is_digit:
            mask = np.zeros((strip_height, width), bool)
            mask[top : top + h, left : left + w] = ink >= 0.5
            masks.append(mask)
            boxes.append((left, top, w, h))
    return Written(coverage, tuple(boxes), tuple(masks), separator)


def fit_on_canvas(
    written: Written,
    canvas: tuple[int, int],
    rng: np.random.Generator,
    *,
    margin: float = 0.03,
    centre_bias: float = 0.0,
) -> tuple[np.ndarray, Written]:
    """Put the strip somewhere on an empty (H, W) canvas, shrunk if it does not fit: ((H, W) coverage, the
    strip's digits in canvas coordinates)."""
    height, width = canvas
    strip = written.coverage
    usable = (height * (1 - 2 * margin), width * (1 - 2 * margin))
    scale = min(1.0, usable[0] / strip.shape[0], usable[1] / strip.shape[1])
    if scale < 1.0:
        size = (max(1, int(strip.shape[1] * scale)), max(1, int(strip.shape[0] * scale)))
        strip = cv2.resize(strip, size, interpolation=cv2.INTER_AREA)
    h, w = strip.shape
    free_y, free_x = max(height - h - 2 * int(margin * height), 0), max(width - w - 2 * int(margin * width), 0)
    fy, fx = (1 - centre_bias) * rng.uniform(0, 1, 2) + centre_bias * 0.5
    top, left = int(margin * height) + int(fy * free_y), int(margin * width) + int(fx * free_x)
    out = np.zeros((height, width), np.float32)
    out[top : top + h, left : left + w] = strip
    masks = []
    for mask in written.masks:
        small = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_AREA) > 0 if scale < 1 else mask
        full = np.zeros((height, width), bool)
        full[top : top + h, left : left + w] = small
        masks.append(full)
    boxes = tuple(
        (round(x * scale) + left, round(y * scale) + top, max(1, round(bw * scale)), max(1, round(bh * scale)))
        for x, y, bw, bh in written.boxes
    )
    return out, Written(out, boxes, tuple(masks), written.separator)


# ---------------------------------------------------------------------------------------------------------------
# Drawn styles: the number versions of testkit/user_images.py's DRAWN_STYLES. Each gets the digits, a generator
# and the layout and returns (encoded picture, digit boxes as displayed).

Renderer = Callable[[list[np.ndarray], np.random.Generator, dict], tuple[bytes, tuple[Box, ...]]]


def line_height(canvas: tuple[int, int], fraction: float, count: int) -> int:
    """A digit height that is `fraction` of the canvas height, but lets `count` digits fit across its width
    (about 0.8 of the height per digit with its gap)."""
    height, width = canvas
    return int(min(fraction * height, 0.9 * width / (0.8 * count + 0.3)))


def paint_program(digits, rng, options):
    """Thick brush, dark ink on a white canvas, the number anywhere on it. PNG."""
    width, height = pick(rng, [(1280, 720), (1024, 768), (1600, 600), (800, 600)])
    h = line_height((height, width), rng.uniform(0.2, 0.45), len(digits))
    written = write_number(digits, h, rng.uniform(0.12, 0.22) * h, rng, **options)
    coverage, written = fit_on_canvas(written, (height, width), rng)
    ink = pick(rng, [(0, 0, 0), (20, 20, 20), (0, 0, 0), (40, 30, 120), (150, 0, 0)])
    return encode(paint(coverage, ink, (255, 255, 255)), "PNG"), written.boxes


def web_canvas(digits, rng, options):
    """A browser canvas export: RGBA, transparent, the strokes only in alpha. PNG."""
    width, height = pick(rng, [(600, 200), (800, 300), (500, 250), (700, 280)])
    h = line_height((height, width), rng.uniform(0.45, 0.75), len(digits))
    written = write_number(digits, h, rng.uniform(0.07, 0.16) * h, rng, **options)
    coverage, written = fit_on_canvas(written, (height, width), rng, centre_bias=0.5)
    rgba = np.empty((height, width, 4), np.uint8)
    rgba[:, :, :3] = pick(rng, [(0, 0, 0), (0, 0, 0), (255, 255, 255), (30, 90, 200)])
    rgba[:, :, 3] = np.clip(coverage * 255 + 0.5, 0, 255).astype(np.uint8)
    return encode(rgba, "PNG"), written.boxes


def thin_pen(digits, rng, options):
    """A pen 1.5-3 px wide on a white canvas. PNG."""
    width, height = pick(rng, [(900, 400), (1000, 500), (800, 300)])
    h = line_height((height, width), rng.uniform(0.35, 0.6), len(digits))
    written = write_number(digits, h, rng.uniform(1.5, 3.0), rng, **options)
    coverage, written = fit_on_canvas(written, (height, width), rng)
    ink = pick(rng, [(0, 0, 0), (10, 30, 140), (60, 60, 60)])
    return encode(paint(coverage, ink, (255, 255, 255)), "PNG"), written.boxes


def small_off_centre(digits, rng, options):
    """Digits 30-80 px tall anywhere on a big canvas. PNG."""
    width, height = pick(rng, [(1200, 900), (1600, 1200), (1920, 1080)])
    h = int(rng.integers(30, 80))
    written = write_number(digits, h, rng.uniform(0.08, 0.16) * h, rng, **options)
    coverage, written = fit_on_canvas(written, (height, width), rng)
    return encode(paint(coverage, (0, 0, 0), (255, 255, 255)), "PNG"), written.boxes


def coloured(digits, rng, options):
    """Coloured ink on coloured paper, a third of them of the same brightness. PNG or JPEG."""
    width, height = pick(rng, [(800, 400), (700, 350), (900, 300)])
    h = line_height((height, width), rng.uniform(0.4, 0.7), len(digits))
    written = write_number(digits, h, rng.uniform(0.07, 0.16) * h, rng, **options)
    coverage, written = fit_on_canvas(written, (height, width), rng)
    ink, paper = coloured_ink_and_paper(rng)
    image = paint(coverage, ink, paper)
    data = encode(image, "PNG") if rng.uniform() < 0.5 else encode(image, "JPEG", quality=92)
    return data, written.boxes


def dark_mode(digits, rng, options):
    """Light ink on a dark background. PNG."""
    width, height = pick(rng, [(800, 400), (600, 300), (1000, 400)])
    h = line_height((height, width), rng.uniform(0.4, 0.7), len(digits))
    written = write_number(digits, h, rng.uniform(0.07, 0.16) * h, rng, **options)
    coverage, written = fit_on_canvas(written, (height, width), rng)
    paper = np.array([1, 1, 1.15]) * rng.uniform(15, 45)
    ink = pick(rng, [(255, 255, 255), (230, 230, 230), (120, 220, 255), (255, 230, 120)])
    return encode(paint(coverage, ink, paper), "PNG"), written.boxes


def paper_photo(digits, rng, options, size: tuple[int, int] | None = None):
    """A phone photo of a ballpoint number on paper: tilt and perspective, a lighting gradient and vignette,
    defocus, noise, JPEG, and in half of them the pixels stored sideways with an EXIF orientation tag. JPEG."""
    width, height = size or pick(rng, [(640, 480), (640, 480), (1024, 768), (1280, 960)])
    coverage, written, _ = ballpoint_number(digits, rng, options, (height, width))
    paper = rng.uniform(150, 225) * np.array([1.0, rng.uniform(0.97, 1.02), rng.uniform(0.9, 1.0)])
    ink = pick(rng, BALLPOINT_INKS)
    return photographed_number(paint(coverage, ink, paper), paper, written, rng)


def ballpoint_number(
    digits, rng: np.random.Generator, options: dict, canvas: tuple[int, int]
) -> tuple[np.ndarray, Written, int]:
    """A ballpoint number on a (H, W) canvas, as a phone photographs one: (coverage, the digits, their height)."""
    h = line_height(canvas, rng.uniform(0.12, 0.3), len(digits))
    written = write_number(digits, h, rng.uniform(0.045, 0.08) * h, rng, **options)
    coverage, written = fit_on_canvas(written, canvas, rng, margin=0.08, centre_bias=0.4)
    return coverage, written, h


def ruled_paper(digits, rng, options):
    """A number on notebook paper (testkit.user_images.rule_notebook, a rule under the digits' foot), photographed
    as paper_photo. JPEG."""
    coverage, written, h = ballpoint_number(digits, rng, options, (480, 640))
    paper, colour = sheet(*coverage.shape, rng)
    rule_notebook(paper, rng, h, int(np.nonzero(coverage.max(axis=1) > 0.5)[0][-1]))
    return photographed_number(paint(coverage, pick(rng, BALLPOINT_INKS), paper), colour, written, rng)


def squared_paper(digits, rng, options):
    """A number on squared paper (testkit.user_images.rule_squares), photographed as paper_photo. JPEG."""
    coverage, written, h = ballpoint_number(digits, rng, options, (480, 640))
    paper, colour = sheet(*coverage.shape, rng)
    rule_squares(paper, rng, h)
    return photographed_number(paint(coverage, pick(rng, BALLPOINT_INKS), paper), colour, written, rng)


def photographed_number(image: np.ndarray, paper, written: Written, rng: np.random.Generator):
    """A number painted on paper (H, W, 3), photographed: tilt and perspective (the border in the `paper` colour,
    (3,)), a lighting gradient and vignette, defocus, noise, JPEG, and in half of them the pixels stored sideways
    with an EXIF orientation tag. (encoded picture, the digits' boxes as displayed)."""
    height, width = image.shape[:2]
    homography = tilt_homography(width, height, rng)
    image = cv2.warpPerspective(
        image,
        homography,
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=tuple(float(c) for c in paper),
    )
    boxes = tuple(warped_box(mask, homography) for mask in written.masks)
    image *= lighting(height, width, rng)[:, :, None]
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 1.1))
    image += rng.normal(0, rng.uniform(2, 6), image.shape).astype(np.float32)
    orientation = pick(rng, [1, 1, 6, 8])
    stored = {1: image, 6: np.rot90(image, 1), 8: np.rot90(image, -1)}[orientation]  # what the sensor wrote
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(np.ascontiguousarray(stored), "JPEG", quality=int(rng.integers(60, 90)), exif=exif.tobytes())
    return data, boxes


def tilt_homography(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Rotate by up to 4 degrees and move each corner by up to 3 % of the size (a phone held at a slight angle):
    a little less than a single digit's photo gets, since a whole line must stay one line."""
    corners = np.float32([[0, 0], [width, 0], [width, height], [0, height]])
    angle = np.radians(rng.uniform(-4, 4))
    centre = np.float32([width / 2, height / 2])
    rotation = np.float32([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = (corners - centre) @ rotation.T + centre
    moved += rng.uniform(-0.03, 0.03, (4, 2)).astype(np.float32) * np.float32([width, height])
    return cv2.getPerspectiveTransform(corners, moved.astype(np.float32))


def warped_box(mask: np.ndarray, homography: np.ndarray) -> Box:
    """The box of a (H, W) bool mask's pixels after the homography."""
    ys, xs = np.nonzero(mask)
    points = cv2.perspectiveTransform(np.stack([xs, ys], axis=1).astype(np.float32)[None], homography)[0]
    x0, y0 = np.floor(points.min(axis=0)).astype(int)
    x1, y1 = np.ceil(points.max(axis=0)).astype(int) + 1
    return int(x0), int(y0), int(x1 - x0), int(y1 - y0)


NUMBER_STYLES: dict[str, Renderer] = {
    "paint_program": paint_program,
    "web_canvas_alpha": web_canvas,
    "thin_pen": thin_pen,
    "small_off_centre": small_off_centre,
    "coloured": coloured,
    "paper_photo": paper_photo,
    "dark_mode": dark_mode,
}
# Numbers on structured paper, the number versions of testkit/user_images.py's ruled and squared PAPER_KINDS: asked
# for by name (make_numbers(styles=...)), so the drawn styles' sets and figures stay what they were.
PAPER_NUMBER_STYLES: dict[str, Renderer] = {"ruled": ruled_paper, "squared": squared_paper}


def make_numbers(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    per_style: int = 20,
    seed: int = 0,
    layout: str = "apart",
    pen: str = "whole",
    lengths: tuple[int, int] = (4, 8),
    separator: bool = False,
    styles=None,
) -> list[NumberPicture]:
    """`per_style` numbers of lengths[0]..lengths[1] digits in each drawn style, from random MNIST test digits
    (N, 28, 28) uint8. With `separator`, each gets a decimal point or comma between two of its digits.
    Each (style, layout, pen, separator) draws from its own generator, so the sets do not depend on each other."""
    images, labels = np.asarray(images), np.asarray(labels)
    out = []
    for style in styles or NUMBER_STYLES:
        rng = np.random.default_rng([seed, zlib.crc32(f"{style}/{layout}/{pen}/{separator}".encode())])
        for _ in range(per_style):
            count = int(rng.integers(lengths[0], lengths[1] + 1))
            picks = rng.integers(len(images), size=count)
            mark = None
            if separator and count >= 2:
                mark = (int(rng.integers(1, count)), pick(rng, SEPARATORS))
            data, boxes = {**NUMBER_STYLES, **PAPER_NUMBER_STYLES}[style](
                [images[i] for i in picks], rng, {"layout": layout, "pen": pen, "separator": mark}
            )
            out.append(
                NumberPicture(
                    data,
                    "".join(str(int(labels[i])) for i in picks),
                    boxes,
                    style,
                    layout,
                    mark,
                    tuple(int(i) for i in picks),
                )
            )
    return out


def cached_numbers(
    images: np.ndarray, labels: np.ndarray, *, per_style: int, seed: int, layout: str, styles: tuple[str, ...] = ()
) -> list:
    """make_numbers(images, labels, per_style=..., seed=..., layout=..., styles=...), made once and kept in the test
    cache (testkit/cache.py), keyed by the code that draws them: a few hundred numbers take 15-20 s to draw.
    `images` and `labels` must be MNIST's test digits, as everywhere the tests and benchmarks draw numbers. No
    `styles`: the drawn ones (NUMBER_STYLES)."""
    from testkit.cache import cached_pickle, code_hash

    key = code_hash(
        ("testkit/numbers.py", "testkit/user_images.py", "shared/normalize.py"),
        extra=f"{layout}-{per_style}-{seed}-{len(images)}" + "".join(f"-{style}" for style in styles),
    )
    return cached_pickle(
        "numbers",
        key,
        lambda: make_numbers(images, labels, per_style=per_style, seed=seed, layout=layout, styles=styles or None),
    )


def lines_picture(images: np.ndarray, labels: np.ndarray, *, lines: int = 2, digits: int = 4, seed: int = 0) -> bytes:
    """Several lines of writing, one under the other, on a white canvas (PNG): what ReadNumber refuses."""
    rng = np.random.default_rng([seed, 2])
    height = 60
    strips = []
    for _ in range(lines):
        picks = rng.integers(len(images), size=digits)
        strips.append(write_number([images[i] for i in picks], height, 0.1 * height, rng).coverage)
    gap = height // 2
    width = max(s.shape[1] for s in strips) + 2 * gap
    canvas = np.zeros((sum(s.shape[0] for s in strips) + gap * (lines + 1), width), np.float32)
    top = gap
    for strip in strips:
        canvas[top : top + strip.shape[0], gap : gap + strip.shape[1]] = strip
        top += strip.shape[0] + gap
    return encode(paint(canvas, (0, 0, 0), (255, 255, 255)), "PNG")
