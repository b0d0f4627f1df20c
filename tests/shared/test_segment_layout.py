"""shared/segment.py on where marks lie: small marks near and far from the line of digits, and a line of digits that
is not level. Numbers written with testkit/numbers.py from MNIST test digits; a classifier sure of every image, so
what is tested is the segmentation, not a model."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from shared import segment
from shared.decode import decode_image

from testkit.numbers import lines_picture, write_number

PAD = 150  # paper around the number, pixels


def sure_classifier(batch: np.ndarray) -> segment.Classified:
    """Sure of a 0 in every image: no region is cut or joined for want of confidence."""
    probabilities = np.full((len(batch), 10), 0.001)
    probabilities[:, 0] = 0.991
    return segment.Classified(probabilities, np.ones(len(batch)))


@pytest.fixture(scope="module")
def number(mnist):
    """The first four MNIST test digits (7210) written apart, 60 pixels high: (ink coverage (H, W) float32 with PAD
    around it, the digits' boxes in it)."""
    images = mnist.test_images.numpy()
    written = write_number([images[i] for i in range(4)], 60, 6.0, np.random.default_rng(0))
    coverage = np.pad(written.coverage, PAD)
    return coverage, [(x + PAD, y + PAD, w, h) for x, y, w, h in written.boxes]


def on_paper(coverage: np.ndarray) -> np.ndarray:
    """Ink coverage (H, W) in [0, 1] -> dark ink on white paper, (H, W) uint8."""
    return np.clip(255 - 255 * coverage, 0, 255).astype(np.uint8)


def boxes(picture: np.ndarray) -> list[tuple[int, int, int, int]]:
    return [d.box for d in segment.read_number(picture, sure_classifier).digits]


@pytest.mark.parametrize("above", [40, 80, 120])
def test_a_mark_far_above_the_line_is_no_digit_and_joins_none(number, above):
    """A dot 11 pixels across `above` pixels over the 2, clear of every digit: left alone after the small marks
    were joined, it was kept as a digit (it has a tenth of a digit's ink), or joined to the 2 below it."""
    coverage, truth = number
    clean = boxes(on_paper(coverage))
    marked = coverage.copy()
    x, y, w, _ = truth[1]
    cv2.circle(marked, (x + w // 2, y - above), 5, 1.0, -1)
    assert boxes(on_paper(marked)) == clean


def turned(coverage: np.ndarray, degrees: float) -> np.ndarray:
    """The coverage turned by `degrees` anticlockwise about its centre, on a square canvas that holds it all."""
    h, w = coverage.shape
    side = int(np.hypot(h, w))
    canvas = np.zeros((side, side), np.float32)
    canvas[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = coverage
    rotation = cv2.getRotationMatrix2D((side / 2, side / 2), degrees, 1.0)
    return cv2.warpAffine(canvas, rotation, (side, side), flags=cv2.INTER_LINEAR)


@pytest.fixture(scope="module")
def long_number(mnist):
    """Eight MNIST test digits written apart, 50 pixels high: ink coverage (H, W), 40 pixels of paper around."""
    images = mnist.test_images.numpy()
    written = write_number([images[i] for i in range(20, 28)], 50, 5.0, np.random.default_rng(8))
    return np.pad(written.coverage, 40)


@pytest.mark.parametrize("degrees", [30, 45, 60, 90, -30, -60, -90])
def test_a_number_written_at_a_steep_angle_is_refused_with_the_angle_to_turn_the_picture_by(long_number, degrees):
    """A number at 30-90 degrees was refused as 'several lines of writing' with no word of its angle (the advice to
    turn the picture came only where every digit stood alone above the next). Its digits lie on one slanted line:
    the refusal says so, and by about how much to turn the picture."""
    with pytest.raises(segment.ImageRejected) as refused:
        segment.read_number(on_paper(turned(long_number, degrees)), sure_classifier)
    message = str(refused.value)
    assert "Turn the picture by about" in message and "lines of writing" not in message
    said = int(message.split("written at about ")[1].split(" degrees")[0])
    assert abs(said - abs(degrees)) <= 8
    # And which way: against the line's rise (a line at 30 and one at -30 were told the same); upright, either way.
    way = message.split(" degrees ")[-1].split(" so that")[0]
    if abs(degrees) == 90:
        assert "a quarter turn: clockwise or counter-clockwise" in way
    else:
        assert way == ("clockwise" if degrees > 0 else "counter-clockwise")


def test_a_level_number_is_read_and_two_lines_are_still_two_lines(long_number, mnist):
    assert len(segment.read_number(on_paper(turned(long_number, 0)), sure_classifier).digits) == 8
    picture = decode_image(lines_picture(mnist.test_images.numpy(), mnist.test_labels.numpy()))
    with pytest.raises(segment.ImageRejected, match="2 lines of writing") as refused:
        segment.read_number(picture, sure_classifier)
    assert "turn the picture" not in str(refused.value).lower()


def test_every_dot_of_a_number_written_in_dots_stays_in_its_digits_box(mnist):
    """Writing in dots: join_dots links most of a digit's dots into one piece, and the few it leaves alone are a few
    per cent of it each. Were they taken for specks (Predict's rule for which strokes make a digit), they would
    leave the digit: a dotted 4 lost its top and was read as a 7, its box half as tall."""
    images = mnist.test_images.numpy()
    written = write_number([images[i] for i in range(4)], 90, 2.5, np.random.default_rng(1), pen="dotted")
    found = boxes(on_paper(np.pad(written.coverage, PAD)))
    assert len(found) == 4, found
    for (_, _, _, height), (_, _, _, found_height) in zip(written.boxes, found):
        assert found_height >= 0.8 * height, (found, written.boxes)


@pytest.mark.parametrize(("grey", "radius", "pitch"), [(120, 2, 20), (180, 3, 24), (80, 1, 16)])
def test_a_number_on_dot_grid_paper_is_read_without_the_grids_dots(number, grey, radius, pitch):
    """Dot-grid paper (a bullet journal's): its dots were taken for writing in dots and linked, with the number,
    into one mesh of the page (read as one digit). They are the paper, as a ruled sheet's lines are."""
    coverage, expected = number
    page = np.full(coverage.shape, 250.0, np.float32)
    for y in range(pitch // 2, page.shape[0], pitch):
        for x in range(pitch // 2, page.shape[1], pitch):
            cv2.circle(page, (x, y), radius, float(grey), -1)
    photo = np.clip(page * (1 - coverage) + 20 * coverage, 0, 255).astype(np.uint8)  # the ink over the dots
    found = boxes(photo)
    assert len(found) == 4, found
    near = 2 * radius + 3  # a dot under a stroke is part of it
    for (x, y, w, h), (fx, fy, fw, fh) in zip(expected, found):
        assert abs(fx - x) <= near and abs(fy - y) <= near and abs(fw - w) <= near and abs(fh - h) <= near


def test_a_decimal_point_on_dot_grid_paper_is_kept(mnist):
    """The grid's dots are those on its lattice: a point written in a cell, nearer a grid dot than the pitch, is
    a decimal point still (all dots of its size were dropped at first)."""
    images = mnist.test_images.numpy()
    written = write_number([images[i] for i in range(4)], 60, 4.0, np.random.default_rng(0), separator=(2, "."))
    coverage = np.pad(written.coverage, PAD)
    page = np.full(coverage.shape, 250.0, np.float32)
    for y in range(8, page.shape[0], 16):
        for x in range(8, page.shape[1], 16):
            cv2.circle(page, (x, y), 1, 120.0, -1)
    photo = np.clip(page * (1 - coverage) + 20 * coverage, 0, 255).astype(np.uint8)
    reading = segment.read_number(photo, sure_classifier)
    assert len(reading.digits) == 4
    assert [(s.position, s.mark) for s in reading.separators] == [(2, ".")]


def test_dots_beside_a_solid_mark_are_writing_not_a_grid():
    """A number written in evenly spaced dots beside one solid digit: the dots lay above and below that digit, and
    a rule that asked only that took them all for the paper's."""
    canvas = np.full((300, 600), 255, np.uint8)
    for left in (40, 130, 220):  # three dotted 8s as a seven-segment display draws them, a dot every 8 px
        for x in range(left, left + 41, 8):
            for y in (150, 192, 234):
                cv2.circle(canvas, (x, y), 2, 0, -1)
        for y in range(150, 235, 8):
            for x in (left, left + 40):
                cv2.circle(canvas, (x, y), 2, 0, -1)
    cv2.putText(canvas, "4", (420, 230), cv2.FONT_HERSHEY_SIMPLEX, 2.0, 0, 6)  # solid, shorter than the dots
    stats = cv2.connectedComponentsWithStats((canvas < 128).astype(np.uint8), connectivity=8)[2][1:]
    assert len(stats) > 100 and segment.paper_dots(stats) is None
    assert len(boxes(canvas)) == 4


def test_a_number_written_in_dots_is_not_taken_for_dot_grid_paper(mnist):
    """Writing in dots is all dots, with no solid writing beside them: no grid to take out."""
    images = mnist.test_images.numpy()
    written = write_number([images[i] for i in range(4)], 90, 2.5, np.random.default_rng(1), pen="dotted")
    assert len(boxes(on_paper(np.pad(written.coverage, PAD)))) == 4


def test_a_number_on_a_note_lying_on_a_desk_is_read_on_the_note(number):
    """A sticky note photographed on a dark desk: the desk was the paper, the note one big piece of "ink" with the
    digits as holes in it, read as one digit (0 of 20 such numbers read right with the tests' model, 19 now, as
    many as on the note alone). The note is read on its own, and the digits' boxes are in the photo's pixels."""
    coverage, expected = number
    note = np.clip(250 - 230 * coverage, 0, 255).astype(np.uint8)  # dark ink on a light note
    photo = np.full((note.shape[0] + 200, note.shape[1] + 300), 50, np.uint8)  # a dark desk all round it
    photo[100 : 100 + note.shape[0], 150 : 150 + note.shape[1]] = note
    found = boxes(photo)
    assert len(found) == 4, found
    for (x, y, w, h), (fx, fy, fw, fh) in zip(expected, found):
        assert abs(fx - (x + 150)) <= 3 and abs(fy - (y + 100)) <= 3 and abs(fw - w) <= 4 and abs(fh - h) <= 4


def note_photo(coverage: np.ndarray, angle: float, top: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Ink coverage (H, W) written on a light note lying on a dark desk, the photo turned by `angle` degrees and
    seen with the phone tilted back, the note's far (top) edge `top` as long as its near one: (the photo
    (H + 400, W + 300) uint8, the 3x3 map from `coverage`'s pixels to the photo's)."""
    note = np.clip(250 - 230 * coverage, 0, 255).astype(np.uint8)
    height, width = note.shape
    inset = (1 - top) / 2 * width
    seen = np.float32([[inset, inset / 4], [width - inset, inset / 4], [width, height], [0, height]]) + np.float32(
        (150, 200)
    )
    square = np.float32([[0, 0], [width, 0], [width, height], [0, height]])
    turn = cv2.getRotationMatrix2D(((width + 299) / 2, (height + 399) / 2), angle, 1.0)
    to_photo = np.vstack([turn, [0, 0, 1]]) @ cv2.getPerspectiveTransform(square, seen.astype(np.float32))
    photo = cv2.warpPerspective(note, to_photo, (width + 300, height + 400), flags=cv2.INTER_LINEAR, borderValue=50)
    return photo, to_photo


@pytest.mark.parametrize("angle, top", [(-35, 1.0), (-25, 1.0), (35, 1.0), (40, 1.0), (0, 0.6), (20, 0.6)])
def test_a_number_on_a_turned_note_or_one_seen_at_an_angle_is_read_upright_and_boxed_where_it_lies(number, angle, top):
    """A note lying turned on the desk holds its number as turned: a line of digits at 30 degrees fell apart into
    pieces at several heights (numbers of 4-6 digits on a note turned by -20 / 30 / -35 degrees: 13 / 7 / 0 of 20
    read right with the tests' model, 19 / 19 / 19 now). The note is turned back upright before it is read, and
    one seen at an angle (its far edge 60 % of its near one: no sheet before, 0 of 20 numbers read right with a
    seed-0 model, 18 now) mapped corner to corner onto an upright rectangle: each digit's 28x28 image is the one
    the note upright gives, and its box, mapped back, holds that digit's ink where it lies in the photo."""
    coverage, expected = number
    photo, to_photo = note_photo(coverage, angle, top)
    digits = segment.read_number(photo, sure_classifier).digits
    upright = segment.read_number(note_photo(coverage, 0)[0], sure_classifier).digits
    assert len(digits) == 4, [d.box for d in digits]
    for (x, y, w, h), digit, level in zip(expected, digits, upright):
        alone = np.zeros_like(coverage)
        alone[y : y + h, x : x + w] = coverage[y : y + h, x : x + w]  # this digit's ink (the digits stand apart)
        ys, xs = np.nonzero(cv2.warpPerspective(alone, to_photo, photo.shape[::-1]) > 0.5)  # where it lies
        fx, fy, fw, fh = digit.box
        assert fx - 2 <= xs.min() and xs.max() < fx + fw + 2 and fy - 2 <= ys.min() and ys.max() < fy + fh + 2
        assert min(fx, fy) >= 0 and fx + fw <= photo.shape[1] and fy + fh <= photo.shape[0]
        a, b = digit.image.astype(np.float64).ravel(), level.image.astype(np.float64).ravel()
        assert np.corrcoef(a, b)[0, 1] > 0.85, (angle, top, digit.box, np.corrcoef(a, b)[0, 1])


@pytest.mark.parametrize("angle", [20, -30])
def test_a_long_note_turned_on_the_desk_is_still_a_note(number, angle):
    """A note four times as long as it is high, turned by 20 degrees, fills under half of its upright window, and
    sheet_in's quick first test asked for half: it was no sheet, and its number was read as one digit (a 3.5:1 note
    of six digits turned by 20 or 25 degrees read as '9', boxed as the whole note: found by a review). Its four
    digits are read, each boxed where it lies in the photo."""
    coverage, expected = number
    trim = PAD - 40
    photo, to_photo = note_photo(coverage[trim:-trim], angle)
    digits = segment.read_number(photo, sure_classifier).digits
    assert len(digits) == 4, [d.box for d in digits]
    for (x, y, w, h), digit in zip(expected, digits):
        corners = np.float32([[[x, y - trim], [x + w, y - trim], [x + w, y + h - trim], [x, y + h - trim]]])
        cx, cy = cv2.perspectiveTransform(corners, to_photo)[0].mean(axis=0)  # the digit's centre in the photo
        fx, fy, fw, fh = digit.box
        assert fx <= cx <= fx + fw and fy <= cy <= fy + fh, (digit.box, (cx, cy))
        assert fw < 0.25 * photo.shape[1]  # a digit's box, not the note's


def test_a_number_beside_a_solid_block_is_not_read_on_the_block(number):
    """A number ending in a bold square 0 (a solid block with a small hole): the block is a solid quadrilateral like
    a note on a desk, but writing lies beside it, so the number is on the page and the block is one of its marks.
    Read as a sheet, the number was its hole alone, one digit (found by a review)."""
    coverage, expected = number
    cut = PAD - 20  # a tight picture, where the block is a large part of it as a note on a desk is
    x, y, w, h = expected[-1]
    picture = np.pad(coverage[cut:-cut, cut : x + w + 30], ((0, 0), (0, 110)))
    left, top = x + w + 30 - cut, y - 10 - cut
    picture[top : top + h + 20, left : left + 80] = 1.0
    picture[top + 30 : top + h - 10, left + 32 : left + 48] = 0.0  # a small hole: a bold square 0
    found = boxes(on_paper(picture))
    assert len(found) >= 4, found  # 7210 and the block's reading, not the hole alone
    for (ex, ey, _, _), (fx, fy, _, _) in zip(expected, found):
        assert abs(fx - (ex - cut)) <= 3 and abs(fy - (ey - cut)) <= 3, (expected, found)


@pytest.mark.parametrize("overlap", [6, 12, -4, -20])
def test_cents_raised_beside_a_price_are_read_on_its_line_and_a_number_wholly_above_it_is_not(mnist, overlap):
    """A price with its cents raised ("12" then a smaller "50" whose foot reaches `overlap` pixels below the 12's
    top, too little for one line's overlap) was refused as a number "written at about 21 degrees" to turn. Two
    groups side by side, each level, the second at a height that overlaps the first, are one line written in
    steps: four digits. A "50" wholly above the 12 (its foot above the 12's top) is a line of its own, still refused."""
    images = mnist.test_images.numpy()
    big = write_number([images[i] for i in (2, 1)], 120, 10.0, np.random.default_rng(3)).coverage  # a 1 and a 2
    small = write_number([images[i] for i in (15, 3)], 70, 6.0, np.random.default_rng(4)).coverage  # a 5 and a 0
    top = 100  # the big digits' top row on the page
    page = np.zeros((top + big.shape[0] + 60, big.shape[1] + small.shape[1] + 120), np.float32)
    page[top : top + big.shape[0], 40 : 40 + big.shape[1]] = big
    inked = np.flatnonzero(big.max(axis=1) > 0.5)
    big_top = top + int(inked[0])
    small_inked = np.flatnonzero(small.max(axis=1) > 0.5)
    y = big_top + overlap - int(small_inked[-1]) - 1  # the small digits' lowest ink row at big_top + overlap - 1
    x = 40 + big.shape[1] + 20
    page[y : y + small.shape[0], x : x + small.shape[1]] = np.maximum(
        page[y : y + small.shape[0], x : x + small.shape[1]], small
    )
    if overlap > 0:
        found = boxes(on_paper(page))
        assert len(found) == 4, found
        assert [b[1] < big_top - 20 for b in found] == [False, False, True, True], found
    else:
        with pytest.raises(segment.ImageRejected):
            boxes(on_paper(page))


@pytest.mark.parametrize("margin", [4, 20])
def test_a_box_drawn_round_the_number_is_no_digit(number, margin):
    """A form's field: a rectangle drawn round the number. Every digit overlapped the box along the line, so the
    box and all four digits were one group, read as one digit (a review: an 8-digit number read "0"). The box is
    taken out as round one digit (shared.normalize.frame_components), and the digits are read."""
    coverage, truth = number
    picture = on_paper(coverage)
    x0, y0 = min(x for x, _, _, _ in truth) - margin, min(y for _, y, _, _ in truth) - margin
    x1, y1 = max(x + w for x, _, w, _ in truth) + margin, max(y + h for _, y, _, h in truth) + margin
    cv2.rectangle(picture, (x0, y0), (x1, y1), 0, 3)
    assert boxes(picture) == boxes(on_paper(coverage))
