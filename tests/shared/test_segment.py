"""shared/segment.py on its own: how touching digits are cut (the ReadNumber tests check the readings end to end)."""

from __future__ import annotations

import contextlib
import time

import cv2
import numpy as np
import pytest

from shared import normalize, segment
from shared.normalize import estimate_background, ink_contrast

from testkit.memory import costly_readings, reading_peak, small_zigzags, unsure


def touching_zeros() -> np.ndarray:
    """A picture (120, 200) uint8 of two thick-stroked zeros whose sides touch, dark on white."""
    picture = np.full((120, 200), 255, np.uint8)
    cv2.ellipse(picture, (62, 60), (32, 44), 0, 0, 360, 0, 9)
    cv2.ellipse(picture, (132, 60), (32, 44), 0, 0, 360, 0, 9)
    return picture


def touching_pair() -> tuple[segment.Pieces, segment.Region, float]:
    """touching_zeros(): one piece of ink, one region, and its height."""
    picture = touching_zeros()
    ink = ink_contrast(picture, estimate_background(picture))
    pieces = segment.find_pieces(ink)
    groups = segment.group_pieces(pieces, 0.0)
    assert len(groups) == 1, "the two zeros should touch"
    region = segment.region_of(pieces, segment.group_mask(pieces, groups[0]), 0.0)
    return pieces, region, float(groups[0].height)


def left_sides(region: segment.Region, cuts: list[segment.Cut]) -> list[np.ndarray]:
    """Each cut's left half as a mask over the whole region."""
    out = []
    for cut in cuts:
        left = np.zeros_like(region.mask)
        x, y = cut.left.x - region.x, cut.left.y - region.y
        h, w = cut.left.mask.shape
        left[y : y + h, x : x + w] = cut.left.mask
        out.append(left)
    return out


def test_cuts_that_move_only_a_sliver_of_ink_are_tried_once(monkeypatch):
    pieces, region, height = touching_pair()
    total = int(region.mask.sum())
    cuts = segment.cut_candidates(pieces, region, 0.0, height)
    assert cuts, "the touching zeros should have a cut"
    sides = left_sides(region, cuts)
    for i in range(len(sides)):
        for j in range(i):
            moved = np.count_nonzero(sides[i] ^ sides[j])
            assert moved > segment.CUT_SAME_INK * total, f"cuts {j} and {i} differ by {moved} of {total} pixels"
    # Without the rule, paths through the same touching point give near-copies of one cut, each made into two
    # digit images and classified: the rule is what keeps them out.
    monkeypatch.setattr(segment, "CUT_SAME_INK", 0.0)
    assert len(segment.cut_candidates(pieces, region, 0.0, height)) > len(cuts)


def test_the_cheapest_cut_of_touching_zeros_splits_them_where_they_touch():
    pieces, region, height = touching_pair()
    cut = min(segment.cut_candidates(pieces, region, 0.0, height), key=lambda c: c.ink)
    left, right = cut.left.box, cut.right.box
    touch_x = 97 - region.x  # where the two rings meet, in the region
    assert abs(left[0] + left[2] - region.x - touch_x) <= 8 and abs(right[0] - region.x - touch_x) <= 8
    assert cut.ink <= 1.5


class SureOfZero:
    """A classifier sure that every image is a 0: the whole group (the first call) at 0.9 with `whole_score` as its
    digit score, each half of a cut at 0.8 with a digit score of 0.95."""

    def __init__(self, whole_score: float) -> None:
        self.whole_score = whole_score
        self.calls = 0

    def __call__(self, batch: np.ndarray) -> segment.Classified:
        self.calls += 1
        top, score = (0.9, self.whole_score) if self.calls == 1 else (0.8, 0.95)
        probabilities = np.full((len(batch), 10), (1 - top) / 9)
        probabilities[:, 0] = top
        return segment.Classified(probabilities, np.full(len(batch), score))


@pytest.mark.parametrize(("whole_score", "read"), [(1.0, "0"), (0.2, "00")])
def test_a_group_is_cut_when_it_does_not_score_as_one_digit_though_its_digit_is_sure(whole_score, read):
    # Two digits squeezed into one box often get a confident digit, but not the digit score of one digit: the
    # score is what tells them apart here, where the top probability is the same both times.
    assert segment.read_number(touching_zeros(), SureOfZero(whole_score)).text == read


