"""Any picture of one digit -> what an MNIST digit looks like: 28x28 uint8, ink bright on black.

Used by the inference server (every Predict) and the client's preview, so both see exactly what the model sees.
MNIST was built from black-and-white scans: each digit was scaled to fit a 20x20 box keeping its aspect ratio
(the scaling anti-aliased it into grey levels) and pasted into 28x28 so that its centre of mass lies on the
centre pixel. A user's picture is nothing like that: a large canvas, a white (or dark, or coloured) background,
uneven lighting, a small digit in a corner, a stroke far thinner or thicker than MNIST's. Two modules, one job
each, behind `to_mnist`:

1. shared/decode.py      bytes -> array, the security boundary: limits checked before decoding, the first frame,
                         reduced-size decoding, 8 bits, transparency, EXIF, at most WORK_MAX_SIDE pixels a side.
2-7. shared/normalize.py the geometry: paper, ink, strokes, crop, stroke width, MNIST's box and centre of mass.

A 640x480 photo takes a few milliseconds (bench/bench_preprocess.py).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass, replace

import cv2
import numpy as np

# The names callers use, from the two modules that implement them.
from shared.budget import BudgetExhausted, MemoryBudget  # noqa: F401 - re-exported
from shared.decode import (  # noqa: F401 - re-exported
    ACCEPTED_FORMATS,
    DEFAULT_LIMITS,
    WORK_MAX_SIDE,
    ImageRejected,
    Limits,
    OutOfMemory,
    decode_image,
    is_jpeg,
    prepare_array,
    shrink_to,
)
from shared.normalize import (  # noqa: F401 - re-exported
    LOCAL_BACKGROUND_MIN_SIDE,
    MNIST_BOX,
    MNIST_SIDE,
    STROKE_RATIO_TARGET,
    InkRegion,
    Paper,
    box_through,
    centre_by_mass,
    channel_contrast,
    estimate_background,
    find_ink,
    fit_in_box,
    ink_contrast,
    normalize_stroke_width,
    scale_at,
    sheet_in,
    sheet_picture,
    strongest_and_weakest,
)

# A picture this large (long side, at working resolution) is read at half resolution first (trace_pipeline): the
# half still has room for ruling lines (RULING_MIN_PICTURE).
COARSE_MIN_SIDE = 320
# The half-resolution reading stands if the digit found there is at least twice MNIST's box on its long side: its
# 20x20 box is still made by averaging pixels down, as MNIST's was. A stroke too faint to be found at half leaves
# no digit there, and the picture is read again. Measured on users' pictures (bench/bench_user_images.py, 300 per
# style): reading every picture at half resolution, and none, gave the same accuracy in every style.
COARSE_MIN_DIGIT = 2 * MNIST_BOX
# ...and its stroke at least this many pixels wide there (stroke ratio x the digit's long side). A paint program's
# 1-3 px hard-edged pencil on a large canvas lands on one pixel or is split grey over two at half size, as each
# line falls; the split ones came out too faint to keep, and a 4 without its bar read 1 (14 of 120 such pictures
# wrong, none at full resolution). A smooth thin pen reads the same either way; photographed pens are wider.
COARSE_MIN_STROKE = 4.0
# A sheet lying on a desk (read_sheet) holds a digit at least this fraction of its side (the square root of its
# area), or it is no sheet.
SHEET_MIN_DIGIT = 0.15
# ...written with a pen: a "digit" found there bolder than this (stroke / its longer side) is the hole of a bold
# solid shape (a square 0 whose hole is a fifth of it or less: 0.33), not a digit written on a sheet (at most 0.19
# on notes of 160-290 px holding MNIST digits).
SHEET_MAX_STROKE = 0.25


@dataclass(frozen=True)
class PipelineTrace:
    """Each stage's result, for the README figure, debugging and tests. Shapes in the comments."""

    image: np.ndarray  # (H, W) or (H, W, 3) uint8: what the stages ran on (decoded, composited, oriented)
    background: np.ndarray  # same shape as image: the estimated paper
    ink: np.ndarray  # (H, W) uint8: contrast to the paper, ink bright on black
    region: InkRegion  # where the digit's strokes are in `ink`
    crop: np.ndarray  # (h, w) float32 in [0, 1]: soft ink cropped to the digit, stroke width normalized
    stroke_ratio: float  # stroke width / longer side of the digit, as measured before normalizing
    output: np.ndarray  # (28, 28) uint8
    scale: int = 1  # the stages ran on `image` shrunk by this factor (2: the coarse pass of trace_pipeline)
    # Where `image` lies in the prepared picture: None where it is that picture (or its half), else the 3x3 map from
    # its pixels to the picture's, for a sheet lying on a desk (read_sheet), cut out and maybe turned upright or
    # squared (seen at an angle).
    to_picture: np.ndarray | None = None

    def picture_window(self) -> tuple[int, int, int, int]:
        """The digit's window (x, y, width, height) in the prepared picture's pixels, whatever the scale (the box
        holding it, for a sheet that was turned upright)."""
        x, y, w, h = (v * self.scale for v in self.region.window)
        return (x, y, w, h) if self.to_picture is None else box_through(self.to_picture, (x, y, w, h))


