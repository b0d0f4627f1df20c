"""MNIST-like pictures, many at once: exactly the image pipeline's answer, at a fraction of its cost.

Most pictures a batch client sends are already what MNIST looks like: a 28x28 grey PNG, light ink on a dark
background, the digit boxed and centred. For those, the full pipeline (shared/image_pipeline.py) spends most of its
time on stages that are identities (alpha, EXIF, shrinking, colour channels) and on many small NumPy calls per
picture. This module gives the same (28, 28) uint8 answer, bit for bit, for such pictures:

1. decode_small_png: a strict subset of PNG (8-bit grey, not interlaced, only IHDR, IDAT and IEND chunks, every
   CRC right, the zlib stream complete and exactly as long as the pixels need, known row filters). For bytes in
   that subset PNG decoding is fully specified, so libpng (cv2.imdecode, ~10 us) gives the pixels Pillow gives
   (~50 us). The byte and pixel limits are shared.decode's own checks. Anything else returns None.
2. fast_to_mnist: stages 2-4 of shared.normalize (paper, ink, strokes and crop) computed for the whole batch in
   array form, then stages 6-7 (stroke width, box and centre) with the very same functions, per picture.
   The batched robust fit of the paper sums in another order than the per-picture fit, so it can differ in the
   last bits; a picture is answered here only when no decision of that fit lies within 1e-6 of its threshold
   (inlier bands, rounding to grey levels), so the two fits decide alike. Ties for the largest stroke are left
   to the full pipeline too, and so are pictures where the choice of strokes by contrast or at the picture's
   edge (shared.normalize.digit_components) would keep other strokes than their sizes do.

Fewer than MIN_BATCH pictures (a single Predict's one) skip the batched arithmetic, which costs more than the
pipeline's own stages for one or two: they are decoded by decode_small_png and go through
shared.image_pipeline.to_mnist_array, which for a PNG is what to_mnist computes after decoding.

Every picture this module does not answer (None) goes through the full pipeline, which also gives every
rejection its message, so callers see exactly what to_mnist would have returned or raised.
tests/shared/test_fast_path.py checks the equality on MNIST digits and on pictures built to sit on the edges.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import struct
import zlib

import cv2
import numpy as np

from shared.decode import ImageRejected, Limits, check_byte_count, check_pixel_count
from shared.file_structure import png_chunks
from shared.image_pipeline import to_mnist_array
from shared.normalize import (
    BACKGROUND_FIT_ROUNDS,
    KEEP_AREA_FRACTION,
    KEEP_BIG_FRACTION,
    KEEP_CONTRAST_FRACTION,
    KEEP_NEAR_FRACTION,
    MIN_DIGIT_SIDE,
    MIN_INK_CONTRAST,
    MNIST_SIDE,
    NOISE_MULTIPLE,
    SOFT_FLOOR_MIN,
    centre_by_mass,
    edge_frame_depths,
    edge_line_pieces,
    fit_in_box,
    frame_components,
    normalize_stroke_width,
    quadratic_design,
    robust_tolerance,
    row_medians,
)

log = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAST_SIDE = MNIST_SIDE  # pictures of exactly this size are batched; others take the full pipeline
# How far a decision of the batched paper fit must be from its threshold for the per-picture fit to decide alike.
# The two fits differ by rounding (~1e-12 of grey levels of 0..255); this is a millionfold margin.
DECISION_MARGIN = 1e-6
MAX_CHUNKS = 64  # a small PNG's IHDR, IDATs and IEND; more is no file of the subset, and not walked to its end
# Fewer pictures than this take the full pipeline's own stages one by one: the batched arithmetic costs more than
# they do for one or two pictures (one: 0.42 against 0.35 ms a picture; two: 0.34 against 0.28; three: 0.24 against
# 0.32, on the 2-core Zen 5 machine), and a single Predict sends one.
MIN_BATCH = 3


# ---------------------------------------------------------------------------------------------------------------
# 1. Decoding


def decode_small_png(data: bytes, limits: Limits, side: int = FAST_SIDE) -> np.ndarray | None:
    """A (side, side) uint8 array if `data` is a PNG of the strict subset above, else None (never raises)."""
    try:
        check_byte_count(data, limits)
        check_pixel_count((side, side), limits)
    except ImageRejected:
        return None  # the full pipeline rejects it, with its message
    data = bytes(data)
    if not data.startswith(PNG_SIGNATURE):
        return None
    position, chunks, idat = len(PNG_SIGNATURE), [], []
    for kind, start, length in png_chunks(data):
        end = start + length + 4  # the CRC follows the body
        if end > len(data):
            return None
        body = data[start : start + length]
        (crc,) = struct.unpack_from(">I", data, start + length)
        if zlib.crc32(kind + body) != crc:
            return None
        chunks.append(kind)
        # Outside the subset at once: the full pipeline (shared.file_structure first) deals with odd files.
        if kind not in (b"IHDR", b"IDAT", b"IEND") or len(chunks) > MAX_CHUNKS or chunks[0] != b"IHDR":
            return None
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat.append(body)
        position = end
        if kind == b"IEND":
            break
    if position != len(data) or len(chunks) < 3 or chunks[0] != b"IHDR" or chunks[-1] != b"IEND":
        return None
    if any(kind != b"IDAT" for kind in chunks[1:-1]) or len(header) != 13:
        return None
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", header)
    if (width, height, depth, colour, compression, filtering, interlace) != (side, side, 8, 0, 0, 0, 0):
        return None
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(b"".join(idat), side * (side + 1) + 1)
    except zlib.error:
        return None
    if len(raw) != side * (side + 1) or not inflater.eof or inflater.unused_data or inflater.unconsumed_tail:
        return None
    if max(raw[:: side + 1]) > 4:  # each row starts with its filter type, 0..4
        return None
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None
    if image is None or image.shape != (side, side) or image.dtype != np.uint8:
        return None
    return image


# ---------------------------------------------------------------------------------------------------------------
# 2-4. Paper, ink and strokes for a batch (B, 28, 28)


def batched_background(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """shared.normalize.estimate_background for grey (B, S, S) uint8 pictures with S <= 48 (every pixel sampled).

    Returns (background (B, S, S) uint8, decided (B,) bool); a picture framed along its edge is never decided
    (shared.normalize.edge_frame_depths). The fit starts from the border's median, which both
    computations hold exactly, as they do an all-zero fit (every inlier 0: a zero right-hand side). Otherwise the
    fits differ in the last bits, and `decided` is False where an inlier band or the rounding to grey levels lay
    within DECISION_MARGIN of a fitted value, so the per-picture fit might have decided otherwise.
    """
    count, height, width = images.shape
    values = images.reshape(count, -1).astype(np.float64)  # (B, n): the grid is the picture itself
    border = np.concatenate([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], axis=1)
    fitted = np.repeat(row_medians(border)[:, None], values.shape[1], axis=1)  # (B, n)
    design = quadratic_design(height, width)  # (n, 6)
    exact = np.ones(count, bool)  # fitted is bit for bit what the per-picture fit holds
    decided = np.ones(count, bool)
    active = np.full(count, values.shape[1] >= 4 * design.shape[1])  # pictures whose fit still changes
    previous = None  # last round's inliers, a row per picture still active
    for _ in range(BACKGROUND_FIT_ROUNDS):
        rows = active.copy()  # the pictures this round computes
        residual = np.abs(values[rows] - fitted[rows])  # (b, n)
        tolerance = robust_tolerance(residual)  # (b,)
        inliers = residual <= tolerance[:, None]
        clear = np.abs(residual - tolerance[:, None]).min(axis=1) > DECISION_MARGIN
        decided[rows] &= exact[rows] | clear
        # (Counts of set pixels are a bool array's sum(axis=1) here: np.count_nonzero with an axis checks dtypes in
        # Python first, which cost more than the count itself on one picture, as single Predict calls send.)
        still = inliers.sum(axis=1) >= 2 * design.shape[1]  # else the per-picture loop breaks
        if previous is not None:
            # The same inliers as last round give the same fit, bit for bit, in both computations, and so the
            # same inliers in every round after: the fit has converged.
            still &= np.any(inliers != previous, axis=1)
        active[rows] = still
        if not active.any():
            break
        inliers = previous = inliers[still]
        weights = inliers.astype(np.float64)  # (b, n)
        k = design.shape[1]
        # design.T @ diag(weights) @ design for every picture at once, as one (b, n) @ (n, k*k) product.
        normal = (weights @ design_outer(height, width)).reshape(-1, k, k) + 1e-6 * np.eye(k)  # (b, k, k)
        inlier_values = values[active] * weights  # (b, n)
        right = (inlier_values @ design)[:, :, None]  # (b, k, 1)
        fitted[active] = np.linalg.solve(normal, right)[:, :, 0] @ design.T  # (b, n)
        exact[active] = ~inlier_values.any(axis=1)  # every inlier 0: both fits are exactly 0
    shifted = fitted + 0.5  # rounding to grey levels: astype truncates after adding a half
    fraction = shifted - np.floor(shifted)
    decided &= exact | (np.minimum(fraction, 1 - fraction).min(axis=1) > DECISION_MARGIN)
    # A frame drawn along the edge: the per-picture fit starts inside it and leaves it out. Rare in a batch, so
    # such pictures take the full pipeline rather than a second form of that fit here.
    decided &= edge_frame_depths(images[:, :, :, None]) == 0
    background = np.clip(shifted, 0, 255).astype(np.uint8).reshape(images.shape)
    return background, decided


@functools.lru_cache(maxsize=4)
def design_outer(height: int, width: int) -> np.ndarray:
    """(n, k*k): each grid point's outer product of its quadratic_design row with itself. Read-only, cached."""
    design = quadratic_design(height, width)
    outer = (design[:, :, None] * design[:, None, :]).reshape(len(design), -1)
    outer.flags.writeable = False
    return outer


