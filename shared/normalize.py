"""A decoded picture of one digit -> MNIST's geometry: paper, ink, strokes, box and centre.

Works on arrays that shared/decode.py produced (uint8, at most WORK_MAX_SIDE on the long side), so nothing here
reads untrusted bytes. The steps, each one OpenCV or NumPy call on a whole array (no Python loop touches
pixels):

2. estimate_background   the paper: a smooth quadratic surface per colour channel, fitted robustly (the ink is
                  a minority and is rejected as outliers), so a lighting gradient or vignette is not ink.
3. ink_contrast   how far each pixel is from the paper, in the colour channel where it differs most. Dark ink
                  on white, light ink on black and red ink on equally bright green all become bright ink on black:
                  no polarity guess, no inversion step that can go wrong.
4. find_ink       threshold (Otsu, never below a contrast floor and the noise level), keep the connected
                  strokes that form the digit and drop specks of noise by their size relative to the digit, not
                  by morphology, so a one-pixel pen stroke survives. Nothing left -> ImageRejected (blank).
5. crop           to the ink, at working resolution, with a soft (anti-aliased) ink map rather than a binary one.
6. normalize_stroke_width   measure the stroke width (2 x area / perimeter) relative to the digit's size and
                  bring it into MNIST's range (median 0.11 of the box): thin pen strokes are grown, paint-brush
                  strokes are thinned, using distance transforms (cost independent of the width).
7. fit_in_box + centre_by_mass   scale so the longer side is 20 pixels (area averaging = anti-aliasing) and
                  paste into 28x28 with the centre of mass on pixel (14, 14), as MNIST's mean is (13.99, 14.01).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from shared.decode import ImageRejected, sample_grid

# ---------------------------------------------------------------------------------------------------------------
# Constants. The MNIST figures were measured on the 10,000 test digits (see the README's pipeline section).

MNIST_SIDE = 28
MNIST_BOX = 20  # the longer side of every MNIST digit's bounding box
MNIST_CENTRE = 14.0  # mean centre of mass of MNIST digits, in pixel-index coordinates: (13.99, 14.01)

# Stroke width / longer side of the bounding box, as 2*area/perimeter of the digit at 4x: MNIST's 10th, 50th and
# 90th percentiles are 0.082, 0.110 and 0.153, nearly the same for every digit (0.103..0.115 medians).
STROKE_RATIO_TARGET = 0.11
STROKE_RATIO_THIN = 0.07  # below this (MNIST's 3rd percentile) the stroke is grown to STROKE_RATIO_TARGET
STROKE_RATIO_THICK = 0.17  # above this (MNIST's 95th percentile) it is thinned to STROKE_RATIO_THICK_TARGET
STROKE_RATIO_THICK_TARGET = 0.13  # MNIST's 75th percentile: bold, but with open loops
MAX_THINNING_FRACTION = 0.3  # never remove more than this fraction of the stroke width (thin parts would vanish)

# Stroke widths are adjusted on the cropped digit at this many pixels on its long side: fine enough for one-pixel
# precision at MNIST's scale (x8 of the 20-px box), cheap enough that the distance transforms cost ~0.2 ms.
STROKE_WORK_MAX_SIDE = 160
STROKE_WORK_MIN_SIDE = 64

BACKGROUND_GRID_SIDE = 48  # the paper is modelled on at most this many samples along the long side
BACKGROUND_FIT_ROUNDS = 3
BACKGROUND_MIN_TOLERANCE = 12.0  # grey levels: the robust fit's smallest inlier band (paper noise, texture, JPEG)

MIN_INK_CONTRAST = 40  # grey levels (of 255) between ink and paper below which nothing counts as ink
NOISE_MULTIPLE = 5.0  # the ink threshold also stays this many times above the typical background residue
SOFT_FLOOR_MIN = 6  # the soft ink map starts at this contrast (or 3x the noise level, if higher)
KEEP_AREA_FRACTION = 0.04  # strokes smaller than this fraction of the largest stroke are specks of noise...
KEEP_NEAR_FRACTION = 0.6  # ...and strokes this far from the largest (x its size) that are not big are stray marks
KEEP_BIG_FRACTION = 0.25  # a stroke at least this fraction of the largest is kept wherever it is
MIN_DIGIT_SIDE = 5  # pixels at working resolution; a smaller blob is a speck, not a digit


# ---------------------------------------------------------------------------------------------------------------
# 2-3. Paper and ink


def estimate_background(image: np.ndarray) -> np.ndarray:
    """The paper under the digit, (H, W[, 3]) uint8: a quadratic surface per channel, fitted robustly.

    The picture is sampled on a grid of at most BACKGROUND_GRID_SIDE points a side. A quadratic in (x, y) covers a
    lighting gradient and a vignette. The fit starts from the border's median colour (the paper almost always
    reaches the border, even when a bold digit covers half the picture) and is refitted on the samples that lie
    within a tolerance of the current surface, so the ink samples (a minority) do not pull the paper towards them.
    """
    grid = sample_grid(image, BACKGROUND_GRID_SIDE).astype(np.float64)
    grid = grid if grid.ndim == 3 else grid[:, :, None]  # (h, w, C)
    h, w, channels = grid.shape
    values = grid.reshape(-1, channels)  # (h*w, C)
    border = np.concatenate([grid[0], grid[-1], grid[:, 0], grid[:, -1]])  # (2h + 2w, C)
    fitted = np.broadcast_to(np.median(border, axis=0), values.shape)
    design = quadratic_design(h, w)  # (h*w, 6)
    if len(values) >= 4 * design.shape[1]:
        for _ in range(BACKGROUND_FIT_ROUNDS):
            residual = np.abs(values - fitted).max(axis=1)  # (h*w,)
            tolerance = max(BACKGROUND_MIN_TOLERANCE, 3.0 * float(np.percentile(residual, 40)))
            inliers = residual <= tolerance
            if np.count_nonzero(inliers) < 2 * design.shape[1]:
                break
            fitted = fit_least_squares(design[inliers], values[inliers], design)
    surface = np.clip(fitted.reshape(h, w, channels) + 0.5, 0, 255).astype(np.uint8)
    full = cv2.resize(surface, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    return full.reshape(image.shape)


def fit_least_squares(design: np.ndarray, values: np.ndarray, evaluate_at: np.ndarray) -> np.ndarray:
    """Least squares through the normal equations: design (n, k), values (n, C) -> fit at evaluate_at (m, C).

    A 6x6 solve rather than np.linalg.lstsq, whose SVD took 8-30 ms instead of 0.05 ms on the shared 2-core
    machine (LAPACK waking its threads for a tiny problem).
    """
    normal = design.T @ design + 1e-6 * np.eye(design.shape[1])  # (k, k); the ridge keeps it invertible
    coefficients = np.linalg.solve(normal, design.T @ values)  # (k, C)
    return evaluate_at @ coefficients



@functools.lru_cache(maxsize=64)
def quadratic_design(h: int, w: int) -> np.ndarray:
    """(h*w, 6) rows [1, x, y, x^2, xy, y^2] for the grid's cell centres, x and y in [-1, 1]. Read-only, cached."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    x = (2 * xs + 1) / w - 1
    y = (2 * ys + 1) / h - 1
    design = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=-1).reshape(-1, 6)
    design.flags.writeable = False  # shared between calls (and threads)
    return design


