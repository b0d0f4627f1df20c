"""shared.image_pipeline: any picture of a digit -> a 28x28 MNIST-style digit, or ImageRejected saying why.

Pictures are drawn from MNIST test digits (testkit/user_images.py), so each output can be compared with the digit
it came from: `similarity` is the Pearson correlation of the two 28x28 images (1 = identical up to brightness),
allowing a shift of one pixel.
"""

from __future__ import annotations

import base64
import io
import struct
import warnings
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image, ImageFile, ImageOps

from shared import decode, normalize
from shared import image_pipeline as ip
from shared.image_pipeline import DEFAULT_LIMITS, ImageRejected, Limits, encode_png, to_mnist, to_mnist_array

from testkit import user_images as ui

# ---------------------------------------------------------------------------------------------------------------
# Helpers


@pytest.fixture(scope="module")
def test_digits(mnist):
    """(images (10000, 28, 28) uint8, labels (10000,)) of the MNIST test set."""
    return mnist.test_images.numpy(), mnist.test_labels.numpy()


@pytest.fixture(scope="module")
def digit(test_digits):
    """A clear MNIST test 7 (index 0): asymmetric, so rotations and flips are visible."""
    images, labels = test_digits
    assert labels[0] == 7
    return images[0]


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two 28x28 images, the best over shifts of up to one pixel.

    Centring by mass rounds to whole pixels, as MNIST's own did, so a redrawn digit may land one pixel beside
    the original; for thin strokes that alone would halve a plain correlation.
    """
    b = b.astype(np.float64).ravel()
    return max(
        float(np.corrcoef(np.roll(a, (dy, dx), axis=(0, 1)).astype(np.float64).ravel(), b)[0, 1])
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    )


def centre_of_mass(img: np.ndarray) -> tuple[float, float]:
    ys, xs = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    mass = img.sum(dtype=np.float64)
    return float((img * ys).sum() / mass), float((img * xs).sum() / mass)


def ink_box(img: np.ndarray) -> tuple[int, int]:
    """(height, width) of the nonzero pixels' bounding box."""
    ys, xs = np.nonzero(img)
    return int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)


def drawing(digit: np.ndarray, *, canvas=(600, 800), height=300, stroke=None, top=150, left=250) -> np.ndarray:
    """Ink coverage (H, W) float32 in [0, 1]: the digit drawn `height` px tall at (top, left) on an empty canvas.

    The stroke is the MNIST writer's own width unless given.
    """
    ink = ui.draw_digit(digit, height, stroke)
    out = np.zeros(canvas, np.float32)
    out[top : top + ink.shape[0], left : left + ink.shape[1]] = ink
    return out


def on_paper(coverage: np.ndarray, ink=(0, 0, 0), paper=(255, 255, 255)) -> np.ndarray:
    return np.clip(ui.paint(coverage, ink, paper) + 0.5, 0, 255).astype(np.uint8)


def assert_mnist_like(out: np.ndarray) -> None:
    """The output contract: 28x28 uint8, saturated ink, digit inside a 20x20 box, centred by mass on (14, 14)."""
    assert out.shape == (28, 28) and out.dtype == np.uint8
    assert out.max() == 255
    assert max(ink_box(out)) <= 20
    cy, cx = centre_of_mass(out)
    assert abs(cy - 14) <= 0.75 and abs(cx - 14) <= 0.75, (cy, cx)


# ---------------------------------------------------------------------------------------------------------------
# Backgrounds, colours and transparency


def test_white_background_drawing_comes_out_bright_on_black(digit):
    picture = on_paper(drawing(digit))  # (600, 800, 3): black ink on white
    out = to_mnist(ui.encode(picture, "PNG"))
    assert_mnist_like(out)
    assert out[0].max() == 0 and out[:, 0].max() == 0  # the white paper became black
    assert similarity(out, digit) > 0.9
    # What the original did (the whole picture resized to 28x28, inverted even) is nothing like MNIST's digit.
    naive = 255 - np.asarray(Image.fromarray(picture).convert("L").resize((28, 28), Image.Resampling.BILINEAR))
    assert similarity(naive, digit) < 0.6


def test_dark_mode_light_ink_on_dark_background(digit):
    out = to_mnist(ui.encode(on_paper(drawing(digit), ink=(235, 235, 235), paper=(30, 30, 36)), "PNG"))
    assert_mnist_like(out)
    assert similarity(out, digit) > 0.9


@pytest.mark.parametrize("rgb", [(0, 0, 0), (255, 255, 255), (30, 90, 200)], ids=["black", "white", "blue"])
def test_ink_held_only_in_alpha(digit, rgb):
    """A web canvas export: RGB constant everywhere, the strokes only in alpha, the background transparent."""
    coverage = drawing(digit, canvas=(400, 400), height=280, top=60, left=100)
    rgba = np.zeros((400, 400, 4), np.uint8)
    rgba[:, :, :3] = rgb
    rgba[:, :, 3] = np.clip(coverage * 255 + 0.5, 0, 255).astype(np.uint8)
    out = to_mnist(ui.encode(rgba, "PNG"))
    assert_mnist_like(out)
    reference = to_mnist(ui.encode(on_paper(coverage), "PNG"))  # the same strokes, black on white
    assert similarity(out, reference) > 0.98


def bmp_v5_with_alpha_mask(bgra: np.ndarray) -> bytes:
    """A 32-bit BMP with a V5 header and an alpha mask (BI_BITFIELDS), bottom-up, as paint programs write it."""
    h, w = bgra.shape[:2]
    pixels = np.ascontiguousarray(bgra[::-1]).tobytes()
    header = struct.pack("<IiiHHIIiiII", 124, w, h, 1, 32, 3, len(pixels), 2835, 2835, 0, 0)
    header += struct.pack("<IIII", 0x00FF0000, 0x0000FF00, 0x000000FF, 0xFF000000) + b"BGRs" + bytes(48)
    header += struct.pack("<IIII", 4, 0, 0, 0)
    offset = 14 + len(header)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + header + pixels


def test_a_bmp_whose_alpha_is_left_at_0_is_read_opaque_as_browsers_show_it(digit):
    """Programs that write 32-bit BMPs with an alpha mask often leave the alpha 0 everywhere; browsers show such a
    file opaque. Read as transparent, a clear digit on white was refused as "fully transparent"."""
    paper = on_paper(drawing(digit, canvas=(240, 240), height=140, top=40, left=60))  # (H, W, 3) dark on white
    bgra = np.dstack([paper[:, :, ::-1], np.zeros(paper.shape[:2], np.uint8)])
    out = to_mnist(bmp_v5_with_alpha_mask(bgra))
    assert np.array_equal(out, to_mnist(ui.encode(paper, "PNG")))
    bgra[:, :, 3] = 255 - paper.min(axis=2)  # alpha that is set is kept: only the strokes opaque, on no backdrop
    assert similarity(to_mnist(bmp_v5_with_alpha_mask(bgra)), out) > 0.95


def test_transparent_corners_of_a_photo_vanish_into_the_paper(digit):
    """Mostly opaque (paper with ink) with transparent corners: the corners must not be taken for ink."""
    rgb = on_paper(drawing(digit), ink=(40, 40, 40), paper=(200, 200, 190))
    rgba = np.dstack([rgb, np.full((600, 800), 255, np.uint8)])
    rgba[:80, :80, 3] = 0
    rgba[-80:, -80:, 3] = 0
    out = to_mnist(ui.encode(rgba, "PNG"))
    assert similarity(out, digit) > 0.9


@pytest.mark.parametrize("holes", ["on every sampled pixel", "beside them"])
def test_pinholes_of_transparency_do_not_blank_the_picture(holes):
    """A quarter of the pixels transparent, in a regular grid: the paper's colour is still found when the grid of
    samples it is estimated from falls exactly on the holes (their median was NaN, and the picture blank)."""
    picture = np.full((512, 512), 255, np.uint8)
    picture[100:400, 230:280] = 0  # a bold 1
    rgba = np.dstack([picture, picture, picture, np.full((512, 512), 255, np.uint8)])
    rgba[
        (1 if holes == "on every sampled pixel" else 0) :: 2, (1 if holes == "on every sampled pixel" else 0) :: 2, 3
    ] = 0
    out = to_mnist(ui.encode(rgba, "PNG"))
    assert similarity(out, to_mnist(ui.encode(picture, "PNG"))) > 0.95


@pytest.mark.parametrize("ink, paper", [*ui._ISOLUMINANT_PAIRS, ((20, 40, 160), (250, 240, 170))])
def test_coloured_ink_on_coloured_paper(digit, ink, paper):
    """Including pairs of (nearly) the same brightness, which a plain grey conversion cannot separate."""
    out = to_mnist(ui.encode(on_paper(drawing(digit), ink=ink, paper=paper), "PNG"))
    assert_mnist_like(out)
    assert similarity(out, digit) > 0.9


def test_isoluminant_pairs_really_are_isoluminant():
    luminance = lambda rgb: 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]  # noqa: E731
    for ink, paper in ui._ISOLUMINANT_PAIRS:
        assert abs(luminance(ink) - luminance(paper)) < 15