def uint8_percentiles(images: np.ndarray, q: float, mask: np.ndarray | None = None) -> np.ndarray:
    """shared.normalize.percentile_uint8 of each picture (B, H, W) (of its pixels under `mask`): (B,) float."""
    count = images.shape[0]
    offsets = images.astype(np.int64) + 256 * np.arange(count)[:, None, None]
    weights = None if mask is None else mask.reshape(-1).astype(np.float64)
    histogram = np.bincount(offsets.reshape(-1), weights=weights, minlength=256 * count).reshape(count, 256)
    counts = np.cumsum(histogram, axis=1)  # (B, 256)
    # np.searchsorted(counts, v) (side 'left') is the number of entries below v, the counts being sorted.
    return (counts < (q / 100 * counts[:, -1])[:, None]).sum(axis=1).astype(np.float64)


def max_3x3(masks: np.ndarray) -> np.ndarray:
    """cv2.dilate of each (B, H, W) bool mask with a 3x3 square (pixels beyond the border count as unset)."""
    count, height, width = masks.shape
    padded = np.zeros((count, height + 2, width + 2), bool)  # not np.pad: its generic path took 40 us per call
    padded[:, 1:-1, 1:-1] = masks
    rows = padded[:, :, :-2] | padded[:, :, 1:-1] | padded[:, :, 2:]
    return rows[:, :-2] | rows[:, 1:-1] | rows[:, 2:]


