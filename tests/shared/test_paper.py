"""shared/normalize.py on the paper people write on: ruled and squared lines, a margin, shadows.

Each picture is made twice, with and without the difficulty, from the same MNIST test digit drawn the same way:
the 28x28 digit the pipeline finds must be (nearly) the same, so the difficulty was removed and the digit kept.
The accuracy targets per kind are checked through gRPC with a trained model (tests/inference/test_user_drawings.py).
"""

from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from shared import normalize
from shared.decode import decode_image
from shared.image_pipeline import ImageRejected, to_mnist, trace_pipeline

from testkit.memory import REPO_ROOT
from testkit.user_images import cast_shadow, draw_digit, draw_lines, encode, place, sheet


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two 28x28 images, the best over shifts of up to one pixel."""
    b = b.astype(np.float64).ravel()
    return max(
        float(np.corrcoef(np.roll(a, (dy, dx), axis=(0, 1)).astype(np.float64).ravel(), b)[0, 1])
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    )


@pytest.fixture(scope="module")
def digits(mnist) -> dict[int, np.ndarray]:
    """The first MNIST test digit of each class."""
    labels = mnist.test_labels.numpy()
    return {d: mnist.test_images[int(np.flatnonzero(labels == d)[0])].numpy() for d in range(10)}


def written(digit: np.ndarray, size=(640, 480), height: int = 220) -> np.ndarray:
    """Coverage (H, W) float32 of a ballpoint digit in the middle of a photo-sized page."""
    rng = np.random.default_rng(0)
    return place(size[::-1], draw_digit(digit, height, 0.06 * height), rng, margin=0.2, centre_bias=1.0)


def on(paper: np.ndarray, coverage: np.ndarray, ink=(25, 25, 35)) -> np.ndarray:
    return paper + coverage[:, :, None] * (np.asarray(ink, np.float32) - paper)


def blank(coverage: np.ndarray) -> np.ndarray:
    return sheet(*coverage.shape, np.random.default_rng(1))[0]


@pytest.mark.parametrize("digit_class", [1, 4, 5, 7, 8])
def test_ruled_lines_and_a_margin_are_removed_and_the_digit_crossing_them_kept_whole(digits, digit_class):
    coverage = written(digits[digit_class])
    plain = to_mnist(encode(on(blank(coverage), coverage), "PNG"))
    ruled = blank(coverage)
    rng = np.random.default_rng(2)
    draw_lines(ruled, rng, spacing=70, colour=(90, 130, 215), width=2.5, vertical=False, offset=15)
    draw_lines(ruled, rng, spacing=10_000, colour=(215, 80, 85), width=2.5, vertical=True, offset=90)
    out = to_mnist(encode(on(ruled, coverage), "PNG"))
    assert similarity(out, plain) > 0.9


def test_squared_paper_in_grey_is_removed_too(digits):
    """A neutral grid: no colour to tell it from the ink, only its shape and its fainter contrast."""
    coverage = written(digits[3])
    plain = to_mnist(encode(on(blank(coverage), coverage), "PNG"))
    squared = blank(coverage)
    rng = np.random.default_rng(3)
    for vertical in (False, True):
        draw_lines(squared, rng, spacing=45, colour=(105, 105, 105), width=2.0, vertical=vertical)
    # Where the stroke runs along a grid line for a while, its edge there is the line's: a little is lost.
    assert similarity(to_mnist(encode(on(squared, coverage), "PNG")), plain) > 0.85


def test_a_long_straight_1_alone_is_the_digit_not_a_ruling(digits):
    coverage = np.zeros((300, 120), np.float32)
    coverage[10:290, 55:63] = 1.0  # a 1 that spans the whole picture, perfectly straight
    out = to_mnist(encode(on(blank(coverage), coverage), "PNG"))
    assert out[4:24, 12:16].mean() > 100  # a vertical bar in the middle, as MNIST draws a 1
    assert out[:, :8].max() == 0 and out[:, 20:].max() == 0


@pytest.mark.parametrize("x", [150, 200, 203, 251])
@pytest.mark.parametrize("thickness", [1, 2, 3])
def test_a_straight_1_anywhere_in_the_picture_is_one_line_not_a_family_of_rulings(x, thickness):
    """A vertical line comes back from Hough near 0 (rho = x) and near pi (rho = -x); counted in fixed bins of
    distance, a 1 at x = 203 was three "lines", a family of ruled paper, and the picture was refused as only paper
    (a 4's straight stem was taken out as paper too)."""
    strong = np.zeros((400, 400), np.uint8)
    strong[66:333, x : x + thickness] = 1
    ruling, family = normalize.find_ruling(strong)
    assert not family and not ruling.any()
    picture = np.full((400, 400, 3), 255.0, np.float32)
    picture[66:333, x : x + thickness] = 0.0
    out = to_mnist(encode(picture, "PNG"))
    assert (out[5:23, 11:17].max(axis=1) > 128).all() and out[:, :8].max() == 0  # a bar in the middle: a 1


@pytest.mark.parametrize("side", [200, 400])
def test_a_thin_1_drawn_up_to_the_edge_is_the_digit_not_a_speck_beside_it(side):
    """A line the picture's edge cuts off is the rest of a ruling or the sheet's edge when a digit is there too; a
    speck is no digit, so a 1 drawn from the top edge stays the digit (the speck became it, as a blob)."""
    coverage = np.zeros((side, side), np.float32)
    coverage[: side * 3 // 4, side // 2 : side // 2 + 2] = 1.0  # a hairline 1 from the top edge down
    alone = to_mnist(encode(on(blank(coverage), coverage), "PNG"))
    r = side // 70
    coverage[side * 19 // 20 - r : side * 19 // 20 + r, side // 20 - r : side // 20 + r] = 1.0  # a speck, far off
    assert np.array_equal(to_mnist(encode(on(blank(coverage), coverage), "PNG")), alone)
    assert alone[4:24, 12:16].mean() > 100  # a vertical bar in the middle, as MNIST draws a 1


def test_ruled_paper_with_nothing_written_is_refused_with_advice():
    paper = sheet(480, 640, np.random.default_rng(4))[0]
    draw_lines(paper, np.random.default_rng(5), spacing=60, colour=(70, 110, 210), width=2.5, vertical=False)
    with pytest.raises(ImageRejected, match=r"only the lines of ruled or squared paper.*darker than the lines"):
        to_mnist(encode(paper, "PNG"))


@pytest.mark.parametrize("edge", [3.0, 150.0])  # a hard shadow, and a diffuse one
def test_a_shadow_across_the_page_is_not_ink(digits, edge):
    coverage = written(digits[2])
    plain = to_mnist(encode(on(blank(coverage), coverage), "PNG"))
    shade = cast_shadow(*coverage.shape, np.random.default_rng(6), depth=0.5, edge=edge)
    shadowed = on(blank(coverage), coverage) * shade[:, :, None]
    out = to_mnist(encode(shadowed, "PNG"))
    assert similarity(out, plain) > 0.9


def test_a_hard_shadow_switches_to_the_local_paper_and_a_canvas_does_not(digits):
    coverage = written(digits[2])
    shade = cast_shadow(*coverage.shape, np.random.default_rng(6), depth=0.5, edge=3.0)
    shadowed = decode_image(encode(on(blank(coverage), coverage) * shade[:, :, None], "PNG"))
    assert normalize.estimate_background(shadowed).sign is not None
    # A paint program's thick brush on white: the strokes are wider than the local estimate can fill, and the
    # smooth paper is exact, so it must stay in use (the thick strokes must not be hollowed out).
    brush = place((600, 800), draw_digit(digits[8], 450, 0.25 * 450), np.random.default_rng(7))
    canvas = decode_image(encode(on(np.full((600, 800, 3), 255, np.float32), brush, ink=(0, 0, 0)), "PNG"))
    assert normalize.estimate_background(canvas).sign is None


def test_ink_sign_sees_dark_ink_even_where_the_shadow_is_the_larger_part(digits):
    coverage = written(digits[0])
    shade = cast_shadow(*coverage.shape, np.random.default_rng(8), depth=0.6, edge=2.0)
    picture = decode_image(encode(on(blank(coverage), coverage) * shade[:, :, None], "PNG"))
    assert list(normalize.ink_sign(picture, normalize.quadratic_background(picture))) == [-1, -1, -1]
    dark_mode = decode_image(
        encode(on(np.full((*coverage.shape, 3), 30, np.float32), coverage, (240, 240, 240)), "PNG")
    )
    assert list(normalize.ink_sign(dark_mode, normalize.quadratic_background(dark_mode))) == [1, 1, 1]


def test_a_faint_shading_in_a_corner_is_not_part_of_the_digit(digits):
    """What a smooth paper estimate can leave behind: a faint blob at the edge, larger than the digit's strokes
    but far paler. The digit is the component with the most ink, and marks far fainter than it are dropped."""
    coverage = written(digits[6])
    picture = on(blank(coverage), coverage)
    picture[380:, 480:] *= 0.55  # a pale patch in the corner
    trace = trace_pipeline(decode_image(encode(picture, "PNG")))
    x, y, w, h = trace.picture_window()
    assert x + w < 480 or y + h < 380, trace.picture_window()


@pytest.mark.parametrize("digit_class", [1, 5, 7])
def test_a_dark_mark_cut_off_by_the_photos_edge_away_from_the_digit_is_not_part_of_it(digits, digit_class):
    """What a hard shadow's edge can leave where it leaves the frame: a mark as dark as ink and as big as a stroke,
    in a corner. A digit is written inside the frame, so a mark the edge cuts off, away from the digit, is not
    part of it (before: kept, and the 28x28 digit was a small digit beside a corner speck)."""
    coverage = written(digits[digit_class], height=150)
    picture = on(blank(coverage), coverage)
    plain = to_mnist(encode(picture, "PNG"))
    corner = picture.copy()
    yy, xx = np.mgrid[:480, :640]
    corner[(xx + yy < 40)] = (25, 25, 35)  # a dark triangle in the top-left corner, 40 px along each side
    trace = trace_pipeline(decode_image(encode(corner, "PNG")))
    x, y, _, _ = trace.picture_window()
    assert x > 40 and y > 40, trace.picture_window()
    assert similarity(trace.output, plain) > 0.95


@pytest.mark.parametrize("n", [1, 2, 7, 40, 2304])
def test_the_robust_fits_shortcuts_give_numpys_own_median_and_percentile_bit_for_bit(n):
    """quadratic_background and shared.fast_path take the border's median and the inlier band without np.median
    and np.percentile's generic machinery (a sixth of the pipeline's time on a small picture); the values must be
    exactly NumPy's, or the fast path and the full pipeline could part ways."""
    rng = np.random.default_rng(n)
    rows = rng.integers(0, 256, (50, n), dtype=np.uint8)
    assert np.array_equal(normalize.row_medians(rows), np.median(rows.astype(np.float64), axis=1))
    floor = normalize.BACKGROUND_MIN_TOLERANCE
    # Residuals mostly at the paper (the shortcut: the floor, no percentile), some rows with more ink than paper.
    residual = np.where(rng.random((50, n)) < rng.uniform(0.2, 0.9, (50, 1)), rng.uniform(0, floor / 3, (50, n)), 0.0)
    residual += np.where(residual == 0, rng.uniform(0, 255, (50, n)), 0.0)
    residual[0] = floor / 3  # exactly at the shortcut's bound
    expected = np.maximum(floor, 3.0 * np.percentile(residual, 40, axis=1))
    assert np.array_equal(normalize.robust_tolerance(residual), expected)
    assert np.array_equal(normalize.robust_tolerance(residual[3:4]), expected[3:4])  # one picture, as the full pipeline


def plain_quadratic_background(image: np.ndarray) -> np.ndarray:
    """The paper's robust fit as it reads in its docstring, with nothing skipped: NumPy's median and percentile,
    every round fitted. The reference quadratic_background's shortcuts must equal."""
    grid = normalize.sample_grid(image, normalize.BACKGROUND_GRID_SIDE).astype(np.float64)
    grid = grid if grid.ndim == 3 else grid[:, :, None]
    h, w, channels = grid.shape
    values = grid.reshape(-1, channels)
    border = np.concatenate([grid[0], grid[-1], grid[:, 0], grid[:, -1]])
    fitted = np.broadcast_to(np.median(border, axis=0), values.shape)
    design = normalize.quadratic_design(h, w)
    for _ in range(normalize.BACKGROUND_FIT_ROUNDS if len(values) >= 4 * design.shape[1] else 0):
        residual = np.abs(values - fitted).max(axis=1)
        tolerance = max(normalize.BACKGROUND_MIN_TOLERANCE, 3.0 * float(np.percentile(residual, 40)))
        inliers = residual <= tolerance
        if np.count_nonzero(inliers) < 2 * design.shape[1]:
            break
        fitted = normalize.fit_least_squares(design[inliers], values[inliers], design)
    surface = np.clip(fitted.reshape(h, w, channels) + 0.5, 0, 255).astype(np.uint8)
    return normalize.cv2.resize(surface, (image.shape[1], image.shape[0])).reshape(image.shape)


def test_the_paper_fit_with_its_shortcuts_is_the_plain_three_round_fit_bit_for_bit(digits):
    """Shortcuts (the median by sorting, the inlier band at its floor without a percentile, no refit once the
    inliers repeat) that change no bit: on flat, lit, vignetted and shadowed paper, grey and colour, dark and
    light ink, large and small."""
    rng = np.random.default_rng(0)
    pictures = []
    for i, digit in enumerate(list(digits.values()) * 2):
        side = int(rng.integers(28, 400))
        ys, xs = np.mgrid[0:side, 0:side] / side
        paper = 230 - 60 * rng.random() * xs - 40 * rng.random() * (ys - 0.5) ** 2 + rng.normal(0, 3, (side, side))
        if i % 3 == 2:
            paper[:, : side // 3] -= 70  # a shadow's edge
        ink = normalize.cv2.resize(digit, (side, side)).astype(np.float64) / 255
        grey = np.clip(paper * (1 - ink) + 20 * ink, 0, 255).astype(np.uint8)
        pictures.append(grey if i % 4 else 255 - grey)  # light ink on dark paper too
        if i % 2:
            pictures.append(np.dstack([grey, np.clip(grey.astype(int) + 15, 0, 255).astype(np.uint8), grey]))
    for picture in pictures:
        assert np.array_equal(normalize.quadratic_background(picture), plain_quadratic_background(picture))


def plain_frame_depth(picture: np.ndarray) -> int:
    """A frame drawn along the picture's edge as normalize.frame_depths' docstring reads, ring by ring, with nothing
    skipped: the reference its shortcuts must equal."""
    grid = normalize.paper_samples(picture).astype(np.float64)
    h, w, _ = grid.shape
    ys, xs = np.mgrid[0:h, 0:w]
    ring = np.minimum(np.minimum(ys, h - 1 - ys), np.minimum(xs, w - 1 - xs))
    border = np.concatenate([grid[0], grid[-1], grid[:, 0], grid[:, -1]])
    far = np.abs(grid - np.median(border, axis=0)).max(axis=2) > normalize.MIN_INK_CONTRAST
    deepest = int(min(h, w) * normalize.EDGE_FRAME_MAX_DEPTH)
    if deepest < 1 or not far.any():
        return 0
    first = int(ring[far].min())

    def mostly_far(r: int) -> bool:
        size = np.float32(np.count_nonzero(ring == r))
        return np.count_nonzero(far[ring == r]) >= np.float32(normalize.EDGE_FRAME_INNER_EDGE) * size

    middle = 2 * np.count_nonzero(far[ring >= 2 * deepest]) > (ring >= 2 * deepest).sum()
    return first if 1 <= first <= deepest and (mostly_far(first) or mostly_far(first + 1)) and middle else 0


def framed_pictures(digits: dict[int, np.ndarray]) -> list[np.ndarray]:
    """Pictures with and without a frame along the edge, and ones on the verge of one: its inner edge a few samples
    short of EDGE_FRAME_INNER_EDGE or just over it, a mark reaching the frame's rings, grey and colour, JPEG."""
    rng = np.random.default_rng(0)
    pictures = []
    for i, digit in enumerate(list(digits.values()) * 3):
        side = int(rng.choice([28, 40, 64, 100, 200]))
        paper, ink = (255, 0) if i % 2 else (0, 255)
        picture = np.full((side, side), paper, np.uint8)
        inner = side * 3 // 5
        top = (side - inner) // 2
        picture[top : top + inner, top : top + inner] = np.where(cv2.resize(digit, (inner, inner)) > 128, ink, paper)
        pictures.append(picture)
        width = max(1, round(side * rng.choice([0.03, 0.05, 0.1, 0.125, 0.15])))
        framed = picture.copy()
        framed[:width] = framed[-width:] = framed[:, :width] = framed[:, -width:] = ink
        pictures.append(framed)
        verge = framed.copy()  # frame-coloured bits on the frame's inner edge, about a tenth of it
        ring_side = side - 2 * width
        spots = rng.choice(4 * ring_side - 4, int(rng.integers(2, ring_side // 2 + 3)), replace=False)
        for spot in spots:
            side_of, along = divmod(int(spot), ring_side - 1)
            y, x = [(width, width + along), (width + along, side - 1 - width)][side_of % 2]
            verge[y if side_of < 2 else side - 1 - y, x if side_of < 2 else side - 1 - x] = ink
        pictures.append(verge)
        reaching = framed.copy()  # a mark from the middle into the frame
        reaching[side // 2 - 2 : side // 2 + 2, : side // 2] = paper
        pictures.append(reaching)
        pictures.append(np.dstack([framed, picture, framed]))
        pictures.append(cv2.imdecode(cv2.imencode(".jpg", framed)[1], cv2.IMREAD_UNCHANGED))
    # On the verge, ring by ring (every pixel a sample): a frame whose inner edge begins with one sample on ring
    # `first` and is drawn on the next ring, one sample short of EDGE_FRAME_INNER_EDGE of it or just enough, the
    # rings after it of the frame's colour to the middle, which is all paper.
    for side in (28, 40):
        ys, xs = np.mgrid[0:side, 0:side]
        ring = np.minimum(np.minimum(ys, side - 1 - ys), np.minimum(xs, side - 1 - xs))
        deepest = int(side * normalize.EDGE_FRAME_MAX_DEPTH)
        for first in (1, deepest):
            inner_edge = np.argwhere(ring == first + 1)
            needed = int(np.ceil(normalize.EDGE_FRAME_INNER_EDGE * len(inner_edge)))
            for drawn in (needed - 1, needed):
                picture = np.where(ring >= 2 * deepest, 255, 0).astype(np.uint8)
                picture[tuple(np.argwhere(ring == first)[0])] = 255
                picture[tuple(inner_edge[:drawn].T)] = 255
                pictures.append(picture)
    return pictures


def test_the_frame_search_with_its_shortcuts_is_the_plain_ring_by_ring_search(digits, mnist):
    """frame_depths rejects most pictures on the rings near the edge before it counts far samples ring by ring, and
    the paper fit finds the frame on its own first round: neither may answer otherwise than the plain search."""
    pictures = framed_pictures(digits)
    mnist_digits = mnist.test_images[:300].numpy()
    pictures += list(mnist_digits) + list(255 - mnist_digits)
    found = 0
    for picture in pictures:
        expected = plain_frame_depth(picture)
        assert normalize.edge_frame_depth(picture) == expected
        assert normalize.paper_fit(picture)[1] == expected
        found += expected > 0
    assert found > 40  # frames there are, and pictures on the verge of one


def test_the_frame_search_is_done_with_mnist_digits_on_the_rings_near_the_edge(mnist, monkeypatch):
    """Every Predict looks for a frame (20 us of a 28x28 picture's 0.7 ms, before this shortcut). MNIST's digits,
    on a border of one colour with ink in the middle 20x20 that reaches rings 1 to 3 in three digits of four, have
    too little there for the inner edge of a frame: not one needs the search ring by ring."""
    searched = []
    ring_by_ring = normalize.ring_frame_depths

    def counted(far: np.ndarray, deepest: int) -> np.ndarray:
        searched.append(len(far))
        return ring_by_ring(far, deepest)

    monkeypatch.setattr(normalize, "ring_frame_depths", counted)
    images = mnist.test_images.numpy()
    for pictures in (images, 255 - images):
        assert not normalize.edge_frame_depths(pictures[:, :, :, None]).any()
    assert sum(searched) == 0


NOISE_SCRIPT = """
import io, numpy as np
from PIL import Image
from shared.decode import ImageRejected
from shared.image_pipeline import to_mnist
from testkit.memory import reset_peak, status_kib
dots = np.where(np.random.default_rng(0).random((1024, 1024)) < 0.3, 0, 255).astype(np.uint8)
buffer = io.BytesIO()
Image.fromarray(dots).save(buffer, "PNG")
reset_peak("self")
base = status_kib("self", "VmRSS")
try:
    to_mnist(buffer.getvalue())
except ImageRejected:
    pass
print(status_kib("self", "VmHWM") - base)
"""


def test_a_page_of_random_dots_is_searched_for_ruled_lines_in_bounded_memory():
    """Hough finds thousands of candidate lines in random dots (ruled paper gives a few dozen): a full-frame band
    for each held 2.4 GB for a 215 KB PNG, outside any decode budget."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}  # freed blocks go back, so the peak is the working set
    result = subprocess.run(
        [sys.executable, "-c", NOISE_SCRIPT], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    peak_mib = int(result.stdout.split()[-1]) / 1024
    assert peak_mib < 200, f"{peak_mib:.0f} MiB"


# ---------------------------------------------------------------------------------------------------------------
# The lines under a whole number (ReadNumber takes them out with the same step, normalize.without_ruling): writing
# runs along them, they fade, they wear into dashes. Each picture: blue rules 60 pixels apart on a 640x480 page, and
# rings of a pen for digits (smaller than one digit sent alone: as for ReadNumber, no least size is asked).


def strokes(picture: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A (H, W, 3) uint8 photo -> (ink contrast, weakest channel's contrast, the ink mask), as find_ink sees it."""
    paper = normalize.estimate_background(picture)
    ink, weakest = normalize.strongest_and_weakest(normalize.channel_contrast(picture, paper))
    strong = (ink >= normalize.ink_threshold(ink, normalize.noise_level(ink))).astype(np.uint8)
    return ink, weakest, strong


def left_after_ruling(picture: np.ndarray) -> np.ndarray:
    """The ink mask (H, W) bool of `picture` once its ruling is out."""
    ink, weakest, strong = strokes(picture)
    left, _ = normalize.without_ruling(ink, strong, weakest, "the number", 0.0)
    return left.astype(bool)


def ruled_page(colour=(90, 130, 215)) -> np.ndarray:
    """(480, 640, 3) float32: a page ruled every 60 pixels from row 30 (rows 30, 90, ..., 450)."""
    paper = sheet(480, 640, np.random.default_rng(1))[0].copy()
    draw_lines(paper, np.random.default_rng(0), spacing=60, colour=colour, width=2.5, vertical=False, offset=30)
    return paper


def ring(page: np.ndarray, centre: tuple[int, int]) -> None:
    cv2.ellipse(page, centre, (22, 32), 0, 0, 360, (25, 25, 35), 5, cv2.LINE_AA)


def photo(page: np.ndarray) -> np.ndarray:
    return np.clip(page + 0.5, 0, 255).astype(np.uint8)


def test_a_rule_printed_darker_at_one_end_is_taken_out_to_that_end():
    """Rules dark at the left and paler from a third of the way on (a worn print, uneven light): against the whole
    ruling's median, their dark ends were 'ink much darker than the ruling' and kept, 150-pixel strokes that
    ReadNumber took for digits or for another line of writing. Each pixel is now weighed against the ruling around
    it."""
    dark, pale = ruled_page((40, 70, 190)), ruled_page((115, 145, 218))
    share = np.clip((np.arange(640) - 100) / 60, 0, 1).astype(np.float32)[None, :, None]
    page = dark * (1 - share) + pale * share
    ring(page, (320, 240))
    left = left_after_ruling(photo(page))
    left[200:280, 290:350] = False  # the ring
    assert not left.any(), f"{left.sum()} pixels of the rules left"


def test_a_pen_stroke_that_runs_along_a_pale_rule_for_a_while_is_kept():
    """The ruling's level around a pixel counts no pixel above 1.5 times the whole ruling's median: a bar 120 pixels
    long lying on a pale rule (a 7's top on the line above) made the level around it its own, and was taken out
    with the rule (a 3 whose top lay on a rule was read as a 5)."""
    page = ruled_page((150, 170, 225))
    ring(page, (320, 260))
    cv2.line(page, (290, 210), (410, 210), (25, 25, 35), 4, cv2.LINE_AA)
    assert left_after_ruling(photo(page))[208:213, 292:408].all()


def test_a_rule_that_writing_runs_along_for_half_its_length_is_found_with_the_others():
    """Strokes just above the rule at row 270 along half of it, as a line of writing on a rule: too little of the
    rule has paper on both sides for the search of thin ink to find it, and all of it stayed, joining the strokes
    into one. It is a whole number of the other rules' spacings from them, and unbroken: found as theirs."""
    page = ruled_page()
    for k in range(8):
        x0 = 80 * k + 4
        cv2.line(page, (x0, 264), (x0 + 40, 264), (25, 25, 35), 4, cv2.LINE_AA)
        ring(page, (x0 + 20, 240))
    left = left_after_ruling(photo(page))
    between = np.concatenate([np.arange(80 * k + 50, 80 * k + 76) for k in range(8)])  # columns clear of writing
    on_the_rule = left[266:275][:, between]
    assert not on_the_rule.any(), f"{on_the_rule.sum()} pixels of the rule left between the writing"


@pytest.mark.parametrize(
    ("colour", "top", "bottom"),
    [((130, 130, 130), 180, 420), ((90, 130, 215), 180, 420)],
    ids=["grey-rules-above-and-two-below", "blue-rules-above-and-two-below"],
)
def test_a_rule_through_a_tightly_cropped_number_is_found_between_the_rules_around_it(colour, top, bottom):
    """A number cropped tight, written across the rule at row 270 (strokes along it, rings through it): the search of
    thin ink finds the rules above and below it and one more below, a gap of two spacings around the hidden one.
    Their spacing was the gaps' median, 1.5 spacings; the hidden rule lay 0.67 of that off theirs and stayed,
    joining the digits into one (ReadNumber read a 5-digit number as one digit). With only the two rules around it
    found, the gap is not halved (lines_behind_writing): a digit's bar half-way would go as a rule."""
    page = ruled_page(colour)
    for k in range(8):
        x0 = 80 * k + 4
        cv2.line(page, (x0, 266), (x0 + 40, 266), (25, 25, 35), 4, cv2.LINE_AA)
        ring(page, (x0 + 20, 270))
    left = left_after_ruling(np.ascontiguousarray(photo(page)[top:bottom]))
    between = np.concatenate([np.arange(80 * k + 50, 80 * k + 76) for k in range(8)])  # columns clear of writing
    on_the_rule = left[266 - top : 275 - top][:, between]
    assert not on_the_rule.any(), f"{on_the_rule.sum()} pixels of the rule left between the writing"


@pytest.mark.parametrize("thickness", [5, 6])
def test_a_digits_bar_half_way_between_the_two_rules_of_a_narrow_crop_is_kept(thickness):
    """A 7 cropped narrow between the rules above and below it (rows 90 and 150 of the page), its top bar half-way
    between them: were the two rules' gap taken for two spacings, the bar would be in step with them and taken out
    as a rule hidden by the writing, the 7 left a slanted stroke."""
    page = ruled_page()
    x0, x1, bar = 212, 358, 120
    cv2.line(page, (x0, bar), (x1, bar), (25, 25, 35), thickness, cv2.LINE_AA)
    cv2.line(page, (x1, bar), ((x0 + x1) // 2, 150), (25, 25, 35), thickness, cv2.LINE_AA)
    left = left_after_ruling(np.ascontiguousarray(photo(page)[84:158, 200:370]))
    on_the_bar = left[bar - 84 - 2 : bar - 84 + 3, 20:-20]
    assert on_the_bar.mean() > 0.9, f"{on_the_bar.mean():.0%} of the bar's middle rows kept"


def worn(page: np.ndarray, row: int | None = None, column: int | None = None, dash: int = 6, gap: int = 20) -> None:
    """Wear a rule (at `row`) or a margin (at `column`) into dashes `dash` pixels long, `gap` apart: paper between."""
    clean = sheet(480, 640, np.random.default_rng(1))[0]
    for start in range(0, 640 if row is not None else 480, dash + gap):
        gaps = slice(start + dash, start + dash + gap)
        where = (slice(row - 4, row + 5), gaps) if row is not None else (gaps, slice(column - 4, column + 5))
        page[where] = clean[where]


def test_a_rule_worn_into_dashes_goes_with_the_others():
    """Where a rule's contrast is near the threshold (the vignette, a pale print) it is dashes, too few pixels for
    Hough; ReadNumber took its dashes for writing in dots and closed them into blobs with the digits."""
    page = ruled_page()
    worn(page, row=150)
    ring(page, (320, 250))
    left = left_after_ruling(photo(page))
    assert not left[145:156].any(), f"{left[145:156].sum()} pixels of the worn rule left"


def test_a_margin_worn_into_dashes_across_the_page_is_taken_out_and_a_short_row_of_dashes_kept():
    """A lone line (no family) in dashes is the paper's only if it crosses RULING_SPAN of the picture, as a lone
    line found whole must."""
    page = sheet(480, 640, np.random.default_rng(1))[0].copy()
    draw_lines(
        page, np.random.default_rng(0), spacing=10_000, colour=(215, 80, 85), width=2.5, vertical=True, offset=90
    )
    worn(page, column=90, dash=10, gap=20)  # a third of its length: too little for Hough to find it whole
    ring(page, (320, 250))
    assert not left_after_ruling(photo(page))[:, 85:96].any()
    page[: int(0.5 * 480), 80:100] = sheet(480, 640, np.random.default_rng(1))[0][: int(0.5 * 480), 80:100]
    assert left_after_ruling(photo(page))[:, 85:96].any()  # half the page high: not a margin, kept


def five_with_grain(specks: int) -> np.ndarray:
    """(300, 300) uint8: a 5 whose top bar is a stroke of its own, on paper with `specks` pixels of grain."""
    rng = np.random.default_rng(0)
    picture = np.full((300, 300), 255, np.uint8)
    cv2.line(picture, (110, 70), (195, 70), 0, 3)
    cv2.line(picture, (110, 78), (106, 140), 0, 8)
    cv2.ellipse(picture, (145, 185), (45, 50), 0, -160, 160, 0, 8)
    picture[rng.integers(0, 300, specks), rng.integers(0, 300, specks)] = 90
    return picture


@pytest.mark.parametrize("specks", [150, 300, 500])
def test_grain_in_a_row_with_a_digits_bar_is_no_worn_line(specks):
    """No ruling here: a search for worn lines that chained pieces from one to the next (each within half a band of
    the one before), counting pixels of grain as a line's bits, took the 5's bar and the grain in its row for a
    line and removed the bar (a review found it). A line's pieces lie within one band, and grain is no bit."""
    ink = normalize.ink_contrast(five_with_grain(specks), normalize.estimate_background(five_with_grain(specks)))
    strong = (ink >= normalize.ink_threshold(ink, normalize.noise_level(ink))).astype(np.uint8)
    assert normalize.without_ruling(ink, strong, None)[1] is None


def test_a_thin_1_in_a_tightly_cropped_number_is_no_margin():
    """A lone straight line is a margin only if it is much longer than the writing beside it (LONE_LINE_LENGTH):
    the 1 of a '71' cropped tight spans the picture's height, and ReadNumber, which asks for no least digit size,
    took it out as a margin (a review found it)."""
    picture = np.full((170, 260, 3), 255, np.uint8)
    cv2.line(picture, (30, 12), (120, 12), (0, 0, 0), 3)
    cv2.line(picture, (120, 12), (60, 160), (0, 0, 0), 3)
    cv2.line(picture, (190, 8), (191, 162), (0, 0, 0), 3)
    ink, weakest, strong = strokes(picture)
    assert normalize.without_ruling(ink, strong, weakest, "the number", 0.0)[1] is None