def ink_contrast(image: np.ndarray, background: np.ndarray) -> np.ndarray:
    """(H, W) uint8: per pixel, the largest difference from the paper over the colour channels."""
    difference = cv2.absdiff(image, background)
    if difference.ndim == 2:
        return difference
    return cv2.max(cv2.max(difference[:, :, 0], difference[:, :, 1]), difference[:, :, 2])


# ---------------------------------------------------------------------------------------------------------------
# 4-5. Strokes and crop


@dataclass(frozen=True)
class InkRegion:
    """The digit found in an ink-contrast map, as a window (x, y, w, h) of it holding the kept strokes."""

    window: tuple[int, int, int, int]  # x, y, width, height in the ink map
    strokes: np.ndarray  # (h, w) bool: pixels of the kept strokes
    soft: np.ndarray  # (h, w) float32 in [0, 1]: anti-aliased ink on the kept strokes and a one-pixel fringe
    threshold: float  # the contrast that counted as ink


def find_ink(ink: np.ndarray) -> InkRegion:
    """The digit's strokes in an ink-contrast map (H, W) uint8; ImageRejected when there are none."""
    noise = noise_level(ink)
    threshold = ink_threshold(ink, noise)
    strong = (ink >= threshold).astype(np.uint8)
    labels, stats = connected_components(strong)
    keep = digit_components(stats)  # (components,) bool; label 0 (the paper) is never kept
    if not keep.any():
        raise_blank(ink, threshold)
    x0, y0, x1, y1 = union_box(stats[keep])
    if max(x1 - x0, y1 - y0) < MIN_DIGIT_SIDE:
        raise ImageRejected(
            f"no digit found: the only marks are specks of at most {max(x1 - x0, y1 - y0)} pixels. Send a picture "
            "in which the digit is clearly visible and fills a good part of the frame"
        )
    # Grow the window by one pixel for the anti-aliased fringe around the strokes.
    height, width = ink.shape
    x0, y0, x1, y1 = max(x0 - 1, 0), max(y0 - 1, 0), min(x1 + 1, width), min(y1 + 1, height)
    strokes = keep[labels[y0:y1, x0:x1]]  # (h, w) bool, by looking each pixel's label up
    window = ink[y0:y1, x0:x1]
    fringe = cv2.dilate(strokes.astype(np.uint8), np.ones((3, 3), np.uint8))
    # Map contrast to ink coverage: the noise floor -> 0, the strokes' typical contrast -> 1.
    low = max(SOFT_FLOOR_MIN, min(3.0 * noise, threshold / 2))
    high = max(percentile_uint8(window[strokes], 75), threshold + 1.0)
    soft = np.clip((window.astype(np.float32) - low) / (high - low), 0, 1) * fringe
    return InkRegion((x0, y0, x1 - x0, y1 - y0), strokes, soft, threshold)