def batched_crops(ink: np.ndarray) -> list[np.ndarray | None]:
    """shared.normalize.find_ink(...).soft for each ink map of (B, H, W) uint8; None where it would reject, or where
    the largest stroke is tied (the per-picture labels decide ties by their order)."""
    count, height, width = ink.shape
    noise = uint8_percentiles(ink, 30)  # (B,): the pictures are far below noise_level's sub-sampling size
    otsu = np.array([cv2.threshold(picture, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)[0] for picture in ink])
    threshold = np.maximum(np.maximum(otsu, float(MIN_INK_CONTRAST)), NOISE_MULTIPLE * noise)  # (B,)
    strong = ink >= threshold[:, None, None]  # (B, H, W)
    # All pictures in one labelling: stacked, with an empty row under each so strokes cannot join across.
    canvas = np.zeros((count, height + 1, width), np.uint8)
    canvas[:, :height] = strong
    _, labels, stats, _ = cv2.connectedComponentsWithStats(canvas.reshape(-1, width), connectivity=8, ltype=cv2.CV_32S)
    labels = labels.reshape(count, height + 1, width)[:, :height]  # (B, H, W): 0 is the background
    stats = stats[1:].astype(np.int64)  # (components, 5): x, y, w, h, area
    owner = stats[:, 1] // (height + 1)  # the picture each component lies in
    stats[:, 1] -= owner * (height + 1)  # y within its picture
    crops: list[np.ndarray | None] = [None] * count
    if len(stats) == 0:
        return crops
    x, y, w, h, area = (stats[:, i] for i in range(5))
    largest = np.zeros(count, np.int64)
    np.maximum.at(largest, owner, area)
    is_largest = area == largest[owner]
    ties = np.bincount(owner[is_largest], minlength=count)  # (B,) components of the largest size
    main = np.full(count, -1)
    main[owner[is_largest]] = np.flatnonzero(is_largest)  # one index per picture (the only one unless tied)
    m = main[owner]  # (components,) the main stroke of each component's picture
    mx, my, mw, mh = x[m], y[m], w[m], h[m]
    # shared.normalize.digit_components, for all pictures' components at once.
    gap_x = np.maximum(0, np.maximum(mx - (x + w), x - (mx + mw)))
    gap_y = np.maximum(0, np.maximum(my - (y + h), y - (my + mh)))
    near = np.hypot(gap_x, gap_y) <= KEEP_NEAR_FRACTION * np.maximum(mw, mh)
    big = area >= KEEP_BIG_FRACTION * largest[owner]
    candidate = area >= KEEP_AREA_FRACTION * largest[owner]
    keep = candidate & (big | near)
    # digit_components' two rules that sizes alone do not decide, left to the full pipeline where they would change
    # anything: a thin line cut off by the picture's edge is no part of the digit, and with each candidate's mean
    # contrast (component_contrast) the main stroke is the one with the most ink and far fainter marks go. The
    # means are exact here as there (sums of whole grey levels, divided once), so the comparisons decide alike.
    edge_lines = edge_line_pieces(stats, (height, width))
    sums = np.bincount(labels.reshape(-1), weights=ink.reshape(-1), minlength=len(stats) + 1)[1:]
    contrast = np.where(candidate, sums / np.maximum(area, 1), 0.0)  # (components,)
    mass = area * contrast
    heaviest = np.zeros(count)
    np.maximum.at(heaviest, owner, mass)
    heaviest_count = np.bincount(owner[mass == heaviest[owner]], minlength=count)
    faint = keep & (contrast < KEEP_CONTRAST_FRACTION * contrast[m])
    other_rules = (
        (np.bincount(owner, weights=edge_lines | faint, minlength=count) > 0)
        | (heaviest_count != 1)
        | (mass[np.maximum(main, 0)] != heaviest)
        | framed(labels, stats, owner, count)
    )
    kept_label = np.zeros(len(stats) + 1, bool)
    kept_label[1:] = keep
    strokes = kept_label[labels]  # (B, H, W) bool
    fringe = max_3x3(strokes)
    # The soft ink map, as find_ink computes it on its window (the same arithmetic, pixel by pixel, in float32).
    low = np.maximum(SOFT_FLOOR_MIN, np.minimum(3.0 * noise, threshold / 2))  # (B,)
    high = np.maximum(uint8_percentiles(ink, 75, strokes), threshold + 1.0)  # (B,)
    soft = (
        np.clip(
            (ink.astype(np.float32) - low.astype(np.float32)[:, None, None])
            / (high - low).astype(np.float32)[:, None, None],
            0,
            1,
        )
        * fringe
    )
    # union_box of the kept strokes (the bounding box of their pixels), grown by one pixel for the soft fringe.
    rows, cols = strokes.any(axis=2), strokes.any(axis=1)  # (B, H), (B, W)
    y0, y1 = rows.argmax(axis=1), height - rows[:, ::-1].argmax(axis=1)
    x0, x1 = cols.argmax(axis=1), width - cols[:, ::-1].argmax(axis=1)
    # Decided here: one largest stroke, and a digit rather than specks (else the full pipeline rejects it).
    answered = (ties == 1) & (largest > 0) & (np.maximum(x1 - x0, y1 - y0) >= MIN_DIGIT_SIDE) & ~other_rules
    y0, x0 = np.maximum(y0 - 1, 0), np.maximum(x0 - 1, 0)
    y1, x1 = np.minimum(y1 + 1, height), np.minimum(x1 + 1, width)
    for index in np.flatnonzero(answered):
        crops[index] = np.ascontiguousarray(soft[index, y0[index] : y1[index], x0[index] : x1[index]])
    return crops