# ---------------------------------------------------------------------------------------------------------------
# Public entry points


def to_mnist(data: bytes, *, limits: Limits = DEFAULT_LIMITS, budget: MemoryBudget | None = None) -> np.ndarray:
    """Encoded image bytes (PNG, JPEG, GIF, BMP, TIFF, WebP) -> (28, 28) uint8 MNIST-style digit.

    Raises ImageRejected for empty, oversized, undecodable or blank input; never anything else for bad input.
    With a memory `budget` (the server's), BudgetExhausted when it stays full and OutOfMemory when decoding runs
    out of memory: the server is busy, the picture may be fine. The budget holds the decoding's memory while it
    decodes (shared.decode), then the pipeline's working memory while it works on the picture (pipeline_bytes).
    """
    decode = functools.partial(decode_image, data, limits=limits, budget=budget)
    with contextlib.ExitStack() as working:

        def decoded(shrink: int = 1) -> np.ndarray:
            # The picture the pipeline works on next, its working memory held in the budget. A JPEG's full picture
            # is decoded after its half was read: the half's share is given back first, as a thread that holds room
            # while it waits for more queues behind the calls that wait for the room it holds.
            working.close()
            picture = decode(shrink=shrink)
            working.enter_context(held_while_worked_on(picture, budget))
            return picture

        if decodes_at_half_size(data):
            half = decoded(shrink=2)
            if coarse_size((2 * half.shape[0], 2 * half.shape[1])):
                return trace_coarse_first(half, decoded).output
        return to_mnist_array(decoded())


def decodes_at_half_size(data: bytes) -> bool:
    """Whether to_mnist decodes these bytes at half size first: a JPEG (DCT scaling, for the coarse pass: a photo
    rarely needs more). For any other bytes, to_mnist(data) is to_mnist_array(decode_image(data)) with the same
    limits and budget, so a caller that has decoded them already can reuse that picture."""
    return is_jpeg(data)


def to_mnist_array(image: np.ndarray, budget: MemoryBudget | None = None) -> np.ndarray:
    """An already-decoded picture -> (28, 28) uint8 MNIST-style digit.

    image: (H, W) grey, (H, W, 1), (H, W, 2) grey+alpha, (H, W, 3) RGB or (H, W, 4) RGBA; uint8, uint16, bool or
    float in [0, 1]. Raises ImageRejected if it holds no digit. With a `budget`, the pipeline's working memory
    (pipeline_bytes) is held in it while it works: BudgetExhausted when it stays full.
    """
    with held_while_worked_on(image, budget):
        return trace_pipeline(image).output