def test_uneven_lighting_noise_blur_and_jpeg(digit):
    """Photos of paper (gradient, vignette, tilt, blur, noise, JPEG, sometimes EXIF-rotated) still match."""
    for seed in range(4):
        out = to_mnist(ui.paper_photo(digit, np.random.default_rng(seed)))
        assert_mnist_like(out)
        assert similarity(out, digit) > 0.75, seed


# ---------------------------------------------------------------------------------------------------------------
# Size, position and stroke width


def test_small_off_centre_digit_is_centred_in_a_20x20_box(digit):
    coverage = drawing(digit, canvas=(900, 1200), height=40, stroke=4, top=820, left=30)  # bottom-left corner
    out = to_mnist(ui.encode(on_paper(coverage), "PNG"))
    assert_mnist_like(out)
    assert max(ink_box(out)) == 20
    assert similarity(out, digit) > 0.9


def test_thin_pen_strokes_are_grown_to_mnist_width(digit):
    """A 1.5-px pen on a 600-px drawing is 0.1 px at 28x28: without growing it the model would see a faint trace."""
    out = to_mnist(ui.encode(on_paper(drawing(digit, height=400, stroke=1.5, top=100)), "PNG"))
    assert_mnist_like(out)
    assert 0.6 < np.mean(out > 128) / np.mean(digit > 128) < 1.6  # about as much solid ink as the MNIST digit
    assert similarity(out, digit) > 0.9