def percentile_uint8(values: np.ndarray, q: float) -> float:
    """The q-th percentile of uint8 values by counting (linear time, unlike sorting)."""
    counts = np.cumsum(np.bincount(values.ravel(), minlength=256))
    return float(np.searchsorted(counts, q / 100 * counts[-1]))


def noise_level(ink: np.ndarray) -> float:
    """The typical contrast of the paper itself (its texture, noise, JPEG artefacts): the 30th percentile."""
    sample = ink[::2, ::2] if ink.size > 40_000 else ink  # a quarter of the pixels is plenty, and 4x faster
    return percentile_uint8(sample, 30)


def ink_threshold(ink: np.ndarray, noise: float) -> float:
    """Otsu's split between paper and ink, but never below the contrast floor or well inside the noise."""
    otsu, _ = cv2.threshold(ink, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    return max(float(otsu), float(MIN_INK_CONTRAST), NOISE_MULTIPLE * noise)


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of a (H, W) uint8 mask: (labels (H, W), stats (n, 5): x, y, w, h, area).

    16-bit labels make OpenCV's statistics pass twice as fast; a noisy picture with more than 65,535
    components falls back to 32-bit labels.
    """
    try:
        _, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(mask, 8, cv2.CV_16U, cv2.CCL_DEFAULT)
    except cv2.error:
        _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=cv2.CV_32S)
    return labels, stats


def digit_components(stats: np.ndarray) -> np.ndarray:
    """Which connected components (rows of OpenCV's stats: x, y, w, h, area) belong to the digit.

    Keep the largest stroke, every stroke at least KEEP_BIG_FRACTION of its size, and smaller strokes (a 5's flag,
    a 7's bar, a pen that skipped) within KEEP_NEAR_FRACTION of its size from it. Specks below KEEP_AREA_FRACTION
    of it are noise. Sizes, not morphology, decide, so a one-pixel-wide stroke is as safe as a thick one.
    """
    area = stats[:, cv2.CC_STAT_AREA].astype(np.int64)
    area[0] = 0  # label 0 is the background
    keep = np.zeros(len(stats), bool)
    if len(stats) < 2 or area.max() == 0:
        return keep
    main = int(area.argmax())
    mx, my, mw, mh = stats[main, :4]
    x, y, w, h = (stats[:, i] for i in range(4))
    gap_x = np.maximum(0, np.maximum(mx - (x + w), x - (mx + mw)))  # 0 when the boxes overlap horizontally
    gap_y = np.maximum(0, np.maximum(my - (y + h), y - (my + mh)))
    near = np.hypot(gap_x, gap_y) <= KEEP_NEAR_FRACTION * max(mw, mh)
    big = area >= KEEP_BIG_FRACTION * area[main]
    keep = (area >= KEEP_AREA_FRACTION * area[main]) & (big | near)
    keep[0] = False
    return keep


def union_box(stats: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), exclusive ends, of the union of components' boxes (rows: x, y, w, h, area)."""
    x0, y0 = stats[:, 0].min(), stats[:, 1].min()
    x1, y1 = (stats[:, 0] + stats[:, 2]).max(), (stats[:, 1] + stats[:, 3]).max()
    return int(x0), int(y0), int(x1), int(y1)


def raise_blank(ink: np.ndarray, threshold: float) -> None:
    raise ImageRejected(
        f"no ink found: the picture looks blank (the strongest contrast to the background is {int(ink.max())} of "
        f"255; ink needs at least {int(threshold)}). Send a picture of a digit written darker or lighter than its "
        "background, e.g. a dark pen on white paper"
    )


# ---------------------------------------------------------------------------------------------------------------
# 6. Stroke width


def normalize_stroke_width(crop: np.ndarray) -> tuple[np.ndarray, float]:
    """(h, w) float32 soft ink -> the same digit with MNIST-like stroke width, and the ratio measured before.

    The width is measured (and changed) on the crop resized to STROKE_WORK_MIN_SIDE..STROKE_WORK_MAX_SIDE pixels
    on its long side, the resolution the ratio was calibrated at on MNIST. Area averaging keeps a thin stroke as
    faint grey when shrinking; binarising shrunk ink at a lower level keeps it. A stroke already in MNIST's
    range is returned untouched, so a genuine MNIST digit passes through unchanged.
    """
    work, shrink_factor = resize_long_side_into(crop, STROKE_WORK_MIN_SIDE, STROKE_WORK_MAX_SIDE)
    binary = work >= (0.2 if shrink_factor >= 2 else 0.5)
    ratio = stroke_ratio(binary)
    if STROKE_RATIO_THIN <= ratio <= STROKE_RATIO_THICK or not binary.any():
        return crop, ratio
    long_side = max(work.shape)
    width = ratio * long_side
    if ratio < STROKE_RATIO_THIN:
        target = STROKE_RATIO_TARGET
        grow = (target * long_side - width) / (2 * (1 - target))  # the box grows by 2*grow too
        return thicken(work, binary, grow), ratio
    target = STROKE_RATIO_THICK_TARGET
    shrink = min((width - target * long_side) / (2 * (1 - target)), MAX_THINNING_FRACTION * width)
    return thin(work, binary, shrink), ratio


def resize_long_side_into(image: np.ndarray, low: int, high: int) -> tuple[np.ndarray, float]:
    """Resize (h, w) float so its long side lies in [low, high]: area-average down, interpolate up.

    Returns (resized, shrink factor: original / new long side, < 1 when enlarged).
    """
    long_side = max(image.shape)
    if low <= long_side <= high:
        return image, 1.0
    target = high if long_side > high else low
    scale = target / long_side
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interpolation), 1 / scale


def stroke_ratio(binary: np.ndarray) -> float:
    """Stroke width / longer side of the box, with width = 2 * area / perimeter (contours, holes included).

    For a stroke of length L and width w, area = wL and perimeter ~ 2L. Calibrated on MNIST with this same
    estimator, so its small biases (stroke ends, pixel staircases) cancel.
    """
    mask = binary.astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    perimeter = sum(cv2.arcLength(c, True) for c in contours)
    x, y, w, h = cv2.boundingRect(mask)
    if perimeter == 0 or max(w, h) == 0:
        return STROKE_RATIO_TARGET  # one pixel or nothing: leave it alone
    return float(2.0 * np.count_nonzero(mask) / perimeter / max(w, h))


def thicken(soft: np.ndarray, binary: np.ndarray, radius: float) -> np.ndarray:
    """Grow the strokes by `radius` pixels on each side, with a one-pixel anti-aliased edge. (h', w') float32."""
    pad = int(np.ceil(radius)) + 2
    soft = cv2.copyMakeBorder(soft, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    outside = cv2.copyMakeBorder((~binary).astype(np.uint8), pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=1)
    distance = cv2.distanceTransform(outside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)  # to the nearest stroke pixel
    grown = np.clip(radius + 1.0 - distance, 0, 1)  # neighbours are at distance 1
    return np.maximum(soft, grown)


def thin(soft: np.ndarray, binary: np.ndarray, radius: float) -> np.ndarray:
    """Erode the strokes by `radius` pixels on each side, with a one-pixel anti-aliased edge. (h, w) float32."""
    inside = cv2.copyMakeBorder(binary.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    distance = cv2.distanceTransform(inside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]  # to the paper
    return soft * np.clip(distance - radius, 0, 1)  # edge pixels are at distance 1


# ---------------------------------------------------------------------------------------------------------------
# 7. MNIST's box and centring


def fit_in_box(crop: np.ndarray) -> np.ndarray:
    """Crop to the ink and scale so the longer side is MNIST_BOX, keeping the aspect ratio. (<=20, <=20) float32.

    Shrinking averages areas, which is the anti-aliasing MNIST's own normalization produced. The result is
    stretched so its brightest pixel is 1.
    """
    x, y, w, h = cv2.boundingRect((crop > 0.02).astype(np.uint8))
    if w == 0 or h == 0:
        raise ImageRejected("no ink left after cleaning the picture; send a clearer picture of the digit")
    crop = np.ascontiguousarray(crop[y : y + h, x : x + w])
    scale = MNIST_BOX / max(w, h)
    size = (max(1, min(MNIST_BOX, round(w * scale))), max(1, min(MNIST_BOX, round(h * scale))))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    patch = np.clip(cv2.resize(crop, size, interpolation=interpolation), 0, 1)
    # Every MNIST digit's brightest pixel is 254 or 255; a thin or faint stroke averaged down must reach it too.
    return patch / max(float(patch.max()), 1e-6)


def centre_by_mass(patch: np.ndarray) -> np.ndarray:
    """Paste a (h, w) float patch into 28x28 so its centre of mass lands on pixel (14, 14). (28, 28) uint8.

    Whole-pixel shifts, as MNIST's own centres show (their fractional parts are uniform), so nothing is blurred.
    The shift is clamped so the box stays inside the frame rather than cutting off a lopsided digit's edge.
    """
    h, w = patch.shape
    mass = float(patch.sum())
    if mass <= 0:
        raise ImageRejected("no ink left after cleaning the picture; send a clearer picture of the digit")
    rows, cols = np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64)
    centre_y = float(patch.sum(axis=1) @ rows) / mass
    centre_x = float(patch.sum(axis=0) @ cols) / mass
    # Python's min/max on ints, not np.clip: the same numbers, without NumPy's per-call cost on scalars.
    top = min(max(round(MNIST_CENTRE - centre_y), 0), MNIST_SIDE - h)
    left = min(max(round(MNIST_CENTRE - centre_x), 0), MNIST_SIDE - w)
    out = np.zeros((MNIST_SIDE, MNIST_SIDE), np.float32)
    out[top : top + h, left : left + w] = patch
    return (out * 255.0 + 0.5).astype(np.uint8)