class SureSliverNoDigitRest:
    """A classifier that finds the whole group no digit (a 3 at 0.9, digit score 0.01), and of each cut's halves the
    left one a sure 1 (0.99, digit score 0.99) and the right one no more a digit than the whole (a 3 at 0.9, digit
    score `rest_score`): a filled dot cut into a sliver and the rest of it."""

    def __init__(self, rest_score: float) -> None:
        self.rest_score = rest_score
        self.calls = 0

    def __call__(self, batch: np.ndarray) -> segment.Classified:
        self.calls += 1
        if self.calls == 1:
            return segment.Classified(np.tile(one_hot(3, 0.9), (len(batch), 1)), np.full(len(batch), 0.01))
        halves = np.array([one_hot(1, 0.99), one_hot(3, 0.9)] * (len(batch) // 2))
        return segment.Classified(halves, np.tile([0.99, self.rest_score], len(batch) // 2))


def one_hot(digit: int, top: float) -> np.ndarray:
    probabilities = np.full(10, (1 - top) / 9)
    probabilities[digit] = top
    return probabilities


@pytest.mark.parametrize(("rest_score", "read"), [(0.09, "3"), (0.5, "13")])
def test_a_cut_is_kept_only_where_both_halves_look_like_digits(rest_score, read):
    # The whole scores log(0.9 x 0.01) = -4.7; the cut log(0.99 x 0.99) + log(0.9 x 0.09) = -2.5, far better: only
    # the floor on each half's digit score keeps a sure 1 from being cut out of a mark that is no digit.
    assert segment.read_number(touching_zeros(), SureSliverNoDigitRest(rest_score)).text == read


def zeros_in_one_stroke(count: int) -> np.ndarray:
    """A picture of `count` thick-stroked zeros in a row, each touching the next: one piece of ink, dark on white."""
    picture = np.full((120, 60 + 70 * count), 255, np.uint8)
    for k in range(count):
        cv2.ellipse(picture, (62 + 70 * k, 60), (32, 44), 0, 0, 360, 0, 9)
    return picture


def zero_if_upright(batch: np.ndarray) -> segment.Classified:
    """A classifier that reads a digit image whose ink is at least 0.8 as high as wide as a sure 0, and anything
    wider as the real model reads two or three digits squeezed into one box: no digit (digit score 0.08)."""
    probabilities, scores = [], []
    for image in batch:
        rows, columns = np.nonzero(image > 64)
        upright = np.ptp(rows) + 1 >= 0.8 * (np.ptp(columns) + 1)
        probabilities.append(one_hot(0, 0.95))
        scores.append(0.95 if upright else 0.08)
    return segment.Classified(np.array(probabilities), np.array(scores))


@pytest.mark.parametrize("count", [2, 4, 6])
def test_digits_touching_in_one_stroke_are_all_cut_apart_however_many(count):
    """Every first cut of four touching zeros leaves a half holding two or three of them, which scores as no digit:
    with the half-score floor asked of it, no cut was kept and "0000" was read "0" (by the real model, "9"). A
    half that wide is cut again instead, and as many rounds as the digits need are run."""
    assert segment.read_number(zeros_in_one_stroke(count), zero_if_upright).text == "0" * count


def gone_after(times: int):
    """A caller that is there for the first `times` questions, then gone."""
    asked = []

    def still_there() -> bool:
        asked.append(1)
        return len(asked) <= times

    return still_there


def test_a_reading_stops_as_soon_as_its_caller_is_gone_and_runs_whole_while_it_is_there(monkeypatch):
    """A long reading ran to its end after its caller had gone (a zigzag: 0.65 s, its caller gone after 50 ms).
    Each region's cuts and each batch classified first ask whether the caller is still there."""
    picture = zeros_in_one_stroke(6)
    cut_calls = []
    real_cut_candidates = segment.cut_candidates

    def counted(*args, **kwargs):
        cut_calls.append(1)
        return real_cut_candidates(*args, **kwargs)

    monkeypatch.setattr(segment, "cut_candidates", counted)
    with segment.reading_for(lambda: True):
        assert segment.read_number(picture, zero_if_upright).text == "000000"
    whole = len(cut_calls)
    assert whole >= 3, whole  # several rounds of cuts: something to stop part-way
    for there_for in (0, 1, 2):  # answers "still there" this many times, then "gone"
        cut_calls.clear()
        with segment.reading_for(gone_after(there_for)):
            with pytest.raises(segment.Abandoned):
                segment.read_number(picture, zero_if_upright)
        assert len(cut_calls) <= there_for < whole, (cut_calls, there_for)
    # Outside reading_for, nothing is asked.
    assert segment.read_number(picture, zero_if_upright).text == "000000"


def test_small_digits_beside_a_big_one_are_not_read_as_points_or_commas_one_after_another():
    """A big ring and three small ones on its baseline ("2026" with the 2 written twice the others' size): the line's
    height is the big one's, and each small one passed for a point or comma beside it: "0,,,". Marks with no digit
    between them are no separators."""
    picture = np.full((300, 520), 255, np.uint8)
    cv2.ellipse(picture, (90, 150), (45, 100), 0, 0, 360, 0, 12)
    for x in (210, 300, 390):
        cv2.ellipse(picture, (x, 225), (22, 25), 0, 0, 360, 0, 8)
    reading = segment.read_number(picture, uniform_classifier)
    positions = [s.position for s in reading.separators]
    assert len(positions) == len(set(positions)), positions


def test_a_bar_as_thick_as_it_is_high_is_not_cut_into_digits_however_long():
    """A run of touching digits is cut again where its halves are wide; a rule drawn across the picture is as wide
    and as tall as its own stroke, and cut the same way it became 29 "digits" (more than a number may have)."""
    picture = np.full((200, 400), 255, np.uint8)
    cv2.line(picture, (40, 100), (360, 100), 0, 6)
    assert len(segment.read_number(picture, zero_if_upright).digits) == 1


def test_long_marks_stacked_down_the_page_are_several_lines_not_a_number_turned():
    """Long marks one above another have their centres on an upright line, as a number turned a quarter has; but
    each reaches far across that line: three wavy strokes, one under another, were told to turn by 90 degrees."""
    picture = np.full((400, 900), 255, np.uint8)
    xs = np.arange(60, 840)
    for y in (80, 200, 320):
        wave = np.stack([xs, y + 25 * np.sin(xs / 9.0)], axis=1).astype(np.int32)
        cv2.polylines(picture, [wave], False, 0, 4)
    with pytest.raises(segment.ImageRejected) as refused:
        segment.read_number(picture, uniform_classifier)
    assert "lines of writing" in str(refused.value) and "90 degrees" not in str(refused.value)


def a_u(width: int) -> np.ndarray:
    """A picture of one U `width` px wide and about 110 px tall, dark on white: one stroke that a cut crosses once."""
    picture = np.full((170, width + 80), 255, np.uint8)
    left, right = 40, 40 + width
    cv2.line(picture, (left, 30), (left, 100), 0, 9)
    cv2.line(picture, (right, 30), (right, 100), 0, 9)
    cv2.ellipse(picture, ((left + right) // 2, 100), (width // 2, 30), 0, 0, 180, 0, 9)
    return picture


class UnsureWholeSureHalves:
    """A classifier that finds the whole group a 4 at 0.6 (log-confidence -0.62 with its digit score 0.9) and each
    half of a cut a 1 at 0.8 (-0.33 each, -0.66 for the cut): a cut a little worse than the whole."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, batch: np.ndarray) -> segment.Classified:
        self.calls += 1
        top = one_hot(4, 0.6) if self.calls == 1 else one_hot(1, 0.8)
        return segment.Classified(np.tile(top, (len(batch), 1)), np.full(len(batch), 0.9))


@pytest.mark.parametrize(("width", "read"), [(100, "4"), (180, "11")])
def test_a_region_no_wider_than_one_digit_is_cut_only_where_the_cut_scores_better_than_the_whole(width, read):
    # A single wide digit the classifier is unsure of (a wide 4 read "21" by the tests' model, a 0 read "61") was cut
    # where its halves scored a little worse than the whole, within SPLIT_MARGIN. As wide as it is tall (1.0 line
    # height), the cut must beat the whole; at 1.6 line heights, wider than one digit is, SPLIT_MARGIN still holds.
    assert segment.read_number(a_u(width), UnsureWholeSureHalves()).text == read


def two_strokes_side_by_side() -> np.ndarray:
    """A picture of two upright strokes close together, dark on white: two pieces, neither overlapping the other
    along the line (as the two strokes of a 4 that do not meet, or a 5's flag beside its body)."""
    picture = np.full((120, 160), 255, np.uint8)
    cv2.line(picture, (60, 30), (60, 90), 0, 7)
    cv2.line(picture, (80, 30), (80, 90), 0, 7)
    return picture


class PiecesAndWhole:
    """A classifier that finds each piece (the first call) a 1 at `piece_top` with digit score `piece_score`, and
    the two pieces together a 4 at 0.9 with digit score `whole_score`."""

    def __init__(self, piece_top: float, piece_score: float, whole_score: float) -> None:
        self.answers = [(1, piece_top, piece_score), (4, 0.9, whole_score)]

    def __call__(self, batch: np.ndarray) -> segment.Classified:
        digit, top, score = self.answers.pop(0)
        probabilities = np.full((len(batch), 10), (1 - top) / 9)
        probabilities[:, digit] = top
        return segment.Classified(probabilities, np.full(len(batch), score))


def test_two_pieces_that_look_like_one_digit_together_and_like_none_apart_are_joined():
    assert segment.read_number(two_strokes_side_by_side(), PiecesAndWhole(0.5, 0.3, 0.95)).text == "4"


@pytest.mark.parametrize(
    ("piece_top", "piece_score", "whole_score"),
    [(0.9, 0.95, 0.95), (0.5, 0.3, 0.01)],
    ids=["each piece a sure digit", "together less like one digit than apart"],
)
def test_pieces_are_left_apart_unless_joining_them_makes_one_sure_digit(piece_top, piece_score, whole_score):
    assert (
        segment.read_number(two_strokes_side_by_side(), PiecesAndWhole(piece_top, piece_score, whole_score)).text
        == "11"
    )


def arrival(ink: np.ndarray, r: int, c: int, p: int, pixel: float, step: float) -> float:
    """What least_ink_paths charges for stepping from column p of row r - 1 to column c of row r: a stroke
    entered from paper, the ink pixel itself, and a sideways step."""
    return ink[r, c] * (1 + pixel) - ink[r, c] * ink[r - 1, p] + step * abs(c - p)


def path_objective(ink: np.ndarray, start: int, path: np.ndarray, pixel: float, step: float) -> float:
    """What least_ink_paths minimises for one path (columns per row): its first pixel, its sideways offset from
    the start column, and every step after."""
    total = ink[0, path[0]] * (1 + pixel) + step * abs(path[0] - start)
    return float(total + sum(arrival(ink, r, path[r], path[r - 1], pixel, step) for r in range(1, len(path))))


def cheapest_objective(ink: np.ndarray, start: int, band: int, pixel: float, step: float) -> float:
    """The same minimum, by a plain search over every column of the band, row by row."""
    h, bins = ink.shape
    allowed = [c for c in range(start - band, start + band + 1) if 0 <= c < bins]
    best = {c: ink[0, c] * (1 + pixel) + step * abs(c - start) for c in allowed}
    for r in range(1, h):
        best = {
            c: min(best[p] + arrival(ink, r, c, p, pixel, step) for p in (c - 1, c, c + 1) if p in best)
            for c in allowed
        }
    return min(best.values())


# The search gathers its arrival costs a block of rows at a time: blocks of one row, of 3 and 7 rows (neither
# dividing most heights), and the shipped size (at these sizes, all rows in one block).
@pytest.mark.parametrize("rows", [1, 3, 7, None])
def test_each_cut_path_is_the_cheapest_within_its_band_as_a_plain_search_finds(rows, monkeypatch):
    rng = np.random.default_rng(11)
    for _ in range(60):
        h, bins = int(rng.integers(2, 30)), int(rng.integers(3, 40))
        blocked = rng.random((h, bins)) < rng.uniform(0.05, 0.6)
        band = int(rng.integers(1, 8))
        starts = np.unique(rng.integers(0, bins, int(rng.integers(1, 8))))
        stroke = float(rng.uniform(1, 6))
        if rows is not None:  # states a block holds: rows x starts x the band's width
            monkeypatch.setattr(segment, "CUT_ROWS_AT_ONCE", rows * len(starts) * (2 * band + 1))
        paths, costs = segment.least_ink_paths(blocked, starts, band, stroke)
        ink = blocked.astype(np.float64)
        pixel, step = segment.CUT_INK_PIXEL_COST / stroke, segment.CUT_STEP_COST / stroke
        for start, path, cost in zip(starts, paths, costs):
            assert np.all(np.abs(path - start) <= band) and np.all(np.abs(np.diff(path)) <= 1)
            assert np.all((path >= 0) & (path < bins))
            objective = path_objective(ink, int(start), path, pixel, step)
            assert objective == pytest.approx(cheapest_objective(ink, int(start), band, pixel, step), abs=1e-4)
            along = ink[np.arange(h), path]
            entered = along[0] + np.sum(along[1:] * (1 - along[:-1]))
            assert cost == pytest.approx(entered + pixel * along.sum(), abs=1e-4)  # strokes crossed, as returned


def uniform_classifier(batch: np.ndarray) -> segment.Classified:
    return segment.Classified(np.full((len(batch), 10), 0.1), np.ones(len(batch)))


def stroke_among_marks(marks: int) -> np.ndarray:
    """One tall stroke (it sets the line's height) among 3x3 marks strewn at random, none within 6 px of another:
    small marks, not dots (the marks of a lattice are dot-grid paper, taken out as the paper)."""
    picture = np.full((1024, 1024), 255, np.uint8)
    picture[10:1010, 5:7] = 0
    rng = np.random.default_rng(0)
    placed: list[tuple[int, int]] = []
    while len(placed) < marks:
        y, x = int(rng.integers(20, 1000)), int(rng.integers(40, 1000))
        if all(max(abs(y - py), abs(x - px)) > 6 for py, px in placed):
            placed.append((y, x))
            picture[y : y + 3, x : x + 3] = 0
    return picture


def test_a_speckled_picture_is_refused_as_noise_rather_than_joined_mark_by_mark():
    """Joining small marks pair by pair took minutes on a 3 KB PNG of a few hundred marks (cubic in their count)."""
    with pytest.raises(segment.ImageRejected, match="400 small marks"):
        segment.read_number(stroke_among_marks(400), uniform_classifier)
    segment.read_number(stroke_among_marks(200), uniform_classifier)  # within the limit: read (in a tenth of a s)


def test_the_nearest_fragment_pair_breaks_ties_by_the_lowest_indices():
    def group(x0: float, top: int, height: int) -> segment.Group:
        return segment.Group([0], x0, x0 + 3, top, top + height, 9)

    # Two fragments (0 and 2) each 5 px from the tall group 1, and 5 px from each other: the first pair wins.
    groups = [group(0, 50, 3), group(8, 10, 100), group(16, 50, 3)]
    assert segment.nearest_fragment_pair(groups, height=100) == (0, 1)
    assert segment.nearest_fragment_pair([group(0, 10, 100)], height=100) is None


@pytest.mark.parametrize("length", [1, 2])
def test_marks_of_a_pixel_or_two_are_called_specks_not_a_blank_page(length):
    picture = np.full((200, 400), 255, np.uint8)
    picture[100, 200 : 200 + length] = 0
    with pytest.raises(segment.ImageRejected, match=f"only marks are specks of at most {length} pixels"):
        segment.read_number(picture, uniform_classifier)


def test_a_blank_page_is_still_called_blank():
    with pytest.raises(segment.ImageRejected, match="looks blank"):
        segment.read_number(np.full((200, 400), 255, np.uint8), uniform_classifier)


def test_hundreds_of_bars_are_refused_before_their_pairs_are_weighed(monkeypatch):
    """512 bars and a few hundred marks below them took 1.4 s to refuse: every pair of groups was compared twice
    over, and the marks joined one by one, before the count said no."""
    picture = np.full((300, 1024), 255, np.uint8)
    picture[100:160, ::2] = 0

    def never(*args, **kwargs):
        raise AssertionError("the pairs of groups were weighed")

    monkeypatch.setattr(segment, "check_one_line", never)
    with pytest.raises(segment.ImageRejected, match="found 512 digits"):
        segment.read_number(picture, uniform_classifier)


def stair_of_dashes(count: int) -> np.ndarray:
    """`count` dashes a pixel high and 500 long, 2 pixels apart, each a pixel left of the one above, over a short
    bar: each merge of grouping makes room for the next, one a pass, every dash within every other's reach."""
    picture = np.full((count * 2 + 52, 500 + count + 40), 255, np.uint8)
    for i in range(1, count + 1):
        picture[20 + (count - i) * 2, 20 + count - i + 1 : 20 + count - i + 1 + 500] = 0
    picture[20 + count * 2 : 32 + count * 2, 20 + count + 250 : 23 + count + 250] = 0
    return picture


def stair_pieces(count: int) -> segment.Pieces:
    """stair_of_dashes(count)'s pieces of ink, as they are before the paper's lines are looked for."""
    picture = stair_of_dashes(count)
    ink = ink_contrast(picture, estimate_background(picture))
    noise = normalize.noise_level(ink)
    threshold = normalize.ink_threshold(ink, noise)
    labels, stats = normalize.connected_components((ink >= threshold).astype(np.uint8))
    return segment.Pieces(ink, labels, stats, segment.not_specks(stats), noise, threshold)


def test_marks_stacked_so_that_grouping_cascades_are_refused_not_grouped_for_seconds():
    """480 such dashes (a 5 KB PNG) took 1.9 s of grouping, a pass per merge, to be read as "0"; 20 of them are
    still grouped as before (well within the bound). As a picture, ReadNumber now takes the stacked dashes for the
    lines of ruled paper first (a family of parallel lines), and refuses what is left as quickly."""
    with pytest.raises(segment.ImageRejected, match="481 marks lie over and beside one another as no line of writing"):
        segment.group_pieces(stair_pieces(480), 0.0)
    assert segment.group_pieces(stair_pieces(20), 0.0)
    started = time.monotonic()
    with pytest.raises(segment.ImageRejected):
        segment.read_number(stair_of_dashes(480), uniform_classifier)
    assert time.monotonic() - started < 1.0


def two_bars_and_a_dot(side: int) -> np.ndarray:
    """Two bars 100 pixels high (digits to the segmentation) at x 100 and 300, and a square dot of `side` pixels
    between them on the line's bottom."""
    picture = np.full((200, 500), 255, np.uint8)
    picture[50:150, 100:112] = picture[50:150, 300:312] = 0
    picture[150 - side : 150, 200 : 200 + side] = 0
    return picture


@pytest.mark.parametrize(
    "side, expected",
    [
        (12, [(1, ".")]),  # a point between the digits, as a pen draws one
        (3, []),  # dust: a speck is no point (it cost a single digit Predict's answer)
    ],
)
def test_a_separator_is_a_mark_of_a_pens_size_not_a_speck(side, expected):
    reading = segment.read_number(two_bars_and_a_dot(side), uniform_classifier)
    assert len(reading.digits) == 2
    assert [(s.position, s.mark) for s in reading.separators] == expected


def stats_of(strong: np.ndarray) -> np.ndarray:
    """The pieces of a mask, rows x, y, w, h, area (the paper left out), as find_pieces keeps them."""
    return cv2.connectedComponentsWithStats(strong, connectivity=8)[2][1:]


def test_dots_far_apart_are_joined_into_one_stroke():
    strong = np.zeros((600, 1200), np.uint8)
    for x in range(100, 1100, 100):  # a row of dots 30 pixels wide, 100 apart
        cv2.circle(strong, (x, 300), 15, 1, -1)
    ink = strong * np.uint8(200)
    joined_ink, joined = segment.join_dots(ink, strong, segment.Dots.of(stats_of(strong), spacing=100.0))
    count, _ = cv2.connectedComponents(joined)
    assert count - 1 == 1  # one stroke, not ten dots
    assert (joined >= strong).all() and joined.shape == strong.shape
    assert joined_ink[300, 150] > 0  # between two dots: ink now


def test_a_ring_of_dots_is_joined_into_a_ring_not_a_disc():
    """A closing wide enough to bridge the dots filled every loop narrower than itself: a dotted 0, or the loop of
    a 6, 8 or 9, became a blot, and one dotted number in four was read right. The dots are linked by lines."""
    strong = np.zeros((100, 100), np.uint8)
    for angle in np.linspace(0, 2 * np.pi, 8, endpoint=False):  # a ring 24 pixels across, dots about 9 apart
        cv2.circle(strong, (round(50 + 12 * np.cos(angle)), round(50 + 12 * np.sin(angle))), 3, 1, -1)
    _, joined = segment.join_dots(strong * np.uint8(200), strong, segment.Dots.of(stats_of(strong), spacing=9.2))
    count, _ = cv2.connectedComponents(joined)
    assert count - 1 == 1  # one stroke
    assert joined[50, 50] == 0  # its hole open: a 0, not a disc


def test_specks_beside_digits_are_not_taken_for_writing_in_dots():
    """Seven digits and six specks of dust around them were thirteen 'dots' (the specks far apart made the ink's
    height large enough for the digits to count as dots), and the closing at their spacing joined the seven digits
    into one blob. Dots of writing are of a size: specks far smaller than the typical piece are not counted."""
    digits = [[60 + 70 * k, 190, 45, 62 + (k % 3) * 4, 700] for k in range(7)]
    specks = [[30, 40, 3, 3, 7], [600, 60, 2, 2, 4], [610, 230, 3, 2, 5], [20, 300, 4, 3, 9], [500, 420, 2, 3, 5]]
    specks.append([300, 470, 3, 3, 8])
    assert segment.writing_in_dots(np.array(digits + specks, np.int64)) is None
    dots = [[40 + 12 * k, 200 + 9 * (k % 5), 4, 4, 12] for k in range(30)]  # writing in dots is still found
    assert segment.writing_in_dots(np.array(dots + specks, np.int64)) is not None


def test_a_number_on_ruled_paper_is_read_digit_by_digit_without_its_lines():
    """Six rings on notebook paper, rules through their middles and under their feet: the rules joined them into
    one piece of ink (or made a second line of writing). They go as they do for a single digit."""
    from testkit.user_images import draw_lines, sheet

    page = sheet(480, 640, np.random.default_rng(1))[0].copy()
    draw_lines(page, np.random.default_rng(0), spacing=60, colour=(90, 130, 215), width=2.5, vertical=False, offset=30)
    for k in range(6):
        cv2.ellipse(page, (90 + 90 * k, 238), (24, 32), 0, 0, 360, (25, 25, 35), 5, cv2.LINE_AA)
    reading = segment.read_number(np.clip(page + 0.5, 0, 255).astype(np.uint8), uniform_classifier)
    assert len(reading.digits) == 6
    assert [d.box[0] // 90 for d in reading.digits] == list(range(6))


@pytest.mark.parametrize("turned", [True, False])
def test_a_number_written_sideways_is_refused_with_the_advice_to_turn_the_picture(turned):
    """Four rings one above another (a number photographed turned a quarter) are four 'lines' of one mark each, on
    one vertical line: the refusal says to turn the picture by about 90 degrees. Two lines of two rings each are two
    lines of writing, and no more."""
    picture = np.full((480, 480), 255, np.uint8)
    centres = (
        [(240, 60 + 110 * k) for k in range(4)]
        if turned
        else [(120 + 200 * (k % 2), 120 + 220 * (k // 2)) for k in range(4)]
    )
    for x, y in centres:
        cv2.ellipse(picture, (x, y), (24, 34), 0, 0, 360, 0, 5)
    with pytest.raises(segment.ImageRejected) as refused:
        segment.read_number(picture, uniform_classifier)
    if turned:
        assert "Turn the picture by about 90 degrees" in str(refused.value)
    else:
        assert "2 lines of writing" in str(refused.value) and "turn the picture" not in str(refused.value).lower()


@pytest.mark.parametrize("lean", [0, 30, 40])
def test_a_comma_is_a_comma_however_the_writing_leans(lean):
    """Two bars leaning left by `lean` pixels over their 100 (a slant of -0.3 and -0.4) with a comma between them,
    a dot with its tail down to the left, 14 pixels wide and 20 high in the picture. Judged by its width with the
    slant taken out, which widens a tail running down to the left, it was a point in writing that leans left
    (found by a review: "3,14" read as 3.14)."""
    picture = np.full((240, 500), 255, np.uint8)
    for x in (100, 300):
        cv2.line(picture, (x, 50), (x + lean, 150), 0, 12)
    cx, cy = 212 + lean, 140
    yy, xx = np.ogrid[:240, :500]
    dot = (yy - cy) ** 2 + (xx - cx) ** 2 <= 36
    tail = (abs(xx - cx + (yy - cy) // 3) <= 3) & (yy > cy) & (yy < cy + 14)
    picture[dot | tail] = 0
    reading = segment.read_number(picture, uniform_classifier)
    assert len(reading.digits) == 2
    assert [(s.position, s.mark) for s in reading.separators] == [(1, ",")]


def test_nearest_neighbours_are_every_points_nearest_others():
    """The k-d tree's answer is every pair's: each point's k nearest others, nearest first (a point on the very same
    spot as another is its neighbour at 0, never itself), and -1 at infinity where there are fewer points than
    neighbours asked."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(np.arange(6) * 16.0, np.arange(5) * 16.0), axis=-1).reshape(-1, 2)
    points = np.concatenate([grid, rng.uniform(0, 100, (40, 2)), grid[:1]])  # the last on the first's spot
    index, distance = segment.nearest_neighbours(points, 4)
    pairwise = np.hypot(*(points[:, None, :] - points[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(pairwise, np.inf)
    for i in range(len(points)):
        np.testing.assert_allclose(distance[i], np.sort(pairwise[i])[:4])  # the four nearest distances, in order
        np.testing.assert_allclose(pairwise[i, index[i]], distance[i])  # and the points at them, not i itself
    assert index[0, 0] == len(points) - 1 and distance[0, 0] == 0
    few_index, few_distance = segment.nearest_neighbours(points[:3], 4)
    assert (few_index[:, 2:] == -1).all() and np.isinf(few_distance[:, 2:]).all()


COSTLY = costly_readings()


@pytest.mark.parametrize("name", list(COSTLY))
def test_a_reading_holds_no_more_memory_than_the_service_reserves_for_it(name):
    """The service holds reading_bytes of its decode budget while it reads. A zigzag across 1024 x 256 held 137
    bytes a pixel (the cut search kept every row's costs, 27 of its 34 MiB), 1024 x 762 62 (each cut's halves held
    their whole window): 16 read at once took +0.5 GB beyond the budget. Read with a classifier sure of nothing,
    every region is cut and every cut weighed."""
    picture = COSTLY[name]
    peak = reading_peak(picture)
    assert peak <= segment.reading_bytes(picture), f"{peak / picture.size:.0f} bytes a pixel"


def test_the_classifier_is_given_at_most_classify_at_once_images_at_a_time():
    """Many small marks, each cut many ways, sent 428 halves to the model in one batch: its forward pass took 41
    MiB that no budget counted (64 at a time: 5 MiB, within READING_BASE_BYTES)."""
    sizes = []

    def counting(batch: np.ndarray) -> segment.Classified:
        sizes.append(len(batch))
        return unsure(batch)

    with contextlib.suppress(segment.ImageRejected):
        segment.read_number(small_zigzags(24, 18, 2), counting)
    assert max(sizes) <= segment.CLASSIFY_AT_ONCE and sum(sizes) > 3 * segment.CLASSIFY_AT_ONCE, sizes