@pytest.mark.parametrize(
    "canvas, frame", [((64, 64), 1), ((400, 400), 1), ((400, 400), 3), ((400, 400), 6), ((600, 800), 3)]
)
def test_a_frame_along_the_pictures_edge_is_not_taken_for_the_paper(digit, frame, canvas):
    """A screenshot's or a canvas export's dark frame: the paper was the outermost pixels' median, the frame's
    black, so a black-on-white digit read as white paper with its strokes cut out (mostly "not a digit")."""
    height = canvas[0] * 3 // 5
    picture = on_paper(drawing(digit, canvas=canvas, height=height, top=canvas[0] // 5, left=(canvas[1] - height) // 2))
    framed = picture.copy()
    framed[:frame] = framed[-frame:] = framed[:, :frame] = framed[:, -frame:] = 0
    assert similarity(to_mnist_array(framed), to_mnist_array(picture)) > 0.9


def centred_on_paper(digit: np.ndarray, side: int, ink=(0, 0, 0), paper=(255, 255, 255)) -> np.ndarray:
    """The digit drawn 3/5 of a (side, side) picture tall, in its middle (testkit's `centred`)."""
    return on_paper(ui.centred(digit, side)[0], ink, paper)


@pytest.mark.parametrize("side", [28, 40, 64, 100, 200])
@pytest.mark.parametrize("depth", [0.05, 0.1])
@pytest.mark.parametrize("colours", ["black frame, dark ink on white", "white frame, light ink on black"])
def test_a_thick_frame_along_the_edge_of_a_small_picture_is_not_the_paper_nor_the_digit(
    test_digits, side, depth, colours
):
    """A frame drawn along the whole edge, a tenth of the picture deep: the paper fit started from the frame's colour
    and took it in, so on a picture under a few hundred pixels it bent from the frame to the paper (read as a
    shadow from 64 px up), and the digit came out as a blob or as "no ink found"."""
    frame, ink, paper = (
        ((0, 0, 0), (0, 0, 0), (255, 255, 255)) if colours.startswith("black") else ((255,) * 3, (255,) * 3, (0,) * 3)
    )
    width = max(1, round(side * depth))
    for digit in test_digits[0][:6]:
        picture = centred_on_paper(digit, side, ink, paper)
        framed = picture.copy()
        framed[:width] = framed[-width:] = framed[:, :width] = framed[:, -width:] = frame
        assert similarity(to_mnist_array(framed), to_mnist_array(picture)) > 0.95
        assert similarity(to_mnist(ui.encode(framed, "JPEG", quality=85)), to_mnist_array(picture)) > 0.9


@pytest.mark.parametrize("side", [28, 40])
def test_the_margin_outside_a_thick_box_drawn_a_little_inside_the_edge_is_no_frame(test_digits, side):
    """A box a few pixels in from the edge, around a bold 0: the white margin outside it is of one colour and the box
    and the 0 cover most of what it surrounds, yet the paper is the margin's white, as inside the box."""
    inset, width = 3, max(2, round(side * 0.07))
    for digit in test_digits[0][:6]:
        picture = centred_on_paper(digit, side)
        boxed = picture.copy()
        cv2.rectangle(boxed, (inset, inset), (side - 1 - inset, side - 1 - inset), (0, 0, 0), width)
        assert similarity(to_mnist_array(boxed), to_mnist_array(picture)) > 0.95


@pytest.mark.parametrize(
    "side, inset, width", [(64, 3, 3), (100, 4, 3), (140, 3, 4), (200, 6, 6), (300, 10, 9), (500, 6, 2), (500, 10, 15)]
)
def test_a_box_drawn_a_few_pixels_inside_the_edge_is_neither_the_paper_nor_the_digit(test_digits, side, inset, width):
    """A box around the digit with a thin margin of paper outside it (a form's box, a border drawn on a canvas).
    Thick, it filled most of the band along the border whose median was taken for the paper's level, so the ink
    read as lighter than the paper and the paper was estimated as the strokes themselves (120 of 642 such boxes of
    28-500 px misread); on 160 px or more the search for ruled lines took its sides for lines and left its corners,
    which were then kept as strokes."""
    for digit in test_digits[0][:6]:
        picture = centred_on_paper(digit, side)
        boxed = picture.copy()
        cv2.rectangle(boxed, (inset, inset), (side - 1 - inset, side - 1 - inset), (0, 0, 0), width)
        assert boxed[: inset - (width + 1) // 2].min() == 255  # paper all round outside the box: not a frame
        assert similarity(to_mnist_array(boxed), to_mnist_array(picture)) > 0.95


@pytest.mark.parametrize("side", [64, 100, 140, 300])
@pytest.mark.parametrize("inset", [0.05, 0.12])
def test_a_box_drawn_around_the_digit_is_not_the_digit(test_digits, side, inset):
    """A digit written in a form's box: under 160 px (no ruling search) the box was the digit, read as a 0."""
    for digit in test_digits[0][:6]:
        top = side * 3 // 10  # the digit's ink spans about 0.35-0.75 of the picture: inside the box, clear of it
        picture = on_paper(drawing(digit, canvas=(side, side), height=side * 2 // 5, top=top, left=top))
        boxed = picture.copy()
        i, t = int(side * inset), max(1, side // 50)
        cv2.rectangle(boxed, (i, i), (side - 1 - i, side - 1 - i), (0, 0, 0), t)
        assert similarity(to_mnist_array(boxed), to_mnist_array(picture)) > 0.95


@pytest.mark.parametrize("side", [64, 100, 300])
def test_a_ring_drawn_around_the_digit_is_not_the_digit(test_digits, side):
    """Circling the answer: a ring clear of the digit has nothing in its corners, so the rule for a box took it for
    part of the digit, and most circled digits were read as a 0 or an 8 (28 of the 98 such pictures of this test's
    kind read right). A closed ring or box that holds a digit-sized mark in its hole is a frame."""
    circled = 0
    for digit in test_digits[0][:16]:
        coverage, (x0, y0, x1, y1) = ui.centred(digit, side)
        picture = on_paper(coverage)
        radius = int(0.62 * max(x1 - x0, y1 - y0) + side // 40)
        ring = np.full_like(picture, 255)
        cv2.circle(ring, ((x0 + x1) // 2, (y0 + y1) // 2), radius, (0, 0, 0), max(1, side // 60))
        if (cv2.dilate((picture[..., 0] < 250).astype(np.uint8), np.ones((3, 3))) & (ring[..., 0] < 250)).any():
            continue  # the ring runs through the digit: one stroke with it, nothing to tell apart
        circled += 1
        assert similarity(to_mnist_array(np.minimum(picture, ring)), to_mnist_array(picture)) > 0.95
    assert circled >= 5


@pytest.mark.parametrize("aspect", [0.6, 0.7])
def test_a_digit_circled_with_an_oval_is_not_the_digit(test_digits, aspect):
    """Circling a digit with an oval, taller than wide as the digit is: a ring less round than RING_MIN_ROUND was
    taken for a 0 with a slash in it, and 44 to 88 of 100 such pictures read wrong (a scratch script, the tests'
    model). An oval round a mark as tall as a circled digit that is not a line, or is an upright line clear of the
    oval (a 1), is a frame. The oval is drawn as testkit's circled draws it, with room round the digit. A slanted
    1 so circled comes near the oval at its ends, as a 0's free slash comes near the 0, and stays a 0 (the test
    below, and docs/pipeline.md): the 1s here are the upright one of the next test."""
    side, circled = 200, 0
    for digit, label in zip(*(d[:24] for d in test_digits)):
        if label == 1:
            continue
        coverage, box = ui.centred(digit, side)
        radius = int(0.62 * (box[3] - box[1])) + side // 40
        found = ui.oval_clear_of(coverage, box, radius, aspect, max(1, side // 60), widen=4, limit=side // 2)
        if found is None:
            continue  # no oval inside the picture clears it
        oval, (a, b) = found
        if min(a, b) >= normalize.RING_MIN_ROUND * max(a, b):
            continue  # round enough to be a ring: the test above
        circled += 1
        picture, plain = on_paper(np.maximum(coverage, oval)), on_paper(coverage)
        assert similarity(to_mnist_array(picture), to_mnist_array(plain)) > 0.95
    assert circled >= 5


@pytest.mark.parametrize("aspect", [0.4, 0.55, 0.7])
def test_an_upright_1_circled_with_an_oval_is_not_the_digit(aspect):
    """An upright 1 in an oval with room above and below it: a line, but clear of the oval, so a circled 1."""
    one = np.full((300, 300), 255, np.uint8)
    cv2.line(one, (150, 80), (150, 220), 0, 10)
    plain = one.copy()
    cv2.ellipse(one, (150, 150), (int(aspect * 100), 100), 0, 0, 360, 0, 6)
    assert similarity(to_mnist_array(one), to_mnist_array(plain)) > 0.95


@pytest.mark.parametrize("side", [64, 100, 300])
def test_a_box_drawn_close_around_a_narrow_digit_is_not_the_digit(test_digits, side):
    """A form's box around a 1: narrower than half the picture, it was no frame (FRAME_MIN_SPAN) and was read as a
    0 around the 1. Closed around the digit, it is a frame whatever its size."""
    images, labels = test_digits
    for digit in images[labels == 1][:6]:
        coverage, (x0, y0, x1, y1) = ui.centred(digit, side)
        picture = on_paper(coverage)
        gap = side // 20
        boxed = picture.copy()
        cv2.rectangle(boxed, (x0 - gap, y0 - gap), (x1 + gap, y1 + gap), (0, 0, 0), max(1, side // 60))
        assert x1 - x0 + 2 * gap < normalize.FRAME_MIN_SPAN * side  # the case the corner rule did not cover
        assert similarity(to_mnist_array(boxed), to_mnist_array(picture)) > 0.95


def note_on_desk(digit: np.ndarray, side: int, angle: float, note=(250, 235, 120), desk=(60, 45, 35)) -> np.ndarray:
    """A (480, 640, 3) photo from above: a square note `side` px wide, turned by `angle` degrees, lying on a dark
    desk, with `digit` written on it in blue-black ink 3/5 of the note tall."""
    written = centred_on_paper(digit, side, ink=(20, 20, 60), paper=note)
    photo = np.empty((480, 640, 3), np.uint8)
    photo[:] = desk
    top, left = (480 - side) // 2, (640 - side) // 2
    photo[top : top + side, left : left + side] = written
    turn = cv2.getRotationMatrix2D((320, 240), angle, 1.0)
    return cv2.warpAffine(photo, turn, (640, 480), flags=cv2.INTER_LINEAR, borderValue=desk)


@pytest.mark.parametrize("side, angle", [(160, 0), (290, 0), (200, 15), (290, -25), (240, 35), (200, -40)])
def test_a_note_lying_on_a_desk_is_the_paper_not_the_digit(test_digits, side, angle):
    """A sticky note photographed on a desk: the paper found along the border was the desk, so the note was the
    "ink" and the digit a hole in it; the 28x28 digit came out a filled square (7-9 of 60 notes of this kind read
    right, with the tests' model). The note is now read on its own (image_pipeline.read_sheet), turned back upright
    (normalize.upright_sheet: notes turned by 35 degrees read 51-52 of 60 before, 60 now), as the digit written
    upright on plain paper of its colour would be."""
    alike = []
    for digit in test_digits[0][:6]:
        on_a_desk = to_mnist_array(note_on_desk(digit, side, angle))
        plain = to_mnist_array(note_on_desk(digit, side, 0, desk=(250, 235, 120)))  # upright, a desk of its colour
        alike.append(similarity(on_a_desk, plain))
    # Turned twice (the photo, then back) a thin 1 or 4 loses a little: 0.88 at worst, most 0.99 or more. Read
    # as it lay, a note turned by 15 degrees gave 0.46-0.85 (mean 0.60).
    assert min(alike) > 0.85 and np.mean(alike) > 0.95, alike


def note_with_digit_in_a_corner(digit: np.ndarray | None, angle: float) -> np.ndarray:
    """A (480, 640, 3) photo of a 260 px note on a dark desk, turned by `angle` degrees, with `digit` written 110 px
    tall near its top left corner (None: the note alone)."""
    note = np.full((260, 260, 3), (250, 235, 120), np.float32)
    if digit is not None:
        ink = cv2.resize(digit, (110, 110)).astype(np.float32)[..., None] / 255
        note[15:125, 15:125] = note[15:125, 15:125] * (1 - ink) + np.float32((20, 20, 60)) * ink
    photo = np.full((480, 640, 3), (60, 45, 35), np.uint8)
    photo[110:370, 190:450] = np.clip(note + 0.5, 0, 255).astype(np.uint8)
    turn = cv2.getRotationMatrix2D((320, 240), angle, 1.0)
    return cv2.warpAffine(photo, turn, (640, 480), flags=cv2.INTER_LINEAR, borderValue=(60, 45, 35))


@pytest.mark.parametrize("angle", [-40, -20, 30])
def test_the_digit_on_a_turned_note_is_read_upright_and_found_where_it_lies(test_digits, angle):
    """A digit written near a corner of a turned note: the note is turned back upright whole (none of it cut off),
    the digit read as it is upright, and its window, mapped back into the photo's pixels, holds all its ink."""
    for digit in test_digits[0][:3]:
        photo = note_with_digit_in_a_corner(digit, angle)
        trace = ip.trace_pipeline(photo)
        assert trace.to_picture is not None  # read on the sheet, turned
        upright = ip.trace_pipeline(note_with_digit_in_a_corner(digit, 0))
        assert similarity(trace.output, upright.output) > 0.85
        ink = np.abs(photo.astype(int) - note_with_digit_in_a_corner(None, angle)).max(axis=2) > 60
        ys, xs = np.nonzero(ink)
        x, y, w, h = trace.picture_window()
        # Within 2 px: the faintest edge of the ink here may fall either side of the pipeline's threshold.
        assert x - 2 <= xs.min() and xs.max() < x + w + 2 and y - 2 <= ys.min() and ys.max() < y + h + 2, angle
        assert max(w, h) < 200  # the box holding the turned digit (110 px: 156 at 45 degrees), not the note (260)


def turned_sheet(side: tuple[int, int], angle: float, picture: int) -> tuple[np.ndarray, int, int]:
    """A sheet `side` (w, h) px turned by `angle` degrees in the middle of a square picture `picture` px a side, as
    read_sheet hands it to upright_sheet: (the sheet (h, w) bool over its box, the box's x, y)."""
    sheet = np.zeros((picture, picture), np.uint8)
    centre = (picture / 2, picture / 2)
    cv2.fillConvexPoly(sheet, cv2.boxPoints((centre, side, -angle)).astype(np.int32), 1)  # OpenCV: clockwise
    x, y, w, h = cv2.boundingRect(sheet)
    return sheet[y : y + h, x : x + w].astype(bool), x, y


@pytest.mark.parametrize("angle, turned", [(8, False), (-9, False), (12, True), (-30, True), (44, True)])
def test_a_sheet_is_turned_upright_only_past_the_rotations_the_network_trains_with(angle, turned):
    """Under SHEET_MIN_TURN degrees a sheet is read as it lies, its own pixels, not resampled; past it, it is
    turned back by its own angle, onto a canvas the size of the sheet upright."""
    sheet, x, y = turned_sheet((300, 200), angle, 640)
    assert normalize.sheet_turn(normalize.sheet_outline(sheet)) == pytest.approx(angle, abs=1.0)
    cut = np.full((*sheet.shape, 3), 230, np.uint8)
    picture, back = normalize.upright_sheet(cut, sheet, x, y)
    if not turned:
        assert picture is cut and np.array_equal(back, [[1, 0, x], [0, 1, y], [0, 0, 1]])
    else:
        assert sorted(picture.shape[:2]) == pytest.approx([200, 300], abs=4)
        assert np.degrees(np.arctan2(back[1, 0], back[0, 0])) == pytest.approx(-angle, abs=1.0)


@pytest.mark.parametrize("side, angle", [((700, 700), 44), ((1030, 400), 43)])
def test_a_large_turned_sheet_is_read_within_the_working_size(side, angle):
    """A turned sheet is read on a canvas the size of its own upright box (the box of the turned cut, as first
    written, was 1.4 times a square note's side at 44 degrees: 1,383 px for a 700 px note in a 1,024 px photo, above
    the WORK_MAX_SIDE every stage and the memory figures count on), and one longer than WORK_MAX_SIDE upright (a
    long strip lying along the picture's diagonal) is shrunk to it. The canvas's centre maps to the sheet's."""
    sheet, x, y = turned_sheet(side, angle, 1024)
    cut = np.full((*sheet.shape, 3), 230, np.uint8)
    turned, back = normalize.upright_sheet(cut, sheet, x, y)
    scale = min(1.0, decode.WORK_MAX_SIDE / max(side))
    assert max(turned.shape[:2]) <= decode.WORK_MAX_SIDE
    assert sorted(turned.shape[:2]) == pytest.approx(sorted(scale * np.array(side)), abs=5), turned.shape
    (centre,) = normalize.mapped(np.array([[(turned.shape[1] - 1) / 2, (turned.shape[0] - 1) / 2]]), back)
    assert np.abs(centre - 512).max() < 3, centre


def note_seen_at_an_angle(digit: np.ndarray | None, top: float, angle: float) -> np.ndarray:
    """A (480, 640, 3) photo of a 260 px note on a dark desk with `digit` written on it 3/5 of it tall (None: the
    note alone), seen with the phone tilted back: its far (top) edge `top` as long as its near one and drawn a
    little lower, the note turned by `angle` degrees."""
    if digit is None:
        note = np.full((260, 260, 3), (250, 235, 120), np.uint8)
    else:
        note = centred_on_paper(digit, 260, ink=(20, 20, 60), paper=(250, 235, 120))
    inset = (1 - top) / 2 * 260
    seen = np.float32([[inset, inset / 2], [260 - inset, inset / 2], [260, 260], [0, 260]]) - 130
    turn = np.radians(angle)  # counter-clockwise as the picture shows it (y grows downwards)
    seen = (seen @ np.float32([[np.cos(turn), np.sin(turn)], [-np.sin(turn), np.cos(turn)]]).T + (320, 240)).astype(
        np.float32
    )
    square = np.float32([[0, 0], [260, 0], [260, 260], [0, 260]])
    return cv2.warpPerspective(
        note, cv2.getPerspectiveTransform(square, seen), (640, 480), flags=cv2.INTER_LINEAR, borderValue=(60, 45, 35)
    )


@pytest.mark.parametrize("top, angle", [(0.7, 0), (0.6, 0), (0.6, 25), (0.5, -15)])
def test_a_note_seen_at_an_angle_is_read_square_on(test_digits, top, angle):
    """A note photographed with the phone tilted back is a quadrilateral, not a rectangle: one whose top edge was
    70 % of its bottom or less was no sheet (sheet_in), so the note was read as the ink (a filled square; 9 of 60
    such notes read right with a seed-0 model). Its corners are now mapped onto an upright rectangle
    (normalize.squared_sheet: 57 of 60), the digit read as it is on a note seen from above, and its window, mapped
    back into the photo's pixels, holds all its ink."""
    alike = []
    for digit in test_digits[0][:6]:
        photo = note_seen_at_an_angle(digit, top, angle)
        trace = ip.trace_pipeline(photo)
        assert trace.to_picture is not None  # read on the sheet
        alike.append(similarity(trace.output, to_mnist_array(note_on_desk(digit, 260, 0))))
        ink = np.abs(photo.astype(int) - note_seen_at_an_angle(None, top, angle)).max(axis=2) > 60
        ys, xs = np.nonzero(ink)
        x, y, w, h = trace.picture_window()
        assert x - 2 <= xs.min() and xs.max() < x + w + 2 and y - 2 <= ys.min() and ys.max() < y + h + 2
        assert max(w, h) < 220  # the digit's box (156 px tall on the note, less seen at an angle), not the note
    assert min(alike) > 0.8 and np.mean(alike) > 0.9, alike


def quadrilateral(corners: list[tuple[float, float]], picture: int = 400) -> np.ndarray:
    """A filled quadrilateral with these corners (x, y) in a square picture `picture` px a side: (h, w) bool."""
    mask = np.zeros((picture, picture), np.uint8)
    cv2.fillConvexPoly(mask, np.array(corners, np.int32), 1)
    return mask.astype(bool)


def test_a_sheets_corners_are_found_in_order_from_its_top_left():
    """sheet_corners: top left, top right, bottom right, bottom left as it lies (to map them onto an upright
    rectangle's), for a sheet seen at an angle and for one turned too; a square's corners are square."""
    keystone = [(130.0, 60.0), (270.0, 60.0), (340.0, 300.0), (60.0, 300.0)]
    corners = normalize.sheet_corners(quadrilateral(keystone))
    assert corners is not None and np.abs(corners - keystone).max() <= 1.5, corners
    assert normalize.corner_skew(corners) == pytest.approx(np.degrees(np.arctan2(70, 240)), abs=1.0)
    centre = np.array([200.0, 180.0])
    turned = [tuple(centre + (np.array(c) - centre) @ np.array([[0.866, -0.5], [0.5, 0.866]])) for c in keystone]
    found = normalize.sheet_corners(quadrilateral(turned))
    assert found is not None and np.abs(found - turned).max() <= 1.5, (found, turned)
    square = normalize.sheet_corners(quadrilateral([(100, 100), (300, 100), (300, 300), (100, 300)]))
    assert square is not None and normalize.corner_skew(square) < 1.0


@pytest.mark.parametrize("angle", [-25, -10, 0, 15, 25])
def test_a_wide_sheet_seen_at_an_angle_has_its_corners_where_its_sides_meet(angle):
    """approxPolyDP's corners are points of the outline within SHEET_STRAIGHT of its length of the corners: at the
    obtuse far corners of a 360x200 note whose far edge is 60 % of its near one, 5-20 px off, and its skew up to 6
    degrees (found by a review). The lines fitted along the sides meet within a pixel of them (normalize.sides_meet)."""
    inset = 0.2 * 360
    corners = np.array([[inset, inset / 4], [360 - inset, inset / 4], [360, 200], [0, 200]]) - (180, 100)
    turn = np.radians(angle)
    corners = corners @ np.array([[np.cos(turn), np.sin(turn)], [-np.sin(turn), np.cos(turn)]]).T + (220, 220)
    found = normalize.sheet_corners(quadrilateral([tuple(c) for c in corners], 440))  # all of it on the canvas
    assert found is not None and np.abs(found - corners).max() <= 1.5, (found, corners)
    assert normalize.corner_skew(found) == pytest.approx(normalize.corner_skew(corners), abs=1.0)


@pytest.mark.parametrize("radius", [0, 8, 15, 25])
@pytest.mark.parametrize("angle", [0, 20])
def test_a_sheet_with_rounded_corners_is_a_sheet_with_its_corners_where_its_sides_meet(radius, angle):
    """A sticky note's corners are rounded. approxPolyDP's corners cut them off: a 200x150 note whose corners are
    rounded by 8 px holds 6 % more than their quadrilateral (15 px: 10 %), past SHEET_QUAD_FIT, so it was no sheet
    (found by a review; before sheets seen at an angle, a note filling 88 % of its smallest rectangle was one). The
    area is now weighed against the corners where its sides meet, and those are the note's square corners."""
    note = np.zeros((400, 400), np.uint8)
    cv2.rectangle(note, (100 + radius, 125), (300 - radius, 275), 1, -1)
    cv2.rectangle(note, (100, 125 + radius), (300, 275 - radius), 1, -1)
    for x, y in [
        (100 + radius, 125 + radius),
        (300 - radius, 125 + radius),
        (300 - radius, 275 - radius),
        (100 + radius, 275 - radius),
    ]:
        cv2.circle(note, (x, y), radius, 1, -1)
    note = cv2.warpAffine(note, cv2.getRotationMatrix2D((200, 200), angle, 1.0), (400, 400), flags=cv2.INTER_NEAREST)
    x, y, w, h = cv2.boundingRect(note)
    window = note[y : y + h, x : x + w].astype(bool)  # as sheet_in is given it: the stroke's window
    assert normalize.sheet_in(window, (480, 640)) is not None
    corners = normalize.sheet_corners(window)
    square = cv2.boxPoints(((200 - x, 200 - y), (200, 150), -angle))  # OpenCV turns clockwise
    assert corners is not None and normalize.corner_skew(corners) < 1.0
    assert np.abs(np.sort(corners, axis=0) - np.sort(square, axis=0)).max() <= 2.0, (corners, square)


def test_a_sheet_maps_scale_is_its_jacobians():
    """scale_at: how many of the photo's pixels one pixel of the squared sheet becomes, along a side: the square root
    of the map's Jacobian determinant there, as finite differences of `mapped` give it; more at the near edge of a
    sheet seen at an angle than at its far one."""
    back = cv2.getPerspectiveTransform(
        np.float32([[0, 0], [299, 0], [299, 199], [0, 199]]), np.float32([[90, 40], [270, 40], [330, 260], [30, 260]])
    )
    for x, y in [(20.0, 15.0), (150.0, 100.0), (280.0, 190.0)]:
        step = 1e-3
        at = normalize.mapped(np.array([[x, y], [x + step, y], [x, y + step]]), back)
        jacobian = np.stack([at[1] - at[0], at[2] - at[0]], axis=1) / step
        assert normalize.scale_at(back, (x, y)) == pytest.approx(np.sqrt(abs(np.linalg.det(jacobian))), rel=1e-4)
    assert normalize.scale_at(back, (150, 190)) > 1.2 * normalize.scale_at(back, (150, 10))


@pytest.mark.parametrize(
    "shape",
    [
        "a disc",
        "an oval five times as long as wide",
        "a square with bulging sides",
        "a rhombus",
        "a triangle",
        "two rectangles",
        "an L",
    ],
)
def test_a_shape_that_is_no_rectangle_seen_from_any_angle_is_no_sheet(shape):
    """What sheet_corners refuses: a curved outline (an oval five times as long as wide, turned, has five corners
    within SHEET_STRAIGHT; a 160 px square whose sides bulge by 12 px has four, but holds 7 % more than they do,
    past SHEET_QUAD_FIT), corners too far from square for a sheet seen at an angle (a rhombus of 56 and 124
    degrees), three corners or six, and two pieces side by side."""
    mask = np.zeros((400, 400), np.uint8)
    if shape == "a square with bulging sides":
        along = np.linspace(0, 1, 60)[1:-1, None]
        bulge = 12 * np.sin(np.pi * along)
        sides = [
            np.hstack([120 + 160 * along, 120 - bulge]),  # top, left to right
            np.hstack([280 + bulge, 120 + 160 * along]),
            np.hstack([280 - 160 * along, 280 + bulge]),
            np.hstack([120 - bulge, 280 - 160 * along]),
        ]
        outline = np.vstack(
            [[[120, 120]], sides[0], [[280, 120]], sides[1], [[280, 280]], sides[2], [[120, 280]], sides[3]]
        )
        cv2.fillPoly(mask, [np.round(outline).astype(np.int32)], 1)
        x, y, w, h = cv2.boundingRect(mask)
        mask = mask[y : y + h, x : x + w]  # as sheet_in is given it: the shape's window
    elif shape == "a disc":
        cv2.circle(mask, (200, 200), 120, 1, -1)
    elif shape == "an oval five times as long as wide":
        cv2.ellipse(mask, (200, 200), (150, 30), 20, 0, 360, 1, -1)
    elif shape == "a rhombus":
        cv2.fillConvexPoly(mask, np.array([[200, 30], [290, 200], [200, 370], [110, 200]], np.int32), 1)
    elif shape == "a triangle":
        cv2.fillConvexPoly(mask, np.array([[200, 40], [360, 340], [40, 340]], np.int32), 1)
    elif shape == "two rectangles":
        mask[100:300, 60:180] = 1
        mask[100:300, 220:340] = 1
    else:
        mask[60:340, 60:160] = 1
        mask[240:340, 60:340] = 1
    assert normalize.sheet_corners(mask.astype(bool)) is None


def test_a_sheet_seen_at_an_angle_is_mapped_corner_to_corner_onto_an_upright_rectangle():
    """upright_sheet on a quadrilateral sheet: a picture as wide as its wider edge and as tall as its taller side,
    whose corners map back onto the sheet's in the prepared picture; a rectangle turned by less than SHEET_MIN_TURN
    is still read as it lies, its own pixels."""
    keystone = [(130.0, 60.0), (270.0, 60.0), (340.0, 300.0), (60.0, 300.0)]
    sheet = quadrilateral(keystone)
    cut = np.full((*sheet.shape, 3), 230, np.uint8)
    squared, back = normalize.upright_sheet(cut, sheet, 50, 20)
    assert squared.shape[:2] == pytest.approx((np.hypot(70, 240) + 1, 281), abs=2)
    height, width = squared.shape[:2]
    far = normalize.mapped(np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], float), back)
    assert np.abs(far - (np.array(keystone) + np.array((50, 20)))).max() <= 1.5, far
    sheet, x, y = turned_sheet((300, 200), 8, 640)
    cut = np.full((*sheet.shape, 3), 230, np.uint8)
    assert normalize.upright_sheet(cut, sheet, x, y)[0] is cut


def test_a_filled_rectangle_or_a_bold_digit_is_no_sheet():
    """What looks like a sheet on a desk and is not: a filled rectangle drawn on a canvas holds no digit, so it
    stays what it was; a bold 8 in a heavy face is solid, but its outline is curved (its loops are no digit)."""
    block = np.full((300, 400), 255, np.uint8)
    cv2.rectangle(block, (120, 60), (280, 240), 0, -1)
    assert ip.to_mnist_array(block).mean() > 100  # the block, as before: not "no ink found" nor a speck inside it
    bold = np.full((300, 300), 255, np.uint8)
    cv2.putText(bold, "8", (60, 250), cv2.FONT_HERSHEY_SIMPLEX, 8.0, 0, 40)
    assert normalize.sheet_in(ip.trace_pipeline(bold).region.strokes, (300, 300)) is None


@pytest.mark.parametrize("hole", [(120, 180, 135, 165), (105, 195, 128, 172)])
def test_a_bold_square_0_is_no_sheet_and_its_hole_no_digit(hole):
    """A 0 drawn as a solid square with a small hole (a fifth of it or less) is a solid quadrilateral too; its hole,
    read as a digit on a sheet, is a filled bar (a 1). It stays the 0 it was read as (found by a review)."""
    zero = np.full((300, 300), 255, np.uint8)
    cv2.rectangle(zero, (90, 60), (210, 240), 0, -1)
    top, bottom, left, right = hole
    zero[top:bottom, left:right] = 255
    trace = ip.trace_pipeline(zero)
    assert trace.to_picture is None  # the picture itself, not a sheet cut out of it
    _, _, w, h = trace.picture_window()
    assert w > 110 and h > 170, trace.picture_window()


@pytest.mark.parametrize("slash", ["slash", "long slash", "steep slash", "long dot", "fat long dot", "big dot"])
def test_a_0_with_a_mark_inside_that_does_not_touch_it_stays_a_0(slash):
    """A slashed or dotted 0 whose inner mark stands free: an oval holding a digit-sized mark wholly in its hole, as
    a circled 1 does, but a 0 is taller than wide, and its mark is short, or a line that reaches near the ring
    (normalize.circled_in_oval), so it is the digit, not a frame around the mark (found by two reviews: read as a
    1; a slash 5 px longer at each end than the first was, and a big solid dot)."""
    zero = np.full((300, 300), 255, np.uint8)
    cv2.ellipse(zero, (150, 150), (60, 100), 0, 0, 360, 0, 14)
    if slash == "slash":
        cv2.line(zero, (175, 95), (125, 205), 0, 12)
    elif slash == "long slash":
        cv2.line(zero, (177, 90), (123, 210), 0, 12)
    elif slash == "steep slash":
        cv2.line(zero, (165, 75), (135, 225), 0, 12)
    elif slash == "long dot":
        cv2.ellipse(zero, (150, 150), (9, 30), 0, 0, 360, 0, -1)
    elif slash == "fat long dot":
        cv2.ellipse(zero, (150, 150), (16, 60), 0, 0, 360, 0, -1)
    else:  # as tall as a digit, but a solid blob
        cv2.ellipse(zero, (150, 150), (24, 62), 0, 0, 360, 0, -1)
    assert cv2.connectedComponents((zero < 128).astype(np.uint8))[0] == 3  # the ring and the mark, apart
    x, y, w, h = ip.trace_pipeline(zero).picture_window()
    assert w > 120 and h > 200, (x, y, w, h)  # the whole 0, not the mark inside it


def test_a_page_with_the_table_showing_all_round_is_no_shadow(test_digits):
    """A page filling most of the photo, the table beyond its four sides: the local paper estimate took the page's
    edges for a shadow's and read them as strokes (14 of 60 such photos read right with the tests' model). A
    sheet with the desk all round it is no shadow (normalize.lies_on_a_desk): the table is the paper, and the page
    is cut out and read (57 of 60)."""
    for digit in test_digits[0][:6]:
        photo = note_on_desk(digit, 400, 0, note=(240, 240, 235), desk=(110, 110, 115))
        plain = note_on_desk(digit, 400, 0, note=(240, 240, 235), desk=(240, 240, 235))
        assert similarity(to_mnist_array(photo), to_mnist_array(plain)) > 0.9


def test_a_filled_disc_that_comes_near_the_edge_all_round_is_no_frame():
    """White paper showing only in the margin around a dark disc (the trainer's negatives draw such shapes, and bold
    hatching): the margin is of one colour and the disc fills most of the middle, but it meets the ring where it
    begins in a few places only, where a frame's inside edge is paper all along. Taken for a frame, the paper would
    have been the disc's dark (as it was for 15 of 7,000 of the trainer's negatives with a looser rule)."""
    picture = np.full((66, 66), 235, np.uint8)
    cv2.circle(picture, (33, 33), 29, 30, -1)
    assert normalize.edge_frame_depth(picture) == 0


def test_a_boxy_0_with_a_dot_inside_stays_a_0():
    """A frame holds a digit-sized mark; a 0 drawn square, with a dot in it, is the digit itself."""
    square = np.full((100, 100, 3), 255, np.uint8)
    cv2.rectangle(square, (25, 15), (75, 85), (0, 0, 0), 6)
    dotted = square.copy()
    cv2.circle(dotted, (50, 50), 5, (0, 0, 0), -1)
    assert similarity(to_mnist_array(dotted), to_mnist_array(square)) > 0.8  # not the dot, scaled to a disc


def test_paint_brush_strokes_are_thinned(digit):
    """A brush 30% of the digit's height would fill MNIST's box; it comes out near MNIST's width."""
    thick = to_mnist(ui.encode(on_paper(drawing(digit, height=300, stroke=90)), "PNG"))
    assert_mnist_like(thick)
    assert np.mean(thick > 128) / np.mean(digit > 128) < 2.0


def full_resolution_trace(picture: np.ndarray) -> ip.PipelineTrace:
    """What the pipeline gives a picture read at full resolution only (no coarse pass)."""
    work = decode.prepare_array(picture)
    return ip.trace_at(work, ip.estimate_background(work))


def test_a_large_picture_of_a_clear_digit_is_read_at_half_resolution_with_the_same_result(digit):
    """The coarse pass: a quarter of the pixels, and the 28x28 digit is the one full resolution would give."""
    picture = on_paper(drawing(digit, height=300, stroke=16))
    trace = ip.trace_pipeline(picture)
    assert trace.scale == 2 and trace.image.shape == (300, 400, 3)
    assert_mnist_like(trace.output)
    full = full_resolution_trace(picture)
    assert similarity(trace.output, full.output) > 0.97
    # The digit's window, in the picture's pixels, is where full resolution finds it.
    assert np.abs(np.subtract(trace.picture_window(), full.region.window)).max() <= 3


def test_a_hairline_pen_on_a_large_picture_reads_as_at_full_resolution(digit):
    """A 0.6-px stroke is a faint grey line at half resolution: the 28x28 digit is the one full resolution gives."""
    picture = on_paper(drawing(digit, height=300, stroke=0.6))
    assert similarity(ip.trace_pipeline(picture).output, full_resolution_trace(picture).output) > 0.97


@pytest.mark.parametrize("width", [1, 2, 3])
@pytest.mark.parametrize("size", [700, 1000])
def test_a_hard_edged_pencil_on_a_large_canvas_keeps_every_line(width, size):
    """A paint program's 1-3 px pencil without anti-aliasing: at half size each line lands on one pixel or is split
    grey over two, as it falls, and the split ones were lost (this 4 without its bar read 1; correlation with the
    full-resolution digit 0.65-0.80). Such strokes are read at full resolution (COARSE_MIN_STROKE)."""
    from PIL import ImageDraw

    canvas = Image.new("L", (size, size), 255)
    pen = ImageDraw.Draw(canvas)
    s = size / 1000
    pen.line([(600 * s, 150 * s), (230 * s, 620 * s), (780 * s, 620 * s)], fill=0, width=width)  # diagonal, bar
    pen.line([(610 * s, 350 * s), (610 * s, 850 * s)], fill=0, width=width)  # stem
    picture = np.asarray(canvas.convert("RGB"))
    assert similarity(ip.trace_pipeline(picture).output, full_resolution_trace(picture).output) > 0.97


def test_a_small_digit_on_a_large_picture_is_read_again_at_full_resolution(digit):
    """At half resolution a 60-px digit would be 30 pixels, too few to average down into MNIST's 20-px box: the
    picture is read again at full resolution, with the answer reading it there directly gives."""
    picture = on_paper(drawing(digit, canvas=(900, 1200), height=60, stroke=4, top=820, left=30))
    trace = ip.trace_pipeline(picture)
    assert trace.scale == 1
    np.testing.assert_allclose(trace.output, full_resolution_trace(picture).output, atol=2)


def test_a_jpeg_photo_is_decoded_at_half_size_for_the_coarse_pass(digit, monkeypatch):
    """JPEG's DCT scaling gives the coarse pass its picture without decoding the full one; the digit read is the
    one the full decode gives."""
    data = ui.encode(on_paper(drawing(digit, canvas=(480, 640), height=260, stroke=14, top=100, left=200)), "JPEG")
    half = decode.decode_image(data, shrink=2)
    assert half.shape == (240, 320, 3) and decode.decode_image(data).shape == (480, 640, 3)
    decoded, frames = [], []  # the size of each picture to_mnist decodes, and of the frame Pillow decoded for it

    def recording(*args, **kwargs):
        picture = decode.decode_image(*args, **kwargs)
        decoded.append(picture.shape)
        return picture

    def frame_size(img):
        frames.append(img.size)
        return real_reduced_array(img)

    real_reduced_array = decode.reduced_array
    monkeypatch.setattr(ip, "decode_image", recording)
    monkeypatch.setattr(decode, "reduced_array", frame_size)
    read = to_mnist(data)
    assert decoded == [(240, 320, 3)], "a clear digit's photo is decoded once, at half size"
    assert frames == [(320, 240)], "by the JPEG decoder itself (DCT scaling), not shrunk from a full decode"
    assert similarity(read, to_mnist_array(decode.decode_image(data))) > 0.97


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF"])
def test_bytes_not_decoded_at_half_size_give_to_mnist_array_of_their_decoded_picture(digit, fmt):
    """decodes_at_half_size says which bytes to_mnist decodes its own way (JPEG only); for every other format a
    caller that decoded the bytes already (ReadNumber) gets to_mnist's answer, exactly, from that picture."""
    data = ui.encode(on_paper(drawing(digit, canvas=(480, 640), height=260, stroke=14, top=100, left=200)), fmt)
    assert ip.decodes_at_half_size(data) == (fmt == "JPEG")
    if fmt != "JPEG":
        np.testing.assert_array_equal(to_mnist(data), to_mnist_array(decode.decode_image(data)))


def test_stroke_ratio_matches_mnist_calibration(test_digits):
    """The stroke estimator reads MNIST's median ratio on MNIST itself, which the constants rely on."""
    images, _ = test_digits
    ratios = [ip.trace_pipeline(image).stroke_ratio for image in images[:300]]
    assert abs(np.median(ratios) - ip.STROKE_RATIO_TARGET) < 0.01


def test_genuine_mnist_digits_pass_through_nearly_unchanged(test_digits):
    """MNIST is already 20x20-boxed and mass-centred: as PNG files, its digits must come out as themselves."""
    images, _ = test_digits
    outputs = np.stack([to_mnist(ui.encode(image, "PNG")) for image in images[:500]])
    mean_abs_difference = np.abs(outputs.astype(np.int16) - images[:500]).mean(axis=(1, 2))  # grey levels
    similarities = np.array([similarity(o, i) for o, i in zip(outputs, images[:500])])
    assert np.median(mean_abs_difference) < 1.0
    # The rest (MNIST's thinnest 3% and boldest 5%) had their stroke width brought into the usual range.
    assert np.mean(mean_abs_difference < 2.0) > 0.85
    assert np.mean(similarities) > 0.97 and np.min(similarities) > 0.6


# ---------------------------------------------------------------------------------------------------------------
# Formats


def test_exif_orientation_matches_pillow_for_all_eight_values():
    asymmetric = np.arange(3 * 5 * 3, dtype=np.uint8).reshape(3, 5, 3)
    for orientation in range(1, 9):
        img = Image.fromarray(asymmetric)
        exif = img.getexif()
        exif[decode.EXIF_ORIENTATION_TAG] = orientation
        buffer = io.BytesIO()
        img.save(buffer, "PNG", exif=exif.tobytes())
        expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buffer.getvalue()))))
        np.testing.assert_array_equal(
            decode.apply_exif_orientation(asymmetric, orientation), expected, str(orientation)
        )


@pytest.mark.parametrize("where", ["before the pixels", "after the pixels", "in XMP"])
def test_displayed_size_reads_a_pngs_orientation_without_decoding_its_pixels(monkeypatch, where):
    """ReadNumber reports boxes in the picture as displayed. Pillow's getexif() decodes a PNG whole to look for an
    eXIf chunk, a second full decode outside the memory budget; the chunk is found by walking the file instead."""
    from PIL import PngImagePlugin

    picture = Image.fromarray(np.zeros((30, 50), np.uint8))
    exif = Image.Exif()
    exif[decode.EXIF_ORIENTATION_TAG] = 6
    buffer = io.BytesIO()
    if where == "in XMP":  # tiff:Orientation in an iTXt chunk, which Pillow's getexif() reads too
        from PIL import PngImagePlugin

        xmp = (
            '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            '<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
        )
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", xmp)
        picture.save(buffer, "PNG", pnginfo=info)
    else:
        picture.save(buffer, "PNG", exif=exif.tobytes())
    data = buffer.getvalue()
    if where == "after the pixels":
        start = data.index(b"eXIf") - 4
        length = int.from_bytes(data[start : start + 4], "big")
        chunk = data[start : start + 12 + length]
        data = data[:start] + data[start + len(chunk) :]
        end = data.index(b"IEND") - 4
        data = data[:end] + chunk + data[end:]
    assert decode.exif_orientation(Image.open(io.BytesIO(data))) == 6  # what decode_image turns the picture by

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_decoding)
    assert decode.displayed_size(data) == (30, 50)  # turned a quarter: width and height swap


@pytest.mark.parametrize("fmt", ["TIFF", "JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_displayed_size_is_the_size_of_the_picture_decoded(fmt, orientation):
    """Pillow gives a TIFF's size turned already (5-8 swap width and height): it was swapped a second time, and
    ReadNumber's boxes were reported in a frame of the wrong shape."""
    picture = Image.fromarray(np.zeros((30, 50), np.uint8))
    exif = Image.Exif()
    exif[decode.EXIF_ORIENTATION_TAG] = orientation
    buffer = io.BytesIO()
    picture.save(buffer, fmt, exif=exif.tobytes())
    height, width = decode.decode_image(buffer.getvalue()).shape[:2]
    assert decode.displayed_size(buffer.getvalue()) == (width, height)


def test_displayed_size_reads_a_still_webp_as_libwebp_decodes_it():
    """A still WebP is decoded by libwebp; Pillow is stricter about its header (here a reserved flag bit set), and
    ReadNumber refused what Predict read."""
    exif = Image.Exif()
    exif[decode.EXIF_ORIENTATION_TAG] = 6
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((30, 50), np.uint8)).save(buffer, "WEBP", exif=exif.tobytes())
    data = bytearray(buffer.getvalue())
    data[20] |= 0x01  # VP8X flags: a reserved bit
    height, width = decode.decode_image(bytes(data)).shape[:2]
    assert decode.displayed_size(bytes(data)) == (width, height) == (30, 50)


@pytest.mark.parametrize("orientation, stored_as", [(6, 1), (8, -1), (3, 2)])
def test_exif_rotated_photo_comes_out_upright(digit, orientation, stored_as):
    """Phones store the sensor's pixels sideways and an EXIF tag saying how to turn them."""
    upright = on_paper(drawing(digit), ink=(30, 30, 30), paper=(210, 210, 205))
    stored = np.ascontiguousarray(np.rot90(upright, stored_as))
    exif = Image.Exif()
    exif[decode.EXIF_ORIENTATION_TAG] = orientation
    out = to_mnist(ui.encode(stored, "JPEG", quality=90, exif=exif.tobytes()))
    assert similarity(out, to_mnist(ui.encode(upright, "JPEG", quality=90))) > 0.95
    assert similarity(out, digit) > 0.9


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF"])
def test_common_formats(digit, fmt):
    out = to_mnist(ui.encode(on_paper(drawing(digit), ink=(20, 20, 120)), fmt))
    assert similarity(out, digit) > 0.9


def test_16_bit_grey_png(digit):
    grey = on_paper(drawing(digit))[:, :, 0]
    buffer = io.BytesIO()
    Image.fromarray(grey.astype(np.uint16) * 257).save(buffer, "PNG")  # mode I;16
    assert Image.open(io.BytesIO(buffer.getvalue())).mode.startswith("I")
    out = to_mnist(buffer.getvalue())
    np.testing.assert_allclose(out, to_mnist(ui.encode(grey, "PNG")), atol=2)


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk(digit, fmt):
    buffer = io.BytesIO()
    Image.fromarray(on_paper(drawing(digit), ink=(120, 20, 20))).convert("CMYK").save(buffer, fmt)
    assert Image.open(io.BytesIO(buffer.getvalue())).mode == "CMYK"
    assert similarity(to_mnist(buffer.getvalue()), digit) > 0.9


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparent_background(digit, fmt):
    """A palette image whose background index is transparent and whose (transparent) colour is the ink's."""
    coverage = drawing(digit) > 0.5
    indices = coverage.astype(np.uint8)  # 0 = background, 1 = ink
    img = Image.fromarray(indices, mode="L").convert("P")
    img.putpalette([0, 0, 0, 0, 0, 0] + [0] * 762)  # both black: only the transparency tells them apart
    buffer = io.BytesIO()
    img.save(buffer, fmt, transparency=0)
    assert Image.open(io.BytesIO(buffer.getvalue())).mode == "P"
    assert similarity(to_mnist(buffer.getvalue()), digit) > 0.9


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_soft_dark_ink_whose_white_paper_is_a_colour_key_stays_dark_on_white(digit, fmt):
    """White keyed out of a soft (blurred) dark drawing: the ink's light fringes stay opaque, and outnumber its dark
    core, so the mean said "light ink" and put it on black, where the core vanished. The key is the paper."""
    grey = cv2.GaussianBlur(on_paper(drawing(digit, stroke=14))[:, :, 0], (0, 0), 6)
    img = Image.fromarray(grey, mode="L")
    if fmt == "GIF":
        img = img.convert("P")
        paper = img.getpixel((0, 0))
        save_options = {"transparency": paper}
    else:
        save_options = {"transparency": 255}
    buffer = io.BytesIO()
    img.save(buffer, fmt, **save_options)
    assert Image.open(io.BytesIO(buffer.getvalue())).info.get("transparency") is not None
    assert similarity(to_mnist(buffer.getvalue()), to_mnist(ui.encode(grey, "PNG"))) > 0.95


def multi_frame(fmt: str, first: np.ndarray, second: np.ndarray) -> bytes:
    frames = [Image.fromarray(first), Image.fromarray(second)]
    buffer = io.BytesIO()
    frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:], **({"duration": 100} if fmt == "GIF" else {}))
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["GIF", "TIFF"])
def test_multi_frame_uses_the_first_frame(test_digits, fmt):
    images, labels = test_digits
    seven, two = images[0], images[1]
    assert (labels[0], labels[1]) == (7, 2)
    data = multi_frame(fmt, on_paper(drawing(seven))[:, :, 0], on_paper(drawing(two))[:, :, 0])
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    out = to_mnist(data)
    assert similarity(out, seven) > 0.9 and similarity(out, two) < 0.5


# ---------------------------------------------------------------------------------------------------------------
# Rejections


def blank_photo() -> np.ndarray:
    rng = np.random.default_rng(0)
    paper = np.full((480, 640, 3), 200, np.float32) * ui.lighting(480, 640, rng)[:, :, None]
    return np.clip(paper + rng.normal(0, 4, paper.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "data",
    [
        ui.encode(np.full((300, 300), 255, np.uint8), "PNG"),
        ui.encode(np.zeros((300, 300), np.uint8), "PNG"),
        ui.encode(np.full((300, 300, 3), (40, 160, 90), np.uint8), "JPEG"),
        ui.encode(blank_photo(), "JPEG", quality=70),
    ],
    ids=["white", "black", "green_jpeg", "blank_paper_photo"],
)
def test_blank_image_is_rejected(data):
    with pytest.raises(ImageRejected, match="no ink found: the picture looks blank"):
        to_mnist(data)


def test_a_picture_of_texture_alone_is_called_too_noisy_not_blank_with_advice_it_can_follow():
    """A checkerboard of single pixels: full contrast everywhere, no strokes. Calling it blank and asking for
    more than 255 of contrast (the noise-scaled bar) would be advice no picture can follow."""
    from shared.segment import read_number

    checker = (np.indices((400, 400)).sum(axis=0) % 2 * 255).astype(np.uint8)
    with pytest.raises(ImageRejected) as e:
        to_mnist(ui.encode(checker, "PNG"))
    assert "no ink found: the picture is too noisy or textured" in str(e.value) and "blank" not in str(e.value)
    assert "plain background" in str(e.value)
    with pytest.raises(ImageRejected, match=r"no digit found: the picture is too noisy or textured.*a number on"):
        read_number(checker, lambda batch: None)  # rejected before anything is classified


def test_fully_transparent_image_is_rejected():
    with pytest.raises(ImageRejected, match="fully transparent"):
        to_mnist(ui.encode(np.zeros((100, 100, 4), np.uint8), "PNG"))


def test_a_speck_is_not_a_digit():
    white = np.full((400, 400), 255, np.uint8)
    white[200:203, 100:103] = 0
    with pytest.raises(ImageRejected, match="specks"):
        to_mnist(ui.encode(white, "PNG"))


def png_bytes() -> bytes:
    return ui.encode(np.full((64, 64), 255, np.uint8), "PNG")


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty image"),
        (b"hello, this is not a picture", "not a picture in a format we read .* PNG, JPEG, GIF, BMP, TIFF, WebP"),
        (b"%PDF-1.7\n1 0 obj", "looks like a PDF"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "looks like text or SVG"),
        (png_bytes()[:60], "damaged or truncated"),
        (png_bytes()[:33] + b"\x00" * 200, "starts like a PNG but its header is damaged or truncated"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "HEIC/HEIF/AVIF pictures are not accepted; export .* as JPEG"),
        (b"data:image/png;base64," + base64.b64encode(png_bytes()), "not a picture .*data: URL, text: decode the"),
        (base64.b64encode(png_bytes()), r"not a picture .*as base64 text: decode it \(base64 -d\)"),
        (b'{"image": "' + base64.b64encode(png_bytes()) + b'"}', "looks like JSON; send the picture's own bytes"),
        # A valid TIFF of 32-bit float samples (OpenCV writes and reads it; Pillow does not): not "damaged" alone.
        (
            cv2.imencode(".tiff", np.ones((64, 64, 3), np.float32))[1].tobytes(),
            "the TIFF is of a kind we do not read .*save it as an 8-bit PNG or JPEG",
        ),
    ],
    ids=["empty", "text", "pdf", "svg", "truncated_png", "garbled_png", "heic", "data_url", "base64", "json", "float"],
)
def test_bad_bytes_are_rejected_with_a_clear_message(data, message):
    with pytest.raises(ImageRejected, match=message):
        to_mnist(data)


def test_too_many_bytes():
    data = png_bytes()
    with pytest.raises(ImageRejected, match=f"image is {len(data):,} bytes; the limit is 100"):
        to_mnist(data, limits=Limits(max_bytes=100, max_pixels=10**6))


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height 8-bit grey pixels, followed by a few bytes of data."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\x00" * 4096)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


@pytest.mark.parametrize("width, height", [(8000, 6000), (100_000, 100_000)], ids=["48MP", "10GP_pillow_limit"])
def test_decompression_bomb_is_rejected_before_decoding(monkeypatch, width, height):
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or None)
    with pytest.raises(ImageRejected, match="pixels"):
        to_mnist(png_declaring(width, height))
    assert decoded == []  # refused from the header: no pixel was decoded


def test_pixel_limit_is_configurable(digit):
    data = ui.encode(on_paper(drawing(digit)), "PNG")  # 800x600
    with pytest.raises(ImageRejected, match="800x600 = 480,000 pixels; the limit is 479,999"):
        to_mnist(data, limits=Limits(max_bytes=10**7, max_pixels=479_999))
    assert to_mnist(data, limits=Limits(max_bytes=10**7, max_pixels=480_000)).shape == (28, 28)


def test_limits():
    assert DEFAULT_LIMITS.max_bytes == 10 * 1024 * 1024 and DEFAULT_LIMITS.max_pixels == 40_000_000
    with pytest.raises(ValueError):
        Limits(max_bytes=0, max_pixels=1)


# ---------------------------------------------------------------------------------------------------------------
# Arrays, PNG output, the generator


@pytest.mark.parametrize(
    "convert",
    [
        lambda a: a,
        lambda a: a[:, :, None],
        lambda a: a.astype(np.float32) / 255,
        lambda a: a.astype(np.uint16) * 257,
        lambda a: a < 128,  # bool: True where the ink is
        lambda a: np.dstack([a, a, a]),
        lambda a: np.dstack([a, a, a, np.full_like(a, 255)]),
    ],
    ids=["grey", "grey_1_channel", "float", "uint16", "bool", "rgb", "rgba"],
)
def test_to_mnist_array_accepts_decoded_arrays(digit, convert):
    grey = on_paper(drawing(digit))[:, :, 0]  # (600, 800) uint8, black on white
    assert similarity(to_mnist_array(convert(grey)), digit) > 0.9


def test_float64_brightness_past_float32s_range_reads_as_infinite_without_a_warning(digit):
    """Such values became float32 infinities, as they should, but numpy warned of an overflow on every call."""
    ink = digit > 0
    huge, infinite = np.where(ink, 1e300, 0.0), np.where(ink, np.inf, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(to_mnist_array(huge), to_mnist_array(infinite))
        # Dark ink on white paper of [0, 1] floats, the ink below float32's range.
        np.testing.assert_array_equal(to_mnist_array(1 - huge - ink), to_mnist_array(1 - infinite - ink))


def test_encode_png_round_trips(digit):
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(digit))))
    np.testing.assert_array_equal(decoded, digit)
    with pytest.raises(ValueError):
        encode_png(np.zeros((28, 29), np.uint8))