def framed(labels: np.ndarray, stats: np.ndarray, owner: np.ndarray, count: int) -> np.ndarray:
    """(B,) bool: pictures with a box or ring drawn around the digit (shared.normalize.frame_components), which the
    full pipeline leaves out. Only pictures with several strokes are looked at, one by one."""
    height, width = labels.shape[1:]
    out = np.zeros(count, bool)
    several = np.bincount(owner, minlength=count) >= 2
    for b in np.flatnonzero(several):
        mine = np.flatnonzero(owner == b)  # its components; label = index + 1 in the batch's labelling
        local = np.zeros(len(stats) + 1, np.int32)
        local[mine + 1] = np.arange(1, len(mine) + 1)
        background = np.array([[0, 0, width, height, 0]], np.int64)
        out[b] = frame_components(local[labels[b]], np.vstack([background, stats[mine]])).any()
    return out


def fast_to_mnist(images: np.ndarray) -> list[np.ndarray | None]:
    """(B, 28, 28) uint8 grey pictures -> per picture the (28, 28) uint8 that to_mnist_array gives, or None where
    this path does not decide (see the module docstring); the caller runs the full pipeline on those."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    if images.ndim != 3 or images.shape[1:] != (FAST_SIDE, FAST_SIDE) or len(images) == 0:
        return [None] * (len(images) if images.ndim == 3 else 0)
    background, decided = batched_background(images)
    ink = cv2.absdiff(images.reshape(-1, FAST_SIDE), background.reshape(-1, FAST_SIDE)).reshape(images.shape)
    outputs: list[np.ndarray | None] = []
    for crop, ok in zip(batched_crops(ink), decided):
        if crop is None or not ok:
            outputs.append(None)
            continue
        try:
            stroke, _ = normalize_stroke_width(crop)
            outputs.append(centre_by_mass(fit_in_box(stroke)))
        except ImageRejected:
            outputs.append(None)  # rejected: the full pipeline says why
    return outputs


def to_mnist_fast(items, limits: Limits) -> list[np.ndarray | None]:
    """For each encoded image, what to_mnist(image, limits=limits) returns, or None where the full pipeline must
    run (not a picture of the strict subset, undecided, or to be rejected with the pipeline's own message)."""
    decoded = [decode_small_png(data, limits) for data in items]
    chosen = [index for index, image in enumerate(decoded) if image is not None]
    results: list[np.ndarray | None] = [None] * len(decoded)
    if 0 < len(chosen) < MIN_BATCH:
        # Too few to batch: the full pipeline's stages on the decoded picture, which for a PNG is to_mnist itself
        # (shared.image_pipeline.decodes_at_half_size), without decoding it again.
        for index in chosen:
            image = decoded[index]
            assert image is not None  # chosen
            with contextlib.suppress(ImageRejected):  # the caller's to_mnist says why
                results[index] = to_mnist_array(image)
    elif chosen:
        try:
            digits = fast_to_mnist(np.stack([image for image in decoded if image is not None]))
        except Exception:  # a bug here must not fail the call: the full pipeline answers every picture instead
            log.exception("fast path failed on %d picture(s); the full pipeline answers them", len(chosen))
            return results
        for index, digit in zip(chosen, digits):
            results[index] = digit
    return results