def held_while_worked_on(picture: np.ndarray, budget: MemoryBudget | None) -> contextlib.AbstractContextManager:
    """The pipeline's working memory for `picture` (pipeline_bytes), held in `budget` (if any) for the block."""
    if budget is None:
        return contextlib.nullcontext()
    return budget.reserve(pipeline_bytes(picture), to="to work on")


# The most memory the pipeline holds at once working on a picture (its working copies: the paper's estimate, the
# contrast and ink maps, the pieces' labels, the crop), per pixel of the picture as decode_image returns it, which
# the service reserves in its decode budget while it works (pipeline_bytes), beside the picture itself. Measured
# with tracemalloc (stop 65, `python -m bench.bench_memory --part working`) on testkit.memory's costliest pictures
# at the working size, 1024 px, the picture included: a spiral of 40 turns 18.9 B/px, noise in colour 18.5 (3 of
# them the picture's own), a zigzag 15.2-16.5; photos of a digit on paper 4-7. Counted nowhere before: 16 Predicts
# of the spiral at once took the server +196-265 MiB that the decode budget did not hold (now +154-204 MiB, within).
PIPELINE_BYTES_PER_PIXEL = 24
# And whatever the picture's size (small strips hold more a pixel: 15.6 B/px across 1024 x 40, 0.6 MiB).
PIPELINE_BASE_BYTES = 2**20


def pipeline_bytes_of(pixels: int, picture_bytes: int) -> int:
    """The memory making a 28x28 digit of a decoded picture of `pixels` pixels, itself `picture_bytes`, may hold at
    once, the picture included, in bytes."""
    return PIPELINE_BASE_BYTES + PIPELINE_BYTES_PER_PIXEL * pixels + picture_bytes


def pipeline_bytes(image: np.ndarray) -> int:
    """pipeline_bytes_of a decoded picture (as decode_image returns it)."""
    return pipeline_bytes_of(int(image.shape[0]) * int(image.shape[1]), image.nbytes)


def largest_pipeline_bytes(max_pixels: int) -> int:
    """pipeline_bytes of the largest picture decode_image returns within `max_pixels` (at most WORK_MAX_SIDE on its
    long side), in colour (three bytes a pixel)."""
    pixels = min(max_pixels, WORK_MAX_SIDE**2)
    return pipeline_bytes_of(pixels, 3 * pixels)