def test_user_images_are_deterministic_and_all_accepted(test_digits):
    images, labels = test_digits
    first = ui.make_user_images(images, labels, per_style=2, seed=3)
    assert first == ui.make_user_images(images, labels, per_style=2, seed=3)
    assert first != ui.make_user_images(images, labels, per_style=2, seed=4)
    assert {p.style for p in first} == set(ui.DRAWN_STYLES)
    printed = ui.make_printed_digits(per_font=10, seed=3, fonts=ui.available_fonts()[:2])
    assert [p.label for p in printed] == list(range(10)) * 2
    for picture in first + printed:
        assert_mnist_like(to_mnist(picture.data))


def test_drawn_styles_resemble_their_source_digits(test_digits):
    """A model-free check of each style: the output looks like the MNIST digit it was drawn from."""
    images, labels = test_digits
    for style in ui.DRAWN_STYLES:
        pictures = ui.make_user_images(images, labels, per_style=4, seed=1, styles=[style])
        sources = ui.source_indices(images, 4, ui.style_generator(style, 1), style)
        scores = [similarity(to_mnist(p.data), images[i]) for p, i in zip(pictures, sources)]
        assert np.mean(scores) > 0.8, (style, scores)


# ---------------------------------------------------------------------------------------------------------------
# Property-based: whatever arrives, the answer is a 28x28 uint8 digit or ImageRejected, nothing else.

