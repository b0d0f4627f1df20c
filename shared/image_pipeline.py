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

from dataclasses import dataclass

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
    prepare_array,
)
from shared.normalize import (  # noqa: F401 - re-exported
    MNIST_SIDE,
    STROKE_RATIO_TARGET,
    InkRegion,
    centre_by_mass,
    channel_contrast,
    estimate_background,
    find_ink,
    fit_in_box,
    ink_contrast,
    normalize_stroke_width,
    strongest_and_weakest,
)


@dataclass(frozen=True)
class PipelineTrace:
    """Each stage's result, for the README figure, debugging and tests. Shapes in the comments."""

    image: np.ndarray  # (H, W) or (H, W, 3) uint8: decoded, composited, oriented, at working resolution
    background: np.ndarray  # same shape as image: the estimated paper
    ink: np.ndarray  # (H, W) uint8: contrast to the paper, ink bright on black
    region: InkRegion  # where the digit's strokes are in `ink`
    crop: np.ndarray  # (h, w) float32 in [0, 1]: soft ink cropped to the digit, stroke width normalized
    stroke_ratio: float  # stroke width / longer side of the digit, as measured before normalizing
    output: np.ndarray  # (28, 28) uint8


# ---------------------------------------------------------------------------------------------------------------
# Public entry points


def to_mnist(data: bytes, *, limits: Limits = DEFAULT_LIMITS, budget: MemoryBudget | None = None) -> np.ndarray:
    """Encoded image bytes (PNG, JPEG, GIF, BMP, TIFF, WebP) -> (28, 28) uint8 MNIST-style digit.

    Raises ImageRejected for empty, oversized, undecodable or blank input; never anything else for bad input.
    With a memory `budget` (the server's), BudgetExhausted when it stays full and OutOfMemory when decoding runs
    out of memory: the server is busy, the picture may be fine.
    """
    return to_mnist_array(decode_image(data, limits=limits, budget=budget))


def to_mnist_array(image: np.ndarray) -> np.ndarray:
    """An already-decoded picture -> (28, 28) uint8 MNIST-style digit.

    image: (H, W) grey, (H, W, 1), (H, W, 2) grey+alpha, (H, W, 3) RGB or (H, W, 4) RGBA; uint8, uint16, bool or
    float in [0, 1]. Raises ImageRejected if it holds no digit.
    """
    return trace_pipeline(image).output


def trace_pipeline(image: np.ndarray) -> PipelineTrace:
    """to_mnist_array, keeping every intermediate stage (for the README figure and for debugging)."""
    work = prepare_array(image)
    paper = estimate_background(work)
    ink, weakest = strongest_and_weakest(channel_contrast(work, paper))
    region = find_ink(ink, weakest)
    crop, ratio = normalize_stroke_width(region.soft)
    output = centre_by_mass(fit_in_box(crop))
    return PipelineTrace(work, paper.surface, ink, region, crop, ratio, output)


def encode_png(img28: np.ndarray) -> bytes:
    """A (28, 28) uint8 image -> PNG bytes (what the model saw, for the client to show)."""
    img28 = np.asarray(img28)
    if img28.shape != (MNIST_SIDE, MNIST_SIDE) or img28.dtype != np.uint8:
        raise ValueError(f"expected a (28, 28) uint8 image, got {img28.shape} {img28.dtype}")
    ok, encoded = cv2.imencode(".png", img28)
    if not ok:  # pragma: no cover - OpenCV fails only without a PNG codec
        raise RuntimeError("OpenCV could not encode a PNG")
    return encoded.tobytes()