def trace_pipeline(image: np.ndarray) -> PipelineTrace:
    """to_mnist_array, keeping every intermediate stage (for the README figure and for debugging).

    A picture of COARSE_MIN_SIDE pixels or more is first read at half its resolution (trace_coarse_first).
    """
    work = prepare_array(image)
    if not coarse_size(work.shape[:2]):
        return read_sheet(trace_at(work, estimate_background(work)), lambda: work)
    return trace_coarse_first(shrink_to(work, max(work.shape[:2]) // 2), lambda: work)


def coarse_size(shape: tuple[int, int]) -> bool:
    """Whether a picture of (H, W) at working resolution is read at half resolution first: it is large, and its
    half keeps room for the local paper estimate (a shadow), as the full picture had."""
    return max(shape) >= COARSE_MIN_SIDE and min(shape) >= 2 * LOCAL_BACKGROUND_MIN_SIDE


def trace_coarse_first(half: np.ndarray, full: Callable[[], np.ndarray]) -> PipelineTrace:
    """The pipeline on a picture at half resolution, `half` (H/2, W/2[, 3]) uint8, which costs a quarter as much
    as at full resolution, `full()`.

    That answer stands when the digit it found is still large there (coarse_enough): the 28x28 digit is its
    average down to 20 pixels, so the lost detail was never used. A small digit is read again at full
    resolution, as is a picture the coarse pass found no digit in (a stroke too faint at half resolution). The
    paper found at half resolution is reused (it is smooth, or estimated on cells far larger than a pixel).
    """
    paper = estimate_background(half)
    with contextlib.suppress(ImageRejected):
        trace = trace_at(half, paper, scale=2)
        if coarse_enough(trace):
            return read_sheet(trace, full)
    work = full()
    return read_sheet(trace_at(work, paper.at_size_of(work)), lambda: work)


def read_sheet(trace: PipelineTrace, full: Callable[[], np.ndarray]) -> PipelineTrace:
    """`trace`, or where the "digit" it found is a sheet lying on a desk with the digit written on it (sheet_in: a
    sticky note or a page photographed from above or at an angle, the desk taken for the paper), the pipeline on
    that sheet cut out of the prepared picture `full()`, upright and square (sheet_picture). The sheet must hold a
    digit SHEET_MIN_DIGIT of its side or larger, written no bolder than SHEET_MAX_STROKE; else (a filled rectangle
    drawn on a canvas, a bold stroke, a bold square 0 whose small hole would read as a 1) `trace` stands.
    """
    sheet = sheet_in(trace.region.strokes, trace.ink.shape)
    if sheet is None:
        return trace
    work = full()
    x, y, w, h = trace.picture_window()
    if trace.scale != 1:
        sheet = cv2.resize(sheet.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
        # Twice the half's window may pass the picture's edge by a pixel (the half was rounded up).
        sheet = sheet[: work.shape[0] - y, : work.shape[1] - x]
    on_sheet = sheet_picture(work, sheet, x, y)
    if on_sheet is None:
        return trace
    cut, to_picture = on_sheet
    try:
        inner = trace_at(cut, estimate_background(cut))
    except ImageRejected:
        return trace
    # The digit's size in the picture's pixels (a sheet longer than WORK_MAX_SIDE upright is read shrunk; one seen at
    # an angle is shrunk more at its far edge).
    left, top, width, height = inner.region.window
    size = max(width, height) * scale_at(to_picture, (left + width / 2, top + height / 2))
    if size < SHEET_MIN_DIGIT * np.sqrt(sheet.sum()) or inner.stroke_ratio > SHEET_MAX_STROKE:
        return trace
    return replace(inner, to_picture=to_picture)


def trace_at(work: np.ndarray, paper: Paper, scale: int = 1) -> PipelineTrace:
    """The pipeline's stages 3-7 on a prepared picture (H, W[, 3]) uint8 and its paper, at the resolution it has
    (the picture shrunk by `scale`)."""
    ink, weakest = strongest_and_weakest(channel_contrast(work, paper))
    region = find_ink(ink, weakest)
    crop, ratio = normalize_stroke_width(region.soft)
    output = centre_by_mass(fit_in_box(crop))
    return PipelineTrace(work, paper.surface, ink, region, crop, ratio, output, scale)


def coarse_enough(trace: PipelineTrace) -> bool:
    """Whether a half-resolution reading lost nothing the 28x28 digit needs: a digit of COARSE_MIN_DIGIT pixels
    or more on its long side, drawn with a stroke of COARSE_MIN_STROKE pixels or more."""
    long_side = max(trace.region.window[2:])
    return long_side >= COARSE_MIN_DIGIT and trace.stroke_ratio * long_side >= COARSE_MIN_STROKE


def encode_png(img28: np.ndarray) -> bytes:
    """A (28, 28) uint8 image -> PNG bytes (what the model saw, for the client to show)."""
    img28 = np.asarray(img28)
    if img28.shape != (MNIST_SIDE, MNIST_SIDE) or img28.dtype != np.uint8:
        raise ValueError(f"expected a (28, 28) uint8 image, got {img28.shape} {img28.dtype}")
    ok, encoded = cv2.imencode(".png", img28)
    if not ok:  # pragma: no cover - OpenCV fails only without a PNG codec
        raise RuntimeError("OpenCV could not encode a PNG")
    return encoded.tobytes()