FUZZ = settings(max_examples=100, deadline=1000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"II*\x00", b"RIFF\x00\x00\x00\x00WEBP"]


def assert_digit_or_rejected(call) -> None:
    try:
        out = call()
    except ImageRejected:
        return
    assert out.shape == (28, 28) and out.dtype == np.uint8


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the garbage it is fed ("Corrupt EXIF")
@FUZZ
@given(prefix=st.sampled_from(MAGIC), body=st.binary(max_size=2000))
def test_fuzz_random_bytes(prefix, body):
    assert_digit_or_rejected(lambda: to_mnist(prefix + body))


small_arrays = hnp.arrays(
    dtype=np.uint8,
    shape=st.one_of(
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40),
        st.tuples(st.integers(1, 40), st.integers(1, 40), st.sampled_from([1, 2, 3, 4])),
    ),
)


@FUZZ
@given(array=small_arrays)
def test_fuzz_random_arrays(array):
    assert_digit_or_rejected(lambda: to_mnist_array(array))


@FUZZ
@given(
    array=small_arrays.filter(lambda a: a.ndim == 2 or a.shape[2] in (3, 4)),
    fmt=st.sampled_from(["PNG", "JPEG", "GIF"]),
)
def test_fuzz_random_pictures_as_files(array, fmt):
    if fmt == "JPEG" and array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    assert_digit_or_rejected(lambda: to_mnist(ui.encode(array, fmt)))


@pytest.mark.parametrize("shape", [(1, 20_000), (20_000, 1), (3, 400), (1, 65)])
def test_extreme_aspect_ratios_do_not_break_the_background_fit(shape):
    """A side shorter than half the sampling step once left the paper estimate with no samples (IndexError)."""
    strip = np.full(shape, 255, np.uint8)
    long_side = max(shape)
    if shape[0] == 1 or shape[0] < shape[1]:
        strip[:, long_side // 2 - long_side // 10 : long_side // 2 + long_side // 10] = 0
    else:
        strip[long_side // 2 - long_side // 10 : long_side // 2 + long_side // 10, :] = 0
    out = to_mnist_array(strip)
    assert out.shape == (28, 28) and out.dtype == np.uint8 and out.max() == 255


def test_the_stroke_distance_is_the_exact_euclidean_distance_on_every_call():
    """OpenCV's precise distance transform is off by a unit in the last place on a few percent of masks, and not
    always alike from call to call (opencv/opencv#24082), which made the pipeline's answer for a thick stroke
    depend on the call. distance_to_zero is the exact distance (scipy's, computed another way) every time."""
    from scipy.ndimage import distance_transform_edt

    from shared.normalize import distance_to_zero

    rng = np.random.default_rng(0)
    for _ in range(300):
        shape = (int(rng.integers(10, 90)), int(rng.integers(10, 90)))
        mask = (rng.random(shape) > rng.uniform(0.05, 0.7)).astype(np.uint8)
        exact = distance_transform_edt(mask).astype(np.float32)
        assert np.array_equal(distance_to_zero(mask), exact)
        assert distance_to_zero(mask).dtype == np.float32


def test_a_shadowed_block_round_the_digit_with_a_shadow_from_the_edge_keeps_the_local_paper():
    """A hard shadow across a corner of the picture, and a rectangle round the digit 45 % darker that does not reach
    the edge (another object's shadow, a grey card): the block is a solid quadrilateral clear of the edge, but the
    corner's shadow is real, and without the local estimate the corner and the block were read as one blob
    (found by a review: 1 of 20 such photos right, 20 of 20 before lies_on_a_desk)."""
    digit = np.zeros((28, 28), np.uint8)
    cv2.line(digit, (14, 5), (14, 23), 255, 3)  # a 1
    photo = np.full((480, 640), 215, np.float32)
    cv2.line(photo, (320, 160), (320, 320), 30, 12)
    shade = np.ones((480, 640), np.float32)
    shade[120:360, 230:410] = 0.55
    yy, xx = np.mgrid[:480, :640]
    shade[xx + yy < 170] = 0.55
    photo = np.clip(photo * cv2.GaussianBlur(shade, (0, 0), 2.0), 0, 255).astype(np.uint8)
    grey_smooth = normalize.luminance(normalize.paper_fit(photo)[0])
    assert not normalize.lies_on_a_desk(normalize.luminance(photo), grey_smooth)
    x, y, w, h = ip.trace_pipeline(photo).picture_window()
    assert 290 <= x <= 320 and 140 <= y <= 170 and w < 60 and 130 <= h <= 190, (x, y, w, h)
